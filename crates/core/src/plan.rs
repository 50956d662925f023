//! How the home moves a page's transaction forward: from the directory entry and what the
//! transaction gathered so far, decide the next message or mapper I/O, or finish. Re-planning
//! is always safe, so a reply, a peer's restart or a failure just sends the transaction back
//! here.

use crate::config::Backing;
use crate::coverage::Branch;
use crate::directory::{DirPage, Directory, MapperOps, Stage, Txn, Work};
use crate::ids::{CacheState, PageData, PageKey, TxnId, Version, Want};
use crate::io::Io;
use crate::msg::{DenyReason, Msg};
use crate::output::{Event, Output};
use pagemesh_types::NodeId;
use std::collections::BTreeSet;

/// Whether a transaction waits for something or is over.
enum Progress {
    Wait,
    /// Over; `true` if it achieved what it was for.
    Done(bool),
}

/// Where the contents for a transaction come from.
enum Source {
    /// `t.data` holds the current version.
    Ready,
    /// A fetch or mapper read is on its way.
    Waiting,
    /// The current version exists nowhere.
    Lost,
}

struct Cx<'a> {
    io: &'a mut Io,
    key: PageKey,
    backing: Backing,
    /// The segment's directory was rebuilt: no page is known to be dormant.
    recovered: bool,
    mapper: &'a mut MapperOps,
}

impl Directory {
    /// Run the page's transactions until one has to wait.
    pub(crate) fn advance(&mut self, io: &mut Io, key: PageKey) {
        let Some(backing) = self.segs.get(&key.seg).map(|s| s.backing) else {
            return;
        };
        let recovered = self.recovered.contains(&key.seg);
        loop {
            let Some(p) = self.pages.get_mut(&key) else {
                return;
            };
            if p.txn.is_none() {
                let Some(work) = p.queue.pop_front() else {
                    self.active.remove(&key);
                    return;
                };
                self.next_txn += 1;
                p.txn = Some(Txn {
                    id: TxnId(self.next_txn),
                    work,
                    data: None,
                    stage: Stage::Plan,
                    tried: BTreeSet::new(),
                    failed: false,
                    next_retry_ms: 0,
                });
            }
            self.active.insert(key);
            let Some(mut t) = p.txn.take() else {
                return;
            };
            if t.stage != Stage::Plan {
                p.txn = Some(t);
                return;
            }
            let mut cx = Cx {
                io: &mut *io,
                key,
                backing,
                recovered,
                mapper: &mut self.mapper,
            };
            match plan(&mut cx, p, &mut t) {
                Progress::Wait => {
                    t.next_retry_ms = io.retry_at();
                    p.txn = Some(t);
                    return;
                }
                Progress::Done(ok) => {
                    if let Work::Flush { job: Some(job) } = t.work {
                        self.flush_done(io, job, ok);
                    }
                }
            }
        }
    }
}

fn plan(cx: &mut Cx, p: &mut DirPage, t: &mut Txn) -> Progress {
    match t.work.clone() {
        Work::Acquire {
            node,
            req,
            want,
            have,
        } => plan_acquire(cx, p, t, node, req, want, have),
        Work::Flush { .. } => plan_flush(cx, p, t),
        Work::Evict { node } => plan_evict(cx, p, t, node),
        Work::ClearPoison { node, req } => {
            if p.poisoned && p.holders().is_empty() {
                cx.io.hit(Branch::ClearPoisonDone);
                p.poisoned = false;
                p.version = Version(p.version.0 + 1);
                p.durable = p.version;
                cx.io.event(Event::PoisonCleared { page: cx.key });
            } else {
                cx.io.hit(Branch::ClearPoisonNotPoisoned);
            }
            if p.intent && p.version == p.durable && !t.failed {
                // The mapper is current again: a later home restart must not poison it.
                return write_intent(cx, t, false);
            }
            p.cleared.insert(node, req);
            cx.io.send(node, Msg::ClearPoisonDone { page: cx.key, req });
            Progress::Done(true)
        }
    }
}

fn fetch(cx: &mut Cx, t: &mut Txn, from: NodeId, then: CacheState) -> Source {
    t.stage = Stage::Fetch { from, then };
    cx.io.send(
        from,
        Msg::Fetch {
            page: cx.key,
            txn: t.id,
            then,
        },
    );
    Source::Waiting
}

/// Get the current version into `t.data`: from the owner, a sharer (other than `exclude`), the
/// zero page or the mapper.
fn obtain_data(
    cx: &mut Cx,
    p: &DirPage,
    t: &mut Txn,
    exclude: Option<NodeId>,
    owner_then: CacheState,
) -> Source {
    if t.data.as_ref().is_some_and(|(v, _)| *v == p.version) {
        return Source::Ready;
    }
    if let Some((o, _)) = p.owner {
        if Some(o) != exclude && !t.tried.contains(&o) {
            cx.io.hit(if owner_then == CacheState::Shared {
                Branch::HomeFetchFromOwner
            } else {
                Branch::FlushFetchOwner
            });
            return fetch(cx, t, o, owner_then);
        }
    }
    let sharer = p
        .sharers
        .keys()
        .copied()
        .find(|s| Some(*s) != exclude && !t.tried.contains(s));
    if let Some(s) = sharer {
        cx.io.hit(if owner_then == CacheState::Shared {
            Branch::HomeFetchFromSharer
        } else {
            Branch::FlushFetchSharer
        });
        return fetch(cx, t, s, CacheState::Shared);
    }
    if p.version == Version(0) && cx.backing == Backing::Zero && !cx.recovered {
        cx.io.hit(Branch::HomeZeroFillDormant);
        t.data = Some((Version(0), PageData::Zero));
        return Source::Ready;
    }
    if p.version == p.durable {
        cx.io.hit(Branch::HomeMapperRead);
        let token = cx.mapper.start(cx.key);
        t.stage = Stage::MapperRead { token };
        cx.io.emit(Output::MapperRead {
            token,
            page: cx.key,
        });
        return Source::Waiting;
    }
    Source::Lost
}

fn poison(cx: &mut Cx, p: &mut DirPage) {
    if !p.poisoned {
        cx.io.hit(Branch::HomeLostPoison);
        p.poisoned = true;
        cx.io.event(Event::PagePoisoned {
            page: cx.key,
            lost_with: None,
        });
    }
}

fn deny(
    cx: &mut Cx,
    p: &mut DirPage,
    node: NodeId,
    req: crate::ids::ReqId,
    reason: DenyReason,
) -> Progress {
    p.served.insert(node, (req, Some(reason)));
    cx.io.send(
        node,
        Msg::Deny {
            page: cx.key,
            req,
            reason,
        },
    );
    Progress::Done(false)
}

fn plan_acquire(
    cx: &mut Cx,
    p: &mut DirPage,
    t: &mut Txn,
    node: NodeId,
    req: crate::ids::ReqId,
    want: Want,
    have: Option<(Version, TxnId)>,
) -> Progress {
    if p.poisoned || t.failed {
        let reason = if p.poisoned {
            DenyReason::Poisoned
        } else {
            DenyReason::MapperFailed
        };
        return deny(cx, p, node, req, reason);
    }
    let held = p.holder_grant(node);
    let current = held.is_some() && have.is_some_and(|(v, g)| v == p.version && Some(g) == held);
    if held.is_some() && !current {
        // The node no longer holds what the directory recorded.
        p.remove_holder(node);
    }
    if !current {
        match obtain_data(cx, p, t, Some(node), CacheState::Shared) {
            Source::Ready => {}
            Source::Waiting => return Progress::Wait,
            Source::Lost => {
                poison(cx, p);
                return deny(cx, p, node, req, DenyReason::Poisoned);
            }
        }
    }
    if want == Want::Exclusive && invalidate_others(cx, p, t, node) {
        return Progress::Wait;
    }
    if want == Want::Exclusive && !p.intent {
        // Record durably that this page may become newer than the mapper before it does, so
        // a restarted home knows which pages a lost copy may have held.
        cx.io.hit(Branch::HomeIntentSet);
        return write_intent(cx, t, true);
    }
    let state = record_grant(cx, p, t, node, want);
    let data = if current {
        cx.io.hit(Branch::HomeGrantNoData);
        None
    } else {
        t.data.as_ref().map(|(_, d)| d.clone())
    };
    let msg = Msg::Grant {
        page: cx.key,
        req,
        txn: t.id,
        version: p.version,
        state,
        data,
    };
    cx.io.send(node, msg.clone());
    t.stage = Stage::Grant { to: node, msg };
    Progress::Wait
}

/// Send `Inval` to every holder but `node`; true if there were any (wait for their acks).
fn invalidate_others(cx: &mut Cx, p: &mut DirPage, t: &mut Txn, node: NodeId) -> bool {
    let mut others: BTreeSet<NodeId> = p.holders().into_iter().filter(|n| *n != node).collect();
    if others.is_empty() {
        return false;
    }
    cx.io.hit(Branch::HomeInvalidate);
    for n in &others {
        cx.io.send(
            *n,
            Msg::Inval {
                page: cx.key,
                txn: t.id,
            },
        );
    }
    if cx.io.bugs.skip_one_inval_ack && others.len() >= 2 {
        // Injected bug: forget to wait for the last holder's ack.
        if let Some(last) = others.pop_last() {
            p.remove_holder(last);
        }
    }
    t.stage = Stage::Inval { pending: others };
    true
}

/// Record in the directory that `node` gets the page as `want` asks; the state to grant.
fn record_grant(cx: &mut Cx, p: &mut DirPage, t: &Txn, node: NodeId, want: Want) -> CacheState {
    if want == Want::Exclusive {
        cx.io.hit(Branch::HomeGrantExclusive);
        p.version = Version(p.version.0 + 1);
        p.owner = Some((node, t.id));
        p.sharers.clear();
        return CacheState::Modified;
    }
    cx.io.hit(Branch::HomeGrantShared);
    match p.owner {
        Some((o, _)) if o == node => {
            p.owner = Some((node, t.id));
            if p.version == p.durable {
                CacheState::ExclusiveClean
            } else {
                CacheState::Modified
            }
        }
        _ => {
            p.sharers.insert(node, t.id);
            CacheState::Shared
        }
    }
}

/// Set or clear the page's durable write intent.
fn write_intent(cx: &mut Cx, t: &mut Txn, dirty: bool) -> Progress {
    let token = cx.mapper.start(cx.key);
    t.stage = Stage::Intent { token, dirty };
    cx.io.emit(Output::IntentWrite {
        token,
        page: cx.key,
        dirty,
    });
    Progress::Wait
}

/// Write the current version to the mapper, fetching it first if needed.
fn write_current(
    cx: &mut Cx,
    p: &mut DirPage,
    t: &mut Txn,
    owner_then: CacheState,
) -> Option<Progress> {
    match obtain_data(cx, p, t, None, owner_then) {
        Source::Ready => {}
        Source::Waiting => return Some(Progress::Wait),
        Source::Lost => {
            poison(cx, p);
            return Some(Progress::Done(false));
        }
    }
    let Some((version, data)) = t.data.clone() else {
        return Some(Progress::Done(false));
    };
    cx.io.hit(Branch::FlushMapperWrite);
    let token = cx.mapper.start(cx.key);
    t.stage = Stage::MapperWrite { token, version };
    cx.io.emit(Output::MapperWrite {
        token,
        page: cx.key,
        data,
    });
    Some(Progress::Wait)
}

fn plan_flush(cx: &mut Cx, p: &mut DirPage, t: &mut Txn) -> Progress {
    if t.failed {
        return Progress::Done(false);
    }
    if p.poisoned {
        cx.io.hit(Branch::FlushPoisoned);
        return Progress::Done(false);
    }
    if p.version <= p.durable {
        if p.intent {
            cx.io.hit(Branch::FlushIntentClear);
            return write_intent(cx, t, false);
        }
        cx.io.hit(Branch::FlushClean);
        return Progress::Done(true);
    }
    write_current(cx, p, t, CacheState::ExclusiveClean).unwrap_or(Progress::Done(false))
}

fn plan_evict(cx: &mut Cx, p: &mut DirPage, t: &mut Txn, node: NodeId) -> Progress {
    if t.failed || p.holder_grant(node).is_none() {
        return Progress::Done(!t.failed);
    }
    let last_dirty = !p.poisoned && p.version > p.durable && p.holders() == [node];
    if last_dirty {
        // The node holds the only copy of unsynced data: write it back before dropping it.
        cx.io.hit(Branch::HomeEvictWriteBack);
        return write_current(cx, p, t, CacheState::Shared).unwrap_or(Progress::Done(false));
    }
    if p.intent && p.version == p.durable && p.holders() == [node] {
        // The last copy goes and the mapper is current: a later home restart must not poison it.
        cx.io.hit(Branch::HomeEvictIntentClear);
        return write_intent(cx, t, false);
    }
    cx.io.hit(Branch::HomeEvictInval);
    cx.io.send(
        node,
        Msg::Inval {
            page: cx.key,
            txn: t.id,
        },
    );
    t.stage = Stage::Inval {
        pending: BTreeSet::from([node]),
    };
    Progress::Wait
}
