//! A node's protocol engine: its cache, the directory of the segments it is home of, and the
//! envelope checks (epochs) in front of both. This is the type a driver (the daemon, the
//! simulator) owns and feeds.

use crate::cache::{Cache, CopyInfo, EvictStart};
use crate::config::{NodeConfig, SegmentInfo};
use crate::coverage::{Branch, Coverage};
use crate::directory::{DirView, Directory};
use crate::ids::{
    Access, CallId, CallResult, Epoch, FaultId, FaultResult, MapperError, MapperToken, PageData,
    PageKey, Want,
};
use crate::io::Io;
use crate::msg::{Envelope, Msg};
use crate::output::{Event, Output};
use pagemesh_types::{NodeId, SegmentId};
use std::collections::BTreeMap;

/// The coherence protocol of one node, as a pure state machine.
///
/// Inputs: [`Node::step`] (a message from a peer or from itself), [`Node::tick`] (time passed),
/// [`Node::fault`], [`Node::sync`], [`Node::evict`], [`Node::clear_poison`] (local requests),
/// [`Node::mapper_read_done`] and [`Node::mapper_write_done`] (I/O completions). Every input
/// takes the driver's clock in milliseconds. Outputs accumulate until [`Node::take_outputs`].
#[derive(Debug)]
pub struct Node {
    io: Io,
    peers: Vec<NodeId>,
    segments: BTreeMap<SegmentId, SegmentInfo>,
    cache: Cache,
    dir: Directory,
}

impl Node {
    /// A node that takes part in `segments` (the ones whose `home` is this node get a
    /// directory here). Call [`Node::start`] before anything else.
    pub fn new(cfg: NodeConfig, segments: &[SegmentInfo]) -> Node {
        assert!(cfg.epoch > Epoch(0), "epochs start at 1");
        let mut dir = Directory {
            // Transaction ids of a new incarnation sort after every earlier one's.
            next_txn: cfg.epoch.0 << 32,
            ..Directory::default()
        };
        for s in segments.iter().filter(|s| s.home == cfg.id) {
            dir.segs.insert(s.id, *s);
        }
        Node {
            io: Io {
                id: cfg.id,
                epoch: cfg.epoch,
                now_ms: 0,
                timing: cfg.timing,
                max_queue: cfg.max_queue.max(1),
                holdings_per_message: cfg.holdings_per_message.max(1),
                bugs: cfg.bugs,
                peer_epochs: BTreeMap::new(),
                fences: BTreeMap::new(),
                out: Vec::new(),
                cov: Coverage::default(),
            },
            peers: cfg.peers,
            segments: segments.iter().map(|s| (s.id, *s)).collect(),
            cache: Cache::default(),
            dir,
        }
    }

    /// This node.
    pub fn id(&self) -> NodeId {
        self.io.id
    }

    /// This incarnation.
    pub fn epoch(&self) -> Epoch {
        self.io.epoch
    }

    /// Announce this incarnation to every peer.
    pub fn start(&mut self, now_ms: u64) {
        self.io.now_ms = now_ms;
        for p in self.peers.clone() {
            if p != self.io.id {
                self.io.send(p, Msg::Hello);
            }
        }
        if self.io.epoch > Epoch(1) {
            // A restart: the directory of every segment homed here must be rebuilt.
            let peers = self.peers.clone();
            self.dir.start_rebuild(&mut self.io, &peers);
        }
    }

    /// The outputs produced since the last call, in the order they must be executed.
    pub fn take_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.io.out)
    }

    /// Move the outputs produced since the last call to the end of `into`, keeping this node's
    /// buffer (and its capacity): the allocation-free form of [`Node::take_outputs`].
    pub fn drain_outputs(&mut self, into: &mut Vec<Output>) {
        into.append(&mut self.io.out);
    }

    /// A message arrived (possibly from this node itself).
    pub fn step(&mut self, now_ms: u64, env: Envelope) {
        self.io.now_ms = now_ms;
        if env.to != self.io.id {
            self.io.protocol_error(format!(
                "{} got a message for {}: {}",
                self.io.id, env.to, env.msg
            ));
            return;
        }
        let from = env.from;
        if from != self.io.id {
            if env.from_epoch < self.io.fences.get(&from).copied().unwrap_or_default() {
                self.io.hit(Branch::StaleEpochDropped);
                return;
            }
            let known = self.io.peer_epochs.get(&from).copied().unwrap_or_default();
            if env.from_epoch < known {
                self.io.hit(Branch::StaleEpochDropped);
                return;
            }
            if env.from_epoch > known {
                self.io.peer_epochs.insert(from, env.from_epoch);
                if known > Epoch(0) {
                    self.peer_restarted(from);
                }
            }
        }
        if env.to_epoch != Epoch(0) && env.to_epoch != self.io.epoch {
            // Meant for an earlier incarnation of this node: tell the sender who we are now.
            self.io.hit(Branch::OldIncarnationHello);
            if env.msg != Msg::Hello {
                self.io.send(from, Msg::Hello);
            }
            return;
        }
        match env.msg {
            Msg::Hello => {}
            m @ (Msg::Acquire { .. }
            | Msg::GrantAck { .. }
            | Msg::FetchReply { .. }
            | Msg::InvalAck { .. }
            | Msg::Evict { .. }
            | Msg::SyncReq { .. }
            | Msg::ClearPoison { .. }
            | Msg::Holdings { .. }) => self.dir.on_msg(&mut self.io, from, m),
            m => self.cache.on_msg(&mut self.io, from, m),
        }
    }

    /// Take part in a segment created after this node started (a cluster-wide catalog
    /// update). Its directory lives here if this node is its home. Adding a segment twice with
    /// the same description is harmless; a different description of a known id is refused
    /// (ids are never reused).
    pub fn add_segment(&mut self, info: SegmentInfo) -> Result<(), SegmentInfo> {
        if let Some(known) = self.segments.get(&info.id) {
            return if *known == info { Ok(()) } else { Err(*known) };
        }
        self.segments.insert(info.id, info);
        if info.home == self.io.id {
            self.dir.segs.insert(info.id, info);
        }
        Ok(())
    }

    /// The segment was removed from the cluster (no process anywhere has it attached): forget
    /// its pages here, at the home and in this node's cache. Messages still in flight about it
    /// are ignored as protocol errors.
    pub fn remove_segment(&mut self, now_ms: u64, seg: SegmentId) {
        self.io.now_ms = now_ms;
        self.segments.remove(&seg);
        self.dir.segs.remove(&seg);
        self.dir.pages.retain(|k, _| k.seg != seg);
        self.dir.active.retain(|k| k.seg != seg);
        self.dir.recovering.remove(&seg);
        self.dir.recovered.remove(&seg);
        self.dir.jobs.retain(|_, j| j.seg != seg);
        self.dir.syncs_served.retain(|(_, s), _| *s != seg);
        self.dir.intent_reads.retain(|_, s| *s != seg);
        self.cache.remove_segment(&mut self.io, seg);
    }

    /// Membership declared `peer` dead (silent for longer than the driver's limit): the
    /// incarnation we know is **fenced** — nothing it sends counts any more — and everything it
    /// held is dropped exactly as if it had restarted (pages whose only valid copy it held are
    /// poisoned). When the peer really restarts, its next epoch is accepted as usual. A peer
    /// that was only cut off and comes back with the fenced epoch is ignored; the driver tells
    /// it to restart.
    ///
    /// A peer never heard from by this incarnation cannot be fenced (its epoch is unknown) and
    /// holds nothing this node knows of; the call then changes nothing. In particular a
    /// restarted home keeps waiting for that peer's holdings: it may hold copies granted by the
    /// home's previous incarnation, and, not being fenced, would come back with them.
    pub fn peer_dead(&mut self, now_ms: u64, peer: NodeId) {
        self.io.now_ms = now_ms;
        if peer == self.io.id {
            return;
        }
        let known = self.io.peer_epochs.get(&peer).copied().unwrap_or_default();
        if known == Epoch(0) {
            // Fencing "below epoch 1" would fence nothing, yet dropping the peer from a rebuild
            // would void copies its live incarnation still uses (and will report).
            self.io.hit(Branch::PeerDeadUnknownEpoch);
            return;
        }
        self.io.peer_epochs.insert(peer, Epoch(known.0 + 1));
        self.peer_restarted(peer);
    }

    /// Refuse `peer`'s incarnations below `epoch` from now on, without dropping anything (a
    /// fence this node set before it restarted, reloaded by the driver).
    pub fn fence(&mut self, peer: NodeId, epoch: Epoch) {
        if peer == self.io.id {
            return;
        }
        // Kept apart from the incarnations heard: taking the floor for a known incarnation
        // would make the first message of a newer live one look like a restart and void its
        // holdings in a rebuild (found by the simulator, `--fences-in-core`, seed 26).
        let e = self.io.fences.entry(peer).or_default();
        *e = (*e).max(epoch);
    }

    /// The incarnation of `peer` this node accepts messages from (0: none heard yet).
    pub fn peer_epoch(&self, peer: NodeId) -> Epoch {
        self.io.peer_epochs.get(&peer).copied().unwrap_or_default()
    }

    /// Whether this node, `seg`'s home, is still rebuilding its directory after a restart (it
    /// does not know yet which pages were lost: poisoned pages appear when it ends).
    pub fn rebuilding(&self, seg: SegmentId) -> bool {
        self.dir.recovering.contains_key(&seg)
    }

    /// The poisoned pages of `seg` (this node must be its home; empty otherwise).
    pub fn poisoned_pages(&self, seg: SegmentId) -> Vec<u64> {
        self.dir
            .pages
            .range(crate::directory::seg_range(seg))
            .filter(|(_, p)| p.poisoned)
            .map(|(k, _)| k.page.0)
            .collect()
    }

    /// The segment `id`, if this node takes part in it.
    pub fn segment(&self, id: SegmentId) -> Option<&SegmentInfo> {
        self.segments.get(&id)
    }

    /// Every segment this node takes part in.
    pub fn segments(&self) -> impl Iterator<Item = &SegmentInfo> + '_ {
        self.segments.values()
    }

    fn peer_restarted(&mut self, peer: NodeId) {
        self.io.event(Event::PeerRestarted { peer });
        self.dir.peer_restarted(&mut self.io, peer);
    }

    /// Time passed: retransmit what is unanswered, end waits that ran out.
    pub fn tick(&mut self, now_ms: u64) {
        self.io.now_ms = now_ms;
        self.cache.tick(&mut self.io);
        self.dir.tick(&mut self.io);
    }

    fn home_of(&self, seg: SegmentId) -> Option<NodeId> {
        self.segments.get(&seg).map(|s| s.home)
    }

    /// A local access to `page` faulted; resolve it. Ends with an [`Output::FaultDone`].
    pub fn fault(&mut self, now_ms: u64, fault: FaultId, page: PageKey, access: Access) {
        self.io.now_ms = now_ms;
        match self.segments.get(&page.seg) {
            Some(s) if page.page.0 < s.pages => {
                let home = s.home;
                self.cache.fault(&mut self.io, home, fault, page, access);
            }
            _ => {
                self.io.hit(Branch::FaultUnknownSegment);
                self.io.emit(Output::FaultDone {
                    fault,
                    page,
                    result: FaultResult::UnknownSegment,
                });
            }
        }
    }

    /// Make every write to `seg` that completed before this call durable in the mapper. Ends
    /// with an [`Output::CallDone`].
    pub fn sync(&mut self, now_ms: u64, call: CallId, seg: SegmentId) {
        self.io.now_ms = now_ms;
        let Some(home) = self.home_of(seg) else {
            self.io.emit(Output::CallDone {
                call,
                result: CallResult::UnknownSegment,
            });
            return;
        };
        self.cache.sync(&mut self.io, home, call, seg);
    }

    /// Restore a poisoned page from the mapper (or zero). Ends with an [`Output::CallDone`].
    pub fn clear_poison(&mut self, now_ms: u64, call: CallId, page: PageKey) {
        self.io.now_ms = now_ms;
        let Some(home) = self.home_of(page.seg) else {
            self.io.emit(Output::CallDone {
                call,
                result: CallResult::UnknownSegment,
            });
            return;
        };
        self.cache
            .call(&mut self.io, home, vec![call], |req| Msg::ClearPoison {
                page,
                req,
            });
    }

    /// Give this node's copy of `page` back (memory pressure).
    pub fn evict(&mut self, now_ms: u64, page: PageKey) -> EvictStart {
        self.io.now_ms = now_ms;
        let Some(home) = self.home_of(page.seg) else {
            return EvictStart::NotHeld;
        };
        self.cache.evict(&mut self.io, home, page)
    }

    /// A [`Output::MapperRead`] finished.
    pub fn mapper_read_done(
        &mut self,
        now_ms: u64,
        token: MapperToken,
        result: Result<PageData, MapperError>,
    ) {
        self.io.now_ms = now_ms;
        self.dir.mapper_read_done(&mut self.io, token, result);
    }

    /// A [`Output::MapperWrite`] finished.
    pub fn mapper_write_done(
        &mut self,
        now_ms: u64,
        token: MapperToken,
        result: Result<(), MapperError>,
    ) {
        self.io.now_ms = now_ms;
        self.dir.mapper_write_done(&mut self.io, token, result);
    }

    /// An [`Output::IntentWrite`] finished.
    pub fn intent_write_done(
        &mut self,
        now_ms: u64,
        token: MapperToken,
        result: Result<(), MapperError>,
    ) {
        self.io.now_ms = now_ms;
        self.dir.intent_write_done(&mut self.io, token, result);
    }

    /// An [`Output::IntentRead`] finished: the pages of the segment with a write intent.
    pub fn intents_read_done(
        &mut self,
        now_ms: u64,
        token: MapperToken,
        result: Result<Vec<u64>, MapperError>,
    ) {
        self.io.now_ms = now_ms;
        self.dir.intents_read_done(&mut self.io, token, result);
    }

    /// This node's copy of `page`, if it holds one.
    pub fn copy(&self, page: PageKey) -> Option<CopyInfo> {
        self.cache.copy(page)
    }

    /// What this node is asking the home for on `page`, if a request is in flight.
    pub fn pending_request(&self, page: PageKey) -> Option<Want> {
        self.cache.pending_want(page)
    }

    /// Every copy this node holds.
    pub fn copies(&self) -> impl Iterator<Item = (PageKey, CopyInfo)> + '_ {
        self.cache.copies()
    }

    /// The directory entry of `page`, if this node is its home and it was ever touched.
    pub fn dir_page(&self, page: PageKey) -> Option<DirView> {
        self.dir.view(page)
    }

    /// Whether nothing is in flight: no fault, call or home transaction waits.
    pub fn is_idle(&self) -> bool {
        self.cache.is_idle() && self.dir.is_idle()
    }

    /// How often each protocol branch ran on this node.
    pub fn coverage(&self) -> &Coverage {
        &self.io.cov
    }
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
