//! Membership: which peers this node declares dead, and when (`docs/cluster.md` §6).
//!
//! A sans-IO machine with the shape of [`crate::Node`]: the driver calls [`Membership::round`]
//! every engine round with the time and how long each peer has been silent (nothing heard from
//! it, by the driver's transport), and executes the [`Verdict`]s: a peer declared dead is given
//! to `Node::peer_dead`, fenced (durably) and cut off. The daemon's engine and the simulator
//! run this same code.
//!
//! The rules:
//! - a peer silent for longer than `dead_after_ms` is declared dead, once per silence, and is
//!   alive again as soon as it is heard;
//! - only a node that reaches a strict majority of the cluster (itself included) declares
//!   anyone dead: a node that is itself cut off must not void the copies the others hold. The
//!   majority must be fresh: to declare a peer that passed the limit `x` ms ago, only the
//!   peers heard within those `x` ms count as reached (heartbeats come every eighth of the
//!   limit, so a healthy majority is confirmed within one interval). Counting every peer not
//!   yet past the limit let a node cut off alone reach a "majority" of peers whose silence had
//!   not quite run out, and both halves of a 2/2 split that began just after a heal declare
//!   each other (found by the simulator running this code: seeds 200063 and 200046 with
//!   `--dead 0.003`, stale data served on both);
//! - a peer never heard from (not started yet) is never declared: it holds nothing, and there
//!   is no incarnation to fence;
//! - after a pause of this node itself (stopped, starved of CPU: two rounds further apart than
//!   a quarter of the limit) every peer looks silent, and the peers may have cut it off
//!   meanwhile, so nothing comes to read: silence is measured from the end of the pause.

use std::collections::BTreeMap;

use pagemesh_types::NodeId;

/// Membership bugs that can be switched on to prove the checkers catch them.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MembershipBugs {
    /// A node declares silent peers dead without a majority (the daemon before the quorum
    /// rule): a node cut off alone voids the copies the others hold.
    pub no_quorum: bool,
}

/// Configuration of a [`Membership`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MembershipConfig {
    /// A peer silent for longer than this is declared dead.
    pub dead_after_ms: u64,
    /// Test-only bugs; leave at the default.
    #[doc(hidden)]
    pub bugs: MembershipBugs,
}

impl MembershipConfig {
    /// A configuration with this dead-peer limit.
    pub fn new(dead_after_ms: u64) -> MembershipConfig {
        MembershipConfig {
            dead_after_ms,
            bugs: MembershipBugs::default(),
        }
    }
}

/// What the driver knows of one peer at a round.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerSilence {
    /// The peer.
    pub id: NodeId,
    /// How long nothing has been heard from it.
    pub silent_ms: u64,
    /// Whether any incarnation of it was ever heard (`Node::peer_epoch` is not 0).
    pub ever_heard: bool,
}

/// What a round decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Declare this peer dead: `Node::peer_dead`, fence its incarnation, cut its connections.
    Dead(NodeId),
    /// A peer declared dead was heard again (a new incarnation that passed the fence).
    Alive(NodeId),
    /// This node did not run for `gap_ms`: silence counts from now.
    Paused {
        /// How long since the round before.
        gap_ms: u64,
    },
    /// `silent` is past the limit, but this node reaches only `reachable` of `total` nodes:
    /// nobody is declared dead (given once per stretch without a majority).
    NoMajority {
        /// The first peer found past the limit.
        silent: NodeId,
        /// Nodes this one reaches (heard since `silent` passed the limit), itself included.
        reachable: usize,
        /// Nodes in the cluster.
        total: usize,
    },
}

/// One node's membership: its verdict on each peer.
#[derive(Clone, Debug)]
pub struct Membership {
    cfg: MembershipConfig,
    last_round_ms: u64,
    judged_from_ms: u64,
    dead: BTreeMap<NodeId, bool>,
    minority_reported: bool,
}

impl Membership {
    /// A membership that has declared nobody dead, judging silence from `now_ms`.
    pub fn new(cfg: MembershipConfig, now_ms: u64) -> Membership {
        assert!(
            cfg.dead_after_ms >= 4,
            "a dead-peer limit of {} ms",
            cfg.dead_after_ms
        );
        Membership {
            cfg,
            last_round_ms: now_ms,
            judged_from_ms: now_ms,
            dead: BTreeMap::new(),
            minority_reported: false,
        }
    }

    /// The dead-peer limit.
    pub fn dead_after_ms(&self) -> u64 {
        self.cfg.dead_after_ms
    }

    /// How long a lease on a home's pages runs from the moment the home provably heard this
    /// node: half the dead-peer limit, so that it lapses before the home may declare the node
    /// dead and give its pages to others.
    pub fn lease_ms(&self) -> u64 {
        crate::lease::lease_ms(self.cfg.dead_after_ms)
    }

    /// Whether `peer` is declared dead (and not heard since).
    pub fn is_dead(&self, peer: NodeId) -> bool {
        self.dead.get(&peer) == Some(&true)
    }

    /// One round at `now_ms` (milliseconds on this node's clock, never going back) with what
    /// the driver knows of every peer; the verdicts are appended to `out`.
    pub fn round(&mut self, now_ms: u64, peers: &[PeerSilence], out: &mut Vec<Verdict>) {
        let last = std::mem::replace(&mut self.last_round_ms, now_ms);
        assert!(
            now_ms >= last,
            "membership's clock went back: {now_ms} after {last}"
        );
        let gap_ms = now_ms - last;
        if gap_ms > self.cfg.dead_after_ms / 4 {
            self.judged_from_ms = now_ms;
            out.push(Verdict::Paused { gap_ms });
            return;
        }
        let limit = self.cfg.dead_after_ms;
        let judged = now_ms - self.judged_from_ms;
        let silent = |p: &PeerSilence| p.silent_ms.min(judged);
        let total = peers.len() + 1;
        for p in peers {
            let dead = self.dead.entry(p.id).or_insert(false);
            let s = silent(p);
            if s > limit && !*dead {
                if !p.ever_heard {
                    continue;
                }
                // Reached: heard since `p` passed the limit (this node counts itself).
                let passed_ms = s - limit;
                let reachable = 1 + peers
                    .iter()
                    .filter(|q| q.id != p.id && silent(q) < passed_ms)
                    .count();
                if reachable * 2 <= total && !self.cfg.bugs.no_quorum {
                    if !self.minority_reported {
                        self.minority_reported = true;
                        out.push(Verdict::NoMajority {
                            silent: p.id,
                            reachable,
                            total,
                        });
                    }
                    continue;
                }
                self.minority_reported = false;
                *dead = true;
                out.push(Verdict::Dead(p.id));
            } else if s <= limit && *dead {
                *dead = false;
                out.push(Verdict::Alive(p.id));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: u32, silent_ms: u64) -> PeerSilence {
        PeerSilence {
            id: NodeId(id),
            silent_ms,
            ever_heard: true,
        }
    }

    fn round(m: &mut Membership, now: u64, peers: &[PeerSilence]) -> Vec<Verdict> {
        let mut out = Vec::new();
        m.round(now, peers, &mut out);
        out
    }

    #[test]
    fn a_silent_peer_is_declared_dead_once_and_alive_when_heard() {
        let mut m = Membership::new(MembershipConfig::new(1000), 0);
        let mut now = 0;
        for _ in 0..40 {
            now += 50;
            let v = round(&mut m, now, &[peer(1, 0), peer(2, 0)]);
            assert!(v.is_empty(), "{v:?}");
        }
        // Peer 2 goes silent from `now` on.
        let from = now;
        let mut declared = Vec::new();
        for _ in 0..40 {
            now += 50;
            declared.extend(round(&mut m, now, &[peer(1, 0), peer(2, now - from)]));
        }
        assert_eq!(declared, vec![Verdict::Dead(NodeId(2))]);
        assert!(m.is_dead(NodeId(2)));
        assert_eq!(
            round(&mut m, now + 50, &[peer(1, 0), peer(2, 0)]),
            vec![Verdict::Alive(NodeId(2))]
        );
    }

    #[test]
    fn no_one_is_declared_without_a_majority() {
        let mut m = Membership::new(MembershipConfig::new(1000), 0);
        let mut out = Vec::new();
        for now in (50..5000).step_by(50) {
            // Both peers silent: this node reaches 1 of 3.
            m.round(now, &[peer(1, now), peer(2, now)], &mut out);
        }
        assert_eq!(
            out,
            vec![Verdict::NoMajority {
                silent: NodeId(1),
                reachable: 1,
                total: 3
            }]
        );
        // The injected bug: the same silence declares both.
        let mut cfg = MembershipConfig::new(1000);
        cfg.bugs.no_quorum = true;
        let mut m = Membership::new(cfg, 0);
        let mut out = Vec::new();
        for now in (50..5000).step_by(50) {
            m.round(now, &[peer(1, now), peer(2, now)], &mut out);
        }
        assert_eq!(
            out,
            vec![Verdict::Dead(NodeId(1)), Verdict::Dead(NodeId(2))]
        );
    }

    #[test]
    fn a_node_cut_off_alone_declares_nobody_while_its_peers_silence_runs_out() {
        // Cut off at 0 from three peers last heard at slightly different times: when the first
        // passes the limit, the other two are not past it yet, but not reached either.
        let mut m = Membership::new(MembershipConfig::new(1000), 0);
        let mut out = Vec::new();
        for now in (50u64..5000).step_by(50) {
            let s = |late: u64| now.saturating_sub(late);
            m.round(
                now,
                &[peer(1, s(0)), peer(2, s(60)), peer(3, s(90))],
                &mut out,
            );
        }
        assert!(
            matches!(out.as_slice(), [Verdict::NoMajority { silent, reachable: 1, total: 4 }] if *silent == NodeId(1)),
            "{out:?}"
        );
    }

    #[test]
    fn a_majority_that_is_not_heard_since_the_peer_passed_the_limit_does_not_count() {
        // Peer 3 has been silent for long (an earlier partition); the cluster splits 2/2 just
        // as its silence passes the limit: peer 2 (now on the other side) was heard 300 ms
        // ago, before peer 3 passed the limit, and does not count.
        let mut m = Membership::new(MembershipConfig::new(1000), 0);
        // Peer 3 was last heard at 900.
        for now in (50u64..=1900).step_by(50) {
            let p3 = peer(3, now.saturating_sub(900));
            assert!(round(&mut m, now, &[peer(1, 0), peer(2, 0), p3]).is_empty());
        }
        let v = round(&mut m, 1950, &[peer(1, 0), peer(2, 300), peer(3, 1050)]);
        assert_eq!(
            v,
            vec![Verdict::NoMajority {
                silent: NodeId(3),
                reachable: 2,
                total: 4
            }]
        );
        // Once peer 2 is heard again after that, the majority is fresh.
        let v = round(&mut m, 2000, &[peer(1, 0), peer(2, 5), peer(3, 1100)]);
        assert_eq!(v, vec![Verdict::Dead(NodeId(3))]);
    }

    #[test]
    fn a_peer_never_heard_is_never_declared() {
        let mut m = Membership::new(MembershipConfig::new(1000), 0);
        let mut out = Vec::new();
        let never = PeerSilence {
            id: NodeId(3),
            silent_ms: u64::MAX,
            ever_heard: false,
        };
        for now in (50..5000).step_by(50) {
            m.round(now, &[peer(1, 0), peer(2, 0), never], &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn silence_counts_from_the_end_of_this_nodes_own_pause() {
        let mut m = Membership::new(MembershipConfig::new(1000), 0);
        assert!(round(&mut m, 50, &[peer(1, 0), peer(2, 0)]).is_empty());
        // Stopped for 3 s: every peer looks silent for 3 s.
        assert_eq!(
            round(&mut m, 3050, &[peer(1, 3000), peer(2, 3000)]),
            vec![Verdict::Paused { gap_ms: 3000 }]
        );
        // Rounds go on, peer 2 answers, peer 1 does not: it is judged from the pause's end.
        let mut out = Vec::new();
        let mut now = 3050;
        while now < 3050 + 1000 {
            now += 50;
            m.round(now, &[peer(1, now - 50), peer(2, 0)], &mut out);
        }
        assert!(
            out.is_empty(),
            "declared before the limit after the pause: {out:?}"
        );
        now += 50;
        m.round(now, &[peer(1, now - 50), peer(2, 0)], &mut out);
        assert_eq!(out, vec![Verdict::Dead(NodeId(1))]);
    }
}
