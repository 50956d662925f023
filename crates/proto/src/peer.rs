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

use pagemesh_core::{CacheState, DenyReason, Envelope, Epoch, Msg, PageData, PageKey};
use pagemesh_core::{ReqId, TxnId, Version, Want};
use pagemesh_types::{NodeId, PageNo, SegmentId};
use serde::{Deserialize, Serialize};

use crate::SegmentInfo;

/// First bytes of a peer hello.
pub const PEER_MAGIC: [u8; 4] = *b"PGMP";
/// Version of the daemon <-> daemon protocol. Bumped on any incompatible change.
pub const PEER_PROTOCOL_VERSION: u32 = 2;
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
    /// Remove cluster segment `seg` (sent to its home, which runs the removal).
    RemoveSegment {
        /// Matches the reply.
        req: u64,
        /// Segment.
        seg: u64,
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

const M_HELLO: u8 = 0;
const M_ACQUIRE: u8 = 1;
const M_GRANT: u8 = 2;
const M_GRANT_ACK: u8 = 3;
const M_DENY: u8 = 4;
const M_FETCH: u8 = 5;
const M_FETCH_REPLY: u8 = 6;
const M_INVAL: u8 = 7;
const M_INVAL_ACK: u8 = 8;
const M_EVICT: u8 = 9;
const M_RECOVER: u8 = 10;
const M_HOLDINGS: u8 = 11;
const M_SYNC_REQ: u8 = 12;
const M_SYNC_DONE: u8 = 13;
const M_CLEAR_POISON: u8 = 14;
const M_CLEAR_POISON_DONE: u8 = 15;

/// Size of the fixed header of a coherence message: from u32, from_epoch u64, to u32,
/// to_epoch u64, tag u8, seg u64, page u64, req u64, txn u64, version u64, small u8 (state,
/// want, then or reason), flags u8 (bit0: `have`/`copy` present, bit1: data present),
/// data kind u8 (0 zero, 1 bytes), extra u32 (failed pages, holdings count, data length).
pub const PROTOCOL_HEADER_BYTES: usize = 4 + 8 + 4 + 8 + 1 + 8 * 5 + 1 + 1 + 1 + 4;

#[derive(Default)]
struct Fixed {
    tag: u8,
    seg: u64,
    page: u64,
    req: u64,
    txn: u64,
    version: u64,
    small: u8,
    flags: u8,
    data_kind: u8,
    extra: u32,
}

fn state_code(s: CacheState) -> u8 {
    match s {
        CacheState::Shared => 0,
        CacheState::ExclusiveClean => 1,
        CacheState::Modified => 2,
    }
}

fn state_of(c: u8) -> Result<CacheState, PeerFrameError> {
    Ok(match c {
        0 => CacheState::Shared,
        1 => CacheState::ExclusiveClean,
        2 => CacheState::Modified,
        _ => return Err(malformed(format!("unknown cache state {c}"))),
    })
}

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

fn encode_envelope(env: &Envelope, out: &mut Vec<u8>) {
    out.extend_from_slice(&env.from.0.to_le_bytes());
    out.extend_from_slice(&env.from_epoch.0.to_le_bytes());
    out.extend_from_slice(&env.to.0.to_le_bytes());
    out.extend_from_slice(&env.to_epoch.0.to_le_bytes());
    let mut f = Fixed::default();
    let mut data: Option<&PageData> = None;
    let mut holdings: &[(u64, CacheState, Version, TxnId)] = &[];
    let key = |f: &mut Fixed, p: &PageKey| {
        f.seg = p.seg.0;
        f.page = p.page.0;
    };
    match &env.msg {
        Msg::Hello => f.tag = M_HELLO,
        Msg::Acquire {
            page,
            req,
            want,
            have,
        } => {
            f.tag = M_ACQUIRE;
            key(&mut f, page);
            f.req = req.0;
            f.small = matches!(want, Want::Exclusive) as u8;
            if let Some((v, t)) = have {
                f.flags |= 1;
                f.version = v.0;
                f.txn = t.0;
            }
        }
        Msg::Grant {
            page,
            req,
            txn,
            version,
            state,
            data: d,
        } => {
            f.tag = M_GRANT;
            key(&mut f, page);
            f.req = req.0;
            f.txn = txn.0;
            f.version = version.0;
            f.small = state_code(*state);
            data = d.as_ref();
        }
        Msg::GrantAck { page, txn } => {
            f.tag = M_GRANT_ACK;
            key(&mut f, page);
            f.txn = txn.0;
        }
        Msg::Deny { page, req, reason } => {
            f.tag = M_DENY;
            key(&mut f, page);
            f.req = req.0;
            f.small = match reason {
                DenyReason::Poisoned => 0,
                DenyReason::MapperFailed => 1,
            };
        }
        Msg::Fetch { page, txn, then } => {
            f.tag = M_FETCH;
            key(&mut f, page);
            f.txn = txn.0;
            f.small = state_code(*then);
        }
        Msg::FetchReply { page, txn, copy } => {
            f.tag = M_FETCH_REPLY;
            key(&mut f, page);
            f.txn = txn.0;
            if let Some((v, d)) = copy {
                f.flags |= 1;
                f.version = v.0;
                data = Some(d);
            }
        }
        Msg::Inval { page, txn } => {
            f.tag = M_INVAL;
            key(&mut f, page);
            f.txn = txn.0;
        }
        Msg::InvalAck { page, txn } => {
            f.tag = M_INVAL_ACK;
            key(&mut f, page);
            f.txn = txn.0;
        }
        Msg::Evict { page } => {
            f.tag = M_EVICT;
            key(&mut f, page);
        }
        Msg::Recover { seg } => {
            f.tag = M_RECOVER;
            f.seg = seg.0;
        }
        Msg::Holdings { seg, copies } => {
            f.tag = M_HOLDINGS;
            f.seg = seg.0;
            f.extra = copies.len() as u32;
            holdings = copies;
        }
        Msg::SyncReq { seg, req } => {
            f.tag = M_SYNC_REQ;
            f.seg = seg.0;
            f.req = req.0;
        }
        Msg::SyncDone {
            seg,
            req,
            failed_pages,
        } => {
            f.tag = M_SYNC_DONE;
            f.seg = seg.0;
            f.req = req.0;
            f.extra = *failed_pages;
        }
        Msg::ClearPoison { page, req } => {
            f.tag = M_CLEAR_POISON;
            key(&mut f, page);
            f.req = req.0;
        }
        Msg::ClearPoisonDone { page, req } => {
            f.tag = M_CLEAR_POISON_DONE;
            key(&mut f, page);
            f.req = req.0;
        }
    }
    let bytes: &[u8] = match data {
        None => &[],
        Some(d) => {
            f.flags |= 2;
            match d {
                PageData::Zero => &[],
                PageData::Bytes(b) => {
                    f.data_kind = 1;
                    f.extra = b.len() as u32;
                    b
                }
                PageData::Local => {
                    panic!("PageData::Local must be resolved by the driver before sending")
                }
            }
        }
    };
    out.push(f.tag);
    for v in [f.seg, f.page, f.req, f.txn, f.version] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.push(f.small);
    out.push(f.flags);
    out.push(f.data_kind);
    out.extend_from_slice(&f.extra.to_le_bytes());
    out.extend_from_slice(bytes);
    for (page, state, v, t) in holdings {
        out.extend_from_slice(&page.to_le_bytes());
        out.push(state_code(*state));
        out.extend_from_slice(&v.0.to_le_bytes());
        out.extend_from_slice(&t.0.to_le_bytes());
    }
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

fn decode_envelope(c: &mut Cursor<'_>) -> Result<Envelope, PeerFrameError> {
    let from = NodeId(c.u32()?);
    let from_epoch = Epoch(c.u64()?);
    let to = NodeId(c.u32()?);
    let to_epoch = Epoch(c.u64()?);
    let tag = c.u8()?;
    let (seg, page, req, txn, version) = (c.u64()?, c.u64()?, c.u64()?, c.u64()?, c.u64()?);
    let (small, flags, data_kind, extra) = (c.u8()?, c.u8()?, c.u8()?, c.u32()?);
    if flags & !3 != 0 {
        return Err(malformed(format!("unknown flags {flags:#x}")));
    }
    let key = PageKey {
        seg: SegmentId(seg),
        page: PageNo(page),
    };
    let mut data = || -> Result<Option<PageData>, PeerFrameError> {
        if flags & 2 == 0 {
            return Ok(None);
        }
        match data_kind {
            0 => Ok(Some(PageData::Zero)),
            1 => {
                let n = extra as usize;
                if n > MAX_PAGE_BYTES {
                    return Err(malformed(format!("page payload of {n} bytes")));
                }
                Ok(Some(PageData::Bytes(c.take(n)?.to_vec())))
            }
            k => Err(malformed(format!("unknown data kind {k}"))),
        }
    };
    let msg = match tag {
        M_HELLO => Msg::Hello,
        M_ACQUIRE => Msg::Acquire {
            page: key,
            req: ReqId(req),
            want: match small {
                0 => Want::Shared,
                1 => Want::Exclusive,
                w => return Err(malformed(format!("unknown want {w}"))),
            },
            have: (flags & 1 != 0).then_some((Version(version), TxnId(txn))),
        },
        M_GRANT => Msg::Grant {
            page: key,
            req: ReqId(req),
            txn: TxnId(txn),
            version: Version(version),
            state: state_of(small)?,
            data: data()?,
        },
        M_GRANT_ACK => Msg::GrantAck {
            page: key,
            txn: TxnId(txn),
        },
        M_DENY => Msg::Deny {
            page: key,
            req: ReqId(req),
            reason: match small {
                0 => DenyReason::Poisoned,
                1 => DenyReason::MapperFailed,
                r => return Err(malformed(format!("unknown deny reason {r}"))),
            },
        },
        M_FETCH => Msg::Fetch {
            page: key,
            txn: TxnId(txn),
            then: state_of(small)?,
        },
        M_FETCH_REPLY => {
            let d = data()?;
            Msg::FetchReply {
                page: key,
                txn: TxnId(txn),
                copy: if flags & 1 != 0 {
                    Some((
                        Version(version),
                        d.ok_or_else(|| malformed("fetch reply copy without data"))?,
                    ))
                } else {
                    None
                },
            }
        }
        M_INVAL => Msg::Inval {
            page: key,
            txn: TxnId(txn),
        },
        M_INVAL_ACK => Msg::InvalAck {
            page: key,
            txn: TxnId(txn),
        },
        M_EVICT => Msg::Evict { page: key },
        M_RECOVER => Msg::Recover {
            seg: SegmentId(seg),
        },
        M_HOLDINGS => {
            let n = extra as usize;
            if n > c.b.len() / 25 {
                return Err(malformed(format!(
                    "holdings of {n} copies in a short frame"
                )));
            }
            let mut copies = Vec::with_capacity(n);
            for _ in 0..n {
                let p = c.u64()?;
                let s = state_of(c.u8()?)?;
                let v = Version(c.u64()?);
                let t = TxnId(c.u64()?);
                copies.push((p, s, v, t));
            }
            Msg::Holdings {
                seg: SegmentId(seg),
                copies,
            }
        }
        M_SYNC_REQ => Msg::SyncReq {
            seg: SegmentId(seg),
            req: ReqId(req),
        },
        M_SYNC_DONE => Msg::SyncDone {
            seg: SegmentId(seg),
            req: ReqId(req),
            failed_pages: extra,
        },
        M_CLEAR_POISON => Msg::ClearPoison {
            page: key,
            req: ReqId(req),
        },
        M_CLEAR_POISON_DONE => Msg::ClearPoisonDone {
            page: key,
            req: ReqId(req),
        },
        t => return Err(malformed(format!("unknown coherence message {t}"))),
    };
    Ok(Envelope {
        from,
        from_epoch,
        to,
        to_epoch,
        msg,
    })
}

#[path = "peer_io.rs"]
mod io;
pub use io::{read_peer_frame, write_peer_frame};

#[cfg(test)]
#[path = "peer_tests.rs"]
mod tests;
