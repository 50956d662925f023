//! Barriers and locks at a segment's home (`docs/cluster.md` §5), sans IO.
//!
//! The home of a segment keeps, for each of its barriers, the round being gathered, and for
//! each of its locks, the holder and the queue of waiters. A waiter is a node and a token (the
//! node's name for one waiting client). The driver feeds arrivals, cancels, acquires, releases
//! and deaths in, and sends the [`LockOutput`]s; the daemon's engine runs this code.
//!
//! The table lives in the home's memory only. A home that restarts starts it *recovering*: it
//! grants nothing until every node it counts alive has reported the locks its clients hold and
//! wait for there ([`LockTable::report`], sent on every (re)connect; a node declared dead counts
//! as reported), so a lock held across the restart is not granted a second time. A report also
//! repairs what a dropped connection lost: a lock the reporting node no longer holds (a lost
//! release) passes on, a wait it still has (a lost acquire) is queued, a grant it did not hear
//! is sent again.
//!
//! Invariants (asserted): a lock has at most one holder; the holder is never also queued; a
//! waiter is queued at most once per lock; a barrier's round never holds more arrivals than its
//! parties; nothing is granted while the table recovers.

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
    /// A node reports holding a lock that the home (after a restart) has given to another
    /// client meanwhile: the report came too late, or two clients held it.
    Lost {
        /// The lock's segment.
        seg: SegmentId,
        /// The lock.
        lock: u32,
    },
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
            Refusal::Lost { seg, lock } => write!(
                f,
                "lock {lock} of segment id {:#x} was lost: its home restarted and gave it to another client",
                seg.0
            ),
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
    /// A restarted home grants at once, without waiting for the nodes' reports.
    pub no_recovery: bool,
}

/// One lock a node's client holds or waits for, as a report lists it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Claim {
    /// The lock's segment.
    pub seg: SegmentId,
    /// The lock.
    pub lock: u32,
    /// The client's token.
    pub token: u64,
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
    /// While recovering: the nodes still to report.
    awaiting: Option<std::collections::BTreeSet<NodeId>>,
    /// Acquires that came while recovering, in order.
    held_back: Vec<(Waiter, SegmentId, u32)>,
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

    /// The table of a home that (re)started: it grants nothing until each of `peers` (the other
    /// nodes it counts alive) has reported.
    pub fn recovering(bugs: LockBugs, peers: impl IntoIterator<Item = NodeId>) -> LockTable {
        let awaiting: std::collections::BTreeSet<NodeId> = peers.into_iter().collect();
        LockTable {
            bugs,
            awaiting: (!awaiting.is_empty() && !bugs.no_recovery).then_some(awaiting),
            ..LockTable::default()
        }
    }

    /// Whether the table still waits for reports (and grants nothing).
    pub fn is_recovering(&self) -> bool {
        self.awaiting.is_some()
    }

    /// The nodes whose reports the table still waits for.
    pub fn awaiting(&self) -> Vec<NodeId> {
        self.awaiting
            .iter()
            .flat_map(|a| a.iter().copied())
            .collect()
    }

    /// `node` reports what its clients hold (`held`) and wait for (`waiting`) at this home,
    /// as of when it sent the report: what it no longer claims is dropped (a held lock passes
    /// on), what it holds is its own (or refused as lost if another client holds it now), what
    /// it waits for is queued (or, if the table gave it already, granted again).
    pub fn report(
        &mut self,
        node: NodeId,
        held: &[Claim],
        waiting: &[Claim],
        out: &mut Vec<LockOutput>,
    ) {
        let claimed = |seg: SegmentId, lock: u32, w: Waiter| {
            held.iter()
                .chain(waiting)
                .any(|c| c.seg == seg && c.lock == lock && c.token == w.token)
        };
        self.held_back
            .retain(|(w, seg, lock)| w.node != node || claimed(*seg, *lock, *w));
        for (&(seg, lock), l) in self.locks.iter_mut() {
            l.queue.retain(|q| q.node != node || claimed(seg, lock, *q));
            if l.holder
                .is_some_and(|h| h.node == node && !claimed(seg, lock, h))
            {
                Self::pass_on(l, seg, lock, out);
            }
            Self::check(l);
        }
        self.locks
            .retain(|_, l| l.holder.is_some() || !l.queue.is_empty());
        for c in held {
            let w = Waiter {
                node,
                token: c.token,
            };
            let l = self.locks.entry((c.seg, c.lock)).or_default();
            match l.holder {
                None => {
                    l.holder = Some(w);
                    l.queue.retain(|q| *q != w);
                }
                Some(h) if h == w => {}
                Some(_) => {
                    let why = Refusal::Lost {
                        seg: c.seg,
                        lock: c.lock,
                    };
                    out.push(LockOutput::Refused { to: w, why });
                }
            }
            Self::check(l);
        }
        for c in waiting {
            let w = Waiter {
                node,
                token: c.token,
            };
            if self.holder(c.seg, c.lock) == Some(w) && !self.is_recovering() {
                // The grant went out and was lost with the connection.
                out.push(LockOutput::Granted {
                    to: w,
                    seg: c.seg,
                    lock: c.lock,
                });
            } else {
                self.acquire(w, c.seg, c.lock, out);
            }
        }
        self.reported(node, out);
    }

    /// Grant again every lock `node`'s clients hold here (the home's connection to it was
    /// re-established, and a grant may have been lost with the old one).
    pub fn regrant(&self, node: NodeId, out: &mut Vec<LockOutput>) {
        for (&(seg, lock), l) in &self.locks {
            if let Some(h) = l.holder.filter(|h| h.node == node) {
                out.push(LockOutput::Granted { to: h, seg, lock });
            }
        }
    }

    /// `node` no longer needs to report; the last one to do so ends the recovery, and the
    /// acquires held back are served in their order.
    fn reported(&mut self, node: NodeId, out: &mut Vec<LockOutput>) {
        let Some(a) = self.awaiting.as_mut() else {
            return;
        };
        a.remove(&node);
        if a.is_empty() {
            self.awaiting = None;
            for (w, seg, lock) in std::mem::take(&mut self.held_back) {
                self.acquire(w, seg, lock, out);
            }
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
        if self.is_recovering() {
            if !self.held_back.contains(&(w, seg, lock)) {
                self.held_back.push((w, seg, lock));
            }
            return;
        }
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
        self.held_back.retain(|h| *h != (w, seg, lock));
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
        self.held_back.retain(|(w, _, _)| w.node != node);
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
        self.reported(node, out);
    }

    /// `seg` is gone: its barriers and locks with it.
    pub fn forget_segment(&mut self, seg: SegmentId) {
        self.barriers.retain(|(s, _), _| *s != seg);
        self.locks.retain(|(s, _), _| *s != seg);
        self.held_back.retain(|(_, s, _)| *s != seg);
    }

    /// The holder of `lock` of `seg`, if any.
    pub fn holder(&self, seg: SegmentId, lock: u32) -> Option<Waiter> {
        self.locks.get(&(seg, lock)).and_then(|l| l.holder)
    }

    /// The holder is gone: the lock goes to the first waiter, if any.
    fn pass_on(l: &mut Lock, seg: SegmentId, lock: u32, out: &mut Vec<LockOutput>) {
        l.holder = l.queue.pop_front();
        // While recovering nothing is queued (acquires are held back), so nothing is granted.
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
            ..LockBugs::default()
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

    fn claim(lock: u32, token: u64) -> Claim {
        Claim {
            seg: SEG,
            lock,
            token,
        }
    }

    #[test]
    fn a_restarted_home_grants_nothing_until_every_node_reported() {
        let mut t = LockTable::recovering(LockBugs::default(), [NodeId(1), NodeId(2)]);
        let mut out = Vec::new();
        // Node 2 asks while node 1 (which holds lock 0 across the restart) has not reported.
        t.acquire(w(2, 20), SEG, 0, &mut out);
        t.report(NodeId(2), &[], &[claim(0, 20)], &mut out);
        assert!(out.is_empty(), "{out:?}");
        assert!(t.is_recovering());
        assert_eq!(t.awaiting(), vec![NodeId(1)]);
        t.report(NodeId(1), &[claim(0, 10)], &[], &mut out);
        assert!(!t.is_recovering());
        assert!(out.is_empty(), "the lock is node 1's: {out:?}");
        assert_eq!(t.holder(SEG, 0), Some(w(1, 10)));
        t.release(w(1, 10), SEG, 0, &mut out);
        assert_eq!(granted(&out), vec![w(2, 20)]);
    }

    #[test]
    fn the_injected_bug_lets_a_restarted_home_grant_a_held_lock() {
        let bugs = LockBugs {
            no_recovery: true,
            ..LockBugs::default()
        };
        let mut t = LockTable::recovering(bugs, [NodeId(1), NodeId(2)]);
        let mut out = Vec::new();
        t.acquire(w(2, 20), SEG, 0, &mut out);
        assert_eq!(granted(&out), vec![w(2, 20)]);
        out.clear();
        t.report(NodeId(1), &[claim(0, 10)], &[], &mut out);
        assert!(matches!(
            out.as_slice(),
            [LockOutput::Refused {
                why: Refusal::Lost { .. },
                ..
            }]
        ));
    }

    #[test]
    fn a_report_frees_a_lost_release_queues_a_lost_acquire_and_resends_a_lost_grant() {
        let mut t = LockTable::new(LockBugs::default());
        let mut out = Vec::new();
        t.acquire(w(1, 10), SEG, 0, &mut out);
        t.acquire(w(2, 20), SEG, 0, &mut out);
        t.acquire(w(2, 21), SEG, 1, &mut out);
        out.clear();
        // Node 1's release of lock 0 was lost; it reports nothing.
        t.report(NodeId(1), &[], &[], &mut out);
        assert_eq!(granted(&out), vec![w(2, 20)]);
        out.clear();
        // Node 2 did not hear either grant, and its acquire of lock 2 was lost.
        t.report(
            NodeId(2),
            &[],
            &[claim(0, 20), claim(1, 21), claim(2, 22)],
            &mut out,
        );
        assert_eq!(granted(&out), vec![w(2, 20), w(2, 21), w(2, 22)]);
        out.clear();
        t.regrant(NodeId(2), &mut out);
        assert_eq!(granted(&out).len(), 3);
    }
}
