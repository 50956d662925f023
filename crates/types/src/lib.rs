//! Ids and units shared by every pagemesh crate.
//!
//! Everything here is plain data: newtypes so that a page number is never mistaken for a byte
//! offset, and a byte-size parser for the sizes users type (`64GiB`).

#![forbid(unsafe_code)]

use std::fmt;
use std::str::FromStr;

/// Size of a page, the unit of coherence and of fault handling.
pub const PAGE_SIZE: u64 = 4096;
/// `log2(PAGE_SIZE)`.
pub const PAGE_SHIFT: u32 = 12;

/// A node of the cluster (one `pagemeshd`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node{}", self.0)
    }
}

/// A segment, unique within a cluster's catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SegmentId(pub u64);

impl SegmentId {
    /// The first id of a cluster segment: ids of the segments homed on `home` are
    /// `(home + 1) << 40 | n`, unique across the cluster without coordination.
    pub const fn cluster(home: NodeId, n: u64) -> SegmentId {
        assert!(n < 1 << 40, "a home's segment counter ran past 2^40");
        SegmentId(((home.0 as u64) + 1) << 40 | n)
    }

    /// The node a cluster segment's id says is its home (`None` for a node-local id).
    pub const fn home(self) -> Option<NodeId> {
        match self.0 >> 40 {
            0 => None,
            h => Some(NodeId((h - 1) as u32)),
        }
    }
}

impl fmt::Display for SegmentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seg{}", self.0)
    }
}

/// A page number within a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PageNo(pub u64);

impl PageNo {
    /// The page that holds byte `offset`.
    pub fn containing(offset: u64) -> PageNo {
        PageNo(offset >> PAGE_SHIFT)
    }

    /// Byte offset of the first byte of this page.
    pub fn offset_bytes(self) -> u64 {
        self.0 << PAGE_SHIFT
    }
}

impl fmt::Display for PageNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "page {}", self.0)
    }
}

/// Number of pages needed to hold `len_bytes`.
pub fn pages_for(len_bytes: u64) -> u64 {
    len_bytes.div_ceil(PAGE_SIZE)
}

/// A size in bytes, parsed from and printed as `4KiB`, `64GiB`, `1TiB` or a plain number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ByteSize(pub u64);

/// Why a size string did not parse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ByteSizeError(String);

impl fmt::Display for ByteSizeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid size {:?}: expected a number with an optional unit B, KiB, MiB, GiB or TiB (e.g. 64GiB)",
            self.0
        )
    }
}

impl std::error::Error for ByteSizeError {}

impl FromStr for ByteSize {
    type Err = ByteSizeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| ByteSizeError(s.to_string()))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" | "kb" => 1 << 10,
            "m" | "mib" | "mb" => 1 << 20,
            "g" | "gib" | "gb" => 1 << 30,
            "t" | "tib" | "tb" => 1 << 40,
            _ => return Err(ByteSizeError(s.to_string())),
        };
        n.checked_mul(mult)
            .map(ByteSize)
            .ok_or_else(|| ByteSizeError(s.to_string()))
    }
}

impl fmt::Display for ByteSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(&str, u64); 4] = [
            ("TiB", 1 << 40),
            ("GiB", 1 << 30),
            ("MiB", 1 << 20),
            ("KiB", 1 << 10),
        ];
        // The largest unit the size reaches: a whole number of it, or one decimal (so 64 MiB
        // and 4 KiB print as "64.0MiB", not "65540KiB"). One decimal that rounds up to 1024
        // of a unit is shown in the next unit up.
        for (i, (name, m)) in UNITS.into_iter().enumerate() {
            if self.0 < m {
                continue;
            }
            if self.0.is_multiple_of(m) {
                return write!(f, "{}{}", self.0 / m, name);
            }
            let v = self.0 as f64 / m as f64;
            if (v * 10.0).round() >= 10_240.0 && i > 0 {
                let (up, _) = UNITS[i - 1];
                return write!(f, "{:.1}{up}", v / 1024.0);
            }
            return write!(f, "{v:.1}{name}");
        }
        write!(f, "{}B", self.0)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_cluster_segment_id_names_its_home() {
        use super::{NodeId, SegmentId};
        assert_eq!(SegmentId::cluster(NodeId(0), 5).home(), Some(NodeId(0)));
        assert_eq!(
            SegmentId::cluster(NodeId(3), (1 << 40) - 1).home(),
            Some(NodeId(3))
        );
        assert_eq!(SegmentId(5).home(), None);
    }

    use super::*;

    #[test]
    fn parses_units() {
        assert_eq!("4096".parse::<ByteSize>().unwrap(), ByteSize(4096));
        assert_eq!("64GiB".parse::<ByteSize>().unwrap(), ByteSize(64 << 30));
        assert_eq!("1TiB".parse::<ByteSize>().unwrap(), ByteSize(1 << 40));
        assert_eq!("3 MiB".parse::<ByteSize>().unwrap(), ByteSize(3 << 20));
        assert!("12XB".parse::<ByteSize>().is_err());
        assert!("".parse::<ByteSize>().is_err());
        assert!("99999999999TiB".parse::<ByteSize>().is_err());
    }

    #[test]
    fn prints_round_units() {
        assert_eq!(ByteSize(1 << 30).to_string(), "1GiB");
        assert_eq!(ByteSize(1536).to_string(), "1.5KiB");
        assert_eq!(ByteSize(10).to_string(), "10B");
        assert_eq!(ByteSize((64 << 20) + 4096).to_string(), "64.0MiB");
        assert_eq!(ByteSize((1 << 30) - 4096).to_string(), "1.0GiB");
        assert_eq!(ByteSize(3 << 20).to_string(), "3MiB");
    }

    #[test]
    fn page_arithmetic() {
        assert_eq!(PageNo::containing(8191), PageNo(1));
        assert_eq!(PageNo(3).offset_bytes(), 3 * PAGE_SIZE);
        assert_eq!(pages_for(1), 1);
        assert_eq!(pages_for(8192), 2);
    }
}
