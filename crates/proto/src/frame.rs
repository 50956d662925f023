//! Length-prefixed frames with attached file descriptors.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use pagemesh_uffd::fdpass;
use serde::{de::DeserializeOwned, Serialize};

use crate::MAX_FRAME_BYTES;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection closed by peer")]
    Closed,
    #[error("socket I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_BYTES} bytes")]
    TooLarge(u32),
    #[error("malformed message: {0}")]
    Malformed(#[from] postcard::Error),
}

impl FrameError {
    /// A read timeout (the peer is alive but did not answer in time).
    pub fn is_timeout(&self) -> bool {
        matches!(self, FrameError::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }
}

/// Encode `msg` and send it with `fds` attached.
pub fn write_frame<T: Serialize>(
    sock: &UnixStream,
    msg: &T,
    fds: &[BorrowedFd<'_>],
) -> Result<(), FrameError> {
    let payload = postcard::to_stdvec(msg)?;
    let len = u32::try_from(payload.len()).map_err(|_| FrameError::TooLarge(u32::MAX))?;
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    let mut buf = Vec::with_capacity(4 + payload.len());
    buf.extend_from_slice(&len.to_le_bytes());
    buf.extend_from_slice(&payload);
    fdpass::send_with_fds(sock, &buf, fds)?;
    Ok(())
}

fn read_full(
    sock: &UnixStream,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    at_start: bool,
) -> Result<(), FrameError> {
    let mut got = 0;
    while got < buf.len() {
        let n = fdpass::recv_with_fds(sock, &mut buf[got..], fds)?;
        if n == 0 {
            return Err(if at_start && got == 0 {
                FrameError::Closed
            } else {
                FrameError::Io(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed mid-frame",
                ))
            });
        }
        got += n;
    }
    Ok(())
}

/// Read one frame; returns the message and the fds that came with it.
pub fn read_frame<T: DeserializeOwned>(sock: &UnixStream) -> Result<(T, Vec<OwnedFd>), FrameError> {
    let mut fds = Vec::new();
    let mut hdr = [0u8; 4];
    read_full(sock, &mut hdr, &mut fds, true)?;
    let len = u32::from_le_bytes(hdr);
    if len > MAX_FRAME_BYTES {
        return Err(FrameError::TooLarge(len));
    }
    let mut payload = vec![0u8; len as usize];
    read_full(sock, &mut payload, &mut fds, false)?;
    let msg = postcard::from_bytes(&payload)?;
    Ok((msg, fds))
}
