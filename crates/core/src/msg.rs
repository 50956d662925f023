//! Messages between nodes. Every message travels in an [`Envelope`] that names both incarnations,
//! so a message from or to an earlier incarnation of a node is recognised and dropped.

use crate::ids::{CacheState, Epoch, PageData, PageKey, ReqId, TxnId, Version, Want};
use pagemesh_types::{NodeId, SegmentId};
use std::fmt;

/// A message with its addressing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Envelope {
    /// Sender.
    pub from: NodeId,
    /// Sender's incarnation.
    pub from_epoch: Epoch,
    /// Receiver.
    pub to: NodeId,
    /// The receiver's incarnation as the sender knows it (`Epoch(0)`: not known yet; accepted).
    pub to_epoch: Epoch,
    /// The message.
    pub msg: Msg,
}

/// Why the home refused a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyReason {
    /// The page is poisoned: its only valid copy was lost.
    Poisoned,
    /// The mapper failed to read the page (the page is not poisoned; a retry may work).
    MapperFailed,
}

/// The protocol's messages. Requests go node -> home; the home drives every transfer and
/// retransmits until it has an answer, so replies are idempotent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Msg {
    /// "This is my current epoch." Sent at start and in answer to a message for an older
    /// incarnation.
    Hello,
    /// node -> home: resolve a fault. `have` names the copy the node holds (its version and the
    /// transaction that granted it), if any, so an upgrade needs no data.
    Acquire {
        /// Page.
        page: PageKey,
        /// Request id (retransmissions reuse it).
        req: ReqId,
        /// Access wanted.
        want: Want,
        /// The node's copy, if it holds one.
        have: Option<(Version, TxnId)>,
    },
    /// home -> node: the answer to `Acquire`. `data: None` means "keep your copy".
    Grant {
        /// Page.
        page: PageKey,
        /// The request answered.
        req: ReqId,
        /// The transaction (the node records it with its copy).
        txn: TxnId,
        /// Version of the copy.
        version: Version,
        /// State to install in.
        state: CacheState,
        /// Contents, unless the node already holds this version.
        data: Option<PageData>,
    },
    /// node -> home: the grant is installed.
    GrantAck {
        /// Page.
        page: PageKey,
        /// The transaction.
        txn: TxnId,
    },
    /// home -> node: the request cannot be served.
    Deny {
        /// Page.
        page: PageKey,
        /// The request refused.
        req: ReqId,
        /// Why.
        reason: DenyReason,
    },
    /// home -> holder: send me your copy, then hold it in state `then`
    /// (`Shared` or `ExclusiveClean`).
    Fetch {
        /// Page.
        page: PageKey,
        /// The transaction.
        txn: TxnId,
        /// State the holder keeps afterwards.
        then: CacheState,
    },
    /// holder -> home: the copy (`None`: I hold none).
    FetchReply {
        /// Page.
        page: PageKey,
        /// The transaction.
        txn: TxnId,
        /// Version and contents.
        copy: Option<(Version, PageData)>,
    },
    /// home -> holder: drop your copy.
    Inval {
        /// Page.
        page: PageKey,
        /// The transaction.
        txn: TxnId,
    },
    /// holder -> home: I hold no copy any more.
    InvalAck {
        /// Page.
        page: PageKey,
        /// The transaction.
        txn: TxnId,
    },
    /// node -> home: take my copy back (the home writes it to the mapper first if it is the
    /// last copy of unsynced data, then invalidates it).
    Evict {
        /// Page.
        page: PageKey,
    },
    /// home -> node: this home restarted; tell me what you hold of `seg`.
    Recover {
        /// Segment.
        seg: SegmentId,
    },
    /// node -> home: the copies of `seg` this node holds: page, state, version, grant; in
    /// `parts` messages when there are many (`NodeConfig::holdings_per_message` each), all of
    /// one answer to `Recover` sharing its `snapshot` (parts of two answers never mix).
    Holdings {
        /// Segment.
        seg: SegmentId,
        /// Which answer of this node's these parts belong to.
        snapshot: u64,
        /// This part, from 0.
        part: u32,
        /// How many parts this answer has.
        parts: u32,
        /// The copies.
        copies: Vec<(u64, CacheState, Version, TxnId)>,
    },
    /// node -> home: make every write to the segment that completed so far durable.
    SyncReq {
        /// Segment.
        seg: SegmentId,
        /// Request id.
        req: ReqId,
    },
    /// home -> node: the sync ended (`failed_pages == 0`: all durable).
    SyncDone {
        /// Segment.
        seg: SegmentId,
        /// The request answered.
        req: ReqId,
        /// Pages that could not be written.
        failed_pages: u32,
    },
    /// node -> home: restore a poisoned page from the mapper.
    ClearPoison {
        /// Page.
        page: PageKey,
        /// Request id.
        req: ReqId,
    },
    /// home -> node: the page is no longer poisoned.
    ClearPoisonDone {
        /// Page.
        page: PageKey,
        /// The request answered.
        req: ReqId,
    },
}

impl Msg {
    /// The page this message is about, if it is about one page.
    pub fn page(&self) -> Option<PageKey> {
        match self {
            Msg::Acquire { page, .. }
            | Msg::Grant { page, .. }
            | Msg::GrantAck { page, .. }
            | Msg::Deny { page, .. }
            | Msg::Fetch { page, .. }
            | Msg::FetchReply { page, .. }
            | Msg::Inval { page, .. }
            | Msg::InvalAck { page, .. }
            | Msg::Evict { page }
            | Msg::ClearPoison { page, .. }
            | Msg::ClearPoisonDone { page, .. } => Some(*page),
            Msg::Hello
            | Msg::SyncReq { .. }
            | Msg::SyncDone { .. }
            | Msg::Recover { .. }
            | Msg::Holdings { .. } => None,
        }
    }

    /// Whether the message carries page contents (lost if the sender crashes first).
    pub fn carries_data(&self) -> bool {
        matches!(
            self,
            Msg::FetchReply { copy: Some(_), .. } | Msg::Grant { data: Some(_), .. }
        )
    }
}

fn data_str(d: &PageData) -> String {
    match d {
        PageData::Zero => "zero".into(),
        PageData::Local => "local".into(),
        PageData::Bytes(b) if b.len() == 8 => {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            format!("{}", u64::from_le_bytes(a))
        }
        PageData::Bytes(b) => format!("{} bytes", b.len()),
    }
}

impl fmt::Display for Msg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Msg::Hello => write!(f, "Hello"),
            Msg::Acquire {
                page,
                req,
                want,
                have,
            } => write!(f, "Acquire {page} req{} {want:?} have={have:?}", req.0),
            Msg::Grant {
                page,
                req,
                txn,
                version,
                state,
                data,
            } => write!(
                f,
                "Grant {page} req{} txn{} v{} {state:?} data={}",
                req.0,
                txn.0,
                version.0,
                data.as_ref().map_or("keep".into(), data_str)
            ),
            Msg::GrantAck { page, txn } => write!(f, "GrantAck {page} txn{}", txn.0),
            Msg::Deny { page, req, reason } => write!(f, "Deny {page} req{} {reason:?}", req.0),
            Msg::Fetch { page, txn, then } => write!(f, "Fetch {page} txn{} then={then:?}", txn.0),
            Msg::FetchReply { page, txn, copy } => match copy {
                Some((v, d)) => {
                    write!(f, "FetchReply {page} txn{} v{} {}", txn.0, v.0, data_str(d))
                }
                None => write!(f, "FetchReply {page} txn{} none", txn.0),
            },
            Msg::Inval { page, txn } => write!(f, "Inval {page} txn{}", txn.0),
            Msg::InvalAck { page, txn } => write!(f, "InvalAck {page} txn{}", txn.0),
            Msg::Evict { page } => write!(f, "Evict {page}"),
            Msg::Recover { seg } => write!(f, "Recover {seg}"),
            Msg::Holdings {
                seg,
                snapshot,
                part,
                parts,
                copies,
            } => write!(
                f,
                "Holdings {seg} #{snapshot} part {part}/{parts} {copies:?}"
            ),
            Msg::SyncReq { seg, req } => write!(f, "SyncReq {seg} req{}", req.0),
            Msg::SyncDone {
                seg,
                req,
                failed_pages,
            } => write!(f, "SyncDone {seg} req{} failed={failed_pages}", req.0),
            Msg::ClearPoison { page, req } => write!(f, "ClearPoison {page} req{}", req.0),
            Msg::ClearPoisonDone { page, req } => write!(f, "ClearPoisonDone {page} req{}", req.0),
        }
    }
}

impl fmt::Display for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}@{} -> {}@{}: {}",
            self.from, self.from_epoch.0, self.to, self.to_epoch.0, self.msg
        )
    }
}
