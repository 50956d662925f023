//! Blocking reads and writes of whole peer frames (the transport's handshakes and its writer
//! threads; the engine frames its non-blocking reads itself).

use std::io::{Read, Write};

use super::{
    decode_peer_frame, encode_peer_frame, PeerFrame, PeerFrameError, MAX_PEER_FRAME_BYTES,
};

/// Write one frame (blocking).
pub fn write_peer_frame(w: &mut impl Write, frame: &PeerFrame) -> Result<(), PeerFrameError> {
    let mut buf = Vec::new();
    encode_peer_frame(frame, &mut buf);
    w.write_all(&buf)?;
    Ok(())
}

/// Read one frame (blocking) into `buf`, which is reused between calls; returns the number of
/// wire bytes it took.
pub fn read_peer_frame(
    r: &mut impl Read,
    buf: &mut Vec<u8>,
) -> Result<(PeerFrame, usize), PeerFrameError> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len);
    if len > MAX_PEER_FRAME_BYTES {
        return Err(PeerFrameError::TooLarge { len });
    }
    buf.resize(len as usize, 0);
    r.read_exact(buf)?;
    Ok((decode_peer_frame(buf)?, 4 + len as usize))
}
