//! The daemon's Unix socket: handshake, requests, and attachment leases.

use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pagemesh_proto::{
    read_frame, write_frame, Backing, DaemonInfo, ErrorCode, FrameError, Request, Response, MAGIC,
    PROTOCOL_VERSION,
};
use pagemesh_types::PAGE_SIZE;
use pagemesh_uffd::{fdpass, RegisterMode, Uffd};

use crate::access::Caller;
use crate::cluster_requests::HeldLocks;
use crate::connections::{self, Next, FRAME_TIMEOUT};
use crate::reply::err;
use crate::state::Daemon;
use pagemesh_node::segment::{Attachment, Segment};

/// Time a new connection has to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

type Reply = (Response, Option<Arc<Segment>>);

impl Daemon {
    /// Accept connections until the listener fails. Each admitted connection is served by a
    /// thread of its own (`connections`: how many, and for how long).
    pub fn serve(self: &Arc<Self>, listener: UnixListener) -> std::io::Result<()> {
        for conn in listener.incoming() {
            let conn = match conn {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("accept failed: {e}");
                    continue;
                }
            };
            let cred = match fdpass::peer_cred(&conn) {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("cannot read peer credentials: {e}; closing");
                    continue;
                }
            };
            let per_uid = self.config.connections.per_uid;
            let admitted = match connections::admit(&self.admissions, cred.uid, per_uid) {
                Ok(a) => a,
                Err(why) => {
                    log::debug!("pid {} (uid {}): refused: {why}", cred.pid, cred.uid);
                    // Never wait on a client that does not read.
                    let _ = conn.set_write_timeout(Some(Duration::from_millis(100)));
                    let _ = write_frame(&conn, &err(ErrorCode::Busy, why), &[]);
                    continue;
                }
            };
            let d = Arc::clone(self);
            let spawned = std::thread::Builder::new()
                .name("client-conn".into())
                .spawn(move || {
                    d.connection(conn, cred);
                    drop(admitted);
                });
            if let Err(e) = spawned {
                log::error!("cannot start a connection thread: {e}");
            }
        }
        Ok(())
    }

    fn connection(&self, sock: UnixStream, cred: fdpass::PeerCred) {
        if !hello(&sock, &cred) {
            return;
        }
        let mut pending_attach: Option<(u64, Arc<Segment>, bool)> = None;
        let mut locks = HeldLocks::default();
        let caller = caller(&sock, &cred);
        let idle = self.config.connections.idle_timeout;
        loop {
            let holds = pending_attach.is_some() || !locks.is_empty();
            let Some((req, mut fds)) = request_or_end(&sock, &cred, holds, idle) else {
                return;
            };
            let passed = match self.admit(&req, &mut fds, &caller) {
                Ok(passed) => passed,
                Err(refused) if write_frame(&sock, &refused, &[]).is_ok() => continue,
                Err(_) => return,
            };
            if let Request::RegisterUffd {
                attach_id,
                base,
                len,
            } = req
            {
                match pending_attach.take() {
                    Some((id, seg, read_only)) if id == attach_id => {
                        self.lease(sock, cred.pid, (id, seg, read_only), base, len, fds);
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
            if let Request::AttachVm {
                volume,
                vmm_pid,
                regions,
            } = req
            {
                // The connection becomes the VM's lease.
                self.vm_lease(sock, cred, &volume, vmm_pid, &regions, fds);
                return;
            }
            let read_only = matches!(
                req,
                Request::Attach {
                    read_only: true,
                    ..
                }
            );
            let reply = self.route(req, &caller, passed, &mut locks);
            let (resp, memfd_of, ro) = read_only_descriptor(reply, read_only);
            let mut fds: Vec<_> = match &ro {
                Some(fd) => vec![fd.as_fd()],
                None => memfd_of.iter().map(|s| s.memfd().as_fd()).collect(),
            };
            let board = self.cluster.get().map(|c| c.transport.board().fd());
            if let (
                Response::Attached {
                    lease_slot: Some(_),
                    ..
                },
                Some(b),
            ) = (&resp, board)
            {
                fds.push(b);
            }
            if let (Response::Attached { attach_id, .. }, Some(seg)) = (&resp, &memfd_of) {
                pending_attach = Some((*attach_id, Arc::clone(seg), read_only));
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
        (id, seg, read_only): (u64, Arc<Segment>, bool),
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
        if let Err(message) = check_uffd(&uffd, pid, &seg, base, len) {
            let _ = write_frame(&sock, &err(ErrorCode::InvalidArgument, message), &[]);
            return;
        }
        let att = Arc::new(Attachment {
            id,
            pid,
            uffd,
            base,
            len,
            segment: Arc::clone(&seg),
            last_page: std::sync::atomic::AtomicU64::new(0),
            streams: Default::default(),
            lease: sock.try_clone().ok(),
            volume_map: seg.is_volume().then(|| {
                (0..seg.mapped_len().div_ceil(PAGE_SIZE * 64))
                    .map(|_| AtomicU64::new(0))
                    .collect()
            }),
            volume_user: std::sync::atomic::AtomicBool::new(false),
            revoked: std::sync::atomic::AtomicBool::new(false),
            read_only,
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

    /// The request router: a request on a cluster segment (or about the cluster) goes to the
    /// cluster side, every other one to this node's handler for its noun.
    pub(crate) fn route(
        &self,
        req: Request,
        caller: &Caller,
        passed: Option<std::fs::File>,
        locks: &mut HeldLocks,
    ) -> Reply {
        // A segment the catalog holds unavailable is forgotten here (or refused, for a cluster
        // segment), never asked of the cluster.
        if let Request::RemoveSegment { name } = &req {
            if self
                .unavailable
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains_key(name)
            {
                return (self.remove(name), None);
            }
        }
        if let Some(resp) = self.cluster_request(&req, caller, locks) {
            return (resp, None);
        }
        let r = |resp| (resp, None);
        match req {
            Request::Hello { .. } => r(err(ErrorCode::Protocol, "hello sent twice")),
            Request::CreateSegment {
                name,
                size_bytes,
                backing,
                partition,
                home: _,
                mode,
            } => r(match caller.owner(mode) {
                Ok(owner) => self.create(name, size_bytes, backing, partition, owner, passed),
                Err(resp) => *resp,
            }),
            req @ (Request::ChmodSegment { .. } | Request::ChownSegment { .. }) => {
                r(self.change_owner(&req, caller))
            }
            Request::ListSegments => r(self.list_segments()),
            Request::ListUnavailable => r(self.list_unavailable()),
            Request::StatSegment { name } => r(self.stat_segment(&name)),
            Request::SyncSegment { name } => r(self.sync_segment(&name)),
            Request::RemoveSegment { name } => r(self.remove(&name)),
            Request::ReadAt { name, offset, len } => r(self.read_segment(&name, offset, len)),
            Request::WriteAt { name, offset, data } => r(self.write_segment(&name, offset, &data)),
            Request::ClearPoison { name } => r(self.clear_segment_poison(&name)),
            Request::Attach {
                name,
                read_only: true,
            } if self.segment(&name).is_ok_and(|s| s.info.home.is_some()) => r(err(
                ErrorCode::InvalidArgument,
                format!("segment {name} is a cluster segment: it cannot be attached read-only yet (attach it read-write, or read it with `segment read`)"),
            )),
            Request::Attach { name, .. } => self.attach(&name),
            Request::RegisterUffd { .. } | Request::AttachVm { .. } => {
                unreachable!("handled by the connection loop")
            }
            Request::BarrierWait { .. }
            | Request::LockAcquire { .. }
            | Request::LockRelease { .. }
            | Request::ClusterStatus => unreachable!("answered by cluster_request"),
            Request::AddVolume { name, path } => r(self.add_volume(name, path)),
            Request::ListVolumes => r(self.list_volumes()),
            Request::StatVolume { name } => r(self.stat_volume(&name)),
            Request::RemoveVolume { name } => r(self.remove_volume(&name)),
            req @ (Request::CreatePartition { .. }
            | Request::ListPartitions
            | Request::StatPartition { .. }
            | Request::SetPartition { .. }
            | Request::RemovePartition { .. }
            | Request::Pin { .. }
            | Request::Unpin { .. }
            | Request::PageInfo { .. }) => r(self.handle_memory(req)),
            Request::DaemonStatus => r(Response::Status(self.status())),
        }
    }

    fn status(&self) -> DaemonInfo {
        let paging = self.pool.paging.as_ref();
        DaemonInfo {
            pid: std::process::id(),
            memory_budget_bytes: self.pool.budget_bytes(),
            memory_resident_bytes: self.pool.resident() * PAGE_SIZE,
            paging_device: self.config.paging_device.display().to_string(),
            paging_slots_used: paging.map_or(0, |p| u64::from(p.used())),
            paging_slots_total: paging.map_or(0, |p| u64::from(p.slots())),
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
            connections: self.admissions.total() as u64,
            data_dir: self.config.data_dir.display().to_string(),
        }
    }
}

/// The next request on a connection, or `None` when the connection ends: closed, idle (told
/// so), a stalled frame, a malformed one (told so). Each end is logged.
fn request_or_end(
    sock: &UnixStream,
    cred: &fdpass::PeerCred,
    holds: bool,
    idle: Duration,
) -> Option<(Request, Vec<std::os::fd::OwnedFd>)> {
    match connections::next_request(sock, holds, idle) {
        Next::Request(req, fds) => Some((req, fds)),
        Next::Idle => {
            log::debug!("pid {}: idle for {idle:?}; closing", cred.pid);
            let why = format!(
                "closed after {} s without a request; reconnect",
                idle.as_secs()
            );
            let _ = write_frame(sock, &err(ErrorCode::Idle, why), &[]);
            None
        }
        Next::Stalled => {
            log::warn!(
                "pid {} (uid {}): a frame began but did not end within {FRAME_TIMEOUT:?}; closing",
                cred.pid,
                cred.uid
            );
            None
        }
        Next::Gone(None) => None,
        Next::Gone(Some(e @ (FrameError::Malformed(_) | FrameError::TooLarge(_)))) => {
            log::warn!("pid {}: {e}; disconnecting it", cred.pid);
            let _ = write_frame(
                sock,
                &err(ErrorCode::Protocol, format!("{e}; closing")),
                &[],
            );
            None
        }
        Next::Gone(Some(e)) => {
            log::debug!("pid {}: {e}", cred.pid);
            None
        }
    }
}

/// What only root may ask, refused for anyone else (`None`: allowed). A backing file or a
/// volume image would be opened by the daemon, as root: a user could read or write any file
/// through it (until the client passes its own open file, a file- or volume-backed segment is
/// root's to create); partitions and volumes shape the whole node's memory.
fn root_only(req: &Request, uid: u32, file_passed: bool) -> Option<Response> {
    if uid == 0 {
        return None;
    }
    let what = match req {
        Request::CreateSegment {
            backing: Backing::File { path },
            ..
        } if !file_passed => format!(
            "creating a segment backed by a file ({path}) without passing the open file: the daemon would open it as root"
        ),
        Request::CreateSegment {
            backing: Backing::Volume { name },
            ..
        } => format!("creating a segment of volume {name}"),
        Request::AddVolume { path, .. } => {
            format!("adding a volume ({path}): the daemon would open it as root")
        }
        Request::RemoveVolume { name } => format!("removing volume {name}"),
        Request::AttachVm { volume, .. } => format!("serving a VM from volume {volume}"),
        Request::CreatePartition { name, .. }
        | Request::SetPartition { name, .. }
        | Request::RemovePartition { name } => format!("changing partition {name}"),
        _ => return None,
    };
    log::warn!("uid {uid}: refused {what} (root only)");
    Some(err(
        ErrorCode::PermissionDenied,
        format!("{what} is root's to do (uid {uid} asked)"),
    ))
}

impl Daemon {
    /// Whether `req` may be served for `caller` (root-only requests, the segment's owner and
    /// mode): `Err` is the refusal to send. A backing file the client opened with its own
    /// rights comes with its create, and is taken out of `fds` here.
    fn admit(
        &self,
        req: &Request,
        fds: &mut Vec<std::os::fd::OwnedFd>,
        caller: &Caller,
    ) -> Result<Option<std::fs::File>, Box<Response>> {
        let passed = match req {
            Request::CreateSegment {
                backing: Backing::File { .. },
                ..
            } if fds.len() == 1 => fds.pop().map(std::fs::File::from),
            _ => None,
        };
        match root_only(req, caller.uid, passed.is_some()).or_else(|| self.refused(req, caller)) {
            Some(refused) => Err(Box::new(refused)),
            None => Ok(passed),
        }
    }
}

/// A read-only attacher gets a read-only descriptor of the memfd (it cannot map it writable)
/// instead of the memfd itself: the reply, the segment attached, and that descriptor.
fn read_only_descriptor(
    (resp, memfd_of): Reply,
    read_only: bool,
) -> (Response, Option<Arc<Segment>>, Option<std::os::fd::OwnedFd>) {
    match (read_only, memfd_of) {
        (true, Some(seg)) => match seg.memfd().reopen_read_only() {
            Ok(fd) => (resp, Some(seg), Some(fd)),
            Err(e) => {
                let why = format!("a read-only descriptor of the segment: {e}");
                (err(ErrorCode::Io, why), None, None)
            }
        },
        (_, m) => (resp, m, None),
    }
}

/// Who is asking on this connection: its uid and groups (the primary group first). Groups
/// that cannot be read leave the primary group only.
fn caller(sock: &UnixStream, cred: &fdpass::PeerCred) -> Caller {
    let mut gids = vec![cred.gid];
    match fdpass::peer_groups(sock) {
        Ok(g) => gids.extend(g.into_iter().filter(|&g| g != cred.gid)),
        Err(e) => log::debug!("pid {}: its groups: {e}", cred.pid),
    }
    Caller {
        uid: cred.uid,
        gids,
    }
}

/// The handshake: a hello of this protocol version within `HELLO_TIMEOUT`, or the connection
/// is refused (with a reply saying why) and `false` returned.
fn hello(sock: &UnixStream, cred: &fdpass::PeerCred) -> bool {
    let _ = sock.set_read_timeout(Some(HELLO_TIMEOUT));
    let refuse = |code, message: String| {
        let _ = write_frame(sock, &err(code, message), &[]);
        false
    };
    let ok = match read_frame::<Request>(sock) {
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
            let ok = Response::HelloOk {
                version: PROTOCOL_VERSION,
                daemon_pid: std::process::id(),
            };
            let _ = write_frame(sock, &ok, &[]);
            true
        }
        Ok((Request::Hello { magic, version, .. }, _)) if magic == MAGIC => {
            log::warn!(
                "pid {}: protocol version {version}, this daemon speaks {PROTOCOL_VERSION}; closing",
                cred.pid
            );
            refuse(
                ErrorCode::VersionMismatch,
                format!("client protocol version {version} but daemon speaks {PROTOCOL_VERSION}: use a pagemesh client of the daemon's version"),
            )
        }
        Ok(_) | Err(FrameError::Malformed(_)) | Err(FrameError::TooLarge(_)) => {
            log::warn!(
                "pid {} (uid {}): no valid hello; closing",
                cred.pid,
                cred.uid
            );
            refuse(
                ErrorCode::Protocol,
                "expected a pagemesh hello first; closing".into(),
            )
        }
        Err(e) => {
            log::debug!("pid {}: connection ended before hello: {e}", cred.pid);
            false
        }
    };
    let _ = sock.set_read_timeout(None);
    ok
}

/// The uffd a client sent must serve its mapping: register the range from here, with the modes
/// its faults need. A uffd that never did its API handshake, or a base where the process has
/// no such mapping, is refused now (the message says why), not found out by a failed
/// write-protect later.
fn check_uffd(uffd: &Uffd, pid: i32, seg: &Segment, base: u64, len: u64) -> Result<(), String> {
    let modes = if seg.is_volume() {
        RegisterMode::MISSING.union(RegisterMode::MINOR)
    } else {
        RegisterMode::MISSING
            .union(RegisterMode::MINOR)
            .union(RegisterMode::WP)
    };
    uffd.register_for_creator(base, len, modes)
        .map(|_| ())
        .map_err(|e| {
            log::warn!(
                "pid {pid}: refused its uffd for segment {} at {base:#x}: {e}",
                seg.info.name
            );
            format!(
                "RegisterUffd: the uffd cannot serve the mapping at {base:#x} ({len} bytes) of \
                 segment {}: {e} (it must have done UFFDIO_API, and the segment's memfd must be \
                 mapped at that address)",
                seg.info.name
            )
        })
}
