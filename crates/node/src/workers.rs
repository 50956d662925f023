//! The fault worker pool: N threads share one epoll over the uffds of every attached process.
//!
//! Each uffd is registered one-shot: the worker that wakes for it reads a batch of messages,
//! re-arms it at once (so another worker can take the next batch of the same process while this
//! one serves), then resolves its batch. Page-level serialisation is the segment's stripe lock.

use std::collections::HashMap;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pagemesh_types::PAGE_SIZE;
use pagemesh_uffd::poll::Epoll;
use pagemesh_uffd::{FaultReader, Incoming};

use crate::segment::Attachment;

/// Most messages one worker takes from one uffd at a time.
const BATCH: usize = 16;
/// Bound on one epoll wait (workers live as long as the daemon).
const IDLE_WAIT_MS: i32 = 500;

pub struct Workers {
    epoll: Epoll,
    attachments: RwLock<HashMap<u64, Arc<Attachment>>>,
    /// Set by [`Workers::pause`]: no fault is read from a uffd any more.
    paused: AtomicBool,
    /// Workers between taking a uffd from the epoll and serving what they read.
    busy: AtomicUsize,
}

impl Workers {
    pub fn new() -> std::io::Result<Arc<Workers>> {
        Ok(Arc::new(Workers {
            epoll: Epoll::new()?,
            attachments: RwLock::new(HashMap::new()),
            paused: AtomicBool::new(false),
            busy: AtomicUsize::new(0),
        }))
    }

    pub fn spawn(self: &Arc<Self>, n: usize) -> std::io::Result<Vec<JoinHandle<()>>> {
        (0..n)
            .map(|i| {
                let w = Arc::clone(self);
                std::thread::Builder::new()
                    .name(format!("fault-worker-{i}"))
                    .spawn(move || w.run())
            })
            .collect()
    }

    /// Start serving an attachment's faults.
    pub fn add(&self, a: Arc<Attachment>) -> std::io::Result<()> {
        self.attachments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(a.id, Arc::clone(&a));
        if !a.segment.attach(Arc::clone(&a)) {
            self.remove(a.id);
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "segment {} was removed while attaching",
                    a.segment.info.name
                ),
            ));
        }
        if let Some(engine) = a.segment.cluster.get() {
            // A cluster segment's faults are served by the cluster engine's own event loop.
            if let Err(e) = engine.attach(Arc::clone(&a)) {
                self.remove(a.id);
                return Err(std::io::Error::other(e));
            }
            return Ok(());
        }
        if let Err(e) = self.epoll.add(a.uffd.as_fd(), a.id) {
            self.remove(a.id);
            return Err(e);
        }
        Ok(())
    }

    /// Stop serving an attachment (its process detached or died).
    pub fn remove(&self, id: u64) -> Option<Arc<Attachment>> {
        let a = self
            .attachments
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&id)?;
        match a.segment.cluster.get() {
            Some(engine) => engine.detach(id),
            None => {
                let _ = self.epoll.remove(a.uffd.as_fd());
            }
        }
        a.segment.detach(id);
        if let Some(l) = &a.lease {
            let _ = l.shutdown(std::net::Shutdown::Both);
        }
        Some(a)
    }

    /// Stop serving faults for good (the daemon is shutting down): no worker reads a uffd from
    /// now on, and this returns once no worker is serving a fault it read before, or after
    /// `within` (false). Faults left unread wait in their uffd until the process's watchdog
    /// poisons them when the daemon is gone (SIGBUS, never a write that is silently lost).
    pub fn pause(&self, within: Duration) -> bool {
        // Either a worker sees `paused` after counting itself busy, or this sees it busy.
        self.paused.store(true, Ordering::SeqCst);
        let end = Instant::now() + within;
        while self.busy.load(Ordering::SeqCst) != 0 {
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    pub fn count(&self) -> usize {
        self.attachments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    fn run(&self) {
        let mut tokens = Vec::with_capacity(8);
        let mut reader = FaultReader::new(BATCH);
        // Room for the longest run a fault reads (file read-ahead, page-in and volume runs reach
        // as far as the stream's window).
        let run_pages = crate::runs::MAX_RUN_PAGES.max(crate::volume::READAHEAD_BLOCKS);
        let mut scratch = vec![0u8; (run_pages * PAGE_SIZE) as usize];
        loop {
            tokens.clear();
            if let Err(e) = self.epoll.wait(&mut tokens, 8, IDLE_WAIT_MS) {
                log::error!("fault worker: epoll_wait failed: {e}");
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
            for &t in &tokens {
                self.busy.fetch_add(1, Ordering::SeqCst);
                if !self.paused.load(Ordering::SeqCst) {
                    self.serve_token(t, &mut reader, &mut scratch);
                }
                self.busy.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// Read a batch from the uffd of attachment `t` and serve it.
    fn serve_token(&self, t: u64, reader: &mut FaultReader, scratch: &mut [u8]) {
        let Some(a) = self
            .attachments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&t)
            .cloned()
        else {
            return;
        };
        // Re-armed at once, so another worker can take the next batch of this process;
        // ENOENT there means the attachment was removed meanwhile: nothing to re-arm.
        let batch = reader.read(&a.uffd, a.bounds(), || {
            let _ = self.epoll.rearm(a.uffd.as_fd(), t);
        });
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                log::error!("pid {}: reading its uffd failed: {e}; detaching it", a.pid);
                self.remove(a.id);
                return;
            }
        };
        for incoming in batch {
            serve(&a, incoming, scratch);
        }
    }
}

fn serve(a: &Arc<Attachment>, incoming: &Incoming, scratch: &mut [u8]) {
    match incoming {
        Incoming::Fault(f) => {
            // A panic while serving is a bug; contain it to this fault: the thread gets SIGBUS
            // instead of waiting forever, and the worker lives on.
            let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                a.segment.resolve_fault(a, f, scratch)
            }));
            if served.is_err() {
                a.refuse(f, &"serving the fault panicked (a bug)");
            }
        }
        Incoming::Stray(f) => a.refuse(
            f,
            &format_args!(
                "the fault is outside its mapping {:#x}+{:#x}",
                a.base, a.len
            ),
        ),
        Incoming::Other { event } => {
            log::warn!(
                "pid {}: unexpected uffd event {event} (pagemesh enables none); ignored",
                a.pid
            );
        }
        Incoming::Layout(l) => {
            log::warn!(
                "pid {}: unexpected uffd event {l:?} (segment attachments enable none); ignored",
                a.pid
            );
        }
    }
}
