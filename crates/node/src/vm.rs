//! A VM whose guest memory is served from a volume (Firecracker's UFFD memory backend,
//! `pagemesh vm serve`): the VMM registered its guest memory on a userfaultfd and handed it
//! over; every fault is answered with a run of the snapshot image's blocks copied out of the
//! volume's node-wide cache (`volume::copy`), so the storage reads are shared by every VM
//! restored from that snapshot on the node.
//!
//! One thread per VM reads its uffd and serves it in order: the non-cooperative events
//! (`UFFD_EVENT_REMOVE` from a balloon; unmap and remap) must be applied before the faults
//! that follow them, and while one is unread the kernel refuses every resolving ioctl with
//! `EAGAIN`. A striped worker pool would have two workers race a removal against a fault.
//!
//! Failure is loud: a fault that cannot be served (a poisoned or corrupt block, a storage read
//! that does not finish within `PENDING_WAIT`, a fault outside every region) is poisoned and
//! the VMM process is signalled — SIGBUS, then SIGKILL if it still lives after
//! [`STOP_GRACE`] — through a pidfd, so a recycled pid is never hit. The VMM is never left
//! waiting on a fault and never given zeros for image data.

mod regions;
mod working_set;

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pagemesh_proto::vm_lease::MAX_WORKING_SET_PAGES;
use pagemesh_proto::VmRegion;
use pagemesh_uffd::fault::{answer_unservable, install};
use pagemesh_uffd::poll::wait_any_readable;
use pagemesh_uffd::{
    Bounds, Fault, FaultReader, Incoming, PidFd, Protect, Source, Stopped, Uffd, Wake,
};

use crate::runs::{Streams, MAX_RUN_PAGES};
use crate::volume::{Volume, VolumeError, PS};
pub use regions::{Landing, Placement, Regions, MAX_REGIONS};
pub use working_set::{Recorder, Replay, REPLAY_RUN_PAGES};

/// How long a stopped VM's VMM has to exit after SIGBUS before it gets SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
/// Most messages read from the uffd at a time.
const BATCH: usize = 16;
/// Most faults read but not served yet (a batch waiting behind an event).
const MAX_QUEUED: usize = 64;
/// Bound on one wait for the uffd (the thread also looks at the stop flag and the VMM).
const IDLE_WAIT_MS: i32 = 200;
/// Most times one fault may meet `EAGAIN` (an event to read first) before the VM is stopped.
const MAX_AGAIN: u32 = 10_000;

/// Why a VM cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("bad guest memory regions: {0}")]
    Regions(String),
    #[error("cannot start the VM's serving thread: {0}")]
    Thread(std::io::Error),
}

/// Why a working set to replay was refused (the VM is served as if none was given).
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    #[error("a working set of {0} pages (at most {MAX_WORKING_SET_PAGES})")]
    TooLong(usize),
    #[error("a working set was given for this VM already")]
    Twice,
}

/// Counters of one VM.
#[derive(Default, Debug)]
pub struct GuestCounters {
    pub faults: AtomicU64,
    pub pages_copied: AtomicU64,
    pub zero_pages: AtomicU64,
    pub removes: AtomicU64,
    /// Microseconds from the attach to the first fault (0: none yet).
    pub first_fault_us: AtomicU64,
    /// Microseconds spent serving faults.
    pub busy_us: AtomicU64,
    /// Pages the replay pushed into the guest ahead of its faults.
    pub replayed_pages: AtomicU64,
    /// Replayed pages found in the guest already (its own fault came first): left alone.
    pub replay_present: AtomicU64,
    /// Replayed pages not pushed: given back by the guest, in no region, or unreadable.
    pub replay_skipped: AtomicU64,
    /// Microseconds from the attach to the end of the replay (0: none, or not ended).
    pub replay_done_us: AtomicU64,
}

/// One VM served from a volume.
pub struct Guest {
    pub id: u64,
    vmm: PidFd,
    uffd: Uffd,
    volume: Arc<Volume>,
    stop: AtomicBool,
    started: Instant,
    pub counters: GuestCounters,
    /// The image pages the guest's faults brought in, in order.
    record: Mutex<Recorder>,
    /// A working set handed over by `replay`, for the serving thread to take.
    replay_in: Mutex<Option<Vec<u64>>>,
    /// Whether `replay` was called (once only).
    replay_given: AtomicBool,
    /// Rung (a byte written to .0) when a working set is handed over; .1 is polled.
    bell: (UnixStream, UnixStream),
}

/// The serving thread's replay: the pages left, and how often in a row a push met `EAGAIN`.
#[derive(Default)]
struct ReplayState {
    list: Replay,
    again: u32,
}

/// How serving one fault ended.
enum Served {
    Done,
    /// An event is unread: read it, then try again.
    Again,
    /// The VMM is gone.
    Gone,
    Failed(String),
}

impl Guest {
    /// A VM whose VMM (`vmm`) registered its guest memory (`regions`) on `uffd`.
    pub fn new(
        id: u64,
        vmm: PidFd,
        uffd: Uffd,
        volume: Arc<Volume>,
        regions: &[VmRegion],
    ) -> Result<(Arc<Guest>, Regions), VmError> {
        let layout = Regions::new(regions, volume.info.size_bytes)?;
        let bell = UnixStream::pair()
            .and_then(|(a, b)| {
                a.set_nonblocking(true)?;
                b.set_nonblocking(true)?;
                Ok((a, b))
            })
            .map_err(VmError::Thread)?;
        let record = Mutex::new(Recorder::new(volume.blocks()));
        let g = Guest {
            id,
            vmm,
            uffd,
            volume,
            stop: AtomicBool::new(false),
            started: Instant::now(),
            counters: GuestCounters::default(),
            record,
            replay_in: Mutex::new(None),
            replay_given: AtomicBool::new(false),
            bell,
        };
        Ok((Arc::new(g), layout))
    }

    pub fn vmm_pid(&self) -> i32 {
        self.vmm.pid()
    }

    /// Serve the VM on a thread of its own until its VMM exits, it is stopped, or `detach`.
    pub fn spawn(
        self: &Arc<Self>,
        layout: Regions,
    ) -> Result<std::thread::JoinHandle<()>, VmError> {
        let g = Arc::clone(self);
        std::thread::Builder::new()
            .name(format!("vm-{}", self.id))
            .spawn(move || g.run(layout))
            .map_err(VmError::Thread)
    }

    /// Ask the serving thread to end (within IDLE_WAIT_MS, or PENDING_WAIT if it is waiting
    /// for a storage read).
    pub fn detach(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Push the image pages `pages` into the guest, in this order, ahead of its faults (which
    /// are still served first). Once per VM.
    pub fn replay(&self, pages: Vec<u64>) -> Result<(), ReplayError> {
        if pages.len() > MAX_WORKING_SET_PAGES {
            return Err(ReplayError::TooLong(pages.len()));
        }
        if self.replay_given.swap(true, Ordering::AcqRel) {
            return Err(ReplayError::Twice);
        }
        *self
            .replay_in
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(pages);
        // A full socket buffer means the thread has a byte to wake on already.
        let _ = (&self.bell.0).write(&[1]);
        Ok(())
    }

    /// The image pages the guest's faults brought in so far, in order, each once; and how many
    /// more came past the bound.
    pub fn record(&self) -> (Vec<u64>, u64) {
        self.record
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .snapshot()
    }

    /// Whether the VMM process has exited.
    pub fn vmm_exited(&self) -> bool {
        self.vmm.wait_exited(0).unwrap_or(true)
    }

    /// Stop the VM loudly: SIGBUS to the VMM (Firecracker logs it and exits), SIGKILL if it
    /// still lives after STOP_GRACE. Blocks for at most STOP_GRACE.
    pub fn stop_vmm(&self, why: &str) {
        let pid = self.vmm.pid();
        log::error!(
            "vm {} (VMM pid {pid}): {why}; stopping the VM (SIGBUS)",
            self.id
        );
        if self.vmm.stop_loudly(STOP_GRACE) == Stopped::ByKill {
            log::error!(
                "vm {} (VMM pid {pid}): still running {STOP_GRACE:?} after SIGBUS; killed (SIGKILL)",
                self.id
            );
        }
    }

    fn run(&self, mut layout: Regions) {
        let mut reader = FaultReader::new(BATCH);
        let mut queue: VecDeque<(Fault, u32)> = VecDeque::with_capacity(MAX_QUEUED);
        let mut scratch = vec![0u8; (MAX_RUN_PAGES * PS) as usize];
        let streams = Streams::default();
        let mut replay = ReplayState::default();
        while !self.stop.load(Ordering::Acquire) {
            // While a replay is pushing, only look for faults (no wait): they come first.
            let wait_ms = if replay.list.is_done() {
                IDLE_WAIT_MS
            } else {
                0
            };
            let fds = [self.uffd.as_fd(), self.vmm.as_fd(), self.bell.1.as_fd()];
            match wait_any_readable(&fds, wait_ms) {
                Ok(Some(1)) => break, // the VMM exited
                Ok(_) => {}
                Err(e) => {
                    self.stop_vmm(&format!("polling its uffd failed: {e}"));
                    break;
                }
            }
            self.take_replay(&mut replay);
            if !self.read_pending(&mut reader, &mut queue, &mut layout) {
                return;
            }
            while let Some((f, tries)) = queue.front_mut() {
                let f = *f;
                match self.serve(&f, &layout, &streams, &mut scratch) {
                    Served::Done => {
                        queue.pop_front();
                    }
                    Served::Again if *tries < MAX_AGAIN => {
                        *tries += 1;
                        break; // read the event first
                    }
                    Served::Again => {
                        self.fail(&f, "the VMM kept changing its memory under a fault");
                        return;
                    }
                    Served::Gone => return,
                    Served::Failed(why) => {
                        self.fail(&f, &why);
                        return;
                    }
                }
            }
            if queue.is_empty() && !replay.list.is_done() {
                self.replay_step(&mut replay, &layout, &mut scratch);
            }
        }
    }

    /// Read what is pending on the uffd (bounded by the queue's room): events are applied at
    /// once, faults queued behind them in order. False if the VM was stopped.
    fn read_pending(
        &self,
        reader: &mut FaultReader,
        queue: &mut VecDeque<(Fault, u32)>,
        layout: &mut Regions,
    ) -> bool {
        let everything = Bounds {
            base: 0,
            len: u64::MAX,
        };
        while queue.len() + BATCH <= MAX_QUEUED {
            let batch = match reader.read(&self.uffd, everything, || {}) {
                Ok([]) => break,
                Ok(b) => b,
                Err(e) => {
                    self.stop_vmm(&format!("reading its uffd failed: {e}"));
                    return false;
                }
            };
            for inc in batch {
                match *inc {
                    Incoming::Fault(f) | Incoming::Stray(f) => queue.push_back((f, 0)),
                    Incoming::Layout(l) => {
                        if matches!(l, pagemesh_uffd::Layout::Remove { .. }) {
                            self.counters.removes.fetch_add(1, Ordering::Relaxed);
                        }
                        log::debug!("vm {}: {l:?}", self.id);
                        layout.apply(l);
                    }
                    Incoming::Other { event } => {
                        log::warn!("vm {}: uffd event {event} ignored", self.id)
                    }
                }
            }
        }
        true
    }

    /// Take a working set handed over by `replay`, if one came (and silence the bell).
    fn take_replay(&self, replay: &mut ReplayState) {
        let mut buf = [0u8; 16];
        while matches!((&self.bell.1).read(&mut buf), Ok(n) if n > 0) {}
        let given = self
            .replay_in
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(pages) = given {
            log::info!("vm {}: replaying {} pages", self.id, pages.len());
            replay.list = Replay::new(pages);
            if replay.list.is_done() {
                self.replay_ended();
            }
        }
    }

    /// Push the replay's next run into the guest. Never stops the VM: a page it cannot bring
    /// is left for the guest's own fault, which fails loudly if it must. The ordering rules
    /// (docs/firecracker.md, "Record and replay"): the run is placed with the layout as of the
    /// last event read, and nothing is read between placing it and copying it, so a removal
    /// read before is honoured, and one raised after makes the kernel refuse the copy (EAGAIN)
    /// until it is read; a page the guest has (its fault came first) makes the copy stop short
    /// of it (EEXIST), and it is never overwritten.
    fn replay_step(&self, replay: &mut ReplayState, layout: &Regions, scratch: &mut [u8]) {
        let c = &self.counters;
        let Some((first, want)) = replay.list.peek_run() else {
            return;
        };
        let placed = match layout.place(first) {
            Placement::At { addr, limit } if first < limit.min(self.volume.blocks()) => {
                Some((addr, want.min(limit.min(self.volume.blocks()) - first)))
            }
            _ => None,
        };
        let Some((addr, max)) = placed else {
            c.replay_skipped.fetch_add(1, Ordering::Relaxed);
            return self.replay_advance(replay, 1);
        };
        let n = match self
            .volume
            .pin_run(first, max, first + max, scratch)
            .and_then(|n| self.volume.take_pinned(first, n, scratch).map(|()| n))
        {
            Ok(n) => n,
            Err(e) => {
                log::warn!("vm {}: replay skips {}", self.id, self.why(first, &e));
                c.replay_skipped.fetch_add(1, Ordering::Relaxed);
                return self.replay_advance(replay, 1);
            }
        };
        debug_assert!(n >= 1 && n <= max, "pinned {n} of {max}");
        let bytes = &scratch[..(n * PS) as usize];
        match install(
            &self.uffd,
            addr,
            0,
            Source::Bytes(bytes),
            Protect::Writable,
            Wake::Yes,
        ) {
            Ok(done) => {
                let pushed = done / PS;
                c.replayed_pages.fetch_add(pushed, Ordering::Relaxed);
                replay.again = 0;
                if pushed < n {
                    // The page after the pushed ones is the guest's already: leave it.
                    c.replay_present.fetch_add(1, Ordering::Relaxed);
                    self.replay_advance(replay, pushed + 1);
                } else {
                    self.replay_advance(replay, n);
                }
            }
            Err(e) if e.is_again() && replay.again < MAX_AGAIN => replay.again += 1,
            Err(e) => {
                if !e.is_process_gone() {
                    log::warn!("vm {}: replay abandoned: pushing {addr:#x}: {e}", self.id);
                }
                replay.list = Replay::default();
                self.replay_ended();
            }
        }
    }

    fn replay_advance(&self, replay: &mut ReplayState, n: u64) {
        replay.list.advance(n);
        if replay.list.is_done() {
            self.replay_ended();
        }
    }

    fn replay_ended(&self) {
        let us = (self.started.elapsed().as_micros() as u64).max(1);
        self.counters.replay_done_us.store(us, Ordering::Relaxed);
        let c = &self.counters;
        log::info!(
            "vm {}: replay ended after {us} us: {} pages pushed, {} present already, {} skipped",
            self.id,
            c.replayed_pages.load(Ordering::Relaxed),
            c.replay_present.load(Ordering::Relaxed),
            c.replay_skipped.load(Ordering::Relaxed)
        );
    }

    /// Serve one fault: a run of image blocks from the volume's cache, or zeros where the guest
    /// gave its memory back.
    fn serve(&self, f: &Fault, layout: &Regions, streams: &Streams, scratch: &mut [u8]) -> Served {
        let t0 = Instant::now();
        let c = &self.counters;
        if c.faults.fetch_add(1, Ordering::Relaxed) == 0 {
            let us = self.started.elapsed().as_micros() as u64;
            c.first_fault_us.store(us.max(1), Ordering::Relaxed);
        }
        let (block, limit) = match layout.land(f.addr) {
            Landing::Outside => {
                return Served::Failed(format!("fault at {:#x}, outside every region", f.addr))
            }
            Landing::Removed => {
                let r = install(
                    &self.uffd,
                    f.addr,
                    PS,
                    Source::Zeros,
                    Protect::Writable,
                    Wake::Yes,
                );
                c.zero_pages.fetch_add(1, Ordering::Relaxed);
                return self.outcome(r.map(|_| ()), t0);
            }
            Landing::Image { block, limit } => (block, limit.min(self.volume.blocks())),
        };
        let reach = streams.window_near(block);
        let n = match self
            .volume
            .pin_run(block, reach, limit, scratch)
            .and_then(|n| self.volume.take_pinned(block, n, scratch).map(|()| n))
        {
            Ok(n) => n,
            Err(e) => return Served::Failed(self.why(block, &e)),
        };
        let bytes = &scratch[..(n * PS) as usize];
        let r = install(
            &self.uffd,
            f.addr,
            0,
            Source::Bytes(bytes),
            Protect::Writable,
            Wake::Yes,
        );
        if let Ok(done) = r {
            let copied = done / PS;
            c.pages_copied.fetch_add(copied, Ordering::Relaxed);
            self.record
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .add_run(block, block + copied);
            streams.served_near(block, block, block + copied.max(1));
            self.volume
                .copy_read_ahead(limit, block + copied.max(1), reach);
        }
        self.outcome(r.map(|_| ()), t0)
    }

    fn outcome(&self, r: Result<(), pagemesh_uffd::UffdError>, t0: Instant) -> Served {
        let us = t0.elapsed().as_micros() as u64;
        self.counters.busy_us.fetch_add(us, Ordering::Relaxed);
        match r {
            Ok(()) => Served::Done,
            Err(e) if e.is_again() => Served::Again,
            Err(e) if e.is_process_gone() => Served::Gone,
            Err(e) => Served::Failed(format!("installing the page failed: {e}")),
        }
    }

    fn why(&self, block: u64, e: &VolumeError) -> String {
        format!("block {block} of volume {}: {e}", self.volume.info.name)
    }

    /// End a fault that cannot be served: poison it (the vCPU gets SIGBUS, if the VMM lets it)
    /// and stop the VMM.
    fn fail(&self, f: &Fault, why: &str) {
        if let Err(e) = answer_unservable(&self.uffd, f) {
            log::warn!("vm {}: poisoning {:#x} failed: {e}", self.id, f.addr);
        }
        self.stop_vmm(&format!(
            "cannot serve guest memory at {:#x}: {why}",
            f.addr
        ));
    }

    /// A line for the log when the VM ends.
    pub fn summary(&self) -> String {
        let c = &self.counters;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut s = format!(
            "{} faults, {} pages copied, {} zero pages, {} removals, first fault after {} us, {} us serving",
            l(&c.faults),
            l(&c.pages_copied),
            l(&c.zero_pages),
            l(&c.removes),
            l(&c.first_fault_us),
            l(&c.busy_us)
        );
        if self.replay_given.load(Ordering::Relaxed) {
            s += &format!(
                "; {} pages replayed ({} present already, {} skipped), replay ended after {} us",
                l(&c.replayed_pages),
                l(&c.replay_present),
                l(&c.replay_skipped),
                l(&c.replay_done_us)
            );
        }
        s
    }
}
