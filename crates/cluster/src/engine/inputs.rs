//! What the other threads ask of the engine ([`Input`]), one method a kind; and taking part in a segment.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Instant;

use pagemesh_core::{CacheState, CallId, Epoch, PageKey};
use pagemesh_proto::peer::{Control, PeerFrame};
use pagemesh_proto::{ClusterStatus, SegmentInfo};
use pagemesh_types::{NodeId, SegmentId};

use crate::fatal::{self, Fatal};
use crate::files;
use crate::input::{ClusterSegStat, Input};
use crate::peer_stream::InboundStream;
use pagemesh_node::pages::PageState;
use pagemesh_node::segment::{Attachment, Segment};

use super::{
    CallFor, ClearFor, Conn, Engine, RemoveFor, Route, StatusWait, CONN_TOKEN, STATUS_WAIT,
    UFFD_TOKEN,
};

impl Engine {
    /// Dispatch one input; each kind is served by a method of its own.
    pub(super) fn input(&mut self, input: Input) {
        match input {
            Input::Attach(att) => self.on_attach(att),
            Input::Detach(id) => self.detach(id),
            Input::Inbound {
                from,
                epoch,
                stream,
            } => self.on_inbound(from, epoch, stream),
            Input::PeerConnected(peer) => self.on_peer_connected(peer),
            Input::Fenced { by, reason } => {
                let epoch = self.node.epoch().0;
                fatal::stop(Fatal::Fenced { by, reason, epoch })
            }
            Input::Created(seg) => {
                let info = seg.info.clone();
                self.adopt(seg);
                self.broadcast(Control::Catalog {
                    segments: vec![info],
                });
            }
            Input::CreateRemote {
                home,
                name,
                size_bytes,
                backing,
                owner,
                reply,
            } => {
                let req = self.req_id();
                self.creates.insert(req, (reply, Instant::now(), home));
                let msg = Control::CreateSegment {
                    req,
                    name,
                    size_bytes,
                    backing,
                    owner,
                };
                self.send_peer(home, PeerFrame::Control(msg));
            }
            Input::SetOwner(r, reply) => self.set_owner(r, reply),
            Input::Sync { seg, reply } => {
                if let Err(full) = self.calls.room(1) {
                    let _ = reply.send(Err(full.to_string()));
                    return;
                }
                let id = self
                    .calls
                    .insert(CallFor::Client(reply))
                    .expect("room was checked");
                let now = self.now();
                self.node.sync(now, CallId(id), seg);
            }
            Input::Io {
                seg,
                offset,
                len,
                data,
                reply,
            } => self.start_io(seg, offset, len, data, reply),
            Input::Remove {
                seg,
                uid,
                gids,
                reply,
            } => self.on_remove(seg, (uid, gids), reply),
            Input::Evict { seg, page } => self.on_evict(seg, page),
            Input::ClearPoison { seg, reply } => self.on_clear_poison(seg, reply),
            Input::Stat { seg, reply } => {
                let _ = reply.send(self.seg_stat(seg));
            }
            Input::Barrier {
                seg,
                barrier,
                parties,
                token,
                reply,
            } => self.on_barrier(seg, barrier, parties, token, reply),
            Input::Forget { token } => self.on_forget(token),
            Input::Lock {
                seg,
                lock,
                token,
                reply,
            } => self.on_lock(seg, lock, token, reply),
            Input::Unlock { seg, lock, token } => self.on_unlock(seg, lock, token),
            Input::Status { reply } => self.on_status(reply),
            Input::StopFaults { reply } => {
                log::info!("cluster: no more faults are served here (shutting down)");
                self.faults_stopped = true;
                let _ = reply.send(());
            }
        }
    }

    /// Where the work on `seg` is done: here (this node is its home), at its home, or nowhere
    /// (not a cluster segment of this node).
    pub(super) fn route(&self, seg: SegmentId) -> Route {
        match self.home_of(seg) {
            Some(h) if h == self.me() => Route::Here,
            Some(h) => Route::Home(h),
            None => Route::Unknown,
        }
    }

    pub(super) fn on_attach(&mut self, att: Arc<Attachment>) {
        let id = att.id;
        match self.epoll.add(att.uffd.as_fd(), UFFD_TOKEN | id) {
            Ok(()) => {
                self.attachments.insert(id, att);
            }
            Err(e) => {
                log::error!(
                    "pid {}: cannot watch its uffd: {e}; closing its lease so it fails loudly",
                    att.pid
                );
                if let Some(l) = &att.lease {
                    let _ = l.shutdown(std::net::Shutdown::Both);
                }
            }
        }
    }

    pub(super) fn on_inbound(&mut self, from: NodeId, epoch: Epoch, stream: InboundStream) {
        // Declared dead after its hello was checked: it must not slip in.
        if epoch < self.transport.fence_floor(from) {
            log::warn!(
                "{from}: a connection of its fenced incarnation {} closed",
                epoch.0
            );
            stream.shutdown();
            return;
        }
        let id = self.next_conn;
        self.next_conn += 1;
        match self.epoll.add(stream.fd(), CONN_TOKEN | id) {
            Ok(()) => {
                let conn = Conn {
                    from,
                    epoch,
                    stream,
                    buf: Vec::with_capacity(64 << 10),
                    last_frame: Instant::now(),
                };
                self.conns.insert(id, conn);
            }
            Err(e) => log::error!("{from}: cannot watch its connection: {e}"),
        }
    }

    /// Tell a peer that (re)connected what this node knows: its catalog and its removals.
    pub(super) fn on_peer_connected(&mut self, peer: NodeId) {
        // A node speaks for the segments it homes (peers take catalog entries and tombstones
        // only from the home they name).
        let me = Some(self.me().0);
        let segments: Vec<SegmentInfo> = self
            .segs
            .values()
            .filter(|s| s.info.home == me)
            .map(|s| self.host.current(&s.info))
            .collect();
        self.send_peer(peer, PeerFrame::Control(Control::Catalog { segments }));
        let mine = Some(self.me());
        let mut ids = self.host.removed_ids();
        ids.retain(|&id| SegmentId(id).home() == mine);
        if !ids.is_empty() {
            self.send_peer(peer, PeerFrame::Control(Control::Removed { ids }));
        }
        self.removal_peer_connected(peer);
        self.locks_peer_connected(peer);
    }

    pub(super) fn on_remove(
        &mut self,
        seg: SegmentId,
        (uid, gids): (u32, Vec<u32>),
        reply: Sender<Result<(), String>>,
    ) {
        match self.route(seg) {
            // The caller was checked here, against this home's own catalog.
            Route::Here => self.start_remove(seg, RemoveFor::Local(reply)),
            Route::Home(h) => {
                let req = self.req_id();
                self.removes.insert(req, (reply, Instant::now(), h));
                let msg = Control::RemoveSegment {
                    req,
                    seg: seg.0,
                    uid,
                    gids,
                };
                self.send_peer(h, PeerFrame::Control(msg));
            }
            Route::Unknown => {
                let _ = reply.send(Err("not a cluster segment of this node".into()));
            }
        }
    }

    /// The pool asks to evict a page of a cluster segment: through the home, which must hear
    /// of it (every way out reports the eviction's end to the pool).
    pub(super) fn on_evict(&mut self, s: Arc<Segment>, page: u64) {
        let seg = SegmentId(s.info.id);
        let key = PageKey::new(seg, page);
        let Some(m) = &s.memory else {
            return;
        };
        // Removed meanwhile (nothing to evict), or on its way out already: the pool must hear
        // the end all the same.
        if !self.segs.contains_key(&seg) || self.evicting.contains_key(&key) {
            m.pool.cluster_evict_done(&m.partition, None);
            return;
        }
        let now = self.now();
        match self.node.evict(now, key) {
            pagemesh_core::EvictStart::Requested => {
                self.evicting.insert(key, Instant::now());
            }
            pagemesh_core::EvictStart::NotHeld => {
                // Not a copy any more (invalidated meanwhile): nothing to keep.
                s.set_state(page, PageState::Absent);
                m.pool.cluster_evict_done(&m.partition, None);
            }
            pagemesh_core::EvictStart::Busy => {
                m.pool.cluster_evict_done(&m.partition, Some((seg.0, page)));
            }
        }
    }

    pub(super) fn on_clear_poison(&mut self, seg: SegmentId, reply: Sender<Result<u64, String>>) {
        match self.route(seg) {
            Route::Here => self.start_clear(seg, ClearFor::Local(reply)),
            Route::Home(h) => {
                let req = self.req_id();
                self.clears.insert(req, (reply, Instant::now(), h));
                let msg = Control::ClearPoison { req, seg: seg.0 };
                self.send_peer(h, PeerFrame::Control(msg));
            }
            Route::Unknown => {
                let _ = reply.send(Err("not a cluster segment of this node".into()));
            }
        }
    }

    /// What this node holds of `seg` (and, at its home, what is poisoned).
    pub(super) fn seg_stat(&self, seg: SegmentId) -> ClusterSegStat {
        let mut st = ClusterSegStat::default();
        for (k, c) in self.node.copies() {
            if k.seg == seg {
                st.resident_pages += 1;
                if c.state == CacheState::Modified {
                    st.modified_pages += 1;
                }
            }
        }
        if matches!(self.route(seg), Route::Here) {
            st.poisoned_pages = self.node.poisoned_pages(seg).len() as u64;
            st.poisoned_known_here = true;
        } else {
            st.poisoned_pages = self.poisoned_seen.get(&seg).map_or(0, |s| s.len() as u64);
        }
        st
    }

    pub(super) fn on_barrier(
        &mut self,
        seg: SegmentId,
        barrier: u32,
        parties: u32,
        token: u64,
        reply: Sender<Result<u64, String>>,
    ) {
        self.barrier_waiters.insert(token, reply);
        self.barrier_of.insert(token, (seg, barrier));
        match self.route(seg) {
            Route::Here => self.barrier_arrive(self.me(), seg, barrier, parties, token),
            Route::Home(h) => {
                let msg = Control::BarrierArrive {
                    seg: seg.0,
                    barrier,
                    parties,
                    token,
                };
                self.send_peer(h, PeerFrame::Control(msg));
            }
            Route::Unknown => self.refuse_waiter(token, "unknown cluster segment".into()),
        }
    }

    /// A local waiter (at a barrier or for a lock) gave up.
    pub(super) fn on_forget(&mut self, token: u64) {
        self.barrier_waiters.remove(&token);
        self.lock_waiters.remove(&token);
        // The home must not count an arrival whose waiter gave up.
        let Some((seg, barrier)) = self.barrier_of.remove(&token) else {
            return;
        };
        match self.route(seg) {
            Route::Here => self.barrier_cancel(self.me(), seg, barrier, token),
            Route::Home(h) => {
                let msg = Control::BarrierCancel {
                    seg: seg.0,
                    barrier,
                    token,
                };
                self.send_peer(h, PeerFrame::Control(msg));
            }
            Route::Unknown => {}
        }
    }

    pub(super) fn on_lock(
        &mut self,
        seg: SegmentId,
        lock: u32,
        token: u64,
        reply: Sender<Result<(), String>>,
    ) {
        let home = match self.route(seg) {
            Route::Here => self.me(),
            Route::Home(h) => h,
            Route::Unknown => {
                let _ = reply.send(Err("unknown cluster segment".into()));
                return;
            }
        };
        self.lock_waiters.insert(token, reply);
        self.lock_client.acquire(token, home, seg, lock);
        if home == self.me() {
            self.lock_acquire(home, seg, lock, token);
        } else {
            let msg = Control::LockAcquire {
                seg: seg.0,
                lock,
                token,
            };
            self.send_peer(home, PeerFrame::Control(msg));
        }
    }

    pub(super) fn on_unlock(&mut self, seg: SegmentId, lock: u32, token: u64) {
        self.lock_waiters.remove(&token);
        self.lock_client.release(token);
        match self.route(seg) {
            Route::Here => self.lock_release(self.me(), seg, lock, token),
            Route::Home(h) => {
                let msg = Control::LockRelease {
                    seg: seg.0,
                    lock,
                    token,
                };
                self.send_peer(h, PeerFrame::Control(msg));
            }
            Route::Unknown => {}
        }
    }

    /// Ask every peer for its figures; the answer goes out when all replied or in
    /// `STATUS_WAIT`.
    pub(super) fn on_status(&mut self, reply: Sender<ClusterStatus>) {
        let req = self.req_id();
        self.broadcast(Control::StatusRequest { req });
        let mut figures = HashMap::new();
        figures.insert(self.me(), self.my_figures());
        let wait = StatusWait {
            reply,
            figures,
            deadline: Instant::now() + STATUS_WAIT,
        };
        self.statuses.insert(req, wait);
        self.finish_statuses(false);
    }

    /// Take part in a segment (created here, or learned from a peer's catalog).
    pub(super) fn adopt(&mut self, seg: Arc<Segment>) {
        let info = crate::core_info(&seg.info);
        if let Err(known) = self.node.add_segment(info) {
            log::error!(
                "segment {} (id {}): the catalog says {info:?} but this node knows {known:?}; ignored",
                seg.info.name,
                seg.info.id
            );
            return;
        }
        if info.home == self.me() && !self.intents.contains_key(&info.id) {
            match files::open_intents(&self.data_dir, info.id) {
                Ok(l) => {
                    self.intents.insert(info.id, l);
                }
                Err(e) => log::error!(
                    "segment {}: cannot open its write-intent log: {e}; its writes will fail",
                    seg.info.name
                ),
            }
        }
        crate::link(&seg, self.waker.clone());
        self.segs.insert(info.id, seg);
    }
}
