//! Serving a fault of a node-local segment (`Segment::resolve_fault`), through the shared fault
//! runtime (`pagemesh_uffd::fault`): the page table says what the page is, and the page comes
//! from the page cache, the paging device, the mapper or the zero page.

use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use pagemesh_types::PAGE_SIZE;
use pagemesh_uffd::fault::{self, install, resolve_present};
use pagemesh_uffd::{Access, Fault, FaultKind, Protect, Source, UffdError, Wake};

use pagemesh_store::PageData;

use crate::load::Loaded;
use crate::pages::PageState;
use crate::segment::{bump, bump_fault, lock, Attachment, Segment};

const PS: u64 = PAGE_SIZE;
const PSU: usize = PAGE_SIZE as usize;
/// How close the end of the cached run may come before the prefetcher is asked to read on.
const PREFETCH_TRIGGER_PAGES: u64 = 128;
/// Most pages one read fault maps on each side of the faulting one (fault-around).
const FAULT_AROUND_PAGES: u64 = 15;

static ZERO_PAGE: [u8; PAGE_SIZE as usize] = [0; PAGE_SIZE as usize];

impl Segment {
    /// Serve one page fault of `att`. `scratch` is a buffer owned by the worker (the fault path
    /// allocates nothing).
    pub fn resolve_fault(&self, att: &Arc<Attachment>, f: &Fault, scratch: &mut [u8]) {
        let start = Instant::now();
        if att.is_revoked() {
            // Its range stopped being served (see `protect_everywhere`): never map anything
            // into it again.
            att.refuse(
                f,
                &"the attachment was revoked (its uffd range was unregistered)",
            );
            return;
        }
        bump_fault(self, f.kind);
        let (page, kind) = (f.page, f.kind);
        let write = f.access == Access::Write;
        if let Some(v) = &self.volume {
            v.resolve(att, f, scratch);
            self.latency.record(start.elapsed().as_nanos() as u64);
            return;
        }
        if att.read_only {
            self.resolve_read_only(att, f, scratch);
            self.latency.record(start.elapsed().as_nanos() as u64);
            return;
        }
        self.pages.touch(page);
        if let Some(m) = &self.memory {
            if matches!(self.pages.get(page), PageState::Absent | PageState::Paged) {
                // Backpressure: no page comes in while the pool is at its budget (bounded wait,
                // no lock held).
                m.pool.wait_for_room_in(&m.partition);
            }
        }

        let _g = lock(self.stripe(page));
        let result = match self.pages.get(page) {
            PageState::Poisoned => {
                drop(_g);
                att.refuse(
                    f,
                    &"the page is poisoned (clear it with `pagemesh segment clear-poison`)",
                );
                self.latency.record(start.elapsed().as_nanos() as u64);
                return;
            }
            PageState::Paged if !write => match self.page_in_run(att, page, scratch) {
                Some(r) => r.map(|()| Filled::Served),
                None => self.fill(att, f, scratch),
            },
            PageState::Absent if !self.mapper.is_persistent() => {
                match self.zero_run(att, f, scratch) {
                    Some(r) => r,
                    None => self.fill(att, f, scratch),
                }
            }
            PageState::Absent if !write => match self.file_read_ahead(att, page, scratch) {
                Some(r) => r.map(|()| Filled::Served),
                None => self.fill(att, f, scratch),
            },
            PageState::Absent => match self.file_write_run(att, f, scratch) {
                Some(r) => r,
                None => self.fill(att, f, scratch),
            },
            PageState::Paged => self.fill(att, f, scratch),
            state @ (PageState::Clean | PageState::Dirty) => {
                let dirty = state == PageState::Dirty || write || kind == FaultKind::WriteProtect;
                if dirty && state == PageState::Clean {
                    self.set_state(page, PageState::Dirty);
                }
                let protect = if dirty {
                    Protect::Writable
                } else {
                    Protect::ReadOnly
                };
                resolve_present(&att.uffd, f, protect).map(|()| Filled::Served)
            }
        };
        drop(_g);
        match result {
            Err(e) => att.refuse(f, &format_args!("cannot map the page: {e}")),
            Ok(Filled::Poisoned) => {}
            Ok(Filled::Served) if kind == FaultKind::Minor && !write => self.map_ahead(att, page),
            Ok(Filled::Served) if kind == FaultKind::Minor => self.map_ahead_dirty(att, page),
            Ok(Filled::Served) => {}
        }
        self.latency.record(start.elapsed().as_nanos() as u64);
    }

    /// A fault of a read-only attachment, whose mapping is private: what would be installed
    /// into it (COPY, zero page) would be that process's own page and never reach the page
    /// cache, so the page is put in the page cache first (loaded from the mapper, the paging
    /// device or as zeros, Clean) and then mapped from there (CONTINUE), read-only, with the
    /// fault-around and prefetching of a reader. No install runs (they COPY into the faulting
    /// mapping). Its faults are never writes (the kernel refuses a store to a readable-only
    /// mapping before userfaultfd sees it).
    fn resolve_read_only(&self, att: &Arc<Attachment>, f: &Fault, scratch: &mut [u8]) {
        let page = f.page;
        if let Some(m) = &self.memory {
            if !self.pages.get(page).is_resident() {
                m.pool.wait_for_room_in(&m.partition);
            }
        }
        let g = lock(self.stripe(page));
        match self.pages.get(page) {
            PageState::Poisoned => {
                drop(g);
                att.refuse(
                    f,
                    &"the page is poisoned (clear it with `pagemesh segment clear-poison`)",
                );
                return;
            }
            PageState::Absent | PageState::Paged => {
                if self.memfd.is_present(page * PS).unwrap_or(false) {
                    // Written past the daemon (see `fill`): never adopted, punched out (which
                    // zaps every mapping of it) before the page's real data goes in.
                    log::warn!(
                        "segment {} page {page}: a page nobody installed was in the page cache; \
                         replacing it with the page's data",
                        self.info.name
                    );
                    let _ = self.memfd.punch_hole(page * PS, PS);
                }
                let buf = &mut scratch[..PSU];
                match self.load(page, buf) {
                    Ok(Loaded::Zero) => buf.fill(0),
                    Ok(Loaded::Data) => {}
                    Err(e) => {
                        self.poison_unloadable(att, f, &e);
                        return;
                    }
                }
                if let Err(e) = self.install_page(page, buf) {
                    drop(g);
                    att.refuse(
                        f,
                        &format_args!("cannot put the page in the page cache: {e}"),
                    );
                    return;
                }
                self.set_state(page, PageState::Clean);
            }
            PageState::Clean | PageState::Dirty => {}
        }
        let r = resolve_present(&att.uffd, f, Protect::ReadOnly);
        drop(g);
        match r {
            // Fault-around and the prefetcher only map the page cache or fill it: both are
            // right for a private mapping too.
            Ok(()) => self.map_ahead(att, page),
            Err(e) => att.refuse(f, &format_args!("cannot map the page: {e}")),
        }
    }

    /// Claim the pages after `first` for a run: try-lock each one's stripe, up to `end`
    /// (exclusive), stopping at the first whose stripe is busy or for which `fits` says no.
    /// Returns where the run ends and the guards, held until the caller has installed it and
    /// set the states. The caller holds `first`'s own stripe; the others are only try-locked,
    /// so no lock order is needed (see the module's locking note). The run paths claim their
    /// neighbours here: zero runs, file write runs, page-in runs, eviction runs, writable
    /// fault-around, and (through `claim_from`) the prefetcher. File read-ahead, which may run
    /// backward, try-locks the same way with a loop of its own.
    pub fn claim_after(
        &self,
        first: u64,
        end: u64,
        fits: impl FnMut(u64) -> bool,
    ) -> (u64, Vec<MutexGuard<'_, ()>>) {
        self.claim_from(first + 1, end, fits)
    }

    /// Like `claim_after`, for a caller that holds no stripe (the prefetcher): claims `first`
    /// too. Returns `first` itself when not even it could be claimed.
    pub fn claim_from(
        &self,
        first: u64,
        end: u64,
        mut fits: impl FnMut(u64) -> bool,
    ) -> (u64, Vec<MutexGuard<'_, ()>>) {
        let mut guards = Vec::with_capacity(end.saturating_sub(first) as usize);
        let mut hi = first;
        while hi < end {
            match self.stripe(hi).try_lock() {
                Ok(g) if fits(hi) => guards.push(g),
                _ => break,
            }
            hi += 1;
        }
        (hi, guards)
    }

    /// Fault-around for reads: map the runs of present pages after and before a minor read
    /// fault into `att` write-protected, so a sequential reader takes one fault per run instead of one per
    /// page. Mapping a present page write-protected is always safe whatever its state (a write
    /// then takes the usual WP fault), so no stripe lock is needed; pages never leave the memfd
    /// except by punch-hole, which zaps the mapping again anyway.
    fn map_ahead(&self, att: &Attachment, page: u64) {
        let present = |p: u64| matches!(self.pages.get(p), PageState::Clean | PageState::Dirty);
        let pages = (att.len / PS).min(self.pages.npages());
        // Both ways as far as the reader's (near) stream has earned, at least FAULT_AROUND_PAGES:
        // a reader copying out a buffer backward (glibc's memcpy) walks down inside it.
        let reach = (att.streams.window_near(page) - 1).max(FAULT_AROUND_PAGES);
        let end = (page + 1 + reach).min(pages);
        let (below, above) = fault::around_reach(page, pages, reach, reach, present);
        att.streams
            .served_near(page, below.start.min(page), above.end.max(page + 1));
        if above.end == end {
            // A sequential reader: when the end of what is cached comes within
            // PREFETCH_TRIGGER_PAGES, have the prefetcher read on ahead of it (file pages from
            // the file, paged-out pages from their slots).
            let limit = (page + PREFETCH_TRIGGER_PAGES)
                .min(att.len / PS)
                .min(self.pages.npages());
            let mut f = end;
            while f < limit && present(f) {
                f += 1;
            }
            let ahead = if self.mapper.is_persistent() {
                PageState::Absent
            } else {
                PageState::Paged
            };
            if f < limit && self.pages.get(f) == ahead {
                self.request_prefetch(att, f);
            }
        }
        // Both sides (the one below for backward scans).
        fault::map_around_read(&att.uffd, att.base, (below, above));
    }

    /// Fault-around for a write to a page that is in the page cache: map the Dirty pages after
    /// it into `att` writable, as far as the writer's stream has earned, so a process rewriting
    /// cached pages takes one fault per run instead of one per page. Only Dirty pages, and only
    /// under their stripe locks (try-locked): a Clean page must take its write fault (it becomes
    /// Dirty then), and a Dirty page that a sync or an eviction is write-protecting must not be
    /// mapped writable behind its back.
    fn map_ahead_dirty(&self, att: &Attachment, page: u64) {
        let want = att.streams.window(page);
        let end = (page + want).min(att.len / PS).min(self.pages.npages());
        let (hi, guards) = self.claim_after(page, end, |p| self.pages.get(p) == PageState::Dirty);
        let mut served = page + 1;
        if hi > page + 1 {
            let at = att.base + (page + 1) * PS;
            // A page of the run mapped here already ends it early, harmlessly.
            if let Ok(bytes) = install(
                &att.uffd,
                at,
                (hi - page - 1) * PS,
                Source::PageCache,
                Protect::Writable,
                Wake::No,
            ) {
                served += bytes / PS;
            }
        }
        drop(guards);
        att.streams.served(page, served);
    }

    /// A fault on a dormant page of a segment without a backing file: install zeros for the
    /// run of dormant pages from it that the faulting stream has earned (see `runs`), writable
    /// and Dirty for a write, read-only and Clean for a read, with one ioctl. None when the run
    /// would be the faulting page alone (the one-page path serves it). The caller holds the
    /// faulting page's stripe lock; the others are try-locked, and the run stops at the first
    /// page that is not dormant, whose stripe is busy, or past what the memory pool has room
    /// for (speculation never pushes the pool over its high watermark). A page made Dirty here
    /// and never written is still all zeros: the evictor finds that and drops it as dormant,
    /// with no paging I/O.
    fn zero_run(
        &self,
        att: &Attachment,
        f: &Fault,
        scratch: &mut [u8],
    ) -> Option<Result<Filled, UffdError>> {
        let page = f.page;
        // The mapper is asked about every page of the run (a fault-injecting one may fail any).
        let mut dormant = |p: u64| {
            matches!(
                self.mapper.read_page(p * PS, &mut scratch[..PSU]),
                Ok(PageData::Dormant)
            )
        };
        if !dormant(page) {
            return None;
        }
        let want = self.reach(att, page, 1);
        let end = (page + want).min(att.len / PS).min(self.pages.npages());
        if end <= page + 1 {
            att.streams.served(page, page + 1);
            return None;
        }
        let (hi, guards) = self.claim_after(page, end, |p| {
            self.pages.get(p) == PageState::Absent && dormant(p)
        });
        let (protect, state) = match f.access {
            Access::Write => (Protect::Writable, PageState::Dirty),
            Access::Read => (Protect::ReadOnly, PageState::Clean),
        };
        let installed = match install(
            &att.uffd,
            f.addr,
            (hi - page) * PS,
            Source::Zeros,
            protect,
            Wake::Yes,
        ) {
            Ok(bytes) => bytes / PS,
            Err(e) => return Some(Err(e)),
        };
        if installed == 0 {
            // The faulting page is mapped already: the one-page path sorts that out.
            att.streams.served(page, page + 1);
            return None;
        }
        for p in page..page + installed {
            self.set_state(p, state);
        }
        drop(guards);
        bump(&self.counters.zero_fills, installed);
        att.streams.served(page, page + installed);
        Some(Ok(Filled::Served))
    }

    /// A fault's page could not be loaded: poison it and refuse the fault (SIGBUS), saying
    /// where and why (caller holds the stripe).
    fn poison_unloadable(&self, att: &Attachment, f: &Fault, e: &dyn std::fmt::Display) {
        self.set_state(f.page, PageState::Poisoned);
        bump(&self.counters.poisonings, 1);
        let partition = self
            .memory
            .as_ref()
            .map_or("-", |m| m.partition.name.as_str());
        att.refuse(
            f,
            &format_args!(
                "offset {:#x}, partition {partition}: {e}; the page is poisoned. Fix the backing \
                 store, then run `pagemesh segment clear-poison {}`",
                f.page * PS,
                self.info.name
            ),
        );
    }

    /// Bring an Absent page in from the mapper (or as zeros) and map it into `att`.
    fn fill(&self, att: &Attachment, f: &Fault, scratch: &mut [u8]) -> Result<Filled, UffdError> {
        let (page, addr) = (f.page, f.addr);
        let write = f.access == Access::Write;
        let data: &[u8] = match self.load(page, &mut scratch[..PSU]) {
            Ok(Loaded::Zero) => &ZERO_PAGE,
            Ok(Loaded::Data) => &scratch[..PSU],
            Err(e) => {
                self.poison_unloadable(att, f, &e);
                return Ok(Filled::Poisoned);
            }
        };
        let protect = if write {
            Protect::Writable
        } else {
            Protect::ReadOnly
        };
        // A page mapped writable is Dirty *before* the install wakes the writer: the writer
        // may write and ask for a sync at once, and a sync that scanned for Dirty pages while
        // this one still looked Absent would skip it and report its write durable. (The stripe
        // lock, held here, keeps the sync off the page until it is in the memfd.)
        let new = if write {
            PageState::Dirty
        } else {
            PageState::Clean
        };
        let old = self.set_state(page, new);
        let mut installed = install(&att.uffd, addr, PS, Source::Bytes(data), protect, Wake::Yes);
        if matches!(installed, Ok(0)) && !old.is_resident() {
            // The memfd holds a page the table says is not there: a process wrote it past the
            // daemon (its range no longer registered). Never adopt it: punch it out (which
            // zaps every mapping of it) and install the page's real data.
            log::warn!(
                "segment {} page {page}: a page nobody installed was in the page cache; \
                 replacing it with the page's data",
                self.info.name
            );
            let _ = self.memfd.punch_hole(page * PS, PS);
            installed = install(&att.uffd, addr, PS, Source::Bytes(data), protect, Wake::Yes);
        }
        // Nothing installed: the page is already mapped here (a racing thread of the same
        // process was served, and install woke this one); it must be in the memfd too.
        let refused = match installed {
            Ok(0) if !self.memfd.is_present(page * PS).unwrap_or(false) => Err(UffdError {
                op: "UFFDIO_COPY",
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a page is mapped there but not in the segment's page cache",
                ),
            }),
            Ok(_) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = refused {
            self.set_state(page, old);
            return Err(e);
        }
        Ok(Filled::Served)
    }
}

/// How a fault that needed a page brought in ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filled {
    /// Mapped into the process.
    Served,
    /// The data could not be had: the page is poisoned and the fault refused.
    Poisoned,
}
