//! Membership and leases as the engine executes them: a home's lease on this node and the
//! quarantine when it lapses; the verdicts of `pagemesh_core::Membership` (declaring a peer
//! dead: fences, forgetting what it held). The rules themselves are the core's.

use pagemesh_core::{Epoch, PageKey, PeerSilence, Verdict};
use pagemesh_types::{NodeId, SegmentId};
use pagemesh_uffd::clock::monotonic_ns;
use pagemesh_uffd::Protect;

use crate::files;

use super::{bump, fail_stop, Engine, EVICTION_GIVE_UP, PS};

impl Engine {
    /// The lease on `home`'s pages: while it holds, `home` heard this node within the last
    /// `dead_after_ms / 2`, so it cannot have declared it dead and given its pages to others.
    pub(super) fn lease(&self, home: NodeId) -> bool {
        home == self.me() || self.transport.lease_ok(home, self.membership.lease_ms())
    }

    /// A home's lease on this node lapsed: no process here may touch the copies of its pages
    /// without asking the engine again. Each copy is write-protected everywhere, then punched
    /// out of the page cache (which zaps every mapping) and written back unchanged: the data
    /// stays (the home may have died and will want it back), but every access faults, and
    /// faults wait for the lease.
    pub(super) fn check_leases(&mut self) {
        // Clients give up on a home's lapsed lease (SIGBUS) once the engine has not run for the
        // fault timeout: say that it runs.
        self.transport.board().alive(monotonic_ns());
        for p in self.transport.peers() {
            let ok = self.lease(p.id);
            let lapsed = self.lapsed.entry(p.id).or_insert(false);
            if ok && *lapsed {
                *lapsed = false;
                log::debug!("{}: lease renewed; its pages are served again", p.id);
            } else if !ok && !*lapsed {
                *lapsed = true;
                self.quarantine(p.id);
            }
        }
        // Parked faults go on once their lease is back, or fail after the fault timeout.
        let parked = std::mem::take(&mut self.parked);
        for f in parked {
            let home = self.home_of(SegmentId(f.att.segment.info.id));
            if home.is_some_and(|h| self.lease(h)) {
                self.fault(f.att, f.fault, f.start);
                self.pump();
            } else if f.start.elapsed() > self.fault_timeout {
                bump(&self.figures.sigbus);
                f.att.refuse(
                    &f.fault,
                    &format_args!(
                        "waited {:?} for its home {} (no lease: unreachable)",
                        f.start.elapsed(),
                        home.map_or("?".into(), |h| h.to_string())
                    ),
                );
            } else {
                self.parked.push(f);
            }
        }
    }

    /// An `Evict` is sent once; if the home dropped it (rebuilding, a redialled connection,
    /// dead, a failed write-back), the page stays: give the eviction up and put the page back
    /// on the pool's clock, so the pool's count of pages on their way out does not drift.
    pub(super) fn give_up_evictions(&mut self) {
        let stale: Vec<PageKey> = self
            .evicting
            .iter()
            .filter(|(_, t)| t.elapsed() > EVICTION_GIVE_UP)
            .map(|(k, _)| *k)
            .collect();
        for key in stale {
            self.evicting.remove(&key);
            if let Some(m) = self.segs.get(&key.seg).and_then(|s| s.memory.as_ref()) {
                m.pool
                    .cluster_evict_done(&m.partition, Some((key.seg.0, key.page.0)));
            }
        }
    }

    pub(super) fn quarantine(&mut self, home: NodeId) {
        let segs: Vec<SegmentId> = self
            .node
            .segments()
            .filter(|s| s.home == home)
            .map(|s| s.id)
            .collect();
        let pages: Vec<PageKey> = self
            .node
            .copies()
            .filter(|(k, _)| segs.contains(&k.seg))
            .map(|(k, _)| k)
            .collect();
        if pages.is_empty() {
            log::debug!("{home}: no lease (yet); nothing of it held here");
            return;
        }
        log::warn!(
            "{home}: no lease (not heard back for {} ms): {} page(s) of its segments held here are set aside until it answers",
            self.membership.lease_ms(),
            pages.len()
        );
        let mut buf = vec![0u8; PS as usize];
        for key in pages {
            let Some(s) = self.segs.get(&key.seg).cloned() else {
                continue;
            };
            self.protect(&s, key, Protect::ReadOnly);
            let off = key.page.0 * PS;
            if let Err(e) = s.memfd.read_exact_at(&mut buf, off) {
                fail_stop(&format!(
                    "{key}: reading a copy to set it aside failed: {e}"
                ));
            }
            if let Err(e) = s.memfd.punch_hole(off, PS) {
                fail_stop(&format!(
                    "{key}: setting a copy aside (punch-hole) failed: {e}"
                ));
            }
            if let Err(e) = s.memfd.write_all_at(&buf, off) {
                fail_stop(&format!("{key}: restoring a copy set aside failed: {e}"));
            }
        }
    }

    /// Drop a dead or restarted node's barrier arrivals and locks, and fail the local barrier
    /// waiters it served; lock waiters fail only if it is `dead` (a restarted home hears them
    /// again in this node's report).
    pub(super) fn forget_node(&mut self, peer: NodeId, dead: bool) {
        let mut orphans: Vec<u64> = self
            .barrier_of
            .iter()
            .filter(|(_, (seg, _))| self.home_of(*seg) == Some(peer))
            .map(|(t, _)| *t)
            .collect();
        if dead {
            orphans.extend(self.lock_client.home_lost(peer));
        }
        let clears: Vec<u64> = self
            .clears
            .iter()
            .filter(|(_, (_, _, h))| *h == peer)
            .map(|(r, _)| *r)
            .collect();
        for r in clears {
            if let Some((reply, _, _)) = self.clears.remove(&r) {
                let _ = reply.send(Err(format!("the segment's home {peer} died or restarted")));
            }
        }
        for t in orphans {
            self.barrier_of.remove(&t);
            self.refuse_waiter(t, format!("the segment's home {peer} died or restarted"));
        }
        self.forget_node_locks(peer);
    }

    /// One round of membership (`pagemesh_core::Membership`): its verdicts are executed here.
    pub(super) fn check_liveness(&mut self, now: u64) {
        let peers: Vec<PeerSilence> = self
            .transport
            .peers()
            .iter()
            .map(|p| PeerSilence {
                id: p.id,
                silent_ms: p.silent_ms,
                ever_heard: self.node.peer_epoch(p.id) != Epoch(0),
                echo_age_ms: p.echo_age_ms,
            })
            .collect();
        let mut verdicts = std::mem::take(&mut self.verdicts);
        self.membership.round(now, &peers, &mut verdicts);
        for v in verdicts.drain(..) {
            match v {
                Verdict::Paused { gap_ms } => log::warn!(
                    "the cluster engine did not run for {gap_ms} ms; silence counts from now"
                ),
                Verdict::NoMajority {
                    silent,
                    reachable,
                    total,
                } => log::warn!(
                    "{silent} is silent, but this node reaches only {reachable} of {total} nodes: no majority, so nobody is declared dead; waiting"
                ),
                Verdict::CutOff { hearing, total } => log::warn!(
                    "only {hearing} of {total} nodes heard this node within the lease: it may be declared dead; it declares nobody until a majority hears it again"
                ),
                Verdict::Rejoined { after_ms } => log::warn!(
                    "a majority hears this node again after {after_ms} ms: silence counts from now (a peer that declared it dead meanwhile will refuse it)"
                ),
                Verdict::Dead(peer) => {
                    let silent_ms = peers.iter().find(|p| p.id == peer).map_or(0, |p| p.silent_ms);
                    self.declare_dead(now, peer, silent_ms);
                }
                Verdict::Alive(peer) => {
                    let epoch = self.node.peer_epoch(peer).0;
                    log::info!("{peer}: heard again (epoch {epoch}): alive");
                }
            }
        }
        self.verdicts = verdicts;
    }

    /// Membership declared `peer` dead: the core drops what it held, its incarnation is fenced
    /// (durably), and whatever connection of it survives is cut.
    fn declare_dead(&mut self, now: u64, peer: NodeId, silent_ms: u64) {
        log::warn!(
            "{peer}: nothing heard for {silent_ms} ms (limit {} ms): declared dead. Pages whose only copy it held unsynced are poisoned; \
             it must restart to rejoin",
            self.membership.dead_after_ms()
        );
        self.node.peer_dead(now, peer);
        let fence = self.node.peer_epoch(peer);
        self.transport.fence(peer, fence);
        if let Err(e) = files::store_fence(&self.data_dir, peer, fence) {
            log::error!(
                "{peer}: storing its fence failed: {e}; a restart of this node would forget it"
            );
        }
        self.forget_node(peer, true);
        self.removal_peer_dead(peer);
        // Whatever connection of the fenced incarnation survives is cut, so that if it is alive
        // it redials, is refused as fenced, and stops.
        let conns: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.from == peer)
            .map(|(id, _)| *id)
            .collect();
        for id in conns {
            self.close_conn(id, "its node was declared dead");
        }
    }
}
