//! Handing a VMM's guest memory to the daemon (`pagemesh vm serve`): the VMM's userfaultfd and
//! a pidfd of the VMM go to the daemon with `AttachVm`; the connection stays open as the VM's
//! lease, and this side watches it. When the daemon dies, the lease closes and the VMM is
//! stopped loudly (SIGBUS, SIGKILL after a grace period): left alone it would wait forever on
//! its next fault, since it holds its own copy of the uffd.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use pagemesh_proto::{Request, Response, VmRegion};
use pagemesh_uffd::poll::wait_any_readable;
use pagemesh_uffd::{PidFd, Stopped};

use crate::{handshake, roundtrip, unexpected, Client, ClientError, DEFAULT_TIMEOUT};

/// How long a VMM has to exit after SIGBUS before it gets SIGKILL.
pub const VMM_STOP_GRACE: Duration = Duration::from_secs(2);
/// How often the watch looks again (it wakes at once when the lease or the VMM ends).
const WATCH_WAIT_MS: i32 = 1000;

/// A VM the daemon serves; dropping it closes the lease (the daemon stops serving it, and
/// stops the VMM if it still runs).
#[derive(Debug)]
pub struct VmLease {
    sock: UnixStream,
    vm_id: u64,
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
                Ok(VmLease { sock, vm_id })
            }
            (r, _) => Err(unexpected("attach vm", r)),
        }
    }
}

impl VmLease {
    pub fn vm_id(&self) -> u64 {
        self.vm_id
    }

    /// Wait until the VMM exits or the daemon goes away (then stop the VMM loudly: it cannot be
    /// served any more). Returns within VMM_STOP_GRACE of either.
    pub fn watch(&self, vmm: &PidFd) -> VmEnd {
        loop {
            let fds = [vmm.as_fd(), self.sock.as_fd()];
            match wait_any_readable(&fds, WATCH_WAIT_MS) {
                Ok(Some(0)) => return VmEnd::VmmExited,
                // Nothing is ever sent on a lease: readable means closed (or a broken daemon).
                Ok(Some(_)) => return VmEnd::DaemonGone(vmm.stop_loudly(VMM_STOP_GRACE)),
                Ok(None) => {}
                Err(_) => return VmEnd::DaemonGone(vmm.stop_loudly(VMM_STOP_GRACE)),
            }
        }
    }
}
