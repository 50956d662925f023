//! The node's per-page state for one segment, sparse so that creating a 1 TiB segment is O(1).
//!
//! One byte a page: the state in the low bits, and two flags: REFERENCED (faulted since the
//! evictor's clock hand last passed; a second chance) and PINNED (never evicted).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};

use pagemesh_store::paging::Slot;
use std::sync::OnceLock;

/// State of one page in this node's page cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PageState {
    /// Not in the memfd (a hole): dormant, or not yet read from the mapper.
    Absent = 0,
    /// In the memfd, equal to the mapper's copy (or to its paging slot); mapped write-protected.
    Clean = 1,
    /// In the memfd and written since the last sync or page-out; mapped writable.
    Dirty = 2,
    /// Its data could not be read: every access gets SIGBUS until cleared.
    Poisoned = 3,
    /// Not in the memfd; its data is in a paging-device slot.
    Paged = 4,
}

impl PageState {
    fn from_u8(v: u8) -> PageState {
        match v & STATE_MASK {
            0 => PageState::Absent,
            1 => PageState::Clean,
            2 => PageState::Dirty,
            3 => PageState::Poisoned,
            4 => PageState::Paged,
            other => unreachable!("invalid page state {other}"),
        }
    }

    /// In the memfd (counts against the memory budget).
    pub fn is_resident(self) -> bool {
        matches!(self, PageState::Clean | PageState::Dirty)
    }
}

const STATE_MASK: u8 = 0x0f;
/// Faulted since the clock hand last passed.
pub const REFERENCED: u8 = 0x80;
/// Never evicted.
pub const PINNED: u8 = 0x40;

const CHUNK_PAGES: u64 = 1 << 15;

/// Page states plus running counts. Writers must hold the page's stripe lock (see
/// `Segment`); readers may look without it for statistics and scans.
pub struct PageTable {
    chunks: Box<[OnceLock<Box<[AtomicU8]>>]>,
    npages: u64,
    resident: AtomicU64,
    dirty: AtomicU64,
    poisoned: AtomicU64,
    paged: AtomicU64,
    pinned: AtomicU64,
}

impl PageTable {
    pub fn new(npages: u64) -> PageTable {
        let nchunks = npages.div_ceil(CHUNK_PAGES) as usize;
        PageTable {
            chunks: (0..nchunks).map(|_| OnceLock::new()).collect(),
            npages,
            resident: AtomicU64::new(0),
            dirty: AtomicU64::new(0),
            poisoned: AtomicU64::new(0),
            paged: AtomicU64::new(0),
            pinned: AtomicU64::new(0),
        }
    }

    pub fn npages(&self) -> u64 {
        self.npages
    }

    fn cell(&self, page: u64) -> Option<&AtomicU8> {
        assert!(page < self.npages, "page {page} out of range");
        self.chunks[(page / CHUNK_PAGES) as usize]
            .get()
            .map(|c| &c[(page % CHUNK_PAGES) as usize])
    }

    fn cell_init(&self, page: u64) -> &AtomicU8 {
        assert!(page < self.npages, "page {page} out of range");
        let chunk = self.chunks[(page / CHUNK_PAGES) as usize]
            .get_or_init(|| (0..CHUNK_PAGES).map(|_| AtomicU8::new(0)).collect());
        &chunk[(page % CHUNK_PAGES) as usize]
    }

    pub fn get(&self, page: u64) -> PageState {
        self.cell(page).map_or(PageState::Absent, |c| {
            PageState::from_u8(c.load(Ordering::Acquire))
        })
    }

    /// The flag bits of a page.
    pub fn flags(&self, page: u64) -> u8 {
        self.cell(page)
            .map_or(0, |c| c.load(Ordering::Acquire) & !STATE_MASK)
    }

    /// Set a page's state, keeping its flags (caller holds the page's stripe lock). Returns the
    /// old state.
    pub fn set(&self, page: u64, new: PageState) -> PageState {
        let cell = self.cell_init(page);
        let old = cell
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                Some((v & !STATE_MASK) | new as u8)
            })
            .expect("always Some");
        let old = PageState::from_u8(old);
        self.account(old, false);
        self.account(new, true);
        old
    }

    /// Mark a page referenced (any thread, no lock: a hint for the clock).
    pub fn touch(&self, page: u64) {
        let cell = self.cell_init(page);
        if cell.load(Ordering::Relaxed) & REFERENCED == 0 {
            cell.fetch_or(REFERENCED, Ordering::Relaxed);
        }
    }

    /// Clear the referenced flag; returns whether it was set.
    pub fn take_referenced(&self, page: u64) -> bool {
        self.cell(page)
            .is_some_and(|c| c.fetch_and(!REFERENCED, Ordering::Relaxed) & REFERENCED != 0)
    }

    /// Pin or unpin (caller holds the stripe lock). Returns whether the flag changed.
    pub fn set_pinned(&self, page: u64, pinned: bool) -> bool {
        let cell = self.cell_init(page);
        let old = if pinned {
            cell.fetch_or(PINNED, Ordering::AcqRel)
        } else {
            cell.fetch_and(!PINNED, Ordering::AcqRel)
        };
        let changed = (old & PINNED != 0) != pinned;
        if changed {
            if pinned {
                self.pinned.fetch_add(1, Ordering::Relaxed);
            } else {
                self.pinned.fetch_sub(1, Ordering::Relaxed);
            }
        }
        changed
    }

    fn account(&self, s: PageState, add: bool) {
        let bump = |c: &AtomicU64| {
            if add {
                c.fetch_add(1, Ordering::Relaxed);
            } else {
                c.fetch_sub(1, Ordering::Relaxed);
            }
        };
        match s {
            PageState::Absent => {}
            PageState::Clean => bump(&self.resident),
            PageState::Dirty => {
                bump(&self.resident);
                bump(&self.dirty);
            }
            PageState::Poisoned => bump(&self.poisoned),
            PageState::Paged => bump(&self.paged),
        }
    }

    pub fn resident(&self) -> u64 {
        self.resident.load(Ordering::Relaxed)
    }

    pub fn dirty(&self) -> u64 {
        self.dirty.load(Ordering::Relaxed)
    }

    pub fn poisoned(&self) -> u64 {
        self.poisoned.load(Ordering::Relaxed)
    }

    pub fn paged(&self) -> u64 {
        self.paged.load(Ordering::Relaxed)
    }

    pub fn pinned(&self) -> u64 {
        self.pinned.load(Ordering::Relaxed)
    }

    /// Pages currently in `state`, in order, from allocated chunks only (racy snapshot: callers
    /// re-check under the stripe lock).
    pub fn pages_in(&self, state: PageState) -> Vec<u64> {
        let mut out = Vec::new();
        for (ci, chunk) in self.chunks.iter().enumerate() {
            if let Some(c) = chunk.get() {
                for (i, s) in c.iter().enumerate() {
                    if s.load(Ordering::Relaxed) & STATE_MASK == state as u8 {
                        out.push(ci as u64 * CHUNK_PAGES + i as u64);
                    }
                }
            }
        }
        out
    }
}

/// The paging slot of each page (4 bytes a page, in chunks allocated on first use): compact
/// where a map would cost ~32 bytes a paged-out page. Writers hold the page's stripe lock.
pub struct SlotTable {
    chunks: Box<[OnceLock<Box<[AtomicU32]>>]>,
}

impl SlotTable {
    pub fn new(npages: u64) -> SlotTable {
        SlotTable {
            chunks: (0..npages.div_ceil(CHUNK_PAGES))
                .map(|_| OnceLock::new())
                .collect(),
        }
    }

    /// The page's slot, if it has one.
    pub fn get(&self, page: u64) -> Option<Slot> {
        let v = self.chunks[(page / CHUNK_PAGES) as usize].get()?[(page % CHUNK_PAGES) as usize]
            .load(Ordering::Acquire);
        v.checked_sub(1).map(Slot)
    }

    pub fn set(&self, page: u64, slot: Option<Slot>) {
        let chunk = self.chunks[(page / CHUNK_PAGES) as usize]
            .get_or_init(|| (0..CHUNK_PAGES).map(|_| AtomicU32::new(0)).collect());
        let v = slot.map_or(0, |s| {
            s.0.checked_add(1)
                .expect("slot numbers stay below u32::MAX")
        });
        chunk[(page % CHUNK_PAGES) as usize].store(v, Ordering::Release);
    }

    /// Remove and return the page's slot (atomically: of two racing takers, one gets it).
    pub fn take(&self, page: u64) -> Option<Slot> {
        let chunk = self.chunks[(page / CHUNK_PAGES) as usize].get()?;
        chunk[(page % CHUNK_PAGES) as usize]
            .swap(0, Ordering::AcqRel)
            .checked_sub(1)
            .map(Slot)
    }

    /// Remove and return every slot (the segment is going away).
    pub fn take_all(&self) -> Vec<Slot> {
        let mut out = Vec::new();
        for chunk in self.chunks.iter().filter_map(OnceLock::get) {
            for c in chunk.iter() {
                if let Some(s) = c.swap(0, Ordering::AcqRel).checked_sub(1) {
                    out.push(Slot(s));
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_follow_transitions() {
        let t = PageTable::new(1 << 28); // 1 TiB of pages: O(1) to create
        assert_eq!(t.get(12345), PageState::Absent);
        t.set(5, PageState::Clean);
        t.set(6, PageState::Dirty);
        t.set(1 << 27, PageState::Poisoned);
        assert_eq!((t.resident(), t.dirty(), t.poisoned()), (2, 1, 1));
        assert_eq!(t.set(5, PageState::Dirty), PageState::Clean);
        assert_eq!(t.pages_in(PageState::Dirty), vec![5, 6]);
        t.set(6, PageState::Clean);
        t.set(1 << 27, PageState::Absent);
        assert_eq!((t.resident(), t.dirty(), t.poisoned()), (2, 1, 0));
        t.set(6, PageState::Paged);
        assert_eq!((t.resident(), t.paged()), (1, 1));
    }

    #[test]
    fn slot_table_roundtrips() {
        let t = SlotTable::new(1 << 20);
        assert_eq!(t.get(7), None);
        t.set(7, Some(Slot(0)));
        t.set(70_000, Some(Slot(41)));
        assert_eq!((t.get(7), t.get(70_000)), (Some(Slot(0)), Some(Slot(41))));
        t.set(7, None);
        assert_eq!(t.take_all(), vec![Slot(41)]);
        assert_eq!(t.get(70_000), None);
    }

    #[test]
    fn flags_survive_state_changes() {
        let t = PageTable::new(10);
        t.set(3, PageState::Clean);
        t.touch(3);
        assert!(t.set_pinned(3, true));
        assert!(!t.set_pinned(3, true));
        t.set(3, PageState::Dirty);
        assert_eq!(t.get(3), PageState::Dirty);
        assert_eq!(t.flags(3), REFERENCED | PINNED);
        assert!(t.take_referenced(3));
        assert!(!t.take_referenced(3));
        assert_eq!(t.pinned(), 1);
        assert!(t.set_pinned(3, false));
        assert_eq!(t.flags(3), 0);
        assert_eq!(t.pages_in(PageState::Dirty), vec![3]);
    }
}
