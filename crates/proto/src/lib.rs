//! Wire messages between clients (CLI, library) and the node daemon, and their framing.
//!
//! A frame is a little-endian `u32` payload length followed by a postcard-encoded message; file
//! descriptors (the segment memfd, the client's uffd) travel with a frame as `SCM_RIGHTS`.
//! The first frame on every connection is [`Request::Hello`] with [`MAGIC`] and
//! [`PROTOCOL_VERSION`]; anything else gets an error reply and the connection is closed.

#![forbid(unsafe_code)]

mod frame;
pub mod lease_board;
mod messages;
pub mod peer;
pub mod vm_lease;

pub use frame::{read_frame, write_frame, FrameError};
pub use messages::*;

/// First bytes of every hello.
pub const MAGIC: [u8; 4] = *b"PGMS";
/// Version of the client <-> daemon protocol. Bumped on any incompatible change.
pub const PROTOCOL_VERSION: u32 = 3;
/// Largest frame accepted (a frame announcing more is a protocol error).
pub const MAX_FRAME_BYTES: u32 = 8 << 20;
/// Largest `ReadAt`/`WriteAt` payload per request; larger I/O is split by the caller.
pub const MAX_IO_CHUNK_BYTES: u64 = 4 << 20;
