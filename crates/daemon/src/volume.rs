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
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use pagemesh_proto::{VolumeInfo, VolumeStat};
use pagemesh_types::PAGE_SIZE;
use pagemesh_uffd::{Memfd, Uffd, UffdError};

use crate::segment::Attachment;

const PS: u64 = PAGE_SIZE;
const PSU: usize = PAGE_SIZE as usize;
const STRIPES: u64 = 256;
const CHUNK: u64 = 1 << 15;
/// Bound on a segment read waiting for a block another fault is reading.
const PENDING_WAIT: Duration = Duration::from_secs(30);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
enum Block {
    Absent = 0,
    Pending = 1,
    Present = 2,
    Poisoned = 3,
}

/// Sparse per-block bytes (state, access history).
struct ByteTable {
    chunks: Box<[OnceLock<Box<[AtomicU8]>>]>,
}

impl ByteTable {
    fn new(n: u64) -> ByteTable {
        ByteTable { chunks: (0..n.div_ceil(CHUNK)).map(|_| OnceLock::new()).collect() }
    }
    fn cell(&self, i: u64) -> &AtomicU8 {
        let c = self.chunks[(i / CHUNK) as usize].get_or_init(|| (0..CHUNK).map(|_| AtomicU8::new(0)).collect());
        &c[(i % CHUNK) as usize]
    }
    fn get(&self, i: u64) -> u8 {
        self.chunks[(i / CHUNK) as usize].get().map_or(0, |c| c[(i % CHUNK) as usize].load(Ordering::Acquire))
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

/// Why a volume operation failed.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {volume}: reading block {block} of {path}: {source}")]
    Storage { volume: String, path: String, block: u64, source: std::io::Error },
    #[error("volume {volume}: block {block} is poisoned (its read failed); fix the image, then `pagemesh segment clear-poison` a segment on it")]
    Poisoned { volume: String, block: u64 },
    #[error("volume {volume}: block {block} still being read after {PENDING_WAIT:?}")]
    Timeout { volume: String, block: u64 },
    #[error("volume {volume}: cache memfd: {source}")]
    Cache { volume: String, source: std::io::Error },
}

/// Who waits for a block being read: the attachment and the faulting address.
type Waiter = (Arc<Attachment>, u64);

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
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Volume {
    /// Open the image read-only and create its (empty) cache.
    pub fn open(info: VolumeInfo, share_threshold: u8) -> std::io::Result<Volume> {
        let file = File::open(&info.path)?;
        let blocks = info.size_bytes.div_ceil(PS);
        let memfd = Memfd::create(&format!("pagemesh-volume:{}", info.name), blocks * PS)?;
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
        })
    }

    pub fn memfd(&self) -> &Memfd {
        &self.memfd
    }

    fn block_state(&self, b: u64) -> Block {
        match self.state.get(b) {
            0 => Block::Absent,
            1 => Block::Pending,
            2 => Block::Present,
            _ => Block::Poisoned,
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
    }

    fn stripe(&self, b: u64) -> &Mutex<()> {
        &self.stripes[(b % STRIPES) as usize]
    }

    /// Read block `b` of the image into `buf` (zero past the end of the file).
    fn read_storage(&self, b: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        let off = b * PS;
        let want = (self.info.size_bytes - off).min(PS) as usize;
        buf[want..].fill(0);
        self.counters.storage_reads.fetch_add(1, Ordering::Relaxed);
        self.file.read_exact_at(&mut buf[..want], off).map_err(|source| VolumeError::Storage {
            volume: self.info.name.clone(),
            path: self.info.path.clone(),
            block: b,
            source,
        })?;
        self.counters.storage_bytes_read.fetch_add(want as u64, Ordering::Relaxed);
        // The block now lives in the volume cache: do not keep a second copy in the kernel's
        // page cache of the image (best effort; a failure only costs memory).
        let _ = pagemesh_uffd::fileio::drop_cached(&self.file, off, PS);
        Ok(())
    }

    /// Serve a fault of `att` on block `b` (at `addr` in its private mapping).
    pub fn resolve(&self, att: &Arc<Attachment>, b: u64, addr: u64, scratch: &mut [u8]) {
        let hits = {
            let h = self.hits.cell(b);
            let v = h.load(Ordering::Relaxed);
            if v < u8::MAX {
                h.store(v + 1, Ordering::Relaxed); // approximate under races: a heuristic
            }
            v.saturating_add(1)
        };
        let g = lock(self.stripe(b));
        match self.block_state(b) {
            Block::Present => {
                drop(g);
                self.counters.shared_maps.fetch_add(1, Ordering::Relaxed);
                finish(att, addr, map_shared(&att.uffd, addr));
            }
            Block::Poisoned => {
                drop(g);
                finish(att, addr, poison(&att.uffd, addr));
            }
            Block::Pending => {
                self.counters.coalesced_waits.fetch_add(1, Ordering::Relaxed);
                lock(&self.waiters).entry(b).or_default().push((Arc::clone(att), addr));
            }
            Block::Absent if hits < self.share_threshold => {
                drop(g);
                // Not (yet) likely to be shared: a private copy, and the cache stays as it is.
                let r = match self.read_storage(b, &mut scratch[..PSU]) {
                    Ok(()) => {
                        self.counters.private_copies.fetch_add(1, Ordering::Relaxed);
                        copy_private(&att.uffd, addr, &scratch[..PSU])
                    }
                    Err(e) => {
                        log::error!("{e}; pid {} gets SIGBUS at this page", att.pid);
                        poison(&att.uffd, addr)
                    }
                };
                finish(att, addr, r);
            }
            Block::Absent => {
                self.set(b, Block::Pending);
                lock(&self.waiters).entry(b).or_default().push((Arc::clone(att), addr));
                drop(g);
                self.complete_fill(b, scratch);
            }
        }
    }

    /// The block is Pending and this thread owns its read: read, publish, serve every waiter.
    fn complete_fill(&self, b: u64, scratch: &mut [u8]) -> bool {
        let result = self.read_storage(b, &mut scratch[..PSU]).and_then(|()| {
            self.memfd
                .write_all_at(&scratch[..PSU], b * PS)
                .map_err(|source| VolumeError::Cache { volume: self.info.name.clone(), source })
        });
        let g = lock(self.stripe(b));
        let ok = result.is_ok();
        self.set(b, if ok { Block::Present } else { Block::Poisoned });
        let waiters = lock(&self.waiters).remove(&b).unwrap_or_default();
        drop(g);
        if let Err(e) = &result {
            log::error!("{e}; the block is poisoned for every segment on the volume");
        }
        for (a, addr) in &waiters {
            if ok {
                self.counters.shared_maps.fetch_add(1, Ordering::Relaxed);
                finish(a, *addr, map_shared(&a.uffd, *addr));
            } else {
                finish(a, *addr, poison(&a.uffd, *addr));
            }
        }
        ok
    }

    /// Make block `b` present in the cache (for segment reads), waiting (bounded) for a read
    /// already in flight.
    fn ensure_present(&self, b: u64, scratch: &mut [u8]) -> Result<(), VolumeError> {
        let deadline = Instant::now() + PENDING_WAIT;
        loop {
            let g = lock(self.stripe(b));
            match self.block_state(b) {
                Block::Present => return Ok(()),
                Block::Poisoned => return Err(VolumeError::Poisoned { volume: self.info.name.clone(), block: b }),
                Block::Pending => {
                    drop(g);
                    if Instant::now() > deadline {
                        return Err(VolumeError::Timeout { volume: self.info.name.clone(), block: b });
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
                Block::Absent => {
                    self.set(b, Block::Pending);
                    drop(g);
                    if !self.complete_fill(b, scratch) {
                        return Err(VolumeError::Poisoned { volume: self.info.name.clone(), block: b });
                    }
                    return Ok(());
                }
            }
        }
    }

    /// Read through the volume cache (filling it), as `segment read` does.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError> {
        let mut scratch = vec![0u8; PSU];
        let mut done = 0usize;
        while done < buf.len() {
            let off = offset + done as u64;
            let b = off / PS;
            let n = (PSU - (off % PS) as usize).min(buf.len() - done);
            self.ensure_present(b, &mut scratch)?;
            self.memfd
                .read_exact_at(&mut buf[done..done + n], off)
                .map_err(|source| VolumeError::Cache { volume: self.info.name.clone(), source })?;
            done += n;
        }
        Ok(())
    }

    /// Forget poisoned blocks: they are read from storage again on next access.
    pub fn clear_poison(&self) -> u64 {
        let mut n = 0;
        for b in 0..self.blocks {
            if self.state.get(b) == Block::Poisoned as u8 {
                let _g = lock(self.stripe(b));
                if self.block_state(b) == Block::Poisoned {
                    self.set(b, Block::Absent);
                    n += 1;
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

/// Map the cached frame into a private mapping (read-only until the process writes).
fn map_shared(uffd: &Uffd, addr: u64) -> Result<(), UffdError> {
    match uffd.continue_(addr, PS, false, true) {
        Err(e) if e.is_exists() => uffd.wake(addr, PS),
        r => r,
    }
}

fn copy_private(uffd: &Uffd, addr: u64, data: &[u8]) -> Result<(), UffdError> {
    match uffd.copy(addr, data, false, true) {
        Err(e) if e.is_exists() => uffd.wake(addr, PS),
        r => r,
    }
}

fn poison(uffd: &Uffd, addr: u64) -> Result<(), UffdError> {
    if uffd.poison(addr, PS, true)? == 0 {
        uffd.wake(addr, PS)?;
    }
    Ok(())
}

/// Log a failed resolution; never leave the thread waiting.
fn finish(a: &Attachment, addr: u64, r: Result<(), UffdError>) {
    match r {
        Ok(()) => {}
        Err(e) if e.is_process_gone() => {}
        Err(e) => {
            log::error!("volume fault of pid {} at {addr:#x}: {e}; sending SIGBUS", a.pid);
            let _ = poison(&a.uffd, addr);
        }
    }
}
