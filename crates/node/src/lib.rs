//! One machine's segments: each segment's page cache (a memfd), its page table, the serving of
//! every page fault of the processes that attach it (through `pagemesh_uffd::fault`), sync and
//! segment I/O, the node's memory pool (partitions, the evictor, paging, pinning) and volumes
//! (read-only images whose frames every process shares).
//!
//! This layer knows nothing of clusters: a cluster segment's faults, attachments and
//! evictions go to whatever implements [`segment::ClusterPages`] (the daemon's cluster engine).

#![forbid(unsafe_code)]

pub mod evict;
mod fault;
pub mod histogram;
pub mod load;
pub mod memory;
pub mod pages;
pub mod residency;
pub mod runs;
pub mod segment;
pub mod vm;
pub mod volume;
pub mod workers;
