//! Leases and membership as the daemon runs them, driven here through the core's own machines:
//! `pagemesh_core::lease::LeaseLink` (one per link: what to echo, whether the lease holds) and
//! `pagemesh_core::Membership` (one per incarnation: which peers to declare dead). Nothing of
//! their rules is modelled in the simulator; it gives them the network and the clocks.
//!
//! Every node sends each peer a heartbeat every `pagemesh_core::lease::heartbeat_ms` over the
//! same simulated network as the protocol (delayed, reordered, dropped, duplicated, cut by
//! partitions), and answers at once when the core's link says so. A heartbeat carries its send
//! time and the echo the sender's link gives. Heartbeats run whenever membership or leases do
//! (membership measures silence from the last message heard, as the daemon does, so an idle
//! peer must still be heard).
//!
//! With `SimConfig::leases`, a process completes a read or write (a local hit on a copy
//! included) only while its node holds the lease of the page's home (a home always holds its
//! own); otherwise the access waits — before it enters the core, like the daemon's parked
//! faults, and again when the core completes it, since a copy may only be used under the lease
//! — and is tried again once the lease returns, or fails (SIGBUS) after the fault timeout.
//!
//! Clocks (`SimConfig::lease_clocks`): one simulated clock, or the daemon's (one per process,
//! from its start); `clamped` is the daemon's clocks with the core's injected lease bug (its
//! first rules for echoes). A link is new when a newer incarnation of the peer is first heard
//! (the daemon: when it connects); what an older incarnation sends after that is dropped (its
//! connection is closed). Not modelled: the quarantine's granularity (the engine checks leases
//! every 25 ms; here every access checks the lease at the moment it completes), and clocks
//! that drift.

use crate::config::LeaseClocks;
use crate::world::{fail, Ev, Heartbeat, Link, Op, Violation, World, FAULT_TIMEOUT_MS};
use pagemesh_core::lease::{self, Answer, LeaseBugs, LeaseLink};
use pagemesh_core::{Membership, MembershipConfig, PageKey, PeerSilence, Verdict};
use pagemesh_types::NodeId;

impl World {
    /// How long a lease runs from the send time a home echoed.
    pub(crate) fn lease_ms(&self) -> u64 {
        self.cfg.dead_after_ms / 2
    }

    /// Node `n`'s clock, in which its send times, the echoes it takes, its lease and its
    /// membership rounds are counted: the simulated clock, or (daemon clocks) the time since
    /// its incarnation started.
    pub(crate) fn clock(&self, n: usize) -> u64 {
        match self.cfg.lease_clocks {
            LeaseClocks::Ideal => self.now,
            LeaseClocks::Daemon | LeaseClocks::Clamped => self.now - self.nodes[n].started_ms,
        }
    }

    /// A fresh link to a peer, at node start (heard "now", as the daemon's transport starts).
    pub(crate) fn new_link(&self) -> Link {
        let bugs = LeaseBugs {
            clamp_echoes: self.cfg.lease_clocks == LeaseClocks::Clamped,
        };
        Link {
            lease: LeaseLink::new(bugs),
            heard_epoch: 0,
            last_hb: None,
            last_heard: self.now,
        }
    }

    /// A fresh membership for node `n`'s new incarnation.
    pub(crate) fn new_membership(&self, n: usize) -> Membership {
        let mut cfg = MembershipConfig::new(self.cfg.dead_after_ms);
        cfg.bugs.no_quorum = self.cfg.minority_declares;
        cfg.bugs.judges_while_cut_off = self.cfg.cut_off_judges;
        Membership::new(cfg, self.clock(n))
    }

    /// Whether node `n` holds the lease on the pages homed at `h`.
    pub(crate) fn holds_lease_of(&self, n: usize, h: usize) -> bool {
        if n == h {
            return true;
        }
        let lease = self.lease_ms();
        let clock = self.clock(n);
        self.nodes[n]
            .links
            .get(&h)
            .is_some_and(|l| l.lease.holds(clock, lease))
    }

    /// Whether node `n` may use its copy of `page` (always, without leases).
    pub(crate) fn holds_lease(&self, n: usize, page: PageKey) -> bool {
        !self.cfg.leases || self.home_of(page).is_none_or(|h| self.holds_lease_of(n, h))
    }

    /// Whether a process of node `n` may complete an access to `page` now (or must wait).
    pub(crate) fn lease_gate(&self, n: usize, page: PageKey) -> bool {
        self.cfg.lease_bypass || self.holds_lease(n, page)
    }

    /// Every engine round: heartbeats that are due, and the accesses waiting for a lease.
    pub(crate) fn leases_tick(&mut self) -> Result<(), Violation> {
        let hb = lease::heartbeat_ms(self.cfg.dead_after_ms);
        for a in 0..self.nodes.len() {
            if self.nodes[a].core.is_none() {
                continue;
            }
            for b in 0..self.nodes.len() {
                let due = self.nodes[a]
                    .links
                    .get(&b)
                    .is_some_and(|l| l.last_hb.is_none_or(|t| self.now >= t + hb));
                if due {
                    self.send_heartbeat(a, b);
                }
            }
        }
        self.resume_parked()
    }

    fn send_heartbeat(&mut self, a: usize, b: usize) {
        let epoch = self.nodes[a].epoch;
        let sent_ms = self.clock(a).max(1);
        let Some(link) = self.nodes[a].links.get_mut(&b) else {
            return;
        };
        link.last_hb = Some(self.now);
        let hb = Heartbeat {
            from: a,
            from_epoch: epoch,
            to: b,
            sent_ms,
            echo_ms: link.lease.echo(),
        };
        self.stats.heartbeats += 1;
        self.stats.sent += 1;
        match self.fate() {
            None => self.log(|| format!("DROP heartbeat node{a}->node{b}")),
            Some((d, dup)) => {
                if let Some(d2) = dup {
                    self.schedule(d2, Ev::Heartbeat(hb));
                }
                self.schedule(d, Ev::Heartbeat(hb));
            }
        }
    }

    /// Node `to` heard something from incarnation `epoch` of node `from` (any message):
    /// membership's silence starts again. Nothing counts from an incarnation `to` fenced (the
    /// daemon refuses and closes its connections).
    pub(crate) fn heard_from(&mut self, to: usize, from: usize, epoch: u64) -> bool {
        let fenced = self.refused(to, from, epoch)
            || self.nodes[to]
                .core
                .as_ref()
                .is_some_and(|c| c.peer_epoch(pagemesh_types::NodeId(from as u32)).0 > epoch);
        if fenced {
            return false;
        }
        let now = self.now;
        if let Some(l) = self.nodes[to].links.get_mut(&from) {
            l.last_heard = now;
        }
        true
    }

    pub(crate) fn deliver_heartbeat(&mut self, hb: Heartbeat) -> Result<(), Violation> {
        let Heartbeat {
            from,
            from_epoch,
            to,
            sent_ms,
            echo_ms,
        } = hb;
        if self.nodes[to].core.is_none() || self.cut(from, to) {
            return Ok(());
        }
        if !self.heard_from(to, from, from_epoch) {
            return Ok(());
        }
        let clock = self.clock(to);
        let lease = self.lease_ms();
        let Some(l) = self.nodes[to].links.get_mut(&from) else {
            return Ok(());
        };
        if from_epoch < l.heard_epoch {
            // Sent on a connection of an older incarnation, closed since.
            return Ok(());
        }
        if from_epoch > l.heard_epoch {
            l.heard_epoch = from_epoch;
            l.lease.reconnected();
        }
        let held = l.lease.holds(clock, lease);
        let answer = l.lease.on_heartbeat(clock, sent_ms, echo_ms);
        let regained = !held && l.lease.holds(clock, lease);
        if regained {
            let until = l.lease.echoed_ms().map_or(0, |e| e + lease);
            self.log(|| {
                format!(
                    "node{to} regains the lease of node{from}: its heartbeat (sent at {sent_ms} by its clock) echoed {echo_ms} (now {clock} by this node's clock); lease until {until}"
                )
            });
        }
        if answer == Answer::Now {
            self.send_heartbeat(to, from);
        }
        Ok(())
    }

    /// Every node's membership round: the core's verdicts are executed (a peer declared dead
    /// is declared in the world: `World::declare`).
    pub(crate) fn membership(&mut self) -> Result<(), Violation> {
        for a in 0..self.nodes.len() {
            let Some(core) = self.nodes[a].core.as_ref() else {
                continue;
            };
            let clock = self.clock(a);
            let peers: Vec<PeerSilence> = self.nodes[a]
                .links
                .iter()
                .map(|(&b, l)| PeerSilence {
                    id: NodeId(b as u32),
                    silent_ms: self.now - l.last_heard,
                    ever_heard: core.peer_epoch(NodeId(b as u32)).0 != 0,
                    echo_age_ms: l.lease.echoed_ms().map_or(u64::MAX, |e| clock - e),
                })
                .collect();
            let mut verdicts = Vec::new();
            if let Some(m) = self.nodes[a].membership.as_mut() {
                m.round(clock, &peers, &mut verdicts);
            }
            for v in verdicts {
                match v {
                    Verdict::Dead(b) => self.declare(a, b.0 as usize)?,
                    Verdict::Alive(b) => self.log(|| format!("node{a}: {b} heard again: alive")),
                    Verdict::Paused { gap_ms } => {
                        self.log(|| format!("node{a}: paused {gap_ms} ms: silence counts from now"))
                    }
                    Verdict::NoMajority { silent, .. } => self.log(|| {
                        format!("node{a}: {silent} silent, but no majority: nobody declared")
                    }),
                    Verdict::CutOff { hearing, total } => self.log(|| {
                        format!("node{a}: cut off (heard by {hearing} of {total}): judges nobody")
                    }),
                    Verdict::Rejoined { after_ms } => self.log(|| {
                        format!("node{a}: heard by a majority again after {after_ms} ms: silence counts from now")
                    }),
                }
            }
        }
        Ok(())
    }

    /// An access of node `i` cannot complete now: its node does not hold the lease of the
    /// page's home. It waits, and is tried again when the lease returns.
    pub(crate) fn park(&mut self, i: usize, op: Op) -> Result<(), Violation> {
        if self.now >= op.started_ms + FAULT_TIMEOUT_MS {
            return Err(self.lease_timeout(i, op));
        }
        self.stats.lease_waits += 1;
        let fenced = self.nodes[i].fenced;
        self.log(|| {
            format!(
                "node{i} {:?} {} waits: no lease of its home{}",
                op.kind,
                op.page,
                if fenced { " (node fenced)" } else { "" }
            )
        });
        self.nodes[i].parked.push(op);
        Ok(())
    }

    fn lease_timeout(&self, i: usize, op: Op) -> Violation {
        // Nothing in a simulated run keeps a home unreachable this long: like a fault the core
        // times out, a lease wait that ends in SIGBUS is a liveness failure here.
        fail(
            self,
            Some(op.page),
            format!(
                "node{i}: {:?} {} waited {} ms for the lease of its home (SIGBUS)",
                op.kind,
                op.page,
                self.now - op.started_ms
            ),
        )
    }

    /// Accesses whose lease returned go (back) into the core; the others wait on, up to the
    /// fault timeout.
    fn resume_parked(&mut self) -> Result<(), Violation> {
        for i in 0..self.nodes.len() {
            if self.nodes[i].parked.is_empty() || self.nodes[i].core.is_none() {
                continue;
            }
            let parked = std::mem::take(&mut self.nodes[i].parked);
            for op in parked {
                if self.holds_lease(i, op.page) {
                    self.log(|| format!("node{i} {:?} {}: lease back, goes on", op.kind, op.page));
                    self.issue(i, op)?;
                } else if self.now >= op.started_ms + FAULT_TIMEOUT_MS {
                    return Err(self.lease_timeout(i, op));
                } else {
                    self.nodes[i].parked.push(op);
                }
            }
        }
        Ok(())
    }
}
