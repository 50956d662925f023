//! Process-level system calls the daemon needs around its lifecycle: an exclusive lock on a
//! file, the file-creation mask, and waiting for stop signals.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Take an exclusive `flock` on `fd` without waiting: `Ok(false)` if another open file
/// description holds it (another process, or this one through another open).
pub fn try_lock_exclusive(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: flock takes a valid fd (borrowed for the call) and an int; no memory is touched.
    let r = unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if r == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Set the process's file-creation mask; returns the previous one.
pub fn set_umask(mask: u32) -> u32 {
    // SAFETY: umask only changes this process's mask and cannot fail.
    unsafe { libc::umask(mask as libc::mode_t) as u32 }
}

/// Raise the soft limit on open files to the hard one (a daemon holds a socket per client and
/// a memfd and a uffd per attachment); the limit now in force.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the valid rlimit `l` points to.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if l.rlim_cur < l.rlim_max {
        l.rlim_cur = l.rlim_max;
        // SAFETY: setrlimit reads the valid rlimit `l` points to.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &l) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(l.rlim_cur)
}

/// `SIGTERM` and `SIGINT`, blocked in the thread that made this (and every thread it starts
/// afterwards), to be waited for with [`StopSignals::wait`] on a thread of their own.
pub struct StopSignals {
    set: libc::sigset_t,
}

// SAFETY: a sigset_t is a plain bit mask with no pointers or thread affinity; it is only read.
unsafe impl Send for StopSignals {}

impl StopSignals {
    /// Block `SIGTERM` and `SIGINT` in the calling thread.
    pub fn block() -> io::Result<StopSignals> {
        // SAFETY: sigset_t is a plain C type for which all-zero is valid, and sigemptyset and
        // sigaddset initialise it; pthread_sigmask changes only this thread's signal mask.
        unsafe {
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, libc::SIGTERM);
            libc::sigaddset(&mut set, libc::SIGINT);
            let r = libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
            if r != 0 {
                return Err(io::Error::from_raw_os_error(r));
            }
            Ok(StopSignals { set })
        }
    }

    /// Wait for one of them; its name.
    pub fn wait(&self) -> &'static str {
        loop {
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` was initialised in `block`; `sig` is a valid int to write.
            if unsafe { libc::sigwait(&self.set, &mut sig) } == 0 {
                return if sig == libc::SIGINT {
                    "SIGINT"
                } else {
                    "SIGTERM"
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn a_second_open_of_a_locked_file_cannot_lock_it() {
        let p = std::env::temp_dir().join(format!("pagemesh-lock-test-{}", std::process::id()));
        let a = std::fs::File::create(&p).unwrap();
        let b = std::fs::File::open(&p).unwrap();
        let _ = std::fs::remove_file(&p);
        assert!(try_lock_exclusive(a.as_fd()).unwrap());
        assert!(!try_lock_exclusive(b.as_fd()).unwrap());
        drop(a);
        assert!(try_lock_exclusive(b.as_fd()).unwrap());
    }
}
