//! Pages leaving a segment's memfd under the memory pool, in runs: when the evictor's clock
//! hand reaches a page, that page and the evictable pages after it (up to `EVICT_RUN_PAGES`)
//! leave together, with one write-protect per client, one copy out of the memfd, one write per
//! run of consecutive paging slots (or file pages), and one punch. A page at a time, eviction
//! cost a `fallocate` (with its TLB shoot-down) and a 4 KiB write per page, which was most of
//! the evictor's time at 4x overcommit.

use std::cell::RefCell;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use pagemesh_store::paging::{PagingDevice, Slot};
use pagemesh_types::PAGE_SIZE;

use crate::memory::ClockVisit;
use crate::pages::{PageState, PINNED, REFERENCED};
use crate::segment::Segment;

/// Most pages one eviction takes out together (1 MiB). Below the segment's stripe count, so
/// no two pages of a run share a stripe lock.
pub const EVICT_RUN_PAGES: u64 = 256;

const PS: u64 = PAGE_SIZE;
const PSU: usize = PAGE_SIZE as usize;

thread_local! {
    /// The evictor's copy-out buffer (one run), kept between runs so a run costs no allocation
    /// and no page faults on fresh memory.
    static SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Why a page could not be evicted.
#[derive(Debug, thiserror::Error)]
pub enum EvictError {
    #[error("segment {segment} page {page}: writing it back: {source}")]
    WriteBack {
        segment: String,
        page: u64,
        source: pagemesh_store::MapperError,
    },
    #[error("segment {segment} page {page}: paging it out: {source}")]
    PageOut {
        segment: String,
        page: u64,
        source: pagemesh_store::paging::PagingError,
    },
    #[error("segment {segment} page {page}: no paging device for a dirty page of a zero segment")]
    NoPagingDevice { segment: String, page: u64 },
    #[error(
        "segment {segment} page {page}: write-protecting it in pid {pid} before eviction: {source}"
    )]
    WriteProtect {
        segment: String,
        page: u64,
        pid: i32,
        source: pagemesh_uffd::UffdError,
    },
    #[error("segment {segment} page {page}: {what}: {source}")]
    Memfd {
        segment: String,
        page: u64,
        what: &'static str,
        source: std::io::Error,
    },
}

/// What an eviction attempt did.
#[derive(Debug, PartialEq, Eq)]
pub enum Evict {
    /// This many pages (the one asked for and the run after it) left the memfd.
    Done(u64),
    NotResident,
    Pinned,
    /// The page's stripe (or its segment's sync) is busy: try later.
    Busy,
}

/// Where one page of a run goes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Leaves {
    /// Clean: dropped (its data is in its file or paging slot, or it was never written).
    Drop,
    /// Dirty but all zeros, of a zero segment: dormant again, no I/O.
    Dormant,
    /// Dirty: written back to the segment's file.
    WriteBack,
    /// Dirty: paged out to this slot.
    PageOut(Slot),
}

impl Segment {
    /// The evictor's clock hand reached `page`: evict it and, after it, up to `max` pages in
    /// all that are resident, unpinned and not referenced since the hand last passed.
    pub fn clock_visit(self: &Arc<Self>, page: u64, max: u64) -> ClockVisit {
        if !self.pages.get(page).is_resident() {
            return ClockVisit::Gone;
        }
        if self.pages.flags(page) & PINNED != 0 || self.pages.take_referenced(page) {
            return ClockVisit::Keep;
        }
        if let Some(engine) = self.cluster.get() {
            // A cluster page leaves through the protocol (its home writes it back if this is
            // the last copy of unsynced data, then invalidates it here): ask the engine, which
            // reports the end to the pool.
            let Some(m) = &self.memory else {
                return ClockVisit::Keep;
            };
            m.pool.cluster_evict_started();
            if let Err(e) = engine.evict(Arc::clone(self), page) {
                m.pool
                    .cluster_evict_done(&m.partition, Some((self.info.id, page)));
                return ClockVisit::Failed(e.to_string());
            }
            return ClockVisit::Evicted(1);
        }
        match self.evict_run(page, max) {
            Ok(Evict::Done(n)) => ClockVisit::Evicted(n),
            Ok(Evict::NotResident) => ClockVisit::Gone,
            // Pinned meanwhile, or its stripe is busy (a fault, a sync or a read-ahead is at
            // work on it): keep it on the clock and move on.
            Ok(Evict::Pinned) => ClockVisit::Keep,
            Ok(Evict::Busy) => ClockVisit::Busy,
            Err(e) => ClockVisit::Failed(e.to_string()),
        }
    }

    /// Take `page` and the run of evictable pages after it (at most `max` pages in all, at
    /// most `EVICT_RUN_PAGES`) out of the memfd. A clean page is dropped (it stays in its file
    /// or paging slot, or was a zero page); dirty ones are first write-protected in every
    /// attached process (the whole run with one call per process), copied out with one read,
    /// and written back to their file or out to the paging device, one write per group of
    /// consecutive pages (consecutive slots for paging). One punch then zaps the run from every
    /// mapping; the next access faults it back in.
    ///
    /// Only the stripe of `page` decides Busy; the pages after it are taken only while their
    /// stripes are free, they are resident, unpinned and not referenced (the clock gives a
    /// referenced page its second chance when the hand reaches it). A write that fails ends
    /// the run before the failing group: what came before leaves, the rest stays Dirty; the
    /// error is returned only when `page` itself could not leave.
    pub fn evict_run(&self, page: u64, max: u64) -> Result<Evict, EvictError> {
        // The evictor never waits on a stripe: a holder may be doing I/O for a while.
        let Ok(first_guard) = self.stripe(page).try_lock() else {
            return Ok(Evict::Busy);
        };
        let state = self.pages.get(page);
        if !state.is_resident() {
            return Ok(Evict::NotResident);
        }
        if self.pages.flags(page) & PINNED != 0 {
            return Ok(Evict::Pinned);
        }
        // A file segment being synced keeps its pages until the sync is durable: a page the
        // sync marked Clean must not be dropped before fdatasync has succeeded.
        let Ok(_sync) = self.sync_lock.try_lock() else {
            return Ok(Evict::Busy);
        };
        // Removed (release runs under the sync lock too): nothing here is ours to move.
        if self.is_released() {
            return Ok(Evict::NotResident);
        }
        let max = max
            .clamp(1, EVICT_RUN_PAGES)
            .min(self.pages.npages() - page);
        let (hi, guards) = self.claim_after(page, page + max, |p| {
            self.pages.get(p).is_resident() && self.pages.flags(p) & (PINNED | REFERENCED) == 0
        });
        let states: Vec<PageState> = (page..hi).map(|p| self.pages.get(p)).collect();
        let n = SCRATCH.with_borrow_mut(|buf| self.write_out_run(page, &states, buf))?;
        debug_assert!(n >= 1 && n <= states.len() as u64);
        drop((guards, first_guard));
        Ok(Evict::Done(n))
    }

    /// The second half of `evict_run` (the caller holds the run's stripe locks and the sync
    /// lock): copy out and write the dirty pages, punch, set the states. Returns how many
    /// pages from `page` left; an error only if none did.
    fn write_out_run(
        &self,
        page: u64,
        states: &[PageState],
        buf: &mut Vec<u8>,
    ) -> Result<u64, EvictError> {
        let seg = || self.info.name.clone();
        let persistent = self.mapper.is_persistent();
        let mut n = states.len();
        let dirty = states.contains(&PageState::Dirty);
        if dirty {
            // Take paging slots first: a full device must fail before any client is
            // write-protected for nothing. A page that cannot have one ends the run.
            if !persistent {
                for (i, &st) in states.iter().enumerate() {
                    if st != PageState::Dirty {
                        continue;
                    }
                    if let Err(e) = self.slot_for(page + i as u64) {
                        if i == 0 {
                            return Err(e);
                        }
                        n = i;
                        break;
                    }
                }
            }
            // A process left with a writable mapping could write between the copy and the
            // punch, and that write would be lost: do not evict (one whose range is no longer
            // registered loses its attachment instead).
            self.protect_everywhere(page, n as u64)
                .map_err(|(pid, source)| EvictError::WriteProtect {
                    segment: seg(),
                    page,
                    pid,
                    source,
                })?;
            if buf.len() < n * PSU {
                buf.resize(EVICT_RUN_PAGES as usize * PSU, 0);
            }
            self.memfd
                .read_exact_at(&mut buf[..n * PSU], page * PS)
                .map_err(|source| EvictError::Memfd {
                    segment: seg(),
                    page,
                    what: "reading the run",
                    source,
                })?;
        }
        let leaves: Vec<Leaves> = (0..n)
            .map(|i| {
                let p = page + i as u64;
                match states[i] {
                    PageState::Dirty if persistent => Leaves::WriteBack,
                    PageState::Dirty if buf[i * PSU..(i + 1) * PSU].iter().all(|&b| b == 0) => {
                        // All zeros (a page of a speculative run never written, or written
                        // with zeros): dormant again, with no paging I/O.
                        Leaves::Dormant
                    }
                    PageState::Dirty => Leaves::PageOut(self.slots.get(p).expect("taken above")),
                    _ => Leaves::Drop,
                }
            })
            .collect();
        let n = self.write_groups(page, &leaves, buf)?;
        self.memfd
            .punch_hole(page * PS, n as u64 * PS)
            .map_err(|source| EvictError::Memfd {
                segment: seg(),
                page,
                what: "punching the run out of the memfd",
                source,
            })?;
        for (i, &l) in leaves[..n].iter().enumerate() {
            let p = page + i as u64;
            let new = match l {
                Leaves::Drop if persistent => PageState::Absent,
                Leaves::Drop if self.slots.get(p).is_some() => PageState::Paged,
                // A clean page of a zero segment without a slot was never written: dormant.
                Leaves::Drop => PageState::Absent,
                Leaves::Dormant => {
                    if let Some(s) = self.slots.take(p) {
                        self.paging(p)?.free(s);
                    }
                    PageState::Absent
                }
                Leaves::WriteBack => PageState::Absent,
                Leaves::PageOut(_) => PageState::Paged,
            };
            self.set_state(p, new);
        }
        self.counters
            .evictions
            .fetch_add(n as u64, Ordering::Relaxed);
        Ok(n as u64)
    }

    /// Write the run's dirty pages: one write per group of consecutive pages going to the
    /// file, or to consecutive paging slots. Returns how many pages from the first are done;
    /// a failed write ends the run before its group (an error only when that is the first).
    fn write_groups(&self, page: u64, leaves: &[Leaves], buf: &[u8]) -> Result<usize, EvictError> {
        let mut i = 0;
        while i < leaves.len() {
            let mut end = i + 1;
            let result = match leaves[i] {
                Leaves::Drop | Leaves::Dormant => {
                    i += 1;
                    continue;
                }
                Leaves::WriteBack => {
                    while end < leaves.len() && leaves[end] == Leaves::WriteBack {
                        end += 1;
                    }
                    self.write_back(page + i as u64, &buf[i * PSU..end * PSU])
                }
                Leaves::PageOut(first) => {
                    while end < leaves.len()
                        && leaves[end] == Leaves::PageOut(Slot(first.0 + (end - i) as u32))
                    {
                        end += 1;
                    }
                    self.page_out(page + i as u64, first, &buf[i * PSU..end * PSU])
                }
            };
            match result {
                Ok(()) => i = end,
                Err(e) if i == 0 => return Err(e),
                Err(e) => {
                    log::debug!(
                        "eviction run of {} ends at page {}: {e}",
                        self.info.name,
                        page + i as u64
                    );
                    return Ok(i);
                }
            }
        }
        Ok(leaves.len())
    }

    fn write_back(&self, page: u64, data: &[u8]) -> Result<(), EvictError> {
        self.mapper
            .write_at(page * PS, data)
            .map_err(|source| EvictError::WriteBack {
                segment: self.info.name.clone(),
                page,
                source,
            })?;
        self.counters
            .mapper_bytes_written
            .fetch_add(data.len() as u64, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) fn paging(&self, page: u64) -> Result<&PagingDevice, EvictError> {
        self.memory
            .as_ref()
            .and_then(|m| m.pool.paging.as_ref())
            .ok_or_else(|| EvictError::NoPagingDevice {
                segment: self.info.name.clone(),
                page,
            })
    }

    /// The page's paging slot, allocated if it has none.
    fn slot_for(&self, page: u64) -> Result<Slot, EvictError> {
        if let Some(s) = self.slots.get(page) {
            return Ok(s);
        }
        let s = self
            .paging(page)?
            .alloc()
            .map_err(|source| EvictError::PageOut {
                segment: self.info.name.clone(),
                page,
                source,
            })?;
        self.slots.set(page, Some(s));
        Ok(s)
    }

    /// Write `data` (whole pages, from `page` on) to consecutive slots from `first`.
    fn page_out(&self, page: u64, first: Slot, data: &[u8]) -> Result<(), EvictError> {
        self.paging(page)?
            .write_run(first, data)
            .map_err(|source| EvictError::PageOut {
                segment: self.info.name.clone(),
                page,
                source,
            })?;
        let pages = data.len() as u64 / PS;
        self.counters.page_outs.fetch_add(pages, Ordering::Relaxed);
        if let Some(m) = &self.memory {
            m.partition.page_outs.fetch_add(pages, Ordering::Relaxed);
        }
        Ok(())
    }
}
