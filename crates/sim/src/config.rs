//! What one simulation run looks like: cluster shape, workload size, fault rates.

/// How the lease arithmetic keeps time (`SimConfig::lease_clocks`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LeaseClocks {
    /// One simulated clock; a node takes only echoes of its current incarnation's send times.
    #[default]
    Ideal,
    /// As the daemon's transport keeps them since the restart fix: each node's clock counts from
    /// its (re)start; what a node heard from a peer is forgotten when a newer incarnation of the
    /// peer sends its first heartbeat (the daemon: when it connects); an echo ahead of the
    /// node's own clock (a value of an earlier incarnation) is ignored, and any other is taken
    /// whatever incarnation of the node it came from.
    Daemon,
    /// As the daemon's transport kept them when leases were introduced (commit 10c3e7a): clocks
    /// per process, what a node heard from a peer kept across the peer's restarts, and an echo
    /// ahead of the node's own clock clamped to it. A node that restarted then takes the echo
    /// of its previous incarnation's clock as "heard just now" at every heartbeat it receives:
    /// its lease runs from what it hears, not from what its home heard.
    Clamped,
}

/// Parameters of a run. Every random choice is drawn from the seed; these fix the shape.
#[derive(Clone, Debug, PartialEq)]
pub struct SimConfig {
    /// Nodes in the cluster (at least 3: nodes 0 and 1 are homes, the others may crash).
    pub nodes: usize,
    /// Pages per segment (two segments: a zero-backed one homed on node 0, a file-backed one
    /// homed on node 1). The first two pages of the zero segment only see atomic increments.
    pub pages: u64,
    /// Operations each simulated process issues (two processes per node).
    pub ops_per_process: u32,
    /// Probability that a message is dropped.
    pub drop_rate: f64,
    /// Probability that a message is delivered twice.
    pub dup_rate: f64,
    /// Largest network delay in ms (delays are uniform in 1..=max, so messages reorder).
    pub max_delay_ms: u64,
    /// Per 10 ms tick: probability that a crashable node crashes.
    pub crash_rate: f64,
    /// Per 10 ms tick: probability that a partition starts.
    pub partition_rate: f64,
    /// Largest mapper latency in ms.
    pub max_mapper_ms: u64,
    /// Probability that a mapper read or write fails (while faults are on).
    pub mapper_fail_rate: f64,
    /// Per 10 ms tick: probability of a "declared dead" fault: a node crashes, or is cut off
    /// alone by a partition, for longer than `dead_after_ms`, so that the nodes that cannot
    /// hear it call `Node::peer_dead`. 0 switches membership off entirely (no node is ever
    /// declared dead, and the run draws exactly the random numbers it drew before this fault
    /// existed).
    pub dead_rate: f64,
    /// The dead-peer limit of the core's `Membership`: a node that has heard nothing from a
    /// peer for this long declares it dead, if it reaches a fresh majority of the cluster (the
    /// core's rules, `pagemesh_core::membership`). Keep it above the longest ordinary
    /// partition (1500 ms) for ordinary partitions to stay short ones.
    pub dead_after_ms: u64,
    /// The core's injected membership bug (`MembershipBugs::no_quorum`): nodes on a minority
    /// side of a partition declare the peers they cannot hear dead too, as the daemon did
    /// before it had a quorum rule. Such a node's directory then drops copies that are still in
    /// use: its own view is no longer checked, only what it leaves behind (mapper contents,
    /// write intents) once it has stopped. The checkers must catch it.
    pub minority_declares: bool,
    /// The core's injected membership bug `MembershipBugs::judges_while_cut_off`: a node
    /// judges its peers while a majority does not hear it, as the daemon did before the
    /// cut-off rule. A node fenced during a long partition, hearing a peer that fenced it again
    /// before it learns of its fence, declares a healthy node dead. The checkers must catch it.
    pub cut_off_judges: bool,
    /// A node declared dead while alive stops at the heal only if a node that is up then still
    /// fences it — as in the daemon before it stored its fences, when they lived in memory (the
    /// core's peer epochs, the transport's floor) and were forgotten when the fencing node
    /// restarted. Without this, it stops at the heal whenever it was declared dead during its
    /// incarnation, and a fencing node's transport refuses the fenced incarnation across its own
    /// restarts.
    pub fences_forgotten: bool,
    /// Leases, by the core's `lease::LeaseLink` (`docs/cluster.md` §7): heartbeats (which run
    /// whenever membership does) carry their send time and echo the latest send time heard
    /// from the receiver; a node holds the lease on the pages homed at `H` while `H` provably
    /// heard it within `dead_after_ms / 2`. A process may complete a read or write (local hits
    /// included) only while its node holds the lease of the page's home; otherwise the access
    /// waits. With leases on, reads on nodes declared dead are checked like every other read.
    pub leases: bool,
    /// With `leases`: heartbeats run and the checks count on leases, but processes ignore
    /// them (no access ever waits) — the mistake leases exist to prevent, e.g. reads through
    /// mappings that were not set aside when the lease lapsed. The checkers must catch the
    /// stale reads of a node declared dead.
    pub lease_bypass: bool,
    /// How the lease arithmetic keeps time (leases only).
    pub lease_clocks: LeaseClocks,
    /// Per 10 ms tick: probability that a node goes mute for longer than `dead_after_ms`:
    /// everything it sends is lost (its outbound links fail) while it still hears every peer.
    /// The others declare it dead; it stops when it can send again (it is refused as fenced).
    /// A one-way failure: the case a lease must run from what the home heard, not from what
    /// the node hears. (Taken from the same membership as `dead_rate`.)
    pub mute_rate: f64,
    /// A node that restarts gives the fences it stored back to its core (`Node::fence`), as
    /// the daemon does at start; without this only its transport refuses the fenced
    /// incarnations. Off by default because it fails: `Node::fence` records the floor as the
    /// peer's known incarnation, so the first message of a live incarnation above the floor
    /// (the peer restarted since it was fenced, or was fenced on stale knowledge) counts as a
    /// restart of it, and a rebuilding home then drops that peer from the rebuild and ignores
    /// its holdings: copies granted by the home's previous incarnation are no longer counted
    /// (`--dead 0.003 --fences-in-core`, seed 26: two holders of one page, a stale copy).
    pub fences_in_core: bool,
    /// Events a run may process before it is declared a livelock.
    pub max_steps: u64,
    /// Time allowed after faults stop and partitions heal for everything to complete.
    pub liveness_bound_ms: u64,
    /// Homes crash too (their directory is rebuilt from the nodes and the write intents).
    pub crash_homes: bool,
    /// Switch on the core's injected bug (the checkers must catch it).
    pub inject_bug: bool,
    /// Most copies per `Holdings` message (the daemon: `pagemesh_core::HOLDINGS_PER_MESSAGE`,
    /// 1 Mi): small, so that every rebuild takes reports in several parts.
    pub holdings_per_message: usize,
    /// The core's injected bug `InjectedBugs::first_holdings_part_only`: a rebuilding home
    /// takes a node's first part of its holdings for all of them. The checkers must catch it.
    pub holdings_first_part_only: bool,
    /// Record a readable trace (used to replay a failing seed).
    pub trace: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            nodes: 4,
            pages: 6,
            ops_per_process: 40,
            drop_rate: 0.05,
            dup_rate: 0.03,
            max_delay_ms: 20,
            crash_rate: 0.004,
            partition_rate: 0.004,
            max_mapper_ms: 15,
            mapper_fail_rate: 0.005,
            dead_rate: 0.0,
            dead_after_ms: 1600,
            minority_declares: false,
            cut_off_judges: false,
            fences_forgotten: false,
            leases: false,
            lease_bypass: false,
            lease_clocks: LeaseClocks::Ideal,
            mute_rate: 0.0,
            fences_in_core: false,
            liveness_bound_ms: 20_000,
            max_steps: 5_000_000,
            crash_homes: true,
            inject_bug: false,
            holdings_per_message: 2,
            holdings_first_part_only: false,
            trace: false,
        }
    }
}
