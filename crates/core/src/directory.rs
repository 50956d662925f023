//! The home's directory: for every page of the segments homed on this node, who holds it, its
//! version, what the mapper holds, and the one transaction in progress on it. Requests on a page
//! are served one at a time, in arrival order; the home drives every transfer and retransmits
//! until answered, so lost and duplicated messages heal.

use crate::config::SegmentInfo;
use crate::ids::{CacheState, MapperToken, PageData, PageKey, ReqId, TxnId, Version, Want};
use crate::io::Io;
use crate::msg::{DenyReason, Msg};
use pagemesh_types::{NodeId, SegmentId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

/// One unit of work on a page, queued until the page is free.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Work {
    /// A node's fault.
    Acquire {
        node: NodeId,
        req: ReqId,
        want: Want,
        have: Option<(Version, TxnId)>,
    },
    /// Write the current version to the mapper (for a sync job, or to rescue the last copy).
    Flush { job: Option<u64> },
    /// Take a node's copy back, writing it to the mapper first if it is the last copy.
    Evict { node: NodeId },
    /// Restore a poisoned page from the mapper.
    ClearPoison { node: NodeId, req: ReqId },
}

impl Work {
    /// The node whose request this is, if a node asked for it.
    pub fn requester(&self) -> Option<NodeId> {
        match self {
            Work::Acquire { node, .. } | Work::Evict { node } | Work::ClearPoison { node, .. } => {
                Some(*node)
            }
            Work::Flush { .. } => None,
        }
    }
}

/// What the transaction is waiting for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Stage {
    /// Nothing: decide the next step.
    Plan,
    /// A `FetchReply` from `from`.
    Fetch { from: NodeId, then: CacheState },
    /// A mapper read.
    MapperRead { token: MapperToken },
    /// `InvalAck`s.
    Inval { pending: BTreeSet<NodeId> },
    /// The `GrantAck` for `msg`.
    Grant { to: NodeId, msg: Msg },
    /// A mapper write of `version`.
    MapperWrite {
        token: MapperToken,
        version: Version,
    },
    /// A write-intent update.
    Intent { token: MapperToken, dirty: bool },
}

/// The transaction in progress on a page.
#[derive(Clone, Debug)]
pub(crate) struct Txn {
    pub id: TxnId,
    pub work: Work,
    /// Contents gathered so far, with their version.
    pub data: Option<(Version, PageData)>,
    pub stage: Stage,
    /// Holders already asked for data that had none.
    pub tried: BTreeSet<NodeId>,
    /// A mapper write failed.
    pub failed: bool,
    pub next_retry_ms: u64,
}

/// Directory entry of one page.
#[derive(Clone, Debug, Default)]
pub(crate) struct DirPage {
    /// Current version (0: never written in the cluster).
    pub version: Version,
    /// Version the mapper holds.
    pub durable: Version,
    /// Holder of the exclusive copy (Modified, or ExclusiveClean when `version == durable`).
    pub owner: Option<(NodeId, TxnId)>,
    /// Holders of shared copies, with the transaction that granted each.
    pub sharers: BTreeMap<NodeId, TxnId>,
    pub poisoned: bool,
    /// A write intent is durably recorded for this page (set before the first version newer
    /// than the mapper's is granted; cleared once the mapper is current again).
    pub intent: bool,
    pub txn: Option<Txn>,
    pub queue: VecDeque<Work>,
    /// Last request served per node, and whether it was denied (to answer duplicates).
    pub served: BTreeMap<NodeId, (ReqId, Option<DenyReason>)>,
    /// Last clear-poison request served per node.
    pub cleared: BTreeMap<NodeId, ReqId>,
}

impl DirPage {
    pub fn holders(&self) -> Vec<NodeId> {
        self.owner
            .iter()
            .map(|(n, _)| *n)
            .chain(self.sharers.keys().copied())
            .collect()
    }

    pub fn holder_grant(&self, n: NodeId) -> Option<TxnId> {
        match self.owner {
            Some((o, g)) if o == n => Some(g),
            _ => self.sharers.get(&n).copied(),
        }
    }

    pub fn remove_holder(&mut self, n: NodeId) -> bool {
        if self.owner.is_some_and(|(o, _)| o == n) {
            self.owner = None;
            return true;
        }
        self.sharers.remove(&n).is_some()
    }

    /// Whether the transaction holds the current version's contents.
    pub fn txn_has_current(&self) -> bool {
        self.txn
            .as_ref()
            .and_then(|t| t.data.as_ref())
            .is_some_and(|(v, _)| *v == self.version)
    }

    /// The current version exists nowhere: no holder, not in the mapper, not in flight here.
    pub fn is_lost(&self) -> bool {
        !self.poisoned
            && self.version > self.durable
            && self.owner.is_none()
            && self.sharers.is_empty()
            && !self.txn_has_current()
    }
}

/// What a checker or a status command may see of a directory entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirView {
    /// Current version.
    pub version: Version,
    /// Version in the mapper.
    pub durable: Version,
    /// Exclusive holder.
    pub owner: Option<NodeId>,
    /// Shared holders.
    pub sharers: Vec<NodeId>,
    /// Whether the page is poisoned.
    pub poisoned: bool,
    /// Whether a transaction is in progress.
    pub busy: bool,
}

/// Mapper I/O the home is waiting for.
#[derive(Debug, Default)]
pub(crate) struct MapperOps {
    next: u64,
    pub ops: BTreeMap<MapperToken, PageKey>,
}

impl MapperOps {
    /// A fresh token not tied to a page.
    pub fn token(&mut self) -> MapperToken {
        self.next += 1;
        MapperToken(self.next)
    }

    pub fn start(&mut self, page: PageKey) -> MapperToken {
        self.next += 1;
        let t = MapperToken(self.next);
        self.ops.insert(t, page);
        t
    }
}

#[derive(Debug)]
pub(crate) struct SyncJob {
    pub node: NodeId,
    pub seg: SegmentId,
    pub req: ReqId,
    pub remaining: usize,
    pub failed: u32,
}

/// The directory of every segment homed on this node.
#[derive(Debug, Default)]
pub(crate) struct Directory {
    pub segs: BTreeMap<SegmentId, SegmentInfo>,
    pub pages: BTreeMap<PageKey, DirPage>,
    /// Pages with a transaction in progress.
    pub active: BTreeSet<PageKey>,
    pub next_txn: u64,
    pub mapper: MapperOps,
    pub jobs: BTreeMap<u64, SyncJob>,
    pub next_job: u64,
    /// Last sync request per (node, segment) and its result once known.
    pub syncs_served: BTreeMap<(NodeId, SegmentId), (ReqId, Option<u32>)>,
    /// Segments whose directory is being rebuilt after this home restarted.
    pub recovering: BTreeMap<SegmentId, Recovery>,
    /// Segments rebuilt after a restart: no page is known dormant any more.
    pub recovered: BTreeSet<SegmentId>,
    /// Intent reads in flight.
    pub intent_reads: BTreeMap<MapperToken, SegmentId>,
}

/// Rebuilding one segment's directory after the home restarted.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    /// Pages with a durable write intent, once read.
    pub intents: Option<BTreeSet<u64>>,
    /// Peers that have not reported their holdings yet.
    pub waiting: BTreeSet<NodeId>,
    /// What the peers reported.
    pub holdings: Vec<(NodeId, u64, CacheState, Version, TxnId)>,
    /// Peers whose report came in parts and is not complete yet.
    pub partial: BTreeMap<NodeId, Partial>,
    pub next_retry_ms: u64,
}

/// The parts received so far of one node's report (`Msg::Holdings`).
#[derive(Debug, Default)]
pub(crate) struct Partial {
    pub snapshot: u64,
    pub parts: u32,
    pub got: BTreeSet<u32>,
    pub copies: Vec<(u64, CacheState, Version, TxnId)>,
}

pub(crate) fn seg_range(seg: SegmentId) -> std::ops::RangeInclusive<PageKey> {
    PageKey::new(seg, 0)..=PageKey::new(seg, u64::MAX)
}

impl Directory {
    pub fn view(&self, page: PageKey) -> Option<DirView> {
        let p = self.pages.get(&page)?;
        Some(DirView {
            version: p.version,
            durable: p.durable,
            owner: p.owner.map(|(n, _)| n),
            sharers: p.sharers.keys().copied().collect(),
            poisoned: p.poisoned,
            busy: p.txn.is_some() || !p.queue.is_empty(),
        })
    }

    pub fn is_idle(&self) -> bool {
        self.active.is_empty() && self.recovering.is_empty()
    }

    pub(crate) fn page_mut(&mut self, io: &mut Io, page: PageKey) -> Option<&mut DirPage> {
        match self.segs.get(&page.seg) {
            Some(s) if page.page.0 < s.pages => Some(self.pages.entry(page).or_default()),
            _ => {
                io.protocol_error(format!("{page} is not in a segment homed on {}", io.id));
                None
            }
        }
    }
}
