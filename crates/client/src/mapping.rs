//! An attached segment and the watchdog that turns a lost daemon into SIGBUS.

use std::io::Read;
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use pagemesh_proto::{Request, Response};
use pagemesh_types::PAGE_SIZE;
use pagemesh_uffd::clock::monotonic_ns;
use pagemesh_uffd::poll::wait_readable;
use pagemesh_uffd::{features, Event, Memfd, Protect, RegisterMode, SharedMapping, Uffd, Wake};

use crate::lease_watch::{LeaseWatch, Verdict};
use crate::{handshake, roundtrip, unexpected, Client, ClientError, SegmentInfo, DEFAULT_TIMEOUT};

/// How often the watchdog looks at its stop flag while waiting.
const WATCH_TICK_MS: i32 = 100;

struct Shared {
    map: SharedMapping,
    uffd: Uffd,
    stop: AtomicBool,
    daemon_lost: AtomicBool,
    name: String,
    /// The node's lease on the segment's home, for a cluster segment homed elsewhere.
    watch: Option<LeaseWatch>,
}

/// A segment mapped into this process. Dropping it detaches.
pub struct Mapping {
    info: SegmentInfo,
    client: Client,
    shared: Arc<Shared>,
    lease: UnixStream,
    watchdog: Option<JoinHandle<()>>,
}

impl Mapping {
    pub(crate) fn attach(
        client: Client,
        name: &str,
        read_only: bool,
    ) -> Result<Mapping, ClientError> {
        let path = client.socket_path().to_path_buf();
        let lease = handshake(&path)?;
        let io = |what: &'static str| {
            let segment = name.to_string();
            move |source| ClientError::Attach {
                segment,
                what,
                source,
            }
        };
        let (info, attach_id, memfd, watch) = request_attach(&path, &lease, name, read_only, io)?;
        let len = info.size_bytes.div_ceil(PAGE_SIZE) * PAGE_SIZE;
        // Volume segments map the volume's shared frames privately: writes stay in this process.
        let volume = matches!(info.backing, crate::Backing::Volume { .. });
        let map = match (read_only, volume) {
            // Private: userfaultfd registers only a mapping that may become writable
            // (VM_MAYWRITE), which a shared mapping of a read-only descriptor never may. A
            // private one maps the memfd's own frames, sees every write to them, and cannot
            // write the memfd (a store is a SIGSEGV; after an mprotect, a private copy).
            (true, _) => SharedMapping::map_read_only(memfd.as_fd(), len as usize, true),
            (false, true) => SharedMapping::map_private(memfd.as_fd(), len as usize),
            (false, false) => SharedMapping::map(memfd.as_fd(), len as usize),
        }
        .map_err(io("mapping the segment's memfd"))?;
        drop(memfd); // the mapping keeps the memfd alive
        let (uffd, _mode) = Uffd::open(features::PAGEMESH)
            .map_err(|e| e.source)
            .map_err(io(
                "opening a userfaultfd (needs root or access to /dev/userfaultfd)",
            ))?;
        let modes = if volume {
            RegisterMode::MISSING.union(RegisterMode::MINOR)
        } else {
            RegisterMode::MISSING
                .union(RegisterMode::MINOR)
                .union(RegisterMode::WP)
        };
        uffd.register_mapping(&map, modes)
            .map_err(|e| e.source)
            .map_err(io("registering the mapping"))?;
        let daemon_copy = uffd.try_clone().map_err(io("duplicating the uffd"))?;
        let req = Request::RegisterUffd {
            attach_id,
            base: map.addr(),
            len,
        };
        match roundtrip(
            &path,
            &lease,
            &req,
            &[daemon_copy.as_fd()],
            "register",
            DEFAULT_TIMEOUT,
        )? {
            (Response::Registered, _) => {}
            (r, _) => return Err(unexpected("register", r)),
        }
        drop(daemon_copy);
        let _ = lease.set_read_timeout(None);
        let shared = Arc::new(Shared {
            map,
            uffd,
            stop: AtomicBool::new(false),
            daemon_lost: AtomicBool::new(false),
            name: name.to_string(),
            watch,
        });
        let watch_sock = lease.try_clone().map_err(io("cloning the lease socket"))?;
        let s = Arc::clone(&shared);
        let watchdog = std::thread::Builder::new()
            .name(format!("pagemesh-watchdog-{name}"))
            .spawn(move || watchdog(s, watch_sock))
            .map_err(io("starting the watchdog thread"))?;
        Ok(Mapping {
            info,
            client,
            shared,
            lease,
            watchdog: Some(watchdog),
        })
    }

    /// The segment's description.
    pub fn info(&self) -> &SegmentInfo {
        &self.info
    }

    /// Size of the segment in bytes.
    pub fn len(&self) -> usize {
        self.info.size_bytes as usize
    }

    /// Whether the segment is empty (never: segments have at least one byte).
    pub fn is_empty(&self) -> bool {
        self.info.size_bytes == 0
    }

    /// Start of the mapping. Reads and writes through it are served like any memory access;
    /// concurrent access from several threads or processes needs the usual synchronisation
    /// (atomics, locks), exactly as with shared memory.
    pub fn as_ptr(&self) -> *mut u8 {
        self.shared.map.as_ptr()
    }

    fn check(&self, offset: u64, len: usize) -> Result<(), ClientError> {
        match offset.checked_add(len as u64) {
            Some(end) if end <= self.info.size_bytes => Ok(()),
            _ => Err(ClientError::OutOfRange {
                offset,
                len: len as u64,
                size: self.info.size_bytes,
            }),
        }
    }

    /// Copy bytes out of the mapping (faulting pages in as needed).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), ClientError> {
        self.check(offset, buf.len())?;
        self.shared.map.read_at(offset as usize, buf);
        Ok(())
    }

    /// Whether the segment was attached read-only ([`Client::attach_read_only`]).
    pub fn is_read_only(&self) -> bool {
        !self.shared.map.is_writable()
    }

    /// Load the `index`th 64-bit word atomically (acquire), read-only attachments included.
    pub fn load_u64(&self, index: usize) -> u64 {
        assert!(
            index < self.len() / 8,
            "word {index} is outside the segment"
        );
        self.shared.map.load_u64(index)
    }

    /// Copy bytes into the mapping (refused on a read-only attachment).
    pub fn write_at(&self, offset: u64, data: &[u8]) -> Result<(), ClientError> {
        if self.is_read_only() {
            return Err(ClientError::ReadOnly {
                segment: self.info.name.clone(),
            });
        }
        self.check(offset, data.len())?;
        self.shared.map.write_at(offset as usize, data);
        Ok(())
    }

    /// The segment as `u64` atomics, shared with every attached process (on a volume segment
    /// the mapping is private: atomics there are this process's own). Panics on a read-only
    /// attachment, where a store would fault: use [`Mapping::load_u64`] there.
    pub fn atomics_u64(&self) -> &[AtomicU64] {
        let words = self.len() / 8;
        &self.shared.map.atomics_u64()[..words]
    }

    /// Make the segment's dirty pages durable in its backing file; returns the pages written.
    pub fn sync(&self) -> Result<u64, ClientError> {
        self.client.sync(&self.info.name)
    }

    /// Fault in and pin `[offset, offset+len)`: those pages are never evicted until unpinned.
    /// Fails with a clear error if the segment's partition may not pin that much.
    pub fn pin(&self, offset: u64, len: u64) -> Result<u64, ClientError> {
        self.check(offset, len as usize)?;
        self.client.pin(&self.info.name, offset, len)
    }

    /// Unpin `[offset, offset+len)`.
    pub fn unpin(&self, offset: u64, len: u64) -> Result<u64, ClientError> {
        self.check(offset, len as usize)?;
        self.client.unpin(&self.info.name, offset, len)
    }

    /// Whether the watchdog has seen the daemon go away (every later fault gets SIGBUS).
    pub fn daemon_lost(&self) -> bool {
        self.shared.daemon_lost.load(Ordering::SeqCst)
    }
}

/// `Attach`: the segment's description, attachment id and memfd, and, for a cluster segment
/// homed on another node, the node's lease board to watch.
fn request_attach<E>(
    path: &std::path::Path,
    lease: &UnixStream,
    name: &str,
    read_only: bool,
    io: impl Fn(&'static str) -> E,
) -> Result<(SegmentInfo, u64, Memfd, Option<LeaseWatch>), ClientError>
where
    E: FnOnce(std::io::Error) -> ClientError,
{
    let req = Request::Attach {
        name: name.into(),
        read_only,
    };
    let (reply, mut fds) = roundtrip(path, lease, &req, &[], "attach", DEFAULT_TIMEOUT)?;
    let Response::Attached {
        info,
        attach_id,
        lease_slot,
    } = reply
    else {
        return Err(unexpected("attach", reply));
    };
    if fds.len() != 1 + usize::from(lease_slot.is_some()) {
        let reply = Response::Attached {
            info,
            attach_id,
            lease_slot,
        };
        return Err(unexpected("attach", reply));
    }
    let watch = match lease_slot {
        Some(slot) => {
            let board = fds.pop().expect("the board's fd");
            // Only a segment homed on another node comes with the board.
            let home = info.home.ok_or_else(|| {
                io("reading the node's lease board")(std::io::Error::other(
                    "the daemon sent a lease board for a segment with no home node",
                ))
            })?;
            let w = LeaseWatch::open(board, slot, home)
                .map_err(io("reading the node's lease board"))?;
            Some(w)
        }
        None => None,
    };
    let memfd = Memfd::from_owned(fds.pop().expect("one fd"));
    Ok((info, attach_id, memfd, watch))
}

/// Longest wait, when a mapping is dropped, for the daemon to forget the attachment.
const DETACH_WAIT_MS: i32 = 5_000;

impl Drop for Mapping {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Half-close the lease: the daemon forgets the attachment and then closes its side.
        // Waiting for that (bounded) makes the detach synchronous: a `segment rm` right after
        // the drop must not find the segment still attached by this process.
        let _ = self.lease.shutdown(Shutdown::Write);
        if let Some(w) = self.watchdog.take() {
            let _ = w.join();
        }
        wait_for_close(&self.lease, DETACH_WAIT_MS);
        let _ = self.lease.shutdown(Shutdown::Both);
    }
}

/// Read `lease` until the daemon closes it, for at most `bound_ms`.
fn wait_for_close(mut lease: &UnixStream, bound_ms: i32) {
    let start = std::time::Instant::now();
    let mut byte = [0u8; 64];
    loop {
        let left = bound_ms - start.elapsed().as_millis().min(i32::MAX as u128) as i32;
        if left <= 0 {
            return;
        }
        match wait_readable(lease.as_fd(), left) {
            Ok(true) => match lease.read(&mut byte) {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            },
            Ok(false) | Err(_) => return,
        }
    }
}

/// Wait for the lease to end. If it ends while the mapping is in use, the daemon is gone:
/// from then on every fault is answered with poison (SIGBUS), never left hanging or zero-filled.
/// For a segment homed on another node, also watch the node's lease on that home: zap the
/// mapping when it lapses, give up on the daemon when it has not run for the fault timeout.
fn watchdog(s: Arc<Shared>, mut lease: UnixStream) {
    let mut byte = [0u8; 64];
    let tick = s.watch.as_ref().map_or(WATCH_TICK_MS, LeaseWatch::tick_ms);
    let mut acted_on = None;
    let why = loop {
        if s.stop.load(Ordering::SeqCst) {
            return;
        }
        if let Some(w) = &s.watch {
            match w.check(monotonic_ns(), &mut acted_on) {
                Verdict::Holds => {}
                // Every later access faults into the daemon, which serves it only under a
                // lease. Write protection stays (a zapped protected entry keeps its marker).
                Verdict::Lapsed => match s.map.zap(0, s.map.len()) {
                    Ok(()) => {}
                    Err(e) => {
                        break format!("zapping the mapping when its lease lapsed failed: {e}")
                    }
                },
                Verdict::GiveUp(why) => break why,
            }
        }
        match wait_readable(lease.as_fd(), tick) {
            Ok(false) => continue,
            Ok(true) => match lease.read(&mut byte) {
                Ok(0) | Err(_) => break "lost the daemon".to_string(),
                Ok(_) => continue, // the daemon sends nothing on a lease yet; ignore
            },
            Err(_) => break "lost the daemon".to_string(),
        }
    };
    if s.stop.load(Ordering::SeqCst) {
        return;
    }
    s.daemon_lost.store(true, Ordering::SeqCst);
    // The daemon forgets the attachment whenever it runs again.
    let _ = lease.shutdown(Shutdown::Both);
    eprintln!(
        "pagemesh: {why} while segment {} is attached (pid {}); every further access to it raises SIGBUS. \
         Restart the daemon if it is gone, and re-attach.",
        s.name,
        std::process::id()
    );
    poison_forever(&s);
}

fn poison_forever(s: &Shared) {
    let base = s.map.addr();
    let len = s.map.len() as u64;
    // Drop our page-table entries (the memfd keeps its pages), so every later access faults
    // here; then wake threads whose faults the dead daemon had read but not served. Clear
    // write protection first: zapping a write-protected entry leaves a uffd-wp marker, on which
    // POISON fails with EEXIST, and the thread would fault forever instead of getting SIGBUS.
    // (Volume mappings are not registered for WP: the ioctl then fails, harmlessly.)
    let _ = s.uffd.write_protect(base, len, Protect::Writable, Wake::No);
    let _ = s.map.zap(0, s.map.len());
    let _ = s.uffd.wake(base, len);
    let mut events = Vec::with_capacity(16);
    while !s.stop.load(Ordering::SeqCst) {
        match wait_readable(s.uffd.as_fd(), WATCH_TICK_MS) {
            Ok(true) => {}
            Ok(false) => continue,
            Err(_) => return,
        }
        events.clear();
        if s.uffd.read_events(&mut events, 16).is_err() {
            return;
        }
        for ev in &events {
            if let Event::PageFault { address, .. } = *ev {
                let page = address & !(PAGE_SIZE - 1);
                if page < base || page >= base + len {
                    continue;
                }
                match s.uffd.poison(page, PAGE_SIZE, Wake::Yes) {
                    Ok(n) if n == PAGE_SIZE => {}
                    _ => {
                        // Mapped or marked again meanwhile: un-protect, zap and retry.
                        let _ = s
                            .uffd
                            .write_protect(page, PAGE_SIZE, Protect::Writable, Wake::No);
                        let _ = s.map.zap((page - base) as usize, PAGE_SIZE as usize);
                        let _ = s.uffd.poison(page, PAGE_SIZE, Wake::Yes);
                        let _ = s.uffd.wake(page, PAGE_SIZE);
                    }
                }
            }
        }
    }
}
