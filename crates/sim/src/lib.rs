//! Deterministic simulation of the pagemesh coherence protocol.
//!
//! One seed drives a cluster of [`pagemesh_core::Node`]s over a simulated network that delays,
//! reorders, duplicates and drops messages, partitions nodes and crashes them; a workload of
//! reads, writes, atomic increments, syncs and evictions runs on every node; checkers assert the
//! invariants after every event. A failing seed replays exactly. With `SimConfig::dead_rate`,
//! cluster membership declares nodes that stay silent too long dead (`Node::peer_dead`), and a
//! node declared dead while only cut off stops when the partition heals. With
//! `SimConfig::leases`, nodes exchange the daemon's heartbeats and use their copies only under
//! the lease of the pages' homes; reads on nodes declared dead are then checked too.
//! `SimConfig::mute_rate` adds a one-way failure (a node hears everyone, nobody hears it).
//!
//! [`ControlWorld`] simulates the control plane the same way: the core's lock table, lock
//! client and two-phase removal on every node, over connections that break and nodes that
//! crash, with checkers of their own (`control` module).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod checks;
mod config;
mod control;
mod fencing;
mod liveness;
mod model;
mod net;
mod queue;
mod rng;
mod run;
mod storage;
mod workload;
mod world;

pub use config::{LeaseClocks, SimConfig};
pub use control::{
    run_control_seeds, ControlConfig, ControlOutcome, ControlStats, ControlViolation, ControlWorld,
};
pub use model::{Model, PageModel};
pub use rng::Rng;
pub use run::{run_seed, run_seeds, Failure, SeedsOutcome};
pub use world::{Stats, Violation, World};
