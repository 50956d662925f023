//! Cluster mode: a daemon is one node of a static cluster (`--node-id`, `--listen`, `--peer`).
//! Zero- and file-backed segments are then cluster segments: every node has them in its
//! catalog, their home runs the directory and the mapper, and every fault on them goes through
//! the coherence core (`pagemesh_core::Node`), driven by the [`engine`] thread over the peer
//! [`transport`]. See `docs/cluster.md`.
//!
//! This crate knows the node layer (`pagemesh_node`: segments, attachments, the pool) and
//! nothing above it: what it needs of the daemon's catalog it asks through [`Host`].

#![forbid(unsafe_code)]

pub mod engine;
pub mod fatal;
pub mod files;
mod input;
mod intents;
pub mod io;
pub mod lease_board;
mod peer_stream;
pub mod pki;
mod segment;
mod table;
pub mod tls;
pub mod transport;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::Duration;

use pagemesh_core::{Epoch, Node, NodeConfig, Timing};
use pagemesh_node::segment::{Attachment, ClusterPages, EngineStopped, Segment};
use pagemesh_proto::{Backing, SegmentInfo};
use pagemesh_types::{NodeId, SegmentId};

pub use engine::OwnerRequest;
use engine::{Engine, EngineSetup, Figures};
pub use input::{ClusterSegStat, Input};
use lease_board::LeaseBoard;
pub use segment::{build_segment, core_info};
pub use table::Full;
use transport::Transport;

/// The cluster id nodes use unless told otherwise ("pagemesh" in ASCII). Public, so it
/// separates clusters by mistake only, never by intent: TLS is what keeps peers out.
pub const DEFAULT_CLUSTER_ID: u64 = 0x7061_6765_6d65_7368;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterConfig {
    pub node_id: u32,
    /// Where peers reach this node.
    pub listen: SocketAddr,
    /// Every other node.
    pub peers: Vec<(u32, SocketAddr)>,
    /// Nodes of different clusters refuse each other.
    pub cluster_id: u64,
    /// A peer silent for this long is declared dead.
    pub dead_after_ms: u64,
    /// The protocol's retransmission interval.
    pub retry_ms: u64,
    /// A fault or sync that gets no answer in this long ends in SIGBUS / an error.
    pub fault_timeout_ms: u64,
    /// This node's credentials: peer links are TLS 1.3, both ends authenticated by the
    /// cluster CA. `None`: plaintext links, allowed on loopback or with `insecure_peers`.
    pub tls: Option<tls::TlsFiles>,
    /// Allow plaintext, unauthenticated peer links on a non-loopback address (labs only).
    pub insecure_peers: bool,
    /// Most copies per part of a holdings report (`pagemesh_core::HOLDINGS_PER_MESSAGE`).
    pub holdings_per_message: usize,
}

impl ClusterConfig {
    pub fn new(node_id: u32, listen: SocketAddr, peers: Vec<(u32, SocketAddr)>) -> Self {
        ClusterConfig {
            node_id,
            listen,
            peers,
            cluster_id: DEFAULT_CLUSTER_ID,
            dead_after_ms: 5_000,
            retry_ms: 50,
            fault_timeout_ms: 30_000,
            tls: None,
            insecure_peers: false,
            holdings_per_message: pagemesh_core::HOLDINGS_PER_MESSAGE,
        }
    }
}

/// How other threads hand the engine work: a channel, plus one byte on a socket the engine's
/// epoll watches, so a send wakes it at once.
#[derive(Clone)]
pub struct Waker {
    tx: Sender<Input>,
    wake: Arc<UnixStream>,
}

impl Waker {
    pub fn send(&self, input: Input) -> Result<(), String> {
        self.tx
            .send(input)
            .map_err(|_| "the cluster engine has stopped (see the daemon's log)".to_string())?;
        // A full socket means a wake-up is pending already.
        let _ = pagemesh_uffd::fileio::send_nonblocking(self.wake.as_fd(), &[1]);
        Ok(())
    }
}

/// What the cluster side asks of the node that runs it: the node's catalog of segments. The
/// trait is this crate's, the daemon implements it, so the engine never names the daemon.
pub trait Host: Send + Sync {
    /// The cluster segment with this id, if this node has it.
    fn segment(&self, id: SegmentId) -> Option<Arc<Segment>>;
    /// Ids of the cluster segments removed from the cluster (they never come back).
    fn removed_ids(&self) -> Vec<u64>;
    /// Create a cluster segment homed on this node, as a peer asked for a user of its (the
    /// engine tells the cluster about it).
    fn create(
        &self,
        name: &str,
        size_bytes: Option<u64>,
        backing: Backing,
        owner: pagemesh_proto::Owner,
    ) -> Result<Arc<Segment>, String>;
    /// Change the owner or mode of a segment homed here, for caller `uid` (who may: the
    /// owner or root for the mode, root for the owner): persisted, and the segment as it is now.
    fn set_owner(
        &self,
        seg: SegmentId,
        change: pagemesh_proto::OwnerChange,
        uid: u32,
    ) -> Result<SegmentInfo, String>;
    /// `info` with the segment's current owner and mode (changed since it was created).
    fn current(&self, info: &SegmentInfo) -> SegmentInfo;
    /// Take a segment a peer announced into this node's catalog: `Ok(None)` if it is known
    /// already (its owner and mode updated to the announced ones) or was removed from the
    /// cluster.
    fn adopt(&self, info: &SegmentInfo) -> Result<Option<Arc<Segment>>, String>;
    /// Forget a segment the cluster removed (nothing is attached here any more), remembering
    /// its id as removed.
    fn forget(&self, id: SegmentId) -> Result<(), String>;
}

/// The running cluster side of a daemon.
pub struct ClusterHandle {
    pub cfg: ClusterConfig,
    pub epoch: Epoch,
    tx: Waker,
    pub figures: Arc<Figures>,
    pub transport: Arc<Transport>,
}

impl ClusterHandle {
    pub fn send(&self, input: Input) -> Result<(), String> {
        self.tx.send(input)
    }

    pub fn me(&self) -> u32 {
        self.cfg.node_id
    }

    /// Route the faults of a cluster segment of this node to the engine.
    pub fn link(&self, seg: &Segment) {
        link(seg, self.tx.clone());
    }

    /// The engine's channel (held by whatever must tell it something when it ends).
    pub fn waker(&self) -> Waker {
        self.tx.clone()
    }
}

fn link(seg: &Segment, tx: Waker) {
    let _ = seg.cluster.set(Arc::new(tx));
}

/// The engine serves the node layer's cluster segments.
impl ClusterPages for Waker {
    fn attach(&self, att: Arc<Attachment>) -> Result<(), EngineStopped> {
        self.send(Input::Attach(att)).map_err(|_| EngineStopped)
    }

    fn detach(&self, attachment: u64) {
        // A stopped engine serves nothing any more: nothing to stop.
        let _ = self.send(Input::Detach(attachment));
    }

    fn evict(&self, seg: Arc<Segment>, page: u64) -> Result<(), EngineStopped> {
        self.send(Input::Evict { seg, page })
            .map_err(|_| EngineStopped)
    }
}

/// The node's TLS set-up, or `None` for plaintext links where those are allowed (loopback, or
/// `insecure_peers`, said in the log at every start).
fn peer_tls(cfg: &ClusterConfig, me: NodeId) -> Result<Option<tls::PeerTls>, String> {
    if let Some(files) = &cfg.tls {
        return tls::PeerTls::load(files, me, cfg.cluster_id)
            .map(Some)
            .map_err(|e| e.to_string());
    }
    if !cfg.listen.ip().is_loopback() && !cfg.insecure_peers {
        return Err(format!(
            "listening for peers on {} without credentials would let anyone who reaches it read \
             and write every page: give --tls-cert, --tls-key and --tls-ca (made by `pagemesh \
             cluster ca init` and `cluster ca issue`), or --insecure-peers for a lab",
            cfg.listen
        ));
    }
    log::warn!(
        "cluster: peer links on {} are plaintext and unauthenticated ({}): anyone who reaches \
         this address can read and write pages",
        cfg.listen,
        if cfg.insecure_peers {
            "--insecure-peers"
        } else {
            "loopback, no --tls-cert"
        }
    );
    Ok(None)
}

/// The cluster side, set up (epoch taken, fences read, peer transport listening) but with its
/// engine not running yet: the daemon keeps the [`ClusterHandle`] first, so that segments the
/// engine adopts from the first peer message on can be linked to it.
pub struct Prepared {
    handle: Arc<ClusterHandle>,
    setup: EngineSetup,
    rx: Receiver<Input>,
    wake_rx: UnixStream,
}

/// Set up the cluster side of a node whose cluster segments are `segments` (epoch, fences,
/// transport, the core's node).
pub fn prepare(
    cfg: ClusterConfig,
    data_dir: &Path,
    segments: Vec<Arc<Segment>>,
) -> Result<Prepared, String> {
    let me = NodeId(cfg.node_id);
    let tls = peer_tls(&cfg, me)?;
    let epoch = files::next_epoch(data_dir)?;
    // Fences this node set before it restarted hold from the first connection on.
    let fences = files::load_fences(data_dir)?;
    let (chan, rx) = mpsc::channel();
    let (wake, wake_rx) =
        UnixStream::pair().map_err(|e| format!("creating the engine's wake socket: {e}"))?;
    wake_rx
        .set_nonblocking(true)
        .map_err(|e| format!("engine wake socket: {e}"))?;
    let tx = Waker {
        tx: chan,
        wake: Arc::new(wake),
    };
    let peers: Vec<(NodeId, SocketAddr)> =
        cfg.peers.iter().map(|(id, a)| (NodeId(*id), *a)).collect();
    let mut homes: Vec<NodeId> = peers.iter().map(|p| p.0).filter(|&p| p != me).collect();
    homes.sort();
    homes.dedup();
    let board = LeaseBoard::new(
        &homes,
        pagemesh_core::lease::lease_ms(cfg.dead_after_ms),
        cfg.fault_timeout_ms,
    )
    .map_err(|e| format!("creating the lease board: {e}"))?;
    let transport = Transport::start(
        me,
        epoch,
        cfg.cluster_id,
        cfg.listen,
        &peers,
        Duration::from_millis(cfg.dead_after_ms),
        tx.clone(),
        &fences,
        tls,
        Arc::new(board),
    )
    .map_err(|e| format!("starting the peer transport: {e}"))?;
    let segs: HashMap<SegmentId, Arc<Segment>> = segments
        .into_iter()
        .filter(|s| s.info.home.is_some())
        .map(|s| (SegmentId(s.info.id), s))
        .collect();
    let infos: Vec<_> = segs.values().map(|s| core_info(&s.info)).collect();
    let mut intents = HashMap::new();
    for i in infos.iter().filter(|i| i.home == me) {
        let log = files::open_intents(data_dir, i.id)
            .map_err(|e| format!("segment id {}: opening its write-intent log: {e}", i.id.0))?;
        intents.insert(i.id, log);
    }
    let mut all: Vec<NodeId> = peers.iter().map(|p| p.0).collect();
    all.push(me);
    all.sort();
    all.dedup();
    let mut ncfg = NodeConfig::new(me, epoch, all);
    ncfg.holdings_per_message = cfg.holdings_per_message;
    ncfg.timing = Timing {
        retry_ms: cfg.retry_ms,
        fault_timeout_ms: cfg.fault_timeout_ms,
    };
    let mut node = Node::new(ncfg, &infos);
    for &(peer, e) in &fences {
        node.fence(peer, e);
    }
    for s in segs.values() {
        link(s, tx.clone());
    }
    let figures = Arc::new(Figures::default());
    let handle = Arc::new(ClusterHandle {
        cfg: cfg.clone(),
        epoch,
        tx: tx.clone(),
        figures: Arc::clone(&figures),
        transport: Arc::clone(&transport),
    });
    let setup = EngineSetup {
        data_dir: data_dir.to_path_buf(),
        cfg,
        waker: tx,
        node,
        transport,
        figures,
        segs,
        intents,
    };
    Ok(Prepared {
        handle,
        setup,
        rx,
        wake_rx,
    })
}

impl Prepared {
    /// The handle other threads use to reach the engine.
    pub fn handle(&self) -> &Arc<ClusterHandle> {
        &self.handle
    }

    /// Start the engine on its own thread, serving `host`'s cluster segments. When it must
    /// stop the node, `on_fatal` is called (once, on the engine's thread) with the reason.
    pub fn start(
        self,
        host: Arc<dyn Host>,
        on_fatal: Box<dyn FnOnce(fatal::Fatal) + Send>,
    ) -> Result<(), String> {
        let cfg = self.handle.cfg.clone();
        let segments = self.setup.segs.len();
        let engine = Engine::new(self.rx, self.wake_rx, host, self.setup)
            .map_err(|e| format!("starting the cluster engine: {e}"))?;
        run_engine(engine, on_fatal)?;
        log::info!(
            "cluster: node {} epoch {} listening for peers on {} ({} peer(s), {segments} cluster segment(s))",
            cfg.node_id,
            self.handle.epoch.0,
            cfg.listen,
            cfg.peers.len(),
        );
        Ok(())
    }
}

/// Run the engine on its own thread. It stops only with a fatal reason (fenced, diverged from
/// the kernel) or a panic (a bug that leaves the core's state unknown): either ends the daemon
/// through `on_fatal`, so every attached process gets SIGBUS from its watchdog instead of
/// waiting forever.
fn run_engine(
    engine: Engine,
    on_fatal: Box<dyn FnOnce(fatal::Fatal) + Send>,
) -> Result<(), String> {
    std::thread::Builder::new()
        .name("cluster-engine".into())
        .spawn(move || {
            let ended = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| engine.run()));
            let f = match ended {
                Ok(()) => fatal::Fatal::EnginePanicked {
                    message: "its event loop returned".into(),
                },
                Err(payload) => fatal::Fatal::of_unwind(payload),
            };
            on_fatal(f);
        })
        .map(drop)
        .map_err(|e| format!("starting the cluster engine: {e}"))
}
