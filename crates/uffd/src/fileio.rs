//! Page-cache control for plain files.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Drop a file range from the kernel's page cache (`posix_fadvise(DONTNEED)`): clean pages are
/// freed, so data that pagemesh caches itself is not cached twice, and benchmarks start cold.
pub fn drop_cached(file: &File, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: posix_fadvise takes an open fd and plain integers.
    let rc = unsafe {
        libc::posix_fadvise(
            file.as_raw_fd(),
            offset as libc::off_t,
            len as libc::off_t,
            libc::POSIX_FADV_DONTNEED,
        )
    };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}

/// Tell the kernel not to read ahead on `file` (`posix_fadvise(RANDOM)`).
pub fn advise_random(file: &File) -> io::Result<()> {
    // SAFETY: posix_fadvise takes an open fd and plain integers.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
    if rc != 0 {
        return Err(io::Error::from_raw_os_error(rc));
    }
    Ok(())
}
