//! The simulated processes: what they ask of their node, and what happens when the node answers.
//! Also the execution of the core's outputs against the simulated memory and mapper.

use crate::world::{fail, CallKind, Ev, Op, OpKind, Violation, World, RESIDENT_PROC};
use pagemesh_core::{
    Access, CallId, CallResult, Event, EvictStart, FaultId, FaultResult, Msg, Output, PageData,
    PageKey,
};
use pagemesh_types::{NodeId, SegmentId};

fn data_value(d: &PageData) -> Option<u64> {
    match d {
        PageData::Zero => Some(0),
        PageData::Bytes(b) if b.len() == 8 => {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Some(u64::from_le_bytes(a))
        }
        _ => None,
    }
}

fn bytes(v: u64) -> PageData {
    PageData::Bytes(v.to_le_bytes().to_vec())
}

impl World {
    fn random_page(&mut self) -> PageKey {
        let seg = SegmentId(self.rng.below(self.segs.len()) as u64);
        PageKey::new(seg, self.rng.range(0, self.cfg.pages - 1))
    }

    /// Process `proc` of node `node` issues its next operation.
    pub(crate) fn next_op(
        &mut self,
        node: usize,
        proc: usize,
        epoch: u64,
    ) -> Result<(), Violation> {
        let n = &self.nodes[node];
        if n.epoch != epoch || n.core.is_none() || n.procs[proc].1 || n.procs[proc].0 == 0 {
            return Ok(());
        }
        self.nodes[node].procs[proc].0 -= 1;
        if proc == RESIDENT_PROC {
            return self.resident_op(node, proc, epoch);
        }
        let now = self.now;
        let roll = self.rng.below(100);
        if roll < 4 {
            let seg = SegmentId(self.rng.below(self.segs.len()) as u64);
            let start_seq = self.model.tick();
            let call = CallId(self.new_id());
            self.log(|| format!("{} proc{proc}: sync {seg}", NodeId(node as u32)));
            self.nodes[node]
                .calls
                .insert(call, (CallKind::Sync { seg, start_seq }, proc));
            self.nodes[node].procs[proc].1 = true;
            if let Some(c) = self.nodes[node].core.as_mut() {
                c.sync(now, call, seg);
            }
            return self.run_outputs(node);
        }
        if roll < 10 {
            let page = self.random_page();
            self.stats.evictions += 1;
            let r = self.nodes[node]
                .core
                .as_mut()
                .map_or(EvictStart::NotHeld, |c| c.evict(now, page));
            self.log(|| format!("{} proc{proc}: evict {page}: {r:?}", NodeId(node as u32)));
            let d = self.rng.range(0, 20);
            self.schedule(d, Ev::Proc { node, proc, epoch });
            return self.run_outputs(node);
        }
        let page = self.random_page();
        let incr_only = self.model.pages.get(&page).is_some_and(|m| m.incr_only);
        let roll = self.rng.below(100);
        let kind = if incr_only {
            if roll < 70 {
                OpKind::Incr
            } else {
                OpKind::Read
            }
        } else if roll < 50 {
            OpKind::Read
        } else if roll < 85 {
            OpKind::Write(self.rng.range(1, u64::MAX >> 1))
        } else {
            OpKind::Incr
        };
        self.nodes[node].procs[proc].1 = true;
        let issued_seq = self.model.tick();
        self.issue(
            node,
            Op {
                page,
                kind,
                proc: Some(proc),
                issued_seq,
                started_ms: now,
            },
        )
    }

    /// The cache-resident process: reads a page its node holds, or writes one it holds in M
    /// (local hits only); idles when the node holds nothing.
    fn resident_op(&mut self, node: usize, proc: usize, epoch: u64) -> Result<(), Violation> {
        let held: Vec<(PageKey, bool)> = self.nodes[node]
            .core
            .as_ref()
            .map(|c| {
                c.copies()
                    .map(|(p, c)| (p, c.state == pagemesh_core::CacheState::Modified))
                    .collect()
            })
            .unwrap_or_default();
        if held.is_empty() {
            let d = self.rng.range(10, 100);
            self.schedule(d, Ev::Proc { node, proc, epoch });
            return Ok(());
        }
        let (page, modified) = held[self.rng.below(held.len())];
        let incr_only = self.model.pages.get(&page).is_some_and(|m| m.incr_only);
        let kind = if modified && self.rng.chance(0.3) {
            if incr_only {
                OpKind::Incr
            } else {
                OpKind::Write(self.rng.range(1, u64::MAX >> 1))
            }
        } else {
            OpKind::Read
        };
        self.nodes[node].procs[proc].1 = true;
        let issued_seq = self.model.tick();
        let started_ms = self.now;
        self.issue(
            node,
            Op {
                page,
                kind,
                proc: Some(proc),
                issued_seq,
                started_ms,
            },
        )
    }

    /// Node `node` starts (or, after a wait for a lease, resumes) an access: a fault into its
    /// core. With leases, an access whose node does not hold the lease of the page's home
    /// waits first (as the daemon parks such a fault before the core sees it).
    pub(crate) fn issue(&mut self, node: usize, op: Op) -> Result<(), Violation> {
        if !self.lease_gate(node, op.page) {
            return self.park(node, op);
        }
        let fault = FaultId(self.new_id());
        let access = if op.kind == OpKind::Read {
            Access::Read
        } else {
            Access::Write
        };
        self.log(|| {
            format!(
                "{} fault{} {:?} {}",
                NodeId(node as u32),
                fault.0,
                op.kind,
                op.page
            )
        });
        self.nodes[node].ops.insert(fault, op);
        let now = self.now;
        if let Some(c) = self.nodes[node].core.as_mut() {
            c.fault(now, fault, op.page, access);
        }
        self.run_outputs(node)
    }

    /// Read every page from some node and check it against the model.
    pub(crate) fn start_audit(&mut self) -> Result<(), Violation> {
        self.log(|| "AUDIT: reading every page".into());
        let pages: Vec<PageKey> = self.model.pages.keys().copied().collect();
        for (k, page) in pages.into_iter().enumerate() {
            let node = k % self.nodes.len();
            let issued_seq = self.model.tick();
            let started_ms = self.now;
            self.issue(
                node,
                Op {
                    page,
                    kind: OpKind::Read,
                    proc: None,
                    issued_seq,
                    started_ms,
                },
            )?;
        }
        Ok(())
    }

    fn proc_done(&mut self, node: usize, proc: Option<usize>) {
        let Some(proc) = proc else {
            return;
        };
        self.nodes[node].procs[proc].1 = false;
        let epoch = self.nodes[node].epoch;
        // The resident process goes slower, so that it is still at work when its node has
        // been cut off for longer than the dead-peer limit.
        let d = if proc == RESIDENT_PROC {
            self.rng.range(10, 100)
        } else {
            self.rng.range(0, 20)
        };
        self.schedule(d, Ev::Proc { node, proc, epoch });
    }

    /// Execute everything node `i`'s core asked for.
    pub(crate) fn run_outputs(&mut self, i: usize) -> Result<(), Violation> {
        loop {
            let outs = match self.nodes[i].core.as_mut() {
                Some(c) => c.take_outputs(),
                None => return Ok(()),
            };
            if outs.is_empty() {
                return Ok(());
            }
            for o in outs {
                self.output(i, o)?;
            }
        }
    }

    fn output(&mut self, i: usize, o: Output) -> Result<(), Violation> {
        let me = NodeId(i as u32);
        match o {
            Output::Send(mut env) => {
                self.resolve_local(i, &mut env.msg)?;
                self.log(|| format!("send {env}"));
                self.note_grant_to_dead(&env);
                self.send(env);
            }
            Output::Install {
                page,
                data,
                writable,
            } => {
                let Some(v) = data_value(&data) else {
                    return Err(fail(
                        self,
                        Some(page),
                        format!("{me}: install of unresolved data"),
                    ));
                };
                self.log(|| format!("{me} install {page} = {v} writable={writable}"));
                self.nodes[i].mem.insert(page, v);
            }
            Output::Invalidate { page } => {
                self.log(|| format!("{me} invalidate {page}"));
                self.nodes[i].mem.remove(&page);
            }
            Output::Unprotect { .. } | Output::Downgrade { .. } => {}
            o @ (Output::MapperRead { .. }
            | Output::MapperWrite { .. }
            | Output::IntentWrite { .. }
            | Output::IntentRead { .. }) => self.start_io(i, o)?,
            Output::FaultDone {
                fault,
                page,
                result,
            } => self.fault_done(i, fault, page, result)?,
            Output::CallDone { call, result } => self.call_done(i, call, result),
            Output::Event(e) => self.event(i, e)?,
        }
        Ok(())
    }

    fn resolve_local(&mut self, i: usize, msg: &mut Msg) -> Result<(), Violation> {
        let page = msg.page();
        let slot = match msg {
            Msg::FetchReply {
                copy: Some((_, d)), ..
            } => d,
            Msg::Grant { data: Some(d), .. } => d,
            _ => return Ok(()),
        };
        if *slot == PageData::Local {
            let Some(v) = page.and_then(|p| self.nodes[i].mem.get(&p).copied()) else {
                return Err(fail(
                    self,
                    page,
                    format!("node{i} sent its copy of a page it does not hold"),
                ));
            };
            *slot = bytes(v);
        }
        Ok(())
    }

    fn event(&mut self, i: usize, e: Event) -> Result<(), Violation> {
        self.log(|| match &e {
            Event::PagePoisoned { page, lost_with } => {
                format!("node{i} POISONED {page} (lost with {lost_with:?})")
            }
            Event::PoisonCleared { page } => format!("node{i} poison cleared on {page}"),
            other => format!("node{i} event {other:?}"),
        });
        match e {
            Event::PagePoisoned { page, .. } | Event::PoisonCleared { page }
                if self.diverged_page(i, page) =>
            {
                // A directory that declared live peers dead from a minority side: not the
                // cluster's view (what it leaves in the mapper and the intents is).
                Ok(())
            }
            Event::PagePoisoned { page, .. } => {
                self.stats.poisoned += 1;
                self.model
                    .poisoned(page)
                    .map_err(|m| fail(self, Some(page), m))
            }
            Event::PoisonCleared { page } => {
                let v = self.mapper.get(&page).copied().unwrap_or(0);
                self.model.cleared(page, v);
                Ok(())
            }
            Event::PeerRestarted { .. } | Event::MapperFailed { .. } | Event::Recovered { .. } => {
                Ok(())
            }
            Event::ProtocolError { what } => {
                Err(fail(self, None, format!("node{i}: protocol error: {what}")))
            }
        }
    }

    fn fault_done(
        &mut self,
        i: usize,
        fault: FaultId,
        page: PageKey,
        result: FaultResult,
    ) -> Result<(), Violation> {
        let Some(op) = self.nodes[i].ops.remove(&fault) else {
            return Err(fail(
                self,
                Some(page),
                format!("node{i}: completion of unknown fault{}", fault.0),
            ));
        };
        self.log(|| format!("node{i} fault{} done {result:?}", fault.0));
        match result {
            FaultResult::Ok if !self.lease_gate(i, page) => {
                // The copy is there, but it may not be used without the lease: the access
                // waits (its process stays blocked) and faults again once the lease returns.
                return self.park(i, op);
            }
            FaultResult::Ok => self.apply(i, op)?,
            FaultResult::Poisoned => {
                self.stats.sigbus += 1;
                if self.cfg.leases || !self.fenced_view(i, page) {
                    self.model
                        .check_poisoned_fault(page, op.issued_seq)
                        .map_err(|m| fail(self, Some(page), m))?;
                }
                if self.rng.chance(0.5) {
                    let call = CallId(self.new_id());
                    let now = self.now;
                    self.nodes[i]
                        .calls
                        .insert(call, (CallKind::Clear, usize::MAX));
                    if let Some(c) = self.nodes[i].core.as_mut() {
                        c.clear_poison(now, call, page);
                    }
                }
            }
            FaultResult::MapperFailed if !self.cfg.leases && self.fenced_view(i, page) => {
                self.stats.sigbus += 1;
            }
            FaultResult::MapperFailed => {
                self.stats.sigbus += 1;
                self.model
                    .check_mapper_failed_fault(page, op.issued_seq)
                    .map_err(|m| fail(self, Some(page), m))?;
            }
            FaultResult::TimedOut | FaultResult::UnknownSegment => {
                return Err(fail(
                    self,
                    Some(page),
                    format!("node{i}: fault on {page} ended {result:?}"),
                ));
            }
        }
        self.proc_done(i, op.proc);
        Ok(())
    }

    /// The fault is resolved: perform the access on the node's memory and check it.
    fn apply(&mut self, i: usize, op: Op) -> Result<(), Violation> {
        let page = op.page;
        let copy = self.nodes[i].core.as_ref().and_then(|c| c.copy(page));
        let Some(copy) = copy else {
            return Err(fail(
                self,
                Some(page),
                format!("node{i}: fault completed but no copy is held"),
            ));
        };
        if op.kind != OpKind::Read && copy.state != pagemesh_core::CacheState::Modified {
            return Err(fail(
                self,
                Some(page),
                format!("node{i}: write fault completed in state {:?}", copy.state),
            ));
        }
        let Some(v) = self.nodes[i].mem.get(&page).copied() else {
            return Err(fail(
                self,
                Some(page),
                format!("node{i}: copy held but not installed"),
            ));
        };
        if self.fenced_view(i, page) {
            if !self.cfg.leases {
                return self.apply_orphaned(i, op, v);
            }
            // With leases, the window is closed: whatever completes here is checked below
            // like any other access. It completed under the lease of the page's home, so
            // that home heard this node within `dead_after_ms / 2` and still counts it (the
            // node was declared dead by others, or the home has not declared it yet).
            match op.kind {
                OpKind::Read => {
                    self.stats.fenced_reads += 1;
                    let m = self.model.pages.get(&page);
                    if m.is_none_or(|m| m.poisoned || m.value != v) {
                        self.stats.fenced_stale_reads += 1;
                    }
                }
                _ => self.stats.fenced_writes += 1,
            }
            self.log(|| {
                format!(
                    "node{i} {:?} {page} on a fenced node, under the lease of its home (checked)",
                    op.kind
                )
            });
        } else if self.nodes[i].fenced && op.kind == OpKind::Read {
            self.stats.fenced_home_side_reads += 1;
        }
        let r = match op.kind {
            OpKind::Read => {
                self.stats.reads += 1;
                self.model.check_read(page, v)
            }
            OpKind::Write(x) => {
                self.stats.writes += 1;
                self.nodes[i].mem.insert(page, x);
                self.model.write(page, x);
                Ok(())
            }
            OpKind::Incr => {
                self.stats.incrs += 1;
                self.nodes[i].mem.insert(page, v.wrapping_add(1));
                self.model.incr(page, v)
            }
        };
        self.log(|| format!("node{i} {:?} {page} saw {v}", op.kind));
        r.map_err(|m| fail(self, Some(page), format!("node{i}: {m}")))
    }

    /// An access on a node that was declared dead and has not stopped yet, to a copy its home
    /// no longer counts: the reads are the stale-read window (counted, not checked); the writes
    /// stay on the node's orphaned copy and die with it when it stops.
    fn apply_orphaned(&mut self, i: usize, op: Op, v: u64) -> Result<(), Violation> {
        let page = op.page;
        let m = self.model.pages.get(&page);
        let stale = m.is_none_or(|m| m.poisoned || m.value != v);
        match op.kind {
            OpKind::Read => {
                self.stats.fenced_reads += 1;
                if stale {
                    self.stats.fenced_stale_reads += 1;
                }
            }
            OpKind::Write(x) => {
                self.stats.fenced_writes += 1;
                self.nodes[i].mem.insert(page, x);
            }
            OpKind::Incr => {
                self.stats.fenced_writes += 1;
                self.nodes[i].mem.insert(page, v.wrapping_add(1));
            }
        }
        self.log(|| {
            format!(
                "node{i} {:?} {page} saw {v} on a fenced node (not checked{})",
                op.kind,
                if stale { ", stale" } else { "" }
            )
        });
        Ok(())
    }

    fn call_done(&mut self, i: usize, call: CallId, result: CallResult) {
        let Some((kind, proc)) = self.nodes[i].calls.remove(&call) else {
            return;
        };
        self.log(|| format!("node{i} call{} done {result:?}", call.0));
        if let (CallKind::Sync { seg, start_seq }, CallResult::Ok) = (kind, result) {
            self.stats.syncs += 1;
            // A sync served by a directory that declared live peers dead from a minority side
            // did not flush the copies in use elsewhere: it proves nothing.
            let home = self.home_of(PageKey::new(seg, 0));
            if !home.is_some_and(|h| self.diverged(h)) {
                let pages: Vec<PageKey> =
                    (0..self.cfg.pages).map(|p| PageKey::new(seg, p)).collect();
                self.model.synced(pages.into_iter(), start_seq);
            }
        }
        if proc != usize::MAX {
            self.proc_done(i, Some(proc));
        }
    }
}
