//! A typed userfaultfd: open, API handshake, register, resolve (COPY, ZEROPAGE, CONTINUE,
//! WRITEPROTECT, WAKE, POISON) and batched message reads.
//!
//! Addresses are plain `u64`s in the address space of the process that *created* the uffd (the
//! daemon resolves faults of client processes through fds they sent it), so no resolving ioctl
//! here dereferences memory of the calling process except the `src` slice of [`Uffd::copy`].

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

use crate::sys;

/// How the uffd was obtained. `UserModeOnly` cannot see faults raised by the kernel itself
/// (a `read(2)` into an unpopulated page fails with EFAULT instead).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpenMode {
    /// `/dev/userfaultfd` + `USERFAULTFD_IOC_NEW`.
    Device,
    /// The `userfaultfd(2)` system call with kernel faults included.
    Syscall,
    /// `userfaultfd(UFFD_USER_MODE_ONLY)`: user-space faults only.
    UserModeOnly,
}

impl std::fmt::Display for OpenMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            OpenMode::Device => "full (/dev/userfaultfd)",
            OpenMode::Syscall => "full (userfaultfd syscall)",
            OpenMode::UserModeOnly => {
                "user-mode-only (kernel accesses to unpopulated pages fail with EFAULT)"
            }
        })
    }
}

/// Feature bits (`UFFD_FEATURE_*`).
pub mod features {
    pub use linux_raw_sys::general::{
        UFFD_FEATURE_EVENT_FORK as EVENT_FORK, UFFD_FEATURE_EVENT_REMOVE as EVENT_REMOVE,
        UFFD_FEATURE_EXACT_ADDRESS as EXACT_ADDRESS, UFFD_FEATURE_MINOR_SHMEM as MINOR_SHMEM,
        UFFD_FEATURE_MISSING_SHMEM as MISSING_SHMEM, UFFD_FEATURE_MOVE as MOVE,
        UFFD_FEATURE_PAGEFAULT_FLAG_WP as PAGEFAULT_FLAG_WP, UFFD_FEATURE_POISON as POISON,
        UFFD_FEATURE_SIGBUS as SIGBUS, UFFD_FEATURE_THREAD_ID as THREAD_ID,
        UFFD_FEATURE_WP_ASYNC as WP_ASYNC, UFFD_FEATURE_WP_HUGETLBFS_SHMEM as WP_HUGETLBFS_SHMEM,
        UFFD_FEATURE_WP_UNPOPULATED as WP_UNPOPULATED,
    };

    /// What pagemesh needs: missing, minor and write-protect faults on shmem, and poison.
    pub const PAGEMESH: u64 =
        (MISSING_SHMEM | MINOR_SHMEM | PAGEFAULT_FLAG_WP | WP_HUGETLBFS_SHMEM | POISON | THREAD_ID)
            as u64;

    /// Names of the feature bits, for `pagemesh doctor`.
    pub const NAMES: [(u64, &str); 17] = [
        (1 << 0, "PAGEFAULT_FLAG_WP"),
        (1 << 1, "EVENT_FORK"),
        (1 << 2, "EVENT_REMAP"),
        (1 << 3, "EVENT_REMOVE"),
        (1 << 4, "MISSING_HUGETLBFS"),
        (1 << 5, "MISSING_SHMEM"),
        (1 << 6, "EVENT_UNMAP"),
        (1 << 7, "SIGBUS"),
        (1 << 8, "THREAD_ID"),
        (1 << 9, "MINOR_HUGETLBFS"),
        (1 << 10, "MINOR_SHMEM"),
        (1 << 11, "EXACT_ADDRESS"),
        (1 << 12, "WP_HUGETLBFS_SHMEM"),
        (1 << 13, "WP_UNPOPULATED"),
        (1 << 14, "POISON"),
        (1 << 15, "WP_ASYNC"),
        (1 << 16, "MOVE"),
    ];
}

/// Registration modes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisterMode(u64);

impl RegisterMode {
    pub const MISSING: RegisterMode = RegisterMode(sys::UFFDIO_REGISTER_MODE_MISSING);
    pub const MINOR: RegisterMode = RegisterMode(sys::UFFDIO_REGISTER_MODE_MINOR);
    pub const WP: RegisterMode = RegisterMode(sys::UFFDIO_REGISTER_MODE_WP);

    pub const fn union(self, other: RegisterMode) -> RegisterMode {
        RegisterMode(self.0 | other.0)
    }
}

/// How a resolving ioctl maps a page: write-protected (a write raises a write-protect fault)
/// or writable. For [`Uffd::write_protect`], `ReadOnly` sets the protection and `Writable`
/// clears it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protect {
    ReadOnly,
    Writable,
}

/// Whether a resolving ioctl wakes the threads waiting on the range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wake {
    Yes,
    No,
}

/// A failed userfaultfd operation: which one, and the errno.
#[derive(Debug, thiserror::Error)]
#[error("{op} failed: {source}")]
pub struct UffdError {
    pub op: &'static str,
    #[source]
    pub source: io::Error,
}

impl UffdError {
    fn last(op: &'static str) -> UffdError {
        UffdError {
            op,
            source: io::Error::last_os_error(),
        }
    }

    /// The page is already there (COPY/ZEROPAGE/CONTINUE/POISON): the fault was served, but the
    /// faulting thread is not woken by the failed ioctl; send [`Uffd::wake`].
    pub fn is_exists(&self) -> bool {
        self.source.raw_os_error() == Some(libc::EEXIST)
    }

    /// The process whose address space the uffd belongs to has exited (ESRCH), or the range is
    /// no longer registered there (ENOENT): no fault of it can be served. For a write-protect
    /// that matters, ENOENT does not prove the range unmapped (see
    /// [`UffdError::is_process_exited`] and [`UffdError::is_unregistered`]).
    pub fn is_process_gone(&self) -> bool {
        matches!(
            self.source.raw_os_error(),
            Some(libc::ESRCH) | Some(libc::ENOENT)
        )
    }

    /// The process whose address space the uffd belongs to has exited (ESRCH) - and only
    /// that: unlike [`UffdError::is_process_gone`], a range that is merely no longer
    /// registered (ENOENT) does not count, since the process may still have it mapped.
    pub fn is_process_exited(&self) -> bool {
        self.source.raw_os_error() == Some(libc::ESRCH)
    }

    /// The range is not (or no longer) registered on this uffd in its process, or not as
    /// the call needs (ENOENT, EINVAL): the process unmapped, unregistered or remapped it.
    pub fn is_unregistered(&self) -> bool {
        matches!(
            self.source.raw_os_error(),
            Some(libc::ENOENT) | Some(libc::EINVAL)
        )
    }

    /// No page to map (CONTINUE on a page that is not in the page cache): EFAULT.
    pub fn is_no_page(&self) -> bool {
        self.source.raw_os_error() == Some(libc::EFAULT)
    }

    /// A non-cooperative event is pending: drain events, then retry.
    pub fn is_again(&self) -> bool {
        self.source.raw_os_error() == Some(libc::EAGAIN)
    }
}

/// One message read from the uffd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    /// A page fault at `address` (page-aligned unless EXACT_ADDRESS).
    PageFault {
        address: u64,
        kind: FaultKind,
        write: bool,
        thread_id: u32,
    },
    /// A change of the registered address space (the non-cooperative events
    /// `UFFD_FEATURE_EVENT_REMOVE`, `_UNMAP` and `_REMAP` report).
    Layout(Layout),
    /// Some other event (fork), which pagemesh does not enable.
    Other { event: u8 },
}

/// A change of the registered address space, reported as an event (the process blocks in
/// `madvise`, `munmap` or `mremap` until the event is read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// `[start, end)` was discarded (`MADV_DONTNEED`/`MADV_REMOVE`, e.g. a balloon): its next
    /// accesses fault as missing again, and must read zeros.
    Remove { start: u64, end: u64 },
    /// `[start, end)` was unmapped: it is no longer registered.
    Unmap { start: u64, end: u64 },
    /// `len` bytes moved from `from` to `to` (`mremap`).
    Remap { from: u64, to: u64, len: u64 },
}

/// What kind of fault it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// No page in the page cache (a memfd hole) or no anonymous page.
    Missing,
    /// The page is in the page cache but not mapped in this process.
    Minor,
    /// A write to a write-protected page.
    WriteProtect,
}

/// Features and ioctls the kernel reported.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pub mode: OpenMode,
    pub features: u64,
    pub ioctls: u64,
}

/// An open userfaultfd (non-blocking, close-on-exec).
#[derive(Debug)]
pub struct Uffd {
    fd: OwnedFd,
    /// Made by `from_received`: a uffd of another process, whose address space is not ours.
    received: bool,
}

fn open_raw() -> Result<(OwnedFd, OpenMode), UffdError> {
    let flags = libc::O_CLOEXEC | libc::O_NONBLOCK;
    if let Ok(dev) = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/userfaultfd")
    {
        // SAFETY: USERFAULTFD_IOC_NEW takes its flags by value and returns a new fd or -1; `dev`
        // is an open fd for the call's duration.
        let fd = unsafe {
            libc::ioctl(
                dev.as_raw_fd(),
                sys::USERFAULTFD_IOC_NEW as libc::c_ulong,
                flags,
            )
        };
        if fd >= 0 {
            // SAFETY: the ioctl returned a new fd that nothing else owns.
            return Ok((unsafe { OwnedFd::from_raw_fd(fd) }, OpenMode::Device));
        }
    }
    for (extra, mode) in [
        (0, OpenMode::Syscall),
        (sys::UFFD_USER_MODE_ONLY as i32, OpenMode::UserModeOnly),
    ] {
        // SAFETY: userfaultfd(2) takes flags by value and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags | extra) };
        if fd >= 0 {
            // SAFETY: the syscall returned a new fd that nothing else owns.
            return Ok((unsafe { OwnedFd::from_raw_fd(fd as i32) }, mode));
        }
    }
    Err(UffdError::last(
        "userfaultfd open (device, syscall, user-mode-only)",
    ))
}

impl Uffd {
    /// Open a uffd and perform the API handshake with `wanted` features.
    /// Fails with a message naming the missing features if the kernel lacks any.
    pub fn open(wanted: u64) -> Result<(Uffd, OpenMode), UffdError> {
        let (fd, mode) = open_raw()?;
        let uffd = Uffd {
            fd,
            received: false,
        };
        let mut api = sys::uffdio_api {
            api: sys::UFFD_API as u64,
            features: wanted,
            ioctls: 0,
        };
        uffd.ioctl("UFFDIO_API", sys::UFFDIO_API, &mut api)?;
        Ok((uffd, mode))
    }

    /// Probe the kernel's features on a throw-away uffd (UFFDIO_API may run once per fd).
    pub fn probe() -> Result<Probe, UffdError> {
        let (fd, mode) = open_raw()?;
        let uffd = Uffd {
            fd,
            received: false,
        };
        let mut api = sys::uffdio_api {
            api: sys::UFFD_API as u64,
            features: 0,
            ioctls: 0,
        };
        uffd.ioctl("UFFDIO_API", sys::UFFDIO_API, &mut api)?;
        Ok(Probe {
            mode,
            features: api.features,
            ioctls: api.ioctls,
        })
    }

    /// Wrap a uffd received from another process (its API handshake is already done).
    pub fn from_owned(fd: OwnedFd) -> Uffd {
        Uffd {
            fd,
            received: false,
        }
    }

    /// Wrap an fd received from an untrusted client, checking that it is a userfaultfd and
    /// non-blocking (a blocking one would hang a fault worker in `read`, and epoll reports
    /// POLLERR on it forever).
    pub fn from_received(fd: OwnedFd) -> io::Result<Uffd> {
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
        if link.as_os_str() != "anon_inode:[userfaultfd]" {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the fd sent as a uffd is {}, not a userfaultfd",
                    link.display()
                ),
            ));
        }
        // SAFETY: F_GETFL takes no argument and only reads the fd's flags.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 {
            return Err(io::Error::last_os_error());
        }
        if flags & libc::O_NONBLOCK == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the uffd must be opened O_NONBLOCK",
            ));
        }
        Ok(Uffd { fd, received: true })
    }

    /// A second handle to the same uffd (`dup`).
    pub fn try_clone(&self) -> io::Result<Uffd> {
        Ok(Uffd {
            fd: self.fd.try_clone()?,
            received: self.received,
        })
    }

    fn ioctl<T>(&self, op: &'static str, request: u32, arg: &mut T) -> Result<(), UffdError> {
        // SAFETY: every uffd ioctl takes a pointer to its argument struct, which `arg` is, valid
        // and exclusively borrowed for the call. The structs are the bindings' own, and their
        // sizes are checked against the request numbers in `sys`.
        let rc =
            unsafe { libc::ioctl(self.fd.as_raw_fd(), request as libc::c_ulong, arg as *mut T) };
        if rc < 0 {
            Err(UffdError::last(op))
        } else {
            Ok(())
        }
    }

    /// Register the whole of `map` (memory only ever reached through raw pointers and atomics)
    /// for `mode` faults. Returns the ioctls supported on the range.
    pub fn register_mapping(
        &self,
        map: &crate::SharedMapping,
        mode: RegisterMode,
    ) -> Result<u64, UffdError> {
        // SAFETY: a SharedMapping's bytes are never behind a Rust reference other than its
        // atomics view; whatever the uffd later installs there is a valid value for them.
        unsafe { self.register(map.addr(), map.len() as u64, mode) }
    }

    /// Register `[start, start+len)` of the creating process for `mode` faults.
    /// Returns the ioctls supported on the range.
    ///
    /// # Safety
    ///
    /// Whoever resolves the faults decides what the range's bytes become (COPY can fill a
    /// never-touched page with anything): the range must not hold Rust values whose validity
    /// or contents Rust code relies on, only memory accessed through raw pointers or atomics.
    pub unsafe fn register(
        &self,
        start: u64,
        len: u64,
        mode: RegisterMode,
    ) -> Result<u64, UffdError> {
        let mut reg = sys::uffdio_register {
            range: sys::uffdio_range { start, len },
            mode: mode.0,
            ioctls: 0,
        };
        self.ioctl("UFFDIO_REGISTER", sys::UFFDIO_REGISTER, &mut reg)?;
        Ok(reg.ioctls)
    }

    /// Unregister a range.
    /// Register `[start, start+len)` of the process that created this uffd for `mode`
    /// faults, on its behalf: only for a uffd received from another process
    /// ([`Uffd::from_received`]). It checks what that process claims of its uffd: the API
    /// handshake was done, the range is mapped in its address space, and the range can take
    /// `mode` (registering what it already registered the same way changes nothing; what it
    /// left out is registered now). Returns the ioctls supported on the range.
    pub fn register_for_creator(
        &self,
        start: u64,
        len: u64,
        mode: RegisterMode,
    ) -> Result<u64, UffdError> {
        assert!(
            self.received,
            "register_for_creator on a uffd not made by Uffd::from_received"
        );
        // SAFETY: a uffd acts on the address space of the process that created it, and this
        // one came through `from_received` (asserted): it was passed in by another process
        // and is not one this process opened, so no Rust value of this process lies in the
        // range.
        unsafe { self.register(start, len, mode) }
    }

    pub fn unregister(&self, start: u64, len: u64) -> Result<(), UffdError> {
        let mut range = sys::uffdio_range { start, len };
        self.ioctl("UFFDIO_UNREGISTER", sys::UFFDIO_UNREGISTER, &mut range)
    }

    /// One UFFDIO_COPY; returns the ioctl's result and the bytes it reports copied.
    fn copy_ioctl(
        &self,
        dst: u64,
        src: &[u8],
        protect: Protect,
        wake: Wake,
    ) -> (Result<(), UffdError>, i64) {
        let mut mode = 0;
        if protect == Protect::ReadOnly {
            mode |= sys::UFFDIO_COPY_MODE_WP;
        }
        if wake == Wake::No {
            mode |= sys::UFFDIO_COPY_MODE_DONTWAKE;
        }
        let mut c = sys::uffdio_copy {
            dst,
            src: src.as_ptr() as u64,
            len: src.len() as u64,
            mode,
            copy: 0,
        };
        let r = self.ioctl("UFFDIO_COPY", sys::UFFDIO_COPY, &mut c);
        (r, c.copy)
    }

    /// Install a copy of `src` at `dst` (page-aligned, `src.len()` a multiple of the page size).
    pub fn copy(
        &self,
        dst: u64,
        src: &[u8],
        protect: Protect,
        wake: Wake,
    ) -> Result<(), UffdError> {
        self.copy_ioctl(dst, src, protect, wake).0
    }

    /// COPY a run of pages; like [`Uffd::continue_run`], a run that reaches a page already
    /// mapped copies (and wakes) what came before it and returns the bytes copied.
    pub fn copy_run(
        &self,
        dst: u64,
        src: &[u8],
        protect: Protect,
        wake: Wake,
    ) -> Result<u64, UffdError> {
        run_result(self.copy_ioctl(dst, src, protect, wake), src.len() as u64)
    }

    /// One UFFDIO_ZEROPAGE; returns the ioctl's result and the bytes it reports zeroed.
    fn zeropage_ioctl(&self, dst: u64, len: u64, wake: Wake) -> (Result<(), UffdError>, i64) {
        let mut z = sys::uffdio_zeropage {
            range: sys::uffdio_range { start: dst, len },
            mode: match wake {
                Wake::Yes => 0,
                Wake::No => sys::UFFDIO_ZEROPAGE_MODE_DONTWAKE,
            },
            zeropage: 0,
        };
        let r = self.ioctl("UFFDIO_ZEROPAGE", sys::UFFDIO_ZEROPAGE, &mut z);
        (r, z.zeropage)
    }

    /// Install zero pages over `[dst, dst+len)` (writable: ZEROPAGE has no write-protect mode).
    pub fn zeropage(&self, dst: u64, len: u64, wake: Wake) -> Result<(), UffdError> {
        self.zeropage_ioctl(dst, len, wake).0
    }

    /// ZEROPAGE over a run; like [`Uffd::continue_run`], returns the bytes installed before the
    /// first page already mapped.
    pub fn zeropage_run(&self, dst: u64, len: u64, wake: Wake) -> Result<u64, UffdError> {
        run_result(self.zeropage_ioctl(dst, len, wake), len)
    }

    /// One UFFDIO_CONTINUE; returns the ioctl's result and the bytes it reports mapped.
    fn continue_ioctl(
        &self,
        start: u64,
        len: u64,
        protect: Protect,
        wake: Wake,
    ) -> (Result<(), UffdError>, i64) {
        let mut mode = 0;
        if protect == Protect::ReadOnly {
            mode |= sys::UFFDIO_CONTINUE_MODE_WP;
        }
        if wake == Wake::No {
            mode |= sys::UFFDIO_CONTINUE_MODE_DONTWAKE;
        }
        let mut c = sys::uffdio_continue {
            range: sys::uffdio_range { start, len },
            mode,
            mapped: 0,
        };
        let r = self.ioctl("UFFDIO_CONTINUE", sys::UFFDIO_CONTINUE, &mut c);
        (r, c.mapped)
    }

    /// Map the pages already in the page cache over `[start, start+len)` (minor faults).
    pub fn continue_(
        &self,
        start: u64,
        len: u64,
        protect: Protect,
        wake: Wake,
    ) -> Result<(), UffdError> {
        self.continue_ioctl(start, len, protect, wake).0
    }

    /// CONTINUE over a run of pages (fault-around). The kernel stops at the first page already
    /// mapped: it then maps and wakes what came before and reports `EAGAIN` with the count in
    /// `mapped`, which this returns as success. Returns the bytes mapped (0 if the first page
    /// was already there).
    pub fn continue_run(
        &self,
        start: u64,
        len: u64,
        protect: Protect,
        wake: Wake,
    ) -> Result<u64, UffdError> {
        run_result(self.continue_ioctl(start, len, protect, wake), len)
    }

    /// Set (`Protect::ReadOnly`) or clear (`Protect::Writable`) write protection over a range.
    /// Clearing wakes the waiting threads unless `Wake::No` (the kernel refuses DONTWAKE with
    /// protect, so `wake` only matters when clearing).
    pub fn write_protect(
        &self,
        start: u64,
        len: u64,
        protect: Protect,
        wake: Wake,
    ) -> Result<(), UffdError> {
        let mut mode = 0;
        match (protect, wake) {
            (Protect::ReadOnly, _) => mode |= sys::UFFDIO_WRITEPROTECT_MODE_WP,
            (Protect::Writable, Wake::No) => mode |= sys::UFFDIO_WRITEPROTECT_MODE_DONTWAKE,
            (Protect::Writable, Wake::Yes) => {}
        }
        let mut wp = sys::uffdio_writeprotect {
            range: sys::uffdio_range { start, len },
            mode,
        };
        self.ioctl("UFFDIO_WRITEPROTECT", sys::UFFDIO_WRITEPROTECT, &mut wp)
    }

    /// Wake the threads waiting on faults in a range.
    pub fn wake(&self, start: u64, len: u64) -> Result<(), UffdError> {
        let mut range = sys::uffdio_range { start, len };
        self.ioctl("UFFDIO_WAKE", sys::UFFDIO_WAKE, &mut range)
    }

    /// Install poison markers over the unpopulated pages of `[start, start+len)`: an access gets
    /// SIGBUS. Returns the number of bytes poisoned before the first populated page (`EEXIST`
    /// ends the run early and is reported as `Ok` with the shorter length).
    pub fn poison(&self, start: u64, len: u64, wake: Wake) -> Result<u64, UffdError> {
        let mut p = sys::uffdio_poison {
            range: sys::uffdio_range { start, len },
            mode: match wake {
                Wake::Yes => 0,
                Wake::No => sys::UFFDIO_POISON_MODE_DONTWAKE,
            },
            updated: 0,
        };
        match self.ioctl("UFFDIO_POISON", sys::UFFDIO_POISON, &mut p) {
            Ok(()) => Ok(len),
            Err(e) if e.is_exists() => Ok(p.updated.max(0) as u64),
            Err(e) => Err(e),
        }
    }

    /// Read up to `out.len()` pending messages without blocking. Returns how many were read
    /// (0 when none is pending).
    pub fn read_events(&self, out: &mut Vec<Event>, max: usize) -> Result<usize, UffdError> {
        const BATCH: usize = 64;
        let mut raw = [0u8; 32 * BATCH];
        let want = max.clamp(1, BATCH) * 32;
        // SAFETY: `raw` is a writable buffer of at least `want` bytes owned by this frame.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), raw.as_mut_ptr().cast(), want) };
        if n < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EAGAIN) {
                return Ok(0);
            }
            return Err(UffdError {
                op: "read(uffd)",
                source: err,
            });
        }
        let n = n as usize / 32;
        for chunk in raw.chunks_exact(32).take(n) {
            out.push(decode(chunk));
        }
        Ok(n)
    }
}

/// The outcome of a run ioctl: all of it, a partial run (EAGAIN with a positive count), or
/// nothing because the first page was already there (EEXIST).
fn run_result((r, done): (Result<(), UffdError>, i64), len: u64) -> Result<u64, UffdError> {
    match r {
        Ok(()) => Ok(len),
        Err(e) if e.is_again() && done > 0 => Ok(done as u64),
        Err(e) if e.is_exists() => Ok(0),
        Err(e) => Err(e),
    }
}

/// Decode one 32-byte `uffd_msg` (packed; fields read by value from their offsets).
fn decode(b: &[u8]) -> Event {
    let event = b[0];
    let word = |at: usize| u64::from_ne_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    match u32::from(event) {
        sys::UFFD_EVENT_PAGEFAULT => {}
        // `arg.remove` / `arg.remap` start right after the 8-byte header, like `arg.pagefault`.
        sys::UFFD_EVENT_REMOVE => {
            return Event::Layout(Layout::Remove {
                start: word(8),
                end: word(16),
            })
        }
        sys::UFFD_EVENT_UNMAP => {
            return Event::Layout(Layout::Unmap {
                start: word(8),
                end: word(16),
            })
        }
        sys::UFFD_EVENT_REMAP => {
            return Event::Layout(Layout::Remap {
                from: word(8),
                to: word(16),
                len: word(24),
            })
        }
        _ => return Event::Other { event },
    }
    let flags = u64::from_ne_bytes(b[8..16].try_into().expect("8 bytes"));
    let address = u64::from_ne_bytes(b[16..24].try_into().expect("8 bytes"));
    let thread_id = u32::from_ne_bytes(b[24..28].try_into().expect("4 bytes"));
    let kind = if flags & u64::from(sys::UFFD_PAGEFAULT_FLAG_MINOR) != 0 {
        FaultKind::Minor
    } else if flags & u64::from(sys::UFFD_PAGEFAULT_FLAG_WP) != 0 {
        FaultKind::WriteProtect
    } else {
        FaultKind::Missing
    };
    let write = flags & u64::from(sys::UFFD_PAGEFAULT_FLAG_WRITE) != 0;
    Event::PageFault {
        address,
        kind,
        write,
        thread_id,
    }
}

impl AsFd for Uffd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Uffd {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

impl From<Uffd> for OwnedFd {
    fn from(u: Uffd) -> OwnedFd {
        u.fd
    }
}
