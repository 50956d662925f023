//! Barriers and locks, run at the segment's home.

use std::collections::HashMap;

use pagemesh_proto::peer::{Control, PeerFrame};
use pagemesh_types::{NodeId, SegmentId};

use super::Engine;

impl Engine {
    pub(super) fn barrier_arrive(
        &mut self,
        from: NodeId,
        seg: SegmentId,
        barrier: u32,
        parties: u32,
        token: u64,
    ) {
        let me = self.me();
        if self.home_of(seg) != Some(me) {
            let reason = format!("{me} is not the home of segment id {}", seg.0);
            self.tell(from, token, reason);
            return;
        }
        let b = self.barriers.entry((seg, barrier)).or_default();
        if b.arrived.is_empty() {
            b.parties = parties;
        } else if b.parties != parties {
            let reason = format!(
                "barrier {barrier}: {parties} parties asked, but the waiting round was started for {}",
                b.parties
            );
            self.tell(from, token, reason);
            return;
        }
        b.arrived.push((from, token));
        if b.arrived.len() as u32 >= b.parties.max(1) {
            b.generation += 1;
            let generation = b.generation;
            let mut by_node: HashMap<NodeId, Vec<u64>> = HashMap::new();
            for (n, t) in b.arrived.drain(..) {
                by_node.entry(n).or_default().push(t);
            }
            for (n, tokens) in by_node {
                if n == me {
                    for t in tokens {
                        self.barrier_of.remove(&t);
                        if let Some(w) = self.barrier_waiters.remove(&t) {
                            let _ = w.send(Ok(generation));
                        }
                    }
                } else {
                    self.send_peer(
                        n,
                        PeerFrame::Control(Control::BarrierRelease {
                            seg: seg.0,
                            barrier,
                            tokens,
                            generation,
                        }),
                    );
                }
            }
        }
    }

    pub(super) fn barrier_cancel(
        &mut self,
        from: NodeId,
        seg: SegmentId,
        barrier: u32,
        token: u64,
    ) {
        if let Some(b) = self.barriers.get_mut(&(seg, barrier)) {
            b.arrived.retain(|a| *a != (from, token));
        }
    }

    pub(super) fn lock_acquire(&mut self, from: NodeId, seg: SegmentId, lock: u32, token: u64) {
        let me = self.me();
        if self.home_of(seg) != Some(me) {
            let reason = format!("{me} is not the home of segment id {}", seg.0);
            self.tell(from, token, reason);
            return;
        }
        let l = self.locks.entry((seg, lock)).or_default();
        if l.holder.is_none() {
            l.holder = Some((from, token));
            self.grant_lock(from, seg, lock, token);
        } else {
            l.queue.push_back((from, token));
        }
    }

    pub(super) fn grant_lock(&mut self, to: NodeId, seg: SegmentId, lock: u32, token: u64) {
        if to == self.me() {
            self.lock_granted(token);
        } else {
            self.send_peer(
                to,
                PeerFrame::Control(Control::LockGranted {
                    seg: seg.0,
                    lock,
                    token,
                }),
            );
        }
    }

    pub(super) fn lock_granted(&mut self, token: u64) {
        self.lock_of.remove(&token);
        match self.lock_waiters.remove(&token) {
            Some(w) => {
                let _ = w.send(Ok(()));
            }
            // The waiter gave up meanwhile: the grant is released again by its connection.
            None => log::debug!("lock granted to waiter {token}, which is gone"),
        }
    }

    pub(super) fn lock_release(&mut self, from: NodeId, seg: SegmentId, lock: u32, token: u64) {
        let Some(l) = self.locks.get_mut(&(seg, lock)) else {
            return;
        };
        l.queue.retain(|w| *w != (from, token));
        if l.holder == Some((from, token)) {
            l.holder = l.queue.pop_front();
            if let Some((n, t)) = l.holder {
                self.grant_lock(n, seg, lock, t);
            }
        }
    }
}
