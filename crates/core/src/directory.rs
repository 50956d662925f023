//! The home's directory: for every page of the segments homed on this node, who holds it, its
//! version, what the mapper holds, and the one transaction in progress on it. Requests on a page
//! are served one at a time, in arrival order; the home drives every transfer and retransmits
//! until answered, so lost and duplicated messages heal.

use crate::config::SegmentInfo;
use crate::coverage::Branch;
use crate::ids::{
    CacheState, MapperError, MapperToken, PageData, PageKey, ReqId, TxnId, Version, Want,
};
use crate::io::Io;
use crate::msg::{DenyReason, Msg};
use crate::output::Event;
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
}

fn seg_range(seg: SegmentId) -> std::ops::RangeInclusive<PageKey> {
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
        self.active.is_empty()
    }

    fn page_mut(&mut self, io: &mut Io, page: PageKey) -> Option<&mut DirPage> {
        match self.segs.get(&page.seg) {
            Some(s) if page.page.0 < s.pages => Some(self.pages.entry(page).or_default()),
            _ => {
                io.protocol_error(format!("{page} is not in a segment homed on {}", io.id));
                None
            }
        }
    }

    /// Messages from nodes to this home.
    pub fn on_msg(&mut self, io: &mut Io, from: NodeId, msg: Msg) {
        match msg {
            Msg::Acquire {
                page,
                req,
                want,
                have,
            } => self.on_acquire(io, from, page, req, want, have),
            Msg::GrantAck { page, txn } => self.on_grant_ack(io, from, page, txn),
            Msg::FetchReply { page, txn, copy } => self.on_fetch_reply(io, from, page, txn, copy),
            Msg::InvalAck { page, txn } => self.on_inval_ack(io, from, page, txn),
            Msg::Evict { page } => self.on_evict(io, from, page),
            Msg::SyncReq { seg, req } => self.on_sync_req(io, from, seg, req),
            Msg::ClearPoison { page, req } => self.on_clear_poison(io, from, page, req),
            other => io.protocol_error(format!("home got a cache-bound message: {other}")),
        }
    }

    fn on_acquire(
        &mut self,
        io: &mut Io,
        from: NodeId,
        page: PageKey,
        req: ReqId,
        want: Want,
        have: Option<(Version, TxnId)>,
    ) {
        let max_queue = io.max_queue;
        let Some(p) = self.page_mut(io, page) else {
            return;
        };
        if let Some((r, deny)) = p.served.get(&from).copied() {
            if req <= r {
                if let (true, Some(reason)) = (req == r, deny) {
                    io.hit(Branch::HomeResendDeny);
                    io.send(from, Msg::Deny { page, req, reason });
                } else {
                    io.hit(Branch::HomeDuplicateRequest);
                }
                return;
            }
        }
        let same = |w: &Work| matches!(w, Work::Acquire { node, req: r, .. } if *node == from && *r == req);
        if p.txn.as_ref().is_some_and(|t| same(&t.work)) || p.queue.iter().any(same) {
            io.hit(Branch::HomeDuplicateRequest);
            return;
        }
        if p.queue.len() >= max_queue {
            io.hit(Branch::HomeQueueFull);
            return;
        }
        p.queue.push_back(Work::Acquire {
            node: from,
            req,
            want,
            have,
        });
        self.advance(io, page);
    }

    fn on_grant_ack(&mut self, io: &mut Io, from: NodeId, page: PageKey, txn: TxnId) {
        let Some(p) = self.pages.get_mut(&page) else {
            return;
        };
        let Some(t) = p.txn.as_ref().filter(|t| t.id == txn) else {
            io.hit(Branch::HomeStaleReply);
            return;
        };
        if !matches!(&t.stage, Stage::Grant { to, .. } if *to == from) {
            io.hit(Branch::HomeStaleReply);
            return;
        }
        if let Work::Acquire { node, req, .. } = t.work {
            p.served.insert(node, (req, None));
        }
        p.txn = None;
        self.advance(io, page);
    }

    fn on_fetch_reply(
        &mut self,
        io: &mut Io,
        from: NodeId,
        page: PageKey,
        txn: TxnId,
        copy: Option<(Version, PageData)>,
    ) {
        let Some(p) = self.pages.get_mut(&page) else {
            return;
        };
        let Some(t) = p.txn.as_mut().filter(|t| t.id == txn) else {
            io.hit(Branch::HomeStaleReply);
            return;
        };
        let then = match t.stage {
            Stage::Fetch { from: f, then } if f == from => then,
            _ => {
                io.hit(Branch::HomeStaleReply);
                return;
            }
        };
        t.stage = Stage::Plan;
        match copy {
            Some((v, data)) if v == p.version => {
                t.data = Some((v, data));
                if then == CacheState::Shared {
                    if let Some((o, g)) = p.owner.filter(|(o, _)| *o == from) {
                        p.owner = None;
                        p.sharers.insert(o, g);
                    }
                }
            }
            other => {
                if let Some((v, _)) = other {
                    io.protocol_error(format!(
                        "{page}: {from} sent v{} but the current version is v{}",
                        v.0, p.version.0
                    ));
                }
                io.hit(Branch::HomeFetchReplyNone);
                t.tried.insert(from);
                p.remove_holder(from);
            }
        }
        self.advance(io, page);
    }

    fn on_inval_ack(&mut self, io: &mut Io, from: NodeId, page: PageKey, txn: TxnId) {
        let Some(p) = self.pages.get_mut(&page) else {
            return;
        };
        let Some(t) = p.txn.as_mut().filter(|t| t.id == txn) else {
            io.hit(Branch::HomeStaleReply);
            return;
        };
        let Stage::Inval { pending } = &mut t.stage else {
            io.hit(Branch::HomeStaleReply);
            return;
        };
        if !pending.remove(&from) {
            io.hit(Branch::HomeStaleReply);
            return;
        }
        let done = pending.is_empty();
        if done {
            t.stage = Stage::Plan;
        }
        p.remove_holder(from);
        if done {
            self.advance(io, page);
        }
    }

    fn on_evict(&mut self, io: &mut Io, from: NodeId, page: PageKey) {
        let Some(p) = self.page_mut(io, page) else {
            return;
        };
        let queued = |w: &Work| *w == Work::Evict { node: from };
        if p.holder_grant(from).is_none()
            || p.txn.as_ref().is_some_and(|t| queued(&t.work))
            || p.queue.iter().any(queued)
        {
            return;
        }
        p.queue.push_back(Work::Evict { node: from });
        self.advance(io, page);
    }

    fn on_clear_poison(&mut self, io: &mut Io, from: NodeId, page: PageKey, req: ReqId) {
        let Some(p) = self.page_mut(io, page) else {
            return;
        };
        if p.cleared.get(&from).is_some_and(|r| req <= *r) {
            io.send(from, Msg::ClearPoisonDone { page, req });
            return;
        }
        let w = Work::ClearPoison { node: from, req };
        if p.txn.as_ref().is_some_and(|t| t.work == w) || p.queue.contains(&w) {
            return;
        }
        p.queue.push_back(w);
        self.advance(io, page);
    }

    fn on_sync_req(&mut self, io: &mut Io, from: NodeId, seg: SegmentId, req: ReqId) {
        if !self.segs.contains_key(&seg) {
            io.protocol_error(format!("sync of {seg}, which is not homed on {}", io.id));
            return;
        }
        if let Some((r, res)) = self.syncs_served.get(&(from, seg)).copied() {
            if req <= r {
                io.hit(Branch::SyncDuplicate);
                if let (true, Some(failed_pages)) = (req == r, res) {
                    io.send(
                        from,
                        Msg::SyncDone {
                            seg,
                            req,
                            failed_pages,
                        },
                    );
                }
                return;
            }
        }
        let dirty: Vec<PageKey> = self
            .pages
            .range(seg_range(seg))
            .filter(|(_, p)| p.version > p.durable)
            .map(|(k, _)| *k)
            .collect();
        if dirty.is_empty() {
            io.hit(Branch::SyncEmpty);
            self.syncs_served.insert((from, seg), (req, Some(0)));
            io.send(
                from,
                Msg::SyncDone {
                    seg,
                    req,
                    failed_pages: 0,
                },
            );
            return;
        }
        io.hit(Branch::SyncStarted);
        self.next_job += 1;
        let job = self.next_job;
        self.jobs.insert(
            job,
            SyncJob {
                node: from,
                seg,
                req,
                remaining: dirty.len(),
                failed: 0,
            },
        );
        self.syncs_served.insert((from, seg), (req, None));
        for page in dirty {
            if let Some(p) = self.pages.get_mut(&page) {
                p.queue.push_back(Work::Flush { job: Some(job) });
            }
            self.advance(io, page);
        }
    }

    /// A flush for sync job `job` ended.
    pub fn flush_done(&mut self, io: &mut Io, job: u64, ok: bool) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        j.remaining -= 1;
        if !ok {
            j.failed += 1;
        }
        if j.remaining == 0 {
            if let Some(j) = self.jobs.remove(&job) {
                self.syncs_served
                    .insert((j.node, j.seg), (j.req, Some(j.failed)));
                io.send(
                    j.node,
                    Msg::SyncDone {
                        seg: j.seg,
                        req: j.req,
                        failed_pages: j.failed,
                    },
                );
            }
        }
    }

    pub fn mapper_read_done(
        &mut self,
        io: &mut Io,
        token: MapperToken,
        result: Result<PageData, MapperError>,
    ) {
        let Some(page) = self.mapper.ops.remove(&token) else {
            return;
        };
        let Some(p) = self.pages.get_mut(&page) else {
            return;
        };
        let version = p.version;
        let Some(t) = p
            .txn
            .as_mut()
            .filter(|t| t.stage == Stage::MapperRead { token })
        else {
            return;
        };
        match result {
            Ok(data) => t.data = Some((version, data)),
            Err(e) => {
                io.hit(Branch::HomeMapperReadFailed);
                io.event(Event::MapperFailed {
                    page,
                    write: false,
                    error: e.0,
                });
                t.failed = true;
            }
        }
        t.stage = Stage::Plan;
        self.advance(io, page);
    }

    pub fn mapper_write_done(
        &mut self,
        io: &mut Io,
        token: MapperToken,
        result: Result<(), MapperError>,
    ) {
        let Some(page) = self.mapper.ops.remove(&token) else {
            return;
        };
        let Some(p) = self.pages.get_mut(&page) else {
            return;
        };
        let Some(t) = p.txn.as_mut() else {
            return;
        };
        let Stage::MapperWrite { token: tk, version } = t.stage else {
            return;
        };
        if tk != token {
            return;
        }
        match result {
            Ok(()) => p.durable = p.durable.max(version),
            Err(e) => {
                io.event(Event::MapperFailed {
                    page,
                    write: true,
                    error: e.0,
                });
                io.hit(Branch::FlushMapperWriteFailed);
                t.failed = true;
            }
        }
        t.stage = Stage::Plan;
        self.advance(io, page);
    }

    /// `peer` came back with a new epoch: nothing it held counts, nothing it asked for stands.
    pub fn peer_restarted(&mut self, io: &mut Io, peer: NodeId) {
        let keys: Vec<PageKey> = self.pages.keys().copied().collect();
        for key in keys {
            let Some(p) = self.pages.get_mut(&key) else {
                continue;
            };
            let held = p.remove_holder(peer);
            p.served.remove(&peer);
            p.cleared.remove(&peer);
            p.queue.retain(|w| w.requester() != Some(peer));
            if let Some(mut t) = p.txn.take() {
                if t.work.requester() == Some(peer) && matches!(t.stage, Stage::Inval { .. }) {
                    // Holders may or may not have dropped their copies: finish invalidating so
                    // the directory stays exact, then keep the contents if only we have them.
                    io.hit(Branch::PeerRestartFinishInval);
                    t.work = Work::Flush { job: None };
                    p.txn = Some(t);
                } else if t.work.requester() == Some(peer) {
                    let has_current = t.data.as_ref().is_some_and(|(v, _)| *v == p.version);
                    if has_current && p.version > p.durable && p.holders().is_empty() {
                        // The requester held nothing; the contents it was going to get exist
                        // only here: write them to the mapper instead of losing them.
                        io.hit(Branch::PeerRestartRescue);
                        t.work = Work::Flush { job: None };
                        t.stage = Stage::Plan;
                        p.txn = Some(t);
                    } else {
                        io.hit(Branch::PeerRestartAbortTxn);
                    }
                } else {
                    match &mut t.stage {
                        Stage::Fetch { from, .. } if *from == peer => {
                            t.tried.insert(peer);
                            t.stage = Stage::Plan;
                        }
                        Stage::Inval { pending } => {
                            pending.remove(&peer);
                            if pending.is_empty() {
                                t.stage = Stage::Plan;
                            }
                        }
                        _ => {}
                    }
                    p.txn = Some(t);
                }
            }
            if held {
                io.hit(Branch::PeerRestartHome);
            }
            if p.is_lost() {
                io.hit(Branch::PeerRestartPoison);
                p.poisoned = true;
                io.event(Event::PagePoisoned {
                    page: key,
                    lost_with: Some(peer),
                });
            }
            self.advance(io, key);
        }
        self.jobs.retain(|_, j| j.node != peer);
        self.syncs_served.retain(|(n, _), _| *n != peer);
    }

    /// Retransmit every message a transaction waits on for longer than `retry_ms`.
    pub fn tick(&mut self, io: &mut Io) {
        let now = io.now_ms;
        let active: Vec<PageKey> = self.active.iter().copied().collect();
        for key in active {
            let Some(t) = self.pages.get_mut(&key).and_then(|p| p.txn.as_mut()) else {
                continue;
            };
            if t.next_retry_ms > now {
                continue;
            }
            t.next_retry_ms = io.retry_at();
            let txn = t.id;
            match &t.stage {
                Stage::Fetch { from, then } => {
                    io.hit(Branch::HomeRetransmit);
                    io.send(
                        *from,
                        Msg::Fetch {
                            page: key,
                            txn,
                            then: *then,
                        },
                    );
                }
                Stage::Inval { pending } => {
                    io.hit(Branch::HomeRetransmit);
                    for n in pending {
                        io.send(*n, Msg::Inval { page: key, txn });
                    }
                }
                Stage::Grant { to, msg } => {
                    io.hit(Branch::HomeRetransmit);
                    io.send(*to, msg.clone());
                }
                Stage::Plan | Stage::MapperRead { .. } | Stage::MapperWrite { .. } => {}
            }
        }
    }
}
