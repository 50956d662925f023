//! pagemesh's only crate with `unsafe` kernel code: userfaultfd, memfd, shared mappings, fd
//! passing and SIGBUS reporting, behind a safe typed API.
//!
//! Constants and structs come from `linux-raw-sys`; the few ioctl numbers it lacks are checked at
//! compile time against their `_IOC` encoding (see `sys`).

#![deny(unsafe_op_in_unsafe_fn)]

pub mod clock;
pub mod fault;
pub mod fdpass;
pub mod fileio;
pub mod memfd;
pub mod pagemap;
pub mod pidfd;
pub mod poll;
pub mod process;
pub mod sigbus;
mod sys;
pub mod uffd;

pub use fault::{Access, Bounds, Fault, FaultReader, Incoming, Source, Unservable};
pub use memfd::{Memfd, ReadOnlyMapping, SharedMapping};
pub use pagemap::{Pagemap, Rearm, ScanError};
pub use pidfd::{PidFd, Signal, Stopped};
pub use uffd::{
    features, Event, FaultKind, Layout, OpenMode, Probe, Protect, RegisterMode, Uffd, UffdError,
    Wake,
};

/// The page size pagemesh is built for; checked against the running kernel by [`check_page_size`].
pub const PAGE_SIZE: usize = 4096;

/// Fails if the kernel's page size is not [`PAGE_SIZE`].
pub fn check_page_size() -> std::io::Result<()> {
    // SAFETY: sysconf takes an integer and has no memory effects.
    let ps = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if ps != PAGE_SIZE as libc::c_long {
        return Err(std::io::Error::other(format!(
            "this kernel's page size is {ps} bytes; pagemesh supports only {PAGE_SIZE}"
        )));
    }
    Ok(())
}
