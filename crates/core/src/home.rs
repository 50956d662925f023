//! The home's handlers: requests and replies from nodes, and mapper completions. Each one
//! updates the directory entry and hands the page's transaction back to the planner.

use crate::coverage::Branch;
use crate::directory::{seg_range, Directory, Stage, SyncJob, Work};
use crate::ids::{
    CacheState, MapperError, MapperToken, PageData, PageKey, ReqId, TxnId, Version, Want,
};
use crate::io::Io;
use crate::msg::Msg;
use crate::output::Event;
use pagemesh_types::{NodeId, SegmentId};

impl Directory {
    /// Messages from nodes to this home.
    pub(crate) fn on_msg(&mut self, io: &mut Io, from: NodeId, msg: Msg) {
        match msg {
            Msg::Acquire {
                page,
                req,
                want,
                have,
            } => self.on_acquire(io, from, page, req, want, have),
            Msg::GrantAck { page, txn } => self.on_grant_ack(io, from, page, txn),
            Msg::FetchReply { page, txn, copy } => self.on_fetch_reply(io, from, page, txn, copy),
            Msg::InvalAck { page, txn } => self.on_inval_ack(io, from, page, txn),
            Msg::Evict { page } => self.on_evict(io, from, page),
            Msg::SyncReq { seg, req } => self.on_sync_req(io, from, seg, req),
            Msg::ClearPoison { page, req } => self.on_clear_poison(io, from, page, req),
            Msg::Holdings {
                seg,
                snapshot,
                part,
                parts,
                copies,
            } => {
                let h = crate::rebuild::Holdings {
                    snapshot,
                    part,
                    parts,
                    copies,
                };
                self.on_holdings(io, from, seg, h)
            }
            other => io.protocol_error(format!("home got a cache-bound message: {other}")),
        }
    }

    fn on_acquire(
        &mut self,
        io: &mut Io,
        from: NodeId,
        page: PageKey,
        req: ReqId,
        want: Want,
        have: Option<(Version, TxnId)>,
    ) {
        if self.recovering.contains_key(&page.seg) {
            io.hit(Branch::HomeRebuildingIgnored);
            return;
        }
        let max_queue = io.max_queue;
        let Some(p) = self.page_mut(io, page) else {
            return;
        };
        if let Some((r, deny)) = p.served.get(&from).copied() {
            if req <= r {
                if let (true, Some(reason)) = (req == r, deny) {
                    io.hit(Branch::HomeResendDeny);
                    io.send(from, Msg::Deny { page, req, reason });
                } else {
                    io.hit(Branch::HomeDuplicateRequest);
                }
                return;
            }
        }
        let same = |w: &Work| matches!(w, Work::Acquire { node, req: r, .. } if *node == from && *r == req);
        if p.txn.as_ref().is_some_and(|t| same(&t.work)) || p.queue.iter().any(same) {
            io.hit(Branch::HomeDuplicateRequest);
            return;
        }
        if p.queue.len() >= max_queue {
            io.hit(Branch::HomeQueueFull);
            return;
        }
        p.queue.push_back(Work::Acquire {
            node: from,
            req,
            want,
            have,
        });
        self.advance(io, page);
    }

    fn on_grant_ack(&mut self, io: &mut Io, from: NodeId, page: PageKey, txn: TxnId) {
        let Some(p) = self.pages.get_mut(&page) else {
            return;
        };
        let Some(t) = p.txn.as_ref().filter(|t| t.id == txn) else {
            io.hit(Branch::HomeStaleReply);
            return;
        };
        if !matches!(&t.stage, Stage::Grant { to, .. } if *to == from) {
            io.hit(Branch::HomeStaleReply);
            return;
        }
        if let Work::Acquire { node, req, .. } = t.work {
            p.served.insert(node, (req, None));
        }
        p.txn = None;
        self.advance(io, page);
    }

    fn on_fetch_reply(
        &mut self,
        io: &mut Io,
        from: NodeId,
        page: PageKey,
        txn: TxnId,
        copy: Option<(Version, PageData)>,
    ) {
        let Some(p) = self.pages.get_mut(&page) else {
            return;
        };
        let Some(t) = p.txn.as_mut().filter(|t| t.id == txn) else {
            io.hit(Branch::HomeStaleReply);
            return;
        };
        let then = match t.stage {
            Stage::Fetch { from: f, then } if f == from => then,
            _ => {
                io.hit(Branch::HomeStaleReply);
                return;
            }
        };
        t.stage = Stage::Plan;
        match copy {
            Some((v, data)) if v == p.version => {
                t.data = Some((v, data));
                if then == CacheState::Shared {
                    if let Some((o, g)) = p.owner.filter(|(o, _)| *o == from) {
                        p.owner = None;
                        p.sharers.insert(o, g);
                    }
                }
            }
            other => {
                if let Some((v, _)) = other {
                    io.protocol_error(format!(
                        "{page}: {from} sent v{} but the current version is v{}",
                        v.0, p.version.0
                    ));
                }
                io.hit(Branch::HomeFetchReplyNone);
                t.tried.insert(from);
                p.remove_holder(from);
            }
        }
        self.advance(io, page);
    }

    fn on_inval_ack(&mut self, io: &mut Io, from: NodeId, page: PageKey, txn: TxnId) {
        let Some(p) = self.pages.get_mut(&page) else {
            return;
        };
        let Some(t) = p.txn.as_mut().filter(|t| t.id == txn) else {
            io.hit(Branch::HomeStaleReply);
            return;
        };
        let Stage::Inval { pending } = &mut t.stage else {
            io.hit(Branch::HomeStaleReply);
            return;
        };
        if !pending.remove(&from) {
            io.hit(Branch::HomeStaleReply);
            return;
        }
        let done = pending.is_empty();
        if done {
            t.stage = Stage::Plan;
        }
        p.remove_holder(from);
        if done {
            self.advance(io, page);
        }
    }

    fn on_evict(&mut self, io: &mut Io, from: NodeId, page: PageKey) {
        if self.recovering.contains_key(&page.seg) {
            io.hit(Branch::HomeRebuildingIgnored);
            return;
        }
        let Some(p) = self.page_mut(io, page) else {
            return;
        };
        let queued = |w: &Work| *w == Work::Evict { node: from };
        if p.holder_grant(from).is_none()
            || p.txn.as_ref().is_some_and(|t| queued(&t.work))
            || p.queue.iter().any(queued)
        {
            return;
        }
        p.queue.push_back(Work::Evict { node: from });
        self.advance(io, page);
    }

    fn on_clear_poison(&mut self, io: &mut Io, from: NodeId, page: PageKey, req: ReqId) {
        if self.recovering.contains_key(&page.seg) {
            io.hit(Branch::HomeRebuildingIgnored);
            return;
        }
        let Some(p) = self.page_mut(io, page) else {
            return;
        };
        if p.cleared.get(&from).is_some_and(|r| req <= *r) {
            io.send(from, Msg::ClearPoisonDone { page, req });
            return;
        }
        let w = Work::ClearPoison { node: from, req };
        if p.txn.as_ref().is_some_and(|t| t.work == w) || p.queue.contains(&w) {
            return;
        }
        p.queue.push_back(w);
        self.advance(io, page);
    }

    fn on_sync_req(&mut self, io: &mut Io, from: NodeId, seg: SegmentId, req: ReqId) {
        if self.recovering.contains_key(&seg) {
            io.hit(Branch::HomeRebuildingIgnored);
            return;
        }
        if !self.segs.contains_key(&seg) {
            io.protocol_error(format!("sync of {seg}, which is not homed on {}", io.id));
            return;
        }
        if let Some((r, res)) = self.syncs_served.get(&(from, seg)).copied() {
            if req <= r {
                io.hit(Branch::SyncDuplicate);
                if let (true, Some(failed_pages)) = (req == r, res) {
                    io.send(
                        from,
                        Msg::SyncDone {
                            seg,
                            req,
                            failed_pages,
                        },
                    );
                }
                return;
            }
        }
        let dirty: Vec<PageKey> = self
            .pages
            .range(seg_range(seg))
            .filter(|(_, p)| p.version > p.durable)
            .map(|(k, _)| *k)
            .collect();
        if dirty.is_empty() {
            io.hit(Branch::SyncEmpty);
            self.syncs_served.insert((from, seg), (req, Some(0)));
            io.send(
                from,
                Msg::SyncDone {
                    seg,
                    req,
                    failed_pages: 0,
                },
            );
            return;
        }
        io.hit(Branch::SyncStarted);
        self.next_job += 1;
        let job = self.next_job;
        self.jobs.insert(
            job,
            SyncJob {
                node: from,
                seg,
                req,
                remaining: dirty.len(),
                failed: 0,
            },
        );
        self.syncs_served.insert((from, seg), (req, None));
        for page in dirty {
            if let Some(p) = self.pages.get_mut(&page) {
                p.queue.push_back(Work::Flush { job: Some(job) });
            }
            self.advance(io, page);
        }
    }

    /// A flush for sync job `job` ended.
    pub(crate) fn flush_done(&mut self, io: &mut Io, job: u64, ok: bool) {
        let Some(j) = self.jobs.get_mut(&job) else {
            return;
        };
        j.remaining -= 1;
        if !ok {
            j.failed += 1;
        }
        if j.remaining == 0 {
            if let Some(j) = self.jobs.remove(&job) {
                self.syncs_served
                    .insert((j.node, j.seg), (j.req, Some(j.failed)));
                io.send(
                    j.node,
                    Msg::SyncDone {
                        seg: j.seg,
                        req: j.req,
                        failed_pages: j.failed,
                    },
                );
            }
        }
    }

    pub(crate) fn mapper_read_done(
        &mut self,
        io: &mut Io,
        token: MapperToken,
        result: Result<PageData, MapperError>,
    ) {
        let Some(page) = self.mapper.ops.remove(&token) else {
            return;
        };
        let Some(p) = self.pages.get_mut(&page) else {
            return;
        };
        let version = p.version;
        let Some(t) = p
            .txn
            .as_mut()
            .filter(|t| t.stage == Stage::MapperRead { token })
        else {
            return;
        };
        match result {
            Ok(data) => t.data = Some((version, data)),
            Err(e) => {
                io.hit(Branch::HomeMapperReadFailed);
                io.event(Event::MapperFailed {
                    page,
                    write: false,
                    error: e.0,
                });
                t.failed = true;
            }
        }
        t.stage = Stage::Plan;
        self.advance(io, page);
    }

    pub(crate) fn mapper_write_done(
        &mut self,
        io: &mut Io,
        token: MapperToken,
        result: Result<(), MapperError>,
    ) {
        let Some(page) = self.mapper.ops.remove(&token) else {
            return;
        };
        let Some(p) = self.pages.get_mut(&page) else {
            return;
        };
        let Some(t) = p.txn.as_mut() else {
            return;
        };
        let Stage::MapperWrite { token: tk, version } = t.stage else {
            return;
        };
        if tk != token {
            return;
        }
        match result {
            Ok(()) => p.durable = p.durable.max(version),
            Err(e) => {
                io.event(Event::MapperFailed {
                    page,
                    write: true,
                    error: e.0,
                });
                io.hit(Branch::FlushMapperWriteFailed);
                t.failed = true;
            }
        }
        t.stage = Stage::Plan;
        self.advance(io, page);
    }

    pub(crate) fn intent_write_done(
        &mut self,
        io: &mut Io,
        token: MapperToken,
        result: Result<(), MapperError>,
    ) {
        let Some(page) = self.mapper.ops.remove(&token) else {
            return;
        };
        let Some(p) = self.pages.get_mut(&page) else {
            return;
        };
        let Some(t) = p.txn.as_mut() else {
            return;
        };
        let Stage::Intent { token: tk, dirty } = t.stage else {
            return;
        };
        if tk != token {
            return;
        }
        match result {
            Ok(()) => p.intent = dirty,
            Err(e) => {
                io.hit(Branch::HomeIntentFailed);
                io.event(Event::MapperFailed {
                    page,
                    write: true,
                    error: format!("write intent: {}", e.0),
                });
                t.failed = true;
            }
        }
        t.stage = Stage::Plan;
        self.advance(io, page);
    }
}
