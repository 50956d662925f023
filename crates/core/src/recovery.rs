//! What the home does when time passes (retransmission) and when a peer comes back with a new
//! epoch (everything the old incarnation held or asked for is void).

use crate::coverage::Branch;
use crate::directory::{DirPage, Directory, Stage, Txn, Work};
use crate::ids::PageKey;
use crate::io::Io;
use crate::msg::Msg;
use crate::output::Event;
use pagemesh_types::NodeId;

impl Directory {
    /// `peer` came back with a new epoch: nothing it held counts, nothing it asked for stands.
    pub(crate) fn peer_restarted(&mut self, io: &mut Io, peer: NodeId) {
        self.rebuild_peer_restarted(io, peer);
        let keys: Vec<PageKey> = self.pages.keys().copied().collect();
        for key in keys {
            let Some(p) = self.pages.get_mut(&key) else {
                continue;
            };
            let held = p.remove_holder(peer);
            p.served.remove(&peer);
            p.cleared.remove(&peer);
            p.queue.retain(|w| w.requester() != Some(peer));
            if let Some(t) = p.txn.take() {
                p.txn = txn_after_restart(io, p, t, peer);
            }
            if held {
                io.hit(Branch::PeerRestartHome);
            }
            if p.is_lost() {
                io.hit(Branch::PeerRestartPoison);
                p.poisoned = true;
                io.event(Event::PagePoisoned {
                    page: key,
                    lost_with: Some(peer),
                });
            }
            self.advance(io, key);
        }
        self.jobs.retain(|_, j| j.node != peer);
        self.syncs_served.retain(|(n, _), _| *n != peer);
    }

    /// Retransmit every message a transaction waits on for longer than `retry_ms`.
    pub(crate) fn tick(&mut self, io: &mut Io) {
        self.rebuild_tick(io);
        let now = io.now_ms;
        let active: Vec<PageKey> = self.active.iter().copied().collect();
        for key in active {
            let Some(t) = self.pages.get_mut(&key).and_then(|p| p.txn.as_mut()) else {
                continue;
            };
            if t.next_retry_ms > now {
                continue;
            }
            t.next_retry_ms = io.retry_at();
            let txn = t.id;
            match &t.stage {
                Stage::Fetch { from, then } => {
                    io.hit(Branch::HomeRetransmit);
                    io.send(
                        *from,
                        Msg::Fetch {
                            page: key,
                            txn,
                            then: *then,
                        },
                    );
                }
                Stage::Inval { pending } => {
                    io.hit(Branch::HomeRetransmit);
                    for n in pending {
                        io.send(*n, Msg::Inval { page: key, txn });
                    }
                }
                Stage::Grant { to, msg } => {
                    io.hit(Branch::HomeRetransmit);
                    io.send(*to, msg.clone());
                }
                Stage::Plan
                | Stage::MapperRead { .. }
                | Stage::MapperWrite { .. }
                | Stage::Intent { .. } => {}
            }
        }
    }
}

/// What becomes of a page's transaction when `peer` restarted.
fn txn_after_restart(io: &mut Io, p: &DirPage, mut t: Txn, peer: NodeId) -> Option<Txn> {
    let in_flight = matches!(
        t.stage,
        Stage::Inval { .. } | Stage::MapperWrite { .. } | Stage::Intent { .. }
    );
    if t.work.requester() == Some(peer) && in_flight {
        // Finish what is in flight first: holders may or may not have dropped their copies, and
        // a mapper or intent write may or may not have landed; a next transaction must not
        // overtake them (the directory would no longer match the copies or the durable state).
        // Then keep the contents if only we have them.
        io.hit(Branch::PeerRestartFinishInFlight);
        t.work = Work::Flush { job: None };
        return Some(t);
    }
    if t.work.requester() == Some(peer) {
        let has_current = t.data.as_ref().is_some_and(|(v, _)| *v == p.version);
        if has_current && p.version > p.durable && p.holders().is_empty() {
            // The requester held nothing; the contents it was going to get exist only here:
            // write them to the mapper instead of losing them.
            io.hit(Branch::PeerRestartRescue);
            t.work = Work::Flush { job: None };
            t.stage = Stage::Plan;
            return Some(t);
        }
        io.hit(Branch::PeerRestartAbortTxn);
        return None;
    }
    match &mut t.stage {
        Stage::Fetch { from, .. } if *from == peer => {
            t.tried.insert(peer);
            t.stage = Stage::Plan;
        }
        Stage::Inval { pending } => {
            pending.remove(&peer);
            if pending.is_empty() {
                t.stage = Stage::Plan;
            }
        }
        _ => {}
    }
    Some(t)
}
