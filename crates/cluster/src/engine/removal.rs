//! Two-phase removal of a cluster segment, run by its home: every node must agree that no process has it attached before anyone forgets it.

use std::time::{Duration, Instant};

use pagemesh_core::CallId;
use pagemesh_proto::peer::{Control, PeerFrame};
use pagemesh_types::{NodeId, SegmentId};

use super::{end_evictions, CallFor, Engine, Removal, RemoveFor, PREPARED_EXPIRY, REMOVE_WAIT};

impl Engine {
    /// Run a removal at the home: every node that is not declared dead must confirm that no
    /// process has the segment (and refuse new attachments) within `REMOVE_WAIT`; a file
    /// segment is synced (like unmapping a file); then every node forgets it.
    pub(super) fn start_remove(&mut self, seg: SegmentId, for_: RemoveFor) {
        let fail = |me: &mut Self, for_: RemoveFor, e: String| me.finish_remove_reply(for_, Err(e));
        if self.removals.contains_key(&seg) {
            return fail(
                self,
                for_,
                "a removal of this segment is already running".into(),
            );
        }
        let Some(s) = self.segs.get(&seg).cloned() else {
            return fail(self, for_, "not a cluster segment of this node".into());
        };
        if let Err(pids) = s.mark_removed() {
            let e = format!(
                "segment {} is attached by pid(s) {pids:?} on {}; end those processes first",
                s.info.name,
                self.me()
            );
            return fail(self, for_, e);
        }
        let peers: Vec<NodeId> = self
            .transport
            .peers()
            .into_iter()
            .filter(|p| !self.membership.is_dead(p.id))
            .map(|p| p.id)
            .collect();
        let attempt = self.req_id();
        for &p in &peers {
            self.send_peer(
                p,
                PeerFrame::Control(Control::RemovePrepare {
                    seg: seg.0,
                    attempt,
                }),
            );
        }
        self.removals.insert(
            seg,
            Removal {
                attempt,
                waiting: peers.into_iter().collect(),
                deadline: Instant::now() + REMOVE_WAIT,
                sync_call: None,
                for_,
            },
        );
        self.remove_step(seg);
    }

    pub(super) fn remove_answer(
        &mut self,
        seg: SegmentId,
        attempt: u64,
        from: NodeId,
        result: Result<(), String>,
    ) {
        let Some(r) = self.removals.get_mut(&seg) else {
            return;
        };
        if r.attempt != attempt {
            return;
        }
        match result {
            Ok(()) => {
                r.waiting.remove(&from);
                self.remove_step(seg);
            }
            Err(e) => self.abort_remove(seg, e),
        }
    }

    /// Move a removal on: once every node agreed, sync a file segment, then commit.
    pub(super) fn remove_step(&mut self, seg: SegmentId) {
        let now = self.now();
        let Some(r) = self.removals.get_mut(&seg) else {
            return;
        };
        if !r.waiting.is_empty() || r.sync_call.is_some() {
            return;
        }
        let file = self
            .segs
            .get(&seg)
            .is_some_and(|s| matches!(s.info.backing, pagemesh_proto::Backing::File { .. }));
        if file {
            match self.calls.insert(CallFor::Removal(seg)) {
                Ok(call) => {
                    if let Some(r) = self.removals.get_mut(&seg) {
                        r.sync_call = Some(call);
                    }
                    self.node.sync(now, CallId(call), seg);
                }
                Err(full) => self.abort_remove(seg, full.to_string()),
            }
            return;
        }
        self.commit_remove(seg);
    }

    pub(super) fn commit_remove(&mut self, seg: SegmentId) {
        let Some(r) = self.removals.remove(&seg) else {
            return;
        };
        self.broadcast(Control::RemoveCommit { seg: seg.0 });
        self.forget_segment(seg);
        self.finish_remove_reply(r.for_, Ok(()));
    }

    pub(super) fn abort_remove(&mut self, seg: SegmentId, why: String) {
        let Some(r) = self.removals.remove(&seg) else {
            return;
        };
        self.broadcast(Control::RemoveAbort {
            seg: seg.0,
            attempt: r.attempt,
        });
        if let Some(s) = self.segs.get(&seg) {
            s.unmark_removed();
        }
        self.finish_remove_reply(r.for_, Err(format!("not removed: {why}")));
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
        self.prepared.remove(&seg);
        self.poisoned_seen.remove(&seg);
        self.lock_table.forget_segment(seg);
        if let Err(e) = self.host.forget(seg) {
            log::error!(
                "segment id {:#x}: removing it from the catalog failed: {e}",
                seg.0
            );
        }
    }

    /// Removals whose nodes did not all answer in time fail (and are undone everywhere).
    pub(super) fn expire_removals(&mut self) {
        let late: Vec<SegmentId> = self
            .removals
            .iter()
            .filter(|(_, r)| r.sync_call.is_none() && r.deadline <= Instant::now())
            .map(|(s, _)| *s)
            .collect();
        for seg in late {
            let who: Vec<String> = self.removals[&seg]
                .waiting
                .iter()
                .map(|n| n.to_string())
                .collect();
            self.abort_remove(
                seg,
                format!(
                    "{} did not answer within {} s",
                    who.join(", "),
                    REMOVE_WAIT.as_secs()
                ),
            );
        }
        self.removes
            .retain(|_, (_, t, _)| t.elapsed() < Duration::from_secs(40));
        let expired: Vec<SegmentId> = self
            .prepared
            .iter()
            .filter(|(_, (_, t))| t.elapsed() > PREPARED_EXPIRY)
            .map(|(s, _)| *s)
            .collect();
        for seg in expired {
            self.prepared.remove(&seg);
            if let Some(s) = self.host.segment(seg) {
                log::warn!(
                    "segment {}: prepared for removal {} s ago, but neither commit nor abort came; attachable again",
                    s.info.name,
                    PREPARED_EXPIRY.as_secs()
                );
                s.unmark_removed();
            }
        }
    }
}
