//! Frames on a VM's lease (the connection `AttachVm` arrived on, after `VmAttached`): the
//! working-set replay and record of `pagemesh vm serve --replay/--record`.
//!
//! `vm serve` may send [`VmLeaseRequest::Replay`] once, right after the attach, and
//! [`VmLeaseRequest::TakeRecord`] any number of times (the daemon answers each with
//! [`VmLeaseReply::Recorded`]); nothing else is ever sent on a lease, and the daemon sends
//! nothing unasked. Any other frame, or the close, ends the lease. Pages are image pages
//! (4 KiB blocks of the snapshot's memory file, counted from its start).

use serde::{Deserialize, Serialize};

/// Most pages of a working set, recorded or replayed (1 GiB of guest memory; 2 MiB a frame).
pub const MAX_WORKING_SET_PAGES: usize = 262_144;

/// `vm serve` -> daemon, on a VM's lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmLeaseRequest {
    /// Push these image pages into the guest's memory, in this order, ahead of its own faults
    /// (at most `MAX_WORKING_SET_PAGES`; a longer list is refused whole).
    Replay { pages: Vec<u64> },
    /// Send the pages the guest's faults brought in so far.
    TakeRecord,
}

/// Daemon -> `vm serve`, on a VM's lease: only ever an answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmLeaseReply {
    /// The image pages the guest's faults brought in, in the order they came, each once (at
    /// most `MAX_WORKING_SET_PAGES`); `dropped` more came past that bound and were not kept.
    Recorded { pages: Vec<u64>, dropped: u64 },
}
