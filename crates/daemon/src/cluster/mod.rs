//! Cluster mode: this daemon is one node of a static cluster (`--node-id`, `--listen`,
//! `--peer`). Zero- and file-backed segments are then cluster segments: every node has them in
//! its catalog, their home runs the directory and the mapper, and every fault on them goes
//! through the coherence core (`pagemesh_core::Node`), driven by the [`engine`] thread over the
//! peer [`transport`]. See `docs/cluster.md`.

pub mod engine;
pub mod fatal;
mod input;
mod intents;
pub mod io;
pub mod requests;
pub mod transport;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};
use std::sync::Arc;
use std::time::Duration;

use pagemesh_core::{Epoch, Node, NodeConfig, Timing};
use pagemesh_proto::{Backing, SegmentInfo};
use pagemesh_types::{NodeId, SegmentId, PAGE_SIZE};

use crate::server::Daemon;
use engine::{Engine, Figures, Input};
use intents::IntentLog;
use pagemesh_node::segment::{Attachment, ClusterPages, EngineStopped, Segment};
use transport::Transport;

/// A node's place in its cluster.
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
}

impl ClusterConfig {
    pub fn new(node_id: u32, listen: SocketAddr, peers: Vec<(u32, SocketAddr)>) -> Self {
        ClusterConfig {
            node_id,
            listen,
            peers,
            cluster_id: 0x7061_6765_6d65_7368, // "pagemesh"
            dead_after_ms: 5_000,
            retry_ms: 50,
            fault_timeout_ms: 30_000,
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
}

/// The protocol's view of a catalog entry.
pub(crate) fn core_info(info: &SegmentInfo) -> pagemesh_core::SegmentInfo {
    pagemesh_core::SegmentInfo {
        id: SegmentId(info.id),
        home: NodeId(info.home.unwrap_or(0)),
        pages: info.size_bytes.div_ceil(PAGE_SIZE),
        backing: match info.backing {
            Backing::Zero => pagemesh_core::Backing::Zero,
            _ => pagemesh_core::Backing::Mapper,
        },
    }
}

fn cluster_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster")
}

pub(crate) fn open_intents(data_dir: &Path, seg: SegmentId) -> std::io::Result<IntentLog> {
    let dir = cluster_dir(data_dir);
    std::fs::create_dir_all(&dir)?;
    IntentLog::open(&dir.join(format!("seg-{}.intents", seg.0)))
}

/// The file that backs a zero segment homed here (sparse: dormant pages take no space). Synced
/// and evicted pages of the segment are written to it.
pub(crate) fn zero_store(data_dir: &Path, id: u64) -> PathBuf {
    cluster_dir(data_dir).join(format!("seg-{id}.pages"))
}

/// Route the faults of a cluster segment to the engine.
pub(crate) fn link(seg: &Segment, tx: Waker) {
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

pub(crate) fn engine_sender(d: &Daemon) -> Option<Waker> {
    d.cluster.get().map(|c| c.tx.clone())
}

pub(crate) fn listen_addr(d: &Daemon) -> String {
    d.cluster
        .get()
        .map_or_else(String::new, |c| c.cfg.listen.to_string())
}

pub(crate) fn cluster_id(d: &Daemon) -> u64 {
    d.cluster.get().map_or(0, |c| c.cfg.cluster_id)
}

/// The fences this node set (peer -> lowest epoch it accepts), kept in `DATA_DIR/cluster/fences`
/// so that a restart of this node does not let a fenced incarnation back in.
fn load_fences(data_dir: &Path) -> Result<Vec<(NodeId, Epoch)>, String> {
    let path = cluster_dir(data_dir).join("fences");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut it = l.split_whitespace().map(str::parse::<u64>);
            match (it.next(), it.next()) {
                (Some(Ok(n)), Some(Ok(e))) if n <= u64::from(u32::MAX) => {
                    Ok((NodeId(n as u32), Epoch(e)))
                }
                _ => Err(format!(
                    "{} has a bad line {l:?}: restore or remove it",
                    path.display()
                )),
            }
        })
        .collect()
}

/// Record durably that `peer` is fenced below `epoch` (a fence only ever rises).
pub(crate) fn store_fence(data_dir: &Path, peer: NodeId, epoch: Epoch) -> std::io::Result<()> {
    use std::io::Write;
    let dir = cluster_dir(data_dir);
    let mut fences = load_fences(data_dir).map_err(std::io::Error::other)?;
    let old = fences
        .iter()
        .filter(|(n, _)| *n == peer)
        .map(|(_, e)| *e)
        .max()
        .unwrap_or_default();
    if epoch <= old {
        return Ok(());
    }
    fences.retain(|(n, _)| *n != peer);
    fences.push((peer, epoch));
    let tmp = dir.join("fences.tmp");
    let mut f = std::fs::File::create(&tmp)?;
    for (n, e) in &fences {
        writeln!(f, "{} {}", n.0, e.0)?;
    }
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join("fences"))?;
    std::fs::File::open(&dir)?.sync_all()
}

/// Read, bump and durably store this node's epoch: every start is a new incarnation.
fn next_epoch(data_dir: &Path) -> Result<Epoch, String> {
    let dir = cluster_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join("epoch");
    let old = match std::fs::read_to_string(&path) {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|e| format!("{} is corrupt ({e}): the node cannot know its incarnation; restore it or remove the data directory", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let epoch = old + 1;
    let tmp = dir.join("epoch.tmp");
    let write = || -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp)?;
        writeln!(f, "{epoch}")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        std::fs::File::open(&dir)?.sync_all()
    };
    write().map_err(|e| format!("storing the epoch in {}: {e}", path.display()))?;
    Ok(Epoch(epoch))
}

/// Start the cluster side of `daemon` (epoch, transport, engine). When the engine must stop the node, `on_fatal` is
/// called (once, on the engine's thread) with the reason.
pub fn start(
    daemon: &Arc<Daemon>,
    cfg: ClusterConfig,
    on_fatal: Box<dyn FnOnce(fatal::Fatal) + Send>,
) -> Result<(), String> {
    let epoch = next_epoch(&daemon.config.data_dir)?;
    let me = NodeId(cfg.node_id);
    // Fences this node set before it restarted hold from the first connection on.
    let fences = load_fences(&daemon.config.data_dir)?;
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
    let transport = Transport::start(
        me,
        epoch,
        cfg.cluster_id,
        cfg.listen,
        &peers,
        Duration::from_millis(cfg.dead_after_ms),
        tx.clone(),
        &fences,
    )
    .map_err(|e| format!("starting the peer transport: {e}"))?;
    let mut all: Vec<NodeId> = peers.iter().map(|p| p.0).collect();
    all.push(me);
    all.sort();
    all.dedup();
    let mut ncfg = NodeConfig::new(me, epoch, all);
    ncfg.timing = Timing {
        retry_ms: cfg.retry_ms,
        fault_timeout_ms: cfg.fault_timeout_ms,
    };
    let segs: HashMap<SegmentId, Arc<Segment>> = daemon
        .segments
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .filter(|s| s.info.home.is_some())
        .map(|s| (SegmentId(s.info.id), Arc::clone(s)))
        .collect();
    let infos: Vec<_> = segs.values().map(|s| core_info(&s.info)).collect();
    let mut intents = HashMap::new();
    for i in infos.iter().filter(|i| i.home == me) {
        let log = open_intents(&daemon.config.data_dir, i.id)
            .map_err(|e| format!("segment id {}: opening its write-intent log: {e}", i.id.0))?;
        intents.insert(i.id, log);
    }
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
    if daemon.cluster.set(handle).is_err() {
        return Err("the cluster was started twice".into());
    }
    let tick_ms = (cfg.retry_ms / 2).clamp(1, 50);
    let engine = Engine::new(
        rx,
        wake_rx,
        Arc::clone(daemon),
        node,
        Arc::clone(&transport),
        figures,
        segs.clone(),
        intents,
        cfg.dead_after_ms,
        tick_ms,
        cfg.fault_timeout_ms,
    )
    .map_err(|e| format!("starting the cluster engine: {e}"))?;
    run_engine(engine, on_fatal)?;
    log::info!(
        "cluster: node {} epoch {} listening for peers on {} ({} peer(s), {} cluster segment(s))",
        cfg.node_id,
        epoch.0,
        cfg.listen,
        peers.len(),
        segs.len()
    );
    Ok(())
}

/// Build the node-local state of a cluster segment: the home opens its mapper (the file, or a
/// sparse store for a zero segment); other nodes only keep a page cache.
pub(crate) fn build_cluster_segment(
    config: &crate::Config,
    info: &SegmentInfo,
    create: bool,
    memory: Option<pagemesh_node::segment::Memory>,
) -> Result<Segment, String> {
    let me = config.cluster.as_ref().map(|c| c.node_id);
    let data_dir = &config.data_dir;
    {
        let mapper: Box<dyn pagemesh_store::Mapper> = if info.home == me {
            let path = match &info.backing {
                Backing::Zero => zero_store(data_dir, info.id),
                Backing::File { path } => PathBuf::from(path),
                Backing::Volume { .. } => {
                    return Err("a volume segment cannot be a cluster segment".into())
                }
            };
            if let Some(dir) = path.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let size = if create || matches!(info.backing, Backing::Zero) {
                Some(info.size_bytes)
            } else {
                None
            };
            let m = pagemesh_store::FileMapper::open(&path, size)
                .map_err(|e| format!("opening {}: {e}", path.display()))?;
            let len = m
                .len_bytes()
                .map_err(|e| format!("reading the size of {}: {e}", path.display()))?;
            if len < info.size_bytes {
                return Err(format!(
                    "backing file {} is {len} bytes, shorter than the segment ({} bytes): restore it",
                    path.display(),
                    info.size_bytes
                ));
            }
            Box::new(m)
        } else {
            Box::new(pagemesh_store::ZeroMapper)
        };
        Segment::new(info.clone(), mapper, memory).map_err(|e| format!("creating its memfd: {e}"))
    }
}

impl Daemon {
    fn link_cluster_segment(&self, seg: &Segment) -> Result<(), String> {
        let tx = engine_sender(self).ok_or("this daemon is not part of a cluster")?;
        link(seg, tx);
        Ok(())
    }

    /// Create a cluster segment homed on this node, persist it and make it visible here.
    /// `announce`: tell the engine (which tells the cluster); the engine itself passes false.
    pub(crate) fn create_cluster_segment(
        &self,
        name: &str,
        size_bytes: Option<u64>,
        backing: Backing,
        home: u32,
        announce: bool,
    ) -> Result<Arc<Segment>, String> {
        if !crate::server::valid_name(name) {
            return Err(format!(
                "invalid segment name {name:?}: 1-64 of [A-Za-z0-9._-]"
            ));
        }
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        if self
            .segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(name)
        {
            return Err(format!("segment {name:?} already exists in the cluster"));
        }
        let size = match (&backing, size_bytes) {
            (_, Some(s)) => s,
            (Backing::File { path }, None) => std::fs::metadata(path)
                .map_err(|e| format!("segment {name}: backing file {path}: {e}"))?
                .len(),
            _ => return Err(format!("segment {name}: a zero segment needs --size")),
        };
        if size == 0 || size > crate::server::MAX_SEGMENT_BYTES {
            return Err(format!("segment {name}: size {size} is out of range"));
        }
        if let Backing::File { path } = &backing {
            if !Path::new(path).is_absolute() {
                return Err(format!("file backing path {path:?} must be absolute"));
            }
        }
        // Ids are unique across the cluster: the home's node id in the high bits.
        let id = (u64::from(home) + 1) << 40 | catalog.next_id();
        let info = SegmentInfo {
            name: name.to_string(),
            id,
            size_bytes: size,
            backing,
            home: Some(home),
        };
        let memory = crate::partitions::memory_for(&self.pool, &info.backing, "default")?;
        let seg = Arc::new(build_cluster_segment(&self.config, &info, true, memory)?);
        self.pool.register(seg.info.id, &seg);
        // Route its faults to the engine before anyone can attach it.
        self.link_cluster_segment(&seg)?;
        catalog.add(&info, "default").map_err(|e| e.to_string())?;
        if announce {
            // The engine takes part in the segment before any attach of it can reach it.
            let c = self
                .cluster
                .get()
                .ok_or("this daemon is not part of a cluster")?;
            c.send(Input::Created(Arc::clone(&seg)))?;
        }
        self.segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.to_string(), Arc::clone(&seg));
        log::info!(
            "created cluster segment {name} (id {id:#x}): {} bytes backed by {}, home node {home}",
            size,
            info.backing
        );
        Ok(seg)
    }

    /// The cluster segment with this id, if this node has it.
    pub(crate) fn cluster_segment(&self, id: u64) -> Option<Arc<Segment>> {
        self.segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .find(|s| s.info.id == id && s.info.home.is_some())
            .cloned()
    }

    /// Ids of cluster segments removed from the cluster.
    pub(crate) fn removed_cluster_segments(&self) -> Vec<u64> {
        self.catalog
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .removed()
    }

    /// Forget a cluster segment on this node (the cluster removed it; nothing is attached here
    /// any more): catalog (remembering the id as removed), the segment table, the memory it
    /// counted, and on its home its store and write-intent log (a file segment keeps its file).
    pub(crate) fn drop_cluster_segment(&self, id: u64) -> Result<(), String> {
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        catalog.remove_cluster(id).map_err(|e| e.to_string())?;
        let seg = {
            let mut segs = self.segments.write().unwrap_or_else(|e| e.into_inner());
            let name = segs
                .iter()
                .find(|(_, s)| s.info.id == id)
                .map(|(n, _)| n.clone());
            name.and_then(|n| segs.remove(&n))
        };
        let Some(seg) = seg else {
            return Ok(());
        };
        seg.release();
        self.pool.unregister(id);
        let me = self.cluster.get().map(|c| c.me());
        if seg.info.home == me {
            let dir = cluster_dir(&self.config.data_dir);
            if matches!(seg.info.backing, Backing::Zero) {
                let _ = std::fs::remove_file(zero_store(&self.config.data_dir, id));
            }
            let _ = std::fs::remove_file(dir.join(format!("seg-{id}.intents")));
        }
        log::info!("cluster segment {} (id {id:#x}) removed", seg.info.name);
        Ok(())
    }

    /// Take a cluster segment another node announced into this node's catalog. `Ok(None)` if
    /// it is known already (or was removed from the cluster).
    pub(crate) fn adopt_cluster_segment(
        &self,
        info: &SegmentInfo,
    ) -> Result<Option<Arc<Segment>>, String> {
        if info.home.is_none() || matches!(info.backing, Backing::Volume { .. }) {
            return Err(format!("segment {} is not a cluster segment", info.name));
        }
        // A peer's catalog is input like any other: check it before allocating anything.
        if !crate::server::valid_name(&info.name)
            || info.size_bytes == 0
            || info.size_bytes > crate::server::MAX_SEGMENT_BYTES
        {
            return Err(format!(
                "refusing segment {:?} of {} bytes from a peer's catalog (invalid name or size)",
                info.name, info.size_bytes
            ));
        }
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        if catalog.removed().contains(&info.id) {
            return Ok(None);
        }
        if let Some(s) = self
            .segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&info.name)
        {
            if s.info.id == info.id {
                return Ok(None);
            }
            return Err(format!(
                "two segments named {:?}: id {:#x} here (home {:?}) and id {:#x} (home {:?}); the later one is ignored on this node. Remove one of them.",
                info.name, s.info.id, s.info.home, info.id, info.home
            ));
        }
        let memory = crate::partitions::memory_for(&self.pool, &info.backing, "default")?;
        let seg = Arc::new(build_cluster_segment(&self.config, info, false, memory)?);
        self.pool.register(seg.info.id, &seg);
        self.link_cluster_segment(&seg)?;
        catalog.add(info, "default").map_err(|e| e.to_string())?;
        self.segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(info.name.clone(), Arc::clone(&seg));
        log::info!(
            "cluster segment {} (id {:#x}, home node {}) joined this node's catalog",
            info.name,
            info.id,
            info.home.unwrap_or(0)
        );
        Ok(Some(seg))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_only_rise_and_survive_a_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(cluster_dir(dir.path())).expect("dir");
        store_fence(dir.path(), NodeId(2), Epoch(6)).expect("store");
        store_fence(dir.path(), NodeId(3), Epoch(2)).expect("store");
        // A lower (or unknown, 0) fence never replaces a higher one.
        store_fence(dir.path(), NodeId(2), Epoch(0)).expect("store");
        store_fence(dir.path(), NodeId(2), Epoch(4)).expect("store");
        let mut f = load_fences(dir.path()).expect("load");
        f.sort();
        assert_eq!(f, vec![(NodeId(2), Epoch(6)), (NodeId(3), Epoch(2))]);
        store_fence(dir.path(), NodeId(2), Epoch(7)).expect("store");
        assert!(load_fences(dir.path())
            .expect("load")
            .contains(&(NodeId(2), Epoch(7))));
        // A corrupt file is an error, not an empty set of fences.
        std::fs::write(cluster_dir(dir.path()).join("fences"), "2 x\n").expect("write");
        assert!(load_fences(dir.path()).is_err());
        assert!(store_fence(dir.path(), NodeId(4), Epoch(1)).is_err());
    }
}
