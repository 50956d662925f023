//! What the cluster engine is asked to do ([`Input`]): by the node layer (attachments,
//! evictions), the socket API (create, sync, I/O, stat, remove, clear-poison, barriers, locks,
//! status) and the peer transport (inbound connections, fences). Each request carries the
//! channel its answer goes back on.

use std::sync::mpsc::Sender;
use std::sync::Arc;

use pagemesh_core::Epoch;
use pagemesh_node::segment::{Attachment, Segment};
use pagemesh_proto::{ClusterStatus, SegmentInfo};
use pagemesh_types::{NodeId, SegmentId};

use crate::io::IoFailure;

/// What the engine is asked to do.
pub enum Input {
    /// A process attached a cluster segment: serve its uffd.
    Attach(Arc<Attachment>),
    /// The attachment is gone (the process detached or died).
    Detach(u64),
    /// A peer's connection passed its hello: read it.
    Inbound {
        from: NodeId,
        epoch: Epoch,
        stream: crate::peer_stream::InboundStream,
    },
    /// The connection to a peer is (re)established: tell it what this node knows.
    PeerConnected(NodeId),
    /// A peer declared this incarnation dead: it must not go on.
    Fenced {
        by: NodeId,
        reason: String,
    },
    /// A segment was created here (this node is its home): tell the cluster.
    Created(Arc<Segment>),
    /// Ask the home of `name`'s would-be segment to create it.
    CreateRemote {
        home: NodeId,
        name: String,
        size_bytes: Option<u64>,
        backing: pagemesh_proto::Backing,
        owner: pagemesh_proto::Owner,
        reply: Sender<Result<SegmentInfo, String>>,
    },
    /// Change a cluster segment's owner or mode (at its home).
    SetOwner(crate::OwnerRequest, Sender<Result<SegmentInfo, String>>),
    Sync {
        seg: SegmentId,
        reply: Sender<Result<(), String>>,
    },
    /// Segment I/O through the coherence protocol: read `len` bytes, or write `data`.
    Io {
        seg: SegmentId,
        offset: u64,
        len: u64,
        data: Option<Vec<u8>>,
        reply: Sender<Result<Vec<u8>, IoFailure>>,
    },
    Stat {
        seg: SegmentId,
        reply: Sender<ClusterSegStat>,
    },
    /// Remove a cluster segment from the cluster (run by its home, which checks the caller
    /// again: the owner or root may).
    Remove {
        seg: SegmentId,
        uid: u32,
        gids: Vec<u32>,
        reply: Sender<Result<(), String>>,
    },
    /// The memory pool wants this page out of the node (the home takes it back).
    Evict {
        seg: Arc<Segment>,
        page: u64,
    },
    /// Restore every poisoned page of a segment from its mapper (or zero); answers how many.
    ClearPoison {
        seg: SegmentId,
        reply: Sender<Result<u64, String>>,
    },
    Barrier {
        seg: SegmentId,
        barrier: u32,
        parties: u32,
        token: u64,
        reply: Sender<Result<u64, String>>,
    },
    /// Forget a waiter whose client gave up (timeout, disconnect).
    Forget {
        token: u64,
    },
    Lock {
        seg: SegmentId,
        lock: u32,
        token: u64,
        reply: Sender<Result<(), String>>,
    },
    Unlock {
        seg: SegmentId,
        lock: u32,
        token: u64,
    },
    Status {
        reply: Sender<ClusterStatus>,
    },
    /// The daemon is shutting down: read no more faults (they wait in their uffds until the
    /// processes' watchdogs poison them), so that a sync after this captures every write.
    StopFaults {
        reply: Sender<()>,
    },
}

/// What `segment stat` adds for a cluster segment.
#[derive(Clone, Debug, Default)]
pub struct ClusterSegStat {
    pub resident_pages: u64,
    pub modified_pages: u64,
    pub poisoned_pages: u64,
    pub poisoned_known_here: bool,
}
