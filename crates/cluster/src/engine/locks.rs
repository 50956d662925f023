//! Barriers and locks: the home's table is `pagemesh_core::LockTable` (the rules); the engine
//! routes requests to it, executes its outputs and keeps this node's local waiters.

use pagemesh_core::{Claim, LockOutput, Waiter};
use pagemesh_proto::peer::{Control, PeerFrame};
use pagemesh_types::{NodeId, SegmentId};

use super::Engine;

impl Engine {
    /// Whether this node is `seg`'s home; a waiter that asked the wrong node is told so.
    fn serve_as_home(&mut self, from: NodeId, seg: SegmentId, token: u64) -> bool {
        let me = self.me();
        if self.home_of(seg) == Some(me) {
            return true;
        }
        let reason = format!("{me} is not the home of segment id {}", seg.0);
        self.tell(from, token, reason);
        false
    }

    pub(super) fn barrier_arrive(
        &mut self,
        from: NodeId,
        seg: SegmentId,
        barrier: u32,
        parties: u32,
        token: u64,
    ) {
        if !self.serve_as_home(from, seg, token) {
            return;
        }
        let w = Waiter { node: from, token };
        let mut outs = std::mem::take(&mut self.lock_outs);
        self.lock_table.arrive(w, seg, barrier, parties, &mut outs);
        self.exec_locks(&mut outs);
        self.lock_outs = outs;
    }

    pub(super) fn barrier_cancel(
        &mut self,
        from: NodeId,
        seg: SegmentId,
        barrier: u32,
        token: u64,
    ) {
        let w = Waiter { node: from, token };
        self.lock_table.cancel(w, seg, barrier);
    }

    pub(super) fn lock_acquire(&mut self, from: NodeId, seg: SegmentId, lock: u32, token: u64) {
        if !self.serve_as_home(from, seg, token) {
            return;
        }
        let w = Waiter { node: from, token };
        let mut outs = std::mem::take(&mut self.lock_outs);
        self.lock_table.acquire(w, seg, lock, &mut outs);
        self.exec_locks(&mut outs);
        self.lock_outs = outs;
    }

    pub(super) fn lock_release(&mut self, from: NodeId, seg: SegmentId, lock: u32, token: u64) {
        let w = Waiter { node: from, token };
        let mut outs = std::mem::take(&mut self.lock_outs);
        self.lock_table.release(w, seg, lock, &mut outs);
        self.exec_locks(&mut outs);
        self.lock_outs = outs;
    }

    /// A dead (or restarted) node's arrivals and waits at this home are dropped, and the locks
    /// it held pass on.
    pub(super) fn forget_node_locks(&mut self, peer: NodeId) {
        let mut outs = std::mem::take(&mut self.lock_outs);
        self.lock_table.forget_node(peer, &mut outs);
        if !self.lock_table.is_recovering() && self.lock_recovering {
            self.lock_recovering = false;
            log::info!(
                "every peer reported its locks or was declared dead: this home grants locks again"
            );
        }
        self.exec_locks(&mut outs);
        self.lock_outs = outs;
    }

    /// Execute (and drain) what the lock table decided.
    fn exec_locks(&mut self, outs: &mut Vec<LockOutput>) {
        for o in outs.drain(..) {
            match o {
                LockOutput::Granted { to, seg, lock } => {
                    self.grant_lock(to.node, seg, lock, to.token)
                }
                LockOutput::Released {
                    node,
                    seg,
                    barrier,
                    tokens,
                    generation,
                } => self.release_barrier(node, seg, barrier, tokens, generation),
                LockOutput::Refused { to, why } => self.tell(to.node, to.token, why.to_string()),
            }
        }
    }

    fn release_barrier(
        &mut self,
        node: NodeId,
        seg: SegmentId,
        barrier: u32,
        tokens: Vec<u64>,
        generation: u64,
    ) {
        if node == self.me() {
            for t in tokens {
                self.barrier_of.remove(&t);
                if let Some(w) = self.barrier_waiters.remove(&t) {
                    let _ = w.send(Ok(generation));
                }
            }
        } else {
            let msg = Control::BarrierRelease {
                seg: seg.0,
                barrier,
                tokens,
                generation,
            };
            self.send_peer(node, PeerFrame::Control(msg));
        }
    }

    pub(super) fn grant_lock(&mut self, to: NodeId, seg: SegmentId, lock: u32, token: u64) {
        if to == self.me() {
            self.lock_granted(token);
        } else {
            let msg = Control::LockGranted {
                seg: seg.0,
                lock,
                token,
            };
            self.send_peer(to, PeerFrame::Control(msg));
        }
    }

    pub(super) fn lock_granted(&mut self, token: u64) {
        if self.lock_client.granted(token).is_none() {
            // Granted again (after a reconnect), or to a waiter that gave up meanwhile: the
            // latter's release is on its way from its connection.
            return log::debug!("lock granted to waiter {token}, which does not wait");
        }
        if let Some(w) = self.lock_waiters.remove(&token) {
            let _ = w.send(Ok(()));
        }
    }

    /// A home hears `from`'s report of the locks its clients hold and wait for here.
    /// Each claim on the wire is `(segment, lock, token)`.
    pub(super) fn lock_report(
        &mut self,
        from: NodeId,
        held: Vec<(u64, u32, u64)>,
        waiting: Vec<(u64, u32, u64)>,
    ) {
        let claim = |(seg, lock, token): (u64, u32, u64)| Claim {
            seg: SegmentId(seg),
            lock,
            token,
        };
        let held: Vec<Claim> = held.into_iter().map(claim).collect();
        let waiting: Vec<Claim> = waiting.into_iter().map(claim).collect();
        let mut outs = std::mem::take(&mut self.lock_outs);
        self.lock_table.report(from, &held, &waiting, &mut outs);
        if !self.lock_table.is_recovering() && self.lock_recovering {
            self.lock_recovering = false;
            log::info!("every peer reported its locks: this home grants locks again");
        }
        self.exec_locks(&mut outs);
        self.lock_outs = outs;
    }

    /// A connection to `peer` was (re)established: report to it (as a home) what this node's
    /// clients hold and wait for there, and (as a home) grant again what `peer` holds here, in
    /// case a grant was lost with the old connection.
    pub(super) fn locks_peer_connected(&mut self, peer: NodeId) {
        let (held, waiting) = self.lock_client.report(peer);
        let wire = |c: &Claim| (c.seg.0, c.lock, c.token);
        let msg = Control::LockReport {
            held: held.iter().map(wire).collect(),
            waiting: waiting.iter().map(wire).collect(),
        };
        self.send_peer(peer, PeerFrame::Control(msg));
        let mut outs = std::mem::take(&mut self.lock_outs);
        self.lock_table.regrant(peer, &mut outs);
        self.exec_locks(&mut outs);
        self.lock_outs = outs;
    }
}
