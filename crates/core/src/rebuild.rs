//! A home that restarts has lost its directory. It rebuilds each segment's from two sources:
//! what every node reports it holds (the copies are still valid: they were granted by the old
//! incarnation), and the durable write intents (pages that may have had versions newer than the
//! mapper's). A page with an intent and no surviving copy is poisoned; requests wait (are
//! dropped, and retransmitted by the nodes) until the rebuild is done.

use crate::coverage::Branch;
use crate::directory::{DirPage, Directory, Partial, Recovery};
use crate::ids::{CacheState, MapperError, MapperToken, PageKey, TxnId, Version};
use crate::io::Io;
use crate::msg::Msg;
use crate::output::{Event, Output};
use pagemesh_types::{NodeId, SegmentId};
use std::collections::{BTreeMap, BTreeSet};

type Reported = (NodeId, CacheState, Version, TxnId);

/// One `Msg::Holdings`.
pub(crate) struct Holdings {
    pub snapshot: u64,
    pub part: u32,
    pub parts: u32,
    pub copies: Vec<(u64, CacheState, Version, TxnId)>,
}

impl Directory {
    /// This home restarted: start rebuilding every segment homed here.
    pub(crate) fn start_rebuild(&mut self, io: &mut Io, peers: &[NodeId]) {
        let segs: Vec<SegmentId> = self.segs.keys().copied().collect();
        for seg in segs {
            io.hit(Branch::RebuildStarted);
            self.read_intents(io, seg);
            let waiting: BTreeSet<NodeId> = peers.iter().copied().filter(|p| *p != io.id).collect();
            for p in &waiting {
                io.send(*p, Msg::Recover { seg });
            }
            self.recovering.insert(
                seg,
                Recovery {
                    waiting,
                    next_retry_ms: io.retry_at(),
                    ..Recovery::default()
                },
            );
        }
    }

    fn read_intents(&mut self, io: &mut Io, seg: SegmentId) {
        let token = self.mapper.token();
        self.intent_reads.insert(token, seg);
        io.emit(Output::IntentRead { token, seg });
    }

    /// The intents of a segment were read (or the read failed: try again).
    pub(crate) fn intents_read_done(
        &mut self,
        io: &mut Io,
        token: MapperToken,
        result: Result<Vec<u64>, MapperError>,
    ) {
        let Some(seg) = self.intent_reads.remove(&token) else {
            return;
        };
        if !self.recovering.contains_key(&seg) {
            return;
        }
        match result {
            Ok(pages) => {
                if let Some(r) = self.recovering.get_mut(&seg) {
                    r.intents = Some(pages.into_iter().collect());
                }
                self.maybe_finish_rebuild(io, seg);
            }
            Err(e) => {
                io.event(Event::MapperFailed {
                    page: PageKey::new(seg, 0),
                    write: false,
                    error: format!("reading write intents: {}", e.0),
                });
                self.read_intents(io, seg);
            }
        }
    }

    /// A node reported what it holds of `seg`.
    /// One part of a node's report of what it holds of `seg`. The report counts once all its
    /// parts are in; parts of an older report (a retransmitted `Recover` was answered again)
    /// are dropped for the newer one's, never mixed with them.
    pub(crate) fn on_holdings(&mut self, io: &mut Io, from: NodeId, seg: SegmentId, h: Holdings) {
        let Some(r) = self.recovering.get_mut(&seg) else {
            return;
        };
        if !r.waiting.contains(&from) || h.parts == 0 || h.part >= h.parts {
            return;
        }
        let p = r.partial.entry(from).or_default();
        if h.snapshot < p.snapshot {
            return; // a late part of an older answer
        }
        if p.snapshot != h.snapshot {
            if p.snapshot != 0 {
                io.hit(Branch::HoldingsSnapshotReplaced);
            }
            *p = Partial {
                snapshot: h.snapshot,
                parts: h.parts,
                ..Partial::default()
            };
        }
        if p.parts != h.parts || !p.got.insert(h.part) {
            return; // a duplicate, or a lying node
        }
        p.copies.extend(h.copies);
        let complete = p.got.len() as u32 == p.parts || io.bugs.first_holdings_part_only;
        if !complete {
            return;
        }
        let p = r.partial.remove(&from).unwrap_or_default();
        r.waiting.remove(&from);
        for (page, state, version, grant) in p.copies {
            r.holdings.push((from, page, state, version, grant));
        }
        self.maybe_finish_rebuild(io, seg);
    }

    /// A peer restarted during a rebuild: it holds nothing (any more).
    pub(crate) fn rebuild_peer_restarted(&mut self, io: &mut Io, peer: NodeId) {
        let segs: Vec<SegmentId> = self.recovering.keys().copied().collect();
        for seg in segs {
            if let Some(r) = self.recovering.get_mut(&seg) {
                r.holdings.retain(|h| h.0 != peer);
                r.waiting.remove(&peer);
                r.partial.remove(&peer);
            }
            self.maybe_finish_rebuild(io, seg);
        }
    }

    /// Ask the peers that have not answered again.
    pub(crate) fn rebuild_tick(&mut self, io: &mut Io) {
        let now = io.now_ms;
        let retry = io.retry_at();
        for (seg, r) in self.recovering.iter_mut() {
            if r.next_retry_ms <= now {
                r.next_retry_ms = retry;
                for p in &r.waiting {
                    io.hit(Branch::RebuildRetransmit);
                    io.send(*p, Msg::Recover { seg: *seg });
                }
            }
        }
    }

    fn maybe_finish_rebuild(&mut self, io: &mut Io, seg: SegmentId) {
        let ready = self
            .recovering
            .get(&seg)
            .is_some_and(|r| r.waiting.is_empty() && r.intents.is_some());
        if !ready {
            return;
        }
        let Some(r) = self.recovering.remove(&seg) else {
            return;
        };
        let intents = r.intents.unwrap_or_default();
        let mut by_page: BTreeMap<u64, Vec<Reported>> = BTreeMap::new();
        for (n, page, state, version, grant) in r.holdings {
            by_page
                .entry(page)
                .or_default()
                .push((n, state, version, grant));
        }
        let pages: BTreeSet<u64> = intents
            .iter()
            .copied()
            .chain(by_page.keys().copied())
            .collect();
        let mut poisoned = 0;
        for pg in pages {
            let key = PageKey::new(seg, pg);
            let holders = by_page.remove(&pg).unwrap_or_default();
            let p = rebuild_page(io, key, intents.contains(&pg), holders);
            if p.poisoned {
                poisoned += 1;
            }
            self.pages.insert(key, p);
        }
        self.recovered.insert(seg);
        io.hit(Branch::RebuildDone);
        io.event(Event::Recovered { seg, poisoned });
    }
}

/// One page's directory entry from the copies reported and its write intent.
fn rebuild_page(io: &mut Io, key: PageKey, intent: bool, holders: Vec<Reported>) -> DirPage {
    let mut p = DirPage {
        intent,
        ..DirPage::default()
    };
    let Some(v) = holders.iter().map(|h| h.2).max() else {
        // Versions newer than the mapper's may have existed, and no copy survived.
        io.hit(Branch::RebuildPoison);
        p.version = Version(1);
        p.poisoned = true;
        io.event(Event::PagePoisoned {
            page: key,
            lost_with: Some(io.id),
        });
        return p;
    };
    p.version = v;
    p.durable = if intent && v.0 > 0 {
        Version(v.0 - 1)
    } else {
        v
    };
    for (n, state, version, grant) in holders {
        if version != v {
            io.protocol_error(format!(
                "{key}: {n} reported v{} during rebuild, another node holds v{}",
                version.0, v.0
            ));
            continue;
        }
        if state.is_exclusive() {
            p.owner = Some((n, grant));
        } else {
            p.sharers.insert(n, grant);
        }
    }
    p
}
