//! Leases: whether this node may use its copies of a home's pages (`docs/cluster.md` §7).
//!
//! Every node sends each peer a heartbeat every [`heartbeat_ms`], carrying its send time (on
//! its own clock) and echoing the latest send time it heard from that peer. A node that
//! receives the echo of one of its own send times `s` knows the peer heard it at `s` or later:
//! it holds the lease on the peer's pages until `s + lease_ms`, with `lease_ms` half the
//! dead-peer limit ([`crate::Membership::lease_ms`]). A home declares a node dead only after
//! the whole limit without hearing it, so the lease lapses first, by the home's clock as much
//! as by the node's (both run at the same rate; neither needs to agree with the other).
//!
//! [`LeaseLink`] is the arithmetic of one link, sans IO: the driver (the daemon's transport,
//! the simulator) feeds it heartbeats and the time, and asks it what to echo and whether the
//! lease holds. The daemon and the simulator run this same code.

/// The heartbeat interval for a dead-peer limit: an eighth of it, within 20..=500 ms.
pub fn heartbeat_ms(dead_after_ms: u64) -> u64 {
    (dead_after_ms / 8).clamp(20, 500)
}

/// The longest wait between two attempts to reconnect to a peer, for a dead-peer limit: a
/// quarter of it, within 20..=1000 ms. A node fenced while it was cut off learns it when it
/// next dials a node that fenced it (or is dialled by one): within this bound plus one connect
/// of the link coming back, which is well within the limit during which membership judges no
/// peer after a node rejoins (`crate::membership`).
pub fn reconnect_max_ms(dead_after_ms: u64) -> u64 {
    (dead_after_ms / 4).clamp(20, 1000)
}

/// How long a lease runs from the moment the home provably heard this node, for a dead-peer
/// limit: half of it, so that it lapses before the home may declare the node dead.
pub fn lease_ms(dead_after_ms: u64) -> u64 {
    dead_after_ms / 2
}

/// Lease bugs that can be switched on to prove the checkers catch them.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseBugs {
    /// The first rules of the daemon's transport (commit 10c3e7a): an echo ahead of this
    /// node's clock (a send time of an earlier incarnation of it) is clamped to the clock
    /// instead of ignored, and what was heard from a peer is kept across its reconnections. A
    /// node that restarted then takes every heartbeat it receives as "heard just now": its
    /// lease runs from what it hears, not from what its home heard.
    pub clamp_echoes: bool,
}

/// Whether a heartbeat must be answered at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Answer {
    /// The peer has no echo of this node yet (it just connected): answer now, so that its
    /// lease does not wait a whole interval.
    Now,
    /// The periodic heartbeat carries the echo.
    Later,
}

/// The lease arithmetic of one link to a peer, on this node's clock (milliseconds, never
/// going back, starting above 0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LeaseLink {
    /// The latest send time heard from the peer's current connection (echoed back to it).
    heard_sent_ms: u64,
    /// The latest of this node's own send times the peer echoed (0: none yet).
    echoed_ms: u64,
    bugs: LeaseBugs,
}

impl LeaseLink {
    /// A link with no lease yet.
    pub fn new(bugs: LeaseBugs) -> LeaseLink {
        LeaseLink {
            bugs,
            ..LeaseLink::default()
        }
    }

    /// The peer (re)connected: it may be a new incarnation, whose clock starts again, so only
    /// what it sends from now on is echoed.
    pub fn reconnected(&mut self) {
        if !self.bugs.clamp_echoes {
            self.heard_sent_ms = 0;
        }
    }

    /// A heartbeat from the peer, sent at `sent_ms` on its clock, echoing `echo_ms` of this
    /// node's (0: it has none), received at `now_ms`.
    pub fn on_heartbeat(&mut self, now_ms: u64, sent_ms: u64, echo_ms: u64) -> Answer {
        self.heard_sent_ms = self.heard_sent_ms.max(sent_ms);
        // An echo from this node's future was a send time of an earlier incarnation of this
        // node: it proves nothing about this one.
        let taken = if echo_ms <= now_ms {
            Some(echo_ms)
        } else if self.bugs.clamp_echoes {
            Some(now_ms)
        } else {
            None
        };
        if let Some(e) = taken {
            self.echoed_ms = self.echoed_ms.max(e);
        }
        debug_assert!(
            self.echoed_ms <= now_ms,
            "an echo from the future was taken"
        );
        if echo_ms == 0 {
            Answer::Now
        } else {
            Answer::Later
        }
    }

    /// What this node's next heartbeat to the peer echoes.
    pub fn echo(&self) -> u64 {
        self.heard_sent_ms
    }

    /// The latest of this node's send times the peer echoed, if any.
    pub fn echoed_ms(&self) -> Option<u64> {
        (self.echoed_ms != 0).then_some(self.echoed_ms)
    }

    /// Whether the lease holds at `now_ms`: the peer heard this node less than `lease_ms` ago
    /// (by its echo).
    pub fn holds(&self, now_ms: u64, lease_ms: u64) -> bool {
        self.echoed_ms != 0 && now_ms < self.echoed_ms + lease_ms
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_runs_from_the_echo_and_lapses_after_lease_ms() {
        let mut l = LeaseLink::new(LeaseBugs::default());
        assert!(!l.holds(10, 800), "no echo yet");
        // The peer never heard us: it asks for an answer now.
        assert_eq!(l.on_heartbeat(10, 5, 0), Answer::Now);
        assert_eq!(l.echo(), 5);
        // It echoes our send time 20 at our time 30: the lease runs until 820.
        assert_eq!(l.on_heartbeat(30, 25, 20), Answer::Later);
        assert!(l.holds(819, 800));
        assert!(!l.holds(820, 800));
        // A late, older echo changes nothing.
        l.on_heartbeat(40, 26, 10);
        assert_eq!(l.echoed_ms(), Some(20));
    }

    #[test]
    fn an_echo_from_the_future_is_ignored_and_the_bug_takes_it() {
        // This node restarted (its clock is at 100); the peer echoes 5000 of its last life.
        let mut l = LeaseLink::new(LeaseBugs::default());
        l.on_heartbeat(100, 7000, 5000);
        assert!(
            !l.holds(101, 800),
            "an earlier incarnation's send time gave a lease"
        );
        let mut bug = LeaseLink::new(LeaseBugs { clamp_echoes: true });
        bug.on_heartbeat(100, 7000, 5000);
        assert!(bug.holds(101, 800), "the injected bug must take it");
    }

    #[test]
    fn a_reconnected_peer_is_echoed_only_what_it_sends_from_then() {
        let mut l = LeaseLink::new(LeaseBugs::default());
        l.on_heartbeat(10, 9000, 0);
        l.reconnected();
        assert_eq!(l.echo(), 0);
        l.on_heartbeat(20, 3, 0);
        assert_eq!(l.echo(), 3);
    }

    #[test]
    fn the_heartbeat_interval_is_an_eighth_of_the_limit_within_bounds() {
        assert_eq!(heartbeat_ms(1600), 200);
        assert_eq!(heartbeat_ms(100), 20);
        assert_eq!(heartbeat_ms(60_000), 500);
    }
}
