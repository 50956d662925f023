//! The working-set file of `vm serve --record/--replay`: the image pages a restored VM's
//! faults brought in, in the order they came. Little-endian, version 1:
//!
//! | bytes | field |
//! |---|---|
//! | 8 | magic `PMWSET\0\n` |
//! | 4 | format version (1) |
//! | 4 | page size (4096) |
//! | 8 | size of the snapshot image it was recorded from, bytes |
//! | 8 | pages recorded, `n` (at most `MAX_WORKING_SET_PAGES`) |
//! | 8 | pages past that bound, not kept |
//! | 8 n | the pages: offsets in the image in 4 KiB pages, each once, in fault order |
//! | 8 | FNV-1a 64 of everything before |
//!
//! A file of another version is refused, naming both versions; so is one whose checksum or
//! length is wrong.

use std::path::Path;

use pagemesh::vm::MAX_WORKING_SET_PAGES;

/// The file's first bytes.
const MAGIC: [u8; 8] = *b"PMWSET\0\n";
/// The one format version this pagemesh reads and writes.
pub const VERSION: u32 = 1;
const PAGE_SIZE: u32 = 4096;
const HEADER_BYTES: usize = 8 + 4 + 4 + 8 + 8 + 8;

/// A recorded working set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkingSet {
    pub image_bytes: u64,
    pub pages: Vec<u64>,
    pub dropped: u64,
}

/// Why a working-set file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{path}: not a pagemesh working-set record")]
    NotOne { path: String },
    #[error(
        "{path}: a working-set record of format version {found}; this pagemesh reads version \
         {VERSION} only (record it again with this pagemesh's `vm serve --record`)"
    )]
    Version { path: String, found: u32 },
    #[error("{path}: damaged working-set record: {why}")]
    Damaged { path: String, why: String },
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl WorkingSet {
    pub fn encode(&self) -> Vec<u8> {
        assert!(self.pages.len() <= MAX_WORKING_SET_PAGES);
        let mut b = Vec::with_capacity(HEADER_BYTES + 8 * self.pages.len() + 8);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&VERSION.to_le_bytes());
        b.extend_from_slice(&PAGE_SIZE.to_le_bytes());
        b.extend_from_slice(&self.image_bytes.to_le_bytes());
        b.extend_from_slice(&(self.pages.len() as u64).to_le_bytes());
        b.extend_from_slice(&self.dropped.to_le_bytes());
        for p in &self.pages {
            b.extend_from_slice(&p.to_le_bytes());
        }
        let sum = fnv1a(&b);
        b.extend_from_slice(&sum.to_le_bytes());
        b
    }

    /// Decode the bytes of file `path` (named in errors).
    pub fn decode(path: &Path, b: &[u8]) -> Result<WorkingSet, FormatError> {
        let path = path.display().to_string();
        if b.len() < 12 || b[..8] != MAGIC {
            return Err(FormatError::NotOne { path });
        }
        let u32_at = |i: usize| u32::from_le_bytes(b[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 bytes"));
        let found = u32_at(8);
        if found != VERSION {
            return Err(FormatError::Version { path, found });
        }
        let damaged = |why: String| FormatError::Damaged {
            path: path.clone(),
            why,
        };
        if b.len() < HEADER_BYTES + 8 {
            return Err(damaged(format!(
                "{} bytes, shorter than its header",
                b.len()
            )));
        }
        let n = u64_at(24);
        if n > MAX_WORKING_SET_PAGES as u64 || b.len() as u64 != HEADER_BYTES as u64 + 8 * n + 8 {
            return Err(damaged(format!("{} bytes for {n} pages", b.len())));
        }
        let body = b.len() - 8;
        if fnv1a(&b[..body]) != u64_at(body) {
            return Err(damaged("its checksum does not match".into()));
        }
        if u32_at(12) != PAGE_SIZE {
            return Err(damaged(format!("pages of {} bytes", u32_at(12))));
        }
        let pages = (0..n as usize)
            .map(|i| u64_at(HEADER_BYTES + 8 * i))
            .collect();
        Ok(WorkingSet {
            image_bytes: u64_at(16),
            pages,
            dropped: u64_at(32),
        })
    }

    /// Read and decode file `path`.
    pub fn load(path: &Path) -> anyhow::Result<WorkingSet> {
        use anyhow::Context;
        let b = std::fs::read(path)
            .with_context(|| format!("reading the working set {}", path.display()))?;
        Ok(WorkingSet::decode(path, &b)?)
    }

    /// Write it to `path`, durably (a temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        pagemesh_store::durable::replace_file(path, &self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws() -> WorkingSet {
        WorkingSet {
            image_bytes: 128 << 20,
            pages: vec![8192, 8193, 7, 32767],
            dropped: 3,
        }
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let b = ws().encode();
        assert_eq!(WorkingSet::decode(Path::new("f"), &b).unwrap(), ws());
    }

    #[test]
    fn another_version_is_refused_naming_both() {
        let mut b = ws().encode();
        b[8..12].copy_from_slice(&2u32.to_le_bytes());
        let e = WorkingSet::decode(Path::new("ws"), &b)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("format version 2") && e.contains("reads version 1"),
            "{e}"
        );
    }

    #[test]
    fn damage_and_strangers_are_refused() {
        let good = ws().encode();
        let mut flipped = good.clone();
        flipped[HEADER_BYTES + 3] ^= 1;
        let p = Path::new("ws");
        assert!(matches!(
            WorkingSet::decode(p, &flipped),
            Err(FormatError::Damaged { .. })
        ));
        assert!(matches!(
            WorkingSet::decode(p, &good[..good.len() - 1]),
            Err(FormatError::Damaged { .. })
        ));
        assert!(matches!(
            WorkingSet::decode(p, b"TICK iter=1"),
            Err(FormatError::NotOne { .. })
        ));
    }
}
