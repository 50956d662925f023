//! Read-only volumes and their node-wide page cache: shortcut I/O in user space.
//!
//! A volume is a raw image file. Its cache is one memfd: each block (page) is read from storage
//! at most once per node and every process of every segment on the volume maps that one frame,
//! through a *private* mapping resolved with `UFFDIO_CONTINUE`; a write then copies the page for
//! the writing process alone, with no uffd event (UFFD-NOTES pitfall 8). Writes are therefore
//! private to the process, like a VM's writes to its own disk overlay in memory.
//!
//! Block states: Absent -> Pending (one storage read in flight; every fault that arrives meanwhile
//! is queued on the block, not blocked in a worker) -> Present, or Poisoned if the read failed.
//! Below the sharing threshold (`--share-threshold N`: a block is shared from its N-th fault on) a
//! fault gets a private copy read straight from storage, and the block stays out of the cache.

use std::collections::HashMap;
use std::fs::File;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use pagemesh_proto::{VolumeInfo, VolumeStat};
use pagemesh_store::sums::BlockSums;
use pagemesh_types::PAGE_SIZE;
use pagemesh_uffd::fault::{self, install};
use pagemesh_uffd::{Fault, Memfd, Protect, Source, UffdError, Wake};

pub use crate::load::VolumeError;
use crate::memory::{ClockVisit, Partition, Pool, Resident};
use crate::segment::SharedFrames;
use crate::segment::{lock, Attachment};
use std::sync::Weak;

mod copy;
mod fill;

pub const PS: u64 = PAGE_SIZE;
const PSU: usize = PAGE_SIZE as usize;
const STRIPES: u64 = 256;
/// Fewest blocks one storage read of a fault tries to bring in; a sequential reader's stream
/// reaches further (see `runs`).
pub const READAHEAD_BLOCKS: u64 = 16;
/// Present blocks one fault maps at least (fault-around), forward, and at most backward;
/// forward it maps as far as the faulting stream's window.
const FAULT_AROUND_BLOCKS: u64 = 16;
const CHUNK: u64 = 1 << 15;
/// Bound on a segment read waiting for a block another fault is reading.
pub(crate) const PENDING_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Block {
    Absent = 0,
    Pending = 1,
    Present = 2,
    Poisoned = 3,
    /// Absent, and its last storage read failed when only read-ahead asked for it: faults
    /// read it (and poison it if it fails again), runs and read-ahead leave it alone.
    Unreadable = 4,
}

/// Sparse per-block bytes (state, access history).
struct ByteTable {
    chunks: Box<[OnceLock<Box<[AtomicU8]>>]>,
}

impl ByteTable {
    fn new(n: u64) -> ByteTable {
        ByteTable {
            chunks: (0..n.div_ceil(CHUNK)).map(|_| OnceLock::new()).collect(),
        }
    }
    fn cell(&self, i: u64) -> &AtomicU8 {
        let c = self.chunks[(i / CHUNK) as usize]
            .get_or_init(|| (0..CHUNK).map(|_| AtomicU8::new(0)).collect());
        &c[(i % CHUNK) as usize]
    }
    fn get(&self, i: u64) -> u8 {
        self.chunks[(i / CHUNK) as usize]
            .get()
            .map_or(0, |c| c[(i % CHUNK) as usize].load(Ordering::Acquire))
    }
}

#[derive(Default)]
struct Counters {
    storage_reads: AtomicU64,
    storage_bytes_read: AtomicU64,
    shared_maps: AtomicU64,
    private_copies: AtomicU64,
    coalesced_waits: AtomicU64,
    cached: AtomicU64,
    poisoned: AtomicU64,
}

/// A fault waiting for its block's storage read: the attachment, the fault, and how far its
/// stream reaches (the fault-around it gets once the block is in).
type Waiter = (Arc<Attachment>, Fault, u64);

pub struct Volume {
    pub info: VolumeInfo,
    file: File,
    memfd: Memfd,
    blocks: u64,
    state: ByteTable,
    hits: ByteTable,
    stripes: Box<[Mutex<()>]>,
    waiters: Mutex<HashMap<u64, Vec<Waiter>>>,
    share_threshold: u8,
    counters: Counters,
    /// The pool the cached blocks count against, through the `volumes` partition.
    memory: Option<VolumeMemory>,
    /// Cached blocks counted against the pool (RELEASED once the volume is removed).
    accounted: AtomicU64,
    /// Attachments that have faulted on this volume: their maps of mapped frames.
    users: Mutex<Vec<Weak<Attachment>>>,
    /// Copies in progress out of each block's frame (`copy`): the evictor leaves a pinned
    /// block alone. Changed only under the block's stripe lock.
    pins: ByteTable,
    /// The checksum of every block (from the image's `.pmsums` file, if it has one): every
    /// storage read is checked against it.
    sums: Option<BlockSums>,
}

/// Where a volume's cached blocks are accounted.
pub struct VolumeMemory {
    pub pool: Arc<Pool>,
    pub partition: Arc<Partition>,
    /// Its id on the partition's clock (`memory::VOLUME_ID_BIT` set).
    pub id: u64,
}

const RELEASED: u64 = u64::MAX;

impl Volume {
    /// Open the image read-only and create its (empty) cache.
    pub fn open(
        info: VolumeInfo,
        share_threshold: u8,
        memory: Option<VolumeMemory>,
    ) -> std::io::Result<Volume> {
        let file = File::open(&info.path)?;
        let side = BlockSums::sidecar(std::path::Path::new(&info.path));
        let sums = match side.exists() {
            true => Some(BlockSums::load(&side, info.size_bytes).map_err(std::io::Error::other)?),
            false => None,
        };
        // pagemesh reads ahead itself and caches the blocks in the volume memfd: kernel
        // read-ahead on the image would only fill the page cache with a second copy.
        let _ = pagemesh_uffd::fileio::advise_random(&file);
        let blocks = info.size_bytes.div_ceil(PS);
        let memfd =
            Memfd::create_fixed_size(&format!("pagemesh-volume:{}", info.name), blocks * PS)?;
        Ok(Volume {
            file,
            memfd,
            blocks,
            state: ByteTable::new(blocks),
            hits: ByteTable::new(blocks),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            waiters: Mutex::new(HashMap::new()),
            share_threshold: share_threshold.max(1),
            counters: Counters::default(),
            info,
            memory,
            accounted: AtomicU64::new(0),
            users: Mutex::new(Vec::new()),
            pins: ByteTable::new(blocks),
            sums,
        })
    }

    pub fn memfd(&self) -> &Memfd {
        &self.memfd
    }

    /// Blocks in the image.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Whether every storage read is checked against the image's block sums.
    pub fn is_checksummed(&self) -> bool {
        self.sums.is_some()
    }

    fn block_state(&self, b: u64) -> Block {
        match self.state.get(b) {
            0 => Block::Absent,
            1 => Block::Pending,
            2 => Block::Present,
            3 => Block::Poisoned,
            _ => Block::Unreadable,
        }
    }

    /// Set a block's state (caller holds its stripe lock).
    fn set(&self, b: u64, s: Block) {
        let old = self.state.cell(b).swap(s as u8, Ordering::AcqRel);
        let c = &self.counters;
        if old == Block::Present as u8 {
            c.cached.fetch_sub(1, Ordering::Relaxed);
        }
        if old == Block::Poisoned as u8 {
            c.poisoned.fetch_sub(1, Ordering::Relaxed);
        }
        match s {
            Block::Present => c.cached.fetch_add(1, Ordering::Relaxed),
            Block::Poisoned => c.poisoned.fetch_add(1, Ordering::Relaxed),
            _ => 0,
        };
        let delta: i64 = match (old == Block::Present as u8, s == Block::Present) {
            (false, true) => 1,
            (true, false) => -1,
            _ => 0,
        };
        if let (Some(m), true) = (&self.memory, delta != 0) {
            let counted = self
                .accounted
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                    (v != RELEASED).then(|| v.wrapping_add(delta as u64))
                })
                .is_ok();
            if counted && delta > 0 {
                m.pool.page_in(&m.partition, m.id, b);
            } else if counted {
                m.pool.page_out(&m.partition);
            }
        }
    }

    /// The evictor's clock hand reached block `b`: drop it from the cache if it is cached and
    /// no live attachment has its shared frame mapped (clean: it is read again on demand).
    pub fn clock_visit(&self, b: u64) -> ClockVisit {
        if self.block_state(b) != Block::Present {
            return ClockVisit::Gone;
        }
        // Under the stripe lock: a fault marks its block mapped before it releases that lock.
        let Ok(_g) = self.stripe(b).try_lock() else {
            return ClockVisit::Busy;
        };
        if self.block_state(b) != Block::Present {
            return ClockVisit::Gone;
        }
        if self.pins.get(b) > 0 {
            return ClockVisit::Keep; // being copied into a VM
        }
        {
            let mut users = lock(&self.users);
            users.retain(|w| w.strong_count() > 0);
            if users.iter().filter_map(Weak::upgrade).any(|a| a.maps(b)) {
                return ClockVisit::Keep;
            }
        }
        if let Err(e) = self.memfd.punch_hole(b * PS, PS) {
            return ClockVisit::Failed(format!(
                "volume {}: punching block {b}: {e}",
                self.info.name
            ));
        }
        self.set(b, Block::Absent);
        ClockVisit::Evicted(1)
    }

    /// Give the pool back what this volume counted (it is being removed).
    pub fn release(&self) {
        if let Some(m) = &self.memory {
            let n = match self.accounted.swap(RELEASED, Ordering::AcqRel) {
                RELEASED => 0,
                n => n,
            };
            m.pool.release_pages(&m.partition, n);
            m.pool.unregister_volume(m.id);
        }
    }

    fn stripe(&self, b: u64) -> &Mutex<()> {
        &self.stripes[(b % STRIPES) as usize]
    }

    /// Fault-around: map the run of Present blocks just below the faulting block `b`, without
    /// waking, then `b` and the run above it with one CONTINUE that wakes the faulting thread,
    /// each run as far as the faulting stream reaches (`reach` blocks, at least
    /// FAULT_AROUND_BLOCKS) within the attachment. Below first: a reader copying backward (as
    /// glibc's memcpy does for some alignments) would otherwise fault on the block below
    /// before it is mapped; for a forward reader that run stops at once on a mapped page. The
    /// stream then covers both runs, and a sequential one has the blocks after them read ahead
    /// (`read_ahead`).
    fn map_around(&self, att: &Attachment, f: &Fault, reach: u64) -> Result<(), UffdError> {
        let b = f.page;
        let limit = (att.len / PS).min(self.blocks);
        // Not the blocks this process may map already: a CONTINUE that starts on a mapped page
        // maps nothing.
        let present = |x: u64| self.block_state(x) == Block::Present && !att.maps(x);
        let max = reach.max(FAULT_AROUND_BLOCKS) - 1;
        let (below, above) = fault::around_reach(b, limit, max, max, present);
        att.streams.served_near(b, below.start, above.end);
        self.read_ahead(att, above.end, reach);
        self.counters.shared_maps.fetch_add(1, Ordering::Relaxed);
        // Mark first (conservative: a mark on a frame not mapped only keeps it longer).
        att.mark_mapped(below.start, above.end - below.start);
        if !below.is_empty() {
            let _ = install(
                &att.uffd,
                att.base + below.start * PS,
                (b - below.start) * PS,
                Source::PageCache,
                Protect::Writable,
                Wake::No,
            );
        }
        // Another thread of this process may have mapped the page first: install then only
        // wakes this one.
        match install(
            &att.uffd,
            f.addr,
            (above.end - b) * PS,
            Source::PageCache,
            Protect::Writable,
            Wake::Yes,
        ) {
            Ok(_) => Ok(()),
            // The frame went (evicted after all): wake the thread, whose retry faults again
            // and reads the block back.
            Err(e) if e.is_no_page() => att.uffd.wake(f.addr, PS),
            Err(e) => Err(e),
        }
    }

    /// Give `att` private copies of blocks `[lo, lo+n)` (read into `scratch`), which include
    /// the faulting block `b`. The run stops at a page the process has mapped already; if that
    /// leaves `b` out, `b` alone is copied.
    fn copy_private_run(
        &self,
        att: &Attachment,
        lo: u64,
        n: u64,
        b: u64,
        scratch: &[u8],
    ) -> Result<(), UffdError> {
        let run = &scratch[..(n * PS) as usize];
        let at = att.base + lo * PS;
        let copied = install(
            &att.uffd,
            at,
            0,
            Source::Bytes(run),
            Protect::Writable,
            Wake::Yes,
        )?;
        self.counters
            .private_copies
            .fetch_add(copied / PS, Ordering::Relaxed);
        if lo + copied / PS > b {
            return Ok(());
        }
        let one = &scratch[((b - lo) * PS) as usize..((b - lo + 1) * PS) as usize];
        let at = att.base + b * PS;
        match install(
            &att.uffd,
            at,
            0,
            Source::Bytes(one),
            Protect::Writable,
            Wake::Yes,
        )? {
            0 => Ok(()),
            _ => {
                self.counters.private_copies.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Serve a fault of `att` on block `f.page` (at `f.addr` in its private mapping).
    pub fn resolve(&self, att: &Arc<Attachment>, f: &Fault, scratch: &mut [u8]) {
        let b = f.page;
        if !att.volume_user.swap(true, Ordering::Relaxed) {
            lock(&self.users).push(Arc::downgrade(att));
        }
        if let Some(m) = &self.memory {
            if matches!(self.block_state(b), Block::Absent | Block::Unreadable) {
                m.pool.wait_for_room(); // backpressure, before any lock
            }
        }
        let hits = {
            let h = self.hits.cell(b);
            let v = h.load(Ordering::Relaxed);
            if v < u8::MAX {
                h.store(v + 1, Ordering::Relaxed); // approximate under races: a heuristic
            }
            v.saturating_add(1)
        };
        // How far this fault reaches (one window per fault: its read, its fault-around).
        let reach = att.streams.window_near(b);
        let g = lock(self.stripe(b));
        match self.block_state(b) {
            Block::Present => {
                // Marked mapped before the stripe lock goes: the evictor checks the marks
                // under that lock, so it cannot punch the frame this fault is about to map.
                att.mark_mapped(b, 1);
                drop(g);
                finish(att, f, self.map_around(att, f, reach));
            }
            Block::Poisoned => {
                drop(g);
                att.refuse(f, &format_args!("block {b} of the volume is poisoned"));
            }
            Block::Pending => {
                self.counters
                    .coalesced_waits
                    .fetch_add(1, Ordering::Relaxed);
                lock(&self.waiters)
                    .entry(b)
                    .or_default()
                    .push((Arc::clone(att), *f, reach));
            }
            Block::Absent | Block::Unreadable if hits < self.share_threshold => {
                drop(g);
                self.serve_private(att, f, reach, scratch);
            }
            Block::Absent | Block::Unreadable => {
                self.set(b, Block::Pending);
                lock(&self.waiters)
                    .entry(b)
                    .or_default()
                    .push((Arc::clone(att), *f, reach));
                drop(g);
                let (lo, n) = self.claim_run(b, self.run_blocks(reach, scratch));
                self.complete_fill(lo, n, scratch, Some(b));
            }
        }
    }

    /// A fault on a block below the share threshold: not (yet) likely to be shared, so the
    /// process gets private copies of a run of blocks (the volume is read-only, so a copy is
    /// right whatever the blocks' cache states) read in the direction it scans, and the shared
    /// cache stays as it is. A run stops before a block known to be bad; if its read fails,
    /// the faulting block is read alone, so only a fault on a bad block itself is refused.
    fn serve_private(&self, att: &Attachment, f: &Fault, reach: u64, scratch: &mut [u8]) {
        let (b, addr) = (f.page, f.addr);
        let backward = b < att.last_page.swap(b, Ordering::Relaxed);
        let max = self.run_blocks(reach, scratch);
        let good = |x: u64| !matches!(self.block_state(x), Block::Poisoned | Block::Unreadable);
        let (lo, n) = if backward {
            let limit = max.min((addr - att.base) / PS + 1);
            let mut n = 1;
            while n < limit && good(b - n) {
                n += 1;
            }
            (b + 1 - n, n)
        } else {
            let limit = max
                .min((att.base + att.len - addr) / PS)
                .min(self.blocks - b);
            let mut n = 1;
            while n < limit && good(b + n) {
                n += 1;
            }
            (b, n)
        };
        att.streams.served_near(b, lo, lo + n);
        let read = match self.read_storage(lo, n, scratch) {
            Err(_) if n > 1 => self.read_storage(b, 1, scratch).map(|()| (b, 1)),
            r => r.map(|()| (lo, n)),
        };
        match read {
            Ok((lo, n)) => finish(att, f, self.copy_private_run(att, lo, n, b, scratch)),
            Err(e) => att.refuse(f, &e),
        }
    }

    /// Make block `b` present in the cache (for segment reads), waiting (bounded) for a read
    /// already in flight.
    fn ensure_present(&self, b: u64, scratch: &mut [u8]) -> Result<(), VolumeError> {
        let deadline = Instant::now() + PENDING_WAIT;
        loop {
            let g = lock(self.stripe(b));
            match self.block_state(b) {
                Block::Present => return Ok(()),
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
                    std::thread::sleep(Duration::from_micros(200));
                }
                Block::Absent | Block::Unreadable => {
                    self.set(b, Block::Pending);
                    drop(g);
                    let (lo, n) = self.claim_run(b, scratch.len() as u64 / PS);
                    // `b` is now Present or Poisoned: the next turn says which.
                    self.complete_fill(lo, n, scratch, Some(b));
                }
            }
        }
    }

    /// Read through the volume cache (filling it), as `segment read` does.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        let mut scratch = vec![0u8; (READAHEAD_BLOCKS * PS) as usize];
        let mut done = 0usize;
        while done < buf.len() {
            let off = offset + done as u64;
            let b = off / PS;
            let n = (PSU - (off % PS) as usize).min(buf.len() - done);
            self.ensure_present(b, &mut scratch)?;
            self.memfd
                .read_exact_at(&mut buf[done..done + n], off)
                .map_err(|source| VolumeError::Cache {
                    volume: self.info.name.clone(),
                    source,
                })?;
            done += n;
        }
        Ok(())
    }

    /// Forget poisoned blocks: they are read from storage again on next access.
    pub fn clear_poison(&self) -> u64 {
        let mut n = 0;
        for b in 0..self.blocks {
            if self.state.get(b) >= Block::Poisoned as u8 {
                let _g = lock(self.stripe(b));
                let was = self.block_state(b);
                if matches!(was, Block::Poisoned | Block::Unreadable) {
                    self.set(b, Block::Absent);
                    n += u64::from(was == Block::Poisoned);
                }
            }
        }
        n
    }

    pub fn stat(&self, segments: u64) -> VolumeStat {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        VolumeStat {
            info: self.info.clone(),
            cached_blocks: l(&c.cached),
            poisoned_blocks: l(&c.poisoned),
            storage_reads: l(&c.storage_reads),
            storage_bytes_read: l(&c.storage_bytes_read),
            shared_maps: l(&c.shared_maps),
            private_copies: l(&c.private_copies),
            coalesced_waits: l(&c.coalesced_waits),
            segments,
            share_threshold: u32::from(self.share_threshold),
        }
    }

    pub fn cached_blocks(&self) -> u64 {
        self.counters.cached.load(Ordering::Relaxed)
    }

    pub fn poisoned_blocks(&self) -> u64 {
        self.counters.poisoned.load(Ordering::Relaxed)
    }
}

/// A resolution that failed ends as any unservable fault: never leave the thread waiting.
fn finish(a: &Attachment, f: &Fault, r: Result<(), UffdError>) {
    if let Err(e) = r {
        a.refuse(f, &format_args!("volume fault: {e}"));
    }
}

/// A volume serves the segments on it.
impl SharedFrames for Volume {
    fn resolve(&self, att: &Arc<Attachment>, f: &Fault, scratch: &mut [u8]) {
        Volume::resolve(self, att, f, scratch);
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        Volume::read_at(self, offset, buf)
    }

    fn clear_poison(&self) -> u64 {
        Volume::clear_poison(self)
    }

    fn cached_blocks(&self) -> u64 {
        Volume::cached_blocks(self)
    }

    fn poisoned_blocks(&self) -> u64 {
        Volume::poisoned_blocks(self)
    }

    fn memfd(&self) -> &Memfd {
        Volume::memfd(self)
    }
}

impl Resident for Volume {
    fn clock_visit(self: Arc<Self>, b: u64, _max: u64) -> ClockVisit {
        Volume::clock_visit(&self, b)
    }

    fn is_resident(&self, b: u64) -> bool {
        b < self.blocks && self.block_state(b) == Block::Present
    }
}
