//! The per-node page cache: which pages this node holds and in what state, the faults waiting
//! on the home, and the node's answers to the home's fetches and invalidations.

use crate::coverage::Branch;
use crate::ids::{
    Access, CacheState, CallId, CallResult, FaultId, FaultResult, PageData, PageKey, ReqId, TxnId,
    Version, Want,
};
use crate::io::Io;
use crate::msg::{DenyReason, Msg};
use crate::output::Output;
use pagemesh_types::{NodeId, SegmentId};
use std::collections::BTreeMap;

/// A copy of a page held by this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CopyInfo {
    /// Its state.
    pub state: CacheState,
    /// The version it holds.
    pub version: Version,
    /// The home transaction that granted it.
    pub grant: TxnId,
}

#[derive(Clone, Copy, Debug)]
struct Waiter {
    fault: FaultId,
    access: Access,
    deadline_ms: u64,
    /// Joined a request already sent: a refusal decided before it faulted does not apply.
    late: bool,
}

/// An `Acquire` in flight for one page (at most one per page).
#[derive(Clone, Debug)]
struct Pending {
    home: NodeId,
    req: ReqId,
    want: Want,
    waiters: Vec<Waiter>,
    next_retry_ms: u64,
}

/// A sync or clear-poison in flight.
#[derive(Clone, Debug)]
struct Call {
    ids: Vec<CallId>,
    home: NodeId,
    msg: Msg,
    deadline_ms: u64,
    next_retry_ms: u64,
}

/// Result of asking the core to evict a page.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EvictStart {
    /// The home was asked to take the copy back (after writing it to the mapper if it is the
    /// last copy of unsynced data); an `Invalidate` output follows later.
    Requested,
    /// This node holds no copy.
    NotHeld,
    /// A fault on the page is in flight; try later.
    Busy,
}

/// The cache side of a node.
#[derive(Debug, Default)]
pub(crate) struct Cache {
    copies: BTreeMap<PageKey, CopyInfo>,
    pending: BTreeMap<PageKey, Pending>,
    calls: BTreeMap<ReqId, Call>,
    /// Syncs asked for while one of the same segment is in flight: they start when it ends
    /// (they must not join it: it may have been served before their writes completed).
    sync_next: BTreeMap<SegmentId, Vec<CallId>>,
    next_req: u64,
}

impl Cache {
    pub fn copy(&self, page: PageKey) -> Option<CopyInfo> {
        self.copies.get(&page).copied()
    }

    pub fn copies(&self) -> impl Iterator<Item = (PageKey, CopyInfo)> + '_ {
        self.copies.iter().map(|(k, c)| (*k, *c))
    }

    pub fn pending_want(&self, page: PageKey) -> Option<Want> {
        self.pending.get(&page).map(|p| p.want)
    }

    pub fn is_idle(&self) -> bool {
        self.pending.is_empty() && self.calls.is_empty() && self.sync_next.is_empty()
    }

    /// Forget everything about `seg`; waiting faults end as `UnknownSegment`.
    pub fn remove_segment(&mut self, io: &mut Io, seg: SegmentId) {
        self.copies.retain(|k, _| k.seg != seg);
        let gone: Vec<PageKey> = self
            .pending
            .keys()
            .filter(|k| k.seg == seg)
            .copied()
            .collect();
        for page in gone {
            if let Some(p) = self.pending.remove(&page) {
                for w in p.waiters {
                    io.emit(Output::FaultDone {
                        fault: w.fault,
                        page,
                        result: FaultResult::UnknownSegment,
                    });
                }
            }
        }
        for call in self.sync_next.remove(&seg).unwrap_or_default() {
            io.emit(Output::CallDone {
                call,
                result: CallResult::UnknownSegment,
            });
        }
    }

    fn new_req(&mut self) -> ReqId {
        self.next_req += 1;
        ReqId(self.next_req)
    }

    fn acquire_msg(&self, page: PageKey, req: ReqId, want: Want) -> Msg {
        Msg::Acquire {
            page,
            req,
            want,
            have: self.copies.get(&page).map(|c| (c.version, c.grant)),
        }
    }

    fn satisfies(c: Option<&CopyInfo>, access: Access) -> bool {
        match (c, access) {
            (None, _) => false,
            (Some(_), Access::Read) => true,
            (Some(c), Access::Write) => c.state == CacheState::Modified,
        }
    }

    /// A local fault on `page` (whose home is `home`).
    pub fn fault(
        &mut self,
        io: &mut Io,
        home: NodeId,
        fault: FaultId,
        page: PageKey,
        access: Access,
    ) {
        if Self::satisfies(self.copies.get(&page), access) {
            io.hit(Branch::FaultHit);
            io.emit(Output::FaultDone {
                fault,
                page,
                result: FaultResult::Ok,
            });
            return;
        }
        let waiter = Waiter {
            fault,
            access,
            deadline_ms: io.now_ms.saturating_add(io.timing.fault_timeout_ms),
            late: false,
        };
        if let Some(p) = self.pending.get_mut(&page) {
            let waiter = Waiter {
                late: true,
                ..waiter
            };
            // Writers joining a Shared request are re-requested when it is granted.
            io.hit(Branch::FaultJoinPending);
            p.waiters.push(waiter);
            return;
        }
        let want = match access {
            Access::Read => Want::Shared,
            Access::Write => Want::Exclusive,
        };
        if self.copies.contains_key(&page) {
            io.hit(Branch::FaultUpgradeFromShared);
        } else {
            io.hit(Branch::FaultMiss);
        }
        self.start_acquire(io, home, page, want, vec![waiter]);
    }

    fn start_acquire(
        &mut self,
        io: &mut Io,
        home: NodeId,
        page: PageKey,
        want: Want,
        waiters: Vec<Waiter>,
    ) {
        let req = self.new_req();
        let msg = self.acquire_msg(page, req, want);
        io.send(home, msg);
        self.pending.insert(
            page,
            Pending {
                home,
                req,
                want,
                waiters,
                next_retry_ms: io.retry_at(),
            },
        );
    }

    /// Start a sync of `seg`, or queue it behind the one in flight.
    pub fn sync(&mut self, io: &mut Io, home: NodeId, id: CallId, seg: SegmentId) {
        let busy = self
            .calls
            .values()
            .any(|c| matches!(c.msg, Msg::SyncReq { seg: s, .. } if s == seg));
        if busy {
            io.hit(Branch::SyncQueuedBehindInFlight);
            self.sync_next.entry(seg).or_default().push(id);
            return;
        }
        self.call(io, home, vec![id], |req| Msg::SyncReq { seg, req });
    }

    /// Start a sync or clear-poison call to `home`; `make` builds the message from the request id.
    pub fn call(
        &mut self,
        io: &mut Io,
        home: NodeId,
        ids: Vec<CallId>,
        make: impl FnOnce(ReqId) -> Msg,
    ) {
        if self.calls.len() >= io.max_queue {
            for id in ids {
                io.emit(Output::CallDone {
                    call: id,
                    result: CallResult::Failed { pages: 0 },
                });
            }
            return;
        }
        let req = self.new_req();
        let msg = make(req);
        io.send(home, msg.clone());
        self.calls.insert(
            req,
            Call {
                ids,
                home,
                msg,
                deadline_ms: io.now_ms.saturating_add(io.timing.fault_timeout_ms),
                next_retry_ms: io.retry_at(),
            },
        );
    }

    pub fn evict(&mut self, io: &mut Io, home: NodeId, page: PageKey) -> EvictStart {
        if self.pending.contains_key(&page) {
            io.hit(Branch::EvictBusy);
            return EvictStart::Busy;
        }
        if !self.copies.contains_key(&page) {
            return EvictStart::NotHeld;
        }
        io.hit(Branch::EvictRequested);
        io.send(home, Msg::Evict { page });
        EvictStart::Requested
    }

    /// Messages from a home to this node's cache.
    pub fn on_msg(&mut self, io: &mut Io, from: NodeId, msg: Msg) {
        match msg {
            Msg::Grant {
                page,
                req,
                txn,
                version,
                state,
                data,
            } => self.on_grant(io, from, page, req, txn, version, state, data),
            Msg::Deny { page, req, reason } => self.on_deny(io, page, req, reason),
            Msg::Fetch { page, txn, then } => self.on_fetch(io, from, page, txn, then),
            Msg::Inval { page, txn } => self.on_inval(io, from, page, txn),
            Msg::SyncDone {
                req, failed_pages, ..
            } => {
                let result = if failed_pages == 0 {
                    CallResult::Ok
                } else {
                    CallResult::Failed {
                        pages: failed_pages,
                    }
                };
                self.finish_call(io, req, result);
            }
            Msg::ClearPoisonDone { req, .. } => self.finish_call(io, req, CallResult::Ok),
            Msg::Recover { seg } => self.report_holdings(io, from, seg),
            other => io.protocol_error(format!("cache got a home-bound message: {other}")),
        }
    }

    /// A restarted home asks what this node holds of `seg`: one snapshot, in parts of at most
    /// `holdings_per_message` copies (at least one part, empty if it holds nothing).
    fn report_holdings(&mut self, io: &mut Io, home: NodeId, seg: SegmentId) {
        io.hit(Branch::HoldingsReported);
        let copies: Vec<_> = self
            .copies
            .range(PageKey::new(seg, 0)..=PageKey::new(seg, u64::MAX))
            .map(|(k, c)| (k.page.0, c.state, c.version, c.grant))
            .collect();
        self.next_req += 1;
        let snapshot = self.next_req;
        let per = io.holdings_per_message;
        let parts = copies.len().div_ceil(per).max(1);
        if parts > 1 {
            io.hit(Branch::HoldingsInParts);
        }
        for part in 0..parts {
            let chunk = copies
                [(part * per).min(copies.len())..((part + 1) * per).min(copies.len())]
                .to_vec();
            io.send(
                home,
                Msg::Holdings {
                    seg,
                    snapshot,
                    part: part as u32,
                    parts: parts as u32,
                    copies: chunk,
                },
            );
        }
    }

    fn finish_call(&mut self, io: &mut Io, req: ReqId, result: CallResult) {
        let Some(c) = self.calls.remove(&req) else {
            return;
        };
        for id in c.ids {
            io.emit(Output::CallDone { call: id, result });
        }
        if let Msg::SyncReq { seg, .. } = c.msg {
            if let Some(ids) = self.sync_next.remove(&seg) {
                self.call(io, c.home, ids, |req| Msg::SyncReq { seg, req });
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn on_grant(
        &mut self,
        io: &mut Io,
        from: NodeId,
        page: PageKey,
        req: ReqId,
        txn: TxnId,
        version: Version,
        state: CacheState,
        data: Option<PageData>,
    ) {
        let current = self.pending.get(&page).is_some_and(|p| p.req == req);
        if !current {
            // A duplicate of a grant already installed (or one for a request superseded).
            io.hit(Branch::GrantDuplicate);
            io.send(from, Msg::GrantAck { page, txn });
            return;
        }
        if !self.install(io, page, txn, state, data) {
            return;
        }
        self.copies.insert(
            page,
            CopyInfo {
                state,
                version,
                grant: txn,
            },
        );
        io.send(from, Msg::GrantAck { page, txn });
        let Some(p) = self.pending.remove(&page) else {
            return;
        };
        let c = self.copies.get(&page).copied();
        let mut left = Vec::new();
        for w in p.waiters {
            if Self::satisfies(c.as_ref(), w.access) {
                io.emit(Output::FaultDone {
                    fault: w.fault,
                    page,
                    result: FaultResult::Ok,
                });
            } else {
                left.push(w);
            }
        }
        if !left.is_empty() {
            io.hit(Branch::GrantRequeueWriters);
            self.start_acquire(io, p.home, page, Want::Exclusive, left);
        }
    }

    /// Put a granted copy in place; false if the grant cannot be honoured.
    fn install(
        &mut self,
        io: &mut Io,
        page: PageKey,
        txn: TxnId,
        state: CacheState,
        data: Option<PageData>,
    ) -> bool {
        match data {
            Some(d) => {
                io.hit(Branch::GrantInstallData);
                if self.copies.contains_key(&page) {
                    io.emit(Output::Invalidate { page });
                }
                io.emit(Output::Install {
                    page,
                    data: d,
                    writable: state == CacheState::Modified,
                });
            }
            None => {
                let Some(c) = self.copies.get(&page) else {
                    io.protocol_error(format!(
                        "{page}: grant txn{} without data but this node holds no copy",
                        txn.0
                    ));
                    return false;
                };
                io.hit(Branch::GrantKeepCopy);
                if state == CacheState::Modified && c.state != CacheState::Modified {
                    io.emit(Output::Unprotect { page });
                }
            }
        }
        true
    }

    fn on_deny(&mut self, io: &mut Io, page: PageKey, req: ReqId, reason: DenyReason) {
        if self.pending.get(&page).is_none_or(|p| p.req != req) {
            return;
        }
        let Some(p) = self.pending.remove(&page) else {
            return;
        };
        io.hit(Branch::DenyPoisoned);
        let result = match reason {
            DenyReason::Poisoned => FaultResult::Poisoned,
            DenyReason::MapperFailed => FaultResult::MapperFailed,
        };
        let (late, early): (Vec<Waiter>, Vec<Waiter>) = p.waiters.into_iter().partition(|w| w.late);
        for w in early {
            io.emit(Output::FaultDone {
                fault: w.fault,
                page,
                result,
            });
        }
        if !late.is_empty() {
            // They faulted after the request went out: the page may have been cleared since.
            io.hit(Branch::DenyRetryLateWaiters);
            let want = if late.iter().any(|w| w.access == Access::Write) {
                Want::Exclusive
            } else {
                Want::Shared
            };
            let late = late
                .into_iter()
                .map(|w| Waiter { late: false, ..w })
                .collect();
            self.start_acquire(io, p.home, page, want, late);
        }
    }

    fn on_fetch(&mut self, io: &mut Io, from: NodeId, page: PageKey, txn: TxnId, then: CacheState) {
        let Some(c) = self.copies.get_mut(&page) else {
            io.hit(Branch::FetchNoCopy);
            io.send(
                from,
                Msg::FetchReply {
                    page,
                    txn,
                    copy: None,
                },
            );
            return;
        };
        if c.grant >= txn {
            // A late duplicate from a transaction older than this copy.
            io.hit(Branch::FetchStale);
            return;
        }
        let next = match (c.state, then) {
            (CacheState::Modified, CacheState::ExclusiveClean) => CacheState::ExclusiveClean,
            (CacheState::ExclusiveClean, CacheState::ExclusiveClean) => CacheState::ExclusiveClean,
            _ => CacheState::Shared,
        };
        if next == CacheState::Shared {
            io.hit(Branch::FetchDowngradeToShared);
        } else {
            io.hit(Branch::FetchDowngradeToExclusiveClean);
        }
        if c.state == CacheState::Modified {
            io.emit(Output::Downgrade { page });
        }
        c.state = next;
        let version = c.version;
        io.send(
            from,
            Msg::FetchReply {
                page,
                txn,
                copy: Some((version, PageData::Local)),
            },
        );
    }

    fn on_inval(&mut self, io: &mut Io, from: NodeId, page: PageKey, txn: TxnId) {
        match self.copies.get(&page) {
            None => io.hit(Branch::InvalNoCopy),
            Some(c) if c.grant >= txn => {
                io.hit(Branch::InvalStale);
                return;
            }
            Some(_) => {
                io.hit(Branch::InvalDrop);
                self.copies.remove(&page);
                io.emit(Output::Invalidate { page });
            }
        }
        io.send(from, Msg::InvalAck { page, txn });
    }

    /// Retransmit what is unanswered and end waits that ran out of time.
    pub fn tick(&mut self, io: &mut Io) {
        let now = io.now_ms;
        let mut resend = Vec::new();
        for (page, p) in self.pending.iter_mut() {
            if p.next_retry_ms <= now {
                p.next_retry_ms = now.saturating_add(io.timing.retry_ms);
                resend.push((*page, p.home, p.req, p.want));
            }
            let (expired, kept): (Vec<Waiter>, Vec<Waiter>) =
                p.waiters.iter().partition(|w| w.deadline_ms <= now);
            p.waiters = kept;
            for w in expired {
                io.hit(Branch::FaultTimedOut);
                io.emit(Output::FaultDone {
                    fault: w.fault,
                    page: *page,
                    result: FaultResult::TimedOut,
                });
            }
        }
        for (page, home, req, want) in resend {
            io.hit(Branch::AcquireRetransmit);
            let msg = self.acquire_msg(page, req, want);
            io.send(home, msg);
        }
        let mut timed_out = Vec::new();
        for (req, c) in self.calls.iter_mut() {
            if c.deadline_ms <= now {
                timed_out.push(*req);
            } else if c.next_retry_ms <= now {
                c.next_retry_ms = now.saturating_add(io.timing.retry_ms);
                io.hit(Branch::CallRetransmit);
                io.send(c.home, c.msg.clone());
            }
        }
        for req in timed_out {
            io.hit(Branch::CallTimedOut);
            self.finish_call(io, req, CallResult::TimedOut);
        }
    }
}
