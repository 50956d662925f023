//! The daemon <-> daemon wire format.
//!
//! Every frame is a little-endian `u32` length (of what follows), a one-byte kind, and the
//! kind's body. Coherence messages ([`PeerFrame::Protocol`]) use a fixed binary header (the
//! envelope and every scalar field of the message, always the same size) followed by the raw
//! page when the message carries one: no serializer on the data path. Everything else
//! (catalog, barriers, locks, status) is rarer and small and travels as postcard
//! ([`Control`]).
//!
//! The dialling node sends [`PeerFrame::Hello`] first; the listener answers
//! [`PeerFrame::Welcome`] or [`PeerFrame::Refused`] and closes. A frame that does not decode is
//! a protocol error: the connection is dropped and logged, never a panic.

use pagemesh_core::{Envelope, Epoch};
use pagemesh_types::NodeId;
use serde::{Deserialize, Serialize};

use crate::SegmentInfo;

/// First bytes of a peer hello.
pub const PEER_MAGIC: [u8; 4] = *b"PGMP";
/// Version of the daemon <-> daemon protocol. Bumped on any incompatible change.
pub const PEER_PROTOCOL_VERSION: u32 = 4;
/// Largest peer frame accepted (a `Holdings` of a big segment is the largest message).
pub const MAX_PEER_FRAME_BYTES: u32 = 64 << 20;
/// Largest page payload accepted in a coherence message.
pub const MAX_PAGE_BYTES: usize = 64 << 10;

/// One frame between daemons.
#[derive(Clone, Debug, PartialEq)]
pub enum PeerFrame {
    /// Dialler -> listener, first frame.
    Hello {
        /// Version of this protocol the dialler speaks.
        version: u32,
        /// Both ends must agree on it (a node of another cluster is refused).
        cluster_id: u64,
        /// The dialling node and its incarnation.
        from: NodeId,
        /// The dialler's epoch.
        from_epoch: Epoch,
        /// The node the dialler believes it reached.
        to: NodeId,
    },
    /// Listener -> dialler: accepted; this is my incarnation.
    Welcome {
        /// The listener's epoch.
        epoch: Epoch,
    },
    /// Listener -> dialler: not accepted, and why. `fenced`: the dialler's incarnation was
    /// declared dead by this node; it must restart with a new epoch.
    Refused {
        /// Human-readable reason.
        reason: String,
        /// The dialler was declared dead.
        fenced: bool,
    },
    /// Proves the sender is alive, and carries the lease clock: `sent_ms` is the sender's
    /// clock now; `echo_ms` is the latest `sent_ms` the sender received from the receiver (so
    /// the receiver knows the sender heard it then).
    Heartbeat {
        /// The sender's clock, milliseconds.
        sent_ms: u64,
        /// The receiver's clock as last heard from it (0: never).
        echo_ms: u64,
    },
    /// A coherence message.
    Protocol(Envelope),
    /// Catalog, synchronisation and status traffic.
    Control(Control),
}

/// A segment as the cluster catalog knows it: the local description plus its home.
pub type ClusterSegment = SegmentInfo;

/// Per-node figures exchanged for `pagemesh cluster status` and the demo.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFigures {
    /// Faults served on this node (every kind).
    pub faults: u64,
    /// Faults that needed the home or another node (not a local hit).
    pub remote_fetches: u64,
    /// Copies dropped at the home's request.
    pub invalidations: u64,
    /// Copies write-protected at the home's request.
    pub downgrades: u64,
    /// Peer bytes sent and received.
    pub bytes_sent: u64,
    /// Peer bytes received.
    pub bytes_received: u64,
    /// Faults that ended in SIGBUS (poisoned, timed out, mapper failure).
    pub sigbus: u64,
    /// Fault service time, p50 and p99, nanoseconds.
    pub fault_p50_ns: u64,
    /// See `fault_p50_ns`.
    pub fault_p99_ns: u64,
}

/// The non-coherence traffic between daemons (postcard inside a frame).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// Segments the sender knows (all of them after a connect, one after a create).
    Catalog {
        /// The segments.
        segments: Vec<ClusterSegment>,
    },
    /// Create a segment whose home is the receiver (sent by the node where the user asked).
    CreateSegment {
        /// Matches the reply.
        req: u64,
        /// Name, size, backing; `id` is assigned by the home.
        name: String,
        /// Size, or `None` for "the file's size".
        size_bytes: Option<u64>,
        /// Backing store on the home.
        backing: crate::Backing,
        /// The user who asked (on the sender), and the mode asked for.
        owner: crate::Owner,
    },
    /// Change the owner or mode of segment `seg` (sent to its home, which checks the caller
    /// again, records the change and announces the segment anew).
    SetOwner {
        /// Matches the reply.
        req: u64,
        /// Segment.
        seg: u64,
        /// New permission bits, owner, group (`None`: unchanged).
        change: crate::OwnerChange,
        /// The user who asked, on the sender: its uid and groups.
        uid: u32,
        gids: Vec<u32>,
    },
    /// The home's answer to `SetOwner`: the segment as it is now, or why not.
    SetOwnerDone {
        /// The request answered.
        req: u64,
        result: Result<SegmentInfo, String>,
    },
    /// The home's answer to `CreateSegment`.
    CreateReply {
        /// The request answered.
        req: u64,
        /// The created segment, or what went wrong.
        result: Result<ClusterSegment, String>,
    },
    /// A process on the sender reached barrier `barrier` of segment `seg` (served by its
    /// home). `token` names the waiter on the sender.
    BarrierArrive {
        /// Segment.
        seg: u64,
        /// Barrier number within the segment.
        barrier: u32,
        /// How many arrivals release it.
        parties: u32,
        /// The waiter.
        token: u64,
    },
    /// The home: these waiters of the receiver may go on.
    BarrierRelease {
        /// Segment.
        seg: u64,
        /// Barrier.
        barrier: u32,
        /// Released waiters (of the receiver).
        tokens: Vec<u64>,
        /// Which round of the barrier this was (counts from 1).
        generation: u64,
    },
    /// Remove cluster segment `seg` (sent to its home, which checks the user named again and
    /// runs the removal).
    RemoveSegment {
        /// Matches the reply.
        req: u64,
        /// Segment.
        seg: u64,
        /// The user who asked, on the sender: its uid and groups.
        uid: u32,
        gids: Vec<u32>,
    },
    /// The home's answer to `RemoveSegment`.
    RemoveDone {
        /// The request answered.
        req: u64,
        /// Removed, or why not.
        result: Result<(), String>,
    },
    /// home -> every node: refuse new attachments of `seg` and say whether any process has it.
    RemovePrepare {
        /// Segment.
        seg: u64,
        /// Which attempt of the home's (answers to an earlier one are ignored).
        attempt: u64,
    },
    /// node -> home: prepared (no process attached here), or the pids attached.
    RemovePrepared {
        /// Segment.
        seg: u64,
        /// The attempt answered.
        attempt: u64,
        /// Ready, or why not.
        result: Result<(), String>,
    },
    /// home -> every node: forget `seg` (remember it as removed).
    RemoveCommit {
        /// Segment.
        seg: u64,
    },
    /// home -> every node: the removal failed; accept attachments of `seg` again.
    RemoveAbort {
        /// Segment.
        seg: u64,
        /// The attempt aborted.
        attempt: u64,
    },
    /// Ids of segments removed from the cluster (sent after each connect with the catalog).
    Removed {
        /// Segment ids.
        ids: Vec<u64>,
    },
    /// Restore every poisoned page of segment `seg` (sent to its home).
    ClearPoison {
        /// Matches the reply.
        req: u64,
        /// Segment.
        seg: u64,
    },
    /// The home's answer: pages cleared, or what went wrong.
    ClearPoisonDone {
        /// The request answered.
        req: u64,
        /// Pages cleared.
        result: Result<u64, String>,
    },
    /// A waiter gave up (timed out): the home must not count its arrival.
    BarrierCancel {
        /// Segment.
        seg: u64,
        /// Barrier.
        barrier: u32,
        /// The waiter.
        token: u64,
    },
    /// The home refused a barrier or lock request.
    SyncRefused {
        /// The waiter.
        token: u64,
        /// Why.
        reason: String,
    },
    /// Take lock `lock` of segment `seg` for waiter `token` (queued at the home).
    LockAcquire {
        /// Segment.
        seg: u64,
        /// Lock number.
        lock: u32,
        /// The waiter.
        token: u64,
    },
    /// The home: the lock is now held by waiter `token` of the receiver.
    LockGranted {
        /// Segment.
        seg: u64,
        /// Lock number.
        lock: u32,
        /// The new holder.
        token: u64,
    },
    /// Release (or stop waiting for) lock `lock`.
    LockRelease {
        /// Segment.
        seg: u64,
        /// Lock number.
        lock: u32,
        /// The holder or waiter.
        token: u64,
    },
    /// node -> home, on every (re)connect: the locks this node's clients hold and wait for at
    /// the receiver, each `(segment, lock, token)`. A restarted home grants no lock before
    /// every peer has reported; a home frees what a node no longer reports.
    LockReport {
        /// Held (granted, not released).
        held: Vec<(u64, u32, u64)>,
        /// Asked for, not granted yet.
        waiting: Vec<(u64, u32, u64)>,
    },
    /// Ask for the receiver's figures.
    StatusRequest {
        /// Matches the reply.
        req: u64,
    },
    /// The figures.
    StatusReply {
        /// The request answered.
        req: u64,
        /// Its figures.
        figures: NodeFigures,
    },
}

/// Why a peer frame was refused.
#[derive(Debug, thiserror::Error)]
pub enum PeerFrameError {
    #[error("peer connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer frame of {len} bytes exceeds the limit of {MAX_PEER_FRAME_BYTES}")]
    TooLarge { len: u32 },
    #[error("malformed peer frame: {0}")]
    Malformed(String),
}

const K_HELLO: u8 = 1;
const K_WELCOME: u8 = 2;
const K_REFUSED: u8 = 3;
const K_HEARTBEAT: u8 = 4;
const K_PROTOCOL: u8 = 5;
const K_CONTROL: u8 = 6;

fn malformed(s: impl Into<String>) -> PeerFrameError {
    PeerFrameError::Malformed(s.into())
}

/// Append the encoding of `frame` (length prefix included) to `out`.
pub fn encode_peer_frame(frame: &PeerFrame, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0; 4]);
    match frame {
        PeerFrame::Hello {
            version,
            cluster_id,
            from,
            from_epoch,
            to,
        } => {
            out.push(K_HELLO);
            out.extend_from_slice(&PEER_MAGIC);
            out.extend_from_slice(&version.to_le_bytes());
            out.extend_from_slice(&cluster_id.to_le_bytes());
            out.extend_from_slice(&from.0.to_le_bytes());
            out.extend_from_slice(&from_epoch.0.to_le_bytes());
            out.extend_from_slice(&to.0.to_le_bytes());
        }
        PeerFrame::Welcome { epoch } => {
            out.push(K_WELCOME);
            out.extend_from_slice(&epoch.0.to_le_bytes());
        }
        PeerFrame::Refused { reason, fenced } => {
            out.push(K_REFUSED);
            out.push(u8::from(*fenced));
            out.extend_from_slice(reason.as_bytes());
        }
        PeerFrame::Heartbeat { sent_ms, echo_ms } => {
            out.push(K_HEARTBEAT);
            out.extend_from_slice(&sent_ms.to_le_bytes());
            out.extend_from_slice(&echo_ms.to_le_bytes());
        }
        PeerFrame::Protocol(env) => {
            out.push(K_PROTOCOL);
            encode_envelope(env, out);
        }
        PeerFrame::Control(c) => {
            out.push(K_CONTROL);
            let body = postcard::to_allocvec(c).expect("control messages always serialize");
            out.extend_from_slice(&body);
        }
    }
    let len = (out.len() - start - 4) as u32;
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
}

struct Cursor<'a> {
    b: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PeerFrameError> {
        if self.b.len() < n {
            return Err(malformed(format!(
                "truncated: wanted {n} more bytes, {} left",
                self.b.len()
            )));
        }
        let (h, t) = self.b.split_at(n);
        self.b = t;
        Ok(h)
    }
    fn u8(&mut self) -> Result<u8, PeerFrameError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, PeerFrameError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, PeerFrameError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn end(&self) -> Result<(), PeerFrameError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(malformed(format!("{} trailing bytes", self.b.len())))
        }
    }
}

/// Decode one frame body (without its length prefix).
pub fn decode_peer_frame(body: &[u8]) -> Result<PeerFrame, PeerFrameError> {
    let mut c = Cursor { b: body };
    let kind = c.u8()?;
    let frame = match kind {
        K_HELLO => {
            if c.take(4)? != PEER_MAGIC {
                return Err(malformed("bad magic in hello"));
            }
            PeerFrame::Hello {
                version: c.u32()?,
                cluster_id: c.u64()?,
                from: NodeId(c.u32()?),
                from_epoch: Epoch(c.u64()?),
                to: NodeId(c.u32()?),
            }
        }
        K_WELCOME => PeerFrame::Welcome {
            epoch: Epoch(c.u64()?),
        },
        K_REFUSED => {
            let fenced = c.u8()? != 0;
            let reason = String::from_utf8_lossy(c.take(c.b.len())?).into_owned();
            PeerFrame::Refused { reason, fenced }
        }
        K_HEARTBEAT => PeerFrame::Heartbeat {
            sent_ms: c.u64()?,
            echo_ms: c.u64()?,
        },
        K_PROTOCOL => PeerFrame::Protocol(decode_envelope(&mut c)?),
        K_CONTROL => {
            let c2 = postcard::from_bytes(c.take(c.b.len())?)
                .map_err(|e| malformed(format!("control message: {e}")))?;
            PeerFrame::Control(c2)
        }
        k => return Err(malformed(format!("unknown frame kind {k}"))),
    };
    c.end()?;
    Ok(frame)
}

#[path = "peer_envelope.rs"]
mod envelope;
pub use envelope::PROTOCOL_HEADER_BYTES;
use envelope::{decode_envelope, encode_envelope};

#[path = "peer_io.rs"]
mod io;
pub use io::{read_peer_frame, write_peer_frame};

#[cfg(test)]
#[path = "peer_tests.rs"]
mod tests;
