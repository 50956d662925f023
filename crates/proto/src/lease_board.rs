//! The lease board: a small shared-memory table a cluster node publishes to its clients, so a
//! process stops using its copies of a home's pages when the node's lease on that home ends,
//! even if the daemon is stopped or stalled then (docs/cluster.md, "Leases where the data is
//! read").
//!
//! A sealed memfd of 64-bit words, written only by the daemon (clients get it read-only with
//! an attachment of a cluster segment homed elsewhere, and the slot of that home):
//!
//! | word | meaning |
//! |---|---|
//! | [`VERSION_WORD`] | [`LEASE_BOARD_VERSION`] |
//! | [`ALIVE_WORD`] | `CLOCK_MONOTONIC` ns of the engine's last tick (it ticks every 25 ms) |
//! | [`FAULT_TIMEOUT_WORD`] | the node's fault timeout, ms |
//! | [`LEASE_WORD`] | the lease, ms (half the dead-peer limit) |
//! | [`FIRST_SLOT`] + slot | `CLOCK_MONOTONIC` ns until which the lease on that home holds (0: none) |
//!
//! A published deadline is never later than the lease's real end: it is computed from the last
//! send time the home echoed, not from when it was published.

/// The board's format version (word [`VERSION_WORD`]).
pub const LEASE_BOARD_VERSION: u64 = 1;
/// Word index of the format version.
pub const VERSION_WORD: usize = 0;
/// Word index of the engine's last tick.
pub const ALIVE_WORD: usize = 1;
/// Word index of the fault timeout.
pub const FAULT_TIMEOUT_WORD: usize = 2;
/// Word index of the lease length.
pub const LEASE_WORD: usize = 3;
/// Word index of slot 0.
pub const FIRST_SLOT: usize = 8;

/// The board's length in bytes for `slots` homes (whole pages).
pub const fn board_bytes(slots: usize) -> usize {
    (FIRST_SLOT + slots).div_ceil(512) * 4096
}
