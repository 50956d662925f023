//! Copying a volume's blocks out of its cache into memory the volume does not back: a VM's
//! guest memory (anonymous memory its VMM registered `MISSING`), which is filled with
//! `UFFDIO_COPY` rather than mapped with `UFFDIO_CONTINUE`. The storage reads are the volume's
//! own (runs, coalescing with every other reader, read-ahead, checksums, poison), so N guests
//! restored from one image cost one storage read per block.
//!
//! A block is *pinned* while its bytes are copied out of the cache: the evictor leaves it alone
//! (a punched frame would read as zeros, which a guest must never get). Pins are taken and
//! dropped under the block's stripe lock, where the evictor checks them.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{lock, Block, Volume, VolumeError, PENDING_WAIT, PS};
use crate::memory::Prefetch;

/// How long a copy sleeps between looks at a block another reader is bringing in.
const PENDING_POLL: Duration = Duration::from_micros(200);

impl Volume {
    /// Bring block `b` into the cache (one storage read for a run of up to `max` blocks, or
    /// waiting, at most PENDING_WAIT, for a read already in flight) and pin it and the Present
    /// blocks after it, at most `max` in all and below `limit`. Returns how many blocks were
    /// pinned from `b`: copy them out with `take_pinned`.
    pub fn pin_run(
        &self,
        b: u64,
        max: u64,
        limit: u64,
        scratch: &mut [u8],
    ) -> Result<u64, VolumeError> {
        assert!(b < limit && limit <= self.blocks, "block {b} of {limit}");
        let deadline = Instant::now() + PENDING_WAIT;
        loop {
            let g = lock(self.stripe(b));
            match self.block_state(b) {
                Block::Present => {
                    self.pin(b);
                    drop(g);
                    break;
                }
                Block::Poisoned => {
                    return Err(VolumeError::Poisoned {
                        volume: self.info.name.clone(),
                        block: b,
                    })
                }
                Block::Pending => {
                    drop(g);
                    if Instant::now() > deadline {
                        return Err(VolumeError::Timeout {
                            waited: PENDING_WAIT,
                            volume: self.info.name.clone(),
                            block: b,
                        });
                    }
                    self.counters
                        .coalesced_waits
                        .fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(PENDING_POLL);
                }
                Block::Absent | Block::Unreadable => {
                    self.set(b, Block::Pending);
                    drop(g);
                    let (lo, n) = self.claim_run(b, self.run_blocks(max, scratch));
                    // `b` is Present or Poisoned now (or evicted again): the next turn says.
                    self.complete_fill(lo, n, scratch, Some(b));
                }
            }
        }
        let mut n = 1;
        let end = (b + max).min(limit);
        while b + n < end {
            let x = b + n;
            let _g = lock(self.stripe(x));
            if self.block_state(x) != Block::Present {
                break;
            }
            self.pin(x);
            n += 1;
        }
        Ok(n)
    }

    /// Copy the pinned blocks `[b, b+n)` out of the cache into `buf` and unpin them.
    pub fn take_pinned(&self, b: u64, n: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        let read = self
            .memfd
            .read_exact_at(&mut buf[..(n * PS) as usize], b * PS)
            .map_err(|source| VolumeError::Cache {
                volume: self.info.name.clone(),
                source,
            });
        for x in b..b + n {
            let _g = lock(self.stripe(x));
            let was = self.pins.cell(x).fetch_sub(1, Ordering::AcqRel);
            assert!(was > 0, "block {x} unpinned more than pinned");
        }
        if read.is_ok() {
            self.counters.private_copies.fetch_add(n, Ordering::Relaxed);
        }
        read
    }

    /// Pin Present block `x` (caller holds its stripe lock).
    fn pin(&self, x: u64) {
        let was = self.pins.cell(x).fetch_add(1, Ordering::AcqRel);
        assert!(was < u8::MAX, "block {x} pinned {was} times");
    }

    /// Have the prefetcher read on past `end` for a sequential copier whose stream reaches
    /// `reach` blocks and whose blocks end at `limit` (see `read_ahead`).
    pub fn copy_read_ahead(self: &Arc<Self>, limit: u64, end: u64, reach: u64) {
        let me: Arc<dyn Prefetch> = Arc::clone(self) as Arc<dyn Prefetch>;
        self.read_ahead_to(&me, limit, end, reach);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::ClockVisit;
    use pagemesh_proto::VolumeInfo;
    use pagemesh_store::sums::BlockSums;

    /// An image of `blocks` blocks, each filled with its own number.
    fn image(dir: &std::path::Path, blocks: u64) -> (std::path::PathBuf, Vec<u8>) {
        let data: Vec<u8> = (0..blocks * PS).map(|i| (i / PS) as u8 ^ 0x5a).collect();
        let p = dir.join("img");
        std::fs::write(&p, &data).unwrap();
        (p, data)
    }

    fn open(p: &std::path::Path, len: u64) -> Volume {
        let info = VolumeInfo {
            name: "v".into(),
            path: p.display().to_string(),
            size_bytes: len,
        };
        Volume::open(info, 1, None).unwrap()
    }

    #[test]
    fn a_pinned_block_is_not_evicted_until_copied_out() {
        let dir = tempfile::tempdir().unwrap();
        let (p, data) = image(dir.path(), 64);
        let v = open(&p, data.len() as u64);
        let mut scratch = vec![0u8; (32 * PS) as usize];
        // One storage read brings a run in; the copy pins the 4 blocks it asked for.
        let n = v.pin_run(8, 4, 64, &mut scratch).unwrap();
        assert_eq!(n, 4);
        assert!(matches!(v.clock_visit(8), ClockVisit::Keep));
        assert!(matches!(v.clock_visit(11), ClockVisit::Keep));
        let mut out = vec![0u8; (4 * PS) as usize];
        v.take_pinned(8, n, &mut out).unwrap();
        assert_eq!(out, data[(8 * PS) as usize..(12 * PS) as usize]);
        assert!(matches!(v.clock_visit(8), ClockVisit::Evicted(1)));
        // Evicted, it is read again (never zeros); the run stops at the limit.
        assert_eq!(v.pin_run(8, 16, 10, &mut scratch).unwrap(), 2);
        v.take_pinned(8, 2, &mut out).unwrap();
        assert_eq!(
            out[..(2 * PS) as usize],
            data[(8 * PS) as usize..(10 * PS) as usize]
        );
    }

    #[test]
    fn a_block_that_fails_its_checksum_is_poisoned_and_its_neighbours_served() {
        let dir = tempfile::tempdir().unwrap();
        let (p, mut data) = image(dir.path(), 64);
        BlockSums::compute(&p)
            .unwrap()
            .write(&BlockSums::sidecar(&p))
            .unwrap();
        data[(20 * PS + 7) as usize] ^= 1;
        std::fs::write(&p, &data).unwrap();
        let v = open(&p, data.len() as u64);
        assert!(v.is_checksummed());
        let mut scratch = vec![0u8; (32 * PS) as usize];
        // The run read with block 16 covers block 20: read again block by block, 20 is left
        // Unreadable (nobody asked for it), the others are served.
        let n = v.pin_run(16, 4, 64, &mut scratch).unwrap();
        assert_eq!(n, 4);
        v.take_pinned(16, n, &mut scratch).unwrap();
        assert_eq!(
            &scratch[..(4 * PS) as usize],
            &data[(16 * PS) as usize..(20 * PS) as usize]
        );
        assert!(matches!(
            v.pin_run(20, 1, 64, &mut scratch),
            Err(VolumeError::Poisoned { block: 20, .. })
        ));
        assert_eq!(v.poisoned_blocks(), 1);
    }
}
