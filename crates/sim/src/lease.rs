//! Leases, as the daemon keeps them outside the core (`docs/cluster.md` §7, "Leases").
//!
//! Every node sends each peer a heartbeat every `dead_after_ms / 8` (20..=500 ms, as the
//! daemon's transport), over the same simulated network as the protocol (delayed, reordered,
//! dropped, duplicated, cut by partitions), and answers a heartbeat at once when its own last
//! one to that peer is older than a quarter interval. A heartbeat carries its send time and
//! echoes the latest send time its sender heard from the receiver. A node that receives the
//! echo of one of its own send times `s` knows the peer heard it at `s` or later; it holds the
//! lease on the peer's pages until `s + dead_after_ms / 2`. A home declares a node dead only
//! after `dead_after_ms` without hearing anything from it, so the lease lapses first.
//!
//! A process completes a read or write (a local hit on a copy included) only while its node
//! holds the lease of the page's home (a home always holds its own); otherwise the access
//! waits — before it enters the core, like the daemon's parked faults, and again when the core
//! completes it, since a copy may only be used under the lease — and is tried again once the
//! lease returns, or fails (SIGBUS) after the fault timeout.
//!
//! The arithmetic keeps one simulated clock by default (a node takes only echoes of its current
//! incarnation's send times); `SimConfig::lease_clocks` switches to the daemon's clocks (one per
//! process, from its start), with its current rules or with those it had first. Not modelled:
//! the quarantine's granularity (the engine checks leases every 25 ms; here every access
//! checks the lease at the moment it completes), and clocks that drift.

use crate::config::LeaseClocks;
use crate::world::{fail, Ev, Heartbeat, Op, Violation, World, FAULT_TIMEOUT_MS};
use pagemesh_core::PageKey;

impl World {
    /// How long a lease runs from the send time a home echoed.
    pub(crate) fn lease_ms(&self) -> u64 {
        self.cfg.dead_after_ms / 2
    }

    /// Node `n`'s clock, in which its send times, the echoes it takes and its lease are
    /// counted: the simulated clock, or (daemon clocks) the time since its incarnation started.
    fn clock(&self, n: usize) -> u64 {
        match self.cfg.lease_clocks {
            LeaseClocks::Ideal => self.now,
            LeaseClocks::Daemon | LeaseClocks::Clamped => self.now - self.nodes[n].started_ms,
        }
    }

    /// The daemon's heartbeat interval.
    fn heartbeat_ms(&self) -> u64 {
        (self.cfg.dead_after_ms / 8).clamp(20, 500)
    }

    /// Whether node `n` holds the lease on the pages homed at `h`: `h` heard it within the
    /// lease, by `h`'s echo of one of `n`'s send times.
    pub(crate) fn holds_lease_of(&self, n: usize, h: usize) -> bool {
        if n == h {
            return true;
        }
        let lease = self.lease_ms();
        let clock = self.clock(n);
        self.nodes[n]
            .links
            .get(&h)
            .and_then(|l| l.echoed)
            .is_some_and(|e| clock < e + lease)
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
        let hb = self.heartbeat_ms();
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
            echo: link.heard,
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
            echo,
        } = hb;
        if self.nodes[to].core.is_none() || self.cut(from, to) {
            return Ok(());
        }
        if !self.heard_from(to, from, from_epoch) {
            return Ok(());
        }
        let now = self.now;
        let clock = self.clock(to);
        let clocks = self.cfg.lease_clocks;
        let my_epoch = self.nodes[to].epoch;
        let quarter = self.heartbeat_ms() / 4;
        let lease = self.lease_ms();
        let Some(l) = self.nodes[to].links.get_mut(&from) else {
            return Ok(());
        };
        l.heard = match (clocks, l.heard) {
            // Kept across the peer's restarts, whatever clock they were counted in.
            (LeaseClocks::Clamped, Some((e, t))) => Some((e.max(from_epoch), t.max(sent_ms))),
            // A newer incarnation starts afresh; what an older one sends late is ignored.
            (_, Some((e, t))) if e > from_epoch || (e == from_epoch && t >= sent_ms) => {
                Some((e, t))
            }
            _ => Some((from_epoch, sent_ms)),
        };
        let held = l.echoed.is_some_and(|e| clock < e + lease);
        let taken = match (clocks, echo) {
            // Only this incarnation's own send times count (and none from the future).
            (LeaseClocks::Ideal, Some((e, t))) if e == my_epoch && t <= clock => Some(t),
            // Any value not ahead of this node's clock.
            (LeaseClocks::Daemon, Some((_, t))) if t <= clock => Some(t),
            // Any value, clamped to this node's clock.
            (LeaseClocks::Clamped, Some((_, t))) => Some(t.min(clock)),
            _ => None,
        };
        let regained = match taken {
            Some(t) if l.echoed.is_none_or(|x| x < t) => {
                l.echoed = Some(t);
                (!held && clock < t + lease).then_some(t)
            }
            _ => None,
        };
        let answer = l.last_hb.is_none_or(|t| now.saturating_sub(t) > quarter);
        if let Some(t) = regained {
            self.log(|| {
                format!(
                    "node{to} regains the lease of node{from}: its heartbeat (sent at {sent_ms} by its clock) echoed {} (taken as {t} by this node's clock, now {clock}); lease until {}",
                    echo.map_or(0, |e| e.1),
                    t + lease
                )
            });
        }
        if answer {
            self.send_heartbeat(to, from);
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
