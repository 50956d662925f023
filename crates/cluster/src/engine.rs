//! The cluster engine: one thread that owns this node's `pagemesh_core::Node` and executes its
//! outputs against the kernel (memfd, every attached process's uffd), the peer transport and
//! the mappers of the segments homed here.
//!
//! Everything that changes a cluster segment's pages on this node runs on this thread, in the
//! order the core asked for it: a fault is resolved (CONTINUE into the faulting process) while
//! the core still says the copy is valid, and a later invalidation (punch-hole) or downgrade
//! (write-protect in every process) comes after it. That is what makes the kernel's view agree
//! with the core's at every step without per-page locks.

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::net::TcpStream;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pagemesh_core::{
    Access, CacheState, CallId, CallResult, Envelope, Epoch, Event, FaultId, FaultResult,
    MapperError, Node, Output, PageData, PageKey,
};
use pagemesh_proto::peer::{
    decode_peer_frame, Control, NodeFigures, PeerFrame, MAX_PEER_FRAME_BYTES,
};
use pagemesh_proto::{ClusterNode, ClusterStatus, SegmentInfo};
use pagemesh_types::{NodeId, SegmentId, PAGE_SIZE};
use pagemesh_uffd::fault::{self, resolve_present};
use pagemesh_uffd::poll::Epoll;
use pagemesh_uffd::{Access as UffdAccess, Fault, FaultReader, Incoming, Protect, Wake};

use crate::fatal::{self, Fatal};
use crate::files;
pub use crate::input::{ClusterSegStat, Input};
use crate::intents::IntentLog;
use crate::io::{IoFailure, IoJob};
use crate::transport::{msg_data, page_sized, Transport};
use crate::{ClusterConfig, Host, Waker};
use pagemesh_node::histogram::Histogram;
use pagemesh_node::pages::PageState;
use pagemesh_node::segment::{Attachment, Memory, Segment};

const PS: u64 = PAGE_SIZE;
static ZERO_PAGE: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];
/// Epoll tokens: the wake socket, attachments' uffds, inbound peer connections.
const WAKE_TOKEN: u64 = 0;
const UFFD_TOKEN: u64 = 1 << 62;
const CONN_TOKEN: u64 = 2 << 62;
const TOKEN_KIND: u64 = 3 << 62;
/// Most fault messages taken from one uffd per wake-up.
const FAULT_BATCH: usize = 16;
/// Most faults waiting for a home's lease at once (each is a blocked thread of a process).
const MAX_PARKED_FAULTS: usize = 1 << 16;
/// Most bytes read from one peer connection per wake-up (then the others get a turn).
const READ_PER_WAKE: usize = 4 << 20;
/// How long a status request waits for the peers' figures.
const STATUS_WAIT: Duration = Duration::from_millis(1500);

/// Per-node counters, shared with the status command.
#[derive(Default)]
pub struct Figures {
    pub faults: AtomicU64,
    pub remote_fetches: AtomicU64,
    pub invalidations: AtomicU64,
    pub downgrades: AtomicU64,
    pub sigbus: AtomicU64,
    pub latency: Histogram,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Pages asked for ahead of a sequential reader.
const READ_AHEAD_PAGES: u64 = 8;
/// Most read-ahead requests in flight on this node.
const MAX_PREFETCHES: u64 = 256;
/// Most present neighbours mapped after a read fault.
const FAULT_AROUND_PAGES: u64 = 15;
/// Invalidations remembered to keep read-ahead off pages others are writing.
const RECENT_INVALIDATIONS: usize = 1024;
/// An eviction not ended by then is given up (its page goes back on the pool's clock).
const EVICTION_GIVE_UP: Duration = Duration::from_secs(5);

enum Target {
    /// A read-ahead request: nothing waits on it.
    Prefetch,
    /// Resolve a process's fault.
    Mapped {
        att: Arc<Attachment>,
        fault: Fault,
        start: Instant,
    },
    /// One page of a segment I/O request.
    Io { io: u64 },
}

struct Pending {
    target: Target,
    access: Access,
}

enum Durable {
    MapperWrite(pagemesh_core::MapperToken, Result<(), MapperError>),
    Intent(pagemesh_core::MapperToken, Result<(), MapperError>),
}

/// An input the engine gives itself. It is fed to the core only once every output before it
/// has been executed, so the core's state never runs ahead of the kernel's while a round of
/// outputs is half done (a fault is resolved by the state the core had when it finished it).
enum Later {
    Step(Envelope),
    MapperRead(pagemesh_core::MapperToken, Result<PageData, MapperError>),
    IntentRead(pagemesh_core::MapperToken, Result<Vec<u64>, MapperError>),
    MapperWrite(pagemesh_core::MapperToken, Result<(), MapperError>),
    Intent(pagemesh_core::MapperToken, Result<(), MapperError>),
}

#[derive(Default)]
struct BarrierState {
    parties: u32,
    arrived: Vec<(NodeId, u64)>,
    generation: u64,
}

#[derive(Default)]
struct LockState {
    holder: Option<(NodeId, u64)>,
    queue: VecDeque<(NodeId, u64)>,
}

/// Who asked for a clear-poison job.
enum ClearFor {
    Local(Sender<Result<u64, String>>),
    Peer(NodeId, u64),
}

/// Clearing the poisoned pages of one segment at its home, a bounded number at a time.
struct ClearJob {
    seg: SegmentId,
    todo: VecDeque<u64>,
    in_flight: usize,
    cleared: u64,
    failed: u64,
    for_: ClearFor,
}

/// Who asked for a removal.
enum RemoveFor {
    Local(Sender<Result<(), String>>),
    Peer(NodeId, u64),
}

/// A removal run by this node (the segment's home): every node must agree no process has the
/// segment attached before anyone forgets it.
struct Removal {
    attempt: u64,
    waiting: std::collections::HashSet<NodeId>,
    deadline: Instant,
    sync_call: Option<u64>,
    for_: RemoveFor,
}

/// A removal asked of a segment's home: the reply, when, and which home.
type RemoveWait = (Sender<Result<(), String>>, Instant, NodeId);

/// How long the nodes have to answer a removal.
const REMOVE_WAIT: Duration = Duration::from_secs(5);
/// A prepared removal that hears neither commit nor abort in this long is undone (the home
/// commits within `REMOVE_WAIT` plus a file segment's sync, bounded by the fault timeout).
const PREPARED_EXPIRY: Duration = Duration::from_secs(120);

/// A clear-poison asked of a segment's home: the reply, when, and which home.
type ClearWait = (Sender<Result<u64, String>>, Instant, NodeId);

/// Clear-poison calls in flight per job.
const CLEAR_WINDOW: usize = 32;

struct StatusWait {
    reply: Sender<ClusterStatus>,
    figures: HashMap<NodeId, NodeFigures>,
    deadline: Instant,
}

struct Conn {
    from: NodeId,
    stream: TcpStream,
    buf: Vec<u8>,
    last_frame: Instant,
}

/// What the engine starts from (made by [`crate::prepare`]).
pub struct EngineSetup {
    pub(crate) data_dir: PathBuf,
    pub(crate) cfg: ClusterConfig,
    pub(crate) waker: Waker,
    pub(crate) node: Node,
    pub(crate) transport: Arc<Transport>,
    pub(crate) figures: Arc<Figures>,
    pub(crate) segs: HashMap<SegmentId, Arc<Segment>>,
    pub(crate) intents: HashMap<SegmentId, IntentLog>,
}

pub struct Engine {
    rx: Receiver<Input>,
    wake_rx: UnixStream,
    epoll: Epoll,
    attachments: HashMap<u64, Arc<Attachment>>,
    conns: HashMap<u64, Conn>,
    next_conn: u64,
    sendbuf: Vec<u8>,
    /// Reads the attached processes' fault messages (one buffer, reused).
    reader: FaultReader,
    host: Arc<dyn Host>,
    data_dir: PathBuf,
    cfg: ClusterConfig,
    /// The engine's own channel, which it links segments it adopts to.
    waker: Waker,
    node: Node,
    transport: Arc<Transport>,
    figures: Arc<Figures>,
    segs: HashMap<SegmentId, Arc<Segment>>,
    intents: HashMap<SegmentId, IntentLog>,
    pending: HashMap<u64, Pending>,
    next_fault: u64,
    calls: HashMap<u64, Sender<Result<(), String>>>,
    /// Clear-poison calls: call id -> job.
    clear_calls: HashMap<u64, u64>,
    clear_jobs: HashMap<u64, ClearJob>,
    /// Clear-poison requests sent to a home: request -> (reply, when).
    clears: HashMap<u64, ClearWait>,
    removals: HashMap<SegmentId, Removal>,
    /// Segments this node prepared for removal: the attempt and when (a prepare that hears
    /// neither commit nor abort is undone after `PREPARED_EXPIRY`).
    prepared: HashMap<SegmentId, (u64, Instant)>,
    /// Syncs run by removals: call -> segment.
    remove_syncs: HashMap<u64, SegmentId>,
    /// Removals asked of a segment's home: request -> (reply, when, home).
    removes: HashMap<u64, RemoveWait>,
    next_call: u64,
    ios: HashMap<u64, IoJob>,
    next_io: u64,
    durable: Vec<(SegmentId, Durable)>,
    later: VecDeque<Later>,
    dead: HashMap<NodeId, bool>,
    barriers: HashMap<(SegmentId, u32), BarrierState>,
    barrier_waiters: HashMap<u64, Sender<Result<u64, String>>>,
    /// The barrier each local waiter waits at (to cancel its arrival).
    barrier_of: HashMap<u64, (SegmentId, u32)>,
    /// The segment of each local lock waiter.
    lock_of: HashMap<u64, SegmentId>,
    locks: HashMap<(SegmentId, u32), LockState>,
    lock_waiters: HashMap<u64, Sender<Result<(), String>>>,
    creates: HashMap<u64, (Sender<Result<SegmentInfo, String>>, Instant)>,
    next_req: u64,
    statuses: HashMap<u64, StatusWait>,
    poisoned_seen: HashMap<SegmentId, std::collections::BTreeSet<u64>>,
    outs: Vec<Output>,
    prefetches: u64,
    /// Pages whose eviction the pool asked for, until their invalidation (or until it is given
    /// up: the home does not retransmit a lost `Evict`).
    evicting: HashMap<PageKey, Instant>,
    /// Pages invalidated here lately (someone else is using them): read-ahead leaves them.
    recently_invalidated: VecDeque<PageKey>,
    dead_after_ms: u64,
    tick_ms: u64,
    last_liveness_ms: u64,
    /// Silence is judged from here: the end of this node's own last pause.
    judged_from_ms: u64,
    minority_logged: bool,
    fault_timeout: Duration,
    /// Homes whose lease on this node lapsed (their copies here are quarantined).
    lapsed: HashMap<NodeId, bool>,
    /// Faults on segments whose home's lease lapsed, waiting for it (bounded by the fault
    /// timeout).
    parked: Vec<Parked>,
}

struct Parked {
    att: Arc<Attachment>,
    fault: Fault,
    start: Instant,
}

impl Engine {
    pub fn new(
        rx: Receiver<Input>,
        wake_rx: UnixStream,
        host: Arc<dyn Host>,
        setup: EngineSetup,
    ) -> std::io::Result<Engine> {
        let EngineSetup {
            data_dir,
            cfg,
            waker,
            node,
            transport,
            figures,
            segs,
            intents,
        } = setup;
        let tick_ms = (cfg.retry_ms / 2).clamp(1, 50);
        let (dead_after_ms, fault_timeout_ms) = (cfg.dead_after_ms, cfg.fault_timeout_ms);
        let epoll = Epoll::new()?;
        epoll.add(wake_rx.as_fd(), WAKE_TOKEN)?;
        Ok(Engine {
            rx,
            wake_rx,
            epoll,
            attachments: HashMap::new(),
            conns: HashMap::new(),
            next_conn: 1,
            sendbuf: Vec::with_capacity(8192),
            reader: FaultReader::new(FAULT_BATCH),
            host,
            data_dir,
            cfg,
            waker,
            node,
            transport,
            figures,
            segs,
            intents,
            pending: HashMap::new(),
            next_fault: 1,
            calls: HashMap::new(),
            clear_calls: HashMap::new(),
            clear_jobs: HashMap::new(),
            clears: HashMap::new(),
            removals: HashMap::new(),
            prepared: HashMap::new(),
            remove_syncs: HashMap::new(),
            removes: HashMap::new(),
            next_call: 1,
            ios: HashMap::new(),
            next_io: 1,
            durable: Vec::new(),
            later: VecDeque::new(),
            dead: HashMap::new(),
            barriers: HashMap::new(),
            barrier_waiters: HashMap::new(),
            barrier_of: HashMap::new(),
            lock_of: HashMap::new(),
            locks: HashMap::new(),
            lock_waiters: HashMap::new(),
            creates: HashMap::new(),
            next_req: 1,
            statuses: HashMap::new(),
            poisoned_seen: HashMap::new(),
            outs: Vec::with_capacity(64),
            prefetches: 0,
            evicting: HashMap::new(),
            recently_invalidated: VecDeque::with_capacity(RECENT_INVALIDATIONS),
            dead_after_ms,
            tick_ms: tick_ms.max(1),
            fault_timeout: Duration::from_millis(fault_timeout_ms),
            lapsed: HashMap::new(),
            parked: Vec::new(),
            last_liveness_ms: 0,
            judged_from_ms: 0,
            minority_logged: false,
        })
    }

    fn now(&self) -> u64 {
        self.transport.now_ms()
    }

    fn me(&self) -> NodeId {
        self.node.id()
    }

    /// Serve forever: one event loop over the wake socket, the attached processes' uffds and
    /// the peers' inbound connections.
    pub fn run(mut self) {
        let now = self.now();
        self.node.start(now);
        self.pump();
        self.flush_durable();
        let mut tokens = Vec::with_capacity(64);
        let mut next_tick = Instant::now();
        loop {
            let wait_ms = next_tick
                .saturating_duration_since(Instant::now())
                .as_millis()
                .min(50) as i32;
            tokens.clear();
            if let Err(e) = self.epoll.wait(&mut tokens, 64, wait_ms) {
                log::error!("cluster engine: epoll_wait failed: {e}");
                std::thread::sleep(Duration::from_millis(10));
            }
            for &t in &tokens {
                self.ready(t);
            }
            self.drain_inputs();
            self.flush_durable();
            if Instant::now() >= next_tick {
                next_tick = Instant::now() + Duration::from_millis(self.tick_ms);
                let now = self.now();
                self.node.tick(now);
                self.pump();
                self.check_liveness(now);
                self.check_leases();
                self.give_up_evictions();
                self.expire_removals();
                self.pump();
                self.close_silent_conns();
                self.flush_durable();
                self.finish_statuses(false);
                // The asking client gave up after 10 s.
                self.creates
                    .retain(|_, (_, t)| t.elapsed() < Duration::from_secs(15));
                self.clears
                    .retain(|_, (_, t, _)| t.elapsed() < Duration::from_secs(130));
            }
        }
    }

    fn drain_inputs(&mut self) {
        while let Ok(i) = self.rx.try_recv() {
            self.input(i);
            self.pump();
        }
    }

    fn ready(&mut self, token: u64) {
        match token & TOKEN_KIND {
            UFFD_TOKEN => self.uffd_ready(token & !TOKEN_KIND),
            CONN_TOKEN => self.conn_ready(token & !TOKEN_KIND),
            _ => {
                let mut b = [0u8; 256];
                while matches!((&self.wake_rx).read(&mut b), Ok(n) if n > 0) {}
                if let Err(e) = self.epoll.rearm(self.wake_rx.as_fd(), WAKE_TOKEN) {
                    log::error!("cluster engine: re-arming its wake socket failed: {e}");
                }
                self.drain_inputs();
            }
        }
    }

    fn uffd_ready(&mut self, id: u64) {
        let Some(att) = self.attachments.get(&id).cloned() else {
            return;
        };
        let mut reader = std::mem::replace(&mut self.reader, FaultReader::new(1));
        let epoll = &self.epoll;
        let batch = reader.read(&att.uffd, att.bounds(), || {
            let _ = epoll.rearm(att.uffd.as_fd(), UFFD_TOKEN | id);
        });
        match batch {
            Ok(batch) => {
                for incoming in batch {
                    match incoming {
                        Incoming::Fault(f) => {
                            self.fault(Arc::clone(&att), *f, Instant::now());
                            self.pump();
                        }
                        Incoming::Stray(f) => att.refuse(f, &"the fault is outside its mapping"),
                        Incoming::Other { event } => log::warn!(
                            "pid {}: unexpected uffd event {event} (pagemesh enables none); ignored",
                            att.pid
                        ),
                    }
                }
            }
            Err(e) => {
                log::error!(
                    "pid {}: reading its uffd failed: {e}; detaching it",
                    att.pid
                );
                self.detach(id);
            }
        }
        self.reader = reader;
    }

    fn detach(&mut self, id: u64) {
        if let Some(a) = self.attachments.remove(&id) {
            let _ = self.epoll.remove(a.uffd.as_fd());
        }
    }

    fn conn_ready(&mut self, id: u64) {
        let mut tmp = [0u8; 64 << 10];
        let mut got = 0usize;
        let mut closed: Option<String> = None;
        {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            while got < READ_PER_WAKE {
                match (&c.stream).read(&mut tmp) {
                    Ok(0) => {
                        closed = Some("closed by the peer".into());
                        break;
                    }
                    Ok(n) => {
                        c.buf.extend_from_slice(&tmp[..n]);
                        got += n;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        closed = Some(e.to_string());
                        break;
                    }
                }
            }
        }
        // Take whole frames out and act on each.
        let mut at = 0usize;
        loop {
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            let buf = &c.buf[at..];
            if buf.len() < 4 {
                break;
            }
            let len = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes"));
            if len > MAX_PEER_FRAME_BYTES {
                closed = Some(format!("a frame of {len} bytes (over the limit)"));
                break;
            }
            let total = 4 + len as usize;
            if buf.len() < total {
                break;
            }
            let from = c.from;
            let frame = decode_peer_frame(&buf[4..total]);
            c.last_frame = Instant::now();
            at += total;
            self.transport.heard(from, total);
            match frame {
                Ok(PeerFrame::Heartbeat { sent_ms, echo_ms }) => {
                    self.transport.on_heartbeat(from, sent_ms, echo_ms);
                }
                Ok(PeerFrame::Protocol(env)) if !page_sized(&env.msg) => {
                    closed = Some(format!(
                        "a page of the wrong size in {} (a bug or a lying peer)",
                        env.msg
                    ));
                    break;
                }
                Ok(PeerFrame::Protocol(env)) if env.from == from && env.to == self.me() => {
                    let now = self.now();
                    self.node.step(now, env);
                    self.pump();
                }
                Ok(PeerFrame::Control(msg)) => {
                    self.control(from, msg);
                    self.pump();
                }
                Ok(other) => {
                    closed = Some(format!(
                        "unexpected frame {other:?} (a bug or a lying peer)"
                    ));
                    break;
                }
                Err(e) => {
                    closed = Some(format!("{e} (a bug or a lying peer)"));
                    break;
                }
            }
        }
        if let Some(c) = self.conns.get_mut(&id) {
            c.buf.drain(..at);
        }
        match closed {
            Some(why) => self.close_conn(id, &why),
            None => {
                if let Some(c) = self.conns.get(&id) {
                    let _ = self.epoll.rearm(c.stream.as_fd(), CONN_TOKEN | id);
                }
            }
        }
    }

    fn close_conn(&mut self, id: u64, why: &str) {
        if let Some(c) = self.conns.remove(&id) {
            log::info!("{}: inbound connection closed: {why}", c.from);
            let _ = self.epoll.remove(c.stream.as_fd());
            let _ = c.stream.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Inbound connections that stayed silent (no heartbeat) for the dead-peer limit are over;
    /// the peer redials.
    fn close_silent_conns(&mut self) {
        let limit = Duration::from_millis(self.dead_after_ms);
        let silent: Vec<u64> = self
            .conns
            .iter()
            .filter(|(_, c)| c.last_frame.elapsed() > limit)
            .map(|(id, _)| *id)
            .collect();
        for id in silent {
            self.close_conn(id, "silent for the dead-peer limit");
        }
    }

    fn send_peer(&mut self, to: NodeId, frame: PeerFrame) {
        let mut buf = std::mem::take(&mut self.sendbuf);
        self.transport.send(to, &frame, &mut buf);
        self.sendbuf = buf;
    }

    /// The lease on `home`'s pages: while it holds, `home` heard this node within the last
    /// `dead_after_ms / 2`, so it cannot have declared it dead and given its pages to others.
    fn lease(&self, home: NodeId) -> bool {
        home == self.me() || self.transport.lease_ok(home, self.dead_after_ms / 2)
    }

    /// A home's lease on this node lapsed: no process here may touch the copies of its pages
    /// without asking the engine again. Each copy is write-protected everywhere, then punched
    /// out of the page cache (which zaps every mapping) and written back unchanged: the data
    /// stays (the home may have died and will want it back), but every access faults, and
    /// faults wait for the lease.
    fn check_leases(&mut self) {
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
    fn give_up_evictions(&mut self) {
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

    fn quarantine(&mut self, home: NodeId) {
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
            self.dead_after_ms / 2,
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

    /// A fault waits for its home's lease (in time order: `check_leases` serves or refuses the
    /// waiting ones), up to `MAX_PARKED_FAULTS`; past that it is refused at once rather than
    /// queued without bound.
    fn park(&mut self, p: Parked) {
        if self.parked.len() >= MAX_PARKED_FAULTS {
            bump(&self.figures.sigbus);
            let why = format!("{MAX_PARKED_FAULTS} faults already wait for a lease here");
            p.att.refuse(&p.fault, &why);
            return;
        }
        self.parked.push(p);
    }

    fn fault(&mut self, att: Arc<Attachment>, fault: Fault, start: Instant) {
        let (page, kind, access) = (fault.page, fault.kind, fault.access);
        let seg = SegmentId(att.segment.info.id);
        if let Some(home) = self.home_of(seg) {
            if !self.lease(home) {
                // Serving this from a copy here could hand out data the home already gave
                // away: wait for the home (bounded).
                self.park(Parked { att, fault, start });
                return;
            }
        }
        let now = self.now();
        bump(&self.figures.faults);
        let key = PageKey::new(SegmentId(att.segment.info.id), page);
        let access = match access {
            UffdAccess::Write => Access::Write,
            UffdAccess::Read => Access::Read,
        };
        pagemesh_node::segment::bump_fault(&att.segment, kind);
        att.segment.pages.touch(page);
        let prev = att.last_page.swap(page, Ordering::Relaxed);
        let sequential = prev.wrapping_add(1) == page;
        let pages = att.len / PS;
        let id = self.next_fault;
        self.next_fault += 1;
        self.pending.insert(
            id,
            Pending {
                target: Target::Mapped { att, fault, start },
                access,
            },
        );
        let miss = self.node.copy(key).is_none() && self.node.pending_request(key).is_none();
        self.node.fault(now, FaultId(id), key, access);
        if access == Access::Read && miss && sequential {
            self.read_ahead(key, pages);
        }
    }

    /// A sequential reader missed: ask for the next pages too, so their transfers overlap
    /// with its work (its later faults find them here, or join the requests in flight).
    fn read_ahead(&mut self, key: PageKey, pages: u64) {
        let now = self.now();
        let end = (key.page.0 + 1 + READ_AHEAD_PAGES).min(pages);
        for q in key.page.0 + 1..end {
            if self.prefetches >= MAX_PREFETCHES {
                return;
            }
            let k = PageKey::new(key.seg, q);
            if self.node.copy(k).is_some()
                || self.node.pending_request(k).is_some()
                || self.recently_invalidated.contains(&k)
            {
                continue;
            }
            let id = self.next_fault;
            self.next_fault += 1;
            self.prefetches += 1;
            self.pending.insert(
                id,
                Pending {
                    target: Target::Prefetch,
                    access: Access::Read,
                },
            );
            self.node.fault(now, FaultId(id), k, Access::Read);
        }
    }

    /// Map the copies this node holds around a resolved read fault into the process (both
    /// ways, as for local segments), write-protected (always safe for a valid copy: a write
    /// takes a write-protect fault, and an invalidation or downgrade reaches every mapping), so
    /// a reader of local pages takes one fault per run instead of one per page.
    fn map_around(&self, att: &Attachment, page: PageKey) {
        let held = |q: u64| self.node.copy(PageKey::new(page.seg, q)).is_some();
        let runs = fault::around(page.page.0, att.len / PS, FAULT_AROUND_PAGES, held);
        fault::map_around_read(&att.uffd, att.base, runs);
    }

    fn input(&mut self, input: Input) {
        let now = self.now();
        match input {
            Input::Attach(att) => {
                let id = att.id;
                match self.epoll.add(att.uffd.as_fd(), UFFD_TOKEN | id) {
                    Ok(()) => {
                        self.attachments.insert(id, att);
                    }
                    Err(e) => {
                        log::error!("pid {}: cannot watch its uffd: {e}; closing its lease so it fails loudly", att.pid);
                        if let Some(l) = &att.lease {
                            let _ = l.shutdown(std::net::Shutdown::Both);
                        }
                    }
                }
            }
            Input::Detach(id) => self.detach(id),
            Input::Inbound {
                from,
                epoch,
                stream,
            } => {
                // Declared dead after its hello was checked: it must not slip in.
                if epoch < self.transport.fence_floor(from) {
                    log::warn!(
                        "{from}: a connection of its fenced incarnation {} closed",
                        epoch.0
                    );
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    return;
                }
                let id = self.next_conn;
                self.next_conn += 1;
                match self.epoll.add(stream.as_fd(), CONN_TOKEN | id) {
                    Ok(()) => {
                        self.conns.insert(
                            id,
                            Conn {
                                from,
                                stream,
                                buf: Vec::with_capacity(64 << 10),
                                last_frame: Instant::now(),
                            },
                        );
                    }
                    Err(e) => log::error!("{from}: cannot watch its connection: {e}"),
                }
            }
            Input::PeerConnected(peer) => {
                let segments: Vec<SegmentInfo> =
                    self.segs.values().map(|s| s.info.clone()).collect();
                self.send_peer(peer, PeerFrame::Control(Control::Catalog { segments }));
                let ids = self.host.removed_ids();
                if !ids.is_empty() {
                    self.send_peer(peer, PeerFrame::Control(Control::Removed { ids }));
                }
            }
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
                reply,
            } => {
                let req = self.req_id();
                self.creates.insert(req, (reply, Instant::now()));
                self.send_peer(
                    home,
                    PeerFrame::Control(Control::CreateSegment {
                        req,
                        name,
                        size_bytes,
                        backing,
                    }),
                );
            }
            Input::Sync { seg, reply } => {
                let id = self.next_call;
                self.next_call += 1;
                self.calls.insert(id, reply);
                self.node.sync(now, CallId(id), seg);
            }
            Input::Io {
                seg,
                offset,
                len,
                data,
                reply,
            } => self.start_io(seg, offset, len, data, reply),
            Input::Remove { seg, reply } => {
                let me = self.me();
                match self.home_of(seg) {
                    Some(h) if h == me => self.start_remove(seg, RemoveFor::Local(reply)),
                    Some(h) => {
                        let req = self.req_id();
                        self.removes.insert(req, (reply, Instant::now(), h));
                        self.send_peer(
                            h,
                            PeerFrame::Control(Control::RemoveSegment { req, seg: seg.0 }),
                        );
                    }
                    None => {
                        let _ = reply.send(Err("not a cluster segment of this node".into()));
                    }
                }
            }
            Input::Evict { seg: s, page } => {
                let seg = SegmentId(s.info.id);
                let key = PageKey::new(seg, page);
                let Some(m) = &s.memory else {
                    return;
                };
                if !self.segs.contains_key(&seg) {
                    // Removed meanwhile: nothing to evict, but the pool must hear the end.
                    m.pool.cluster_evict_done(&m.partition, None);
                    return;
                }
                if self.evicting.contains_key(&key) {
                    m.pool.cluster_evict_done(&m.partition, None);
                    return;
                }
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
            Input::ClearPoison { seg, reply } => {
                let me = self.me();
                match self.home_of(seg) {
                    Some(h) if h == me => self.start_clear(seg, ClearFor::Local(reply)),
                    Some(h) => {
                        let req = self.req_id();
                        self.clears.insert(req, (reply, Instant::now(), h));
                        self.send_peer(
                            h,
                            PeerFrame::Control(Control::ClearPoison { req, seg: seg.0 }),
                        );
                    }
                    None => {
                        let _ = reply.send(Err("not a cluster segment of this node".into()));
                    }
                }
            }
            Input::Stat { seg, reply } => {
                let mut st = ClusterSegStat::default();
                for (k, c) in self.node.copies() {
                    if k.seg == seg {
                        st.resident_pages += 1;
                        if c.state == CacheState::Modified {
                            st.modified_pages += 1;
                        }
                    }
                }
                let home = self.node.segment(seg).map(|s| s.home);
                if home == Some(self.me()) {
                    st.poisoned_pages = self.node.poisoned_pages(seg).len() as u64;
                    st.poisoned_known_here = true;
                } else {
                    st.poisoned_pages = self.poisoned_seen.get(&seg).map_or(0, |s| s.len() as u64);
                }
                let _ = reply.send(st);
            }
            Input::Barrier {
                seg,
                barrier,
                parties,
                token,
                reply,
            } => {
                self.barrier_waiters.insert(token, reply);
                self.barrier_of.insert(token, (seg, barrier));
                let me = self.me();
                match self.home_of(seg) {
                    Some(h) if h == me => self.barrier_arrive(me, seg, barrier, parties, token),
                    Some(h) => {
                        self.send_peer(
                            h,
                            PeerFrame::Control(Control::BarrierArrive {
                                seg: seg.0,
                                barrier,
                                parties,
                                token,
                            }),
                        );
                    }
                    None => self.refuse_waiter(token, "unknown cluster segment".into()),
                }
            }
            Input::Forget { token } => {
                self.barrier_waiters.remove(&token);
                self.lock_waiters.remove(&token);
                // The home must not count an arrival whose waiter gave up.
                if let Some((seg, barrier)) = self.barrier_of.remove(&token) {
                    let me = self.me();
                    match self.home_of(seg) {
                        Some(h) if h == me => self.barrier_cancel(me, seg, barrier, token),
                        Some(h) => self.send_peer(
                            h,
                            PeerFrame::Control(Control::BarrierCancel {
                                seg: seg.0,
                                barrier,
                                token,
                            }),
                        ),
                        None => {}
                    }
                }
            }
            Input::Lock {
                seg,
                lock,
                token,
                reply,
            } => {
                self.lock_waiters.insert(token, reply);
                self.lock_of.insert(token, seg);
                let me = self.me();
                match self.home_of(seg) {
                    Some(h) if h == me => self.lock_acquire(me, seg, lock, token),
                    Some(h) => {
                        self.send_peer(
                            h,
                            PeerFrame::Control(Control::LockAcquire {
                                seg: seg.0,
                                lock,
                                token,
                            }),
                        );
                    }
                    None => self.refuse_waiter(token, "unknown cluster segment".into()),
                }
            }
            Input::Unlock { seg, lock, token } => {
                self.lock_waiters.remove(&token);
                self.lock_of.remove(&token);
                let me = self.me();
                match self.home_of(seg) {
                    Some(h) if h == me => self.lock_release(me, seg, lock, token),
                    Some(h) => {
                        self.send_peer(
                            h,
                            PeerFrame::Control(Control::LockRelease {
                                seg: seg.0,
                                lock,
                                token,
                            }),
                        );
                    }
                    None => {}
                }
            }
            Input::Status { reply } => {
                let req = self.req_id();
                self.broadcast(Control::StatusRequest { req });
                let mut figures = HashMap::new();
                figures.insert(self.me(), self.my_figures());
                self.statuses.insert(
                    req,
                    StatusWait {
                        reply,
                        figures,
                        deadline: Instant::now() + STATUS_WAIT,
                    },
                );
                self.finish_statuses(false);
            }
        }
    }

    fn req_id(&mut self) -> u64 {
        let r = self.next_req;
        self.next_req += 1;
        r
    }

    fn home_of(&self, seg: SegmentId) -> Option<NodeId> {
        self.node.segment(seg).map(|s| s.home)
    }

    fn broadcast(&mut self, msg: Control) {
        for p in self.transport.peers() {
            self.send_peer(p.id, PeerFrame::Control(msg.clone()));
        }
    }

    /// Take part in a segment (created here, or learned from a peer's catalog).
    fn adopt(&mut self, seg: Arc<Segment>) {
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

    fn control(&mut self, from: NodeId, msg: Control) {
        let me = self.me();
        match msg {
            Control::Catalog { segments } => {
                for info in segments {
                    match self.host.adopt(&info) {
                        Ok(Some(seg)) => self.adopt(seg),
                        Ok(None) => {}
                        Err(e) => log::error!("catalog from {from}: {e}"),
                    }
                }
            }
            Control::CreateSegment {
                req,
                name,
                size_bytes,
                backing,
            } => {
                let result = self.host.create(&name, size_bytes, backing).map(|seg| {
                    let info = seg.info.clone();
                    self.adopt(seg);
                    self.broadcast(Control::Catalog {
                        segments: vec![info.clone()],
                    });
                    info
                });
                self.send_peer(
                    from,
                    PeerFrame::Control(Control::CreateReply { req, result }),
                );
            }
            Control::CreateReply { req, result } => {
                let result = result.and_then(|info| match self.host.adopt(&info) {
                    Ok(Some(seg)) => {
                        self.adopt(seg);
                        Ok(info)
                    }
                    Ok(None) => Ok(info),
                    Err(e) => Err(e),
                });
                if let Some((r, _)) = self.creates.remove(&req) {
                    let _ = r.send(result);
                }
            }
            Control::BarrierArrive {
                seg,
                barrier,
                parties,
                token,
            } => self.barrier_arrive(from, SegmentId(seg), barrier, parties, token),
            Control::BarrierRelease {
                tokens, generation, ..
            } => {
                for t in tokens {
                    self.barrier_of.remove(&t);
                    if let Some(w) = self.barrier_waiters.remove(&t) {
                        let _ = w.send(Ok(generation));
                    }
                }
            }
            Control::SyncRefused { token, reason } => self.refuse_waiter(token, reason),
            Control::RemoveSegment { req, seg } => {
                let seg = SegmentId(seg);
                if self.home_of(seg) == Some(me) {
                    self.start_remove(seg, RemoveFor::Peer(from, req));
                } else {
                    let result = Err(format!("{me} is not the home of segment id {:#x}", seg.0));
                    self.send_peer(
                        from,
                        PeerFrame::Control(Control::RemoveDone { req, result }),
                    );
                }
            }
            Control::RemoveDone { req, result } => {
                if let Some((r, _, _)) = self.removes.remove(&req) {
                    let _ = r.send(result);
                }
            }
            Control::RemovePrepare { seg, attempt } => {
                let result = match self.host.segment(SegmentId(seg)) {
                    Some(s) => {
                        let r = s.mark_removed().map_err(|pids| {
                            format!(
                                "{me}: segment {} is attached by pid(s) {pids:?}",
                                s.info.name
                            )
                        });
                        if r.is_ok() {
                            // Undone by an abort, or by itself if neither commit nor abort
                            // comes (a lost frame, a home that died meanwhile).
                            self.prepared
                                .insert(SegmentId(seg), (attempt, Instant::now()));
                        }
                        r
                    }
                    None => Ok(()),
                };
                self.send_peer(
                    from,
                    PeerFrame::Control(Control::RemovePrepared {
                        seg,
                        attempt,
                        result,
                    }),
                );
            }
            Control::RemovePrepared {
                seg,
                attempt,
                result,
            } => self.remove_answer(SegmentId(seg), attempt, from, result),
            Control::RemoveCommit { seg } => self.forget_segment(SegmentId(seg)),
            Control::RemoveAbort { seg, attempt } => {
                if self.prepared.get(&SegmentId(seg)).map(|p| p.0) == Some(attempt) {
                    self.prepared.remove(&SegmentId(seg));
                    if let Some(s) = self.host.segment(SegmentId(seg)) {
                        s.unmark_removed();
                    }
                }
            }
            Control::Removed { ids } => {
                let known = self.host.removed_ids();
                for id in ids {
                    if known.contains(&id) && self.host.segment(SegmentId(id)).is_none() {
                        continue;
                    }
                    match self.host.segment(SegmentId(id)) {
                        Some(s) => match s.mark_removed() {
                            Ok(()) => self.forget_segment(SegmentId(id)),
                            Err(pids) => log::error!(
                                "{from} says segment {} (id {id:#x}) was removed from the cluster, but pid(s) {pids:?} here have it attached; \
                                 their faults on it now fail (end them)",
                                s.info.name
                            ),
                        },
                        // Remember it anyway, so a peer that was away cannot bring it back here.
                        None => {
                            let _ = self.host.forget(SegmentId(id));
                        }
                    }
                }
            }
            Control::ClearPoison { req, seg } => {
                let seg = SegmentId(seg);
                if self.home_of(seg) == Some(me) {
                    self.start_clear(seg, ClearFor::Peer(from, req));
                } else {
                    self.send_peer(
                        from,
                        PeerFrame::Control(Control::ClearPoisonDone {
                            req,
                            result: Err(format!("{me} is not the home of segment id {}", seg.0)),
                        }),
                    );
                }
            }
            Control::ClearPoisonDone { req, result } => {
                if let Some((r, _, _)) = self.clears.remove(&req) {
                    if result.is_ok() {
                        // Find the segment by asking which clear this was is not needed: what
                        // this node saw poisoned is stale now for every segment it asked about.
                        self.poisoned_seen.clear();
                    }
                    let _ = r.send(result);
                }
            }
            Control::BarrierCancel {
                seg,
                barrier,
                token,
            } => self.barrier_cancel(from, SegmentId(seg), barrier, token),
            Control::LockAcquire { seg, lock, token } => {
                self.lock_acquire(from, SegmentId(seg), lock, token)
            }
            Control::LockGranted { token, .. } => self.lock_granted(token),
            Control::LockRelease { seg, lock, token } => {
                self.lock_release(from, SegmentId(seg), lock, token)
            }
            Control::StatusRequest { req } => {
                let figures = self.my_figures();
                self.send_peer(
                    from,
                    PeerFrame::Control(Control::StatusReply { req, figures }),
                );
            }
            Control::StatusReply { req, figures } => {
                if let Some(w) = self.statuses.get_mut(&req) {
                    w.figures.insert(from, figures);
                }
                self.finish_statuses(false);
            }
        }
    }

    fn refuse_waiter(&mut self, token: u64, reason: String) {
        if let Some(w) = self.barrier_waiters.remove(&token) {
            let _ = w.send(Err(reason.clone()));
        }
        if let Some(w) = self.lock_waiters.remove(&token) {
            let _ = w.send(Err(reason));
        }
    }

    fn barrier_arrive(
        &mut self,
        from: NodeId,
        seg: SegmentId,
        barrier: u32,
        parties: u32,
        token: u64,
    ) {
        let me = self.me();
        if self.home_of(seg) != Some(me) {
            let reason = format!("{me} is not the home of segment id {}", seg.0);
            self.tell(from, token, reason);
            return;
        }
        let b = self.barriers.entry((seg, barrier)).or_default();
        if b.arrived.is_empty() {
            b.parties = parties;
        } else if b.parties != parties {
            let reason = format!(
                "barrier {barrier}: {parties} parties asked, but the waiting round was started for {}",
                b.parties
            );
            self.tell(from, token, reason);
            return;
        }
        b.arrived.push((from, token));
        if b.arrived.len() as u32 >= b.parties.max(1) {
            b.generation += 1;
            let generation = b.generation;
            let mut by_node: HashMap<NodeId, Vec<u64>> = HashMap::new();
            for (n, t) in b.arrived.drain(..) {
                by_node.entry(n).or_default().push(t);
            }
            for (n, tokens) in by_node {
                if n == me {
                    for t in tokens {
                        self.barrier_of.remove(&t);
                        if let Some(w) = self.barrier_waiters.remove(&t) {
                            let _ = w.send(Ok(generation));
                        }
                    }
                } else {
                    self.send_peer(
                        n,
                        PeerFrame::Control(Control::BarrierRelease {
                            seg: seg.0,
                            barrier,
                            tokens,
                            generation,
                        }),
                    );
                }
            }
        }
    }

    /// Run a removal at the home: every node that is not declared dead must confirm that no
    /// process has the segment (and refuse new attachments) within `REMOVE_WAIT`; a file
    /// segment is synced (like unmapping a file); then every node forgets it.
    fn start_remove(&mut self, seg: SegmentId, for_: RemoveFor) {
        let fail = |me: &mut Self, for_: RemoveFor, e: String| me.finish_remove_reply(for_, Err(e));
        if self.removals.contains_key(&seg) {
            return fail(
                self,
                for_,
                "a removal of this segment is already running".into(),
            );
        }
        let Some(s) = self.segs.get(&seg).cloned() else {
            return fail(self, for_, "not a cluster segment of this node".into());
        };
        if let Err(pids) = s.mark_removed() {
            let e = format!(
                "segment {} is attached by pid(s) {pids:?} on {}; end those processes first",
                s.info.name,
                self.me()
            );
            return fail(self, for_, e);
        }
        let peers: Vec<NodeId> = self
            .transport
            .peers()
            .into_iter()
            .filter(|p| self.dead.get(&p.id) != Some(&true))
            .map(|p| p.id)
            .collect();
        let attempt = self.req_id();
        for &p in &peers {
            self.send_peer(
                p,
                PeerFrame::Control(Control::RemovePrepare {
                    seg: seg.0,
                    attempt,
                }),
            );
        }
        self.removals.insert(
            seg,
            Removal {
                attempt,
                waiting: peers.into_iter().collect(),
                deadline: Instant::now() + REMOVE_WAIT,
                sync_call: None,
                for_,
            },
        );
        self.remove_step(seg);
    }

    fn remove_answer(
        &mut self,
        seg: SegmentId,
        attempt: u64,
        from: NodeId,
        result: Result<(), String>,
    ) {
        let Some(r) = self.removals.get_mut(&seg) else {
            return;
        };
        if r.attempt != attempt {
            return;
        }
        match result {
            Ok(()) => {
                r.waiting.remove(&from);
                self.remove_step(seg);
            }
            Err(e) => self.abort_remove(seg, e),
        }
    }

    /// Move a removal on: once every node agreed, sync a file segment, then commit.
    fn remove_step(&mut self, seg: SegmentId) {
        let now = self.now();
        let Some(r) = self.removals.get_mut(&seg) else {
            return;
        };
        if !r.waiting.is_empty() || r.sync_call.is_some() {
            return;
        }
        let file = self
            .segs
            .get(&seg)
            .is_some_and(|s| matches!(s.info.backing, pagemesh_proto::Backing::File { .. }));
        if file {
            let call = self.next_call;
            self.next_call += 1;
            r.sync_call = Some(call);
            self.remove_syncs.insert(call, seg);
            self.node.sync(now, CallId(call), seg);
            return;
        }
        self.commit_remove(seg);
    }

    fn commit_remove(&mut self, seg: SegmentId) {
        let Some(r) = self.removals.remove(&seg) else {
            return;
        };
        self.broadcast(Control::RemoveCommit { seg: seg.0 });
        self.forget_segment(seg);
        self.finish_remove_reply(r.for_, Ok(()));
    }

    fn abort_remove(&mut self, seg: SegmentId, why: String) {
        let Some(r) = self.removals.remove(&seg) else {
            return;
        };
        self.broadcast(Control::RemoveAbort {
            seg: seg.0,
            attempt: r.attempt,
        });
        if let Some(s) = self.segs.get(&seg) {
            s.unmark_removed();
        }
        self.finish_remove_reply(r.for_, Err(format!("not removed: {why}")));
    }

    fn finish_remove_reply(&mut self, for_: RemoveFor, result: Result<(), String>) {
        match for_ {
            RemoveFor::Local(r) => {
                let _ = r.send(result);
            }
            RemoveFor::Peer(n, req) => {
                self.send_peer(n, PeerFrame::Control(Control::RemoveDone { req, result }))
            }
        }
    }

    /// Forget a removed segment on this node: the core, the engine, the daemon's tables.
    fn forget_segment(&mut self, seg: SegmentId) {
        let now = self.now();
        self.node.remove_segment(now, seg);
        // The segment is taken out first and its memory used after: looking it up once it is
        // gone left the pool's count of evictions in progress up for good.
        let removed = self.segs.remove(&seg);
        self.intents.remove(&seg);
        let memory = removed.as_ref().and_then(|s| s.memory.as_ref());
        end_evictions(&mut self.evicting, seg, memory);
        self.prepared.remove(&seg);
        self.poisoned_seen.remove(&seg);
        if let Err(e) = self.host.forget(seg) {
            log::error!(
                "segment id {:#x}: removing it from the catalog failed: {e}",
                seg.0
            );
        }
    }

    /// Removals whose nodes did not all answer in time fail (and are undone everywhere).
    fn expire_removals(&mut self) {
        let late: Vec<SegmentId> = self
            .removals
            .iter()
            .filter(|(_, r)| r.sync_call.is_none() && r.deadline <= Instant::now())
            .map(|(s, _)| *s)
            .collect();
        for seg in late {
            let who: Vec<String> = self.removals[&seg]
                .waiting
                .iter()
                .map(|n| n.to_string())
                .collect();
            self.abort_remove(
                seg,
                format!(
                    "{} did not answer within {} s",
                    who.join(", "),
                    REMOVE_WAIT.as_secs()
                ),
            );
        }
        self.removes
            .retain(|_, (_, t, _)| t.elapsed() < Duration::from_secs(40));
        let expired: Vec<SegmentId> = self
            .prepared
            .iter()
            .filter(|(_, (_, t))| t.elapsed() > PREPARED_EXPIRY)
            .map(|(s, _)| *s)
            .collect();
        for seg in expired {
            self.prepared.remove(&seg);
            if let Some(s) = self.host.segment(seg) {
                log::warn!(
                    "segment {}: prepared for removal {} s ago, but neither commit nor abort came; attachable again",
                    s.info.name,
                    PREPARED_EXPIRY.as_secs()
                );
                s.unmark_removed();
            }
        }
    }

    fn start_clear(&mut self, seg: SegmentId, for_: ClearFor) {
        let todo: VecDeque<u64> = self.node.poisoned_pages(seg).into_iter().collect();
        let id = self.req_id();
        self.clear_jobs.insert(
            id,
            ClearJob {
                seg,
                todo,
                in_flight: 0,
                cleared: 0,
                failed: 0,
                for_,
            },
        );
        self.clear_step(id, None);
    }

    /// One clear-poison call of job `id` ended (or the job starts): issue more, or answer.
    fn clear_step(&mut self, id: u64, ended: Option<CallResult>) {
        let now = self.now();
        let mut issue = Vec::new();
        let finished = {
            let Some(job) = self.clear_jobs.get_mut(&id) else {
                return;
            };
            if let Some(r) = ended {
                job.in_flight -= 1;
                match r {
                    CallResult::Ok => job.cleared += 1,
                    _ => job.failed += 1,
                }
            }
            while job.in_flight < CLEAR_WINDOW {
                let Some(p) = job.todo.pop_front() else {
                    break;
                };
                job.in_flight += 1;
                issue.push(PageKey::new(job.seg, p));
            }
            job.in_flight == 0 && job.todo.is_empty()
        };
        for page in issue {
            let call = self.next_call;
            self.next_call += 1;
            self.clear_calls.insert(call, id);
            self.node.clear_poison(now, CallId(call), page);
        }
        if finished {
            let job = self.clear_jobs.remove(&id).expect("present");
            self.poisoned_seen.remove(&job.seg);
            let result = if job.failed == 0 {
                Ok(job.cleared)
            } else {
                Err(format!(
                    "{} page(s) cleared, {} could not be (still held, or the mapper failed): try again",
                    job.cleared, job.failed
                ))
            };
            match job.for_ {
                ClearFor::Local(r) => {
                    let _ = r.send(result);
                }
                ClearFor::Peer(n, req) => self.send_peer(
                    n,
                    PeerFrame::Control(Control::ClearPoisonDone { req, result }),
                ),
            }
        }
    }

    fn barrier_cancel(&mut self, from: NodeId, seg: SegmentId, barrier: u32, token: u64) {
        if let Some(b) = self.barriers.get_mut(&(seg, barrier)) {
            b.arrived.retain(|a| *a != (from, token));
        }
    }

    fn tell(&mut self, to: NodeId, token: u64, reason: String) {
        if to == self.me() {
            self.refuse_waiter(token, reason);
        } else {
            self.send_peer(
                to,
                PeerFrame::Control(Control::SyncRefused { token, reason }),
            );
        }
    }

    fn lock_acquire(&mut self, from: NodeId, seg: SegmentId, lock: u32, token: u64) {
        let me = self.me();
        if self.home_of(seg) != Some(me) {
            let reason = format!("{me} is not the home of segment id {}", seg.0);
            self.tell(from, token, reason);
            return;
        }
        let l = self.locks.entry((seg, lock)).or_default();
        if l.holder.is_none() {
            l.holder = Some((from, token));
            self.grant_lock(from, seg, lock, token);
        } else {
            l.queue.push_back((from, token));
        }
    }

    fn grant_lock(&mut self, to: NodeId, seg: SegmentId, lock: u32, token: u64) {
        if to == self.me() {
            self.lock_granted(token);
        } else {
            self.send_peer(
                to,
                PeerFrame::Control(Control::LockGranted {
                    seg: seg.0,
                    lock,
                    token,
                }),
            );
        }
    }

    fn lock_granted(&mut self, token: u64) {
        self.lock_of.remove(&token);
        match self.lock_waiters.remove(&token) {
            Some(w) => {
                let _ = w.send(Ok(()));
            }
            // The waiter gave up meanwhile: the grant is released again by its connection.
            None => log::debug!("lock granted to waiter {token}, which is gone"),
        }
    }

    fn lock_release(&mut self, from: NodeId, seg: SegmentId, lock: u32, token: u64) {
        let Some(l) = self.locks.get_mut(&(seg, lock)) else {
            return;
        };
        l.queue.retain(|w| *w != (from, token));
        if l.holder == Some((from, token)) {
            l.holder = l.queue.pop_front();
            if let Some((n, t)) = l.holder {
                self.grant_lock(n, seg, lock, t);
            }
        }
    }

    /// Drop a dead node's barrier arrivals and locks, and fail the local waiters it served.
    fn forget_node(&mut self, peer: NodeId) {
        let orphans: Vec<u64> = self
            .barrier_of
            .iter()
            .filter(|(_, (seg, _))| self.home_of(*seg) == Some(peer))
            .map(|(t, _)| *t)
            .chain(
                self.lock_of
                    .iter()
                    .filter(|(_, seg)| self.home_of(**seg) == Some(peer))
                    .map(|(t, _)| *t),
            )
            .collect();
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
            self.lock_of.remove(&t);
            self.refuse_waiter(t, format!("the segment's home {peer} died or restarted"));
        }
        for b in self.barriers.values_mut() {
            b.arrived.retain(|(n, _)| *n != peer);
        }
        let mut grants = Vec::new();
        for ((seg, lock), l) in self.locks.iter_mut() {
            l.queue.retain(|(n, _)| *n != peer);
            if l.holder.is_some_and(|(n, _)| n == peer) {
                l.holder = l.queue.pop_front();
                if let Some((n, t)) = l.holder {
                    grants.push((n, *seg, *lock, t));
                }
            }
        }
        for (n, seg, lock, t) in grants {
            self.grant_lock(n, seg, lock, t);
        }
    }

    fn check_liveness(&mut self, now: u64) {
        // After a pause of this node itself (stopped, starved of CPU) every peer looks silent,
        // and the peers may have cut it off meanwhile, so nothing comes to read: silence is
        // measured from the end of the pause (one skipped round let a resumed node declare
        // healthy peers dead).
        let gap = now.saturating_sub(self.last_liveness_ms);
        self.last_liveness_ms = now;
        if gap > self.dead_after_ms / 4 {
            log::warn!("the cluster engine did not run for {gap} ms; silence counts from now");
            self.judged_from_ms = now;
            return;
        }
        let mut peers = self.transport.peers();
        for p in &mut peers {
            p.silent_ms = p.silent_ms.min(now - self.judged_from_ms);
        }
        // Only a side that reaches a strict majority of the cluster declares anyone dead: a
        // node that is itself cut off must not void the copies the others hold (it waits,
        // its faults time out, and it learns it was fenced when the link returns).
        let total = peers.len() + 1;
        let reachable = 1 + peers
            .iter()
            .filter(|p| p.silent_ms <= self.dead_after_ms)
            .count();
        let quorum = reachable * 2 > total;
        for p in peers {
            let dead = self.dead.entry(p.id).or_insert(false);
            if p.silent_ms > self.dead_after_ms && !*dead {
                if self.node.peer_epoch(p.id) == Epoch(0) {
                    // Never heard from (not started yet?): it holds nothing of ours, and there
                    // is no incarnation to fence.
                    continue;
                }
                if !quorum {
                    if !self.minority_logged {
                        self.minority_logged = true;
                        log::warn!(
                            "{} is silent, but this node reaches only {reachable} of {total} nodes: no majority, so nobody is declared dead; waiting",
                            p.id
                        );
                    }
                    continue;
                }
                self.minority_logged = false;
                *dead = true;
                log::warn!(
                    "{}: nothing heard for {} ms (limit {} ms): declared dead. Pages whose only copy it held unsynced are poisoned; \
                     it must restart to rejoin",
                    p.id,
                    p.silent_ms,
                    self.dead_after_ms
                );
                self.node.peer_dead(now, p.id);
                let fence = self.node.peer_epoch(p.id);
                self.transport.fence(p.id, fence);
                if let Err(e) = files::store_fence(&self.data_dir, p.id, fence) {
                    log::error!(
                        "{}: storing its fence failed: {e}; a restart of this node would forget it",
                        p.id
                    );
                }
                self.forget_node(p.id);
                // Whatever connection of the fenced incarnation survives is cut, so that if it
                // is alive it redials, is refused as fenced, and stops.
                let conns: Vec<u64> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.from == p.id)
                    .map(|(id, _)| *id)
                    .collect();
                for id in conns {
                    self.close_conn(id, "its node was declared dead");
                }
            } else if p.silent_ms <= self.dead_after_ms && *dead {
                *dead = false;
                log::info!("{}: heard again (epoch {}): alive", p.id, p.epoch);
            }
        }
    }

    fn my_figures(&self) -> NodeFigures {
        let f = &self.figures;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        NodeFigures {
            faults: l(&f.faults),
            remote_fetches: l(&f.remote_fetches),
            invalidations: l(&f.invalidations),
            downgrades: l(&f.downgrades),
            bytes_sent: l(&self.transport.bytes_sent),
            bytes_received: l(&self.transport.bytes_received),
            sigbus: l(&f.sigbus),
            fault_p50_ns: f.latency.quantile(0.50),
            fault_p99_ns: f.latency.quantile(0.99),
        }
    }

    fn finish_statuses(&mut self, _force: bool) {
        let peers = self.transport.peers();
        let now = Instant::now();
        let done: Vec<u64> = self
            .statuses
            .iter()
            .filter(|(_, w)| {
                w.deadline <= now
                    || peers.iter().all(|p| {
                        w.figures.contains_key(&p.id) || self.dead.get(&p.id) == Some(&true)
                    })
            })
            .map(|(r, _)| *r)
            .collect();
        for r in done {
            let Some(mut w) = self.statuses.remove(&r) else {
                continue;
            };
            let mut nodes = vec![ClusterNode {
                id: self.me().0,
                addr: self.cfg.listen.to_string(),
                epoch: self.node.epoch().0,
                alive: true,
                declared_dead: false,
                silent_ms: 0,
                figures: w.figures.remove(&self.me()),
            }];
            for p in &peers {
                nodes.push(ClusterNode {
                    id: p.id.0,
                    addr: p.addr.to_string(),
                    epoch: self.node.peer_epoch(p.id).0.max(p.epoch),
                    alive: p.silent_ms <= self.dead_after_ms,
                    declared_dead: self.dead.get(&p.id) == Some(&true),
                    silent_ms: p.silent_ms,
                    figures: w.figures.remove(&p.id),
                });
            }
            let mut segments: Vec<SegmentInfo> =
                self.segs.values().map(|s| s.info.clone()).collect();
            segments.sort_by(|a, b| a.name.cmp(&b.name));
            let _ = w.reply.send(ClusterStatus {
                cluster_id: self.cfg.cluster_id,
                node: self.me().0,
                epoch: self.node.epoch().0,
                nodes,
                segments,
            });
        }
    }

    fn start_io(
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
                let silent_ms = self.dead_after_ms / 2;
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
        let id = self.next_io;
        self.next_io += 1;
        self.ios.insert(
            id,
            IoJob {
                seg,
                offset,
                buf,
                write,
                remaining: (last - first + 1) as usize,
                error: None,
                reply,
            },
        );
        let access = if write { Access::Write } else { Access::Read };
        for p in first..=last {
            let fid = self.next_fault;
            self.next_fault += 1;
            let key = PageKey::new(seg, p);
            self.pending.insert(
                fid,
                Pending {
                    target: Target::Io { io: id },
                    access,
                },
            );
            self.node.fault(now, FaultId(fid), key, access);
        }
    }

    /// Execute outputs until the core has nothing more to say; durable completions (mapper
    /// writes, intents) are reported after one sync per file for the whole round.
    fn pump(&mut self) {
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

    fn seg(&self, page: PageKey) -> Option<&Arc<Segment>> {
        let s = self.segs.get(&page.seg);
        if s.is_none() {
            log::error!("cluster engine: {page} is not a segment of this node (a bug)");
        }
        s
    }

    fn exec(&mut self, o: &Output) {
        match o {
            Output::Send(env) => {
                // `Local` is the local copy as of now, after the outputs before this send: it
                // must be read here even for a message to this node itself (a later output
                // of the same round may invalidate the copy before the message is used).
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
                            fail_stop(&format!("{page}: reading the local copy to send failed: {e}"));
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
            Output::Install {
                page,
                data,
                writable,
            } => {
                let Some(s) = self.seg(*page).cloned() else {
                    return;
                };
                let bytes: &[u8] = match data {
                    PageData::Zero => &ZERO_PAGE,
                    PageData::Bytes(b) if b.len() == PS as usize => {
                        bump(&self.figures.remote_fetches);
                        b
                    }
                    PageData::Bytes(b) => {
                        log::error!("{page}: a copy of {} bytes arrived, not a page; dropped (a bug or a lying peer)", b.len());
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
                if *writable {
                    self.protect(&s, *page, Protect::Writable);
                }
            }
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
            Output::Invalidate { page } => {
                bump(&self.figures.invalidations);
                if let Some(s) = self.seg(*page).cloned() {
                    if let Err(e) = s.memfd.punch_hole(page.page.0 * PS, PS) {
                        fail_stop(&format!(
                            "{page}: dropping the local copy (punch-hole) failed: {e}"
                        ));
                    }
                    s.set_state(page.page.0, PageState::Absent);
                    if self.recently_invalidated.len() == RECENT_INVALIDATIONS {
                        self.recently_invalidated.pop_front();
                    }
                    self.recently_invalidated.push_back(*page);
                    if self.evicting.remove(page).is_some() {
                        if let Some(m) = &s.memory {
                            m.pool.cluster_evict_done(&m.partition, None);
                        }
                    }
                }
            }
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
            Output::CallDone { call, result } => {
                if let Some(seg) = self.remove_syncs.remove(&call.0) {
                    match result {
                        CallResult::Ok => self.commit_remove(seg),
                        other => self.abort_remove(
                            seg,
                            format!("writing its dirty pages back to its file failed ({other:?})"),
                        ),
                    }
                    return;
                }
                if let Some(job) = self.clear_calls.remove(&call.0) {
                    self.clear_step(job, Some(*result));
                    return;
                }
                if let Some(r) = self.calls.remove(&call.0) {
                    let _ = r.send(match result {
                        CallResult::Ok => Ok(()),
                        CallResult::Failed { pages } => Err(format!(
                            "{pages} page(s) could not be made durable (poisoned, or the home's mapper failed)"
                        )),
                        CallResult::TimedOut => Err("the segment's home did not answer in time".into()),
                        CallResult::UnknownSegment => Err("not a cluster segment of this node".into()),
                    });
                }
            }
            Output::Event(e) => match e {
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
                    self.forget_node(*peer);
                }
                Event::MapperFailed { page, write, error } => log::error!(
                    "{page}: mapper {} failed: {error}",
                    if *write { "write" } else { "read" }
                ),
                Event::ProtocolError { what } => log::warn!("protocol error (ignored): {what}"),
            },
        }
    }

    /// Write-protect (or un-protect) one page in every process attached here.
    fn protect(&self, s: &Segment, page: PageKey, mode: Protect) {
        let clients = s.clients.read().unwrap_or_else(|e| e.into_inner());
        for a in clients.iter() {
            let addr = a.base + page.page.0 * PS;
            if addr >= a.base + a.len {
                continue;
            }
            match a.uffd.write_protect(addr, PS, mode, Wake::Yes) {
                Ok(()) => {}
                Err(e) if e.is_process_gone() => {}
                Err(e) => fail_stop(&format!(
                    "{page}: making it {mode:?} in pid {} failed: {e}",
                    a.pid
                )),
            }
        }
    }

    fn fault_done(&mut self, id: u64, page: PageKey, result: FaultResult) {
        let Some(p) = self.pending.remove(&id) else {
            return;
        };
        let copy = self.node.copy(page);
        match p.target {
            Target::Prefetch => {
                self.prefetches -= 1;
            }
            Target::Mapped { att, fault, start } => {
                debug_assert_eq!(fault.page, page.page.0);
                let addr = fault.addr;
                match result {
                    FaultResult::Ok if !self.home_of(page.seg).is_none_or(|h| self.lease(h)) => {
                        // Granted, but the lease lapsed meanwhile: the copy stays, the process
                        // waits for the lease like any other access.
                        self.park(Parked { att, fault, start });
                        return;
                    }
                    FaultResult::Ok => {
                        let writable = copy.is_some_and(|c| c.state == CacheState::Modified);
                        if p.access == Access::Write && !writable {
                            // Cannot happen by the core's contract; refault rather than hang.
                            log::error!("{page}: write fault resolved without a writable copy (a bug); retrying");
                            let _ = att.uffd.wake(addr, PS);
                            return;
                        }
                        let protect = if writable {
                            Protect::Writable
                        } else {
                            Protect::ReadOnly
                        };
                        match resolve_present(&att.uffd, &fault, protect) {
                            Ok(()) if p.access == Access::Read => self.map_around(&att, page),
                            Ok(()) => {}
                            Err(e) => {
                                att.refuse(&fault, &format_args!("mapping the page failed: {e}"))
                            }
                        }
                    }
                    bad => {
                        bump(&self.figures.sigbus);
                        if bad == FaultResult::Poisoned {
                            self.poisoned_seen
                                .entry(page.seg)
                                .or_default()
                                .insert(page.page.0);
                        }
                        att.refuse(
                            &fault,
                            &format_args!(
                                "offset {:#x}: the fault ended {bad:?}{}",
                                page.page.0 * PS,
                                match bad {
                                    FaultResult::TimedOut => {
                                        " (the home did not answer in time: is it alive?)"
                                    }
                                    FaultResult::Poisoned => {
                                        " (its only copy was lost with a node that died)"
                                    }
                                    _ => "",
                                }
                            ),
                        );
                    }
                }
                self.figures
                    .latency
                    .record(start.elapsed().as_nanos() as u64);
            }
            Target::Io { io } => {
                let home = self.home_of(page.seg);
                let failure = IoFailure::of_fault(page.page.0, result).or_else(|| {
                    let home = home.filter(|h| !self.lease(*h))?;
                    let silent_ms = self.dead_after_ms / 2;
                    Some(IoFailure::NoLease { home, silent_ms })
                });
                let Some(job) = self.ios.get_mut(&io) else {
                    return;
                };
                let memfd = self.segs.get(&job.seg).map(|s| &s.memfd);
                if job.page_done(page.page.0, failure, memfd) {
                    self.ios.remove(&io).expect("present").finish();
                }
            }
        }
    }

    /// Make this round's mapper and intent writes durable (one fsync per file) and report
    /// them to the core, until nothing more is waiting.
    fn flush_durable(&mut self) {
        while !self.durable.is_empty() {
            self.complete_durable();
            self.pump();
        }
    }

    fn complete_durable(&mut self) {
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

/// The kernel cannot be made to agree with the protocol about a page (a page-cache write,
/// punch-hole or write-protect failed). Going on could hand out stale or lost data silently, so
/// the node stops: its processes get SIGBUS from their watchdogs, and its peers treat it as a
/// dead node (its unsynced pages are poisoned, everything else is intact).
fn fail_stop(what: &str) -> ! {
    let what = what.to_string();
    fatal::stop(Fatal::Diverged { what })
}

/// End every eviction of `seg` still in flight (the segment is gone, and so are its pages):
/// each is reported to the pool, so its count of pages on their way out comes back down.
/// Returns how many were ended.
fn end_evictions(
    evicting: &mut HashMap<PageKey, Instant>,
    seg: SegmentId,
    memory: Option<&Memory>,
) -> usize {
    let before = evicting.len();
    evicting.retain(|k, _| k.seg != seg);
    let ended = before - evicting.len();
    if let Some(m) = memory {
        for _ in 0..ended {
            m.pool.cluster_evict_done(&m.partition, None);
        }
    }
    ended
}

#[cfg(test)]
mod tests {
    use super::*;
    use pagemesh_node::memory::{Partition, Pool};

    #[test]
    fn removing_a_segment_ends_its_evictions_in_the_pool() {
        let pool = Pool::new(1024, None);
        let limits = pagemesh_core::pool::Limits {
            min_pages: 0,
            max_pages: 1024,
            weight: 1,
        };
        let partition = Partition::new("default", limits);
        let memory = Memory {
            pool: Arc::clone(&pool),
            partition,
        };
        let (gone, kept) = (SegmentId(7 << 40), SegmentId(9 << 40));
        let mut evicting = HashMap::new();
        for (seg, page) in [(gone, 0), (gone, 5), (gone, 9), (kept, 1)] {
            pool.cluster_evict_started();
            evicting.insert(PageKey::new(seg, page), Instant::now());
        }
        assert_eq!(pool.evicting(), 4);
        assert_eq!(end_evictions(&mut evicting, gone, Some(&memory)), 3);
        assert_eq!(pool.evicting(), 1, "the removed segment's evictions ended");
        assert_eq!(evicting.len(), 1);
        assert!(evicting.contains_key(&PageKey::new(kept, 1)));
    }
}
