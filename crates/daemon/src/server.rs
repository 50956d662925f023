//! The daemon's Unix socket: handshake, requests, and attachment leases.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use pagemesh_proto::{
    read_frame, write_frame, Backing, DaemonInfo, ErrorCode, FrameError, Request, Response,
    SegmentInfo, VolumeInfo, MAGIC, MAX_IO_CHUNK_BYTES, PROTOCOL_VERSION,
};
use pagemesh_store::{FileMapper, Mapper, ZeroMapper};
use pagemesh_types::{ByteSize, PAGE_SIZE};
use pagemesh_uffd::{fdpass, Uffd};

use crate::catalog::Catalog;
use crate::Config;
use pagemesh_node::memory::Pool;
use pagemesh_node::segment::{Attachment, IoError, Memory, Segment, SharedFrames};
use pagemesh_node::volume::Volume;
use pagemesh_node::workers::Workers;

/// Most client connections at once; more are refused with an error.
const MAX_CONNECTIONS: usize = 1024;
/// Time a new connection has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest segment (the kernel's memfd limit is far higher; this bounds page-table metadata).
pub(crate) const MAX_SEGMENT_BYTES: u64 = 64 << 40;

pub struct Daemon {
    pub config: Config,
    pub uffd_mode: String,
    pub(crate) catalog: Mutex<Catalog>,
    pub(crate) segments: RwLock<HashMap<String, Arc<Segment>>>,
    volumes: RwLock<HashMap<String, Arc<Volume>>>,
    pub(crate) pool: Arc<Pool>,
    workers: Arc<Workers>,
    next_attach: AtomicU64,
    connections: AtomicUsize,
    /// Set once the cluster side is started (cluster mode only).
    pub(crate) cluster: std::sync::OnceLock<Arc<crate::cluster::ClusterHandle>>,
}

type Reply = (Response, Option<Arc<Segment>>);

pub(crate) fn err(code: ErrorCode, message: impl Into<String>) -> Response {
    Response::Error {
        code,
        message: message.into(),
    }
}

pub(crate) fn io_err(e: IoError) -> Response {
    let code = match e {
        IoError::OutOfRange { .. } => ErrorCode::InvalidArgument,
        IoError::Poisoned { .. } => ErrorCode::Poisoned,
        IoError::Mapper { .. }
        | IoError::Memfd { .. }
        | IoError::Volume { .. }
        | IoError::WriteProtect { .. } => ErrorCode::Io,
        IoError::ReadOnly { .. } | IoError::PinLimit { .. } | IoError::PinUnsupported { .. } => {
            ErrorCode::InvalidArgument
        }
        IoError::Load { .. } => ErrorCode::Poisoned,
    };
    err(code, e.to_string())
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

fn open_mapper(backing: &Backing, size: Size) -> Result<(Box<dyn Mapper>, u64), String> {
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
            let m = FileMapper::open(p, size)
                .map_err(|e| format!("opening backing file {path}: {e}"))?;
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
    let (mapper, size) = open_mapper(&info.backing, size)?;
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
        let pool = crate::partitions::build_pool(&config, &catalog)?;
        let mut volumes = HashMap::new();
        for v in catalog.volumes() {
            let (memory, id) = crate::partitions::volume_memory(&pool);
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
        let mut segments = HashMap::new();
        for (info, partition) in catalog.segments() {
            if info.home.is_some() {
                if config.cluster.is_none() {
                    log::error!(
                        "cluster segment {} (home node {}) is in the catalog, but this daemon was started without \
                         its cluster (--node-id, --listen, --peer): the segment is unavailable until it is",
                        info.name,
                        info.home.unwrap_or(0)
                    );
                    continue;
                }
                let built = crate::partitions::memory_for(&pool, &info.backing, "default")
                    .and_then(|m| crate::cluster::build_cluster_segment(&config, &info, false, m));
                match built {
                    Ok(seg) => {
                        let seg = Arc::new(seg);
                        pool.register(seg.info.id, &seg);
                        segments.insert(info.name.clone(), seg);
                    }
                    Err(e) => log::error!(
                        "cluster segment {} from the catalog is unavailable: {e}",
                        info.name
                    ),
                }
                continue;
            }
            let memory = crate::partitions::memory_for(&pool, &info.backing, &partition);
            match memory.and_then(|m| build_segment(&info, Size::Existing(info.size_bytes), &volumes, m)) {
                Ok(seg) => {
                    let seg = Arc::new(seg);
                    pool.register(seg.info.id, &seg);
                    segments.insert(info.name.clone(), seg);
                }
                Err(e) => log::error!(
                    "segment {} from the catalog is unavailable: {e}; restore its backing or `pagemesh segment rm {}`",
                    info.name,
                    info.name
                ),
            }
        }
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
            segments: RwLock::new(segments),
            volumes: RwLock::new(volumes),
            pool,
            workers,
            next_attach: AtomicU64::new(1),
            connections: AtomicUsize::new(0),
            cluster: std::sync::OnceLock::new(),
        }))
    }

    /// Accept connections until the listener fails.
    pub fn serve(self: &Arc<Self>, listener: UnixListener) -> std::io::Result<()> {
        for conn in listener.incoming() {
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    continue;
                }
            };
            if self.connections.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
                self.connections.fetch_sub(1, Ordering::SeqCst);
                let _ = write_frame(
                    &conn,
                    &err(
                        ErrorCode::Internal,
                        format!("the daemon has {MAX_CONNECTIONS} connections; try again later"),
                    ),
                    &[],
                );
                continue;
            }
            let d = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("client-conn".into())
                .spawn(move || {
                    d.connection(conn);
                    d.connections.fetch_sub(1, Ordering::SeqCst);
                });
            if let Err(e) = spawned {
                self.connections.fetch_sub(1, Ordering::SeqCst);
                log::error!("cannot start a connection thread: {e}");
            }
        }
        Ok(())
    }

    // The error is the reply itself, built once per request: its size does not matter here.
    #[allow(clippy::result_large_err)]
    pub(crate) fn segment(&self, name: &str) -> Result<Arc<Segment>, Response> {
        self.segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| {
                err(
                    ErrorCode::NotFound,
                    format!("no segment named {name:?} (see `pagemesh segment list`)"),
                )
            })
    }

    fn connection(&self, sock: UnixStream) {
        let cred = match fdpass::peer_cred(&sock) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("cannot read peer credentials: {e}; closing");
                return;
            }
        };
        let _ = sock.set_read_timeout(Some(HELLO_TIMEOUT));
        match read_frame::<Request>(&sock) {
            Ok((
                Request::Hello {
                    magic,
                    version,
                    client,
                },
                _,
            )) if magic == MAGIC && version == PROTOCOL_VERSION => {
                log::debug!(
                    "client {client:?} connected: pid {} uid {} gid {}",
                    cred.pid,
                    cred.uid,
                    cred.gid
                );
                let _ = write_frame(
                    &sock,
                    &Response::HelloOk {
                        version: PROTOCOL_VERSION,
                        daemon_pid: std::process::id(),
                    },
                    &[],
                );
            }
            Ok((Request::Hello { magic, version, .. }, _)) if magic == MAGIC => {
                log::warn!("pid {}: protocol version {version}, this daemon speaks {PROTOCOL_VERSION}; closing", cred.pid);
                let _ = write_frame(
                    &sock,
                    &err(
                        ErrorCode::VersionMismatch,
                        format!("client protocol version {version} but daemon speaks {PROTOCOL_VERSION}: use a pagemesh client of the daemon's version"),
                    ),
                    &[],
                );
                return;
            }
            Ok(_) | Err(FrameError::Malformed(_)) | Err(FrameError::TooLarge(_)) => {
                log::warn!(
                    "pid {} (uid {}): no valid hello; closing",
                    cred.pid,
                    cred.uid
                );
                let _ = write_frame(
                    &sock,
                    &err(
                        ErrorCode::Protocol,
                        "expected a pagemesh hello first; closing",
                    ),
                    &[],
                );
                return;
            }
            Err(e) => {
                log::debug!("pid {}: connection ended before hello: {e}", cred.pid);
                return;
            }
        }
        let _ = sock.set_read_timeout(None);
        let mut pending_attach: Option<(u64, Arc<Segment>)> = None;
        let mut locks = crate::cluster::requests::HeldLocks::default();
        loop {
            let (req, fds) = match read_frame::<Request>(&sock) {
                Ok(r) => r,
                Err(FrameError::Closed) => return,
                Err(e @ (FrameError::Malformed(_) | FrameError::TooLarge(_))) => {
                    log::warn!("pid {}: {e}; disconnecting it", cred.pid);
                    let _ = write_frame(
                        &sock,
                        &err(ErrorCode::Protocol, format!("{e}; closing")),
                        &[],
                    );
                    return;
                }
                Err(e) => {
                    log::debug!("pid {}: {e}", cred.pid);
                    return;
                }
            };
            if let Request::RegisterUffd {
                attach_id,
                base,
                len,
            } = req
            {
                match pending_attach.take() {
                    Some((id, seg)) if id == attach_id => {
                        self.lease(sock, cred.pid, id, seg, base, len, fds);
                    }
                    _ => {
                        let _ = write_frame(
                            &sock,
                            &err(
                                ErrorCode::Protocol,
                                "RegisterUffd without a matching Attach",
                            ),
                            &[],
                        );
                    }
                }
                return;
            }
            let (resp, memfd_of) = match self.cluster_request(&req, &mut locks) {
                Some(resp) => (resp, None),
                None => self.handle(req),
            };
            let fds: Vec<_> = memfd_of.iter().map(|s| s.memfd().as_fd()).collect();
            if let (Response::Attached { attach_id, .. }, Some(seg)) = (&resp, &memfd_of) {
                pending_attach = Some((*attach_id, Arc::clone(seg)));
            }
            if let Err(e) = write_frame(&sock, &resp, &fds) {
                log::debug!("pid {}: reply failed: {e}", cred.pid);
                return;
            }
        }
    }

    /// Turn the connection into an attachment lease: serve the uffd until the connection closes.
    #[allow(clippy::too_many_arguments)]
    fn lease(
        &self,
        sock: UnixStream,
        pid: i32,
        id: u64,
        seg: Arc<Segment>,
        base: u64,
        len: u64,
        mut fds: Vec<std::os::fd::OwnedFd>,
    ) {
        if fds.len() != 1 || len != seg.mapped_len() || !base.is_multiple_of(PAGE_SIZE) {
            let _ = write_frame(
                &sock,
                &err(
                    ErrorCode::InvalidArgument,
                    format!("RegisterUffd needs exactly one uffd and the whole mapping ({} bytes, page-aligned)", seg.mapped_len()),
                ),
                &[],
            );
            return;
        }
        let uffd = match Uffd::from_received(fds.pop().expect("one fd")) {
            Ok(u) => u,
            Err(e) => {
                log::warn!("pid {pid}: refused its uffd: {e}");
                let _ = write_frame(
                    &sock,
                    &err(ErrorCode::InvalidArgument, format!("RegisterUffd: {e}")),
                    &[],
                );
                return;
            }
        };
        let att = Arc::new(Attachment {
            id,
            pid,
            uffd,
            base,
            len,
            segment: Arc::clone(&seg),
            last_page: std::sync::atomic::AtomicU64::new(0),
            lease: sock.try_clone().ok(),
            volume_map: seg.is_volume().then(|| {
                (0..seg.mapped_len().div_ceil(PAGE_SIZE * 64))
                    .map(|_| AtomicU64::new(0))
                    .collect()
            }),
            volume_user: std::sync::atomic::AtomicBool::new(false),
        });
        if let Err(e) = self.workers.add(att) {
            let _ = write_frame(
                &sock,
                &err(ErrorCode::Internal, format!("cannot watch the uffd: {e}")),
                &[],
            );
            return;
        }
        log::info!(
            "pid {pid} attached segment {} at {base:#x} (attachment {id})",
            seg.info.name
        );
        if write_frame(&sock, &Response::Registered, &[]).is_ok() {
            // Nothing more is expected on a lease: any frame or the close ends it.
            let _ = read_frame::<Request>(&sock);
        }
        self.workers.remove(id);
        log::info!(
            "pid {pid} detached segment {} (attachment {id})",
            seg.info.name
        );
    }

    fn handle(&self, req: Request) -> Reply {
        let r = |resp| (resp, None);
        match req {
            Request::Hello { .. } => r(err(ErrorCode::Protocol, "hello sent twice")),
            Request::CreateSegment {
                name,
                size_bytes,
                backing,
                partition,
                home: _,
            } => r(self.create(name, size_bytes, backing, partition)),
            Request::ListSegments => {
                let mut v: Vec<SegmentInfo> = self
                    .segments
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .map(|s| s.info.clone())
                    .collect();
                v.sort_by(|a, b| a.name.cmp(&b.name));
                r(Response::Segments(v))
            }
            Request::StatSegment { name } => r(self
                .segment(&name)
                .map(|s| Response::Stat(s.stat()))
                .unwrap_or_else(|e| e)),
            Request::SyncSegment { name } => r(match self.segment(&name) {
                Ok(s) => match s.sync() {
                    Ok(pages_written) => Response::Synced { pages_written },
                    Err(e) => io_err(e),
                },
                Err(e) => e,
            }),
            Request::RemoveSegment { name } => r(self.remove(&name)),
            Request::ReadAt { name, offset, len } => r(match self.segment(&name) {
                Ok(_) if len > MAX_IO_CHUNK_BYTES => err(
                    ErrorCode::InvalidArgument,
                    format!("read of {len} bytes exceeds {MAX_IO_CHUNK_BYTES} per request"),
                ),
                Ok(s) => {
                    let mut buf = vec![0u8; len as usize];
                    match s.read_at(offset, &mut buf) {
                        Ok(()) => Response::Data(buf),
                        Err(e) => io_err(e),
                    }
                }
                Err(e) => e,
            }),
            Request::WriteAt { name, offset, data } => r(match self.segment(&name) {
                Ok(s) => match s.write_at(offset, &data) {
                    Ok(()) => Response::Written {
                        bytes: data.len() as u64,
                    },
                    Err(e) => io_err(e),
                },
                Err(e) => e,
            }),
            Request::ClearPoison { name } => r(match self.segment(&name) {
                Ok(s) => Response::PoisonCleared {
                    pages: s.clear_poison(),
                },
                Err(e) => e,
            }),
            Request::Attach { name } => match self.segment(&name) {
                Ok(s) => {
                    let attach_id = self.next_attach.fetch_add(1, Ordering::Relaxed);
                    (
                        Response::Attached {
                            info: s.info.clone(),
                            attach_id,
                        },
                        Some(s),
                    )
                }
                Err(e) => r(e),
            },
            Request::RegisterUffd { .. } => unreachable!("handled by the connection loop"),
            Request::BarrierWait { .. }
            | Request::LockAcquire { .. }
            | Request::LockRelease { .. }
            | Request::ClusterStatus => unreachable!("answered by cluster_request"),
            Request::AddVolume { name, path } => r(self.add_volume(name, path)),
            Request::ListVolumes => {
                let mut v: Vec<VolumeInfo> = self
                    .volumes
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .values()
                    .map(|v| v.info.clone())
                    .collect();
                v.sort_by(|a, b| a.name.cmp(&b.name));
                r(Response::Volumes(v))
            }
            Request::StatVolume { name } => r(match self.volume(&name) {
                Ok(v) => Response::VolumeStat(v.stat(self.volume_users(&name).len() as u64)),
                Err(e) => e,
            }),
            Request::RemoveVolume { name } => r(self.remove_volume(&name)),
            req @ (Request::CreatePartition { .. }
            | Request::ListPartitions
            | Request::StatPartition { .. }
            | Request::SetPartition { .. }
            | Request::RemovePartition { .. }
            | Request::Pin { .. }
            | Request::Unpin { .. }
            | Request::PageInfo { .. }) => r(self.handle_memory(req)),
            Request::DaemonStatus => r(Response::Status(DaemonInfo {
                pid: std::process::id(),
                memory_budget_bytes: self.pool.budget_bytes(),
                memory_resident_bytes: self.pool.resident() * PAGE_SIZE,
                paging_device: self.config.paging_device.display().to_string(),
                paging_slots_used: self.pool.paging.as_ref().map_or(0, |p| u64::from(p.used())),
                paging_slots_total: self
                    .pool
                    .paging
                    .as_ref()
                    .map_or(0, |p| u64::from(p.slots())),
                backpressure_waits: self.pool.waits.load(Ordering::Relaxed),
                version: env!("CARGO_PKG_VERSION").to_string(),
                uffd_mode: self.uffd_mode.clone(),
                fault_workers: self.config.fault_workers as u32,
                segments: self
                    .segments
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .len() as u64,
                attached_clients: self.workers.count() as u64,
                data_dir: self.config.data_dir.display().to_string(),
            })),
        }
    }

    fn create(
        &self,
        name: String,
        size: Option<u64>,
        backing: Backing,
        partition: Option<String>,
    ) -> Response {
        let partition = partition.unwrap_or_else(|| "default".to_string());
        if !valid_name(&name) {
            return err(
                ErrorCode::InvalidArgument,
                format!("invalid segment name {name:?}: use 1-64 of A-Z a-z 0-9 . _ -"),
            );
        }
        if size == Some(0) {
            return err(
                ErrorCode::InvalidArgument,
                "segment size must be at least one byte",
            );
        }
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        if self
            .segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&name)
        {
            return err(
                ErrorCode::AlreadyExists,
                format!("segment {name:?} already exists (`pagemesh segment rm {name}` first)"),
            );
        }
        let size = match (&backing, size) {
            (Backing::Volume { name: v }, _) => match self.volumes.read().unwrap_or_else(|e| e.into_inner()).get(v) {
                Some(vol) if size.is_none() || size == Some(vol.info.size_bytes) => vol.info.size_bytes,
                Some(vol) => {
                    return err(
                        ErrorCode::InvalidArgument,
                        format!("segment {name}: a volume segment has the volume's size ({} bytes); omit --size", vol.info.size_bytes),
                    )
                }
                None => return err(ErrorCode::NotFound, format!("no volume named {v:?} (see `pagemesh volume list`)")),
            },
            (Backing::Zero, None) => return err(ErrorCode::InvalidArgument, format!("segment {name}: a zero segment needs --size")),
            (_, s) => s.unwrap_or(0),
        };
        if size > MAX_SEGMENT_BYTES {
            return err(
                ErrorCode::InvalidArgument,
                format!(
                    "segment {name}: size {} is larger than the limit {}",
                    ByteSize(size),
                    ByteSize(MAX_SEGMENT_BYTES)
                ),
            );
        }
        let info0 = SegmentInfo {
            name: name.clone(),
            id: 0,
            size_bytes: size,
            backing,
            home: None,
        };
        let req_size = if matches!(info0.backing, Backing::File { .. }) && size == 0 {
            None
        } else {
            Some(size)
        };
        let seg = {
            let volumes = self.volumes.read().unwrap_or_else(|e| e.into_inner());
            let memory = match crate::partitions::memory_for(&self.pool, &info0.backing, &partition)
            {
                Ok(m) => m,
                Err(e) => return err(ErrorCode::NotFound, format!("segment {name}: {e}")),
            };
            match build_segment(&info0, Size::Create(req_size), &volumes, memory) {
                Ok(s) => s,
                Err(e) => return err(ErrorCode::InvalidArgument, format!("segment {name}: {e}")),
            }
        };
        let mut seg = seg;
        seg.info.id = catalog.next_id();
        let info = seg.info.clone();
        if let Err(e) = catalog.add(&info, &partition) {
            return err(ErrorCode::Io, e.to_string());
        }
        let seg = Arc::new(seg);
        self.pool.register(seg.info.id, &seg);
        self.segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone(), seg);
        log::info!(
            "created segment {name}: {} backed by {}",
            ByteSize(size),
            info.backing
        );
        Response::Segment(info)
    }

    #[allow(clippy::result_large_err)]
    fn volume(&self, name: &str) -> Result<Arc<Volume>, Response> {
        self.volumes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
            .ok_or_else(|| {
                err(
                    ErrorCode::NotFound,
                    format!("no volume named {name:?} (see `pagemesh volume list`)"),
                )
            })
    }

    /// Segments backed by a volume.
    fn volume_users(&self, volume: &str) -> Vec<String> {
        self.segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| matches!(&s.info.backing, Backing::Volume { name } if name == volume))
            .map(|s| s.info.name.clone())
            .collect()
    }

    fn add_volume(&self, name: String, path: String) -> Response {
        if !valid_name(&name) {
            return err(
                ErrorCode::InvalidArgument,
                format!("invalid volume name {name:?}: use 1-64 of A-Z a-z 0-9 . _ -"),
            );
        }
        if !Path::new(&path).is_absolute() {
            return err(
                ErrorCode::InvalidArgument,
                format!("volume image path {path:?} must be absolute"),
            );
        }
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        if self
            .volumes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&name)
        {
            return err(
                ErrorCode::AlreadyExists,
                format!("volume {name:?} already exists (`pagemesh volume rm {name}` first)"),
            );
        }
        let size = match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() > 0 => m.len(),
            Ok(_) => {
                return err(
                    ErrorCode::InvalidArgument,
                    format!("volume image {path} is not a non-empty regular file"),
                )
            }
            Err(e) => {
                return err(
                    ErrorCode::InvalidArgument,
                    format!("volume image {path}: {e}"),
                )
            }
        };
        let info = VolumeInfo {
            name: name.clone(),
            path: path.clone(),
            size_bytes: size,
        };
        let (memory, id) = crate::partitions::volume_memory(&self.pool);
        let vol = match Volume::open(info.clone(), self.config.share_threshold, memory) {
            Ok(v) => Arc::new(v),
            Err(e) => {
                return err(
                    ErrorCode::Io,
                    format!("volume {name}: opening {path} read-only: {e}"),
                )
            }
        };
        if let Err(e) = catalog.add_volume(&info) {
            return err(ErrorCode::Io, e.to_string());
        }
        self.pool.register_volume(id, &vol);
        self.volumes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone(), vol);
        log::info!("added volume {name}: {path} ({})", ByteSize(size));
        Response::Volume(info)
    }

    fn remove_volume(&self, name: &str) -> Response {
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = self.volume(name) {
            return e;
        }
        let users = self.volume_users(name);
        if !users.is_empty() {
            return err(
                ErrorCode::InvalidArgument,
                format!("volume {name} backs segment(s) {users:?}; remove them first"),
            );
        }
        if let Err(e) = catalog.remove_volume(name) {
            return err(ErrorCode::Io, e.to_string());
        }
        if let Some(v) = self
            .volumes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
        {
            v.release();
        }
        log::info!("removed volume {name}");
        Response::Removed
    }

    fn remove(&self, name: &str) -> Response {
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        let seg = match self.segment(name) {
            Ok(s) => s,
            Err(e) => return e,
        };
        if let Err(pids) = seg.mark_removed() {
            return err(
                ErrorCode::InvalidArgument,
                format!("segment {name} is attached by pid(s) {pids:?}; end those processes or detach first"),
            );
        }
        // Like unmapping a file: dirty data reaches the file before the cache goes away.
        if let Err(e) = seg.sync() {
            seg.unmark_removed();
            return err(
                ErrorCode::Io,
                format!("segment {name} not removed: writing back its dirty pages failed: {e}"),
            );
        }
        if let Err(e) = catalog.remove(name) {
            seg.unmark_removed();
            return err(ErrorCode::Io, e.to_string());
        }
        self.segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        seg.release();
        log::info!("removed segment {name}");
        Response::Removed
    }
}
