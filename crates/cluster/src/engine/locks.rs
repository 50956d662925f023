//! Barriers and locks: the home's table is `pagemesh_core::LockTable` (the rules); the engine
//! routes requests to it, executes its outputs and keeps this node's local waiters.

use pagemesh_core::{LockOutput, Waiter};
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
        self.lock_of.remove(&token);
        match self.lock_waiters.remove(&token) {
            Some(w) => {
                let _ = w.send(Ok(()));
            }
            // The waiter gave up meanwhile: the grant is released again by its connection.
            None => log::debug!("lock granted to waiter {token}, which is gone"),
        }
    }
}
