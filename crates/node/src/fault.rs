//! Serving a fault of a node-local segment (`Segment::resolve_fault`), through the shared fault
//! runtime (`pagemesh_uffd::fault`): the page table says what the page is, and the page comes
//! from the page cache, the paging device, the mapper or the zero page.

use std::sync::Arc;
use std::time::Instant;

use pagemesh_types::PAGE_SIZE;
use pagemesh_uffd::fault::{self, install, resolve_present};
use pagemesh_uffd::{Access, Fault, FaultKind, Protect, Source, UffdError, Wake};

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
        bump_fault(self, f.kind);
        let (page, kind) = (f.page, f.kind);
        let write = f.access == Access::Write;
        if let Some(v) = &self.volume {
            v.resolve(att, f, scratch);
            self.latency.record(start.elapsed().as_nanos() as u64);
            return;
        }
        self.pages.touch(page);
        if let Some(m) = &self.memory {
            if matches!(self.pages.get(page), PageState::Absent | PageState::Paged) {
                // Backpressure: no page comes in while the pool is at its budget (bounded wait,
                // no lock held).
                m.pool.wait_for_room();
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
            PageState::Absent if !write => match self.file_read_ahead(att, page, scratch) {
                Some(r) => r.map(|()| Filled::Served),
                None => self.fill(att, f, scratch),
            },
            PageState::Absent | PageState::Paged => self.fill(att, f, scratch),
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
            Ok(Filled::Served) => {}
        }
        self.latency.record(start.elapsed().as_nanos() as u64);
    }

    /// Fault-around for reads: map the runs of present pages after and before a minor read
    /// fault into `att` write-protected, so a sequential reader takes one fault per run instead of one per
    /// page. Mapping a present page write-protected is always safe whatever its state (a write
    /// then takes the usual WP fault), so no stripe lock is needed; pages never leave the memfd
    /// except by punch-hole, which zaps the mapping again anyway.
    fn map_ahead(&self, att: &Attachment, page: u64) {
        let present = |p: u64| matches!(self.pages.get(p), PageState::Clean | PageState::Dirty);
        let pages = (att.len / PS).min(self.pages.npages());
        let end = (page + 1 + FAULT_AROUND_PAGES).min(pages);
        let (below, above) = fault::around(page, pages, FAULT_AROUND_PAGES, present);
        if above.end == end && self.mapper.is_persistent() {
            // A sequential reader of a file segment: when the end of what is cached comes
            // within PREFETCH_TRIGGER_PAGES, have the prefetcher read on ahead of it.
            let limit = (page + PREFETCH_TRIGGER_PAGES)
                .min(att.len / PS)
                .min(self.pages.npages());
            let mut f = end;
            while f < limit && present(f) {
                f += 1;
            }
            if f < limit && self.pages.get(f) == PageState::Absent {
                self.request_prefetch(att, f);
            }
        }
        // Both sides (the one below for backward scans).
        fault::map_around_read(&att.uffd, att.base, (below, above));
    }

    /// Bring an Absent page in from the mapper (or as zeros) and map it into `att`.
    fn fill(&self, att: &Attachment, f: &Fault, scratch: &mut [u8]) -> Result<Filled, UffdError> {
        let (page, addr) = (f.page, f.addr);
        let write = f.access == Access::Write;
        let data: &[u8] = match self.load(page, &mut scratch[..PSU]) {
            Ok(Loaded::Zero) => &ZERO_PAGE,
            Ok(Loaded::Data) => &scratch[..PSU],
            Err(e) => {
                self.set_state(page, PageState::Poisoned);
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
                        page * PS,
                        self.info.name
                    ),
                );
                return Ok(Filled::Poisoned);
            }
        };
        let protect = if write {
            Protect::Writable
        } else {
            Protect::ReadOnly
        };
        // Nothing installed: the page is already mapped here (a racing thread of the same
        // process was served, and install woke this one); it must be in the memfd too.
        if install(&att.uffd, addr, PS, Source::Bytes(data), protect, Wake::Yes)? == 0
            && !self.memfd.is_present(page * PS).unwrap_or(false)
        {
            return Err(UffdError {
                op: "UFFDIO_COPY",
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "a page is mapped there but not in the segment's page cache",
                ),
            });
        }
        self.set_state(
            page,
            if write {
                PageState::Dirty
            } else {
                PageState::Clean
            },
        );
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
