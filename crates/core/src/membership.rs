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
//!   meanwhile, so nothing comes to read: silence is measured from the end of the pause;
//! - a node that a majority has not provably heard (by the echoes of its heartbeats) within
//!   the lease is *cut off*: any of them may be about to declare it dead, or have done so.
//!   It declares nobody until a majority hears it again, and then measures silence from that
//!   moment, as after a pause (a node that has just started is cut off until a majority
//!   first hears it). Hearing a peer proves nothing about whether that peer still
//!   accepts this node: a node cut off past the limit and fenced by the others, hearing one
//!   of them again before it learned of its fence, counted it towards a fresh majority and
//!   declared the other (silent only because of the cut) dead, fencing a healthy node (found
//!   by the history checker on the real cluster, 16 times in 184 long partitions, and by the
//!   simulator once fenced nodes learn of their fence when they reconnect rather than at the
//!   heal). Within the limit after it rejoins, a fenced node is told (it redials within
//!   `lease::reconnect_max_ms`) and stops.

use std::collections::BTreeMap;

use pagemesh_types::NodeId;

/// Membership bugs that can be switched on to prove the checkers catch them.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MembershipBugs {
    /// A node declares silent peers dead without a majority (the daemon before the quorum
    /// rule, which had no cut-off rule either): a node cut off alone voids the copies the
    /// others hold.
    pub no_quorum: bool,
    /// A node judges its peers while a majority does not hear it (the daemon before the
    /// cut-off rule): after a long partition it counts a peer that has fenced it towards a
    /// majority and fences a healthy node.
    pub judges_while_cut_off: bool,
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
    /// How long ago the peer provably heard this node: this node's clock now minus the latest
    /// of its own send times the peer echoed (`lease::LeaseLink::echoed_ms`); `u64::MAX` when
    /// it echoed none of this incarnation's.
    pub echo_age_ms: u64,
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
    /// A majority no longer provably hears this node (fewer than half its peers echoed it
    /// within the lease): it may be declared dead; it declares nobody until it is heard again.
    CutOff {
        /// Nodes that heard this node within the lease, itself included.
        hearing: usize,
        /// Nodes in the cluster.
        total: usize,
    },
    /// A majority hears this node again after it was cut off for `after_ms`: silence counts
    /// from now (a peer that fenced it meanwhile tells it so before it could judge that peer).
    Rejoined {
        /// How long it was cut off.
        after_ms: u64,
    },
}

/// Whether a majority hears this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Standing {
    /// Since it started, until a majority first heard it (silence counts from then).
    Joining,
    /// A majority heard it within the lease.
    Member,
    /// A majority did not, since this time.
    CutOff { since_ms: u64 },
}

/// One node's membership: its verdict on each peer.
#[derive(Clone, Debug)]
pub struct Membership {
    cfg: MembershipConfig,
    last_round_ms: u64,
    judged_from_ms: u64,
    dead: BTreeMap<NodeId, bool>,
    minority_reported: bool,
    standing: Standing,
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
            standing: Standing::Joining,
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
        let total = peers.len() + 1;
        let bugs = self.cfg.bugs;
        let judging = self.stand(now_ms, peers, out) || bugs.judges_while_cut_off || bugs.no_quorum;
        let judged = now_ms - self.judged_from_ms;
        let silent = |p: &PeerSilence| p.silent_ms.min(judged);
        for p in peers {
            let dead = self.dead.entry(p.id).or_insert(false);
            let s = silent(p);
            if s > limit && !*dead {
                if !p.ever_heard || !judging {
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
            } else if p.silent_ms <= limit && *dead {
                *dead = false;
                out.push(Verdict::Alive(p.id));
            }
        }
    }
}

impl Membership {
    /// Whether a majority hears this node (the peers that echoed it within the lease, and
    /// itself): its standing moves, with a verdict when it is cut off or rejoins. Whether it may
    /// judge its peers this round.
    fn stand(&mut self, now_ms: u64, peers: &[PeerSilence], out: &mut Vec<Verdict>) -> bool {
        let lease = self.lease_ms();
        let total = peers.len() + 1;
        let hearing = 1 + peers.iter().filter(|q| q.echo_age_ms < lease).count();
        let majority = hearing * 2 > total;
        match (self.standing, majority) {
            (Standing::Member, true) => true,
            (Standing::Joining, false) | (Standing::CutOff { .. }, false) => false,
            (Standing::Joining, true) => {
                // Silence before a majority heard this incarnation may be its own (it started
                // cut off, or was fenced before it ever joined): it counts from now.
                self.standing = Standing::Member;
                self.judged_from_ms = now_ms;
                true
            }
            (Standing::Member, false) => {
                self.standing = Standing::CutOff { since_ms: now_ms };
                out.push(Verdict::CutOff { hearing, total });
                false
            }
            (Standing::CutOff { since_ms }, true) => {
                self.standing = Standing::Member;
                self.judged_from_ms = now_ms;
                out.push(Verdict::Rejoined {
                    after_ms: now_ms - since_ms,
                });
                true
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
            echo_age_ms: 0,
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
            echo_age_ms: u64::MAX,
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

    /// Silence and echo age of a peer last heard at `heard` that last echoed this node's send
    /// time `echoed`, at `now`.
    fn seen(id: u32, now: u64, heard: u64, echoed: u64) -> PeerSilence {
        PeerSilence {
            echo_age_ms: now - echoed,
            ..peer(id, now - heard)
        }
    }

    /// A node (of 3) heard by both peers until 1000, then cut off from both until 2600: its
    /// membership and verdicts so far (none before the cut).
    fn cut_off_1600(cfg: MembershipConfig) -> (Membership, Vec<Verdict>) {
        let mut m = Membership::new(cfg, 0);
        let mut out = Vec::new();
        for now in (50u64..=1000).step_by(50) {
            m.round(
                now,
                &[seen(1, now, now, now), seen(2, now, now, now)],
                &mut out,
            );
        }
        assert!(out.is_empty(), "{out:?}");
        for now in (1050u64..=2600).step_by(50) {
            m.round(
                now,
                &[seen(1, now, 1000, 1000), seen(2, now, 1000, 1000)],
                &mut out,
            );
        }
        (m, out)
    }

    /// This node (of 3) is cut off at 1000 for 1600 ms; peers 1 and 2 declare it dead and fence
    /// it. At the heal, peer 1 dials it again (it is heard) but, having fenced it, never hears
    /// it (no echo); peer 2 stays silent a while longer.
    fn cut_off_then_healed(cfg: MembershipConfig) -> Vec<Verdict> {
        let (mut m, mut out) = cut_off_1600(cfg);
        for now in (2650u64..=3000).step_by(50) {
            m.round(
                now,
                &[seen(1, now, now, 1000), seen(2, now, 1000, 1000)],
                &mut out,
            );
        }
        out
    }

    #[test]
    fn a_node_cut_off_past_the_limit_judges_nobody_when_it_hears_a_peer_that_fenced_it() {
        let out = cut_off_then_healed(MembershipConfig::new(1000));
        assert_eq!(
            out,
            vec![Verdict::CutOff {
                hearing: 1,
                total: 3
            }]
        );
        // The injected bug (the daemon before the rule): hearing peer 1 again makes a fresh
        // "majority", and healthy peer 2 is declared dead.
        let mut cfg = MembershipConfig::new(1000);
        cfg.bugs.judges_while_cut_off = true;
        let out = cut_off_then_healed(cfg);
        assert_eq!(out.last(), Some(&Verdict::Dead(NodeId(2))), "{out:?}");
    }

    #[test]
    fn a_node_that_rejoins_a_majority_judges_silence_from_then_on() {
        let (mut m, mut out) = cut_off_1600(MembershipConfig::new(1000));
        // Peer 2 never fenced it and hears it again from 2650; peer 1 stays silent (it fenced
        // it, or is dead): not declared within the limit after the rejoin.
        for now in (2650u64..=3650).step_by(50) {
            m.round(
                now,
                &[seen(1, now, 1000, 1000), seen(2, now, now, now)],
                &mut out,
            );
        }
        assert_eq!(
            out,
            vec![
                Verdict::CutOff {
                    hearing: 1,
                    total: 3
                },
                Verdict::Rejoined { after_ms: 1150 },
            ]
        );
        out.clear();
        m.round(
            3700,
            &[seen(1, 3700, 1000, 1000), seen(2, 3700, 3700, 3700)],
            &mut out,
        );
        assert_eq!(out, vec![Verdict::Dead(NodeId(1))]);
    }

    #[test]
    fn a_node_judges_nobody_before_a_majority_first_hears_it() {
        let mut m = Membership::new(MembershipConfig::new(1000), 0);
        let mut out = Vec::new();
        for now in (50u64..=3000).step_by(50) {
            // Peer 1 was heard once (at 10) and went; peer 2 is heard but never echoes.
            let never = |p: PeerSilence| PeerSilence {
                echo_age_ms: u64::MAX,
                ..p
            };
            m.round(
                now,
                &[never(peer(1, now - 10)), never(peer(2, 0))],
                &mut out,
            );
        }
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn a_peer_declared_dead_stays_dead_through_a_pause_and_a_rejoin() {
        // Judging from the end of a pause (or a rejoin) must not make a dead peer look heard:
        // declared again, its fence would be raised past its next incarnation's epoch.
        let mut m = Membership::new(MembershipConfig::new(1000), 0);
        let mut out = Vec::new();
        for now in (50u64..=3000).step_by(50) {
            m.round(
                now,
                &[peer(1, 0), peer(2, now.saturating_sub(500))],
                &mut out,
            );
        }
        assert_eq!(out, vec![Verdict::Dead(NodeId(2))]);
        out.clear();
        m.round(6000, &[peer(1, 3000), peer(2, 5500)], &mut out);
        for now in (6050u64..=9000).step_by(50) {
            m.round(now, &[peer(1, 0), peer(2, now - 500)], &mut out);
        }
        assert_eq!(out, vec![Verdict::Paused { gap_ms: 3000 }]);
        assert!(m.is_dead(NodeId(2)));
    }
}
