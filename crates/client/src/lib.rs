//! The pagemesh client library: talk to the node daemon, and attach named segments as memory.
//!
//! ```no_run
//! use std::sync::atomic::Ordering;
//!
//! let client = pagemesh::Client::connect_default()?;
//! let seg = client.attach("counters")?;
//! // Plain memory, shared with every process that attached "counters":
//! seg.write_at(4096, b"hello")?;
//! let total = seg.atomics_u64()[0].fetch_add(1, Ordering::SeqCst) + 1;
//! println!("{total} increments so far; {} bytes mapped at {:p}", seg.len(), seg.as_ptr());
//! seg.sync()?; // file-backed segments: dirty pages are durable in the file after this
//! # Ok::<(), pagemesh::ClientError>(())
//! ```
//!
//! Every page fault in the mapping is served by the daemon. If the daemon goes away, a watchdog
//! in this library answers every later fault with a poisoned page, so the access raises SIGBUS
//! at its address: the process never reads silent zeros and never hangs.

#![forbid(unsafe_code)]

mod lease_watch;
mod mapping;
mod sync;
pub mod vm;

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pagemesh_proto::{
    read_frame, write_frame, FrameError, Request, Response, MAGIC, PROTOCOL_VERSION,
};

use pagemesh_uffd::poll::wait_readable;

pub use mapping::Mapping;
pub use pagemesh_proto::{
    Backing, ClusterNode, ClusterStatus, DaemonInfo, ErrorCode, Owner, PageInfo, PartitionLimits,
    PartitionStat, SegmentInfo, SegmentStat, UnavailableSegment, VmRegion, VolumeInfo, VolumeStat,
    MAX_IO_CHUNK_BYTES,
};
pub use sync::{Barrier, LockGuard};

/// Default daemon socket, overridden by `PAGEMESH_SOCKET`.
pub const DEFAULT_SOCKET: &str = "/run/pagemesh/pagemesh.sock";
/// How long a request waits for its reply by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How long `sync` may take (it writes every dirty page and fsyncs).
pub const SYNC_TIMEOUT: Duration = Duration::from_secs(600);

/// What went wrong talking to the daemon.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the pagemesh daemon at {path}: {source}; is `pagemesh daemon` running? (set --socket or PAGEMESH_SOCKET)")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("talking to the daemon at {path}: {source}")]
    Frame { path: PathBuf, source: FrameError },
    #[error("the daemon at {path} did not answer {what} within {timeout:?}")]
    Timeout {
        path: PathBuf,
        what: &'static str,
        timeout: Duration,
    },
    #[error("{message}")]
    Daemon { code: ErrorCode, message: String },
    #[error("the daemon sent an unexpected reply to {what}: {reply}")]
    Unexpected { what: &'static str, reply: String },
    #[error("segment {segment}: {what}: {source}")]
    Attach {
        segment: String,
        what: &'static str,
        source: std::io::Error,
    },
    #[error("range {offset}+{len} is outside the {size}-byte segment")]
    OutOfRange { offset: u64, len: u64, size: u64 },
    #[error("segment {segment} is attached read-only")]
    ReadOnly { segment: String },
    #[error("backing file {path}: {source}")]
    Backing {
        path: String,
        source: std::io::Error,
    },
}

impl ClientError {
    /// The daemon's error class, when the daemon refused the request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Daemon { code, .. } => Some(*code),
            _ => None,
        }
    }
}

struct Inner {
    path: PathBuf,
    /// `None` after a timeout or a broken frame: a late reply must never be taken for the
    /// answer to a later request, so the next call opens a fresh connection.
    sock: Mutex<Option<UnixStream>>,
}

/// A connection to the node daemon. Cheap to clone; requests are serialised per connection.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// The socket path from `PAGEMESH_SOCKET`, or the default.
pub fn default_socket() -> PathBuf {
    std::env::var_os("PAGEMESH_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SOCKET))
}

/// Connect and say hello (bounded by `DEFAULT_TIMEOUT`).
pub(crate) fn handshake(path: &Path) -> Result<UnixStream, ClientError> {
    let sock = UnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.into(),
        source,
    })?;
    let hello = Request::Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        client: format!(
            "pagemesh-client/{} pid {}",
            env!("CARGO_PKG_VERSION"),
            std::process::id()
        ),
    };
    match roundtrip(path, &sock, &hello, &[], "hello", DEFAULT_TIMEOUT)? {
        (Response::HelloOk { .. }, _) => Ok(sock),
        (other, _) => Err(unexpected("hello", other)),
    }
}

pub(crate) fn roundtrip(
    path: &Path,
    sock: &UnixStream,
    req: &Request,
    fds: &[std::os::fd::BorrowedFd<'_>],
    what: &'static str,
    timeout: Duration,
) -> Result<(Response, Vec<OwnedFd>), ClientError> {
    let frame_err = |source| ClientError::Frame {
        path: path.into(),
        source,
    };
    sock.set_read_timeout(Some(timeout))
        .map_err(|e| frame_err(FrameError::Io(e)))?;
    if let Err(e) = write_frame(sock, req, fds) {
        // The daemon may have closed the connection saying why (too many connections, idle):
        // that answer is more use than "broken pipe".
        let closed =
            matches!(&e, FrameError::Io(io) if io.kind() == std::io::ErrorKind::BrokenPipe);
        return match read_frame::<Response>(sock) {
            Ok((Response::Error { code, message }, _)) if closed => {
                Err(ClientError::Daemon { code, message })
            }
            _ => Err(frame_err(e)),
        };
    }
    match read_frame::<Response>(sock) {
        Ok((Response::Error { code, message }, _)) => Err(ClientError::Daemon { code, message }),
        Ok(r) => Ok(r),
        Err(e) if e.is_timeout() => Err(ClientError::Timeout {
            path: path.into(),
            what,
            timeout,
        }),
        Err(e) => Err(frame_err(e)),
    }
}

/// Whether a request failed because the daemon had closed its connection unread: its idle
/// notice came back, or the request could not be written at all.
fn closed_unread(r: &Result<(Response, Vec<OwnedFd>), ClientError>) -> bool {
    match r {
        Err(ClientError::Daemon {
            code: ErrorCode::Idle,
            ..
        }) => true,
        Err(ClientError::Frame {
            source: FrameError::Io(e),
            ..
        }) => e.kind() == std::io::ErrorKind::BrokenPipe,
        _ => false,
    }
}

pub(crate) fn unexpected(what: &'static str, reply: Response) -> ClientError {
    ClientError::Unexpected {
        what,
        reply: format!("{reply:?}"),
    }
}

/// Open a segment's backing file read-write as this process may (created and extended to
/// `size` if given).
fn open_backing(path: &str, size: Option<u64>) -> Result<std::fs::File, ClientError> {
    let err = |source| ClientError::Backing {
        path: path.to_string(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(size.is_some())
        .truncate(false)
        .open(path)
        .map_err(err)?;
    if let Some(size) = size {
        if f.metadata().map_err(err)?.len() < size {
            f.set_len(size).map_err(err)?;
        }
    }
    Ok(f)
}

/// How [`Client::create_segment_with`] creates a segment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateOptions {
    /// The memory partition its pages count against (`None`: "default").
    pub partition: Option<String>,
    /// The home node of a cluster segment (`None`: the node this client talks to).
    pub home: Option<u32>,
    /// Permission bits (`None`: 0600); the caller owns the segment.
    pub mode: Option<u32>,
}

impl Client {
    /// Connect to the daemon at `path`.
    pub fn connect(path: impl AsRef<Path>) -> Result<Client, ClientError> {
        let path = path.as_ref().to_path_buf();
        let sock = handshake(&path)?;
        Ok(Client {
            inner: Arc::new(Inner {
                path,
                sock: Mutex::new(Some(sock)),
            }),
        })
    }

    /// Connect to the daemon at `PAGEMESH_SOCKET`, or at `/run/pagemesh/pagemesh.sock`.
    pub fn connect_default() -> Result<Client, ClientError> {
        Client::connect(default_socket())
    }

    /// The daemon's socket path.
    pub fn socket_path(&self) -> &Path {
        &self.inner.path
    }

    fn call(
        &self,
        req: Request,
        what: &'static str,
        timeout: Duration,
    ) -> Result<(Response, Vec<OwnedFd>), ClientError> {
        self.call_with(req, &[], what, timeout)
    }

    /// [`Client::call`], with descriptors passed along (`SCM_RIGHTS`).
    fn call_with(
        &self,
        req: Request,
        fds: &[std::os::fd::BorrowedFd<'_>],
        what: &'static str,
        timeout: Duration,
    ) -> Result<(Response, Vec<OwnedFd>), ClientError> {
        let mut guard = self.inner.sock.lock().unwrap_or_else(|e| e.into_inner());
        // A kept connection with something to read was closed by the daemon while idle (its
        // notice, or the end): it is not used again.
        let kept = guard
            .take()
            .filter(|s| !matches!(wait_readable(s.as_fd(), 0), Ok(true)));
        let reused = kept.is_some();
        let sock = match kept {
            Some(s) => s,
            None => handshake(&self.inner.path)?,
        };
        let mut r = roundtrip(&self.inner.path, &sock, &req, fds, what, timeout);
        let mut sock = sock;
        if reused && closed_unread(&r) {
            // The daemon closed the idle connection before reading the request: nothing was
            // done; send it again on a new one.
            sock = handshake(&self.inner.path)?;
            r = roundtrip(&self.inner.path, &sock, &req, fds, what, timeout);
        }
        if !matches!(
            r,
            Err(ClientError::Timeout { .. } | ClientError::Frame { .. })
                | Err(ClientError::Daemon {
                    code: ErrorCode::Idle,
                    ..
                })
        ) {
            *guard = Some(sock);
        }
        r
    }

    /// Create a segment in the `default` partition. `size_bytes: None` is allowed for file
    /// backing (the file's size) and volume backing (the volume's size).
    pub fn create_segment(
        &self,
        name: &str,
        size_bytes: Option<u64>,
        backing: Backing,
    ) -> Result<SegmentInfo, ClientError> {
        self.create_segment_in(name, size_bytes, backing, None)
    }

    /// Create a segment whose pages count against `partition`.
    pub fn create_segment_in(
        &self,
        name: &str,
        size_bytes: Option<u64>,
        backing: Backing,
        partition: Option<&str>,
    ) -> Result<SegmentInfo, ClientError> {
        let opts = CreateOptions {
            partition: partition.map(str::to_string),
            ..CreateOptions::default()
        };
        self.create_segment_with(name, size_bytes, backing, &opts)
    }

    /// Create a segment with every option: its partition, its home (a cluster segment) and
    /// its mode. The caller owns it.
    pub fn create_segment_with(
        &self,
        name: &str,
        size_bytes: Option<u64>,
        backing: Backing,
        opts: &CreateOptions,
    ) -> Result<SegmentInfo, ClientError> {
        // A backing file is opened here, with this process's rights, and passed to the daemon
        // (which would otherwise open it as root): created if a size is given and extended to
        // it, never truncated. Not for a segment homed on a named node: the path is that node's,
        // which opens it itself (root's to ask).
        let file = match (&backing, opts.home) {
            (Backing::File { path }, None) => Some(open_backing(path, size_bytes)?),
            _ => None,
        };
        let fds: Vec<_> = file.iter().map(|f| f.as_fd()).collect();
        let req = Request::CreateSegment {
            name: name.into(),
            size_bytes,
            backing,
            partition: opts.partition.clone(),
            home: opts.home,
            mode: opts.mode,
        };
        match self.call_with(req, &fds, "create", DEFAULT_TIMEOUT)? {
            (Response::Segment(info), _) => Ok(info),
            (r, _) => Err(unexpected("create", r)),
        }
    }

    /// Change a segment's permission bits (its owner or root may).
    pub fn chmod_segment(&self, name: &str, mode: u32) -> Result<SegmentInfo, ClientError> {
        let req = Request::ChmodSegment {
            name: name.into(),
            mode,
        };
        match self.call(req, "chmod", DEFAULT_TIMEOUT)? {
            (Response::Segment(info), _) => Ok(info),
            (r, _) => Err(unexpected("chmod", r)),
        }
    }

    /// Change a segment's owner and group (root may; `None` keeps either).
    pub fn chown_segment(
        &self,
        name: &str,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<SegmentInfo, ClientError> {
        let req = Request::ChownSegment {
            name: name.into(),
            uid,
            gid,
        };
        match self.call(req, "chown", DEFAULT_TIMEOUT)? {
            (Response::Segment(info), _) => Ok(info),
            (r, _) => Err(unexpected("chown", r)),
        }
    }

    fn partition_call(
        &self,
        req: Request,
        what: &'static str,
    ) -> Result<PartitionStat, ClientError> {
        match self.call(req, what, DEFAULT_TIMEOUT)? {
            (Response::Partition(p), _) => Ok(p),
            (r, _) => Err(unexpected(what, r)),
        }
    }

    /// Create a memory partition.
    pub fn create_partition(
        &self,
        name: &str,
        limits: PartitionLimits,
    ) -> Result<PartitionStat, ClientError> {
        self.partition_call(
            Request::CreatePartition {
                name: name.into(),
                limits,
            },
            "partition create",
        )
    }

    /// Change a partition's limits (`None` keeps a limit).
    pub fn set_partition(
        &self,
        name: &str,
        min_bytes: Option<u64>,
        max_bytes: Option<u64>,
        weight: Option<u32>,
    ) -> Result<PartitionStat, ClientError> {
        let req = Request::SetPartition {
            name: name.into(),
            min_bytes,
            max_bytes,
            weight,
        };
        self.partition_call(req, "partition set")
    }

    /// One partition's limits and use.
    pub fn stat_partition(&self, name: &str) -> Result<PartitionStat, ClientError> {
        self.partition_call(
            Request::StatPartition { name: name.into() },
            "partition stat",
        )
    }

    /// Every partition.
    pub fn list_partitions(&self) -> Result<Vec<PartitionStat>, ClientError> {
        match self.call(Request::ListPartitions, "partition list", DEFAULT_TIMEOUT)? {
            (Response::Partitions(v), _) => Ok(v),
            (r, _) => Err(unexpected("partition list", r)),
        }
    }

    /// Remove a partition that holds no segment.
    pub fn remove_partition(&self, name: &str) -> Result<(), ClientError> {
        match self.call(
            Request::RemovePartition { name: name.into() },
            "partition rm",
            DEFAULT_TIMEOUT,
        )? {
            (Response::Removed, _) => Ok(()),
            (r, _) => Err(unexpected("partition rm", r)),
        }
    }

    /// Fault in and pin a byte range of a segment; returns the pages newly pinned.
    pub fn pin(&self, name: &str, offset: u64, len: u64) -> Result<u64, ClientError> {
        match self.call(
            Request::Pin {
                name: name.into(),
                offset,
                len,
            },
            "pin",
            SYNC_TIMEOUT,
        )? {
            (Response::Pinned { pages }, _) => Ok(pages),
            (r, _) => Err(unexpected("pin", r)),
        }
    }

    /// Unpin a byte range of a segment; returns the pages unpinned.
    pub fn unpin(&self, name: &str, offset: u64, len: u64) -> Result<u64, ClientError> {
        match self.call(
            Request::Unpin {
                name: name.into(),
                offset,
                len,
            },
            "unpin",
            DEFAULT_TIMEOUT,
        )? {
            (Response::Unpinned { pages }, _) => Ok(pages),
            (r, _) => Err(unexpected("unpin", r)),
        }
    }

    /// One page's state and paging slot.
    pub fn page_info(&self, name: &str, page: u64) -> Result<PageInfo, ClientError> {
        match self.call(
            Request::PageInfo {
                name: name.into(),
                page,
            },
            "page info",
            DEFAULT_TIMEOUT,
        )? {
            (Response::Page(p), _) => Ok(p),
            (r, _) => Err(unexpected("page info", r)),
        }
    }

    /// Every segment of this node's catalog.
    pub fn list_segments(&self) -> Result<Vec<SegmentInfo>, ClientError> {
        match self.call(Request::ListSegments, "list", DEFAULT_TIMEOUT)? {
            (Response::Segments(v), _) => Ok(v),
            (r, _) => Err(unexpected("list", r)),
        }
    }

    /// The segments of this node's catalog it could not open, and why (`segment rm` forgets
    /// one).
    pub fn list_unavailable(&self) -> Result<Vec<UnavailableSegment>, ClientError> {
        match self.call(Request::ListUnavailable, "list", DEFAULT_TIMEOUT)? {
            (Response::Unavailable(v), _) => Ok(v),
            (r, _) => Err(unexpected("list", r)),
        }
    }

    /// A segment's page counts and counters on this node.
    pub fn stat(&self, name: &str) -> Result<SegmentStat, ClientError> {
        match self.call(
            Request::StatSegment { name: name.into() },
            "stat",
            DEFAULT_TIMEOUT,
        )? {
            (Response::Stat(s), _) => Ok(s),
            (r, _) => Err(unexpected("stat", r)),
        }
    }

    /// Write a file segment's dirty pages back and fsync; returns the pages written.
    pub fn sync(&self, name: &str) -> Result<u64, ClientError> {
        match self.call(
            Request::SyncSegment { name: name.into() },
            "sync",
            SYNC_TIMEOUT,
        )? {
            (Response::Synced { pages_written }, _) => Ok(pages_written),
            (r, _) => Err(unexpected("sync", r)),
        }
    }

    /// Remove a segment from the catalog; dirty pages of a file segment are written back first
    /// and the file stays.
    pub fn remove_segment(&self, name: &str) -> Result<(), ClientError> {
        match self.call(
            Request::RemoveSegment { name: name.into() },
            "rm",
            DEFAULT_TIMEOUT,
        )? {
            (Response::Removed, _) => Ok(()),
            (r, _) => Err(unexpected("rm", r)),
        }
    }

    /// Read through the node's page cache (split into requests of at most 4 MiB).
    pub fn read_at(&self, name: &str, offset: u64, buf: &mut [u8]) -> Result<(), ClientError> {
        let mut done = 0usize;
        while done < buf.len() {
            let n = (buf.len() - done).min(MAX_IO_CHUNK_BYTES as usize);
            let req = Request::ReadAt {
                name: name.into(),
                offset: offset + done as u64,
                len: n as u64,
            };
            match self.call(req, "read", DEFAULT_TIMEOUT)? {
                (Response::Data(d), _) if d.len() == n => buf[done..done + n].copy_from_slice(&d),
                (r, _) => return Err(unexpected("read", r)),
            }
            done += n;
        }
        Ok(())
    }

    /// Write through the node's page cache (split into requests of at most 4 MiB).
    pub fn write_at(&self, name: &str, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        for (i, chunk) in data.chunks(MAX_IO_CHUNK_BYTES as usize).enumerate() {
            let off = offset + (i as u64) * MAX_IO_CHUNK_BYTES;
            let req = Request::WriteAt {
                name: name.into(),
                offset: off,
                data: chunk.to_vec(),
            };
            match self.call(req, "write", DEFAULT_TIMEOUT)? {
                (Response::Written { .. }, _) => {}
                (r, _) => return Err(unexpected("write", r)),
            }
        }
        Ok(())
    }

    /// Clear every poisoned page of a segment; returns how many.
    pub fn clear_poison(&self, name: &str) -> Result<u64, ClientError> {
        match self.call(
            Request::ClearPoison { name: name.into() },
            "clear-poison",
            DEFAULT_TIMEOUT,
        )? {
            (Response::PoisonCleared { pages }, _) => Ok(pages),
            (r, _) => Err(unexpected("clear-poison", r)),
        }
    }

    /// Create a segment shared by the whole cluster, homed on node `home` (default: the node
    /// this client talks to). Every node's catalog has it a moment later.
    pub fn create_cluster_segment(
        &self,
        name: &str,
        size_bytes: Option<u64>,
        backing: Backing,
        home: Option<u32>,
    ) -> Result<SegmentInfo, ClientError> {
        let opts = CreateOptions {
            home,
            ..CreateOptions::default()
        };
        self.create_segment_with(name, size_bytes, backing, &opts)
    }

    /// Wait at barrier `barrier` of cluster segment `segment` until `parties` processes, on any
    /// nodes, arrived. Served by the segment's home. Returns the barrier's round (from 1).
    pub fn barrier_wait(
        &self,
        segment: &str,
        barrier: u32,
        parties: u32,
        timeout: Duration,
    ) -> Result<u64, ClientError> {
        let req = Request::BarrierWait {
            name: segment.into(),
            barrier,
            parties,
            timeout_ms: timeout.as_millis() as u64,
        };
        match self.call(req, "barrier", timeout + DEFAULT_TIMEOUT)? {
            (Response::BarrierPassed { generation }, _) => Ok(generation),
            (r, _) => Err(unexpected("barrier", r)),
        }
    }

    /// Take lock `lock` of cluster segment `segment` (FIFO, served by its home). It is held
    /// until [`Client::unlock`] or until this client's connection closes.
    pub fn lock(&self, segment: &str, lock: u32, timeout: Duration) -> Result<(), ClientError> {
        let req = Request::LockAcquire {
            name: segment.into(),
            lock,
            timeout_ms: timeout.as_millis() as u64,
        };
        match self.call(req, "lock", timeout + DEFAULT_TIMEOUT)? {
            (Response::LockHeld, _) => Ok(()),
            (r, _) => Err(unexpected("lock", r)),
        }
    }

    /// Release a lock taken with [`Client::lock`].
    pub fn unlock(&self, segment: &str, lock: u32) -> Result<(), ClientError> {
        let req = Request::LockRelease {
            name: segment.into(),
            lock,
        };
        match self.call(req, "unlock", DEFAULT_TIMEOUT)? {
            (Response::LockReleased, _) => Ok(()),
            (r, _) => Err(unexpected("unlock", r)),
        }
    }

    /// The cluster as the daemon sees it: nodes, epochs, liveness, figures, segments.
    pub fn cluster_status(&self) -> Result<ClusterStatus, ClientError> {
        match self.call(Request::ClusterStatus, "cluster status", DEFAULT_TIMEOUT)? {
            (Response::Cluster(s), _) => Ok(s),
            (r, _) => Err(unexpected("cluster status", r)),
        }
    }

    /// The daemon's identity and state.
    pub fn status(&self) -> Result<DaemonInfo, ClientError> {
        match self.call(Request::DaemonStatus, "status", DEFAULT_TIMEOUT)? {
            (Response::Status(s), _) => Ok(s),
            (r, _) => Err(unexpected("status", r)),
        }
    }

    /// Register a raw image file (absolute path) as a read-only volume.
    pub fn add_volume(&self, name: &str, path: &str) -> Result<VolumeInfo, ClientError> {
        let req = Request::AddVolume {
            name: name.into(),
            path: path.into(),
        };
        match self.call(req, "volume add", DEFAULT_TIMEOUT)? {
            (Response::Volume(v), _) => Ok(v),
            (r, _) => Err(unexpected("volume add", r)),
        }
    }

    /// Every volume of this node.
    pub fn list_volumes(&self) -> Result<Vec<VolumeInfo>, ClientError> {
        match self.call(Request::ListVolumes, "volume list", DEFAULT_TIMEOUT)? {
            (Response::Volumes(v), _) => Ok(v),
            (r, _) => Err(unexpected("volume list", r)),
        }
    }

    /// A volume's cache and storage counters.
    pub fn stat_volume(&self, name: &str) -> Result<VolumeStat, ClientError> {
        let req = Request::StatVolume { name: name.into() };
        match self.call(req, "volume stat", DEFAULT_TIMEOUT)? {
            (Response::VolumeStat(v), _) => Ok(v),
            (r, _) => Err(unexpected("volume stat", r)),
        }
    }

    /// Remove a volume no segment uses.
    pub fn remove_volume(&self, name: &str) -> Result<(), ClientError> {
        let req = Request::RemoveVolume { name: name.into() };
        match self.call(req, "volume rm", DEFAULT_TIMEOUT)? {
            (Response::Removed, _) => Ok(()),
            (r, _) => Err(unexpected("volume rm", r)),
        }
    }

    /// Map a segment into this process. Every access is served by the daemon.
    pub fn attach(&self, name: &str) -> Result<Mapping, ClientError> {
        Mapping::attach(self.clone(), name, false)
    }

    /// Attach a segment read-only: the mapping is readable only (a store is a SIGSEGV from the
    /// kernel; the daemon hands over a read-only descriptor), and read permission on the
    /// segment is enough.
    pub fn attach_read_only(&self, name: &str) -> Result<Mapping, ClientError> {
        Mapping::attach(self.clone(), name, true)
    }
}
