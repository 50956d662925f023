//! A segment on this node: its page cache (one memfd), its mapper, its page states, the
//! processes attached to it, and the transitions that faults, segment I/O and sync make.
//!
//! Locking: every transition of a page's state happens under that page's stripe lock, together
//! with the uffd ioctls that make the kernel agree with it (install write-protected for Clean,
//! writable for Dirty). Sync takes the stripe locks of a run of pages in increasing order and is
//! serialised per segment; read-ahead, page-in runs, the prefetcher and the evictor only
//! try-lock extra stripes, so there is no lock cycle.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use pagemesh_proto::{SegmentCounters, SegmentInfo, SegmentStat};
use pagemesh_store::{Mapper, MapperError};
use pagemesh_types::PAGE_SIZE;
use pagemesh_uffd::fault::answer_unservable;
use pagemesh_uffd::{Bounds, Fault, FaultKind, Memfd, Uffd, UffdError, Unservable};

use crate::histogram::Histogram;
use crate::load::VolumeError;
use crate::load::{LoadError, Loaded};
use crate::memory::{Partition, Pool};
use crate::pages::{PageState, PageTable, SlotTable};
use crate::runs::Streams;

const PS: u64 = PAGE_SIZE;
const PSU: usize = PAGE_SIZE as usize;
/// Stripe locks per segment: page `p` is guarded by stripe `p % STRIPES`. Far more than the
/// longest run (512 pages), because runs only try-lock their neighbours and stop at a busy
/// one: with 512 stripes, an eviction run of 256 pages held half of all stripes while it
/// wrote, and a reader's page-in runs behind it broke at the first aliased page, often
/// after one page.
pub const STRIPES: u64 = 4096;
/// Most pages one sync step write-protects and copies at once (1 MiB).
const SYNC_RUN_PAGES: u64 = 256;

/// One process's attachment: its uffd (a dup of the client's) and where it mapped the segment.
pub struct Attachment {
    pub id: u64,
    pub pid: i32,
    pub uffd: Uffd,
    pub base: u64,
    pub len: u64,
    pub segment: Arc<Segment>,
    /// The page of this process's previous volume fault: tells a backward scan from a forward
    /// one, so private-copy runs go the way the process is reading.
    pub last_page: AtomicU64,
    /// This process's access streams: how far each fault's run reaches (see `runs`).
    pub streams: Streams,
    /// A handle on the lease connection, shut down when the daemon drops the attachment for
    /// its own reasons (a broken uffd), so the client's watchdog takes over instead of faults
    /// hanging.
    pub lease: Option<std::os::unix::net::UnixStream>,
    /// For volume segments: the blocks whose shared frame this process has mapped (a bit per
    /// block). Such frames are not evicted while the process lives.
    pub volume_map: Option<Box<[AtomicU64]>>,
    /// Whether the volume knows this attachment as a user.
    pub volume_user: std::sync::atomic::AtomicBool,
    /// Set by `revoke`: the attachment is being dropped and its faults are refused.
    pub revoked: std::sync::atomic::AtomicBool,
    /// Attached read-only (mapped privately, readable only): its faults only ever map the
    /// page cache (`Segment::resolve_read_only`).
    pub read_only: bool,
}

impl Attachment {
    /// Record that blocks `[first, first+n)` are mapped here (volume segments).
    pub fn mark_mapped(&self, first: u64, n: u64) {
        if let Some(map) = &self.volume_map {
            for b in first..first + n {
                if let Some(w) = map.get((b / 64) as usize) {
                    w.fetch_or(1 << (b % 64), Ordering::SeqCst);
                }
            }
        }
    }

    /// The registered range of this attachment in its process.
    pub fn bounds(&self) -> Bounds {
        Bounds {
            base: self.base,
            len: self.len,
        }
    }

    /// End a fault of this process that cannot be served, whatever the reason (`why`, logged
    /// with the segment and page): every path of the daemon ends unservable faults here. The
    /// thread gets SIGBUS at the address; where a read-only copy is mapped, which cannot be
    /// poisoned in place, the attachment's lease is closed instead, and the client's watchdog
    /// revokes its whole mapping (SIGBUS too).
    pub fn refuse(&self, f: &Fault, why: &dyn std::fmt::Display) {
        let seg = &self.segment.info.name;
        match answer_unservable(&self.uffd, f) {
            Ok(answer @ (Unservable::Sigbus | Unservable::AlreadyMapped)) => log::error!(
                "segment {seg} page {} ({:?} fault of pid {} at {:#x}): {why}; {}",
                f.page,
                f.kind,
                self.pid,
                f.addr,
                match answer {
                    Unservable::Sigbus => "sending SIGBUS",
                    _ => "a page was mapped there meanwhile: the thread retries",
                }
            ),
            Ok(Unservable::Gone) => {
                log::debug!(
                    "segment {seg} page {}: pid {} exited mid-fault",
                    f.page,
                    self.pid
                )
            }
            Ok(Unservable::Revoke) => {
                log::error!(
                    "segment {seg} page {}: a write by pid {} to a read-only copy at {:#x} cannot be \
                     served ({why}); closing its attachment (the process gets SIGBUS from its watchdog)",
                    f.page,
                    self.pid,
                    f.addr
                );
                self.revoke();
            }
            Err(e) => {
                log::error!(
                    "segment {seg} page {}: cannot end the fault of pid {} at {:#x} ({why}): {e}; \
                     closing its attachment",
                    f.page,
                    self.pid,
                    f.addr
                );
                self.revoke();
            }
        }
    }

    /// Whether `revoke` ran.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Close the lease, so the client's watchdog revokes the mapping and fails loudly; faults of
    /// this attachment still queued or read are refused (SIGBUS) from now on.
    pub fn revoke(&self) {
        self.revoked
            .store(true, std::sync::atomic::Ordering::Release);
        if let Some(l) = &self.lease {
            let _ = l.shutdown(std::net::Shutdown::Both);
        }
    }

    /// Whether block `b`'s shared frame may be mapped here.
    pub fn maps(&self, b: u64) -> bool {
        self.volume_map
            .as_ref()
            .and_then(|m| m.get((b / 64) as usize))
            .is_some_and(|w| w.load(Ordering::SeqCst) & (1 << (b % 64)) != 0)
    }
}

/// Why a segment I/O request failed.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    #[error("segment {segment}: range {offset}+{len} is outside the segment ({size} bytes)")]
    OutOfRange {
        segment: String,
        offset: u64,
        len: u64,
        size: u64,
    },
    #[error("segment {segment}: page {page} (offset {offset}) is poisoned: {hint}")]
    Poisoned {
        segment: String,
        page: u64,
        offset: u64,
        hint: &'static str,
    },
    #[error("segment {segment}: page {page}: {source}")]
    Mapper {
        segment: String,
        page: u64,
        source: MapperError,
    },
    #[error("segment {segment}: page cache (memfd) I/O at offset {offset}: {source}")]
    Memfd {
        segment: String,
        offset: u64,
        source: std::io::Error,
    },
    #[error("segment {segment}: write-protecting pages {first}..{} in pid {pid} for sync failed: {source}; the pages stay dirty", first + n)]
    WriteProtect {
        segment: String,
        first: u64,
        n: u64,
        pid: i32,
        source: UffdError,
    },
    #[error("segment {segment}: {source}")]
    Volume {
        segment: String,
        source: VolumeError,
    },
    #[error("segment {segment} is backed by a read-only volume: writes are private to each attached process; write through a mapping instead")]
    ReadOnly { segment: String },
    #[error("segment {segment} page {page}: {source}; the page is poisoned: fix the backing store, then run `pagemesh segment clear-poison {segment}`")]
    Load {
        segment: String,
        page: u64,
        source: LoadError,
    },
    #[error("segment {segment}: pinning {want_bytes} more bytes would exceed what partition {partition} may pin ({pinned_bytes} of {cap_bytes} bytes pinned); unpin something or raise the partition's --max")]
    PinLimit {
        segment: String,
        partition: String,
        want_bytes: u64,
        pinned_bytes: u64,
        cap_bytes: u64,
    },
    #[error("segment {segment} is a volume segment: its frames belong to the volume and cannot be pinned")]
    PinUnsupported { segment: String },
}

const POISON_HINT: &str =
    "its data could not be read; fix the backing store, then run `pagemesh segment clear-poison`";

#[derive(Default)]
pub struct Counters {
    pub prefetched: AtomicU64,
    pub page_ins: AtomicU64,
    pub page_outs: AtomicU64,
    pub evictions: AtomicU64,
    faults_missing: AtomicU64,
    faults_minor: AtomicU64,
    faults_wp: AtomicU64,
    pub zero_fills: AtomicU64,
    pub mapper_reads: AtomicU64,
    pub mapper_bytes_read: AtomicU64,
    pub mapper_bytes_written: AtomicU64,
    pub poisonings: AtomicU64,
    syncs: AtomicU64,
}

/// What serves the pages of a cluster segment, for the node layer: the cluster layer
/// implements it, so faults, attachments and evictions reach the coherence protocol without
/// this layer naming the engine.
pub trait ClusterPages: Send + Sync {
    /// Serve the faults of a new attachment of the segment.
    fn attach(&self, att: Arc<Attachment>) -> Result<(), EngineStopped>;
    /// Stop serving an attachment (its process detached or died).
    fn detach(&self, attachment: u64);
    /// Evict a resident page through the protocol (its home writes it back if it holds the
    /// last copy of unsynced data); the end is reported to the pool.
    fn evict(&self, seg: Arc<Segment>, page: u64) -> Result<(), EngineStopped>;
}

/// The shared frames of a read-only image behind a `volume:` segment (the node's
/// `volume::Volume`), for the segment, which names no volume type: faults, reads and poison go
/// to the image's one cache.
pub trait SharedFrames: crate::memory::Prefetch {
    /// Serve a fault of `att` on block `f.page`.
    fn resolve(&self, att: &Arc<Attachment>, f: &Fault, scratch: &mut [u8]);
    /// Read bytes of the image through its cache.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), VolumeError>;
    /// Forget the poisoned blocks (they are read again); how many there were.
    fn clear_poison(&self) -> u64;
    fn cached_blocks(&self) -> u64;
    fn poisoned_blocks(&self) -> u64;
    /// The cache's memfd (segments map it privately).
    fn memfd(&self) -> &Memfd;
}

/// The cluster engine is not running any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the cluster engine has stopped (see the daemon's log)")]
pub struct EngineStopped;

/// Count a fault of a segment by its kind.
pub fn bump_fault(s: &Segment, kind: FaultKind) {
    let c = &s.counters;
    bump(
        match kind {
            FaultKind::Missing => &c.faults_missing,
            FaultKind::Minor => &c.faults_minor,
            FaultKind::WriteProtect => &c.faults_wp,
        },
        1,
    );
}

pub fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// A segment's node-local state.
pub struct Segment {
    pub info: SegmentInfo,
    pub memfd: Memfd,
    pub mapper: Box<dyn Mapper>,
    pub pages: PageTable,
    stripes: Box<[Mutex<()>]>,
    pub clients: RwLock<Vec<Arc<Attachment>>>,
    pub sync_lock: Mutex<()>,
    pub counters: Counters,
    pub latency: Histogram,
    /// Set for `volume:` segments: faults and reads go to the volume's shared cache.
    pub volume: Option<Arc<dyn SharedFrames>>,
    /// The pool and partition this segment's pages count against (none for volume segments,
    /// whose frames belong to the volume).
    pub memory: Option<Memory>,
    /// Paging-device slots holding this segment's paged-out pages (and the clean copy of a
    /// paged-in page, until it is written).
    pub slots: SlotTable,
    /// Set by `segment rm` once no process is attached; refuses new attachments.
    removed: std::sync::atomic::AtomicBool,
    /// Resident pages counted against the pool (RELEASED once the segment is removed).
    accounted: AtomicU64,
    /// For cluster segments: what serves every fault and eviction (the cluster engine, behind
    /// [`ClusterPages`]: this layer names no cluster type).
    pub cluster: std::sync::OnceLock<Arc<dyn ClusterPages>>,
}

const RELEASED: u64 = u64::MAX;

/// Where a segment's pages are accounted.
pub struct Memory {
    pub pool: Arc<Pool>,
    pub partition: Arc<Partition>,
}

/// Lock a mutex of the daemon's. A panic while holding one is a bug already reported (and
/// contained to its fault); what these mutexes guard stays consistent at every step (a stripe
/// guards single atomic bytes), so going on with the poisoned lock is sound.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Segment {
    pub fn new(
        info: SegmentInfo,
        mapper: Box<dyn Mapper>,
        memory: Option<Memory>,
    ) -> std::io::Result<Segment> {
        let len = info.size_bytes.div_ceil(PS) * PS;
        let memfd = Memfd::create_fixed_size(&format!("pagemesh:{}", info.name), len)?;
        Ok(Segment {
            pages: PageTable::new(len / PS),
            memfd,
            mapper,
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            clients: RwLock::new(Vec::new()),
            sync_lock: Mutex::new(()),
            counters: Counters::default(),
            latency: Histogram::default(),
            info,
            volume: None,
            memory,
            slots: SlotTable::new(len / PS),
            removed: std::sync::atomic::AtomicBool::new(false),
            accounted: AtomicU64::new(0),
            cluster: std::sync::OnceLock::new(),
        })
    }

    /// Whether this is a volume segment (its attachments track the frames they map).
    pub fn is_volume(&self) -> bool {
        self.volume.is_some()
    }

    /// A segment whose pages are a volume's shared frames (mapped privately by clients).
    pub fn on_volume(info: SegmentInfo, volume: Arc<dyn SharedFrames>) -> std::io::Result<Segment> {
        let len = info.size_bytes.div_ceil(PS) * PS;
        Ok(Segment {
            pages: PageTable::new(len / PS),
            memfd: volume.memfd().try_clone()?,
            mapper: Box::new(pagemesh_store::ZeroMapper),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            clients: RwLock::new(Vec::new()),
            sync_lock: Mutex::new(()),
            counters: Counters::default(),
            latency: Histogram::default(),
            info,
            volume: Some(volume),
            memory: None,
            slots: SlotTable::new(len / PS),
            removed: std::sync::atomic::AtomicBool::new(false),
            accounted: AtomicU64::new(0),
            cluster: std::sync::OnceLock::new(),
        })
    }

    /// Change a page's state and keep the pool's accounting and clock in step (caller holds
    /// the page's stripe lock).
    pub fn set_state(&self, page: u64, new: PageState) -> PageState {
        let old = self.pages.set(page, new);
        if let Some(m) = &self.memory {
            let delta: i64 = match (old.is_resident(), new.is_resident()) {
                (false, true) => 1,
                (true, false) => -1,
                _ => 0,
            };
            // Count against the pool only while the segment is live: after `release` (which
            // gives back exactly what was counted) late transitions of in-flight work are not.
            let counted = delta != 0
                && self
                    .accounted
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                        (v != RELEASED).then(|| v.wrapping_add(delta as u64))
                    })
                    .is_ok();
            if counted {
                if delta > 0 {
                    m.pool.page_in(&m.partition, self.info.id, page);
                } else {
                    m.pool.page_out(&m.partition);
                }
            }
        }
        old
    }

    /// Whether `release` has run (the segment was removed).
    pub fn is_released(&self) -> bool {
        self.accounted.load(Ordering::Acquire) == RELEASED
    }

    /// Give back to the pool what this segment has counted against it, and stop counting.
    pub fn take_accounted(&self) -> u64 {
        match self.accounted.swap(RELEASED, Ordering::AcqRel) {
            RELEASED => 0,
            n => n,
        }
    }

    pub fn memfd(&self) -> &Memfd {
        &self.memfd
    }

    /// Length of the mapping clients make (the size rounded up to pages).
    pub fn mapped_len(&self) -> u64 {
        self.pages.npages() * PS
    }

    pub fn stripe(&self, page: u64) -> &Mutex<()> {
        &self.stripes[(page % STRIPES) as usize]
    }

    /// Add an attachment; false if the segment was removed meanwhile.
    pub fn attach(&self, a: Arc<Attachment>) -> bool {
        let mut clients = self.clients.write().unwrap_or_else(|e| e.into_inner());
        if self.removed.load(Ordering::SeqCst) {
            return false;
        }
        clients.push(a);
        true
    }

    /// Mark the segment removed unless a process is attached (then return their pids). Done
    /// under the clients lock, so an attach racing with `segment rm` either lands first (and rm
    /// refuses) or sees the mark (and fails).
    pub fn mark_removed(&self) -> Result<(), Vec<i32>> {
        let clients = self.clients.write().unwrap_or_else(|e| e.into_inner());
        if !clients.is_empty() {
            return Err(clients.iter().map(|a| a.pid).collect());
        }
        self.removed.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Whether a removal has marked the segment (new attachments are refused).
    pub fn is_marked_removed(&self) -> bool {
        self.removed.load(Ordering::SeqCst)
    }

    /// Undo `mark_removed` (the removal failed).
    pub fn unmark_removed(&self) {
        self.removed.store(false, Ordering::SeqCst);
    }

    pub fn detach(&self, id: u64) {
        self.clients
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|a| a.id != id);
    }

    /// Write a whole page into the memfd for an Absent or Paged page (caller holds its stripe
    /// lock). On failure the page is punched out again: no half-written page is left for a
    /// later fault to take as cached.
    pub fn install_page(&self, page: u64, buf: &[u8]) -> Result<(), IoError> {
        if let Err(source) = self.memfd.write_all_at(buf, page * PS) {
            let _ = self.memfd.punch_hole(page * PS, PS);
            return Err(IoError::Memfd {
                segment: self.info.name.clone(),
                offset: page * PS,
                source,
            });
        }
        Ok(())
    }

    /// Load an Absent or Paged page into `buf` for segment I/O (zeros for a dormant page);
    /// a page that cannot be read is poisoned, like a fault on it would (caller holds its
    /// stripe lock).
    pub fn load_whole(&self, page: u64, buf: &mut [u8]) -> Result<(), IoError> {
        match self.load(page, buf) {
            Ok(Loaded::Zero) => buf.fill(0),
            Ok(Loaded::Data) => {}
            Err(source) => {
                self.set_state(page, PageState::Poisoned);
                bump(&self.counters.poisonings, 1);
                log::error!(
                    "segment {} page {page}: {source}; the page is poisoned",
                    self.info.name
                );
                return Err(IoError::Load {
                    segment: self.info.name.clone(),
                    page,
                    source,
                });
            }
        }
        Ok(())
    }

    /// Read through the page cache. Absent pages come from the mapper without being cached.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), IoError> {
        self.check_range(offset, buf.len() as u64)?;
        if let Some(v) = &self.volume {
            return v.read_at(offset, buf).map_err(|source| IoError::Volume {
                segment: self.info.name.clone(),
                source,
            });
        }
        let mut page_buf = vec![0u8; PSU];
        let mut done = 0usize;
        while done < buf.len() {
            let off = offset + done as u64;
            let page = off / PS;
            let in_page = (off % PS) as usize;
            let n = (PSU - in_page).min(buf.len() - done);
            let _g = lock(self.stripe(page));
            match self.pages.get(page) {
                PageState::Poisoned => return Err(self.poisoned_err(page)),
                PageState::Absent | PageState::Paged => {
                    self.load_whole(page, &mut page_buf)?;
                    buf[done..done + n].copy_from_slice(&page_buf[in_page..in_page + n]);
                }
                PageState::Clean | PageState::Dirty => {
                    self.memfd
                        .read_exact_at(&mut buf[done..done + n], off)
                        .map_err(|source| IoError::Memfd {
                            segment: self.info.name.clone(),
                            offset: off,
                            source,
                        })?;
                }
            }
            done += n;
        }
        Ok(())
    }

    /// Write through the page cache; written pages become Dirty.
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), IoError> {
        self.check_range(offset, data.len() as u64)?;
        if self.volume.is_some() {
            return Err(IoError::ReadOnly {
                segment: self.info.name.clone(),
            });
        }
        let mut page_buf = vec![0u8; PSU];
        let mut done = 0usize;
        while done < data.len() {
            let off = offset + done as u64;
            let page = off / PS;
            let in_page = (off % PS) as usize;
            let n = (PSU - in_page).min(data.len() - done);
            if let Some(m) = &self.memory {
                if !self.pages.get(page).is_resident() {
                    m.pool.wait_for_room_in(&m.partition);
                }
            }
            let _g = lock(self.stripe(page));
            let memfd_err = |source| IoError::Memfd {
                segment: self.info.name.clone(),
                offset: off,
                source,
            };
            match self.pages.get(page) {
                PageState::Poisoned => return Err(self.poisoned_err(page)),
                PageState::Absent | PageState::Paged => {
                    // Compose the whole page first: a partial write must keep the rest of it.
                    self.load_whole(page, &mut page_buf)?;
                    page_buf[in_page..in_page + n].copy_from_slice(&data[done..done + n]);
                    self.install_page(page, &page_buf)?;
                }
                PageState::Clean | PageState::Dirty => {
                    if let Err(e) = self.memfd.write_all_at(&data[done..done + n], off) {
                        // Some bytes may have landed: the cached page differs from the mapper.
                        self.set_state(page, PageState::Dirty);
                        return Err(memfd_err(e));
                    }
                }
            }
            self.set_state(page, PageState::Dirty);
            done += n;
        }
        Ok(())
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), IoError> {
        match offset.checked_add(len) {
            Some(end) if end <= self.info.size_bytes => Ok(()),
            _ => Err(IoError::OutOfRange {
                segment: self.info.name.clone(),
                offset,
                len,
                size: self.info.size_bytes,
            }),
        }
    }

    pub fn poisoned_err(&self, page: u64) -> IoError {
        IoError::Poisoned {
            segment: self.info.name.clone(),
            page,
            offset: page * PS,
            hint: POISON_HINT,
        }
    }

    /// Write every dirty page back to the mapper and make it durable. Each page is first
    /// write-protected in every attached process and marked Clean, then copied: a write that
    /// lands after that faults and marks the page Dirty again, so no write is ever lost between
    /// the copy and the state change. Returns the number of pages written.
    pub fn sync(&self) -> Result<u64, IoError> {
        let _s = lock(&self.sync_lock);
        bump(&self.counters.syncs, 1);
        if !self.mapper.is_persistent() {
            return Ok(0);
        }
        let dirty = self.pages.pages_in(PageState::Dirty);
        let mut written = 0u64;
        let mut runs = Vec::new();
        let mut buf = vec![0u8; (SYNC_RUN_PAGES * PS) as usize];
        let mut i = 0;
        while i < dirty.len() {
            // A run of consecutive dirty pages, at most SYNC_RUN_PAGES long.
            let first = dirty[i];
            let mut n = 1;
            while i + (n as usize) < dirty.len()
                && dirty[i + n as usize] == first + n
                && n < SYNC_RUN_PAGES
            {
                n += 1;
            }
            i += n as usize;
            match self.sync_run(first, n, &mut buf) {
                Ok(w) => {
                    written += w;
                    runs.push((first, n));
                }
                Err(e) => {
                    self.redirty(&runs);
                    return Err(e);
                }
            }
        }
        if let Err(source) = self.mapper.sync() {
            // The data may not be durable: pages still cached are written again next time.
            self.redirty(&runs);
            return Err(IoError::Mapper {
                segment: self.info.name.clone(),
                page: runs.first().map_or(0, |r| r.0),
                source,
            });
        }
        Ok(written)
    }

    /// Write back one run of Dirty pages. The run's stripe locks are held until its data is in
    /// the file, so the evictor cannot drop a page marked Clean before its bytes are written.
    fn sync_run(&self, first: u64, n: u64, buf: &mut [u8]) -> Result<u64, IoError> {
        let guards: Vec<_> = (first..first + n).map(|p| lock(self.stripe(p))).collect();
        // Re-check under the locks: a page may have been evicted (written back) since the scan.
        if (first..first + n).any(|p| self.pages.get(p) != PageState::Dirty) {
            drop(guards);
            let mut w = 0;
            for p in first..first + n {
                if self.pages.get(p) == PageState::Dirty {
                    w += self.sync_run(p, 1, buf)?;
                }
            }
            return Ok(w);
        }
        // A process that keeps a writable mapping would write without faulting after the copy:
        // if one cannot be write-protected the pages stay Dirty and the sync fails (one whose
        // range is no longer registered loses its attachment instead).
        self.protect_everywhere(first, n)
            .map_err(|(pid, source)| IoError::WriteProtect {
                segment: self.info.name.clone(),
                first,
                n,
                pid,
                source,
            })?;
        let bytes = &mut buf[..(n * PS) as usize];
        self.memfd
            .read_exact_at(bytes, first * PS)
            .map_err(|source| IoError::Memfd {
                segment: self.info.name.clone(),
                offset: first * PS,
                source,
            })?;
        self.mapper
            .write_at(first * PS, bytes)
            .map_err(|source| IoError::Mapper {
                segment: self.info.name.clone(),
                page: first,
                source,
            })?;
        for p in first..first + n {
            self.set_state(p, PageState::Clean);
        }
        drop(guards);
        bump(&self.counters.mapper_bytes_written, n * PS);
        Ok(n)
    }

    /// Mark the Clean pages of runs written by a failed sync Dirty again.
    fn redirty(&self, runs: &[(u64, u64)]) {
        for &(first, n) in runs {
            for p in first..first + n {
                let _g = lock(self.stripe(p));
                if self.pages.get(p) == PageState::Clean {
                    self.set_state(p, PageState::Dirty);
                }
            }
        }
    }

    /// Forget every poisoned page: it becomes Absent, so the next access reloads it from the
    /// mapper (or reads zero). Returns how many pages were cleared.
    pub fn clear_poison(&self) -> u64 {
        if let Some(v) = &self.volume {
            return v.clear_poison();
        }
        let mut n = 0;
        for p in self.pages.pages_in(PageState::Poisoned) {
            let _g = lock(self.stripe(p));
            if self.pages.get(p) == PageState::Poisoned {
                self.set_state(p, PageState::Absent);
                n += 1;
            }
        }
        n
    }

    pub fn stat(&self) -> SegmentStat {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        SegmentStat {
            info: self.info.clone(),
            partition: self
                .memory
                .as_ref()
                .map_or("-".to_string(), |m| m.partition.name.clone()),
            paged_pages: self.pages.paged(),
            pinned_pages: self.pages.pinned(),
            resident_pages: self
                .volume
                .as_ref()
                .map_or(self.pages.resident(), |v| v.cached_blocks()),
            dirty_pages: self.pages.dirty(),
            poisoned_pages: self
                .volume
                .as_ref()
                .map_or(self.pages.poisoned(), |v| v.poisoned_blocks()),
            attached_clients: self.clients.read().unwrap_or_else(|e| e.into_inner()).len() as u64,
            counters: SegmentCounters {
                prefetched: l(&c.prefetched),
                evictions: l(&c.evictions),
                page_ins: l(&c.page_ins),
                page_outs: l(&c.page_outs),
                faults_missing: l(&c.faults_missing),
                faults_minor: l(&c.faults_minor),
                faults_wp: l(&c.faults_wp),
                zero_fills: l(&c.zero_fills),
                mapper_reads: l(&c.mapper_reads),
                mapper_bytes_read: l(&c.mapper_bytes_read),
                mapper_bytes_written: l(&c.mapper_bytes_written),
                poisonings: l(&c.poisonings),
                syncs: l(&c.syncs),
                fault_service_p50_ns: self.latency.quantile(0.50),
                fault_service_p99_ns: self.latency.quantile(0.99),
            },
        }
    }
}
