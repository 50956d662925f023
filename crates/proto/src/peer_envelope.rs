//! The body of a coherence frame ([`super::PeerFrame::Protocol`]): both ends' node and epoch,
//! then a fixed header that has room for every scalar field of every message kind (a kind
//! leaves the fields it does not use 0), then the page or the holdings list when the message
//! carries one. Each message kind is written by one arm of [`header_of`] and read back by one
//! arm of [`msg_of`].

use pagemesh_core::{CacheState, DenyReason, Envelope, Epoch, Msg, PageData, PageKey};
use pagemesh_core::{ReqId, TxnId, Version, Want};
use pagemesh_types::{NodeId, PageNo, SegmentId};

use super::{malformed, Cursor, PeerFrameError, MAX_PAGE_BYTES};

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

/// Flag: `Acquire`'s `have` or `FetchReply`'s `copy` is present (in `version`, and for
/// `have` also `txn`).
const F_HAVE: u8 = 1;
/// Flag: page data follows the header (`data_kind` says which; `extra` is its length).
const F_DATA: u8 = 2;

/// Data kinds.
const D_ZERO: u8 = 0;
const D_BYTES: u8 = 1;

/// Bytes of one holdings entry: page u64, state u8, version u64, txn u64.
const HOLDING_BYTES: usize = 8 + 1 + 8 + 8;

/// Size of the fixed header of a coherence message: from u32, from_epoch u64, to u32,
/// to_epoch u64, tag u8, seg u64, page u64, req u64, txn u64, version u64, small u8 (state,
/// want, then or reason), flags u8 (bit0: `have`/`copy` present, bit1: data present),
/// data kind u8 (0 zero, 1 bytes), extra u32 (failed pages, holdings count, data length).
pub const PROTOCOL_HEADER_BYTES: usize = 4 + 8 + 4 + 8 + 1 + 8 * 5 + 1 + 1 + 1 + 4;

/// The fixed header after the two ends' addresses, as it is on the wire.
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

/// Building a header, one field at a time.
impl Fixed {
    fn tag(tag: u8) -> Fixed {
        Fixed {
            tag,
            ..Fixed::default()
        }
    }
    fn seg(tag: u8, seg: SegmentId) -> Fixed {
        Fixed {
            seg: seg.0,
            ..Fixed::tag(tag)
        }
    }
    fn page(tag: u8, p: &PageKey) -> Fixed {
        Fixed {
            page: p.page.0,
            ..Fixed::seg(tag, p.seg)
        }
    }
    fn req(self, r: ReqId) -> Fixed {
        Fixed { req: r.0, ..self }
    }
    fn txn(self, t: TxnId) -> Fixed {
        Fixed { txn: t.0, ..self }
    }
    fn small(self, small: u8) -> Fixed {
        Fixed { small, ..self }
    }
    fn extra(self, extra: u32) -> Fixed {
        Fixed { extra, ..self }
    }
    fn version(self, v: Version) -> Fixed {
        Fixed {
            version: v.0,
            ..self
        }
    }
    /// `have`/`copy` present, of this version.
    fn have(self, v: Version) -> Fixed {
        Fixed {
            flags: self.flags | F_HAVE,
            ..self.version(v)
        }
    }
}

/// Reading a header's fields back as what they are.
impl Fixed {
    fn key(&self) -> PageKey {
        PageKey {
            seg: SegmentId(self.seg),
            page: PageNo(self.page),
        }
    }
    fn segment(&self) -> SegmentId {
        SegmentId(self.seg)
    }
    fn req_id(&self) -> ReqId {
        ReqId(self.req)
    }
    fn txn_id(&self) -> TxnId {
        TxnId(self.txn)
    }
    fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
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

fn want_code(w: Want) -> u8 {
    matches!(w, Want::Exclusive) as u8
}

fn want_of(c: u8) -> Result<Want, PeerFrameError> {
    Ok(match c {
        0 => Want::Shared,
        1 => Want::Exclusive,
        w => return Err(malformed(format!("unknown want {w}"))),
    })
}

fn deny_code(r: DenyReason) -> u8 {
    match r {
        DenyReason::Poisoned => 0,
        DenyReason::MapperFailed => 1,
    }
}

fn deny_of(c: u8) -> Result<DenyReason, PeerFrameError> {
    Ok(match c {
        0 => DenyReason::Poisoned,
        1 => DenyReason::MapperFailed,
        r => return Err(malformed(format!("unknown deny reason {r}"))),
    })
}

/// Append the body of a coherence frame for `env`.
pub(super) fn encode_envelope(env: &Envelope, out: &mut Vec<u8>) {
    out.extend_from_slice(&env.from.0.to_le_bytes());
    out.extend_from_slice(&env.from_epoch.0.to_le_bytes());
    out.extend_from_slice(&env.to.0.to_le_bytes());
    out.extend_from_slice(&env.to_epoch.0.to_le_bytes());
    let mut f = header_of(&env.msg);
    let bytes = match page_data_of(&env.msg) {
        None => &[][..],
        Some(d) => {
            f.flags |= F_DATA;
            match d {
                PageData::Zero => &[][..],
                PageData::Bytes(b) => {
                    f.data_kind = D_BYTES;
                    f.extra = b.len() as u32;
                    b
                }
                PageData::Local => {
                    panic!("PageData::Local must be resolved by the driver before sending")
                }
            }
        }
    };
    write_fixed(&f, out);
    out.extend_from_slice(bytes);
    if let Msg::Holdings { copies, .. } = &env.msg {
        for (page, state, v, t) in copies {
            out.extend_from_slice(&page.to_le_bytes());
            out.push(state_code(*state));
            out.extend_from_slice(&v.0.to_le_bytes());
            out.extend_from_slice(&t.0.to_le_bytes());
        }
    }
}

/// The fixed header of `msg`: every scalar field of it (its page data, if any, is added by
/// the caller).
fn header_of(msg: &Msg) -> Fixed {
    match msg {
        Msg::Hello => Fixed::tag(M_HELLO),
        Msg::Acquire {
            page,
            req,
            want,
            have,
        } => {
            let f = Fixed::page(M_ACQUIRE, page)
                .req(*req)
                .small(want_code(*want));
            match have {
                Some((v, t)) => f.have(*v).txn(*t),
                None => f,
            }
        }
        Msg::Grant {
            page,
            req,
            txn,
            version,
            state,
            data: _,
        } => Fixed::page(M_GRANT, page)
            .req(*req)
            .txn(*txn)
            .version(*version)
            .small(state_code(*state)),
        Msg::GrantAck { page, txn } => Fixed::page(M_GRANT_ACK, page).txn(*txn),
        Msg::Deny { page, req, reason } => Fixed::page(M_DENY, page)
            .req(*req)
            .small(deny_code(*reason)),
        Msg::Fetch { page, txn, then } => Fixed::page(M_FETCH, page)
            .txn(*txn)
            .small(state_code(*then)),
        Msg::FetchReply { page, txn, copy } => {
            let f = Fixed::page(M_FETCH_REPLY, page).txn(*txn);
            match copy {
                Some((v, _)) => f.have(*v),
                None => f,
            }
        }
        Msg::Inval { page, txn } => Fixed::page(M_INVAL, page).txn(*txn),
        Msg::InvalAck { page, txn } => Fixed::page(M_INVAL_ACK, page).txn(*txn),
        Msg::Evict { page } => Fixed::page(M_EVICT, page),
        Msg::Recover { seg } => Fixed::seg(M_RECOVER, *seg),
        Msg::Holdings {
            seg,
            snapshot,
            part,
            parts,
            copies,
        } => Fixed::seg(M_HOLDINGS, *seg)
            .extra(copies.len() as u32)
            .req(ReqId(*snapshot))
            .txn(TxnId((u64::from(*part) << 32) | u64::from(*parts))),
        Msg::SyncReq { seg, req } => Fixed::seg(M_SYNC_REQ, *seg).req(*req),
        Msg::SyncDone {
            seg,
            req,
            failed_pages,
        } => Fixed::seg(M_SYNC_DONE, *seg).req(*req).extra(*failed_pages),
        Msg::ClearPoison { page, req } => Fixed::page(M_CLEAR_POISON, page).req(*req),
        Msg::ClearPoisonDone { page, req } => Fixed::page(M_CLEAR_POISON_DONE, page).req(*req),
    }
}

/// The page data `msg` carries, if any.
fn page_data_of(msg: &Msg) -> Option<&PageData> {
    match msg {
        Msg::Grant { data, .. } => data.as_ref(),
        Msg::FetchReply { copy, .. } => copy.as_ref().map(|(_, d)| d),
        _ => None,
    }
}

fn write_fixed(f: &Fixed, out: &mut Vec<u8>) {
    out.push(f.tag);
    for v in [f.seg, f.page, f.req, f.txn, f.version] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.push(f.small);
    out.push(f.flags);
    out.push(f.data_kind);
    out.extend_from_slice(&f.extra.to_le_bytes());
}

fn read_fixed(c: &mut Cursor<'_>) -> Result<Fixed, PeerFrameError> {
    let tag = c.u8()?;
    let (seg, page, req, txn, version) = (c.u64()?, c.u64()?, c.u64()?, c.u64()?, c.u64()?);
    let (small, flags, data_kind, extra) = (c.u8()?, c.u8()?, c.u8()?, c.u32()?);
    if flags & !(F_HAVE | F_DATA) != 0 {
        return Err(malformed(format!("unknown flags {flags:#x}")));
    }
    Ok(Fixed {
        tag,
        seg,
        page,
        req,
        txn,
        version,
        small,
        flags,
        data_kind,
        extra,
    })
}

/// Read the body of a coherence frame.
pub(super) fn decode_envelope(c: &mut Cursor<'_>) -> Result<Envelope, PeerFrameError> {
    let from = NodeId(c.u32()?);
    let from_epoch = Epoch(c.u64()?);
    let to = NodeId(c.u32()?);
    let to_epoch = Epoch(c.u64()?);
    let f = read_fixed(c)?;
    let msg = msg_of(&f, c)?;
    Ok(Envelope {
        from,
        from_epoch,
        to,
        to_epoch,
        msg,
    })
}

/// The message a fixed header describes, with what follows it in `c`.
fn msg_of(f: &Fixed, c: &mut Cursor<'_>) -> Result<Msg, PeerFrameError> {
    Ok(match f.tag {
        M_HELLO => Msg::Hello,
        M_ACQUIRE => Msg::Acquire {
            page: f.key(),
            req: f.req_id(),
            want: want_of(f.small)?,
            have: f.has(F_HAVE).then_some((Version(f.version), f.txn_id())),
        },
        M_GRANT => Msg::Grant {
            page: f.key(),
            req: f.req_id(),
            txn: f.txn_id(),
            version: Version(f.version),
            state: state_of(f.small)?,
            data: page_data(f, c)?,
        },
        M_GRANT_ACK => Msg::GrantAck {
            page: f.key(),
            txn: f.txn_id(),
        },
        M_DENY => Msg::Deny {
            page: f.key(),
            req: f.req_id(),
            reason: deny_of(f.small)?,
        },
        M_FETCH => Msg::Fetch {
            page: f.key(),
            txn: f.txn_id(),
            then: state_of(f.small)?,
        },
        M_FETCH_REPLY => fetch_reply(f, c)?,
        M_INVAL => Msg::Inval {
            page: f.key(),
            txn: f.txn_id(),
        },
        M_INVAL_ACK => Msg::InvalAck {
            page: f.key(),
            txn: f.txn_id(),
        },
        M_EVICT => Msg::Evict { page: f.key() },
        M_RECOVER => Msg::Recover { seg: f.segment() },
        M_HOLDINGS => holdings(f, c)?,
        M_SYNC_REQ => Msg::SyncReq {
            seg: f.segment(),
            req: f.req_id(),
        },
        M_SYNC_DONE => Msg::SyncDone {
            seg: f.segment(),
            req: f.req_id(),
            failed_pages: f.extra,
        },
        M_CLEAR_POISON => Msg::ClearPoison {
            page: f.key(),
            req: f.req_id(),
        },
        M_CLEAR_POISON_DONE => Msg::ClearPoisonDone {
            page: f.key(),
            req: f.req_id(),
        },
        t => return Err(malformed(format!("unknown coherence message {t}"))),
    })
}

/// The page data after the header, if its flags say there is some.
fn page_data(f: &Fixed, c: &mut Cursor<'_>) -> Result<Option<PageData>, PeerFrameError> {
    if !f.has(F_DATA) {
        return Ok(None);
    }
    match f.data_kind {
        D_ZERO => Ok(Some(PageData::Zero)),
        D_BYTES => {
            let n = f.extra as usize;
            if n > MAX_PAGE_BYTES {
                return Err(malformed(format!("page payload of {n} bytes")));
            }
            Ok(Some(PageData::Bytes(c.take(n)?.to_vec())))
        }
        k => Err(malformed(format!("unknown data kind {k}"))),
    }
}

fn fetch_reply(f: &Fixed, c: &mut Cursor<'_>) -> Result<Msg, PeerFrameError> {
    let d = page_data(f, c)?;
    let copy = if f.has(F_HAVE) {
        Some((
            Version(f.version),
            d.ok_or_else(|| malformed("fetch reply copy without data"))?,
        ))
    } else {
        None
    };
    Ok(Msg::FetchReply {
        page: f.key(),
        txn: f.txn_id(),
        copy,
    })
}

fn holdings(f: &Fixed, c: &mut Cursor<'_>) -> Result<Msg, PeerFrameError> {
    let n = f.extra as usize;
    if n > c.b.len() / HOLDING_BYTES {
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
    let parts = f.txn_id().0;
    Ok(Msg::Holdings {
        seg: f.segment(),
        snapshot: f.req_id().0,
        part: (parts >> 32) as u32,
        parts: parts as u32,
        copies,
    })
}
