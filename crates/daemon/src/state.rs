//! The daemon's state: its catalog, the segments and volumes it holds, the memory pool, the
//! fault workers and (in a cluster) the cluster side; and how a segment's node-local state is
//! built from its catalog entry.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::{Arc, Mutex, RwLock};

use pagemesh_proto::{Backing, ErrorCode, Owner, Response, SegmentInfo, UnavailableSegment};
use pagemesh_store::{Mapper, ZeroMapper};
use pagemesh_types::{ByteSize, NodeId};

use crate::catalog::Catalog;
use crate::reply::err;
use crate::Config;
use pagemesh_cluster::ClusterHandle;
use pagemesh_node::memory::Pool;
use pagemesh_node::segment::{Memory, Segment, SharedFrames};
use pagemesh_node::volume::Volume;
use pagemesh_node::workers::Workers;

/// The entry `name` of a table of segments or volumes, or the reply that it does not exist.
#[allow(clippy::result_large_err)]
pub(crate) fn named<T>(
    table: &RwLock<HashMap<String, Arc<T>>>,
    name: &str,
    what: &str,
) -> Result<Arc<T>, Response> {
    table
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .get(name)
        .cloned()
        .ok_or_else(|| {
            err(
                ErrorCode::NotFound,
                format!("no {what} named {name:?} (see `pagemesh {what} list`)"),
            )
        })
}

/// Largest segment (the kernel's memfd limit is far higher; this bounds page-table metadata).
pub(crate) const MAX_SEGMENT_BYTES: u64 = 64 << 40;

pub struct Daemon {
    pub config: Config,
    pub uffd_mode: String,
    pub(crate) catalog: Mutex<Catalog>,
    /// Owners changed since their segments were loaded (`access`).
    pub(crate) owners: crate::owners::Owners,
    pub(crate) segments: RwLock<HashMap<String, Arc<Segment>>>,
    /// Segments of the catalog that could not be opened, by name: listed as such, their names
    /// taken, removable.
    pub(crate) unavailable: RwLock<HashMap<String, UnavailableSegment>>,
    pub(crate) volumes: RwLock<HashMap<String, Arc<Volume>>>,
    pub(crate) pool: Arc<Pool>,
    pub(crate) workers: Arc<Workers>,
    pub(crate) next_attach: AtomicU64,
    /// Open client connections, per user and in all (`connections::admit`).
    pub(crate) admissions: Arc<crate::connections::Admissions>,
    /// VMs being served (`vms`), at most `vms::MAX_VMS`.
    pub(crate) vms: AtomicUsize,
    /// Set once the cluster side is started (cluster mode only).
    pub(crate) cluster: std::sync::OnceLock<Arc<ClusterHandle>>,
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

/// `Size::Create(Some(n))` creates or extends a file to `n` bytes (segment create);
/// `Size::Existing(n)` requires an existing file of at least `n` bytes (daemon restart: a file
/// that went missing or shrank must not silently become zeros).
#[derive(Clone, Copy)]
pub(crate) enum Size {
    Create(Option<u64>),
    Existing(u64),
}

fn open_mapper(
    backing: &Backing,
    size: Size,
    owner: Owner,
    passed: Option<std::fs::File>,
) -> Result<(Box<dyn Mapper>, u64), String> {
    let (size, must_exist) = match size {
        Size::Create(s) => (s, None),
        Size::Existing(n) => (None, Some(n)),
    };
    match backing {
        Backing::Zero => {
            let size = size.or(must_exist).ok_or("a zero segment needs --size")?;
            Ok((Box::new(ZeroMapper), size))
        }
        Backing::Volume { .. } => Err("a volume segment has no mapper".into()),
        Backing::File { path } => {
            let p = Path::new(path);
            if !p.is_absolute() {
                return Err(format!("file backing path {path:?} must be absolute"));
            }
            let m = crate::backing::file_mapper(p, size, owner, passed)?;
            let len = m
                .len_bytes()
                .map_err(|e| format!("reading the size of {path}: {e}"))?;
            if let Some(need) = must_exist {
                if len < need {
                    return Err(format!(
                        "backing file {path} is {len} bytes, shorter than the segment ({need} bytes): restore it"
                    ));
                }
                return Ok((Box::new(m), need));
            }
            let size = size.unwrap_or(len);
            Ok((Box::new(m), size))
        }
    }
}

/// Build a segment's node-local state from its description.
pub(crate) fn build_segment(
    info: &SegmentInfo,
    size: Size,
    volumes: &HashMap<String, Arc<Volume>>,
    memory: Option<Memory>,
    passed: Option<std::fs::File>,
) -> Result<Segment, String> {
    let mut info = info.clone();
    if let Backing::Volume { name } = &info.backing {
        let v = volumes
            .get(name)
            .ok_or_else(|| format!("volume {name} is not available"))?;
        info.size_bytes = v.info.size_bytes;
        let frames: Arc<dyn SharedFrames> = Arc::clone(v) as _;
        return Segment::on_volume(info, frames).map_err(|e| format!("creating its memfd: {e}"));
    }
    let (mapper, size) = open_mapper(&info.backing, size, info.owner, passed)?;
    if size == 0 || size > MAX_SEGMENT_BYTES {
        return Err(format!(
            "size {size} is outside 1B..{}; give --size",
            ByteSize(MAX_SEGMENT_BYTES)
        ));
    }
    info.size_bytes = size;
    Segment::new(info, mapper, memory).map_err(|e| format!("creating its memfd: {e}"))
}

impl Daemon {
    pub fn new(config: Config, uffd_mode: String) -> Result<Arc<Daemon>, String> {
        let catalog = Catalog::open(&config.data_dir).map_err(|e| e.to_string())?;
        let pool = crate::pool::build_pool(&config, &catalog)?;
        let mut volumes = HashMap::new();
        for v in catalog.volumes() {
            let (memory, id) = crate::pool::volume_memory(&pool);
            match Volume::open(v.clone(), config.share_threshold, memory) {
                Ok(vol) => {
                    let vol = Arc::new(vol);
                    pool.register_volume(id, &vol);
                    volumes.insert(v.name.clone(), vol);
                }
                Err(e) => log::error!(
                    "volume {} ({}) from the catalog is unavailable: {e}; restore the image or `pagemesh volume rm {}`",
                    v.name,
                    v.path,
                    v.name
                ),
            }
        }
        let (segments, unavailable) = load_segments(&config, &catalog, &pool, &volumes);
        log::info!(
            "catalog: {} segment(s) loaded from {}",
            segments.len(),
            config.data_dir.display()
        );
        let workers =
            Workers::new().map_err(|e| format!("creating the fault workers' epoll: {e}"))?;
        workers
            .spawn(config.fault_workers)
            .map_err(|e| format!("starting fault worker threads: {e}"))?;
        Ok(Arc::new(Daemon {
            config,
            uffd_mode,
            catalog: Mutex::new(catalog),
            owners: Default::default(),
            segments: RwLock::new(segments),
            unavailable: RwLock::new(unavailable),
            volumes: RwLock::new(volumes),
            pool,
            workers,
            next_attach: AtomicU64::new(1),
            vms: AtomicUsize::new(0),
            admissions: Default::default(),
            cluster: std::sync::OnceLock::new(),
        }))
    }

    // The error is the reply itself, built once per request: its size does not matter here.
    #[allow(clippy::result_large_err)]
    pub(crate) fn segment(&self, name: &str) -> Result<Arc<Segment>, Response> {
        named(&self.segments, name, "segment").map_err(|not_found| {
            match self
                .unavailable
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(name)
            {
                Some(u) => err(
                    ErrorCode::NotFound,
                    format!("segment {name} is unavailable: {}", u.why),
                ),
                None => not_found,
            }
        })
    }
}

/// Open every segment of the catalog; those that cannot be opened are kept aside with why.
fn load_segments(
    config: &Config,
    catalog: &Catalog,
    pool: &Arc<Pool>,
    volumes: &HashMap<String, Arc<Volume>>,
) -> (
    HashMap<String, Arc<Segment>>,
    HashMap<String, UnavailableSegment>,
) {
    let mut segments = HashMap::new();
    let mut unavailable = HashMap::new();
    for (info, partition) in catalog.segments() {
        if segments.contains_key(&info.name) || unavailable.contains_key(&info.name) {
            log::error!(
                "the catalog lists segment {} twice (an earlier release allowed it); the entry with id {} is ignored",
                info.name,
                info.id
            );
            continue;
        }
        let built = if let Some(home) = info.home {
            match config.cluster.as_ref().map(|c| NodeId(c.node_id)) {
                None => Err(format!(
                    "it is a cluster segment (home node {home}) and this daemon was started without its cluster (--node-id, --listen, --peer)"
                )),
                Some(me) => crate::pool::memory_for(pool, &info.backing, "default").and_then(|m| {
                    pagemesh_cluster::build_segment(me, &config.data_dir, &info, false, m)
                }),
            }
        } else {
            crate::pool::memory_for(pool, &info.backing, &partition).and_then(|m| {
                build_segment(&info, Size::Existing(info.size_bytes), volumes, m, None)
            })
        };
        match built {
            Ok(seg) => {
                let seg = Arc::new(seg);
                pool.register(seg.info.id, &seg);
                segments.insert(info.name.clone(), seg);
            }
            Err(e) => {
                let why = format!(
                    "{e}; restore it and restart, or `pagemesh segment rm {}`",
                    info.name
                );
                log::error!(
                    "segment {} from the catalog is unavailable: {why}",
                    info.name
                );
                unavailable.insert(info.name.clone(), UnavailableSegment { info, why });
            }
        }
    }
    (segments, unavailable)
}
