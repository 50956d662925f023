//! The node's per-page state for one segment, sparse so that creating a 1 TiB segment is O(1).

use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::OnceLock;

/// State of one page in this node's page cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum PageState {
    /// Not in the memfd (a hole): dormant, or not yet read from the mapper.
    Absent = 0,
    /// In the memfd, equal to the mapper's copy; mapped write-protected.
    Clean = 1,
    /// In the memfd and written since the last sync; mapped writable.
    Dirty = 2,
    /// Its data could not be read: every access gets SIGBUS until cleared.
    Poisoned = 3,
}

impl PageState {
    fn from_u8(v: u8) -> PageState {
        match v {
            0 => PageState::Absent,
            1 => PageState::Clean,
            2 => PageState::Dirty,
            3 => PageState::Poisoned,
            _ => unreachable!("invalid page state {v}"),
        }
    }
}

const CHUNK_PAGES: u64 = 1 << 15;

/// Page states plus running counts. Writers must hold the page's stripe lock (see
/// `Segment`); readers may look without it for statistics and scans.
pub struct PageTable {
    chunks: Box<[OnceLock<Box<[AtomicU8]>>]>,
    npages: u64,
    resident: AtomicU64,
    dirty: AtomicU64,
    poisoned: AtomicU64,
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
        }
    }

    pub fn npages(&self) -> u64 {
        self.npages
    }

    pub fn get(&self, page: u64) -> PageState {
        assert!(page < self.npages, "page {page} out of range");
        match self.chunks[(page / CHUNK_PAGES) as usize].get() {
            None => PageState::Absent,
            Some(c) => PageState::from_u8(c[(page % CHUNK_PAGES) as usize].load(Ordering::Acquire)),
        }
    }

    /// Set a page's state (caller holds the page's stripe lock). Returns the old state.
    pub fn set(&self, page: u64, new: PageState) -> PageState {
        assert!(page < self.npages, "page {page} out of range");
        let chunk = self.chunks[(page / CHUNK_PAGES) as usize]
            .get_or_init(|| (0..CHUNK_PAGES).map(|_| AtomicU8::new(0)).collect());
        let old = PageState::from_u8(
            chunk[(page % CHUNK_PAGES) as usize].swap(new as u8, Ordering::AcqRel),
        );
        self.account(old, false);
        self.account(new, true);
        old
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

    /// Pages currently in `state`, in order, from allocated chunks only (racy snapshot: callers
    /// re-check under the stripe lock).
    pub fn pages_in(&self, state: PageState) -> Vec<u64> {
        let mut out = Vec::new();
        for (ci, chunk) in self.chunks.iter().enumerate() {
            if let Some(c) = chunk.get() {
                for (i, s) in c.iter().enumerate() {
                    if s.load(Ordering::Relaxed) == state as u8 {
                        out.push(ci as u64 * CHUNK_PAGES + i as u64);
                    }
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
    }
}
