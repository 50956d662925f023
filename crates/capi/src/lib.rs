//! `libpagemesh`: the C ABI over the pagemesh client library (`crates/client`).
//!
//! The header `include/pagemesh.h` is generated from this crate by cbindgen (`cbindgen.toml`;
//! `tests/header.rs` fails when the committed header is stale and says how to regenerate it).
//! How to build, install and link it is `docs/c-api.md`.
//!
//! The rules every entry point keeps:
//!
//! - it returns a status (`PAGEMESH_OK`, or a negative `pagemesh_status`), except the few that
//!   return a value whose error value cannot be a real one (`pagemesh_length` 0,
//!   `pagemesh_base` NULL), and `pagemesh_last_error`/`pagemesh_strerror`;
//! - on failure it leaves a message for `pagemesh_last_error()` on the calling thread, and on
//!   success clears it;
//! - every pointer argument is checked: NULL gives `PAGEMESH_ERR_NULL`, never a crash;
//! - no panic crosses the boundary: a panic inside becomes `PAGEMESH_ERR_INTERNAL`
//!   ([`guard::call`]).
//!
//! Attaching at a fixed address is not offered yet: the client library maps a segment where
//! the kernel chooses (see docs/c-api.md, "Not yet").

#![deny(unsafe_op_in_unsafe_fn)]
// The C names (`pagemesh_client`, `pagemesh_stat`) are the ABI.
#![allow(non_camel_case_types)]

mod args;
mod client;
mod guard;
mod mapping;
mod status;

pub use client::{
    pagemesh_barrier, pagemesh_client, pagemesh_connect, pagemesh_create, pagemesh_disconnect,
    pagemesh_lock, pagemesh_pin, pagemesh_remove, pagemesh_segment_read, pagemesh_segment_stat,
    pagemesh_segment_write, pagemesh_stat, pagemesh_sync, pagemesh_unlock, pagemesh_unpin,
};
pub use guard::pagemesh_last_error;
pub use mapping::{
    pagemesh_attach, pagemesh_base, pagemesh_detach, pagemesh_length, pagemesh_mapping,
    pagemesh_read_at, pagemesh_write_at,
};
pub use status::{pagemesh_backing, pagemesh_status, pagemesh_strerror};

// The header promises that handles may be used from several threads at once.
const _: fn() = || {
    fn shared_between_threads<T: Send + Sync>() {}
    shared_between_threads::<pagemesh_client>();
    shared_between_threads::<pagemesh_mapping>();
};
