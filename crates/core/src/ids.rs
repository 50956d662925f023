//! Identifiers, versions and small value types of the coherence protocol.

use pagemesh_types::{PageNo, SegmentId};
use std::fmt;

/// Incarnation of a node. A node that restarts comes back with a larger epoch, and nothing its
/// earlier incarnations held or asked for counts any more. `Epoch(0)` means "not known yet".
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

/// Version of a page's contents, kept by the home. Version 0 is the contents the page had before
/// any write in the cluster (zero for a dormant page, the mapper's data otherwise); every grant of
/// write permission makes a new version.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Version(pub u64);

/// Id of a request a node sends to a home (fault, sync, clear-poison). Increasing per node
/// incarnation; the home uses it to drop duplicates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ReqId(pub u64);

/// Id of a transaction at a home. Increasing per home incarnation. A node remembers the
/// transaction that granted its copy, so a late duplicate of an older invalidation or fetch
/// cannot touch a newer copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TxnId(pub u64);

/// A local fault the driver asked the core to resolve (one per faulting thread or I/O call).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct FaultId(pub u64);

/// A local request to the home that is not a fault: a segment sync or a clear-poison.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct CallId(pub u64);

/// Names one mapper I/O the core asked for, so its completion can be matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct MapperToken(pub u64);

/// One page of one segment: the unit of coherence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct PageKey {
    /// The segment.
    pub seg: SegmentId,
    /// The page within it.
    pub page: PageNo,
}

impl PageKey {
    /// Page `page` of segment `seg`.
    pub fn new(seg: SegmentId, page: u64) -> PageKey {
        PageKey {
            seg,
            page: PageNo(page),
        }
    }
}

impl fmt::Display for PageKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.seg, self.page.0)
    }
}

/// What a faulting access needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Access {
    /// A load: any valid copy will do.
    Read,
    /// A store or an atomic read-modify-write: the single writable copy.
    Write,
}

/// State of a page in one node's cache (DESIGN.md section 3). `Invalid` is the absence of an
/// entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CacheState {
    /// Read-only; other nodes may hold read-only copies too.
    Shared,
    /// The only copy, clean (the mapper holds this version), write-protected. A write asks the
    /// home for a new version, which needs no invalidations and no data.
    ExclusiveClean,
    /// The only copy, writable, possibly dirty.
    Modified,
}

impl CacheState {
    /// Whether this state excludes every other copy in the cluster.
    pub fn is_exclusive(self) -> bool {
        !matches!(self, CacheState::Shared)
    }
}

/// What a node asks the home for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Want {
    /// A read-only copy.
    Shared,
    /// The single writable copy.
    Exclusive,
}

/// Contents of a page as the core moves them around. The core never looks inside.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum PageData {
    /// All zeros: a dormant page. Installed with `UFFDIO_ZEROPAGE`, nothing on the wire.
    Zero,
    /// The current contents of this page in the *sender's* local cache. The driver replaces it
    /// with [`PageData::Bytes`] when it executes the send, after the outputs that precede it
    /// (so a downgrade is in effect before the page is read).
    Local,
    /// The bytes themselves.
    Bytes(Vec<u8>),
}

/// How a local fault ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FaultResult {
    /// The page is installed with at least the access asked for; wake the thread.
    Ok,
    /// The page's only valid copy was lost (or the mapper failed): deliver SIGBUS
    /// (`UFFDIO_POISON`).
    Poisoned,
    /// The mapper could not read the page: deliver SIGBUS, and report the I/O error.
    MapperFailed,
    /// No answer within `fault_timeout_ms`; deliver SIGBUS and report which page and home.
    TimedOut,
    /// The page is not in any segment this node knows.
    UnknownSegment,
}

/// How a sync or clear-poison call ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CallResult {
    /// Done: for a sync, every write that completed before the call is durable in the mapper.
    Ok,
    /// Some pages could not be made durable: they are poisoned or the mapper failed.
    Failed {
        /// How many pages failed.
        pages: u32,
    },
    /// No answer within `fault_timeout_ms`.
    TimedOut,
    /// The segment is not known to this node.
    UnknownSegment,
}

/// A mapper I/O failure as the driver reports it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct MapperError(pub String);
