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
            } => {
                let result = self.create_here(&name, size_bytes, backing);
                let msg = Control::CreateReply { req, result };
                self.send_peer(from, PeerFrame::Control(msg));
            }
            Control::CreateReply { req, result } => self.on_create_reply(req, result),
            Control::BarrierArrive {
                seg,
                barrier,
                parties,
                token,
            } => self.barrier_arrive(from, SegmentId(seg), barrier, parties, token),
            Control::BarrierRelease {
                tokens, generation, ..
            } => {
                for t in tokens {
                    self.barrier_of.remove(&t);
                    if let Some(w) = self.barrier_waiters.remove(&t) {
                        let _ = w.send(Ok(generation));
                    }
                }
            }
            Control::SyncRefused { token, reason } => self.refuse_waiter(token, reason),
            Control::RemoveSegment { req, seg } => {
                self.on_remove_segment(from, req, SegmentId(seg))
            }
            Control::RemoveDone { req, result } => {
                if let Some((r, _, _)) = self.removes.remove(&req) {
                    let _ = r.send(result);
                }
            }
            msg @ (Control::RemovePrepare { .. }
            | Control::RemovePrepared { .. }
            | Control::RemoveCommit { .. }
            | Control::RemoveAbort { .. }) => {
                if let Some(m) = super::removal::from_control(msg) {
                    self.on_removal_msg(from, m)
                }
            }
            Control::Removed { ids } => self.on_removed(ids),
            Control::ClearPoison { req, seg } => {
                self.on_clear_poison_asked(from, req, SegmentId(seg))
            }
            Control::ClearPoisonDone { req, result } => self.on_clear_poison_done(req, result),
            Control::BarrierCancel {
                seg,
                barrier,
                token,
            } => self.barrier_cancel(from, SegmentId(seg), barrier, token),
            Control::LockAcquire { seg, lock, token } => {
                self.lock_acquire(from, SegmentId(seg), lock, token)
            }
            Control::LockGranted { token, .. } => self.lock_granted(token),
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

    /// A peer's catalog: take in the segments this node does not know yet.
    pub(super) fn on_catalog(&mut self, from: NodeId, segments: Vec<SegmentInfo>) {
        for info in segments {
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
    ) -> Result<SegmentInfo, String> {
        let seg = self.host.create(name, size_bytes, backing)?;
        let info = seg.info.clone();
        self.adopt(seg);
        self.broadcast(Control::Catalog {
            segments: vec![info.clone()],
        });
        Ok(info)
    }

    /// The home created the segment this node asked for: take it into the catalog here before
    /// the client hears, so its attach finds it.
    pub(super) fn on_create_reply(&mut self, req: u64, result: Result<SegmentInfo, String>) {
        let result = result.and_then(|info| match self.host.adopt(&info) {
            Ok(Some(seg)) => {
                self.adopt(seg);
                Ok(info)
            }
            Ok(None) => Ok(info),
            Err(e) => Err(e),
        });
        if let Some((r, _)) = self.creates.remove(&req) {
            let _ = r.send(result);
        }
    }

    pub(super) fn on_remove_segment(&mut self, from: NodeId, req: u64, seg: SegmentId) {
        if matches!(self.route(seg), Route::Here) {
            self.start_remove(seg, RemoveFor::Peer(from, req));
        } else {
            let me = self.me();
            let result = Err(format!("{me} is not the home of segment id {:#x}", seg.0));
            let msg = Control::RemoveDone { req, result };
            self.send_peer(from, PeerFrame::Control(msg));
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
