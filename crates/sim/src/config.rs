//! What one simulation run looks like: cluster shape, workload size, fault rates.

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
    /// Events a run may process before it is declared a livelock.
    pub max_steps: u64,
    /// Time allowed after faults stop and partitions heal for everything to complete.
    pub liveness_bound_ms: u64,
    /// Homes crash too (their directory is rebuilt from the nodes and the write intents).
    pub crash_homes: bool,
    /// Switch on the core's injected bug (the checkers must catch it).
    pub inject_bug: bool,
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
            liveness_bound_ms: 20_000,
            max_steps: 5_000_000,
            crash_homes: true,
            inject_bug: false,
            trace: false,
        }
    }
}
