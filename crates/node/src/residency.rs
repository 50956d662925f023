//! Pages entering and leaving a segment's memfd under the memory pool: loading a page from
//! wherever its data is, evicting it (write-back or page-out, then punch), pinning, and giving
//! everything back when the segment is removed.

use std::sync::atomic::Ordering;

use pagemesh_store::paging::{PagingDevice, Slot};
use pagemesh_store::PageData;
use pagemesh_types::PAGE_SIZE;

use std::sync::Arc;

use crate::load::{LoadError, Loaded};
use crate::memory::{ClockVisit, Prefetch, PrefetchJob, Resident};
use crate::pages::{PageState, PINNED};
use crate::segment::{lock, Attachment, IoError, Segment};
use pagemesh_uffd::fault::install;
use pagemesh_uffd::{Fault, Protect, Source, UffdError, Wake};

use crate::fault::Filled;

/// Fewest pages one page-in read tries to bring back (page-in read-ahead); a sequential
/// reader's stream reaches further (see `runs`).
const PAGE_IN_RUN: u64 = 16;
/// Fewest pages one file read tries to bring in (file read-ahead); likewise.
const FILE_READAHEAD_PAGES: u64 = 16;
/// Pages the prefetcher reads ahead of a sequential reader (1 MiB).
const PREFETCH_PAGES: u64 = 256;
/// Pages per prefetcher read from a file (64 KiB). 4 MiB windows of 256 KiB reads measured
/// no better.
const PREFETCH_CHUNK_PAGES: u64 = 16;
/// Pages per prefetcher page-in (256 KiB: a few reads of consecutive slots).
const PAGE_IN_PREFETCH_CHUNK_PAGES: u64 = 64;

const PS: u64 = PAGE_SIZE;
const PSU: usize = PAGE_SIZE as usize;

impl Segment {
    /// Read the data of an Absent or Paged page into `buf` (caller holds the stripe lock).
    pub fn load(&self, page: u64, buf: &mut [u8]) -> Result<Loaded, LoadError> {
        if self.pages.get(page) == PageState::Paged {
            let paging = self
                .memory
                .as_ref()
                .and_then(|m| m.pool.paging.as_ref())
                .ok_or(LoadError::NoPagingDevice)?;
            let slot = self.slots.get(page).expect("a paged page has a slot");
            if let Err(e) = paging.read(slot, buf) {
                // The slot's data is lost: give the slot back (whoever takes it from the table
                // frees it, once); the page will be poisoned.
                if let Some(s) = self.slots.take(page) {
                    paging.free(s);
                }
                if let Some(m) = &self.memory {
                    m.partition.paging_errors.fetch_add(1, Ordering::Relaxed);
                }
                return Err(e.into());
            }
            self.counters.page_ins.fetch_add(1, Ordering::Relaxed);
            if let Some(m) = &self.memory {
                m.partition.page_ins.fetch_add(1, Ordering::Relaxed);
            }
            return Ok(Loaded::Data);
        }
        match self.mapper.read_page(page * PS, buf)? {
            PageData::Dormant => {
                self.counters.zero_fills.fetch_add(1, Ordering::Relaxed);
                Ok(Loaded::Zero)
            }
            PageData::Filled => {
                self.counters.mapper_reads.fetch_add(1, Ordering::Relaxed);
                self.counters
                    .mapper_bytes_read
                    .fetch_add(PS, Ordering::Relaxed);
                Ok(Loaded::Data)
            }
        }
    }

    /// How many pages a run for a fault at `page` may bring in: as far as the faulting
    /// stream's window, no further than the pool has room for below its budget, and
    /// at least `floor` (the short runs that were always taken, inside the documented slack).
    pub fn reach(&self, att: &Attachment, page: u64, floor: u64) -> u64 {
        att.streams.window(page).min(self.room()).max(floor)
    }

    /// Pages the pool has room for (unbounded without a pool).
    fn room(&self) -> u64 {
        self.memory
            .as_ref()
            .map_or(u64::MAX, |m| m.pool.room_pages_in(&m.partition))
    }

    /// `reach` for a reader: the window of a *near* stream ([`Streams::window_near`]), which a
    /// reader copying out 1 MiB at a time backward (glibc's `memcpy`) still continues.
    pub fn reach_near(&self, att: &Attachment, page: u64, floor: u64) -> u64 {
        att.streams.window_near(page).min(self.room()).max(floor)
    }

    /// Page-in read-ahead: the Paged pages after `page`, as far as its stream reaches, read
    /// with one read per run of consecutive slots (pages paged out together usually sit in
    /// consecutive slots; pages the clock kept a while longer do not) and mapped into `att`
    /// write-protected with one COPY. Returns None when there is no run (the caller takes the
    /// one-page path), or when `page`'s own slot cannot be read (the one-page path then
    /// poisons exactly it); a bad slot further on ends the run before it. The caller holds
    /// `page`'s stripe lock; the others are only try-locked, so no lock order is needed.
    pub fn page_in_run(
        &self,
        att: &Attachment,
        page: u64,
        scratch: &mut [u8],
    ) -> Option<Result<(), UffdError>> {
        let paging = self.memory.as_ref().and_then(|m| m.pool.paging.as_ref())?;
        let max = (scratch.len() as u64 / PS)
            .min(self.reach(att, page, PAGE_IN_RUN))
            .min(att.len / PS - page)
            .min(self.pages.npages() - page);
        self.slots.get(page)?;
        let (hi, mut guards) = self.claim_after(page, page + max, |p| {
            self.pages.get(p) == PageState::Paged && self.slots.get(p).is_some()
        });
        if hi == page + 1 {
            return None;
        }
        let n = self.read_slot_runs(paging, page, hi - page, scratch);
        if n <= 1 {
            return None;
        }
        guards.truncate((n - 1) as usize);
        let buf = &mut scratch[..(n * PS) as usize];
        let copied = match install(
            &att.uffd,
            att.base + page * PS,
            0,
            Source::Bytes(buf),
            Protect::ReadOnly,
            Wake::Yes,
        ) {
            Ok(bytes) => bytes / PS,
            Err(e) => return Some(Err(e)),
        };
        if copied == 0 {
            return None;
        }
        for p in page..page + copied {
            self.set_state(p, PageState::Clean);
        }
        att.streams.served(page, page + copied);
        if copied == max && copied > PAGE_IN_RUN {
            // A sequential reader (its stream earned more than the floor) got all it could:
            // page in what follows off the fault path, while it reads this run.
            self.request_prefetch(att, page + copied);
        }
        self.counters.page_ins.fetch_add(copied, Ordering::Relaxed);
        if let Some(m) = &self.memory {
            m.partition.page_ins.fetch_add(copied, Ordering::Relaxed);
        }
        drop(guards);
        Some(Ok(()))
    }

    /// File read-ahead: on a read fault on an Absent page of a file segment, read the run of
    /// Absent pages after it (or, when the next page is not Absent, before it: a backward scan)
    /// with one read, and map them into `att` write-protected with one COPY. None when there
    /// is no run or the read fails: the caller's one-page path then serves (or poisons) exactly
    /// the faulting page. The caller holds `page`'s stripe lock; the others are try-locked.
    pub fn file_read_ahead(
        &self,
        att: &Attachment,
        page: u64,
        scratch: &mut [u8],
    ) -> Option<Result<(), UffdError>> {
        if !self.mapper.is_persistent() {
            return None;
        }
        let max = (scratch.len() as u64 / PS).min(self.reach_near(att, page, FILE_READAHEAD_PAGES));
        let end = (att.len / PS).min(self.pages.npages());
        let claim = |p: u64| {
            self.stripe(p)
                .try_lock()
                .ok()
                .filter(|_| self.pages.get(p) == PageState::Absent)
        };
        let mut guards = Vec::new();
        let mut hi = page + 1;
        while hi < end && hi - page < max {
            match claim(hi) {
                Some(g) => guards.push(g),
                None => break,
            }
            hi += 1;
        }
        let mut lo = page;
        while hi == page + 1 && lo > 0 && hi - lo < max {
            match claim(lo - 1) {
                Some(g) => guards.push(g),
                None => break,
            }
            lo -= 1;
        }
        let n = hi - lo;
        if n == 1 {
            return None;
        }
        let buf = &mut scratch[..(n * PS) as usize];
        self.mapper.read_pages(lo * PS, buf).ok()?;
        let copied = match install(
            &att.uffd,
            att.base + lo * PS,
            0,
            Source::Bytes(buf),
            Protect::ReadOnly,
            Wake::Yes,
        ) {
            Ok(bytes) => bytes / PS,
            Err(e) => return Some(Err(e)),
        };
        for p in lo..lo + copied {
            self.set_state(p, PageState::Clean);
        }
        if lo + copied > page {
            att.streams.served_near(page, lo, lo + copied);
        }
        self.counters
            .mapper_reads
            .fetch_add(copied, Ordering::Relaxed);
        self.counters
            .mapper_bytes_read
            .fetch_add(copied * PS, Ordering::Relaxed);
        drop(guards);
        if hi == page + max && hi < end {
            self.request_prefetch(att, hi);
        }
        if lo + copied <= page {
            return None; // the faulting page was not reached: serve it alone
        }
        Some(Ok(()))
    }

    /// A write fault on an Absent page of a file segment: when it continues a sequential
    /// writer's stream, read the run of Absent pages from it (as far as the stream has earned)
    /// with one read and map it writable, every page Dirty, so the writer takes one fault per
    /// run instead of a fault and a file read per page. The pages after the faulting one are
    /// Dirty before they are written: a writer that reached the end of each of its runs so far
    /// is writing every page, and a page it skips still holds the file's own bytes, which sync
    /// writes back unchanged (I/O spent, never a byte changed). None for a first or random
    /// write (a window of one page) or when the read fails: the one-page path then serves (or
    /// poisons) exactly the faulting page. Locks as for `file_read_ahead`.
    pub fn file_write_run(
        &self,
        att: &Attachment,
        f: &Fault,
        scratch: &mut [u8],
    ) -> Option<Result<Filled, UffdError>> {
        let page = f.page;
        let max = (scratch.len() as u64 / PS).min(self.reach(att, page, 1));
        let end = (page + max).min(att.len / PS).min(self.pages.npages());
        let (hi, guards) = self.claim_after(page, end, |p| self.pages.get(p) == PageState::Absent);
        let single = || {
            att.streams.served(page, page + 1);
            None
        };
        if hi == page + 1 {
            return single();
        }
        let buf = &mut scratch[..((hi - page) * PS) as usize];
        if self.mapper.read_pages(page * PS, buf).is_err() {
            return single();
        }
        // Dirty before the install wakes the writer (see `fill`: a sync right after the write
        // must find these pages); what the install did not reach goes back to Absent.
        for p in page..hi {
            self.set_state(p, PageState::Dirty);
        }
        let installed = install(
            &att.uffd,
            f.addr,
            0,
            Source::Bytes(buf),
            Protect::Writable,
            Wake::Yes,
        );
        let copied = installed.as_ref().map_or(0, |bytes| bytes / PS);
        for p in page + copied..hi {
            self.set_state(p, PageState::Absent);
        }
        if let Err(e) = installed {
            return Some(Err(e));
        }
        if copied == 0 {
            return single();
        }
        drop(guards);
        att.streams.served(page, page + copied);
        self.counters
            .mapper_reads
            .fetch_add(copied, Ordering::Relaxed);
        self.counters
            .mapper_bytes_read
            .fetch_add(copied * PS, Ordering::Relaxed);
        Some(Ok(Filled::Served))
    }

    /// A forward scan reached `from`: have the prefetcher read the next window.
    pub fn request_prefetch(&self, att: &Attachment, from: u64) {
        if let Some(m) = &self.memory {
            m.pool.request_prefetch(PrefetchJob {
                segment: Arc::downgrade(&(Arc::clone(&att.segment) as Arc<dyn Prefetch>)),
                first: from,
                pages: PREFETCH_PAGES,
            });
        }
    }

    /// Background read of up to `pages` pages from `first` into the memfd (Clean, not mapped
    /// anywhere yet: the next faults on them are minor and do no I/O): Absent pages of a file
    /// segment from its file, Paged pages of a zero segment from their slots (they keep their
    /// slots, so a later eviction drops them without writing). Stops at the first page in
    /// another state or whose stripe lock is busy, at a read that fails (a fault on that page
    /// reads it itself, and poisons it if need be), and when the pool has no room for a chunk.
    /// Runs on the prefetcher thread, never on the fault path.
    pub fn prefetch(&self, first: u64, pages: u64) {
        let from_file = self.mapper.is_persistent();
        let paging = self.memory.as_ref().and_then(|m| m.pool.paging.as_ref());
        if !from_file && paging.is_none() {
            return;
        }
        let wanted = if from_file {
            PageState::Absent
        } else {
            PageState::Paged
        };
        let end = (first + pages).min(self.pages.npages());
        let chunk = if from_file {
            PREFETCH_CHUNK_PAGES
        } else {
            PAGE_IN_PREFETCH_CHUNK_PAGES
        };
        let mut buf = vec![0u8; (chunk * PS) as usize];
        let mut lo = first;
        while lo < end {
            let room = self.room();
            let (hi, guards) = self.claim_from(lo, (lo + chunk.min(room)).min(end), |p| {
                self.pages.get(p) == wanted && (from_file || self.slots.get(p).is_some())
            });
            if hi == lo {
                return; // no room, or nothing to read here
            }
            let n = match paging {
                Some(dev) if !from_file => self.prefetch_paged(dev, lo, hi, &mut buf),
                _ => self.prefetch_file(lo, hi, &mut buf),
            };
            for p in lo..lo + n {
                self.set_state(p, PageState::Clean);
            }
            self.counters.prefetched.fetch_add(n, Ordering::Relaxed);
            if from_file {
                self.counters
                    .mapper_bytes_read
                    .fetch_add(n * PS, Ordering::Relaxed);
            } else {
                self.counters.page_ins.fetch_add(n, Ordering::Relaxed);
                if let Some(m) = &self.memory {
                    m.partition.page_ins.fetch_add(n, Ordering::Relaxed);
                }
            }
            drop(guards);
            if lo + n < hi {
                return; // a read failed or a slot is bad: a fault on that page deals with it
            }
            lo = hi;
        }
    }

    /// Prefetch `[lo, hi)` (Absent, stripes held) from the file into the memfd through `buf`.
    /// Returns how many pages from `lo` are now in the memfd; a failed write leaves none of its
    /// pages behind (punched), so no fault takes a partly written page as cached. (Reading with
    /// `O_DIRECT` straight into a daemon mapping of the memfd was measured slower: allocating,
    /// zeroing and pinning each memfd page cost the daemon more than the copy it saves.)
    fn prefetch_file(&self, lo: u64, hi: u64, buf: &mut [u8]) -> u64 {
        let bytes = &mut buf[..((hi - lo) * PS) as usize];
        if self.mapper.read_pages(lo * PS, bytes).is_err() {
            return 0;
        }
        if self.memfd.write_all_at(bytes, lo * PS).is_err() {
            let _ = self.memfd.punch_hole(lo * PS, (hi - lo) * PS);
            return 0;
        }
        hi - lo
    }

    /// Prefetch `[lo, hi)` (Paged, stripes held) from their slots into the memfd, one read per
    /// group of consecutive slots, each checksum verified. Returns how many pages from `lo` are
    /// now in the memfd (a bad slot ends the run before it).
    fn prefetch_paged(&self, dev: &PagingDevice, lo: u64, hi: u64, buf: &mut [u8]) -> u64 {
        let n = self.read_slot_runs(dev, lo, hi - lo, buf);
        if n > 0
            && self
                .memfd
                .write_all_at(&buf[..(n * PS) as usize], lo * PS)
                .is_err()
        {
            let _ = self.memfd.punch_hole(lo * PS, n * PS);
            return 0;
        }
        n
    }

    /// Read the paged-out pages `[first, first+n)` (the caller holds their stripes; each has a
    /// slot) into `buf`, one read per group of consecutive slots, each page's checksum
    /// verified. Returns how many pages, from the first, were read and verified: a bad slot
    /// ends the run before it (its group is read again page by page to keep the good pages in
    /// front of it).
    fn read_slot_runs(&self, paging: &PagingDevice, first: u64, n: u64, buf: &mut [u8]) -> u64 {
        let slot = |i: u64| {
            self.slots
                .get(first + i)
                .expect("a Paged page under its stripe lock has a slot")
        };
        let mut done = 0;
        while done < n {
            let mut end = done + 1;
            while end < n && slot(end).0 == slot(end - 1).0.wrapping_add(1) {
                end += 1;
            }
            let group = &mut buf[(done * PS) as usize..(end * PS) as usize];
            if paging.read_run(slot(done), group).is_err() {
                for i in done..end {
                    let page = &mut buf[(i * PS) as usize..((i + 1) * PS) as usize];
                    if paging.read(slot(i), page).is_err() {
                        return i;
                    }
                }
            }
            done = end;
        }
        n
    }

    /// Write-protect pages `[first, first+n)` in every attached process, before their bytes are
    /// copied out (sync, eviction): a process left with a writable mapping could write after the
    /// copy, and that write would be lost. A process that has exited is skipped. A process whose
    /// range is no longer registered on its uffd (it unregistered or remapped it behind the
    /// daemon's back: ENOENT, EINVAL) loses its attachment: it is taken off the segment and
    /// its faults are refused (SIGBUS) from now on; what it still has mapped it may write, and
    /// such writes are its own (they can be lost). Any other failure (ENOMEM under pressure,
    /// say) is returned with the pid, and the caller must not go on: the pages stay as they
    /// are and the operation is tried again later.
    pub fn protect_everywhere(&self, first: u64, n: u64) -> Result<(), (i32, UffdError)> {
        let mut refused = Vec::new();
        let mut failed = None;
        for a in self
            .clients
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
        {
            match a
                .uffd
                .write_protect(a.base + first * PS, n * PS, Protect::ReadOnly, Wake::Yes)
            {
                Ok(()) => {}
                // Exited: its lease ends by itself.
                Err(e) if e.is_process_exited() => {}
                Err(e) if e.is_unregistered() => {
                    log::warn!(
                        "segment {}: pid {} no longer has pages {first}..{} registered ({e}); \
                         closing its attachment {} (its faults get SIGBUS from now on)",
                        self.info.name,
                        a.pid,
                        first + n,
                        a.id
                    );
                    a.revoke();
                    refused.push(a.id);
                }
                Err(e) => {
                    failed = Some((a.pid, e));
                    break;
                }
            }
        }
        for id in refused {
            self.detach(id);
        }
        failed.map_or(Ok(()), Err)
    }

    /// Pin `[first, first+n)`: fault every page into the memfd and never evict it. Fails,
    /// changing nothing, if the partition's max would be exceeded.
    pub fn pin(&self, first: u64, n: u64) -> Result<u64, IoError> {
        let Some(m) = &self.memory else {
            return Err(IoError::PinUnsupported {
                segment: self.info.name.clone(),
            });
        };
        if self.is_released() {
            return Err(IoError::PinUnsupported {
                segment: self.info.name.clone(),
            });
        }
        let need = (first..first + n)
            .filter(|&p| self.pages.flags(p) & PINNED == 0)
            .count() as u64;
        // The partition's max, and pool-wide: what the other partitions' mins leave, less what
        // everyone has pinned already.
        let limits = m.partition.limits();
        let parts = m.pool.partitions();
        let other_mins: u64 = parts
            .iter()
            .filter(|p| p.name != m.partition.name)
            .map(|p| p.limits().min_pages)
            .sum();
        let pinned_all: u64 = parts.iter().map(|p| p.pinned.load(Ordering::Relaxed)).sum();
        let pinned = m.partition.pinned.load(Ordering::Relaxed);
        let cap = limits
            .max_pages
            .min(m.pool.budget_pages.saturating_sub(other_mins));
        let pool_room = m
            .pool
            .budget_pages
            .saturating_sub(other_mins)
            .saturating_sub(pinned_all);
        if pinned + need > cap || need > pool_room {
            return Err(IoError::PinLimit {
                segment: self.info.name.clone(),
                partition: m.partition.name.clone(),
                want_bytes: need * PS,
                pinned_bytes: pinned * PS,
                cap_bytes: cap.min(pinned + pool_room) * PS,
            });
        }
        let mut buf = vec![0u8; PSU];
        let mut newly = Vec::new();
        let result = (|| {
            for p in first..first + n {
                if !self.pages.get(p).is_resident() {
                    m.pool.wait_for_room_in(&m.partition);
                }
                let _g = lock(self.stripe(p));
                match self.pages.get(p) {
                    PageState::Poisoned => return Err(self.poisoned_err(p)),
                    PageState::Absent | PageState::Paged => {
                        // load_whole poisons a page whose data cannot be read, as a fault would.
                        self.load_whole(p, &mut buf)?;
                        self.install_page(p, &buf)?;
                        self.set_state(p, PageState::Clean);
                    }
                    PageState::Clean | PageState::Dirty => {}
                }
                if self.pages.set_pinned(p, true) {
                    m.partition.pinned.fetch_add(1, Ordering::Relaxed);
                    newly.push(p);
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            // Fail changing nothing: unpin what this call pinned.
            for p in newly {
                let _g = lock(self.stripe(p));
                if self.pages.set_pinned(p, false) {
                    m.partition.pinned.fetch_sub(1, Ordering::Relaxed);
                }
            }
            return Err(e);
        }
        Ok(newly.len() as u64)
    }

    /// Unpin `[first, first+n)`; returns how many pages were pinned.
    pub fn unpin(&self, first: u64, n: u64) -> u64 {
        let Some(m) = &self.memory else { return 0 };
        let mut k = 0;
        for p in first..first + n {
            let _g = lock(self.stripe(p));
            if self.pages.set_pinned(p, false) {
                m.partition.pinned.fetch_sub(1, Ordering::Relaxed);
                k += 1;
            }
        }
        k
    }

    /// The state and paging slot of one page, for `segment stat --page`.
    pub fn page_info(&self, page: u64) -> Option<(PageState, u8, Option<Slot>)> {
        if page >= self.pages.npages() {
            return None;
        }
        let slot = self.slots.get(page);
        Some((self.pages.get(page), self.pages.flags(page), slot))
    }

    /// Give the segment's memory back to the pool (it is being removed).
    pub fn release(&self) {
        let Some(m) = &self.memory else { return };
        // Under the sync lock: an eviction in flight either finished (its slot is in the table)
        // or sees the segment released and touches nothing.
        let _sync = lock(&self.sync_lock);
        m.pool.release_pages(&m.partition, self.take_accounted());
        m.partition.pinned.fetch_sub(
            self.pages
                .pinned()
                .min(m.partition.pinned.load(Ordering::Relaxed)),
            Ordering::Relaxed,
        );
        if let Some(paging) = &m.pool.paging {
            for slot in self.slots.take_all() {
                paging.free(slot);
            }
        }
        m.pool.unregister(self.info.id);
    }
}

impl Resident for Segment {
    fn clock_visit(self: Arc<Self>, page: u64, max: u64) -> ClockVisit {
        Segment::clock_visit(&self, page, max)
    }

    fn is_resident(&self, page: u64) -> bool {
        self.pages.get(page).is_resident()
    }
}

impl Prefetch for Segment {
    fn prefetch(&self, first: u64, pages: u64) {
        Segment::prefetch(self, first, pages);
    }
}
