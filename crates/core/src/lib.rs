//! The coherence protocol of pagemesh as pure state machines (see `docs/protocol.md`).
//!
//! Each node runs one [`Node`]: its page cache, plus the directory of every segment it is home
//! of; one [`Membership`] (which peers it declares dead); and one [`lease::LeaseLink`] per
//! peer (whether it may use its copies of that peer's pages); one [`LockTable`] (the barriers and
//! locks of the segments it is home of); one [`Removals`] (two-phase removal, as home and as
//! node). Nothing here does I/O, reads a clock, spawns a thread or draws a random number: the
//! driver (the daemon with real sockets and userfaultfds, or the simulator with a seeded network)
//! feeds inputs and executes the [`Output`]s.
//!
//! ```
//! use pagemesh_core::*;
//! use pagemesh_types::{NodeId, SegmentId};
//!
//! let seg = SegmentInfo { id: SegmentId(1), home: NodeId(0), pages: 16, backing: Backing::Zero };
//! let mut n = Node::new(NodeConfig::new(NodeId(0), Epoch(1), vec![NodeId(0)]), &[seg]);
//! n.start(0);
//! n.fault(0, FaultId(1), PageKey::new(SegmentId(1), 3), Access::Write);
//! // The home is local: the Acquire goes to ourselves; deliver it.
//! let out = n.take_outputs();
//! assert!(matches!(out[0], Output::Send(_)));
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod cache;
mod config;
mod coverage;
mod directory;
mod home;
mod ids;
mod io;
pub mod lease;
mod lock_client;
mod locks;
mod membership;
mod msg;
mod node;
mod output;
mod plan;
pub mod pool;
mod rebuild;
mod recovery;
mod removal;

pub use cache::{CopyInfo, EvictStart};
pub use config::{Backing, InjectedBugs, NodeConfig, SegmentInfo, Timing, HOLDINGS_PER_MESSAGE};
pub use coverage::{Branch, Coverage};
pub use directory::DirView;
pub use ids::{
    Access, CacheState, CallId, CallResult, Epoch, FaultId, FaultResult, MapperError, MapperToken,
    PageData, PageKey, ReqId, TxnId, Version, Want,
};
pub use lock_client::{LockClient, LockWant};
pub use locks::{Claim, LockBugs, LockOutput, LockTable, Refusal, Waiter};
pub use membership::{Membership, MembershipBugs, MembershipConfig, PeerSilence, Verdict};
pub use msg::{DenyReason, Envelope, Msg};
pub use node::Node;
pub use output::{Event, Output};
pub use removal::{
    RemovalBugs, RemovalConfig, RemovalError, RemovalMsg, RemovalOutput, RemovalStart, Removals,
};
