//! epoll for the daemon's fault workers and a one-fd poll for the client watchdog.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

/// An epoll instance whose registrations are one-shot: after an fd fires it stays quiet until
/// [`Epoll::rearm`], so exactly one worker reads a given uffd at a time.
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

/// A ready registration: the token it was added with.
pub type Token = u64;

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: epoll_create1 takes flags by value and returns a new fd or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new fd nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll { fd })
    }

    fn ctl(&self, op: libc::c_int, fd: BorrowedFd<'_>, token: Token) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLONESHOT) as u32,
            u64: token,
        };
        // SAFETY: `ev` is a valid epoll_event for the duration of the call; both fds are open.
        let rc = unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd.as_raw_fd(), &mut ev) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Watch `fd` for readability, reporting `token`.
    pub fn add(&self, fd: BorrowedFd<'_>, token: Token) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, token)
    }

    /// Re-enable a registration after it fired.
    pub fn rearm(&self, fd: BorrowedFd<'_>, token: Token) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, token)
    }

    /// Stop watching `fd`.
    pub fn remove(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0)
    }

    /// Wait up to `timeout_ms` for ready registrations; their tokens are appended to `out`.
    pub fn wait(&self, out: &mut Vec<Token>, max: usize, timeout_ms: i32) -> io::Result<()> {
        const MAX: usize = 32;
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; MAX];
        let max = max.clamp(1, MAX);
        // SAFETY: `evs` has room for `max` events.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                evs.as_mut_ptr(),
                max as i32,
                timeout_ms,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(());
            }
            return Err(e);
        }
        out.extend(evs[..n as usize].iter().map(|e| e.u64));
        Ok(())
    }
}

/// Wait up to `timeout_ms` for `fd` to become readable (or hung up). Returns whether it is.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout_ms: i32) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut p, 1, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(n > 0)
}

/// Wait up to `timeout_ms` for any of `fds` to become readable (or hung up). Returns the index
/// of the first that is, or None at the timeout.
pub fn wait_any_readable(fds: &[BorrowedFd<'_>], timeout_ms: i32) -> io::Result<Option<usize>> {
    let mut polls: Vec<libc::pollfd> = fds
        .iter()
        .map(|fd| libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: `polls` holds `polls.len()` valid pollfds for the call's duration.
    let n = unsafe { libc::poll(polls.as_mut_ptr(), polls.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(None);
        }
        return Err(e);
    }
    Ok(polls.iter().position(|p| p.revents != 0))
}
