//! What the core asks its driver to do. The driver executes outputs in order: an output may
//! depend on the ones before it (a `Downgrade` precedes the `Send` that reads the page).

use crate::ids::{CallId, CallResult, FaultId, FaultResult, MapperToken, PageData, PageKey};
use crate::msg::Envelope;
use pagemesh_types::{NodeId, SegmentId};

/// One thing for the driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send a message (resolve [`PageData::Local`] in it from the local cache first).
    Send(Envelope),
    /// Put the page into the local cache, read-only unless `writable`.
    /// (`UFFDIO_COPY`/`UFFDIO_ZEROPAGE`, with `MODE_WP` when read-only.)
    Install {
        /// Page.
        page: PageKey,
        /// Contents.
        data: PageData,
        /// Whether clients may write it.
        writable: bool,
    },
    /// Make an installed page writable, keeping its contents (upgrade without data).
    Unprotect {
        /// Page.
        page: PageKey,
    },
    /// Make an installed page read-only in every local mapping (before it is read for a send).
    Downgrade {
        /// Page.
        page: PageKey,
    },
    /// Drop the local copy (`fallocate(PUNCH_HOLE)`).
    Invalidate {
        /// Page.
        page: PageKey,
    },
    /// Read the page from the segment's mapper; answer with `Node::mapper_read_done`.
    MapperRead {
        /// Matches the completion.
        token: MapperToken,
        /// Page.
        page: PageKey,
    },
    /// Write the page to the mapper durably; answer with `Node::mapper_write_done`.
    MapperWrite {
        /// Matches the completion.
        token: MapperToken,
        /// Page.
        page: PageKey,
        /// Contents (always `Bytes` or `Zero`).
        data: PageData,
    },
    /// Durably record (`dirty`) or clear the write intent of a page: "versions newer than the
    /// mapper's may exist". Answer with `Node::intent_write_done`.
    IntentWrite {
        /// Matches the completion.
        token: MapperToken,
        /// Page.
        page: PageKey,
        /// Set (true) or clear (false).
        dirty: bool,
    },
    /// Read the durable write intents of a segment (its home restarted). Answer with
    /// `Node::intents_read_done`.
    IntentRead {
        /// Matches the completion.
        token: MapperToken,
        /// Segment.
        seg: SegmentId,
    },
    /// A local fault is resolved.
    FaultDone {
        /// The fault.
        fault: FaultId,
        /// Page.
        page: PageKey,
        /// How it ended.
        result: FaultResult,
    },
    /// A sync or clear-poison call ended.
    CallDone {
        /// The call.
        call: CallId,
        /// How it ended.
        result: CallResult,
    },
    /// Something worth logging or counting happened.
    Event(Event),
}

/// Notable protocol events, for logs, statistics and checkers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The home marked a page poisoned: its only valid copy was lost.
    PagePoisoned {
        /// Page.
        page: PageKey,
        /// The node whose loss caused it, if one did.
        lost_with: Option<NodeId>,
    },
    /// A restarted home rebuilt the directory of a segment from what the nodes hold.
    Recovered {
        /// Segment.
        seg: SegmentId,
        /// Pages poisoned because a write intent was recorded and no copy survived.
        poisoned: u32,
    },
    /// The home restored a poisoned page from the mapper.
    PoisonCleared {
        /// Page.
        page: PageKey,
    },
    /// A peer came back with a new epoch; what it held was dropped.
    PeerRestarted {
        /// The peer.
        peer: NodeId,
    },
    /// A mapper read or write failed.
    MapperFailed {
        /// Page.
        page: PageKey,
        /// Whether it was a write.
        write: bool,
        /// The mapper's error.
        error: String,
    },
    /// A message broke a protocol rule (a bug or a lying peer); it was ignored.
    ProtocolError {
        /// What was wrong.
        what: String,
    },
}
