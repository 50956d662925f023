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

use std::collections::VecDeque;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use pagemesh_proto::VmRegion;
use pagemesh_uffd::fault::{answer_unservable, install};
use pagemesh_uffd::poll::wait_any_readable;
use pagemesh_uffd::{
    Bounds, Fault, FaultReader, Incoming, PidFd, Protect, Source, Stopped, Uffd, Wake,
};

use crate::runs::{Streams, MAX_RUN_PAGES};
use crate::volume::{Volume, VolumeError, PS};
pub use regions::{Landing, Regions, MAX_REGIONS};

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
        let g = Guest {
            id,
            vmm,
            uffd,
            volume,
            stop: AtomicBool::new(false),
            started: Instant::now(),
            counters: GuestCounters::default(),
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
        let everything = Bounds {
            base: 0,
            len: u64::MAX,
        };
        while !self.stop.load(Ordering::Acquire) {
            let fds = [self.uffd.as_fd(), self.vmm.as_fd()];
            match wait_any_readable(&fds, IDLE_WAIT_MS) {
                Ok(Some(1)) => break, // the VMM exited
                Ok(_) => {}
                Err(e) => {
                    self.stop_vmm(&format!("polling its uffd failed: {e}"));
                    break;
                }
            }
            // Read what is pending (bounded by the queue's room): events are applied at once,
            // faults queued behind them in order.
            while queue.len() + BATCH <= MAX_QUEUED {
                let batch = match reader.read(&self.uffd, everything, || {}) {
                    Ok([]) => break,
                    Ok(b) => b,
                    Err(e) => {
                        self.stop_vmm(&format!("reading its uffd failed: {e}"));
                        return;
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
        }
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
        format!(
            "{} faults, {} pages copied, {} zero pages, {} removals, first fault after {} us, {} us serving",
            l(&c.faults),
            l(&c.pages_copied),
            l(&c.zero_pages),
            l(&c.removes),
            l(&c.first_fault_us),
            l(&c.busy_us)
        )
    }
}
