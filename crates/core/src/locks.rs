//! Barriers and locks at a segment's home (`docs/cluster.md` §5), sans IO.
//!
//! The home of a segment keeps, for each of its barriers, the round being gathered, and for
//! each of its locks, the holder and the queue of waiters. A waiter is a node and a token (the
//! node's name for one waiting client). The driver feeds arrivals, cancels, acquires, releases
//! and deaths in, and sends the [`LockOutput`]s; the daemon's engine runs this code.
//!
//! Invariants (asserted): a lock has at most one holder; the holder is never also queued; a
//! waiter is queued at most once per lock; a barrier's round never holds more arrivals than its
//! parties.

use std::collections::{BTreeMap, VecDeque};

use pagemesh_types::{NodeId, SegmentId};

/// One waiting client: its node and the node's token for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Waiter {
    /// The client's node.
    pub node: NodeId,
    /// The node's token for the client.
    pub token: u64,
}

/// Why a waiter is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// A barrier's round was started for another number of parties.
    Parties {
        /// The barrier.
        barrier: u32,
        /// The parties this waiter asked for.
        asked: u32,
        /// The parties of the round being gathered.
        started: u32,
    },
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Parties {
                barrier,
                asked,
                started,
            } => write!(
                f,
                "barrier {barrier}: {asked} parties asked, but the waiting round was started for {started}"
            ),
        }
    }
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LockOutput {
    /// `to` holds `lock` of `seg` now.
    Granted {
        /// The new holder.
        to: Waiter,
        /// The segment.
        seg: SegmentId,
        /// The lock.
        lock: u32,
    },
    /// The round of `barrier` is complete: release these tokens of `node`.
    Released {
        /// The node whose waiters pass.
        node: NodeId,
        /// The segment.
        seg: SegmentId,
        /// The barrier.
        barrier: u32,
        /// Its waiters that pass.
        tokens: Vec<u64>,
        /// The round that completed (1, 2, ...).
        generation: u64,
    },
    /// Refuse a waiter.
    Refused {
        /// The waiter.
        to: Waiter,
        /// Why.
        why: Refusal,
    },
}

/// Lock bugs that can be switched on to prove the checkers catch them.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LockBugs {
    /// A release by a waiter that does not hold the lock (a late or duplicated release)
    /// passes the lock on anyway.
    pub release_by_anyone: bool,
}

#[derive(Clone, Debug, Default)]
struct Barrier {
    parties: u32,
    arrived: Vec<Waiter>,
    generation: u64,
}

#[derive(Clone, Debug, Default)]
struct Lock {
    holder: Option<Waiter>,
    queue: VecDeque<Waiter>,
}

/// The barriers and locks of the segments homed at one node.
#[derive(Clone, Debug, Default)]
pub struct LockTable {
    barriers: BTreeMap<(SegmentId, u32), Barrier>,
    locks: BTreeMap<(SegmentId, u32), Lock>,
    bugs: LockBugs,
}

impl LockTable {
    /// An empty table.
    pub fn new(bugs: LockBugs) -> LockTable {
        LockTable {
            bugs,
            ..LockTable::default()
        }
    }

    /// `w` arrives at `barrier` of `seg`, a round of `parties`.
    pub fn arrive(
        &mut self,
        w: Waiter,
        seg: SegmentId,
        barrier: u32,
        parties: u32,
        out: &mut Vec<LockOutput>,
    ) {
        let b = self.barriers.entry((seg, barrier)).or_default();
        if b.arrived.is_empty() {
            b.parties = parties.max(1);
        } else if b.parties != parties.max(1) {
            let why = Refusal::Parties {
                barrier,
                asked: parties,
                started: b.parties,
            };
            out.push(LockOutput::Refused { to: w, why });
            return;
        }
        if b.arrived.contains(&w) {
            return;
        }
        b.arrived.push(w);
        assert!(
            b.arrived.len() as u32 <= b.parties,
            "a barrier round over its parties"
        );
        if b.arrived.len() as u32 == b.parties {
            b.generation += 1;
            let generation = b.generation;
            let mut by_node: BTreeMap<NodeId, Vec<u64>> = BTreeMap::new();
            for a in b.arrived.drain(..) {
                by_node.entry(a.node).or_default().push(a.token);
            }
            for (node, tokens) in by_node {
                out.push(LockOutput::Released {
                    node,
                    seg,
                    barrier,
                    tokens,
                    generation,
                });
            }
        }
    }

    /// `w` gave up waiting at `barrier`: its arrival no longer counts.
    pub fn cancel(&mut self, w: Waiter, seg: SegmentId, barrier: u32) {
        if let Some(b) = self.barriers.get_mut(&(seg, barrier)) {
            b.arrived.retain(|a| *a != w);
        }
    }

    /// `w` asks for `lock` of `seg`: granted now if it is free, queued otherwise.
    pub fn acquire(&mut self, w: Waiter, seg: SegmentId, lock: u32, out: &mut Vec<LockOutput>) {
        let l = self.locks.entry((seg, lock)).or_default();
        if l.holder == Some(w) || l.queue.contains(&w) {
            return;
        }
        match l.holder {
            None => {
                l.holder = Some(w);
                out.push(LockOutput::Granted { to: w, seg, lock });
            }
            Some(_) => l.queue.push_back(w),
        }
        Self::check(l);
    }

    /// `w` releases `lock` of `seg` (or stops waiting for it); the next waiter gets it.
    pub fn release(&mut self, w: Waiter, seg: SegmentId, lock: u32, out: &mut Vec<LockOutput>) {
        let Some(l) = self.locks.get_mut(&(seg, lock)) else {
            return;
        };
        l.queue.retain(|q| *q != w);
        if l.holder == Some(w) || (self.bugs.release_by_anyone && l.holder.is_some()) {
            Self::pass_on(l, seg, lock, out);
        }
        Self::check(l);
        if l.holder.is_none() && l.queue.is_empty() {
            self.locks.remove(&(seg, lock));
        }
    }

    /// `node` died or restarted: its arrivals and waits are dropped, and the locks it held
    /// pass to their next waiters.
    pub fn forget_node(&mut self, node: NodeId, out: &mut Vec<LockOutput>) {
        for b in self.barriers.values_mut() {
            b.arrived.retain(|a| a.node != node);
        }
        for (&(seg, lock), l) in self.locks.iter_mut() {
            l.queue.retain(|q| q.node != node);
            if l.holder.is_some_and(|h| h.node == node) {
                Self::pass_on(l, seg, lock, out);
            }
            Self::check(l);
        }
        self.locks
            .retain(|_, l| l.holder.is_some() || !l.queue.is_empty());
    }

    /// `seg` is gone: its barriers and locks with it.
    pub fn forget_segment(&mut self, seg: SegmentId) {
        self.barriers.retain(|(s, _), _| *s != seg);
        self.locks.retain(|(s, _), _| *s != seg);
    }

    /// The holder of `lock` of `seg`, if any.
    pub fn holder(&self, seg: SegmentId, lock: u32) -> Option<Waiter> {
        self.locks.get(&(seg, lock)).and_then(|l| l.holder)
    }

    /// The holder is gone: the lock goes to the first waiter, if any.
    fn pass_on(l: &mut Lock, seg: SegmentId, lock: u32, out: &mut Vec<LockOutput>) {
        l.holder = l.queue.pop_front();
        if let Some(next) = l.holder {
            out.push(LockOutput::Granted {
                to: next,
                seg,
                lock,
            });
        }
    }

    fn check(l: &Lock) {
        if let Some(h) = l.holder {
            assert!(
                !l.queue.contains(&h),
                "a lock's holder {h:?} is also queued"
            );
        }
        assert!(
            l.holder.is_some() || l.queue.is_empty(),
            "a free lock with waiters queued"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: SegmentId = SegmentId(7);

    fn w(node: u32, token: u64) -> Waiter {
        Waiter {
            node: NodeId(node),
            token,
        }
    }

    fn granted(out: &[LockOutput]) -> Vec<Waiter> {
        out.iter()
            .filter_map(|o| match o {
                LockOutput::Granted { to, .. } => Some(*to),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_lock_goes_to_one_holder_at_a_time_in_order() {
        let mut t = LockTable::new(LockBugs::default());
        let mut out = Vec::new();
        t.acquire(w(1, 10), SEG, 0, &mut out);
        t.acquire(w(2, 20), SEG, 0, &mut out);
        t.acquire(w(3, 30), SEG, 0, &mut out);
        assert_eq!(granted(&out), vec![w(1, 10)]);
        out.clear();
        // A release by a waiter that does not hold it changes nothing but its own wait.
        t.release(w(3, 30), SEG, 0, &mut out);
        assert!(out.is_empty());
        t.release(w(1, 10), SEG, 0, &mut out);
        assert_eq!(granted(&out), vec![w(2, 20)]);
        assert_eq!(t.holder(SEG, 0), Some(w(2, 20)));
    }

    #[test]
    fn a_dead_holders_lock_passes_on_and_its_waits_are_dropped() {
        let mut t = LockTable::new(LockBugs::default());
        let mut out = Vec::new();
        t.acquire(w(1, 10), SEG, 0, &mut out);
        t.acquire(w(1, 11), SEG, 1, &mut out);
        t.acquire(w(2, 20), SEG, 0, &mut out);
        t.acquire(w(1, 12), SEG, 0, &mut out);
        out.clear();
        t.forget_node(NodeId(1), &mut out);
        assert_eq!(granted(&out), vec![w(2, 20)]);
        assert_eq!(t.holder(SEG, 1), None);
    }

    #[test]
    fn the_injected_bug_grants_a_lock_twice() {
        let mut t = LockTable::new(LockBugs {
            release_by_anyone: true,
        });
        let mut out = Vec::new();
        t.acquire(w(1, 10), SEG, 0, &mut out);
        t.acquire(w(2, 20), SEG, 0, &mut out);
        t.acquire(w(3, 30), SEG, 0, &mut out);
        // A late release of waiter 3 (it gave up) passes the lock on while 1 still holds it.
        t.release(w(3, 30), SEG, 0, &mut out);
        assert_eq!(granted(&out), vec![w(1, 10), w(2, 20)]);
    }

    #[test]
    fn a_barrier_releases_its_round_by_node_and_refuses_other_parties() {
        let mut t = LockTable::new(LockBugs::default());
        let mut out = Vec::new();
        t.arrive(w(1, 10), SEG, 4, 3, &mut out);
        t.arrive(w(2, 20), SEG, 4, 2, &mut out);
        assert!(matches!(
            out.as_slice(),
            [LockOutput::Refused { to, why: Refusal::Parties { barrier: 4, asked: 2, started: 3 } }] if *to == w(2, 20)
        ));
        out.clear();
        t.arrive(w(2, 21), SEG, 4, 3, &mut out);
        t.cancel(w(2, 21), SEG, 4);
        t.arrive(w(2, 22), SEG, 4, 3, &mut out);
        t.arrive(w(1, 11), SEG, 4, 3, &mut out);
        assert_eq!(
            out,
            vec![
                LockOutput::Released {
                    node: NodeId(1),
                    seg: SEG,
                    barrier: 4,
                    tokens: vec![10, 11],
                    generation: 1
                },
                LockOutput::Released {
                    node: NodeId(2),
                    seg: SEG,
                    barrier: 4,
                    tokens: vec![22],
                    generation: 1
                },
            ]
        );
    }
}
