//! The fault runtime every daemon path shares: one way to read faults, one way to install
//! pages, one way to answer a fault that cannot be served, and one fault-around.
//!
//! - [`FaultReader`] reads a batch of messages from a uffd, lets the caller re-arm it at once
//!   (so another thread can take the next batch), and decodes each message into a typed
//!   [`Fault`] within the attachment's [`Bounds`] (or a stray fault outside them, or an event).
//! - [`install`] maps a run of pages from a buffer ([`Source::Bytes`], COPY), as zeros
//!   ([`Source::Zeros`]) or from the page cache ([`Source::PageCache`], CONTINUE), read-only or
//!   writable, waking the faulting threads or not; a run that meets a page already mapped
//!   installs what came before it.
//! - [`resolve_present`] answers a fault on a page that is in the page cache.
//! - [`answer_unservable`] decides how a fault that cannot be served ends: POISON (SIGBUS at the
//!   address) where no page is mapped, and where a valid read-only copy is mapped (a
//!   write-protect fault), which POISON cannot replace, [`Unservable::Revoke`]: the caller must
//!   close that attachment so the client's watchdog revokes the whole mapping.
//! - [`around`] finds the runs of present pages on both sides of a fault.

use std::ops::Range;

use crate::uffd::{Event, FaultKind, Layout, Protect, Uffd, UffdError, Wake};
use crate::PAGE_SIZE;

const PS: u64 = PAGE_SIZE as u64;

/// Whether the faulting access reads or writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// One page fault, decoded and checked against the attachment's bounds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    /// The page-aligned faulting address, in the faulting process.
    pub addr: u64,
    /// The page's index within the attachment (`(addr - base) / PAGE_SIZE`).
    pub page: u64,
    pub kind: FaultKind,
    /// `Write` for a write access, and always for a write-protect fault.
    pub access: Access,
}

/// The registered range of one attachment: faults outside it are stray.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    pub base: u64,
    pub len: u64,
}

impl Bounds {
    fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr - self.base < self.len
    }
}

/// What one message of a batch turned out to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A fault inside the bounds.
    Fault(Fault),
    /// A fault outside the bounds (the kernel or the client is confused): the caller answers
    /// it with [`answer_unservable`]; `fault.page` is meaningless.
    Stray(Fault),
    /// A change of the registered address space (remove, unmap, remap): only a uffd opened
    /// with those events enabled reports them (a VMM's, see the node's `vm` module).
    Layout(Layout),
    /// Another non-fault event (fork), which pagemesh does not enable.
    Other { event: u8 },
}

/// Reads batches of fault messages into a buffer it reuses (the fault path allocates nothing).
#[derive(Debug)]
pub struct FaultReader {
    events: Vec<Event>,
    incoming: Vec<Incoming>,
    max: usize,
}

impl FaultReader {
    /// A reader that takes at most `max` messages per batch (1 to 64).
    pub fn new(max: usize) -> FaultReader {
        assert!((1..=64).contains(&max), "a batch of {max} messages");
        FaultReader {
            events: Vec::with_capacity(max),
            incoming: Vec::with_capacity(max),
            max,
        }
    }

    /// Read the pending messages of `uffd` (none pending: an empty batch), call `rearm` right
    /// after the read whatever its outcome, and decode the batch against `bounds`.
    pub fn read(
        &mut self,
        uffd: &Uffd,
        bounds: Bounds,
        rearm: impl FnOnce(),
    ) -> Result<&[Incoming], UffdError> {
        self.events.clear();
        self.incoming.clear();
        let read = uffd.read_events(&mut self.events, self.max);
        rearm();
        read?;
        debug_assert!(self.events.len() <= self.max);
        self.incoming
            .extend(self.events.iter().map(|ev| decode(*ev, bounds)));
        Ok(&self.incoming)
    }
}

/// Type one message against the bounds of its attachment.
pub fn decode(ev: Event, bounds: Bounds) -> Incoming {
    match ev {
        Event::PageFault {
            address,
            kind,
            write,
            ..
        } => {
            let addr = address & !(PS - 1);
            let access = if write || kind == FaultKind::WriteProtect {
                Access::Write
            } else {
                Access::Read
            };
            if !bounds.contains(addr) {
                return Incoming::Stray(Fault {
                    addr,
                    page: 0,
                    kind,
                    access,
                });
            }
            Incoming::Fault(Fault {
                addr,
                page: (addr - bounds.base) / PS,
                kind,
                access,
            })
        }
        Event::Layout(l) => Incoming::Layout(l),
        Event::Other { event } => Incoming::Other { event },
    }
}

/// Where the bytes of an installed run come from.
#[derive(Clone, Copy, Debug)]
pub enum Source<'a> {
    /// A copy of these bytes (UFFDIO_COPY); the run is `bytes.len()` long.
    Bytes(&'a [u8]),
    /// Zero pages (UFFDIO_ZEROPAGE where writable; a COPY of zeros where read-only, which
    /// ZEROPAGE cannot map).
    Zeros,
    /// The pages already in the page cache of the mapped file (UFFDIO_CONTINUE).
    PageCache,
}

/// A read-only run of zeros is copied in chunks of this size.
const ZERO_CHUNK_BYTES: usize = 16 * PAGE_SIZE;
static ZEROS: [u8; ZERO_CHUNK_BYTES] = [0; ZERO_CHUNK_BYTES];

/// Install the run `[addr, addr + len)` (page-aligned; `len` is ignored for
/// [`Source::Bytes`], whose length is the run's) and return the bytes installed from its start.
/// A run that reaches a page already mapped in this process installs (and wakes, with
/// [`Wake::Yes`]) what came before it; if the very first page was mapped already, nothing is
/// installed (0), and with [`Wake::Yes`] the threads waiting on that first page are woken, since
/// the kernel's EEXIST does not wake them.
pub fn install(
    uffd: &Uffd,
    addr: u64,
    len: u64,
    source: Source<'_>,
    protect: Protect,
    wake: Wake,
) -> Result<u64, UffdError> {
    debug_assert_eq!(addr % PS, 0, "install at {addr:#x}: not page-aligned");
    let done = match source {
        Source::Bytes(b) => {
            debug_assert_eq!(b.len() as u64 % PS, 0);
            uffd.copy_run(addr, b, protect, wake)?
        }
        Source::PageCache => uffd.continue_run(addr, len, protect, wake)?,
        Source::Zeros if protect == Protect::Writable => uffd.zeropage_run(addr, len, wake)?,
        Source::Zeros => {
            let mut done = 0;
            while done < len {
                let n = (len - done).min(ZERO_CHUNK_BYTES as u64);
                let got = uffd.copy_run(addr + done, &ZEROS[..n as usize], protect, wake)?;
                done += got;
                if got < n {
                    break;
                }
            }
            done
        }
    };
    if done == 0 && wake == Wake::Yes {
        uffd.wake(addr, PS)?;
    }
    Ok(done)
}

/// Answer a fault on a page that is in the page cache and valid here: a write-protect fault
/// is un-protected (`Protect::Writable`) or only woken (the copy stays read-only, and the
/// thread's retry is served again); a missing or minor fault maps the page with `protect`. A
/// racing thread of the same process may have mapped it first: its protection is then loosened
/// to `Writable` where asked, and the thread woken.
pub fn resolve_present(uffd: &Uffd, fault: &Fault, protect: Protect) -> Result<(), UffdError> {
    let loosen = || match protect {
        Protect::Writable => uffd.write_protect(fault.addr, PS, Protect::Writable, Wake::Yes),
        Protect::ReadOnly => uffd.wake(fault.addr, PS),
    };
    match fault.kind {
        FaultKind::WriteProtect => loosen(),
        FaultKind::Missing | FaultKind::Minor => {
            // One ioctl on the common path: CONTINUE, which wakes.
            match install(uffd, fault.addr, PS, Source::PageCache, protect, Wake::Yes)? {
                0 if protect == Protect::Writable => loosen(),
                _ => Ok(()),
            }
        }
    }
}

/// How a fault that could not be served was ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unservable {
    /// The page is poisoned in this process: the thread gets SIGBUS at the address.
    Sigbus,
    /// A page was mapped there meanwhile (a racing thread was served): the thread was woken and
    /// its retry is served like any other fault.
    AlreadyMapped,
    /// The process has exited or unmapped the range: nothing to answer.
    Gone,
    /// A valid read-only copy is mapped and cannot be poisoned in place: the caller must close
    /// the attachment, so the client's watchdog revokes the whole mapping (SIGBUS).
    Revoke,
}

/// End a fault that cannot be served, never leaving its thread waiting. A missing or minor
/// fault's page-table entry holds no page but may hold a write-protect marker (left by a
/// downgrade or a punch-hole) that POISON cannot replace: it is cleared first.
pub fn answer_unservable(uffd: &Uffd, fault: &Fault) -> Result<Unservable, UffdError> {
    if fault.kind == FaultKind::WriteProtect {
        return Ok(Unservable::Revoke);
    }
    let gone = |e: UffdError| {
        if e.is_process_gone() {
            Ok(Unservable::Gone)
        } else {
            Err(e)
        }
    };
    // Clearing a marker that is not there is a no-op; a range registered without WP refuses
    // the ioctl, and then there is no marker to clear either.
    let _ = uffd.write_protect(fault.addr, PS, Protect::Writable, Wake::No);
    match uffd.poison(fault.addr, PS, Wake::Yes) {
        Ok(0) => match uffd.wake(fault.addr, PS) {
            Ok(()) => Ok(Unservable::AlreadyMapped),
            Err(e) => gone(e),
        },
        Ok(_) => Ok(Unservable::Sigbus),
        Err(e) => gone(e),
    }
}

/// The runs of present pages next to a fault at `page`: `below` ends at `page`, `above` starts
/// at `page + 1`, each at most `max` pages long and within `[0, limit)`. `present` says whether
/// a page can be mapped around the fault.
pub fn around(
    page: u64,
    limit: u64,
    max: u64,
    present: impl Fn(u64) -> bool,
) -> (Range<u64>, Range<u64>) {
    around_reach(page, limit, max, max, present)
}

/// [`around`] with a reach of its own on each side: at most `max_below` pages below the fault
/// and `max_above` above it.
pub fn around_reach(
    page: u64,
    limit: u64,
    max_below: u64,
    max_above: u64,
    present: impl Fn(u64) -> bool,
) -> (Range<u64>, Range<u64>) {
    assert!(page < limit, "fault-around of page {page} of {limit}");
    let end = page.saturating_add(1).saturating_add(max_above).min(limit);
    let mut hi = page + 1;
    while hi < end && present(hi) {
        hi += 1;
    }
    let start = page.saturating_sub(max_below);
    let mut lo = page;
    while lo > start && present(lo - 1) {
        lo -= 1;
    }
    debug_assert!(lo <= page && hi > page && hi - page - 1 <= max_above && page - lo <= max_below);
    (lo..page, page + 1..hi)
}

/// Map the runs of pages `around` found (indices from `base`, the attachment's start) from the
/// page cache, write-protected and without waking anyone: always safe for pages that are valid
/// here (a write takes a write-protect fault), and a run that meets a page already mapped ends
/// early, harmlessly. Fault-around of a read fault, after the fault itself was answered.
pub fn map_around_read(uffd: &Uffd, base: u64, runs: (Range<u64>, Range<u64>)) {
    let (below, above) = runs;
    for run in [above, below] {
        if !run.is_empty() {
            let (at, len) = (base + run.start * PS, (run.end - run.start) * PS);
            let _ = install(
                uffd,
                at,
                len,
                Source::PageCache,
                Protect::ReadOnly,
                Wake::No,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn around_is_two_way_and_bounded() {
        let present = |p: u64| (3..20).contains(&p);
        assert_eq!(around(10, 100, 4, present), (6..10, 11..15));
        assert_eq!(around(10, 12, 4, present), (6..10, 11..12));
        assert_eq!(around(4, 100, 8, present), (3..4, 5..13));
        assert_eq!(around(0, 1, 8, |_| true), (0..0, 1..1));
        assert_eq!(around(25, 100, 8, present), (25..25, 26..26));
        assert_eq!(around(20, 100, 8, present), (12..20, 21..21));
        assert_eq!(around_reach(10, 100, 2, 6, present), (8..10, 11..17));
    }

    #[test]
    fn decode_types_faults_and_strays() {
        let b = Bounds {
            base: 0x10000,
            len: 4 * PS,
        };
        let ev = |address, kind, write| Event::PageFault {
            address,
            kind,
            write,
            thread_id: 1,
        };
        assert_eq!(
            decode(ev(0x12345, FaultKind::Missing, false), b),
            Incoming::Fault(Fault {
                addr: 0x12000,
                page: 2,
                kind: FaultKind::Missing,
                access: Access::Read
            })
        );
        let Incoming::Fault(f) = decode(ev(0x10000, FaultKind::WriteProtect, false), b) else {
            panic!("in bounds")
        };
        assert_eq!(f.access, Access::Write);
        assert!(matches!(
            decode(ev(0x14000, FaultKind::Minor, true), b),
            Incoming::Stray(Fault { addr: 0x14000, .. })
        ));
        assert!(matches!(
            decode(ev(0xf000, FaultKind::Minor, true), b),
            Incoming::Stray(_)
        ));
        assert_eq!(
            decode(Event::Other { event: 0x13 }, b),
            Incoming::Other { event: 0x13 }
        );
    }
}
