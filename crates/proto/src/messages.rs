//! The messages themselves.

use serde::{Deserialize, Serialize};

/// What backs a segment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backing {
    /// Anonymous memory: dormant pages read as zero.
    Zero,
    /// A file on the home node: read on first access, dirty pages written back on sync.
    File { path: String },
    /// A read-only volume (`pagemesh volume add`): unmodified pages are the volume's shared
    /// frames; a write gives the writing process a private copy.
    Volume { name: String },
}

impl std::fmt::Display for Backing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backing::Zero => f.write_str("zero"),
            Backing::File { path } => write!(f, "file:{path}"),
            Backing::Volume { name } => write!(f, "volume:{name}"),
        }
    }
}

impl std::str::FromStr for Backing {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "zero" {
            Ok(Backing::Zero)
        } else if let Some(path) = s.strip_prefix("file:") {
            if path.is_empty() {
                return Err("file backing needs a path: file:PATH".into());
            }
            Ok(Backing::File {
                path: path.to_string(),
            })
        } else if let Some(name) = s.strip_prefix("volume:") {
            if name.is_empty() {
                return Err("volume backing needs a volume name: volume:NAME".into());
            }
            Ok(Backing::Volume {
                name: name.to_string(),
            })
        } else {
            Err(format!(
                "unknown backing {s:?}: expected zero, file:PATH or volume:NAME"
            ))
        }
    }
}

/// A request from a client to its node's daemon.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// First message on every connection.
    Hello {
        magic: [u8; 4],
        version: u32,
        client: String,
    },
    /// Create a segment. `size_bytes: None` for a file backing means the file's size.
    CreateSegment {
        name: String,
        size_bytes: Option<u64>,
        backing: Backing,
        /// The partition its pages count against (`None`: "default").
        partition: Option<String>,
        /// The home node of a cluster segment (`None`: this node). Refused without a cluster.
        home: Option<u32>,
        /// Permission bits (`None`: [`Owner::DEFAULT_MODE`]); the caller owns it.
        mode: Option<u32>,
    },
    /// Change a segment's permission bits (its owner or root).
    ChmodSegment {
        name: String,
        mode: u32,
    },
    /// Change a segment's owner and group (root only).
    ChownSegment {
        name: String,
        uid: Option<u32>,
        gid: Option<u32>,
    },
    ListSegments,
    /// Segments in the catalog that could not be opened (a missing backing file, a cluster
    /// segment on a daemon started without its cluster), with why.
    ListUnavailable,
    StatSegment {
        name: String,
    },
    /// Write every dirty page of a file segment back to its file and fsync it.
    SyncSegment {
        name: String,
    },
    RemoveSegment {
        name: String,
    },
    /// Read `len` bytes (at most `MAX_IO_CHUNK_BYTES`) through the node's page cache.
    ReadAt {
        name: String,
        offset: u64,
        len: u64,
    },
    /// Write bytes through the node's page cache (at most `MAX_IO_CHUNK_BYTES`).
    WriteAt {
        name: String,
        offset: u64,
        data: Vec<u8>,
    },
    /// Forget poison on every poisoned page: the page reloads from the mapper (or reads as
    /// zero for `zero` segments) on next access.
    ClearPoison {
        name: String,
    },
    /// Ask for the segment's memfd (sent with the reply). `read_only`: a read-only descriptor
    /// of it, which the client can only map readable (the caller needs read permission, not
    /// write).
    Attach {
        name: String,
        read_only: bool,
    },
    /// Hand the daemon the uffd (sent with this frame) that covers the mapping at `base`.
    /// After the reply this connection is the attachment's lease: when it closes, the daemon
    /// forgets the client, and when the daemon dies the client's watchdog sees the close.
    RegisterUffd {
        attach_id: u64,
        base: u64,
        len: u64,
    },
    /// Daemon identity, uffd mode and limits.
    DaemonStatus,
    /// Register a raw image file as a read-only volume.
    AddVolume {
        name: String,
        path: String,
    },
    ListVolumes,
    CreatePartition {
        name: String,
        limits: PartitionLimits,
    },
    ListPartitions,
    StatPartition {
        name: String,
    },
    /// Change a partition's limits (absent fields stay).
    SetPartition {
        name: String,
        min_bytes: Option<u64>,
        max_bytes: Option<u64>,
        weight: Option<u32>,
    },
    RemovePartition {
        name: String,
    },
    /// Fault in and pin `[offset, offset+len)` of a segment: never evicted until unpinned.
    Pin {
        name: String,
        offset: u64,
        len: u64,
    },
    Unpin {
        name: String,
        offset: u64,
        len: u64,
    },
    /// One page's state and paging slot (diagnostics).
    PageInfo {
        name: String,
        page: u64,
    },
    StatVolume {
        name: String,
    },
    RemoveVolume {
        name: String,
    },
    /// Wait at barrier `barrier` of a cluster segment until `parties` processes (on any nodes)
    /// arrived. Served by the segment's home; ends after `timeout_ms` with an error.
    BarrierWait {
        name: String,
        barrier: u32,
        parties: u32,
        timeout_ms: u64,
    },
    /// Take lock `lock` of a cluster segment (FIFO at the segment's home). Held until
    /// `LockRelease` or until this connection closes.
    LockAcquire {
        name: String,
        lock: u32,
        timeout_ms: u64,
    },
    LockRelease {
        name: String,
        lock: u32,
    },
    /// The cluster as this node sees it.
    ClusterStatus,
    /// Serve a VM's guest memory from volume `volume` (`pagemesh vm serve`): the VMM's
    /// userfaultfd and a pidfd of the VMM process (`vmm_pid`) come with this frame, in that
    /// order. Each region maps `size` bytes at `base` in the VMM to `offset` in the image.
    /// After the reply (`VmAttached`) this connection is the VM's lease: when it closes while
    /// the VMM lives, the daemon stops the VM (nothing would stop it should the daemon die).
    AttachVm {
        volume: String,
        vmm_pid: i32,
        regions: Vec<VmRegion>,
    },
}

/// A guest memory region as a VMM reports it (Firecracker's `GuestRegionUffdMapping`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRegion {
    /// Where the region starts in the VMM's address space.
    pub base: u64,
    pub size_bytes: u64,
    /// Its offset in the snapshot's memory file (the volume's image).
    pub offset: u64,
}

/// One node as `pagemesh cluster status` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNode {
    pub id: u32,
    pub addr: String,
    /// The incarnation last heard (0: never).
    pub epoch: u64,
    /// Heard from within the dead-peer limit (always true for the node answering).
    pub alive: bool,
    /// Declared dead (fenced) by the node answering.
    pub declared_dead: bool,
    /// Milliseconds since the node answering last heard from it.
    pub silent_ms: u64,
    /// Its figures, if it answered in time.
    pub figures: Option<crate::peer::NodeFigures>,
}

/// The cluster as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub cluster_id: u64,
    pub node: u32,
    pub epoch: u64,
    pub nodes: Vec<ClusterNode>,
    pub segments: Vec<SegmentInfo>,
}

/// A partition's limits, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionLimits {
    pub min_bytes: u64,
    pub max_bytes: u64,
    pub weight: u32,
}

/// A partition and its use of the node's memory pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionStat {
    pub name: String,
    pub limits: PartitionLimits,
    /// What it keeps under pressure: min + its weight's share of the rest, capped at max.
    pub entitlement_bytes: u64,
    pub resident_bytes: u64,
    pub pinned_bytes: u64,
    pub segments: u64,
    pub evictions: u64,
    pub page_ins: u64,
    pub page_outs: u64,
    pub paging_errors: u64,
}

/// One page of a segment, for diagnostics.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageInfo {
    pub page: u64,
    pub state: String,
    pub pinned: bool,
    pub referenced: bool,
    /// The paging-device slot holding its data (or its clean copy), if any.
    pub slot: Option<u32>,
}

/// A read-only volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeInfo {
    pub name: String,
    pub path: String,
    pub size_bytes: u64,
}

/// A volume's cache and I/O on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeStat {
    pub info: VolumeInfo,
    /// Blocks in the shared volume cache (one frame each, however many processes map it).
    pub cached_blocks: u64,
    pub poisoned_blocks: u64,
    /// Reads issued to the image file, and their bytes.
    pub storage_reads: u64,
    pub storage_bytes_read: u64,
    /// Faults served by mapping a shared frame.
    pub shared_maps: u64,
    /// Faults served with a private copy (block below the sharing threshold).
    pub private_copies: u64,
    /// Faults that found their block already being read and waited for that read.
    pub coalesced_waits: u64,
    /// Segments backed by this volume.
    pub segments: u64,
    /// Faults a block needs before it enters the shared cache.
    pub share_threshold: u32,
}

/// Fault and I/O counters of a segment on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentCounters {
    /// Pages the prefetcher read ahead of sequential readers.
    pub prefetched: u64,
    pub evictions: u64,
    pub page_ins: u64,
    pub page_outs: u64,
    pub faults_missing: u64,
    pub faults_minor: u64,
    pub faults_wp: u64,
    pub zero_fills: u64,
    pub mapper_reads: u64,
    pub mapper_bytes_read: u64,
    pub mapper_bytes_written: u64,
    pub poisonings: u64,
    pub syncs: u64,
    /// Fault service time in the daemon (from reading the message to resolving it).
    pub fault_service_p50_ns: u64,
    pub fault_service_p99_ns: u64,
}

/// A segment's description.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentInfo {
    pub name: String,
    pub id: u64,
    pub size_bytes: u64,
    pub backing: Backing,
    /// The node that runs the segment's directory and mapper, for a segment shared across a
    /// cluster; `None` for a node-local segment (a daemon started without peers, volumes).
    #[serde(default)]
    pub home: Option<u32>,
    /// Who owns it and what others may do with it.
    pub owner: Owner,
}

/// A segment's owner and mode: the creator's uid and gid, and permission bits as for a file
/// (`0o640`: the owner reads and writes, its group reads, others nothing). One uid namespace
/// across a cluster. Root may do everything.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    /// Permission bits (`0o777` at most; execute bits mean nothing).
    pub mode: u32,
}

/// A change of a segment's owner or mode (`None`: unchanged).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OwnerChange {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

impl OwnerChange {
    /// `owner` changed so, if the caller (`uid`, `gids`) may: the mode by the owner or root,
    /// the owner and group by root only; a mode of permission bits only.
    pub fn apply(&self, owner: Owner, uid: u32) -> Result<Owner, String> {
        if self.mode.is_some_and(|m| m > 0o777) {
            return Err(format!(
                "mode {:o}: permission bits only (at most 777, octal)",
                self.mode.unwrap_or_default()
            ));
        }
        if (self.uid.is_some() || self.gid.is_some()) && uid != 0 {
            return Err(format!(
                "changing the owner is root's to do (uid {uid} asked)"
            ));
        }
        if self.mode.is_some() && uid != 0 && uid != owner.uid {
            return Err(format!(
                "changing the mode is the owner's (uid {}) or root's (uid {uid} asked)",
                owner.uid
            ));
        }
        Ok(Owner {
            uid: self.uid.unwrap_or(owner.uid),
            gid: self.gid.unwrap_or(owner.gid),
            mode: self.mode.unwrap_or(owner.mode),
        })
    }
}

/// What a caller wants of a segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Its contents (read, page info).
    Read,
    /// Change its contents (write, attach, sync, pin, clear poison, barriers and locks).
    Write,
    /// Change the segment itself (remove, chmod): the owner's or root's.
    Own,
}

impl Owner {
    /// The mode of a segment created without one.
    pub const DEFAULT_MODE: u32 = 0o600;

    /// Whether a caller with `uid` and groups `gids` (its primary group first) may do `what`.
    pub fn allows(&self, uid: u32, gids: &[u32], what: Access) -> bool {
        if uid == 0 {
            return true;
        }
        let bits = if uid == self.uid {
            self.mode >> 6
        } else if gids.contains(&self.gid) {
            self.mode >> 3
        } else {
            self.mode
        };
        match what {
            Access::Read => bits & 0o4 != 0,
            Access::Write => bits & 0o2 != 0,
            Access::Own => uid == self.uid,
        }
    }

    /// `0o640` as `rw-r-----`.
    pub fn mode_string(&self) -> String {
        let mut s = String::with_capacity(9);
        for shift in [6, 3, 0] {
            let b = self.mode >> shift;
            s.push(if b & 4 != 0 { 'r' } else { '-' });
            s.push(if b & 2 != 0 { 'w' } else { '-' });
            s.push(if b & 1 != 0 { 'x' } else { '-' });
        }
        s
    }
}

/// A segment of the catalog this node could not open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnavailableSegment {
    pub info: SegmentInfo,
    /// Why (the error opening it), and what to do.
    pub why: String,
}

/// A segment's state on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SegmentStat {
    pub info: SegmentInfo,
    /// The partition its pages count against ("-" for volume segments).
    pub partition: String,
    /// Pages in the paging device.
    pub paged_pages: u64,
    pub pinned_pages: u64,
    pub resident_pages: u64,
    pub dirty_pages: u64,
    pub poisoned_pages: u64,
    pub attached_clients: u64,
    pub counters: SegmentCounters,
}

/// The daemon's identity and environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonInfo {
    pub pid: u32,
    pub memory_budget_bytes: u64,
    pub memory_resident_bytes: u64,
    pub paging_device: String,
    pub paging_slots_used: u64,
    pub paging_slots_total: u64,
    /// Faults that waited for the evictor because the pool was at its budget.
    pub backpressure_waits: u64,
    pub version: String,
    pub uffd_mode: String,
    pub fault_workers: u32,
    pub segments: u64,
    pub attached_clients: u64,
    /// Client connections open (attachments included).
    pub connections: u64,
    pub data_dir: String,
}

/// Classes of failure, so clients can match on them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorCode {
    NotFound,
    AlreadyExists,
    InvalidArgument,
    Io,
    Poisoned,
    Protocol,
    VersionMismatch,
    Internal,
    /// A bounded wait ended (barrier, lock, a node that did not answer).
    TimedOut,
    /// Too many connections (from this user, or in all); nothing was done: try again later.
    Busy,
    /// The object is in use (a segment attached, a volume backing segments): nothing was done.
    InUse,
    /// The caller may not do this (`SO_PEERCRED`): nothing was done.
    PermissionDenied,
    /// The daemon closed this connection for being idle; the request sent on it, if any, was
    /// not read: send it again on a new connection (the client library does).
    Idle,
}

/// A reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    HelloOk {
        version: u32,
        daemon_pid: u32,
    },
    Segment(SegmentInfo),
    Segments(Vec<SegmentInfo>),
    Unavailable(Vec<UnavailableSegment>),
    Stat(SegmentStat),
    Synced {
        pages_written: u64,
    },
    Removed,
    Data(Vec<u8>),
    Written {
        bytes: u64,
    },
    PoisonCleared {
        pages: u64,
    },
    /// The memfd comes with this frame; with `lease_slot`, the node's lease board too
    /// (`lease_board`: a cluster segment homed on another node, whose lease the client checks).
    Attached {
        info: SegmentInfo,
        attach_id: u64,
        lease_slot: Option<u32>,
    },
    Registered,
    Status(DaemonInfo),
    Volume(VolumeInfo),
    Volumes(Vec<VolumeInfo>),
    Partition(PartitionStat),
    Partitions(Vec<PartitionStat>),
    Pinned {
        pages: u64,
    },
    Unpinned {
        pages: u64,
    },
    Page(PageInfo),
    VolumeStat(VolumeStat),
    BarrierPassed {
        generation: u64,
    },
    LockHeld,
    LockReleased,
    Cluster(ClusterStatus),
    /// The VM's faults are served from now on.
    VmAttached {
        vm_id: u64,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backing_round_trips() {
        for s in ["zero", "file:/tmp/x", "volume:golden"] {
            assert_eq!(s.parse::<Backing>().unwrap().to_string(), s);
        }
        assert!("file:".parse::<Backing>().is_err());
        assert!("nfs:x".parse::<Backing>().is_err());
    }

    #[test]
    fn garbage_never_panics_the_decoder() {
        // A fixed-seed xorshift stream of random buffers and truncations of valid messages.
        let valid = postcard::to_stdvec(&Request::WriteAt {
            name: "s".into(),
            offset: 1,
            data: vec![1, 2, 3],
        })
        .unwrap();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for i in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 64) as usize;
            let buf: Vec<u8> = (0..len)
                .map(|j| (x >> (j % 8 * 8)) as u8 ^ j as u8)
                .collect();
            let _ = postcard::from_bytes::<Request>(&buf);
            let _ = postcard::from_bytes::<Response>(&buf);
            let cut = i % valid.len();
            assert!(postcard::from_bytes::<Request>(&valid[..cut]).is_err() || cut == valid.len());
        }
    }
}

#[cfg(test)]
mod owner_tests {
    use super::*;

    const MINE: Owner = Owner {
        uid: 1000,
        gid: 100,
        mode: 0o640,
    };

    #[test]
    fn the_mode_is_read_as_a_files() {
        assert!(MINE.allows(1000, &[5], Access::Write));
        assert!(MINE.allows(7, &[5, 100], Access::Read));
        assert!(!MINE.allows(7, &[5, 100], Access::Write));
        assert!(!MINE.allows(7, &[5], Access::Read));
        assert!(!MINE.allows(7, &[100], Access::Own));
        assert!(MINE.allows(0, &[0], Access::Own));
        assert_eq!(MINE.mode_string(), "rw-r-----");
    }

    #[test]
    fn a_change_is_the_owners_or_roots_and_an_owner_change_roots_only() {
        let chmod = OwnerChange {
            mode: Some(0o604),
            ..OwnerChange::default()
        };
        assert_eq!(chmod.apply(MINE, 1000).map(|o| o.mode), Ok(0o604));
        assert!(
            chmod.apply(MINE, 7).is_err(),
            "someone else changed the mode"
        );
        let chown = OwnerChange {
            uid: Some(7),
            ..OwnerChange::default()
        };
        assert!(chown.apply(MINE, 1000).is_err(), "the owner gave it away");
        assert_eq!(chown.apply(MINE, 0).map(|o| (o.uid, o.gid)), Ok((7, 100)));
        let bad = OwnerChange {
            mode: Some(0o4755),
            ..OwnerChange::default()
        };
        assert!(bad.apply(MINE, 0).is_err(), "setuid bits taken");
    }
}
