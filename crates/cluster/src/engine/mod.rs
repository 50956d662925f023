//! The cluster engine: one thread that owns this node's `pagemesh_core::Node` and executes its
//! outputs against the kernel (memfd, every attached process's uffd), the peer transport and
//! the mappers of the segments homed here.
//!
//! Everything that changes a cluster segment's pages on this node runs on this thread, in the
//! order the core asked for it: a fault is resolved (CONTINUE into the faulting process) while
//! the core still says the copy is valid, and a later invalidation (punch-hole) or downgrade
//! (write-protect in every process) comes after it. That is what makes the kernel's view agree
//! with the core's at every step without per-page locks.

mod clear;
mod conns;
mod control;
mod exec;
mod faults;
mod inputs;
mod liveness;
mod locks;
mod owners;

pub use owners::OwnerRequest;
mod removal;
mod status;

use std::collections::{HashMap, VecDeque};
use std::io::Read;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pagemesh_core::{
    Access, Envelope, LockBugs, LockClient, LockOutput, LockTable, MapperError, Membership,
    MembershipConfig, Node, Output, PageData, PageKey, RemovalBugs, RemovalConfig, RemovalOutput,
    Removals, Verdict,
};
use pagemesh_proto::peer::{Control, NodeFigures, PeerFrame};
use pagemesh_proto::{ClusterStatus, SegmentInfo};
use pagemesh_types::{NodeId, SegmentId, PAGE_SIZE};
use pagemesh_uffd::poll::Epoll;
use pagemesh_uffd::{Fault, FaultReader};

use crate::fatal::{self, Fatal};
pub use crate::input::{ClusterSegStat, Input};
use crate::intents::IntentLog;
use crate::io::IoJob;
use crate::table::Table;
use crate::transport::Transport;
use crate::{ClusterConfig, Host, Waker};
use pagemesh_node::histogram::Histogram;
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
/// Most faults in the core at once (a process's, read-ahead, pages of segment I/O).
const MAX_FAULTS_IN_FLIGHT: usize = 1 << 16;
/// Most syncs and clear-poison calls in the core at once.
const MAX_CALLS_IN_FLIGHT: usize = 1 << 12;
/// Most segment I/O requests at once.
const MAX_IOS_IN_FLIGHT: usize = 1 << 10;
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

/// Who a sync or clear-poison call the core runs is for.
enum CallFor {
    /// A client's `segment sync`.
    Client(Sender<Result<(), String>>),
    /// One page of this clear-poison job.
    Clear(u64),
    /// The write-back of a file segment being removed.
    Removal(SegmentId),
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

/// A removal asked of a segment's home: the reply, when, and which home.
type RemoveWait = (Sender<Result<(), String>>, Instant, NodeId);

/// A create asked of the would-be home: the reply, when, and which home.
type CreateWait = (Sender<Result<SegmentInfo, String>>, Instant, NodeId);

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
    /// The incarnation its hello stated: the only one its envelopes may name.
    epoch: pagemesh_core::Epoch,
    stream: crate::peer_stream::InboundStream,
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
    /// Faults in the core: a process's, read-ahead, or a page of segment I/O.
    faults: Table<Pending>,
    /// Syncs and clear-poison calls in the core, and who each is for.
    calls: Table<CallFor>,
    clear_jobs: HashMap<u64, ClearJob>,
    /// Clear-poison jobs asked while their segment's directory is being rebuilt (this home
    /// restarted): they start when it is rebuilt, or fail after the fault timeout.
    deferred_clears: Vec<(SegmentId, ClearFor, Instant)>,
    /// Clear-poison requests sent to a home: request -> (reply, when).
    clears: HashMap<u64, ClearWait>,
    /// The removals run here as a home and the prepares held here (the rules are the core's).
    removal: Removals<RemoveFor>,
    removal_outs: Vec<RemovalOutput<RemoveFor>>,
    /// Removals asked of a segment's home: request -> (reply, when, home).
    removes: HashMap<u64, RemoveWait>,
    /// Segment I/O requests in flight.
    ios: Table<IoJob>,
    durable: Vec<(SegmentId, Durable)>,
    later: VecDeque<Later>,
    /// The barriers and locks of the segments homed here (the rules are the core's).
    lock_table: LockTable,
    lock_outs: Vec<LockOutput>,
    /// The lock table waits for the peers' reports (logged once when it ends).
    lock_recovering: bool,
    barrier_waiters: HashMap<u64, Sender<Result<u64, String>>>,
    /// The barrier each local waiter waits at (to cancel its arrival).
    barrier_of: HashMap<u64, (SegmentId, u32)>,
    /// The segment of each local lock waiter.
    /// The locks this node's clients hold and wait for at their homes (reported on connect).
    lock_client: LockClient,
    lock_waiters: HashMap<u64, Sender<Result<(), String>>>,
    creates: HashMap<u64, CreateWait>,
    /// Owner changes asked of a segment's home.
    owner_changes: HashMap<u64, owners::OwnerWait>,
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
    /// Which peers are declared dead (the rules are `pagemesh_core::Membership`'s).
    membership: Membership,
    verdicts: Vec<Verdict>,
    fault_timeout: Duration,
    /// Homes whose lease on this node lapsed (their copies here are quarantined).
    lapsed: HashMap<NodeId, bool>,
    /// Faults on segments whose home's lease lapsed, waiting for it (bounded by the fault
    /// timeout).
    parked: Vec<Parked>,
    /// Shutting down: faults are left unread in their uffds (`Input::StopFaults`).
    faults_stopped: bool,
}

/// Where the work on a segment is done.
enum Route {
    /// This node is the segment's home.
    Here,
    /// At its home, another node.
    Home(NodeId),
    /// Nowhere: not a cluster segment of this node.
    Unknown,
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
        let now_ms = transport.now_ms();
        let first_attempt = node.epoch().0 << 32;
        // A (re)started home grants no lock before every peer has reported what it holds.
        let me = node.id();
        let lock_peers: Vec<NodeId> = transport
            .peers()
            .into_iter()
            .map(|p| p.id)
            .filter(|p| *p != me)
            .collect();
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
            faults: Table::new("faults", MAX_FAULTS_IN_FLIGHT),
            calls: Table::new("syncs and clear-poison calls", MAX_CALLS_IN_FLIGHT),
            clear_jobs: HashMap::new(),
            deferred_clears: Vec::new(),
            clears: HashMap::new(),
            removal: Removals::new(RemovalConfig::DAEMON, RemovalBugs::default(), first_attempt),
            removal_outs: Vec::new(),
            removes: HashMap::new(),
            ios: Table::new("segment I/O requests", MAX_IOS_IN_FLIGHT),
            durable: Vec::new(),
            later: VecDeque::new(),
            lock_recovering: !lock_peers.is_empty(),
            lock_table: LockTable::recovering(LockBugs::default(), lock_peers),
            lock_outs: Vec::new(),
            barrier_waiters: HashMap::new(),
            barrier_of: HashMap::new(),
            lock_client: LockClient::new(),
            lock_waiters: HashMap::new(),
            creates: HashMap::new(),
            owner_changes: HashMap::new(),
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
            faults_stopped: false,
            membership: Membership::new(MembershipConfig::new(dead_after_ms), now_ms),
            verdicts: Vec::new(),
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
                self.start_deferred_clears();
                self.give_up_evictions();
                self.expire_removals();
                self.pump();
                self.close_silent_conns();
                self.flush_durable();
                self.finish_statuses(false);
                // The asking client gave up after 10 s.
                self.creates
                    .retain(|_, (_, t, _)| t.elapsed() < Duration::from_secs(15));
                self.owner_changes
                    .retain(|_, (_, t, _)| t.elapsed() < Duration::from_secs(15));
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
