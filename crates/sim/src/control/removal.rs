//! The removal workload and its checkers: homes remove segments through the core's
//! `Removals` while processes attach them; a commit needs every asked node's prepare, a node
//! forgets only what its home committed, and a removed segment never comes back.

use super::{nid, ControlViolation, ControlWorld, Entry, Ev, Msg, REMOVAL};
use pagemesh_core::{RemovalError, RemovalMsg, RemovalOutput, RemovalStart};
use pagemesh_types::SegmentId;
use std::collections::BTreeMap;

/// The driver's check-and-mark: refuse new attachments, unless a process has `seg` attached.
fn mark(catalog: &mut BTreeMap<SegmentId, Entry>, seg: SegmentId) -> Result<(), String> {
    match catalog.get_mut(&seg) {
        None => Ok(()),
        Some(e) if e.attached > 0 => {
            Err(format!("{seg:?} is attached by {} process(es)", e.attached))
        }
        Some(e) => {
            e.marked = true;
            Ok(())
        }
    }
}

impl ControlWorld {
    fn removable(&self) -> Vec<SegmentId> {
        (0..self.cfg.removable)
            .map(|i| SegmentId(200 + i as u64))
            .collect()
    }

    /// A home starts removing one of its segments.
    pub(crate) fn start_a_removal(&mut self) -> Result<(), ControlViolation> {
        let segs = self.removable();
        if segs.is_empty() {
            return Ok(());
        }
        let seg = segs[self.rng.below(segs.len())];
        let h = self.homes[&seg];
        if !self.nodes[h].up || !self.nodes[h].catalog.contains_key(&seg) {
            return Ok(());
        }
        let peers: Vec<_> = (0..self.nodes.len()).filter(|j| *j != h).map(nid).collect();
        let file = self.files.contains(&seg);
        self.next_token += 1;
        let (now, req) = (self.now, self.next_token);
        self.log(|| format!("node{h} starts removing {seg:?}"));
        let n = &mut self.nodes[h];
        let (removals, catalog) = (&mut n.removals, &mut n.catalog);
        let mut out = Vec::new();
        let was_running = removals.is_running(seg);
        let ask = RemovalStart {
            seg,
            for_: req,
            peers,
            file,
        };
        removals.start(now, ask, || mark(catalog, seg), &mut out);
        if !was_running {
            if let Some(a) = removals.asked(seg) {
                self.attempts.insert(seg, a);
            }
        }
        self.exec_removal(h, out)
    }

    /// A removal message at `to`.
    pub(crate) fn removal_msg(
        &mut self,
        from: usize,
        from_epoch: u64,
        to: usize,
        m: RemovalMsg,
    ) -> Result<(), ControlViolation> {
        if let RemovalMsg::Prepared {
            seg,
            attempt,
            result: Ok(()),
        } = &m
        {
            self.prepared_ok.insert((*seg, *attempt, from), from_epoch);
        }
        let seg = m.seg();
        let now = self.now;
        let home = self.homes.get(&seg).map(|&h| nid(h));
        let n = &mut self.nodes[to];
        let (removals, catalog) = (&mut n.removals, &mut n.catalog);
        let mut out = Vec::new();
        removals.on_peer_message(now, nid(from), home, m, || mark(catalog, seg), &mut out);
        self.exec_removal(to, out)
    }

    /// A peer's catalog: take in what this node does not know and has no tombstone of.
    pub(crate) fn catalog(
        &mut self,
        to: usize,
        segs: Vec<SegmentId>,
    ) -> Result<(), ControlViolation> {
        for seg in segs {
            let n = &self.nodes[to];
            if n.catalog.contains_key(&seg) || n.tombstones.contains(&seg) {
                continue;
            }
            if self.committed.contains(&seg) {
                return Err(self.fail(format!(
                    "node{to} takes {seg:?} back from a catalog, though its removal was committed"
                )));
            }
            self.nodes[to].catalog.insert(seg, Entry::default());
        }
        Ok(())
    }

    /// Carry out what node `node`'s removal machine decided, checking each commit.
    pub(crate) fn exec_removal(
        &mut self,
        node: usize,
        out: Vec<RemovalOutput<u64>>,
    ) -> Result<(), ControlViolation> {
        for o in &out {
            if let RemovalOutput::Done { seg, result, .. } = o {
                if result == &Err(RemovalError::Running) {
                    // Refused: the removal already running is still the one recorded.
                    continue;
                }
                let attempt = self.attempts.remove(seg);
                match result {
                    Ok(()) => self.check_commit(node, *seg, attempt)?,
                    Err(e) => {
                        self.stats.not_removed += 1;
                        self.log(|| format!("node{node}: {seg:?} not removed: {e}"));
                    }
                }
            }
        }
        for o in out {
            match o {
                RemovalOutput::Send { to, msg } => {
                    self.send(node, to.0 as usize, Msg::Removal(msg))
                }
                RemovalOutput::Sync { seg } => {
                    let d = if self.rng.chance(0.05) {
                        self.rng.range(REMOVAL.sync_ms + 50, REMOVAL.sync_ms + 200)
                    } else {
                        self.rng.range(1, 60)
                    };
                    let epoch = self.nodes[node].epoch;
                    self.schedule(d, Ev::SyncDone { node, epoch, seg });
                }
                RemovalOutput::Forget { seg, prepared } => self.forget(node, seg, prepared)?,
                RemovalOutput::Refused { from, seg, why } => {
                    // No simulated node lies: a refusal is a driver or core bug.
                    return Err(self.fail(format!(
                        "node{node} refused {from}'s removal message about {seg:?}: {why}"
                    )));
                }
                RemovalOutput::Unmark { seg } => {
                    if let Some(e) = self.nodes[node].catalog.get_mut(&seg) {
                        e.marked = false;
                    }
                }
                RemovalOutput::Done { .. } => {}
            }
        }
        Ok(())
    }

    /// The home commits: every node it asked must have prepared, and (unless it restarted
    /// since) must still hold the prepare, with nothing attached.
    fn check_commit(
        &mut self,
        home: usize,
        seg: SegmentId,
        attempt: Option<(u64, Vec<pagemesh_types::NodeId>)>,
    ) -> Result<(), ControlViolation> {
        let Some((attempt, asked)) = attempt else {
            return Err(self.fail(format!(
                "node{home} committed a removal of {seg:?} nobody started"
            )));
        };
        for n in asked {
            let i = n.0 as usize;
            let Some(&epoch) = self.prepared_ok.get(&(seg, attempt, i)) else {
                return Err(self.fail(format!(
                    "node{home} committed the removal of {seg:?} (attempt {attempt}) though node{i} never prepared it"
                )));
            };
            let node = &self.nodes[i];
            if !node.up || node.epoch != epoch {
                self.stats.restarted_since_prepare += 1;
                continue;
            }
            let e = node.catalog.get(&seg).copied().unwrap_or_default();
            let held = node.removals.prepared_attempt(seg) == Some(attempt);
            if node.catalog.contains_key(&seg) && (!held || !e.marked || e.attached > 0) {
                return Err(self.fail(format!(
                    "node{home} committed the removal of {seg:?} while node{i} does not hold its prepare (prepare {held}, {e:?})"
                )));
            }
        }
        self.log(|| format!("node{home} COMMITS the removal of {seg:?}"));
        self.committed.insert(seg);
        self.stats.removed += 1;
        Ok(())
    }

    fn forget(
        &mut self,
        node: usize,
        seg: SegmentId,
        prepared: bool,
    ) -> Result<(), ControlViolation> {
        if !self.committed.contains(&seg) {
            return Err(self.fail(format!(
                "node{node} forgets {seg:?}, whose removal its home never committed"
            )));
        }
        let n = &mut self.nodes[node];
        if let Some(e) = n.catalog.get_mut(&seg) {
            if !prepared && e.attached > 0 {
                // As the engine: kept (and refused to new attachments) while attached.
                e.marked = true;
                self.stats.kept_attached += 1;
                return Ok(());
            }
        }
        n.catalog.remove(&seg);
        n.tombstones.insert(seg);
        self.log(|| format!("node{node} forgets {seg:?}"));
        Ok(())
    }

    /// A node's process attaches a removable segment for a while, or detaches it.
    pub(crate) fn attacher(&mut self, node: usize) {
        let epoch = self.nodes[node].epoch;
        let n = &mut self.nodes[node];
        if let Some(seg) = n.attached.take() {
            if let Some(e) = n.catalog.get_mut(&seg) {
                e.attached -= 1;
            }
            if self.faults_on {
                let d = self.rng.range(5, 100);
                self.schedule(d, Ev::Attacher { node, epoch });
            }
            return;
        }
        if !self.faults_on {
            return;
        }
        let segs = self.removable();
        if !segs.is_empty() {
            let seg = segs[self.rng.below(segs.len())];
            let n = &mut self.nodes[node];
            if let Some(e) = n.catalog.get_mut(&seg).filter(|e| !e.marked) {
                e.attached += 1;
                n.attached = Some(seg);
            }
        }
        let d = self.rng.range(20, 300);
        self.schedule(d, Ev::Attacher { node, epoch });
    }

    /// After quiescence every node agrees: a committed segment is gone everywhere (or kept,
    /// refused to new attachments, where a process had it attached when it heard); any other
    /// is present everywhere and attachable.
    pub(crate) fn final_removal_checks(&self) -> Result<(), ControlViolation> {
        for seg in self.removable() {
            for (i, n) in self.nodes.iter().enumerate() {
                let e = n.catalog.get(&seg);
                if n.removals.is_running(seg) || n.removals.is_prepared(seg) {
                    return Err(self.fail(format!(
                        "node{i} still runs or prepares a removal of {seg:?} after quiescence"
                    )));
                }
                if self.committed.contains(&seg) {
                    if e.is_some_and(|e| !e.marked) {
                        return Err(self.fail(format!(
                            "{seg:?} was removed, but node{i} still has it attachable"
                        )));
                    }
                } else if e.is_none_or(|e| e.marked) || n.tombstones.contains(&seg) {
                    return Err(self.fail(format!(
                        "{seg:?} was never removed, but node{i} lost it or refuses it: {e:?}"
                    )));
                }
            }
        }
        Ok(())
    }
}
