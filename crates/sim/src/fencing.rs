//! What a node declared dead means in the simulated world, and the faults that make nodes
//! silent for longer than the dead-peer limit.
//!
//! Which peer a node declares dead, and when, is decided by the core's `Membership` (driven in
//! `crate::liveness`); here the declaration is carried out (`Node::peer_dead`, durable
//! fences) and its consequences are tracked for the checkers. A peer declared dead while it
//! was in fact alive (cut off) is refused when the partition heals and stops — it crashes
//! here — and comes back later with a new epoch. Until then its processes may still read its
//! copies: without leases, those reads are counted, not checked (the stale-read window of
//! `docs/cluster.md` §7); with leases they wait for the lease of the page's home, and
//! whatever completes is checked.
//!
//! What is checked on such a node without leases: its copies of pages whose home fenced it
//! are orphans (left out of the single-writer and latest-write checks; its writes to them are
//! not applied to the model); its view of pages whose home still counts it stays checked,
//! since nobody can change those pages without invalidating its copy first. With leases, an orphan is left out of the single-writer check only while its
//! node does not hold the lease of its home (it cannot be used then); every access is checked.
//! A home that declares a node dead may poison what that node held in M or held unsynced
//! (`World::mark_lost_by`, the crash rule seen from that home).
//!
//! Fences are durable: a node's transport refuses what a fenced incarnation sends, also after
//! the node restarted (`SimConfig::fences_in_core` also gives them back to its core, as the
//! daemon does). Two experiments show what the daemon did before: `SimConfig::minority_declares`
//! (the core's membership without its quorum rule, an injected bug) and
//! `SimConfig::fences_forgotten` (fences in memory); both find stale data.
//!
//! The one-way fault (`SimConfig::mute_rate`): a node's messages are all lost while it still
//! hears everyone, for longer than the dead-peer limit. Everyone else is a majority that cannot
//! hear it and declares it dead; it declares nobody (it hears everyone); it stops when it can
//! send again.

use crate::world::{Ev, Violation, World, TICK_MS};
use pagemesh_core::PageKey;
use pagemesh_types::NodeId;
use std::collections::BTreeSet;

impl World {
    /// Whether `a` is on a side of the current partition that holds a strict majority of the
    /// cluster (or there is no partition).
    fn in_majority(&self, a: usize) -> bool {
        let n = self.nodes.len();
        match &self.partition {
            None => true,
            Some(side) => {
                let cut = side.contains(&NodeId(a as u32));
                let mine = if cut { side.len() } else { n - side.len() };
                mine * 2 > n
            }
        }
    }

    /// The home of `page`.
    pub(crate) fn home_of(&self, page: PageKey) -> Option<usize> {
        self.segs
            .iter()
            .find(|s| s.id == page.seg)
            .map(|s| s.home.0 as usize)
    }

    /// Whether node `h` (if up) has fenced node `n`'s current incarnation.
    pub(crate) fn fences(&self, h: usize, n: usize) -> bool {
        h != n
            && self.nodes[h]
                .core
                .as_ref()
                .is_some_and(|c| c.peer_epoch(NodeId(n as u32)).0 > self.nodes[n].epoch)
    }

    /// Whether node `n`'s view of `page` is outside the checked world: `n` was declared dead
    /// (and has not stopped yet) and the page's home fenced it (its fence stored, if it is down
    /// or restarted since). Pages whose home still counts
    /// `n` stay checked, on either side of a partition: that directory is exact, and nobody can
    /// change them without invalidating `n`'s copy first (a home that declares `n` dead later
    /// poisons what `n` held in M, the rule of a crash). A fenced node does not stop at the
    /// heal but when it next reaches a node that fenced it, and a home may not have judged it
    /// yet by then (its own silence counts from when it rejoined a majority).
    pub(crate) fn fenced_view(&self, n: usize, page: PageKey) -> bool {
        if !self.nodes[n].fenced {
            return false;
        }
        let Some(h) = self.home_of(page) else {
            return false;
        };
        self.nodes[h].diverged
            || self.fences(h, n)
            || self
                .durable_fences
                .get(&(h, n))
                .is_some_and(|&e| e > self.nodes[n].epoch)
    }

    /// Whether what node `h`'s directory does is outside the checked world (it declared live
    /// peers dead from a minority side and has not stopped yet).
    pub(crate) fn diverged(&self, h: usize) -> bool {
        self.nodes[h].diverged
    }

    /// Whether `h`'s poisoning or clearing of `page` is its own view only: it dropped a live
    /// incarnation's copy of it by declaring it dead from a minority side.
    pub(crate) fn diverged_page(&self, h: usize, page: PageKey) -> bool {
        self.nodes[h].diverged && self.diverged_pages.contains(&page)
    }

    /// Node `a` declares peer `b` dead.
    pub(crate) fn declare(&mut self, a: usize, b: usize) -> Result<(), Violation> {
        // What `a`'s directory may now poison: the pages homed at `a` that `b` held in M, or
        // held while they had unsynced data (the same rule as a crash of `b`, seen from `a`).
        self.mark_lost_by(b, |home| home == a);
        let involved: Vec<PageKey> = self
            .model
            .pages
            .keys()
            .copied()
            .filter(|p| self.home_of(*p) == Some(a))
            .filter(|p| {
                let dir = self.nodes[a].core.as_ref().and_then(|c| c.dir_page(*p));
                let me = NodeId(b as u32);
                dir.is_some_and(|d| d.owner == Some(me) || d.sharers.contains(&me))
                    || self.nodes[b]
                        .core
                        .as_ref()
                        .is_some_and(|c| c.copy(*p).is_some())
            })
            .collect();
        let now = self.now;
        let (known, fenced) = match self.nodes[a].core.as_mut() {
            Some(c) => {
                let known = c.peer_epoch(NodeId(b as u32));
                c.peer_dead(now, NodeId(b as u32));
                (known, c.peer_epoch(NodeId(b as u32)))
            }
            None => return Ok(()),
        };
        self.stats.declarations += 1;
        let alive = self.nodes[b].core.is_some();
        let epoch = self.nodes[b].epoch;
        let minority = alive && !self.in_majority(a);
        self.log(|| {
            format!(
                "node{a} DECLARES node{b} DEAD (knew epoch {}, fences below {}; node{b} is {} at epoch {epoch})",
                known.0,
                fenced.0,
                if alive { "alive" } else { "down" },
            )
        });
        // Declared from a minority side: only the injected membership bug does that on
        // purpose (the core's rule declares on a fresh majority only, which may be a few
        // milliseconds old when a new partition has just begun).
        let diverging = minority && self.cfg.minority_declares;
        if diverging && fenced.0 > epoch {
            self.diverged_pages.extend(involved);
            // Its directory now drops copies that are in use; it stops at the heal (the
            // majority refuses it), and the fences it set die with it, so the peers it declared
            // dead go on (the daemon's race at the heal can also go the other way).
            self.nodes[a].diverged = true;
        } else if alive && fenced.0 > epoch {
            if self.nodes[a].fenced && !self.nodes[b].fenced && self.nodes[b].core.is_some() {
                // `a` was itself declared dead: whatever it decides is void, and `b` is a node
                // nobody cut off or stopped that the cluster now loses.
                return Err(crate::world::fail(
                    self,
                    None,
                    format!("node{a}, itself declared dead by its peers, declared healthy node{b} dead and fenced it"),
                ));
            }
            // `a` refuses it from now on: it learns it was fenced when it reaches `a` again,
            // and stops; at once if they are in touch (a declaration right after a heal).
            self.nodes[b].fenced = true;
            if !self.cut(a, b) && !self.cut(b, a) && !self.cfg.fences_forgotten {
                self.stop_fenced(b);
            }
        }
        if !diverging && !self.cfg.fences_forgotten && fenced.0 > 0 {
            // Stored before it is relied on, and reloaded when `a` restarts (the daemon's
            // DATA_DIR/cluster/fences).
            let e = self.durable_fences.entry((a, b)).or_default();
            *e = (*e).max(fenced.0);
        }
        self.run_outputs(a)
    }

    /// A node declared dead while alive learns it (it is refused as fenced) and stops; it
    /// restarts later with a new epoch.
    fn stop_fenced(&mut self, i: usize) {
        self.log(|| format!("node{i} learns it was declared dead: it stops"));
        self.stats.fenced_stops += 1;
        self.crash(i);
        let down = self.rng.range(30, 600);
        self.schedule(down, Ev::Restart(i));
    }

    /// A node for a long fault: one that may crash, is up, and is not fenced already.
    fn pick_victim(&mut self) -> Option<usize> {
        let up: Vec<usize> = (0..self.nodes.len())
            .filter(|i| {
                let n = &self.nodes[*i];
                n.crashable && n.core.is_some() && !n.fenced
            })
            .collect();
        (!up.is_empty()).then(|| up[self.rng.below(up.len())])
    }

    /// The "declared dead" fault: a node crashes, or is cut off alone, for longer than the
    /// dead-peer limit.
    pub(crate) fn dead_fault(&mut self) {
        let Some(victim) = self.pick_victim() else {
            return;
        };
        self.stats.dead_faults += 1;
        // Long enough for every node's limit, checked at tick granularity.
        let limit = self.cfg.dead_after_ms + self.cfg.dead_after_ms / 4 + 2 * TICK_MS;
        if self.partition.is_none() && self.mute.is_none() && self.rng.chance(0.5) {
            let side: BTreeSet<NodeId> = [NodeId(victim as u32)].into();
            self.log(|| format!("partition: {side:?} cut off (long: will be declared dead)"));
            self.partition = Some(side);
            self.stats.partitions += 1;
            let heal = limit + self.rng.range(50, 1500);
            self.schedule(heal, Ev::Heal);
        } else {
            self.log(|| format!("node{victim} goes down for longer than the dead-peer limit"));
            self.crash(victim);
            let down = limit + self.rng.range(30, 600);
            self.schedule(down, Ev::Restart(victim));
        }
    }

    /// The one-way fault: a node goes mute (everything it sends is lost, it still hears
    /// everyone) for longer than the dead-peer limit. Not while a partition lasts.
    pub(crate) fn mute_fault(&mut self) {
        if self.partition.is_some() || self.mute.is_some() {
            return;
        }
        let Some(victim) = self.pick_victim() else {
            return;
        };
        self.stats.mutes += 1;
        self.mute = Some(victim);
        self.log(|| format!("partition: node{victim} goes mute (it hears everyone, nobody hears it; long: will be declared dead)"));
        let limit = self.cfg.dead_after_ms + self.cfg.dead_after_ms / 4 + 2 * TICK_MS;
        let end = limit + self.rng.range(50, 1500);
        self.schedule(end, Ev::Heal);
    }

    /// The partition heals (or the mute node can send again). A node declared dead while it
    /// was alive learns that it was fenced when its transport next dials a node that fenced it
    /// (or is dialled by one, which tells it): after up to `lease::reconnect_max_ms` of the
    /// daemon's backoff and a network delay. Until then it runs on, heard by the nodes that did
    /// not fence it, and hearing all of them.
    pub(crate) fn heal(&mut self) -> Result<(), Violation> {
        if self.partition.is_some() {
            self.log(|| "partition healed".into());
        }
        if let Some(m) = self.mute.take() {
            self.log(|| format!("partition healed: node{m} can send again"));
        }
        self.partition = None;
        let reconnect = pagemesh_core::lease::reconnect_max_ms(self.cfg.dead_after_ms);
        for i in 0..self.nodes.len() {
            if self.nodes[i].core.is_some() && self.nodes[i].fenced {
                let epoch = self.nodes[i].epoch;
                let after = self.rng.range(1, reconnect + self.cfg.max_delay_ms);
                self.schedule(after, Ev::LearnFenced { node: i, epoch });
            }
        }
        Ok(())
    }

    /// Node `i`'s incarnation `epoch`, fenced, reaches the nodes again: refused, it stops —
    /// unless (`SimConfig::fences_forgotten`) every node that fenced it restarted since and
    /// forgot, and it goes on.
    pub(crate) fn learn_fenced(&mut self, i: usize, epoch: u64) {
        let n = &self.nodes[i];
        if n.core.is_none() || n.epoch != epoch || !n.fenced || self.cut_off(i) {
            return;
        }
        if self.cfg.fences_forgotten && !(0..self.nodes.len()).any(|h| self.fences(h, i)) {
            // Everyone who fenced it restarted since: nobody refuses it, it goes on, and its
            // copies are checked again.
            self.log(|| {
                format!(
                    "node{i} was declared dead, but every node that fenced it forgot: it goes on"
                )
            });
            self.nodes[i].fenced = false;
            return;
        }
        self.stop_fenced(i);
    }

    /// Whether node `i` is cut off from every other node now (a new partition or mute began
    /// before it learned of its fence: it learns at the next heal).
    fn cut_off(&self, i: usize) -> bool {
        (0..self.nodes.len()).all(|h| h == i || self.cut(i, h) || self.cut(h, i))
    }
}
