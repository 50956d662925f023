//! Executing the core's outputs against the kernel (memfd, uffds), the mappers, the intent logs and the transport; segment I/O jobs; completions that must be durable before the core hears of them.

use std::collections::HashMap;
use std::sync::mpsc::Sender;
use std::sync::Arc;

use pagemesh_core::{
    Access, CallResult, Envelope, Event, FaultId, MapperError, Output, PageData, PageKey,
};
use pagemesh_proto::peer::PeerFrame;
use pagemesh_types::SegmentId;
use pagemesh_uffd::Protect;

use crate::io::{IoFailure, IoJob};
use crate::transport::msg_data;
use pagemesh_node::pages::PageState;
use pagemesh_node::segment::Segment;

use super::{
    bump, fail_stop, CallFor, Durable, Engine, Later, Pending, Target, PS, RECENT_INVALIDATIONS,
    ZERO_PAGE,
};

impl Engine {
    pub(super) fn start_io(
        &mut self,
        seg: SegmentId,
        offset: u64,
        len: u64,
        data: Option<Vec<u8>>,
        reply: Sender<Result<Vec<u8>, IoFailure>>,
    ) {
        if self.segs.get(&seg).is_some_and(|s| s.is_marked_removed()) {
            let _ = reply.send(Err(IoFailure::BeingRemoved));
            return;
        }
        if let Some(home) = self.home_of(seg) {
            if !self.lease(home) {
                let silent_ms = self.membership.lease_ms();
                let _ = reply.send(Err(IoFailure::NoLease { home, silent_ms }));
                return;
            }
        }
        let now = self.now();
        let write = data.is_some();
        let buf = data.unwrap_or_else(|| vec![0; len as usize]);
        if buf.is_empty() {
            let _ = reply.send(Ok(buf));
            return;
        }
        let first = offset / PS;
        let last = (offset + buf.len() as u64 - 1) / PS;
        let pages = (last - first + 1) as usize;
        if let Err(full) = self.faults.room(pages).and(self.ios.room(1)) {
            let _ = reply.send(Err(IoFailure::Busy(full)));
            return;
        }
        let job = IoJob {
            seg,
            offset,
            buf,
            write,
            remaining: pages,
            error: None,
            reply,
        };
        let id = self.ios.insert(job).expect("room was checked");
        let access = if write { Access::Write } else { Access::Read };
        for p in first..=last {
            let key = PageKey::new(seg, p);
            let pending = Pending {
                target: Target::Io { io: id },
                access,
            };
            let fid = self.faults.insert(pending).expect("room was checked");
            self.node.fault(now, FaultId(fid), key, access);
        }
    }

    /// Execute outputs until the core has nothing more to say; durable completions (mapper
    /// writes, intents) are reported after one sync per file for the whole round.
    pub(super) fn pump(&mut self) {
        loop {
            self.node.drain_outputs(&mut self.outs);
            if self.outs.is_empty() {
                if let Some(l) = self.later.pop_front() {
                    let now = self.now();
                    match l {
                        Later::Step(env) => self.node.step(now, env),
                        Later::MapperRead(t, r) => self.node.mapper_read_done(now, t, r),
                        Later::IntentRead(t, r) => self.node.intents_read_done(now, t, r),
                        Later::MapperWrite(t, r) => self.node.mapper_write_done(now, t, r),
                        Later::Intent(t, r) => self.node.intent_write_done(now, t, r),
                    }
                    continue;
                }
                // Mapper and intent writes are made durable once per round of the event loop
                // (`flush_durable`), so concurrent faults share one fsync.
                return;
            }
            let outs = std::mem::take(&mut self.outs);
            for o in &outs {
                self.exec(o);
            }
            let mut outs = outs;
            outs.clear();
            self.outs = outs;
        }
    }

    pub(super) fn seg(&self, page: PageKey) -> Option<&Arc<Segment>> {
        let s = self.segs.get(&page.seg);
        if s.is_none() {
            log::error!("cluster engine: {page} is not a segment of this node (a bug)");
        }
        s
    }

    /// Execute one output of the core, in the order the core gave it.
    pub(super) fn exec(&mut self, o: &Output) {
        match o {
            Output::Send(env) => self.exec_send(env),
            Output::Install {
                page,
                data,
                writable,
            } => self.exec_install(*page, data, *writable),
            Output::Unprotect { page } => {
                if let Some(s) = self.seg(*page).cloned() {
                    self.protect(&s, *page, Protect::Writable);
                }
            }
            Output::Downgrade { page } => {
                bump(&self.figures.downgrades);
                if let Some(s) = self.seg(*page).cloned() {
                    self.protect(&s, *page, Protect::ReadOnly);
                }
            }
            Output::Invalidate { page } => self.exec_invalidate(*page),
            Output::MapperRead { token, page } => {
                let Some(s) = self.seg(*page).cloned() else {
                    return;
                };
                let mut b = vec![0u8; PS as usize];
                let r = match s.mapper.read_page(page.page.0 * PS, &mut b) {
                    Ok(pagemesh_store::PageData::Filled) => Ok(PageData::Bytes(b)),
                    Ok(pagemesh_store::PageData::Dormant) => Ok(PageData::Zero),
                    Err(e) => Err(MapperError(e.to_string())),
                };
                self.later.push_back(Later::MapperRead(*token, r));
            }
            Output::MapperWrite { token, page, data } => {
                let Some(s) = self.seg(*page).cloned() else {
                    return;
                };
                let bytes: &[u8] = match data {
                    PageData::Bytes(b) => b,
                    _ => &ZERO_PAGE,
                };
                let r = s
                    .mapper
                    .write_at(page.page.0 * PS, bytes)
                    .map_err(|e| MapperError(e.to_string()));
                self.durable
                    .push((page.seg, Durable::MapperWrite(*token, r)));
            }
            Output::IntentWrite { token, page, dirty } => {
                let r = match self.intents.get_mut(&page.seg) {
                    Some(l) => l
                        .append(page.page.0, *dirty)
                        .map_err(|e| MapperError(format!("write-intent log: {e}"))),
                    None => Err(MapperError("no write-intent log for this segment".into())),
                };
                self.durable.push((page.seg, Durable::Intent(*token, r)));
            }
            Output::IntentRead { token, seg } => {
                let r = match self.intents.get(seg) {
                    Some(l) => Ok(l.pages()),
                    None => Err(MapperError("no write-intent log for this segment".into())),
                };
                self.later.push_back(Later::IntentRead(*token, r));
            }
            Output::FaultDone {
                fault,
                page,
                result,
            } => self.fault_done(fault.0, *page, *result),
            Output::CallDone { call, result } => self.call_done(call.0, *result),
            Output::Event(e) => self.event(e),
        }
    }

    pub(super) fn exec_send(&mut self, env: &Envelope) {
        // `Local` is the local copy as of now, after the outputs before this send: it must be
        // read here even for a message to this node itself (a later output of the same round
        // may invalidate the copy before the message is used).
        let mut env = env.clone();
        let page = env.msg.page();
        if let Some(d) = msg_data(&mut env.msg) {
            if *d == PageData::Local {
                let page = page.expect("a message with data names its page");
                let mut b = vec![0u8; PS as usize];
                let Some(s) = self.seg(page) else {
                    return;
                };
                if let Err(e) = s.memfd.read_exact_at(&mut b, page.page.0 * PS) {
                    fail_stop(&format!(
                        "{page}: reading the local copy to send failed: {e}"
                    ));
                }
                *d = PageData::Bytes(b);
            }
        }
        if env.to == self.me() {
            self.later.push_back(Later::Step(env));
            return;
        }
        self.send_peer(env.to, PeerFrame::Protocol(env));
    }

    /// Write a copy the core accepted into the page cache (the memfd).
    pub(super) fn exec_install(&mut self, page: PageKey, data: &PageData, writable: bool) {
        let Some(s) = self.seg(page).cloned() else {
            return;
        };
        let bytes: &[u8] = match data {
            PageData::Zero => &ZERO_PAGE,
            PageData::Bytes(b) if b.len() == PS as usize => {
                bump(&self.figures.remote_fetches);
                b
            }
            PageData::Bytes(b) => {
                log::error!(
                    "{page}: a copy of {} bytes arrived, not a page; dropped (a bug or a lying peer)",
                    b.len()
                );
                let _ = s.memfd.punch_hole(page.page.0 * PS, PS);
                return;
            }
            PageData::Local => return,
        };
        if let Err(e) = s.memfd.write_all_at(bytes, page.page.0 * PS) {
            fail_stop(&format!(
                "{page}: installing the copy in the page cache failed: {e}"
            ));
        }
        // Counted in the memory pool from now on.
        s.set_state(page.page.0, PageState::Clean);
        if writable {
            self.protect(&s, page, Protect::Writable);
        }
    }

    /// Drop the local copy (punch-hole zaps it in every process), ending its eviction if the
    /// pool asked for one.
    pub(super) fn exec_invalidate(&mut self, page: PageKey) {
        bump(&self.figures.invalidations);
        let Some(s) = self.seg(page).cloned() else {
            return;
        };
        if let Err(e) = s.memfd.punch_hole(page.page.0 * PS, PS) {
            fail_stop(&format!(
                "{page}: dropping the local copy (punch-hole) failed: {e}"
            ));
        }
        s.set_state(page.page.0, PageState::Absent);
        if self.recently_invalidated.len() == RECENT_INVALIDATIONS {
            self.recently_invalidated.pop_front();
        }
        self.recently_invalidated.push_back(page);
        if self.evicting.remove(&page).is_some() {
            if let Some(m) = &s.memory {
                m.pool.cluster_evict_done(&m.partition, None);
            }
        }
    }

    /// A sync the core ran ended: for a removal, a clear-poison job or a client.
    pub(super) fn call_done(&mut self, call: u64, result: CallResult) {
        let Some(for_) = self.calls.remove(call) else {
            return;
        };
        let r = match for_ {
            CallFor::Removal(seg) => {
                let result = match result {
                    CallResult::Ok => Ok(()),
                    other => Err(format!(
                        "writing its dirty pages back to its file failed ({other:?})"
                    )),
                };
                return self.removal_synced(seg, result);
            }
            CallFor::Clear(job) => {
                self.clear_step(job, Some(result));
                return;
            }
            CallFor::Client(r) => r,
        };
        let _ = r.send(match result {
            CallResult::Ok => Ok(()),
            CallResult::Failed { pages } => Err(format!(
                "{pages} page(s) could not be made durable (poisoned, or the home's mapper failed)"
            )),
            CallResult::TimedOut => Err("the segment's home did not answer in time".into()),
            CallResult::UnknownSegment => Err("not a cluster segment of this node".into()),
        });
    }

    pub(super) fn event(&mut self, e: &Event) {
        match e {
            Event::PagePoisoned { page, lost_with } => log::error!(
                "{page} is poisoned: its only valid copy was lost{}; accesses get SIGBUS",
                lost_with.map_or(String::new(), |n| format!(" with {n}"))
            ),
            Event::Recovered { seg, poisoned } => log::warn!(
                "segment id {}: directory rebuilt after this home restarted; {poisoned} page(s) poisoned",
                seg.0
            ),
            Event::PoisonCleared { page } => log::info!("{page}: poison cleared"),
            Event::PeerRestarted { peer } => {
                log::warn!("{peer} restarted: what its earlier incarnation held is dropped");
                self.forget_node(*peer, false);
            }
            Event::MapperFailed { page, write, error } => log::error!(
                "{page}: mapper {} failed: {error}",
                if *write { "write" } else { "read" }
            ),
            Event::ProtocolError { what } => log::warn!("protocol error (ignored): {what}"),
        }
    }

    /// Make this round's mapper and intent writes durable (one fsync per file) and report
    /// them to the core, until nothing more is waiting.
    pub(super) fn flush_durable(&mut self) {
        while !self.durable.is_empty() {
            self.complete_durable();
            self.pump();
        }
    }

    pub(super) fn complete_durable(&mut self) {
        let work = std::mem::take(&mut self.durable);
        let mut mapper_ok: HashMap<SegmentId, Result<(), MapperError>> = HashMap::new();
        let mut intent_ok: HashMap<SegmentId, Result<(), MapperError>> = HashMap::new();
        for (seg, d) in &work {
            match d {
                Durable::MapperWrite(..) => {
                    mapper_ok
                        .entry(*seg)
                        .or_insert_with(|| match self.segs.get(seg) {
                            Some(s) => s.mapper.sync().map_err(|e| MapperError(e.to_string())),
                            None => Err(MapperError("segment gone".into())),
                        });
                }
                Durable::Intent(..) => {
                    intent_ok
                        .entry(*seg)
                        .or_insert_with(|| match self.intents.get_mut(seg) {
                            Some(l) => l
                                .sync()
                                .map_err(|e| MapperError(format!("write-intent log: {e}"))),
                            None => Err(MapperError("no write-intent log".into())),
                        });
                }
            }
        }
        for (seg, d) in work {
            match d {
                Durable::MapperWrite(t, r) => {
                    let r = r.and(mapper_ok[&seg].clone());
                    self.later.push_back(Later::MapperWrite(t, r));
                }
                Durable::Intent(t, r) => {
                    let r = r.and(intent_ok[&seg].clone());
                    self.later.push_back(Later::Intent(t, r));
                }
            }
        }
    }
}
