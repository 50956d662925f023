//! memfd (the node's page cache for a segment) and shared mappings of it.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;
use std::ptr::NonNull;

/// A memfd: anonymous shared memory with a file's interface (holes, punch-hole, pread/pwrite).
#[derive(Debug)]
pub struct Memfd {
    file: File,
}

impl Memfd {
    /// Create a memfd of `len_bytes` (sparse: no memory is used until pages are written).
    pub fn create(name: &str, len_bytes: u64) -> io::Result<Memfd> {
        let cname = CString::new(name.replace('\0', "_")).expect("NULs replaced");
        // SAFETY: `cname` is a valid NUL-terminated string for the duration of the call.
        let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a new fd that nothing else owns.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(len_bytes)?;
        Ok(Memfd { file })
    }

    /// Create a memfd of `len_bytes` that can be sealed ([`Memfd::seal_future_writes`]).
    pub fn create_sealable(name: &str, len_bytes: u64) -> io::Result<Memfd> {
        let cname = CString::new(name.replace('\0', "_")).expect("NULs replaced");
        // SAFETY: `cname` is a valid NUL-terminated string for the duration of the call.
        let fd = unsafe {
            libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: memfd_create returned a new fd that nothing else owns.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        file.set_len(len_bytes)?;
        Ok(Memfd { file })
    }

    /// Seal the memfd against growing, shrinking and every write but through mappings that
    /// exist already: whoever receives the fd afterwards can only read it.
    pub fn seal_future_writes(&self) -> io::Result<()> {
        let seals = libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_GROW | libc::F_SEAL_SHRINK;
        // SAFETY: F_ADD_SEALS takes an int argument and touches no memory of ours.
        let r = unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_ADD_SEALS, seals) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // Nothing may seal further or undo this.
        // SAFETY: as above.
        let r = unsafe { libc::fcntl(self.file.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SEAL) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Create a memfd of `len_bytes` whose size is sealed: nobody holding it (a client with its
    /// fd) can grow or shrink it under the daemon. Punching pages out stays possible.
    pub fn create_fixed_size(name: &str, len_bytes: u64) -> io::Result<Memfd> {
        let m = Memfd::create_sealable(name, len_bytes)?;
        let seals = libc::F_SEAL_GROW | libc::F_SEAL_SHRINK | libc::F_SEAL_SEAL;
        // SAFETY: F_ADD_SEALS takes an int argument and touches no memory of ours.
        let r = unsafe { libc::fcntl(m.file.as_raw_fd(), libc::F_ADD_SEALS, seals) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(m)
    }

    /// Wrap a memfd received from the daemon.
    /// A read-only descriptor of this memfd (`/proc/self/fd/N` opened `O_RDONLY`): whoever
    /// gets it can read and map it readable, never write it or map it writable and shared.
    pub fn reopen_read_only(&self) -> io::Result<OwnedFd> {
        let f = std::fs::File::open(format!("/proc/self/fd/{}", self.file.as_raw_fd()))?;
        Ok(OwnedFd::from(f))
    }

    pub fn from_owned(fd: OwnedFd) -> Memfd {
        Memfd {
            file: File::from(fd),
        }
    }

    /// A second handle to the same memfd (`dup`).
    pub fn try_clone(&self) -> io::Result<Memfd> {
        Ok(Memfd {
            file: self.file.try_clone()?,
        })
    }

    /// Size of the memfd.
    pub fn len_bytes(&self) -> io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Free the pages of `[offset, offset+len)` (they become holes) and zap them from every
    /// mapping of the memfd in every process.
    pub fn punch_hole(&self, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: fallocate takes plain integers; the fd is open for the call.
        let rc = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Read bytes at `offset` (holes read as zero and stay holes).
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Write bytes at `offset` (allocating the pages).
    pub fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.file.write_all_at(buf, offset)
    }

    /// Whether the page at `offset` is present (not a hole), by `lseek(SEEK_DATA)`.
    pub fn is_present(&self, offset: u64) -> io::Result<bool> {
        // SAFETY: lseek takes plain integers.
        let rc = unsafe {
            libc::lseek(
                self.file.as_raw_fd(),
                offset as libc::off_t,
                libc::SEEK_DATA,
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                return Ok(false);
            }
            return Err(e);
        }
        Ok(rc as u64 == offset)
    }

    /// Bytes of memory the memfd holds (allocated blocks).
    pub fn resident_bytes(&self) -> io::Result<u64> {
        use std::os::unix::fs::MetadataExt;
        Ok(self.file.metadata()?.blocks() * 512)
    }
}

impl AsFd for Memfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

/// A `MAP_SHARED` mapping of a file, unmapped on drop. Not forked into children
/// (`MADV_DONTFORK`: a child would get an unarmed copy, UFFD-NOTES pitfall 5) and without
/// transparent huge pages (pitfall 6).
#[derive(Debug)]
pub struct SharedMapping {
    ptr: NonNull<u8>,
    len: usize,
    writable: bool,
}

// SAFETY: the mapping is plain shared memory; the struct only holds its address and length, and
// all access to the bytes goes through raw pointers whose users synchronise themselves.
unsafe impl Send for SharedMapping {}
// SAFETY: as above; `&SharedMapping` gives no access to the bytes without raw pointers.
unsafe impl Sync for SharedMapping {}

impl SharedMapping {
    /// `mmap` a fresh range (the kernel chooses the address), with `MADV_DONTFORK` if asked and
    /// without THP.
    fn mmap(
        fd: Option<BorrowedFd<'_>>,
        len: usize,
        prot: libc::c_int,
        flags: libc::c_int,
        dontfork: bool,
    ) -> io::Result<SharedMapping> {
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cannot map zero bytes",
            ));
        }
        let raw_fd = fd.map_or(-1, |f| f.as_raw_fd());
        // SAFETY: a fresh mapping at an address the kernel chooses cannot alias any Rust object.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                flags | libc::MAP_NORESERVE,
                raw_fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let m = SharedMapping {
            ptr: NonNull::new(p.cast()).expect("mmap never returns NULL on success"),
            len,
            writable: prot & libc::PROT_WRITE != 0,
        };
        if dontfork {
            m.advise(0, len, libc::MADV_DONTFORK)?;
        }
        // THP may be unavailable; ignoring EINVAL is correct (no huge pages then).
        let _ = m.advise(0, len, libc::MADV_NOHUGEPAGE);
        Ok(m)
    }

    /// Map `len` bytes of `fd` from offset 0, readable and writable, shared.
    pub fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<SharedMapping> {
        Self::mmap(
            Some(fd),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            true,
        )
    }

    /// Map `len` bytes of `fd` privately (copy-on-write): reads see the file's frames, a write
    /// gives this process its own copy of the page. Not forked into children, no THP.
    pub fn map_private(fd: BorrowedFd<'_>, len: usize) -> io::Result<SharedMapping> {
        Self::mmap(
            Some(fd),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE,
            true,
        )
    }

    /// Map `len` bytes of `fd` readable only (shared, or `private`): a store through it is a
    /// SIGSEGV from the kernel, and [`SharedMapping::write_at`] and
    /// [`SharedMapping::atomics_u64`] refuse it (they panic). A read-only `fd` can only be
    /// mapped so when shared, and userfaultfd refuses to register that (EPERM: it wants
    /// `VM_MAYWRITE`); privately mapped, it registers and still maps the file's own frames.
    /// Not forked into children, no THP.
    pub fn map_read_only(
        fd: BorrowedFd<'_>,
        len: usize,
        private: bool,
    ) -> io::Result<SharedMapping> {
        let flags = if private {
            libc::MAP_PRIVATE
        } else {
            libc::MAP_SHARED
        };
        Self::mmap(Some(fd), len, libc::PROT_READ, flags, true)
    }

    /// Whether the mapping may be written.
    pub fn is_writable(&self) -> bool {
        self.writable
    }

    /// Map `len` bytes of private anonymous memory (for tests and benchmarks).
    pub fn anonymous(len: usize) -> io::Result<SharedMapping> {
        Self::mmap(
            None,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            false,
        )
    }

    fn advise(&self, offset: usize, len: usize, advice: libc::c_int) -> io::Result<()> {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "advise out of range"
        );
        // SAFETY: the range lies within this mapping (asserted); the advice values used here
        // change paging behaviour, not the validity of the range.
        let rc = unsafe { libc::madvise(self.ptr.as_ptr().add(offset).cast(), len, advice) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Write a file mapping's dirty pages back and wait for them (`msync(MS_SYNC)`).
    pub fn msync(&self) -> io::Result<()> {
        // SAFETY: the range is exactly this live mapping; msync does not change its contents.
        let rc = unsafe { libc::msync(self.ptr.as_ptr().cast(), self.len, libc::MS_SYNC) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Drop this process's page-table entries for a range (`MADV_DONTNEED`): the memfd keeps its
    /// pages; the next access faults again (MINOR or MISSING). Also clears poison markers.
    pub fn zap(&self, offset: usize, len: usize) -> io::Result<()> {
        self.advise(offset, len, libc::MADV_DONTNEED)
    }

    /// Free a range's pages (`MADV_REMOVE`), as a balloon does with guest memory: a registered
    /// uffd with `EVENT_REMOVE` is told first, and the next access faults as missing.
    pub fn discard(&self, offset: usize, len: usize) -> io::Result<()> {
        self.advise(offset, len, libc::MADV_REMOVE)
    }

    fn check(&self, offset: usize, len: usize) {
        assert!(
            offset.checked_add(len).is_some_and(|end| end <= self.len),
            "range {offset}+{len} outside mapping of {} bytes",
            self.len
        );
    }

    /// Copy bytes out of the mapping (through page faults, like any access). Concurrent writers
    /// in other threads or processes may be seen mid-write, as with `memcpy` on shared memory.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) {
        self.check(offset, buf.len());
        // SAFETY: the source range lies within this live mapping (checked) and cannot overlap
        // `buf`, a Rust slice; the mapping is plain memory, so a byte copy is defined apart from
        // the tearing documented above.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.ptr.as_ptr().add(offset),
                buf.as_mut_ptr(),
                buf.len(),
            )
        };
    }

    /// Copy bytes into the mapping (through page faults, like any access). Panics on a
    /// read-only mapping.
    pub fn write_at(&self, offset: usize, data: &[u8]) {
        assert!(self.writable, "write_at on a read-only mapping");
        self.check(offset, data.len());
        // SAFETY: the destination lies within this live, writable mapping (checked) and cannot
        // overlap `data`, a Rust slice.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.as_ptr().add(offset), data.len())
        };
    }

    /// View the mapping as `u64` atomics (the mapping is page-aligned, so 8-aligned). Atomic
    /// operations on it are atomic with respect to every process that maps the segment.
    /// Panics on a read-only mapping (a store would fault): use [`SharedMapping::load_u64`].
    pub fn atomics_u64(&self) -> &[std::sync::atomic::AtomicU64] {
        assert!(self.writable, "atomics_u64 on a read-only mapping");
        self.words()
    }

    /// Load the `index`th aligned 64-bit word (atomically, acquire), as another process stores
    /// it through its own shared mapping. Panics if the word is out of the mapping.
    pub fn load_u64(&self, index: usize) -> u64 {
        // A load is all this does with the word: it cannot fault on a read-only mapping.
        self.words()[index].load(std::sync::atomic::Ordering::Acquire)
    }

    fn words(&self) -> &[std::sync::atomic::AtomicU64] {
        // SAFETY: the mapping is live for the returned borrow, page-aligned (so aligned for
        // AtomicU64), `len / 8` elements fit inside it, and AtomicU64 has no invalid bit
        // patterns; atomics are the documented way to share this memory between processes.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast(), self.len / 8) }
    }

    /// Start address.
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    /// Start address as an integer (for uffd ranges).
    pub fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the mapping is empty (never: zero-length mappings are refused).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for SharedMapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len describe a mapping this struct created and still owns.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

/// A read-only shared mapping of a file (for comparisons with the kernel's own mmap). Only
/// reading is offered: a write through it would fault.
#[derive(Debug)]
pub struct ReadOnlyMapping(SharedMapping);

impl ReadOnlyMapping {
    /// Map `len` bytes of `fd` from offset 0, read-only, shared.
    pub fn map(fd: BorrowedFd<'_>, len: usize) -> io::Result<ReadOnlyMapping> {
        SharedMapping::mmap(Some(fd), len, libc::PROT_READ, libc::MAP_SHARED, false)
            .map(ReadOnlyMapping)
    }

    /// Copy bytes out of the mapping.
    pub fn read_at(&self, offset: usize, buf: &mut [u8]) {
        self.0.read_at(offset, buf)
    }

    /// Load the `index`th aligned 64-bit word (atomically, acquire), as another process stores
    /// it through its own shared mapping. Panics if the word is out of the mapping.
    pub fn load_u64(&self, index: usize) -> u64 {
        self.0.load_u64(index)
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the mapping is empty (never: zero-length mappings are refused).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}
