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

/// Whose rights a file is opened with ([`open_as`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// Open `path` read-write (never creating it) with the file-system rights of `who`, not this
/// process's: on a thread of its own, the raw `setgroups`, `setfsgid` and `setfsuid` system
/// calls change that thread's credentials only (the C library's wrappers would change every
/// thread's), the file is opened, and the thread ends with its credentials. Refused as the
/// kernel refuses `who` (EACCES for a file it may not write, ENOENT for a path it may not
/// reach).
pub fn open_as(path: &std::path::Path, who: &Identity) -> io::Result<std::fs::File> {
    let path = path.to_path_buf();
    let who = who.clone();
    std::thread::Builder::new()
        .name("pagemesh-open-as".into())
        .spawn(move || -> io::Result<std::fs::File> {
            let groups: Vec<libc::gid_t> = who.groups.clone();
            // SAFETY: setgroups reads `groups.len()` gids from a live Vec; as a raw system
            // call it changes this thread's credentials only, and this thread ends below.
            let rc = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: setfsgid/setfsuid take plain ids and change this thread's file-system
            // ids only. They return the previous id, not an error: checked below by calling
            // again with an invalid id, which returns the current one.
            unsafe {
                libc::syscall(libc::SYS_setfsgid, who.gid);
                libc::syscall(libc::SYS_setfsuid, who.uid);
            }
            // SAFETY: as above; -1 changes nothing and returns the current id.
            let (fsgid, fsuid) = unsafe {
                (
                    libc::syscall(libc::SYS_setfsgid, u32::MAX) as u32,
                    libc::syscall(libc::SYS_setfsuid, u32::MAX) as u32,
                )
            };
            if (fsuid, fsgid) != (who.uid, who.gid) {
                return Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    format!(
                        "could not take uid {} gid {} to open the file",
                        who.uid, who.gid
                    ),
                ));
            }
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
        })?
        .join()
        .map_err(|_| io::Error::other("the thread opening the file panicked"))?
}
