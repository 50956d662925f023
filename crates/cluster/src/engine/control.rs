//! Control messages from peers (catalog, create, removal, clear-poison, barriers, locks, status), one method for each longer kind.

use pagemesh_proto::peer::{Control, PeerFrame};
use pagemesh_proto::{Backing, SegmentInfo};
use pagemesh_types::{NodeId, SegmentId};

use super::{ClearFor, Engine, RemoveFor, Route};

impl Engine {
    /// Dispatch one control message from a peer; the longer kinds have a method of their own.
    pub(super) fn control(&mut self, from: NodeId, msg: Control) {
        match msg {
            Control::Catalog { segments } => self.on_catalog(from, segments),
            Control::CreateSegment {
                req,
                name,
                size_bytes,
                backing,
                owner,
            } => {
                let result = self.create_here(&name, size_bytes, backing, owner);
                let msg = Control::CreateReply { req, result };
                self.send_peer(from, PeerFrame::Control(msg));
            }
            Control::SetOwner {
                req,
                seg,
                change,
                uid,
                gids: _,
            } => self.on_set_owner(from, req, SegmentId(seg), change, uid),
            Control::SetOwnerDone { req, result } => self.on_set_owner_done(from, req, result),
            msg @ (Control::CreateReply { .. }
            | Control::BarrierRelease { .. }
            | Control::SyncRefused { .. }
            | Control::RemoveDone { .. }
            | Control::ClearPoisonDone { .. }
            | Control::LockGranted { .. }) => self.on_answer(from, msg),
            Control::BarrierArrive {
                seg,
                barrier,
                parties,
                token,
            } => self.barrier_arrive(from, SegmentId(seg), barrier, parties, token),
            Control::RemoveSegment {
                req,
                seg,
                uid,
                gids,
            } => self.on_remove_segment(from, req, SegmentId(seg), (uid, gids)),
            msg @ (Control::RemovePrepare { .. }
            | Control::RemovePrepared { .. }
            | Control::RemoveCommit { .. }
            | Control::RemoveAbort { .. }) => {
                if let Some(m) = super::removal::from_control(msg) {
                    self.on_removal_msg(from, m)
                }
            }
            Control::Removed { ids } => self.on_removed(from, ids),
            Control::ClearPoison { req, seg } => {
                self.on_clear_poison_asked(from, req, SegmentId(seg))
            }
            Control::BarrierCancel {
                seg,
                barrier,
                token,
            } => self.barrier_cancel(from, SegmentId(seg), barrier, token),
            Control::LockAcquire { seg, lock, token } => {
                self.lock_acquire(from, SegmentId(seg), lock, token)
            }
            Control::LockReport { held, waiting } => self.lock_report(from, held, waiting),
            Control::LockRelease { seg, lock, token } => {
                self.lock_release(from, SegmentId(seg), lock, token)
            }
            Control::StatusRequest { req } => {
                let figures = self.my_figures();
                let msg = Control::StatusReply { req, figures };
                self.send_peer(from, PeerFrame::Control(msg));
            }
            Control::StatusReply { req, figures } => {
                if let Some(w) = self.statuses.get_mut(&req) {
                    w.figures.insert(from, figures);
                }
                self.finish_statuses(false);
            }
        }
    }

    /// An answer from a peer to what this node asked: taken only from the node it was asked of
    /// (the home of the segment, lock or barrier), refused and logged otherwise.
    fn on_answer(&mut self, from: NodeId, msg: Control) {
        match msg {
            Control::CreateReply { req, result } => self.on_create_reply(from, req, result),
            Control::BarrierRelease {
                seg,
                tokens,
                generation,
                ..
            } => {
                if self.home_of(SegmentId(seg)) != Some(from) {
                    return refused(
                        from,
                        "a barrier release for a segment it is not the home of",
                    );
                }
                for t in tokens {
                    self.barrier_of.remove(&t);
                    if let Some(w) = self.barrier_waiters.remove(&t) {
                        let _ = w.send(Ok(generation));
                    }
                }
            }
            Control::SyncRefused { token, reason } => {
                let home = self.lock_client.home_of(token).or_else(|| {
                    let seg = self.barrier_of.get(&token)?.0;
                    self.home_of(seg)
                });
                if home.is_some_and(|h| h != from) {
                    return refused(from, "a refusal for a waiter of another home");
                }
                self.refuse_waiter(token, reason)
            }
            Control::RemoveDone { req, result } => {
                if self.removes.get(&req).is_some_and(|w| w.2 != from) {
                    return refused(from, "a removal it was not asked for");
                }
                if let Some((r, _, _)) = self.removes.remove(&req) {
                    let _ = r.send(result);
                }
            }
            Control::ClearPoisonDone { req, result } => {
                if self.clears.get(&req).is_some_and(|w| w.2 != from) {
                    return refused(from, "a clear-poison it was not asked for");
                }
                self.on_clear_poison_done(req, result)
            }
            Control::LockGranted { token, .. } => {
                if self.lock_client.home_of(token).is_some_and(|h| h != from) {
                    return refused(from, "a lock grant for a lock another home keeps");
                }
                self.lock_granted(token)
            }
            other => unreachable!("not an answer: {other:?}"),
        }
    }

    /// A peer's catalog: take in the segments this node does not know yet.
    pub(super) fn on_catalog(&mut self, from: NodeId, segments: Vec<SegmentInfo>) {
        for info in segments {
            let home = info.home.map(NodeId);
            if home != Some(from) || SegmentId(info.id).home() != Some(from) {
                log::warn!(
                    "catalog from {from}: segment {} (id {:#x}, home {home:?}) refused: a node \
                     announces only the segments it homes",
                    info.name,
                    info.id
                );
                continue;
            }
            match self.host.adopt(&info) {
                Ok(Some(seg)) => self.adopt(seg),
                Ok(None) => {}
                Err(e) => log::error!("catalog from {from}: {e}"),
            }
        }
    }

    pub(super) fn on_clear_poison_done(&mut self, req: u64, result: Result<u64, String>) {
        if let Some((r, _, _)) = self.clears.remove(&req) {
            if result.is_ok() {
                // Which segment this clear was for is not needed: what this node saw poisoned
                // is stale now for every segment it asked about.
                self.poisoned_seen.clear();
            }
            let _ = r.send(result);
        }
    }

    /// A peer asked this node to create a segment homed here: create it and tell the cluster.
    pub(super) fn create_here(
        &mut self,
        name: &str,
        size_bytes: Option<u64>,
        backing: Backing,
        owner: pagemesh_proto::Owner,
    ) -> Result<SegmentInfo, String> {
        let seg = self.host.create(name, size_bytes, backing, owner)?;
        let info = seg.info.clone();
        self.adopt(seg);
        self.broadcast(Control::Catalog {
            segments: vec![info.clone()],
        });
        Ok(info)
    }

    /// The home created the segment this node asked for: take it into the catalog here before
    /// the client hears, so its attach finds it.
    pub(super) fn on_create_reply(
        &mut self,
        from: NodeId,
        req: u64,
        result: Result<SegmentInfo, String>,
    ) {
        match self.creates.get(&req) {
            None => return,
            Some(w) if w.2 != from => return refused(from, "a create it was not asked for"),
            Some(_) => {}
        }
        if let Ok(info) = &result {
            if info.home != Some(from.0) || SegmentId(info.id).home() != Some(from) {
                return refused(from, "a created segment homed elsewhere");
            }
        }
        let result = result.and_then(|info| match self.host.adopt(&info) {
            Ok(Some(seg)) => {
                self.adopt(seg);
                Ok(info)
            }
            Ok(None) => Ok(info),
            Err(e) => Err(e),
        });
        if let Some((r, _, _)) = self.creates.remove(&req) {
            let _ = r.send(result);
        }
    }

    /// A peer asks, for one of its users, to remove a segment homed here: the owner or root
    /// may (checked again here, against this home's catalog).
    pub(super) fn on_remove_segment(
        &mut self,
        from: NodeId,
        req: u64,
        seg: SegmentId,
        (uid, gids): (u32, Vec<u32>),
    ) {
        let refused = match (self.route(seg), self.segs.get(&seg)) {
            (Route::Here, Some(s)) => {
                let info = self.host.current(&s.info);
                let o = info.owner;
                (!o.allows(uid, &gids, pagemesh_proto::Access::Own)).then(|| {
                    let why = format!(
                        "uid {uid} on {from} may not remove segment {}: it is uid {}'s (mode {}); the owner or root may",
                        info.name,
                        o.uid,
                        o.mode_string()
                    );
                    log::warn!("{why}; refused");
                    why
                })
            }
            _ => Some(format!(
                "{} is not the home of segment id {:#x}",
                self.me(),
                seg.0
            )),
        };
        match refused {
            None => self.start_remove(seg, RemoveFor::Peer(from, req)),
            Some(why) => {
                let msg = Control::RemoveDone {
                    req,
                    result: Err(why),
                };
                self.send_peer(from, PeerFrame::Control(msg));
            }
        }
    }

    pub(super) fn on_clear_poison_asked(&mut self, from: NodeId, req: u64, seg: SegmentId) {
        if matches!(self.route(seg), Route::Here) {
            self.start_clear(seg, ClearFor::Peer(from, req));
        } else {
            let me = self.me();
            let result = Err(format!("{me} is not the home of segment id {}", seg.0));
            let msg = Control::ClearPoisonDone { req, result };
            self.send_peer(from, PeerFrame::Control(msg));
        }
    }

    pub(super) fn refuse_waiter(&mut self, token: u64, reason: String) {
        if let Some(w) = self.barrier_waiters.remove(&token) {
            let _ = w.send(Err(reason.clone()));
        }
        if let Some(w) = self.lock_waiters.remove(&token) {
            let _ = w.send(Err(reason));
        } else if self.lock_client.holds(token) {
            // Its home gave the lock to another client after restarting (`Refusal::Lost`): the
            // holder cannot be told through its wait any more, so say it here.
            log::error!("a lock held by client token {token} here was lost: {reason}");
        }
        // Refused, it claims nothing at its home any more (no later report may claim it).
        self.lock_client.release(token);
    }

    pub(super) fn tell(&mut self, to: NodeId, token: u64, reason: String) {
        if to == self.me() {
            self.refuse_waiter(token, reason);
        } else {
            self.send_peer(
                to,
                PeerFrame::Control(Control::SyncRefused { token, reason }),
            );
        }
    }
}

/// A peer sent what the protocol does not let it send: logged, nothing changes.
fn refused(from: NodeId, what: &str) {
    log::warn!("{from} sent {what}; refused (a bug or a lying peer)");
}
