//! Configuration of one node's core.

use crate::ids::Epoch;
use pagemesh_types::{NodeId, SegmentId};

/// Timers of the protocol, in milliseconds of the driver's clock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timing {
    /// Resend an unanswered message after this long.
    pub retry_ms: u64,
    /// Give up on a local fault or call after this long (it ends in SIGBUS / an error; the
    /// protocol request itself stays alive so the directory stays consistent).
    pub fault_timeout_ms: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            retry_ms: 50,
            fault_timeout_ms: 30_000,
        }
    }
}

/// What backs a segment, as far as the protocol cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backing {
    /// Anonymous memory: a page never written is dormant and reads as zero with no I/O.
    Zero,
    /// A mapper with initial contents (a file): a page never written is read from it.
    Mapper,
}

/// A segment this node takes part in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// Its id.
    pub id: SegmentId,
    /// The node that runs its directory.
    pub home: NodeId,
    /// Its size in pages.
    pub pages: u64,
    /// What backs it.
    pub backing: Backing,
}

/// Protocol bugs that can be switched on to prove the simulator's checkers catch them.
/// Everything is off by default; only tests set these.
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InjectedBugs {
    /// The home grants write permission while one invalidation ack is still outstanding.
    pub skip_one_inval_ack: bool,
    /// A rebuilding home takes a node's first part of its holdings for all of them.
    pub first_holdings_part_only: bool,
}

/// Most copies one `Holdings` message reports: 1 Mi entries of 25 bytes on the wire (26 MiB),
/// well within a 64 MiB peer frame. A node holding more of one segment reports them in parts.
pub const HOLDINGS_PER_MESSAGE: usize = 1 << 20;

/// Configuration of a [`crate::Node`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node.
    pub id: NodeId,
    /// This incarnation; must grow across restarts (the driver persists it). 1 is the first
    /// start of a fresh cluster; a larger epoch makes the node rebuild the directory of every
    /// segment it is home of (see `docs/protocol.md`).
    pub epoch: Epoch,
    /// Every node of the cluster, this one included.
    pub peers: Vec<NodeId>,
    /// Timers.
    pub timing: Timing,
    /// Maximum queued requests per page at the home, and in-flight calls per node.
    pub max_queue: usize,
    /// Most copies per `Holdings` message ([`HOLDINGS_PER_MESSAGE`]; tests lower it).
    pub holdings_per_message: usize,
    /// Test-only protocol bugs; leave at the default.
    #[doc(hidden)]
    pub bugs: InjectedBugs,
}

impl NodeConfig {
    /// A configuration with default timers.
    pub fn new(id: NodeId, epoch: Epoch, peers: Vec<NodeId>) -> NodeConfig {
        NodeConfig {
            id,
            epoch,
            peers,
            timing: Timing::default(),
            max_queue: 256,
            holdings_per_message: HOLDINGS_PER_MESSAGE,
            bugs: InjectedBugs::default(),
        }
    }
}
