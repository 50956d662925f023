//! Handing a VMM's guest memory to the daemon (`pagemesh vm serve`): the VMM's userfaultfd and
//! a pidfd of the VMM go to the daemon with `AttachVm`; the connection stays open as the VM's
//! lease, and this side watches it. When the daemon dies, the lease closes and the VMM is
//! stopped loudly (SIGBUS, SIGKILL after a grace period): left alone it would wait forever on
//! its next fault, since it holds its own copy of the uffd.
//!
//! The lease also carries the VM's working set (`pagemesh_proto::vm_lease`): the pages to
//! replay, sent once after the attach, and the pages recorded, asked for at any time.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use pagemesh_proto::vm_lease::{VmLeaseReply, VmLeaseRequest};
use pagemesh_proto::{read_frame, write_frame, FrameError, Request, Response, VmRegion};
use pagemesh_uffd::poll::wait_any_readable;
use pagemesh_uffd::{PidFd, Stopped};

use crate::{handshake, roundtrip, unexpected, Client, ClientError, DEFAULT_TIMEOUT};

/// Most pages of a working set the daemon records or replays.
pub use pagemesh_proto::vm_lease::MAX_WORKING_SET_PAGES;

/// How long a VMM has to exit after SIGBUS before it gets SIGKILL.
pub const VMM_STOP_GRACE: Duration = Duration::from_secs(2);
/// How often the watch looks again (it wakes at once when the lease or the VMM ends).
const WATCH_WAIT_MS: i32 = 1000;
/// Bound on the daemon's answer to a request on the lease.
const LEASE_ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A VM the daemon serves; dropping it closes the lease (the daemon stops serving it, and
/// stops the VMM if it still runs).
#[derive(Debug)]
pub struct VmLease {
    sock: UnixStream,
    vm_id: u64,
    /// Held over a request and its answer on the lease, so the watch does not take the
    /// answer for the lease's end.
    talking: Mutex<()>,
}

/// How a watched VM's service ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VmEnd {
    /// The VMM exited (by itself, or stopped by the daemon because a page could not be had).
    VmmExited,
    /// The daemon went away; the VMM was stopped as said.
    DaemonGone(Stopped),
}

impl Client {
    /// Have the daemon serve the guest memory `regions` of the VMM `vmm` (registered on
    /// `uffd`) from volume `volume`.
    pub fn attach_vm(
        &self,
        volume: &str,
        vmm: &PidFd,
        uffd: BorrowedFd<'_>,
        regions: &[VmRegion],
    ) -> Result<VmLease, ClientError> {
        let path = self.socket_path().to_path_buf();
        let sock = handshake(&path)?;
        let req = Request::AttachVm {
            volume: volume.into(),
            vmm_pid: vmm.pid(),
            regions: regions.to_vec(),
        };
        let fds = [uffd, vmm.as_fd()];
        match roundtrip(&path, &sock, &req, &fds, "attach vm", DEFAULT_TIMEOUT)? {
            (Response::VmAttached { vm_id }, _) => {
                let _ = sock.set_read_timeout(None);
                Ok(VmLease {
                    sock,
                    vm_id,
                    talking: Mutex::new(()),
                })
            }
            (r, _) => Err(unexpected("attach vm", r)),
        }
    }
}

impl VmLease {
    pub fn vm_id(&self) -> u64 {
        self.vm_id
    }

    /// Have the daemon push the image pages `pages` (4 KiB pages of the snapshot, from its
    /// start) into the guest, in this order, ahead of its own faults. Once, right after the
    /// attach; the daemon does not answer (a list it refuses, it logs).
    pub fn replay(&self, pages: Vec<u64>) -> Result<(), ClientError> {
        let _g = self.talking.lock().unwrap_or_else(PoisonError::into_inner);
        write_frame(&self.sock, &VmLeaseRequest::Replay { pages }, &[]).map_err(|e| self.err(e))
    }

    /// The image pages the guest's faults brought in so far, in the order they came, each
    /// once; and how many more came past the daemon's bound. Works after the VMM exited, as
    /// long as the lease is open.
    pub fn record(&self) -> Result<(Vec<u64>, u64), ClientError> {
        let _g = self.talking.lock().unwrap_or_else(PoisonError::into_inner);
        let sock = &self.sock;
        sock.set_read_timeout(Some(LEASE_ANSWER_TIMEOUT))
            .map_err(|e| self.err(FrameError::Io(e)))?;
        write_frame(sock, &VmLeaseRequest::TakeRecord, &[]).map_err(|e| self.err(e))?;
        let got = read_frame::<VmLeaseReply>(sock);
        let _ = sock.set_read_timeout(None);
        match got {
            Ok((VmLeaseReply::Recorded { pages, dropped }, _)) => Ok((pages, dropped)),
            Err(e) if e.is_timeout() => Err(ClientError::Timeout {
                path: "the VM's lease".into(),
                what: "the recorded working set",
                timeout: LEASE_ANSWER_TIMEOUT,
            }),
            Err(e) => Err(self.err(e)),
        }
    }

    fn err(&self, source: FrameError) -> ClientError {
        ClientError::Frame {
            path: format!("the lease of vm {}", self.vm_id).into(),
            source,
        }
    }

    /// Wait until the VMM exits or the daemon goes away (then stop the VMM loudly: it cannot be
    /// served any more). Returns within VMM_STOP_GRACE of either.
    pub fn watch(&self, vmm: &PidFd) -> VmEnd {
        loop {
            let fds = [vmm.as_fd(), self.sock.as_fd()];
            match wait_any_readable(&fds, WATCH_WAIT_MS) {
                Ok(Some(0)) => return VmEnd::VmmExited,
                // The daemon sends only answers, read under `talking`: readable with no request
                // in flight means closed (or a broken daemon).
                Ok(Some(_)) if !self.answer_in_flight() => {
                    return VmEnd::DaemonGone(vmm.stop_loudly(VMM_STOP_GRACE))
                }
                Ok(_) => {}
                Err(_) => return VmEnd::DaemonGone(vmm.stop_loudly(VMM_STOP_GRACE)),
            }
        }
    }

    /// Whether the lease is readable only because an answer is on its way to `record`.
    fn answer_in_flight(&self) -> bool {
        let _g = self.talking.lock().unwrap_or_else(PoisonError::into_inner);
        // With the lock held no answer is pending: readable now means the lease ended.
        !wait_any_readable(&[self.sock.as_fd()], 0).is_ok_and(|r| r.is_some())
    }
}
