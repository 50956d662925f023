//! The node memory pool: a hard budget of page-cache pages shared by partitions, a paging
//! device, and the evictor thread that keeps the pool under its watermarks, off the fault path.
//!
//! Accounting: every transition of a segment page into or out of the memfd adjusts its
//! partition's and the pool's resident counts (`Segment::set_state`). When the pool passes its
//! high watermark the evictor is woken; it takes pages from the partition `pool::victim` names,
//! choosing pages by CLOCK over that partition's resident pages (a page faulted since the hand
//! last passed gets a second chance; pinned pages are skipped), until the pool is under its low
//! watermark. A fault that would bring a page in while the pool is at its budget waits (bounded)
//! for the evictor instead: that is the backpressure that keeps the budget. When the evictor's
//! last round found nothing evictable (pinned pages, partition mins, volume frames still
//! mapped, failures; busy pages do not count), faults proceed over budget rather than stall.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use pagemesh_store::paging::PagingDevice;
use pagemesh_types::PAGE_SIZE;

/// Clock entries of volume blocks carry the volume's id with this bit set.
pub const VOLUME_ID_BIT: u64 = 1 << 63;
use pagemesh_core::pool::{self, Limits, Usage};

/// How long a fault waits for room before it goes ahead anyway (and says so in the log).
const ROOM_WAIT: Duration = Duration::from_secs(10);
/// Pages the evictor takes before it wakes waiting faults again.
const EVICT_BATCH: u64 = 64;
/// Page-outs between two drops of the paging file's cached pages.
const PAGING_CACHE_DROP_PAGES: u64 = 4096;

/// A memory tenant: limits, counts and the clock over its resident pages.
pub struct Partition {
    pub name: String,
    limits: Mutex<Limits>,
    /// `limits.max_pages`, readable without the lock (the fault path checks it).
    max_pages: AtomicU64,
    pub resident: AtomicU64,
    pub pinned: AtomicU64,
    clock: Mutex<VecDeque<(u64, u64)>>,
    pub evictions: AtomicU64,
    pub page_ins: AtomicU64,
    pub page_outs: AtomicU64,
    pub paging_errors: AtomicU64,
}

impl Partition {
    pub fn new(name: &str, limits: Limits) -> Arc<Partition> {
        Arc::new(Partition {
            name: name.to_string(),
            max_pages: AtomicU64::new(limits.max_pages),
            limits: Mutex::new(limits),
            resident: AtomicU64::new(0),
            pinned: AtomicU64::new(0),
            clock: Mutex::new(VecDeque::new()),
            evictions: AtomicU64::new(0),
            page_ins: AtomicU64::new(0),
            page_outs: AtomicU64::new(0),
            paging_errors: AtomicU64::new(0),
        })
    }

    pub fn limits(&self) -> Limits {
        *self.limits.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_limits(&self, l: Limits) {
        let mut g = self.limits.lock().unwrap_or_else(|e| e.into_inner());
        *g = l;
        self.max_pages.store(l.max_pages, Ordering::Relaxed);
    }

    /// The most pages it may hold (its limits' max), without taking the lock.
    pub fn max_pages(&self) -> u64 {
        self.max_pages.load(Ordering::Relaxed)
    }

    fn usage(&self) -> Usage {
        Usage {
            resident: self.resident.load(Ordering::Relaxed),
            pinned: self.pinned.load(Ordering::Relaxed),
        }
    }
}

/// The node's pool.
pub struct Pool {
    pub budget_pages: u64,
    pub high_pages: u64,
    pub low_pages: u64,
    pub paging: Option<PagingDevice>,
    resident: AtomicU64,
    /// Cluster pages whose eviction was asked for and has not ended yet.
    evicting: AtomicU64,
    partitions: RwLock<Vec<Arc<Partition>>>,
    segments: RwLock<HashMap<u64, Weak<dyn Resident>>>,
    volumes: RwLock<HashMap<u64, Weak<dyn Resident>>>,
    next_volume_id: AtomicU64,
    /// Set when the evictor's last round could not free anything: faults then do not wait.
    stuck: std::sync::atomic::AtomicBool,
    kick: (Mutex<bool>, Condvar),
    room: (Mutex<()>, Condvar),
    pub waits: AtomicU64,
    last_cache_drop: AtomicU64,
    prefetch: Mutex<Option<std::sync::mpsc::SyncSender<PrefetchJob>>>,
    started: Instant,
    last_warn_s: AtomicU64,
}

/// What keeps pages on the pool's clocks (a segment, a volume): the pool sits below them and
/// names neither; they register with it.
pub trait Resident: Send + Sync {
    /// The evictor's clock hand reached `page`; it may take up to `max` pages from there
    /// (a run after it), at least the one.
    fn clock_visit(self: Arc<Self>, page: u64, max: u64) -> ClockVisit;
    /// Whether `page` is still resident (clock entries of pages gone are dropped when a clock
    /// is compacted).
    fn is_resident(&self, page: u64) -> bool;
}

/// What reads pages ahead into its page cache, for the prefetcher thread.
pub trait Prefetch: Send + Sync {
    fn prefetch(&self, first: u64, pages: u64);
}

/// Pages of a file segment to read into its page cache in the background.
pub struct PrefetchJob {
    pub segment: Weak<dyn Prefetch>,
    pub first: u64,
    pub pages: u64,
}

/// Jobs queued for the prefetcher at most; past that, requests are dropped (it is a hint).
const PREFETCH_QUEUE: usize = 16;
/// Prefetcher threads: two jobs in flight at once, so one's read overlaps the other's copy.
const PREFETCH_THREADS: usize = 2;

impl Pool {
    /// A pool of `budget_pages` with watermarks at 95% and 90% of it.
    pub fn new(budget_pages: u64, paging: Option<PagingDevice>) -> Arc<Pool> {
        Arc::new(Pool {
            budget_pages,
            high_pages: budget_pages - budget_pages / 20,
            low_pages: budget_pages - budget_pages / 10,
            paging,
            resident: AtomicU64::new(0),
            evicting: AtomicU64::new(0),
            partitions: RwLock::new(Vec::new()),
            segments: RwLock::new(HashMap::new()),
            volumes: RwLock::new(HashMap::new()),
            next_volume_id: AtomicU64::new(1),
            stuck: std::sync::atomic::AtomicBool::new(false),
            kick: (Mutex::new(false), Condvar::new()),
            room: (Mutex::new(()), Condvar::new()),
            waits: AtomicU64::new(0),
            last_cache_drop: AtomicU64::new(0),
            prefetch: Mutex::new(None),
            started: Instant::now(),
            last_warn_s: AtomicU64::new(0),
        })
    }

    pub fn resident(&self) -> u64 {
        self.resident.load(Ordering::Relaxed)
    }

    /// Pages a run may bring in beyond the faulting page: up to the budget itself. Crossing
    /// the high watermark wakes the evictor as for any page; a run stops at the budget, so the
    /// next fault waits for room (bounded) rather than the pool going over. Bounded by the
    /// high watermark instead, runs of a reader scanning more than memory shrank to the floor
    /// whenever the pool sat between its watermarks, which is all the time under overcommit.
    pub fn room_pages(&self) -> u64 {
        self.budget_pages.saturating_sub(self.resident())
    }

    /// Pages a run of partition `p` may bring in: the pool's room, and no more than `p`'s max
    /// leaves (a partition's max is hard: it is paged out beyond it whatever the pool's fill).
    pub fn room_pages_in(&self, p: &Partition) -> u64 {
        self.room_pages().min(
            p.max_pages()
                .saturating_sub(p.resident.load(Ordering::Relaxed)),
        )
    }

    /// Whether some partition with a max below the budget is at it (the evictor's cue,
    /// whatever the pool's fill; a partition allowed the whole budget follows the pool's
    /// watermarks).
    fn at_a_max(&self) -> bool {
        self.partitions().iter().any(|p| {
            let max = p.max_pages();
            max < self.budget_pages && p.resident.load(Ordering::Relaxed) >= max
        })
    }

    /// The partition most above its low mark (an eighth below its max: eviction for a max
    /// goes down to it, so a writer at the max does not wait at every page), if any.
    fn most_above_max_low(&self) -> Option<Arc<Partition>> {
        self.partitions()
            .into_iter()
            .filter(|p| p.max_pages() < self.budget_pages)
            .filter(|p| p.resident.load(Ordering::Relaxed) > p.pinned.load(Ordering::Relaxed))
            .map(|p| {
                (
                    p.resident
                        .load(Ordering::Relaxed)
                        .saturating_sub(max_low(&p)),
                    p,
                )
            })
            .filter(|(e, _)| *e > 0)
            .max_by_key(|(e, _)| *e)
            .map(|(_, p)| p)
    }

    /// Backpressure for a page of partition `p`: wait (bounded, as [`Pool::wait_for_room`])
    /// while the pool is at its budget or `p` at its max.
    pub fn wait_for_room_in(&self, p: &Partition) {
        // A max of the whole budget is the pool's own condition (`wait_for_room`).
        let at_max = || {
            let max = p.max_pages();
            max < self.budget_pages && p.resident.load(Ordering::Relaxed) >= max
        };
        if !at_max() {
            return self.wait_for_room();
        }
        self.waits.fetch_add(1, Ordering::Relaxed);
        self.kick_evictor();
        let deadline = Instant::now() + ROOM_WAIT;
        let (m, cv) = &self.room;
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        while at_max() && !self.stuck.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= deadline {
                log::warn!(
                    "memory pool: partition {} still at its max after {ROOM_WAIT:?}: nothing evictable; letting the fault proceed",
                    p.name
                );
                return;
            }
            g = cv
                .wait_timeout(g, (deadline - now).min(Duration::from_millis(50)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(g);
        self.wait_for_room();
    }

    /// Resident pages not already on their way out.
    fn effective_resident(&self) -> u64 {
        self.resident()
            .saturating_sub(self.evicting.load(Ordering::Relaxed))
    }

    /// Cluster pages whose eviction was asked for and has not ended yet.
    pub fn evicting(&self) -> u64 {
        self.evicting.load(Ordering::Relaxed)
    }

    /// A cluster page's eviction was asked of the cluster engine (it completes later).
    pub fn cluster_evict_started(&self) {
        self.evicting.fetch_add(1, Ordering::Relaxed);
    }

    /// A cluster page's eviction ended: `kept` pages go back on their partition's clock.
    pub fn cluster_evict_done(&self, part: &Partition, kept: Option<(u64, u64)>) {
        let _ = self
            .evicting
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1));
        if let Some(entry) = kept {
            part.clock
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push_back(entry);
        }
        self.notify_room();
    }

    pub fn add_partition(&self, p: Arc<Partition>) {
        self.partitions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .push(p);
    }

    pub fn remove_partition(&self, name: &str) {
        self.partitions
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|p| p.name != name);
    }

    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Entitlement of every partition now, in pages, by name.
    pub fn entitlements(&self) -> HashMap<String, u64> {
        let parts = self.partitions();
        let limits: Vec<Limits> = parts.iter().map(|p| p.limits()).collect();
        parts
            .iter()
            .map(|p| p.name.clone())
            .zip(pool::entitlements(self.budget_pages, &limits))
            .collect()
    }

    /// Put a segment's pages (clock entries `(id, page)`) in the evictor's reach.
    pub fn register<R: Resident + 'static>(&self, id: u64, seg: &Arc<R>) {
        assert_eq!(
            id & VOLUME_ID_BIT,
            0,
            "segment id {id:#x} in the volumes' id space"
        );
        let seg: Arc<dyn Resident> = Arc::clone(seg) as Arc<dyn Resident>;
        self.segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::downgrade(&seg));
    }

    /// An id for a volume's clock entries.
    pub fn volume_id(&self) -> u64 {
        self.next_volume_id.fetch_add(1, Ordering::Relaxed) | VOLUME_ID_BIT
    }

    pub fn register_volume<R: Resident + 'static>(&self, id: u64, v: &Arc<R>) {
        assert_ne!(
            id & VOLUME_ID_BIT,
            0,
            "volume id {id:#x} from outside volume_id()"
        );
        let v: Arc<dyn Resident> = Arc::clone(v) as Arc<dyn Resident>;
        self.volumes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, Arc::downgrade(&v));
    }

    pub fn unregister_volume(&self, id: u64) {
        self.volumes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    pub fn unregister(&self, id: u64) {
        self.segments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id);
    }

    /// A page of `seg` in `part` entered the memfd.
    pub fn page_in(&self, part: &Partition, seg_id: u64, page: u64) {
        part.resident.fetch_add(1, Ordering::Relaxed);
        part.clock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push_back((seg_id, page));
        if self.resident.fetch_add(1, Ordering::Relaxed) + 1 > self.high_pages {
            self.kick_evictor();
        }
    }

    /// A removed segment gives back the `n` pages it had counted.
    pub fn release_pages(&self, part: &Partition, n: u64) {
        part.resident.fetch_sub(n, Ordering::Relaxed);
        self.resident.fetch_sub(n, Ordering::Relaxed);
        self.notify_room();
    }

    /// A page left the memfd.
    pub fn page_out(&self, part: &Partition) {
        part.resident.fetch_sub(1, Ordering::Relaxed);
        self.resident.fetch_sub(1, Ordering::Relaxed);
    }

    /// Wake the faults waiting for room. Under the room mutex, so a waiter between its check
    /// and its wait cannot miss it.
    fn notify_room(&self) {
        let (m, cv) = &self.room;
        let _g = m.lock().unwrap_or_else(|e| e.into_inner());
        cv.notify_all();
    }

    fn kick_evictor(&self) {
        let (m, cv) = &self.kick;
        *m.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_one();
    }

    /// Backpressure: before bringing a page in, wait (bounded) while the pool is at its budget.
    pub fn wait_for_room(&self) {
        if self.resident() < self.budget_pages {
            return;
        }
        if self.stuck.load(Ordering::Relaxed) {
            // Nothing is evictable right now (pinned, protected by mins, or volume frames
            // still mapped): waiting would only stall the fault. Go over budget, say so.
            self.warn_rate_limited(&format!(
                "memory pool: over its budget ({} pages) with nothing evictable; faults proceed",
                self.budget_pages
            ));
            return;
        }
        self.waits.fetch_add(1, Ordering::Relaxed);
        self.kick_evictor();
        let deadline = Instant::now() + ROOM_WAIT;
        let (m, cv) = &self.room;
        let mut g = m.lock().unwrap_or_else(|e| e.into_inner());
        while self.resident() >= self.budget_pages && !self.stuck.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= deadline {
                log::warn!(
                    "memory pool: still at its budget ({} pages) after {ROOM_WAIT:?}: nothing evictable \
                     (pinned or protected by partition mins?); letting the fault proceed over budget",
                    self.budget_pages
                );
                return;
            }
            g = cv
                .wait_timeout(g, (deadline - now).min(Duration::from_millis(50)))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Start the prefetcher thread: it reads file pages ahead of sequential readers into their
    /// segments' page caches, so their next faults are minor ones with no I/O.
    pub fn start_prefetcher(&self) -> std::io::Result<()> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<PrefetchJob>(PREFETCH_QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..PREFETCH_THREADS {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("prefetcher-{i}"))
                .spawn(move || loop {
                    // One job at a time off the shared queue; the lock is not held while the
                    // job reads.
                    let job = rx.lock().unwrap_or_else(|e| e.into_inner()).recv();
                    let Ok(job) = job else { return };
                    if let Some(seg) = job.segment.upgrade() {
                        seg.prefetch(job.first, job.pages);
                    }
                })?;
        }
        *self.prefetch.lock().unwrap_or_else(|e| e.into_inner()) = Some(tx);
        Ok(())
    }

    /// Ask for a prefetch (dropped when the queue is full or the pool is under pressure).
    pub fn request_prefetch(&self, job: PrefetchJob) {
        if self.resident() >= self.high_pages {
            return;
        }
        if let Some(tx) = self
            .prefetch
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            let _ = tx.try_send(job);
        }
    }

    /// The evictor thread's body: runs for the daemon's life.
    pub fn run_evictor(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(20);
        loop {
            {
                let (m, cv) = &self.kick;
                let mut kicked = m.lock().unwrap_or_else(|e| e.into_inner());
                if !*kicked && self.resident() <= self.high_pages && !self.at_a_max() {
                    kicked = cv
                        .wait_timeout(kicked, Duration::from_millis(200))
                        .unwrap_or_else(|e| e.into_inner())
                        .0;
                }
                *kicked = false;
            }
            self.compact_clocks();
            let over_max = self.at_a_max();
            if self.resident() <= self.high_pages && !over_max {
                continue;
            }
            // Pages of cluster segments leave asynchronously (their home takes them back):
            // count the ones asked for as gone, so one round does not ask for everything, and
            // wait for them rather than spin when they are all that is left to wait for.
            if self.effective_resident() <= self.low_pages && !over_max {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            let mut stuck = false;
            let mut busy = false;
            // Down to the low watermark, and every partition down to its low mark (taking
            // only from those above it once the pool is below its own).
            let more = || self.effective_resident() > self.low_pages;
            while (more() || self.most_above_max_low().is_some()) && !stuck && !busy {
                for _ in 0..EVICT_BATCH {
                    let sweep = if more() {
                        self.evict_one()
                    } else if let Some(p) = self.most_above_max_low() {
                        self.evict_from(&p)
                    } else {
                        break;
                    };
                    match sweep {
                        // A fault waiting for room goes on as soon as a run has left, not
                        // after the whole batch.
                        Sweep::Evicted => self.notify_room(),
                        Sweep::Busy => {
                            busy = true;
                            break;
                        }
                        Sweep::Nothing => {
                            stuck = true;
                            break;
                        }
                    }
                }
                // Stuck only when nothing could be evicted for a reason that will not pass by
                // itself (pinned, mins, mapped frames, failures); busy pages will free up.
                self.stuck.store(stuck, Ordering::Relaxed);
                self.notify_room();
                self.drop_paging_cache();
                if self.evicting.load(Ordering::Relaxed) > 0 {
                    // Cluster evictions answer asynchronously (a busy page comes back on the
                    // clock at once): give the engine a moment instead of spinning on them.
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            if stuck || busy {
                // Back off while nothing can be evicted, up to 1 s between rounds.
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(1));
            } else {
                backoff = Duration::from_millis(20);
            }
        }
    }

    /// Every PAGING_CACHE_DROP_PAGES page-outs, ask the kernel to drop the paging file's clean
    /// cached pages (dirty ones are written back first by the kernel): paged-out memory must
    /// not stay in RAM as page cache.
    fn drop_paging_cache(&self) {
        let Some(paging) = &self.paging else { return };
        let outs: u64 = self
            .partitions()
            .iter()
            .map(|p| p.page_outs.load(Ordering::Relaxed))
            .sum();
        let last = self.last_cache_drop.load(Ordering::Relaxed);
        if outs >= last + PAGING_CACHE_DROP_PAGES {
            self.last_cache_drop.store(outs, Ordering::Relaxed);
            let _ = pagemesh_uffd::fileio::drop_cached(paging.file(), 0, 0);
        }
    }

    /// Evict one page: from the partition the policy names, or, if nothing can be evicted
    /// there (every page failed, pinned or busy), from the next one the policy names without
    /// it. Returns false if no partition gave a page up.
    fn evict_one(&self) -> Sweep {
        let parts = self.partitions();
        let mut excluded = vec![false; parts.len()];
        let mut busy = false;
        loop {
            let usage: Vec<(Limits, Usage)> = parts
                .iter()
                .zip(&excluded)
                .map(|(p, &x)| (p.limits(), if x { Usage::default() } else { p.usage() }))
                .collect();
            let Some(v) = pool::victim(self.budget_pages, &usage) else {
                return if busy { Sweep::Busy } else { Sweep::Nothing };
            };
            match self.evict_from(&parts[v]) {
                Sweep::Evicted => {
                    self.stuck.store(false, Ordering::Relaxed);
                    return Sweep::Evicted;
                }
                Sweep::Busy => busy = true,
                Sweep::Nothing => {}
            }
            excluded[v] = true;
        }
    }

    /// The segment or volume a clock entry belongs to, if it still exists.
    fn resident_of(&self, id: u64) -> Option<Arc<dyn Resident>> {
        let map = if id & VOLUME_ID_BIT != 0 {
            &self.volumes
        } else {
            &self.segments
        };
        map.read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .and_then(Weak::upgrade)
    }

    /// One sweep of a partition's clock, until a page is evicted.
    fn evict_from(&self, part: &Partition) -> Sweep {
        let mut busy = false;
        // A run may take the pages after the one the hand reached, down to the low watermark.
        let max = self
            .effective_resident()
            .saturating_sub(self.low_pages)
            .max(1);
        let sweep = part.clock.lock().unwrap_or_else(|e| e.into_inner()).len() * 2 + 1;
        for _ in 0..sweep {
            let Some((seg_id, page)) = part
                .clock
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front()
            else {
                return if busy { Sweep::Busy } else { Sweep::Nothing };
            };
            let Some(owner) = self.resident_of(seg_id) else {
                continue;
            };
            let visit = Arc::clone(&owner).clock_visit(page, max);
            match visit {
                ClockVisit::Gone => continue,
                ClockVisit::Busy => {
                    busy = true;
                    part.clock
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_back((seg_id, page));
                }
                ClockVisit::Keep => part
                    .clock
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_back((seg_id, page)),
                ClockVisit::Evicted(n) => {
                    part.evictions.fetch_add(n, Ordering::Relaxed);
                    // The run's other pages usually follow this one on the clock (they came in
                    // together): drop their entries now, or they would stay behind and, once
                    // the pages come back, evict them early, before anything could read them.
                    // Only entries of pages still out: one that came back in meanwhile (its
                    // stripe is free once the run has left) has just been queued anew, and
                    // popping that entry would leave it on no clock at all.
                    let mut clock = part.clock.lock().unwrap_or_else(|e| e.into_inner());
                    while clock.front().is_some_and(|&(s, p)| {
                        s == seg_id && p > page && p < page + n && !owner.is_resident(p)
                    }) {
                        clock.pop_front();
                    }
                    drop(clock);
                    return Sweep::Evicted;
                }
                ClockVisit::Failed(e) => {
                    part.clock
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push_back((seg_id, page));
                    self.warn_rate_limited(&format!(
                        "memory pool: partition {}: cannot evict: {e}",
                        part.name
                    ));
                    return Sweep::Nothing;
                }
            }
        }
        if busy {
            Sweep::Busy
        } else {
            Sweep::Nothing
        }
    }

    /// Drop clock entries of pages that are not resident any more, once a partition's clock has
    /// grown well past its resident pages (cluster pages come and go without the evictor:
    /// every transfer in adds an entry, an invalidation removes none).
    fn compact_clocks(&self) {
        for part in self.partitions() {
            let resident = part.resident.load(Ordering::Relaxed) as usize;
            let mut clock = part.clock.lock().unwrap_or_else(|e| e.into_inner());
            if clock.len() <= 2 * resident + 4096 {
                continue;
            }
            let segments = self.segments.read().unwrap_or_else(|e| e.into_inner());
            clock.retain(|&(seg_id, page)| {
                seg_id & VOLUME_ID_BIT != 0
                    || segments
                        .get(&seg_id)
                        .and_then(Weak::upgrade)
                        .is_some_and(|s| s.is_resident(page))
            });
        }
    }

    /// Log a warning at most once every 10 s.
    fn warn_rate_limited(&self, msg: &str) {
        let now = self.started.elapsed().as_secs();
        let last = self.last_warn_s.load(Ordering::Relaxed);
        if last == 0 || now >= last + 10 {
            self.last_warn_s.store(now.max(1), Ordering::Relaxed);
            log::warn!("{msg} (repeats are not logged for 10 s)");
        }
    }

    /// Bytes of the budget.
    pub fn budget_bytes(&self) -> u64 {
        self.budget_pages * PAGE_SIZE
    }
}

/// What a sweep achieved.
enum Sweep {
    Evicted,
    /// Nothing evicted, but some pages were only busy: try again soon.
    Busy,
    Nothing,
}

/// What the clock hand did with a page.
pub enum ClockVisit {
    /// Not resident any more: drop the entry.
    Gone,
    /// Referenced (second chance), pinned or still mapped: keep the entry.
    Keep,
    /// Its lock is held (a fault, a sync, a read-ahead at work): keep it, and the pool is not
    /// stuck for it.
    Busy,
    /// This many pages left (the one visited, and a run after it).
    Evicted(u64),
    /// Eviction failed: keep the entry; the evictor tries other partitions.
    Failed(String),
}

/// A partition's low mark: an eighth below its max (at least a page), where eviction for the
/// max stops.
fn max_low(p: &Partition) -> u64 {
    let max = p.max_pages();
    max - (max / 8).clamp(1, max.max(1)).min(max)
}
