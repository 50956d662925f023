//! VMs whose guest memory the daemon serves from a volume (`pagemesh vm serve` hands over a
//! Firecracker VMM's userfaultfd): the `AttachVm` request, and the connection it arrives on,
//! which is the VM's lease.
//!
//! Trust: the requester (`vm serve`) must be root or the VMM's own user, since the daemon will
//! signal the VMM; the VMM is known by a pidfd, checked to be for the pid named.

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::Ordering;
use std::time::Duration;

use pagemesh_node::vm::Guest;
use pagemesh_proto::vm_lease::{VmLeaseReply, VmLeaseRequest};
use pagemesh_proto::{read_frame, write_frame, ErrorCode, Response, VmRegion};
use pagemesh_uffd::fdpass::PeerCred;
use pagemesh_uffd::{PidFd, Uffd};

use crate::reply::err;
use crate::state::Daemon;

/// Most VMs one daemon serves at once (one thread each).
pub(crate) const MAX_VMS: usize = 64;
/// Bound on waiting for a VM's serving thread to end after its lease closed: its longest
/// wait is a volume block another reader is bringing in (30 s), plus the VMM's stop grace.
const JOIN_WAIT: Duration = Duration::from_secs(35);

/// The real uid of process `pid` (from `/proc`).
fn uid_of(pid: i32) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

impl Daemon {
    /// Serve a VM on `sock` until the lease closes (see `Request::AttachVm`).
    pub(crate) fn vm_lease(
        &self,
        sock: UnixStream,
        cred: PeerCred,
        volume: &str,
        vmm_pid: i32,
        regions: &[VmRegion],
        fds: Vec<OwnedFd>,
    ) {
        if self.vms.fetch_add(1, Ordering::SeqCst) >= MAX_VMS {
            self.vms.fetch_sub(1, Ordering::SeqCst);
            let e = format!("the daemon serves {MAX_VMS} VMs already; stop one first");
            let _ = write_frame(&sock, &err(ErrorCode::Internal, e), &[]);
            return;
        }
        self.vm_lease_counted(sock, cred, volume, vmm_pid, regions, fds);
        self.vms.fetch_sub(1, Ordering::SeqCst);
    }

    fn vm_lease_counted(
        &self,
        sock: UnixStream,
        cred: PeerCred,
        volume: &str,
        vmm_pid: i32,
        regions: &[VmRegion],
        fds: Vec<OwnedFd>,
    ) {
        let refuse = |code, message: String| {
            log::warn!("pid {}: AttachVm refused: {message}", cred.pid);
            let _ = write_frame(&sock, &err(code, message), &[]);
        };
        let (uffd, vmm) = match take_fds(fds, vmm_pid) {
            Ok(v) => v,
            Err(m) => return refuse(ErrorCode::InvalidArgument, m),
        };
        // The uid is read by pid: it is the VMM's only if the VMM still lives after the read
        // (the pidfd, checked above, cannot have been recycled; a pid can).
        match uid_of(vmm_pid).filter(|_| !vmm.wait_exited(0).unwrap_or(true)) {
            Some(u) if cred.uid == 0 || cred.uid == u => {}
            Some(u) => {
                return refuse(
                    ErrorCode::InvalidArgument,
                    format!(
                        "uid {} may not serve the VM of pid {vmm_pid} (uid {u}): run vm serve as \
                         root or as the VMM's user",
                        cred.uid
                    ),
                )
            }
            None => return refuse(ErrorCode::NotFound, format!("VMM pid {vmm_pid} has exited")),
        }
        let vol = match self.volume(volume) {
            Ok(v) => v,
            Err(resp) => {
                let _ = write_frame(&sock, &resp, &[]);
                return;
            }
        };
        let id = self.next_attach.fetch_add(1, Ordering::Relaxed);
        let (guest, layout) = match Guest::new(id, vmm, uffd, vol, regions) {
            Ok(g) => g,
            Err(e) => return refuse(ErrorCode::InvalidArgument, e.to_string()),
        };
        let thread = match guest.spawn(layout) {
            Ok(t) => t,
            Err(e) => return refuse(ErrorCode::Internal, e.to_string()),
        };
        log::info!(
            "vm {id}: serving VMM pid {vmm_pid} from volume {volume} ({} regions), for pid {}",
            regions.len(),
            cred.pid
        );
        if write_frame(&sock, &Response::VmAttached { vm_id: id }, &[]).is_ok() {
            lease_requests(&sock, &guest);
        }
        guest.detach();
        if !guest.vmm_exited() {
            // Whoever watched the VM for the daemon's death is gone: stop it rather than leave
            // it running with nothing to stop it should the daemon die.
            guest.stop_vmm(&format!(
                "the vm serve process (pid {}) that watches it went away",
                cred.pid
            ));
        }
        join_bounded(thread, id);
        log::info!("vm {id} (VMM pid {vmm_pid}) ended: {}", guest.summary());
    }
}

/// Answer the working-set requests on a VM's lease until it closes (any other frame ends it
/// too; see `pagemesh_proto::vm_lease`).
fn lease_requests(sock: &UnixStream, guest: &Guest) {
    loop {
        match read_frame::<VmLeaseRequest>(sock) {
            Ok((VmLeaseRequest::Replay { pages }, _)) => {
                if let Err(e) = guest.replay(pages) {
                    // The VM is served as without a replay: it only goes slower.
                    log::warn!("vm {}: replay refused: {e}", guest.id);
                }
            }
            Ok((VmLeaseRequest::TakeRecord, _)) => {
                let (pages, dropped) = guest.record();
                let reply = VmLeaseReply::Recorded { pages, dropped };
                if write_frame(sock, &reply, &[]).is_err() {
                    return;
                }
            }
            Err(pagemesh_proto::FrameError::Closed) => return,
            Err(e) => {
                log::warn!("vm {}: its lease ended: {e}", guest.id);
                return;
            }
        }
    }
}

/// The uffd and the VMM's pidfd, in that order.
fn take_fds(mut fds: Vec<OwnedFd>, vmm_pid: i32) -> Result<(Uffd, PidFd), String> {
    if fds.len() != 2 {
        return Err(format!(
            "AttachVm needs the VMM's uffd and its pidfd ({} fds came)",
            fds.len()
        ));
    }
    let pidfd = fds.pop().expect("two fds");
    let uffd = fds.pop().expect("two fds");
    let uffd = Uffd::from_received(uffd).map_err(|e| format!("the VM's uffd: {e}"))?;
    let vmm = PidFd::from_received(pidfd, vmm_pid).map_err(|e| format!("the VMM's pidfd: {e}"))?;
    Ok((uffd, vmm))
}

/// Wait (bounded) for a VM's serving thread; past the bound it is left to end by itself.
fn join_bounded(thread: std::thread::JoinHandle<()>, id: u64) {
    let deadline = std::time::Instant::now() + JOIN_WAIT;
    while !thread.is_finished() {
        if std::time::Instant::now() > deadline {
            log::error!("vm {id}: its serving thread did not end within {JOIN_WAIT:?}");
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = thread.join();
}
