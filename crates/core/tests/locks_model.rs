//! Property test of a home's lock table: random acquires, releases (by holders, by waiters that
//! gave up, late duplicates) and node deaths, from clients on a few nodes, applied to
//! `LockTable` and to a reference model (a FIFO queue per lock, the head holds it). After
//! every step: each lock has at most one client that was granted it and has not let it go, and
//! that client is the model's holder; every grant goes to the model's next holder.

mod common;

use common::{forall, Rng};
use pagemesh_core::{LockBugs, LockOutput, LockTable, Waiter};
use pagemesh_types::{NodeId, SegmentId};
use std::collections::{BTreeMap, BTreeSet, VecDeque};

const SEG: SegmentId = SegmentId(3);
const LOCKS: u32 = 2;
const NODES: u32 = 3;
const TOKENS: u64 = 4;

#[derive(Clone, Copy, Debug)]
enum Op {
    Acquire(Waiter, u32),
    Release(Waiter, u32),
    NodeDead(NodeId),
}

fn gen(rng: &mut Rng) -> Vec<Op> {
    let n = 5 + rng.below(60) as usize;
    (0..n)
        .map(|_| {
            let w = Waiter {
                node: NodeId(rng.below(u64::from(NODES)) as u32),
                token: rng.below(TOKENS),
            };
            let lock = rng.below(u64::from(LOCKS)) as u32;
            match rng.below(10) {
                0 => Op::NodeDead(w.node),
                1..=5 => Op::Acquire(w, lock),
                _ => Op::Release(w, lock),
            }
        })
        .collect()
}

/// The reference: per lock, the queue of waiters; its head holds the lock.
#[derive(Default)]
struct Model {
    queues: BTreeMap<u32, VecDeque<Waiter>>,
}

impl Model {
    fn holder(&self, lock: u32) -> Option<Waiter> {
        self.queues.get(&lock).and_then(|q| q.front().copied())
    }

    fn apply(&mut self, op: Op) {
        match op {
            Op::Acquire(w, lock) => {
                let q = self.queues.entry(lock).or_default();
                if !q.contains(&w) {
                    q.push_back(w);
                }
            }
            Op::Release(w, lock) => {
                if let Some(q) = self.queues.get_mut(&lock) {
                    q.retain(|x| *x != w);
                }
            }
            Op::NodeDead(n) => {
                for q in self.queues.values_mut() {
                    q.retain(|x| x.node != n);
                }
            }
        }
    }
}

fn run(ops: &[Op], bugs: LockBugs) -> Result<(), String> {
    let mut t = LockTable::new(bugs);
    let mut m = Model::default();
    // Who was granted each lock and has not let it go (released, or its node died).
    let mut held: BTreeMap<u32, BTreeSet<Waiter>> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, &op) in ops.iter().enumerate() {
        let before: BTreeMap<u32, Option<Waiter>> = (0..LOCKS).map(|l| (l, m.holder(l))).collect();
        match op {
            Op::Acquire(w, lock) => t.acquire(w, SEG, lock, &mut out),
            Op::Release(w, lock) => {
                t.release(w, SEG, lock, &mut out);
                held.entry(lock).or_default().remove(&w);
            }
            Op::NodeDead(n) => {
                t.forget_node(n, &mut out);
                for h in held.values_mut() {
                    h.retain(|w| w.node != n);
                }
            }
        }
        m.apply(op);
        for o in out.drain(..) {
            let LockOutput::Granted { to, seg, lock } = o else {
                return Err(format!("step {i}: {op:?} gave a barrier output {o:?}"));
            };
            if seg != SEG {
                return Err(format!("step {i}: a grant for segment {seg:?}"));
            }
            if m.holder(lock) != Some(to) || before[&lock] == Some(to) {
                return Err(format!(
                    "step {i}: {op:?} granted lock {lock} to {to:?}; the model's holder is {:?}",
                    m.holder(lock)
                ));
            }
            held.entry(lock).or_default().insert(to);
        }
        for (lock, h) in &held {
            if h.len() > 1 {
                return Err(format!(
                    "step {i}: {op:?}: lock {lock} held by {h:?} at once"
                ));
            }
            if t.holder(SEG, *lock) != m.holder(*lock) {
                return Err(format!(
                    "step {i}: lock {lock}: the table's holder is {:?}, the model's {:?}",
                    t.holder(SEG, *lock),
                    m.holder(*lock)
                ));
            }
        }
    }
    Ok(())
}

#[test]
fn locks_match_the_reference_and_are_never_held_twice() {
    forall(3000, gen, |ops| run(ops, LockBugs::default()));
}

#[test]
fn the_property_catches_a_release_by_anyone() {
    let bugs = LockBugs {
        release_by_anyone: true,
        ..LockBugs::default()
    };
    let caught = (0..3000u64).any(|case| run(&gen(&mut Rng::new(case)), bugs).is_err());
    assert!(
        caught,
        "a release by a waiter that does not hold the lock went unnoticed"
    );
}
