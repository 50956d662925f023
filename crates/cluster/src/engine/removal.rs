//! Two-phase removal of a cluster segment: the rules are `pagemesh_core::Removals` (every node
//! must agree that no process has the segment attached before anyone forgets it); the engine
//! feeds it messages and time and executes its outputs.

use std::time::Duration;

use pagemesh_core::{CallId, RemovalMsg, RemovalOutput, RemovalStart};
use pagemesh_node::segment::Segment;
use pagemesh_proto::peer::{Control, PeerFrame};
use pagemesh_types::{NodeId, SegmentId};

use super::{end_evictions, CallFor, Engine, RemoveFor};

/// Mark `s` removed (new attachments refused), or say which processes have it attached.
fn mark(s: &Segment, me: NodeId) -> Result<(), String> {
    s.mark_removed().map_err(|pids| {
        format!(
            "segment {} is attached by pid(s) {pids:?} on {me}",
            s.info.name
        )
    })
}

/// The peer wire format's control frame of a removal message.
fn to_control(msg: RemovalMsg) -> Control {
    match msg {
        RemovalMsg::Prepare { seg, attempt } => Control::RemovePrepare {
            seg: seg.0,
            attempt,
        },
        RemovalMsg::Prepared {
            seg,
            attempt,
            result,
        } => Control::RemovePrepared {
            seg: seg.0,
            attempt,
            result,
        },
        RemovalMsg::Commit { seg } => Control::RemoveCommit { seg: seg.0 },
        RemovalMsg::Abort { seg, attempt } => Control::RemoveAbort {
            seg: seg.0,
            attempt,
        },
    }
}

/// The removal message of a control frame (`None` for any other frame).
pub(super) fn from_control(msg: Control) -> Option<RemovalMsg> {
    Some(match msg {
        Control::RemovePrepare { seg, attempt } => RemovalMsg::Prepare {
            seg: SegmentId(seg),
            attempt,
        },
        Control::RemovePrepared {
            seg,
            attempt,
            result,
        } => RemovalMsg::Prepared {
            seg: SegmentId(seg),
            attempt,
            result,
        },
        Control::RemoveCommit { seg } => RemovalMsg::Commit {
            seg: SegmentId(seg),
        },
        Control::RemoveAbort { seg, attempt } => RemovalMsg::Abort {
            seg: SegmentId(seg),
            attempt,
        },
        _ => return None,
    })
}

impl Engine {
    /// Run a removal at the home: every node that is not declared dead must prepare within the
    /// answer limit; a file segment is synced (like unmapping a file); then every node forgets
    /// it.
    pub(super) fn start_remove(&mut self, seg: SegmentId, for_: RemoveFor) {
        let Some(s) = self.segs.get(&seg).cloned() else {
            let e = "not a cluster segment of this node".to_string();
            return self.finish_remove_reply(for_, Err(e));
        };
        let me = self.me();
        let peers: Vec<NodeId> = self
            .transport
            .peers()
            .into_iter()
            .filter(|p| p.id != me && !self.membership.is_dead(p.id))
            .map(|p| p.id)
            .collect();
        let file = matches!(s.info.backing, pagemesh_proto::Backing::File { .. });
        let now = self.now();
        let mut outs = std::mem::take(&mut self.removal_outs);
        let ask = RemovalStart {
            seg,
            for_,
            peers,
            file,
        };
        self.removal.start(now, ask, || mark(&s, me), &mut outs);
        self.exec_removal(&mut outs);
        self.removal_outs = outs;
    }

    /// A removal message from a peer.
    pub(super) fn on_removal_msg(&mut self, from: NodeId, msg: RemovalMsg) {
        let me = self.me();
        let seg = match &msg {
            RemovalMsg::Prepare { seg, .. } => self.host.segment(*seg),
            _ => None,
        };
        // A segment this node does not know has nothing attached.
        let check = || seg.as_deref().map_or(Ok(()), |s| mark(s, me));
        let now = self.now();
        let mut outs = std::mem::take(&mut self.removal_outs);
        let home = self.home_of(msg.seg()).or(msg.seg().home());
        self.removal
            .on_peer_message(now, from, home, msg, check, &mut outs);
        self.exec_removal(&mut outs);
        self.removal_outs = outs;
    }

    /// Feed the removal machine one more input and execute what it decided.
    fn with_removal(&mut self, f: impl FnOnce(&mut Self, &mut Vec<RemovalOutput<RemoveFor>>)) {
        let mut outs = std::mem::take(&mut self.removal_outs);
        f(self, &mut outs);
        self.exec_removal(&mut outs);
        self.removal_outs = outs;
    }

    /// The sync of a file segment being removed ended.
    pub(super) fn removal_synced(&mut self, seg: SegmentId, result: Result<(), String>) {
        self.with_removal(|e, outs| e.removal.sync_done(seg, result, outs));
    }

    /// Removals stop waiting for a peer declared dead.
    pub(super) fn removal_peer_dead(&mut self, peer: NodeId) {
        let now = self.now();
        self.with_removal(|e, outs| e.removal.peer_dead(now, peer, outs));
    }

    /// A peer (re)connected: running removals ask it again (it may have restarted).
    pub(super) fn removal_peer_connected(&mut self, peer: NodeId) {
        self.with_removal(|e, outs| e.removal.peer_connected(peer, outs));
    }

    /// A peer lists segments removed from the cluster: forget each one this node still has.
    pub(super) fn on_removed(&mut self, from: NodeId, ids: Vec<u64>) {
        let known = self.host.removed_ids();
        for id in ids {
            let seg = SegmentId(id);
            if known.contains(&id) && self.host.segment(seg).is_none() {
                continue;
            }
            let home = self.home_of(seg).or(seg.home());
            self.with_removal(|e, outs| e.removal.removed_by(from, home, seg, outs));
        }
    }

    /// Execute (and drain) what the removal machine decided, and what that decided in turn.
    fn exec_removal(&mut self, outs: &mut Vec<RemovalOutput<RemoveFor>>) {
        while !outs.is_empty() {
            let batch = std::mem::take(outs);
            for o in batch {
                self.exec_removal_one(o, outs);
            }
        }
    }

    fn exec_removal_one(
        &mut self,
        o: RemovalOutput<RemoveFor>,
        outs: &mut Vec<RemovalOutput<RemoveFor>>,
    ) {
        match o {
            RemovalOutput::Send { to, msg } => {
                self.send_peer(to, PeerFrame::Control(to_control(msg)))
            }
            RemovalOutput::Sync { seg } => match self.calls.insert(CallFor::Removal(seg)) {
                Ok(call) => {
                    let now = self.now();
                    self.node.sync(now, CallId(call), seg);
                }
                Err(full) => self.removal.sync_done(seg, Err(full.to_string()), outs),
            },
            RemovalOutput::Forget { seg, prepared } => self.forget_removed(seg, prepared),
            RemovalOutput::Refused { from, seg, why } => {
                log::warn!("{from} asked about the removal of {seg}, refused: {why}");
            }
            RemovalOutput::Unmark { seg } => {
                if let Some(s) = self.host.segment(seg) {
                    s.unmark_removed();
                }
            }
            RemovalOutput::Done { for_, result, .. } => {
                let result = result.map_err(|e| format!("not removed: {e}"));
                self.finish_remove_reply(for_, result);
            }
        }
    }

    /// The cluster removed `seg`: forget it here, unless (no prepare of this node covering it)
    /// a process here has it attached; its faults then fail, and it is kept until they end.
    fn forget_removed(&mut self, seg: SegmentId, prepared: bool) {
        if !prepared {
            if let Some(s) = self.host.segment(seg) {
                if let Err(pids) = s.mark_removed() {
                    log::error!(
                        "segment {} (id {:#x}) was removed from the cluster, but pid(s) {pids:?} here have it attached; \
                         their faults on it now fail (end them)",
                        s.info.name,
                        seg.0
                    );
                    return;
                }
            }
        }
        self.forget_segment(seg);
    }

    pub(super) fn finish_remove_reply(&mut self, for_: RemoveFor, result: Result<(), String>) {
        match for_ {
            RemoveFor::Local(r) => {
                let _ = r.send(result);
            }
            RemoveFor::Peer(n, req) => {
                self.send_peer(n, PeerFrame::Control(Control::RemoveDone { req, result }))
            }
        }
    }

    /// Forget a removed segment on this node: the core, the engine, the daemon's tables.
    pub(super) fn forget_segment(&mut self, seg: SegmentId) {
        let now = self.now();
        self.node.remove_segment(now, seg);
        // The segment is taken out first and its memory used after: looking it up once it is
        // gone left the pool's count of evictions in progress up for good.
        let removed = self.segs.remove(&seg);
        self.intents.remove(&seg);
        let memory = removed.as_ref().and_then(|s| s.memory.as_ref());
        end_evictions(&mut self.evicting, seg, memory);
        self.poisoned_seen.remove(&seg);
        self.lock_table.forget_segment(seg);
        for token in self.lock_client.forget_segment(seg) {
            if let Some(w) = self.lock_waiters.remove(&token) {
                let _ = w.send(Err("the segment was removed".into()));
            }
        }
        if let Err(e) = self.host.forget(seg) {
            log::error!(
                "segment id {:#x}: removing it from the catalog failed: {e}",
                seg.0
            );
        }
    }

    /// Removals whose nodes did not all answer in time (or whose sync is too slow) fail and are
    /// undone everywhere; prepares left alone are undone.
    pub(super) fn expire_removals(&mut self) {
        let now = self.now();
        self.with_removal(|e, outs| e.removal.tick(now, outs));
        self.removes
            .retain(|_, (_, t, _)| t.elapsed() < Duration::from_secs(40));
    }
}
