//! The locks a node's clients hold and wait for at the segments' homes, sans IO: what the node
//! reports to a home on every (re)connect ([`crate::LockTable::report`]).

use std::collections::BTreeMap;

use pagemesh_types::{NodeId, SegmentId};

use crate::locks::Claim;

/// One client's lock, as its node knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LockWant {
    /// The home of the lock's segment.
    pub home: NodeId,
    /// The segment.
    pub seg: SegmentId,
    /// The lock.
    pub lock: u32,
    /// Granted (and not released yet).
    pub held: bool,
}

/// The locks of one node's clients, by token.
#[derive(Clone, Debug, Default)]
pub struct LockClient {
    wants: BTreeMap<u64, LockWant>,
}

impl LockClient {
    /// No lock held or waited for.
    pub fn new() -> LockClient {
        LockClient::default()
    }

    /// Client `token` asks `home` for `lock` of `seg` (the driver sends the acquire).
    pub fn acquire(&mut self, token: u64, home: NodeId, seg: SegmentId, lock: u32) {
        let w = LockWant {
            home,
            seg,
            lock,
            held: false,
        };
        let old = self.wants.insert(token, w);
        assert!(old.is_none(), "lock token {token} used twice");
    }

    /// The home granted `token`'s lock. `Some` if the client waited for it (it holds it now);
    /// `None` for a token that is not waiting: held already (a grant sent again), or gone (the
    /// client gave up; the driver must release it at the home).
    pub fn granted(&mut self, token: u64) -> Option<LockWant> {
        match self.wants.get_mut(&token) {
            Some(w) if !w.held => {
                w.held = true;
                Some(*w)
            }
            _ => None,
        }
    }

    /// The home `token` asked for its lock (`None`: no such client here).
    pub fn home_of(&self, token: u64) -> Option<NodeId> {
        self.wants.get(&token).map(|w| w.home)
    }

    /// Whether `token` holds (or was granted again) its lock.
    pub fn holds(&self, token: u64) -> bool {
        self.wants.get(&token).is_some_and(|w| w.held)
    }

    /// Client `token` releases its lock or stops waiting (the driver sends the release to the
    /// home it returns).
    pub fn release(&mut self, token: u64) -> Option<LockWant> {
        self.wants.remove(&token)
    }

    /// The report for `home`: what this node's clients hold there, and what they wait for.
    pub fn report(&self, home: NodeId) -> (Vec<Claim>, Vec<Claim>) {
        let (mut held, mut waiting) = (Vec::new(), Vec::new());
        for (&token, w) in self.wants.iter().filter(|(_, w)| w.home == home) {
            let c = Claim {
                seg: w.seg,
                lock: w.lock,
                token,
            };
            if w.held {
                held.push(c);
            } else {
                waiting.push(c);
            }
        }
        (held, waiting)
    }

    /// `home` is gone for good (declared dead): forget every lock there; the tokens that were
    /// waiting are returned (to be refused).
    pub fn home_lost(&mut self, home: NodeId) -> Vec<u64> {
        self.drop_where(|w| w.home == home)
    }

    /// `seg` is gone: forget its locks; the tokens that were waiting are returned.
    pub fn forget_segment(&mut self, seg: SegmentId) -> Vec<u64> {
        self.drop_where(|w| w.seg == seg)
    }

    /// Forget the locks `pick` chooses; return the tokens of those that were waiting.
    fn drop_where(&mut self, pick: impl Fn(&LockWant) -> bool) -> Vec<u64> {
        let waiting = self
            .wants
            .iter()
            .filter(|(_, w)| pick(w) && !w.held)
            .map(|(t, _)| *t)
            .collect();
        self.wants.retain(|_, w| !pick(w));
        waiting
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: SegmentId = SegmentId(1);
    const B: SegmentId = SegmentId(2);

    #[test]
    fn a_report_lists_what_is_held_and_waited_for_at_one_home() {
        let mut c = LockClient::new();
        c.acquire(1, NodeId(5), A, 0);
        c.acquire(2, NodeId(5), A, 1);
        c.acquire(3, NodeId(6), B, 0);
        assert!(c.granted(1).is_some());
        // A grant sent again, or to a token that is gone, changes nothing.
        assert!(c.granted(1).is_none());
        assert!(c.granted(9).is_none());
        let claim = |lock, token| Claim {
            seg: A,
            lock,
            token,
        };
        assert_eq!(c.report(NodeId(5)), (vec![claim(0, 1)], vec![claim(1, 2)]));
        assert!(c.release(2).is_some());
        assert_eq!(c.report(NodeId(5)), (vec![claim(0, 1)], vec![]));
    }

    #[test]
    fn a_lost_home_or_segment_returns_its_waiters_and_forgets_its_holds() {
        let mut c = LockClient::new();
        c.acquire(1, NodeId(5), A, 0);
        c.acquire(2, NodeId(5), A, 1);
        c.acquire(3, NodeId(6), B, 0);
        c.granted(1);
        assert_eq!(c.home_lost(NodeId(5)), vec![2]);
        assert!(!c.holds(1));
        assert_eq!(c.forget_segment(B), vec![3]);
        assert_eq!(c.report(NodeId(6)), (vec![], vec![]));
    }
}
