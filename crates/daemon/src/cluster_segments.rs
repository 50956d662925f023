//! The daemon's cluster segments: creating one homed here, adopting one a peer announced,
//! forgetting one the cluster removed, and starting the cluster side, which reaches these
//! through [`pagemesh_cluster::Host`].

use std::path::Path;
use std::sync::Arc;

use pagemesh_cluster::fatal::Fatal;
use pagemesh_cluster::{ClusterConfig, Host, Input};
use pagemesh_node::segment::Segment;
use pagemesh_proto::{Backing, Owner, OwnerChange, SegmentInfo};
use pagemesh_types::{ByteSize, NodeId, SegmentId};

use crate::pool::memory_for;
use crate::state::{valid_name, Daemon, MAX_SEGMENT_BYTES};

/// Start the cluster side of `daemon`. When it must stop the node, `on_fatal` is called (once)
/// with the reason.
pub(crate) fn start(
    daemon: &Arc<Daemon>,
    cfg: ClusterConfig,
    on_fatal: Box<dyn FnOnce(Fatal) + Send>,
) -> Result<(), String> {
    let segments: Vec<Arc<Segment>> = daemon
        .segments
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .values()
        .cloned()
        .collect();
    let prepared = pagemesh_cluster::prepare(cfg, &daemon.config.data_dir, segments)?;
    // Kept before the engine runs: it may adopt (and link) a segment from its first message on.
    if daemon.cluster.set(Arc::clone(prepared.handle())).is_err() {
        return Err("the cluster was started twice".into());
    }
    let host: Arc<dyn Host> = Arc::clone(daemon) as _;
    prepared.start(host, on_fatal)
}

impl Host for Daemon {
    fn segment(&self, id: SegmentId) -> Option<Arc<Segment>> {
        self.cluster_segment(id.0)
    }

    fn removed_ids(&self) -> Vec<u64> {
        self.removed_cluster_segments()
    }

    fn create(
        &self,
        name: &str,
        size_bytes: Option<u64>,
        backing: Backing,
        owner: Owner,
    ) -> Result<Arc<Segment>, String> {
        let me = self.me()?;
        self.create_cluster_segment(name, size_bytes, backing, owner, me.0, false)
    }

    fn set_owner(
        &self,
        seg: SegmentId,
        change: OwnerChange,
        uid: u32,
    ) -> Result<SegmentInfo, String> {
        let s = self
            .cluster_segment(seg.0)
            .ok_or_else(|| format!("no cluster segment with id {:#x} here", seg.0))?;
        let owner = change.apply(self.owner_of(&s.info), uid)?;
        self.record_owner(&s.info, owner)?;
        Ok(self.with_owner(s.info.clone()))
    }

    fn current(&self, info: &SegmentInfo) -> SegmentInfo {
        self.with_owner(info.clone())
    }

    fn adopt(&self, info: &SegmentInfo) -> Result<Option<Arc<Segment>>, String> {
        self.adopt_cluster_segment(info)
    }

    fn forget(&self, id: SegmentId) -> Result<(), String> {
        self.drop_cluster_segment(id.0)
    }
}

impl Daemon {
    fn me(&self) -> Result<NodeId, String> {
        self.cluster
            .get()
            .map(|c| NodeId(c.me()))
            .ok_or_else(|| "this daemon is not part of a cluster".to_string())
    }

    fn link_cluster_segment(&self, seg: &Segment) -> Result<(), String> {
        let c = self
            .cluster
            .get()
            .ok_or("this daemon is not part of a cluster")?;
        c.link(seg);
        Ok(())
    }

    /// Create a cluster segment homed on this node, persist it and make it visible here.
    /// `announce`: tell the engine (which tells the cluster); the engine itself passes false.
    pub(crate) fn create_cluster_segment(
        &self,
        name: &str,
        size_bytes: Option<u64>,
        backing: Backing,
        owner: Owner,
        home: u32,
        announce: bool,
    ) -> Result<Arc<Segment>, String> {
        if !valid_name(name) {
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
        if size == 0 || size > MAX_SEGMENT_BYTES {
            return Err(format!("segment {name}: size {size} is out of range"));
        }
        if let Backing::File { path } = &backing {
            if !Path::new(path).is_absolute() {
                return Err(format!("file backing path {path:?} must be absolute"));
            }
        }
        // Ids are unique across the cluster: the home's node id in the high bits.
        let id = SegmentId::cluster(NodeId(home), catalog.next_id()).0;
        let info = SegmentInfo {
            name: name.to_string(),
            id,
            size_bytes: size,
            backing,
            home: Some(home),
            owner,
        };
        let memory = memory_for(&self.pool, &info.backing, "default")?;
        let seg = Arc::new(pagemesh_cluster::build_segment(
            NodeId(home),
            &self.config.data_dir,
            &info,
            true,
            memory,
        )?);
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
            "created cluster segment {name} (id {id:#x}): {} backed by {}, home node {home}",
            ByteSize(size),
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
            let zero = matches!(seg.info.backing, Backing::Zero);
            pagemesh_cluster::files::remove_segment_files(
                &self.config.data_dir,
                SegmentId(id),
                zero,
            );
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
        if !valid_name(&info.name) || info.size_bytes == 0 || info.size_bytes > MAX_SEGMENT_BYTES {
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
                // Known: its home announces it again after a change of owner or mode.
                if self.owner_of(&s.info) != info.owner {
                    drop(catalog);
                    self.record_owner(&s.info, info.owner)?;
                }
                return Ok(None);
            }
            return Err(format!(
                "two segments named {}: id {:#x} here (home {}) and id {:#x} (home {}); the later one is ignored on this node. Remove one of them.",
                info.name, s.info.id, home_name(s.info.home), info.id, home_name(info.home)
            ));
        }
        let memory = memory_for(&self.pool, &info.backing, "default")?;
        let seg = Arc::new(pagemesh_cluster::build_segment(
            self.me()?,
            &self.config.data_dir,
            info,
            false,
            memory,
        )?);
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

/// A segment's home for a message: "node N", or "none" (a local segment).
fn home_name(home: Option<u32>) -> String {
    home.map_or_else(|| "none".to_string(), |h| format!("node {h}"))
}
