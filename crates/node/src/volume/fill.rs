//! Bringing a volume's blocks into its cache: storage reads in runs (claimed Pending, read with
//! one `pread`, published Present, the faults queued on them served), and the read-ahead that
//! keeps storage reads in flight ahead of a sequential reader, on the pool's prefetcher thread.
//!
//! A run whose read fails is read again block by block, so only the blocks that cannot be read
//! are lost: such a block is poisoned when a fault (or a segment read) asked for it, and left
//! Absent when only read-ahead did (the fault that reaches it reads it itself, and poisons it
//! then). No block is ever published before its bytes are in the cache.

use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use pagemesh_types::PAGE_SIZE;

use super::{finish, Block, Volume, VolumeError};
use crate::memory::{Prefetch, PrefetchJob};
use crate::runs::MAX_RUN_PAGES;
use crate::segment::{lock, Attachment};

const PS: u64 = PAGE_SIZE;
/// Blocks per read of the read-ahead (256 KiB): a reader waiting on the first blocks of a
/// read-ahead window gets them after one such read, not after the whole window.
const READ_AHEAD_CHUNK_BLOCKS: u64 = 64;
/// A stream reads ahead once its window has reached this many blocks (a few faults in a row
/// continued it): a random reader never does.
const READ_AHEAD_MIN_WINDOW: u64 = 64;

impl Volume {
    /// How many blocks a fault whose stream reaches `reach` blocks reads with one storage
    /// read: as far as the stream has earned, at least READAHEAD_BLOCKS (the short runs that
    /// were always taken, inside the pool's documented slack), never more than the pool has
    /// room for below its budget beyond that, nor than `scratch` holds.
    pub(super) fn run_blocks(&self, reach: u64, scratch: &[u8]) -> u64 {
        let room = self
            .memory
            .as_ref()
            .map_or(u64::MAX, |m| m.pool.room_pages());
        reach
            .min(room)
            .max(super::READAHEAD_BLOCKS)
            .min(scratch.len() as u64 / PS)
            .max(1)
    }

    /// Read blocks `[b, b+n)` of the image into `buf` with one read (zero past the end of
    /// the file).
    pub(super) fn read_storage(&self, b: u64, n: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        let off = b * PS;
        let buf = &mut buf[..(n * PS) as usize];
        let want = (self.info.size_bytes - off).min(n * PS) as usize;
        buf[want..].fill(0);
        self.counters.storage_reads.fetch_add(1, Ordering::Relaxed);
        self.file
            .read_exact_at(&mut buf[..want], off)
            .map_err(|source| VolumeError::Storage {
                volume: self.info.name.clone(),
                path: self.info.path.clone(),
                block: b,
                source,
            })?;
        self.counters
            .storage_bytes_read
            .fetch_add(want as u64, Ordering::Relaxed);
        if let Some(sums) = &self.sums {
            for (i, page) in buf.chunks_exact(PS as usize).enumerate() {
                if !sums.verify(b + i as u64, page) {
                    return Err(VolumeError::Checksum {
                        volume: self.info.name.clone(),
                        path: self.info.path.clone(),
                        block: b + i as u64,
                    });
                }
            }
        }
        // The blocks now live in the volume cache: do not keep a second copy in the kernel's
        // page cache of the image (best effort; a failure only costs memory).
        let _ = pagemesh_uffd::fileio::drop_cached(&self.file, off, want as u64);
        Ok(())
    }

    /// Read blocks `[b, b+n)` from storage into the cache memfd (not yet published).
    fn read_into_cache(&self, b: u64, n: u64, scratch: &mut [u8]) -> Result<(), VolumeError> {
        self.read_storage(b, n, scratch)?;
        self.memfd
            .write_all_at(&scratch[..(n * PS) as usize], b * PS)
            .map_err(|source| {
                // Leave no partly written frame behind: the blocks are not Present, so nothing
                // would ever account for it or evict it.
                let _ = self.memfd.punch_hole(b * PS, n * PS);
                VolumeError::Cache {
                    volume: self.info.name.clone(),
                    source,
                }
            })
    }

    /// Claim the Absent blocks next to `b` (already Pending) for one storage read of at most
    /// `max` blocks: after it, or, when the block after it is not Absent (a backward scan),
    /// before it. Returns the run `[lo, lo+n)`, all Pending and owned by the caller.
    pub(super) fn claim_run(&self, b: u64, max: u64) -> (u64, u64) {
        let mut n = 1;
        while n < max && b + n < self.blocks && self.claim(b + n) {
            n += 1;
        }
        let mut lo = b;
        while n < max && lo > 0 && self.claim(lo - 1) {
            lo -= 1;
            n += 1;
        }
        (lo, n)
    }

    /// Make block `blk` Pending if it is Absent; whether it was.
    fn claim(&self, blk: u64) -> bool {
        let _g = lock(self.stripe(blk));
        let absent = self.block_state(blk) == Block::Absent;
        if absent {
            self.set(blk, Block::Pending);
        }
        absent
    }

    /// Blocks `[b, b+n)` are Pending and this thread owns their read: read them with one
    /// storage read (block by block if that fails), publish them, serve every fault that
    /// waited on them. A block that cannot be read is poisoned if it is `wanted` or a fault
    /// waits on it, and Unreadable otherwise. `scratch` holds at least `n` pages.
    pub(super) fn complete_fill(&self, b: u64, n: u64, scratch: &mut [u8], wanted: Option<u64>) {
        match self.read_into_cache(b, n, scratch) {
            Ok(()) => (b..b + n).for_each(|blk| self.publish(blk, Ok(()), wanted)),
            Err(e) if n == 1 => self.publish(b, Err(e), wanted),
            Err(e) => {
                log::warn!("{e}; reading blocks {b}..{} one by one", b + n);
                for blk in b..b + n {
                    let r = self.read_into_cache(blk, 1, scratch);
                    self.publish(blk, r, wanted);
                }
            }
        }
    }

    /// End the read of Pending block `blk`: Present (its bytes are in the cache) or, on an
    /// error, Poisoned or Unreadable (see `complete_fill`); then serve or refuse its waiters.
    fn publish(&self, blk: u64, read: Result<(), VolumeError>, wanted: Option<u64>) {
        let g = lock(self.stripe(blk));
        debug_assert_eq!(self.block_state(blk), Block::Pending);
        let waiters = lock(&self.waiters).remove(&blk).unwrap_or_default();
        match &read {
            Ok(()) => {
                self.set(blk, Block::Present);
                for (a, _, _) in &waiters {
                    a.mark_mapped(blk, 1); // before the lock goes, as in `resolve`
                }
            }
            Err(_) if waiters.is_empty() && wanted != Some(blk) => self.set(blk, Block::Unreadable),
            Err(e) => {
                self.set(blk, Block::Poisoned);
                log::error!("{e}; block {blk} is poisoned for every segment on the volume");
            }
        }
        drop(g);
        for (a, f, reach) in &waiters {
            match read {
                Ok(()) => finish(a, f, self.map_around(a, f, *reach)),
                Err(_) => a.refuse(f, &format_args!("the storage read of block {blk} failed")),
            }
        }
    }

    /// A fault of a stream reaching `reach` blocks was served with a run that ends at `end`:
    /// if the stream is a sequential one and the blocks cached or in flight ahead of `end`
    /// cover less than its next window, have the prefetcher read on, so the reader's next
    /// faults find their blocks Present (or already being read) instead of waiting for a
    /// storage read of their own.
    pub(super) fn read_ahead(&self, att: &Attachment, end: u64, reach: u64) {
        let Some(v) = &att.segment.volume else { return };
        let me: Arc<dyn Prefetch> = Arc::clone(v) as Arc<dyn Prefetch>;
        self.read_ahead_to(&me, (att.len / PS).min(self.blocks), end, reach);
    }

    /// `read_ahead` for a reader whose blocks end at `limit`; `me` is this volume, for the
    /// prefetcher's job.
    pub(super) fn read_ahead_to(&self, me: &Arc<dyn Prefetch>, limit: u64, end: u64, reach: u64) {
        let Some(m) = &self.memory else { return };
        if reach < READ_AHEAD_MIN_WINDOW {
            return;
        }
        let window = (2 * reach).min(MAX_RUN_PAGES);
        let limit = limit.min(self.blocks);
        let ahead = (end + window).min(limit);
        let mut first = end;
        while first < ahead && self.block_state(first) != Block::Absent {
            first += 1;
        }
        if first == ahead || first >= end + reach {
            return; // the next window is there or on its way
        }
        if ahead - first < READ_AHEAD_CHUNK_BLOCKS && ahead < limit {
            return; // a sliver: the next fault asks for it with more
        }
        m.pool.request_prefetch(PrefetchJob {
            segment: Arc::downgrade(me),
            first,
            pages: ahead - first,
        });
    }

    /// On the prefetcher thread: read the Absent blocks of `[first, first+n)` into the cache.
    /// They are all claimed Pending first (no more than the pool has room for), so a fault
    /// that reaches one meanwhile waits for this read instead of starting its own; then they
    /// are read in chunks of READ_AHEAD_CHUNK_BLOCKS, each published as soon as it is in.
    pub fn read_ahead_now(&self, first: u64, n: u64) {
        let room = self
            .memory
            .as_ref()
            .map_or(u64::MAX, |m| m.pool.room_pages());
        let end = (first + n.min(room)).min(self.blocks);
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for blk in first..end {
            if !self.claim(blk) {
                continue;
            }
            match runs.last_mut() {
                Some((lo, len)) if *lo + *len == blk && *len < READ_AHEAD_CHUNK_BLOCKS => *len += 1,
                _ => runs.push((blk, 1)),
            }
        }
        if runs.is_empty() {
            return;
        }
        let mut buf = vec![0u8; (READ_AHEAD_CHUNK_BLOCKS * PS) as usize];
        for (lo, len) in runs {
            self.complete_fill(lo, len, &mut buf, None);
        }
    }
}

impl Prefetch for Volume {
    fn prefetch(&self, first: u64, pages: u64) {
        self.read_ahead_now(first, pages);
    }
}
