//! A handle on another process that cannot be confused with a later process of the same pid
//! (`pidfd_open`): to signal it, and to learn that it has exited.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// The signals pagemesh sends a process it must stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGBUS: what a process gets for memory that cannot be had (Firecracker logs it and
    /// exits).
    Bus,
    /// SIGKILL.
    Kill,
}

impl Signal {
    fn number(self) -> i32 {
        match self {
            Signal::Bus => libc::SIGBUS,
            Signal::Kill => libc::SIGKILL,
        }
    }
}

/// How `stop_loudly` ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stopped {
    /// The process exited after SIGBUS.
    ByBus,
    /// It was still running after the grace period and got SIGKILL.
    ByKill,
    /// It had exited already.
    AlreadyGone,
}

/// An open pidfd.
#[derive(Debug)]
pub struct PidFd {
    fd: OwnedFd,
    pid: i32,
}

impl PidFd {
    /// Open a pidfd for the live process `pid`.
    pub fn open(pid: i32) -> io::Result<PidFd> {
        if pid <= 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("pid {pid} is not a process"),
            ));
        }
        // SAFETY: pidfd_open(2) takes a pid and flags by value and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(PidFd { fd, pid })
    }

    /// Wrap a pidfd received from another process, checking that it is one; `pid` is what the
    /// sender says it refers to (checked against the fd's own `Pid:` line).
    pub fn from_received(fd: OwnedFd, pid: i32) -> io::Result<PidFd> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        if link.as_os_str() != "anon_inode:[pidfd]" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the fd sent as a pidfd is {}, not a pidfd", link.display()),
            ));
        }
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
        let real = info
            .lines()
            .find_map(|l| l.strip_prefix("Pid:"))
            .and_then(|v| v.trim().parse::<i32>().ok());
        match real {
            Some(p) if p == pid => Ok(PidFd { fd, pid }),
            // -1: the process has exited already.
            other => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the pidfd is for pid {other:?}, not {pid}"),
            )),
        }
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Send `signal` to the process (`ESRCH` once it has exited).
    pub fn signal(&self, signal: Signal) -> io::Result<()> {
        // SAFETY: pidfd_send_signal(2) with a null siginfo takes only integers; the fd is open.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.fd.as_raw_fd(),
                signal.number(),
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Stop the process loudly: SIGBUS (which Firecracker, like most programs, reports and
    /// dies of), then SIGKILL if it still lives after `grace`. Blocks for at most `grace`.
    pub fn stop_loudly(&self, grace: std::time::Duration) -> Stopped {
        if self.signal(Signal::Bus).is_err() {
            return Stopped::AlreadyGone;
        }
        let ms = i32::try_from(grace.as_millis()).unwrap_or(i32::MAX);
        if self.wait_exited(ms).unwrap_or(false) {
            return Stopped::ByBus;
        }
        match self.signal(Signal::Kill) {
            Ok(()) => Stopped::ByKill,
            Err(_) => Stopped::AlreadyGone,
        }
    }

    /// Whether the process has exited, waiting at most `timeout_ms` for it (a pidfd becomes
    /// readable when its process exits).
    pub fn wait_exited(&self, timeout_ms: i32) -> io::Result<bool> {
        crate::poll::wait_readable(self.fd.as_fd(), timeout_ms)
    }
}

impl AsFd for PidFd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pidfd_sees_its_process_exit_and_signals_it() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .expect("spawn sleep");
        let p = PidFd::open(child.id() as i32).expect("pidfd_open");
        assert!(!p.wait_exited(0).unwrap());
        p.signal(Signal::Kill).unwrap();
        assert!(p.wait_exited(5000).unwrap(), "exited within 5 s");
        let st = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(st.signal(), Some(libc::SIGKILL));
        assert!(PidFd::open(0).is_err());
    }
}
