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

/// Send as much of `buf` as the socket takes now, without blocking and without changing the
/// socket's blocking mode (`send(MSG_DONTWAIT | MSG_NOSIGNAL)`): another thread may be doing
/// blocking writes on the same socket. `Err(WouldBlock)` when nothing fits.
pub fn send_nonblocking(sock: std::os::fd::BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes for the duration of the call and
    // the fd is open (borrowed).
    let n = unsafe {
        libc::send(
            sock.as_raw_fd(),
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsFd;

    #[test]
    fn send_nonblocking_fills_the_socket_then_reports_would_block() {
        let (a, mut b) = std::os::unix::net::UnixStream::pair().expect("pair");
        assert_eq!(send_nonblocking(a.as_fd(), b"hello").expect("send"), 5);
        let mut got = [0u8; 5];
        b.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"hello");
        let big = vec![7u8; 1 << 16];
        let mut total = 0usize;
        let err = loop {
            match send_nonblocking(a.as_fd(), &big) {
                Ok(n) => total += n,
                Err(e) => break e,
            }
            assert!(total < 1 << 30, "the socket never filled");
        };
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert!(total > 0);
    }
}
