//! Serving the attached processes' faults on cluster segments: reading their uffds, asking the core, parking faults while a home's lease is lapsed, read-ahead and fault-around, and resolving a fault the core finished.

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use pagemesh_core::{Access, CacheState, FaultId, FaultResult, PageKey};
use pagemesh_types::SegmentId;
use pagemesh_uffd::fault::{self, resolve_present};
use pagemesh_uffd::{Access as UffdAccess, Fault, FaultReader, Incoming, Protect, Wake};

use crate::io::IoFailure;
use pagemesh_node::segment::{Attachment, Segment};

use super::{
    bump, fail_stop, Engine, Parked, Pending, Target, FAULT_AROUND_PAGES, MAX_PARKED_FAULTS,
    MAX_PREFETCHES, PS, READ_AHEAD_PAGES, UFFD_TOKEN,
};

impl Engine {
    pub(super) fn uffd_ready(&mut self, id: u64) {
        if self.faults_stopped {
            // Left unread (and the one-shot registration unarmed): the process's watchdog
            // poisons it once the daemon is gone.
            return;
        }
        let Some(att) = self.attachments.get(&id).cloned() else {
            return;
        };
        let mut reader = std::mem::replace(&mut self.reader, FaultReader::new(1));
        let epoll = &self.epoll;
        let batch = reader.read(&att.uffd, att.bounds(), || {
            let _ = epoll.rearm(att.uffd.as_fd(), UFFD_TOKEN | id);
        });
        match batch {
            Ok(batch) => {
                for incoming in batch {
                    match incoming {
                        Incoming::Fault(f) => {
                            self.fault(Arc::clone(&att), *f, Instant::now());
                            self.pump();
                        }
                        Incoming::Stray(f) => att.refuse(f, &"the fault is outside its mapping"),
                        Incoming::Other { event } => log::warn!(
                            "pid {}: unexpected uffd event {event} (pagemesh enables none); ignored",
                            att.pid
                        ),
                        Incoming::Layout(l) => log::warn!(
                            "pid {}: unexpected uffd event {l:?} (pagemesh enables none); ignored",
                            att.pid
                        ),
                    }
                }
            }
            Err(e) => {
                log::error!(
                    "pid {}: reading its uffd failed: {e}; detaching it",
                    att.pid
                );
                self.detach(id);
            }
        }
        self.reader = reader;
    }

    pub(super) fn detach(&mut self, id: u64) {
        if let Some(a) = self.attachments.remove(&id) {
            let _ = self.epoll.remove(a.uffd.as_fd());
        }
    }

    /// A fault waits for its home's lease (in time order: `check_leases` serves or refuses the
    /// waiting ones), up to `MAX_PARKED_FAULTS`; past that it is refused at once rather than
    /// queued without bound.
    pub(super) fn park(&mut self, p: Parked) {
        if self.parked.len() >= MAX_PARKED_FAULTS {
            bump(&self.figures.sigbus);
            let why = format!("{MAX_PARKED_FAULTS} faults already wait for a lease here");
            p.att.refuse(&p.fault, &why);
            return;
        }
        self.parked.push(p);
    }

    pub(super) fn fault(&mut self, att: Arc<Attachment>, fault: Fault, start: Instant) {
        if self.faults_stopped {
            // Shutting down (a parked fault whose lease came back): the thread waits until its
            // watchdog wakes it with poison.
            return;
        }
        if att.is_revoked() {
            att.refuse(
                &fault,
                &"the attachment was revoked (its uffd range was unregistered)",
            );
            return;
        }
        let (page, kind, access) = (fault.page, fault.kind, fault.access);
        let seg = SegmentId(att.segment.info.id);
        if let Some(home) = self.home_of(seg) {
            if !self.lease(home) {
                // Serving this from a copy here could hand out data the home already gave
                // away: wait for the home (bounded).
                self.park(Parked { att, fault, start });
                return;
            }
        }
        let now = self.now();
        bump(&self.figures.faults);
        let key = PageKey::new(SegmentId(att.segment.info.id), page);
        let access = match access {
            UffdAccess::Write => Access::Write,
            UffdAccess::Read => Access::Read,
        };
        pagemesh_node::segment::bump_fault(&att.segment, kind);
        att.segment.pages.touch(page);
        let prev = att.last_page.swap(page, Ordering::Relaxed);
        let sequential = prev.wrapping_add(1) == page;
        let pages = att.len / PS;
        if let Err(full) = self.faults.room(1) {
            bump(&self.figures.sigbus);
            att.refuse(&fault, &format_args!("{full}"));
            return;
        }
        let pending = Pending {
            target: Target::Mapped { att, fault, start },
            access,
        };
        let id = self.faults.insert(pending).expect("room was checked");
        let miss = self.node.copy(key).is_none() && self.node.pending_request(key).is_none();
        self.node.fault(now, FaultId(id), key, access);
        if access == Access::Read && miss && sequential {
            self.read_ahead(key, pages);
        }
    }

    /// A sequential reader missed: ask for the next pages too, so their transfers overlap
    /// with its work (its later faults find them here, or join the requests in flight).
    pub(super) fn read_ahead(&mut self, key: PageKey, pages: u64) {
        let now = self.now();
        let end = (key.page.0 + 1 + READ_AHEAD_PAGES).min(pages);
        for q in key.page.0 + 1..end {
            if self.prefetches >= MAX_PREFETCHES {
                return;
            }
            let k = PageKey::new(key.seg, q);
            if self.node.copy(k).is_some()
                || self.node.pending_request(k).is_some()
                || self.recently_invalidated.contains(&k)
            {
                continue;
            }
            let pending = Pending {
                target: Target::Prefetch,
                access: Access::Read,
            };
            let Ok(id) = self.faults.insert(pending) else {
                return;
            };
            self.prefetches += 1;
            self.node.fault(now, FaultId(id), k, Access::Read);
        }
    }

    /// Map the copies this node holds around a resolved read fault into the process (both
    /// ways, as for local segments), write-protected (always safe for a valid copy: a write
    /// takes a write-protect fault, and an invalidation or downgrade reaches every mapping), so
    /// a reader of local pages takes one fault per run instead of one per page.
    pub(super) fn map_around(&self, att: &Attachment, page: PageKey) {
        let held = |q: u64| self.node.copy(PageKey::new(page.seg, q)).is_some();
        let runs = fault::around(page.page.0, att.len / PS, FAULT_AROUND_PAGES, held);
        fault::map_around_read(&att.uffd, att.base, runs);
    }

    /// Write-protect (or un-protect) one page in every process attached here. A process
    /// whose range is no longer registered on its uffd (it unregistered or remapped it after
    /// attaching: ENOENT, EINVAL) loses its attachment, as on a single node (its faults get
    /// SIGBUS, its lease is closed); the node goes on. Any other failure means the node cannot
    /// keep its pages' protection right, and it stops.
    pub(super) fn protect(&self, s: &Segment, page: PageKey, mode: Protect) {
        let mut revoked = Vec::new();
        for a in s.clients.read().unwrap_or_else(|e| e.into_inner()).iter() {
            let addr = a.base + page.page.0 * PS;
            if addr >= a.base + a.len {
                continue;
            }
            match a.uffd.write_protect(addr, PS, mode, Wake::Yes) {
                Ok(()) => {}
                Err(e) if e.is_process_exited() => {}
                Err(e) if e.is_unregistered() => {
                    log::warn!(
                        "{page}: pid {} no longer has it registered ({e}); closing its \
                         attachment {} (its faults get SIGBUS from now on)",
                        a.pid,
                        a.id
                    );
                    a.revoke();
                    revoked.push(a.id);
                }
                Err(e) => fail_stop(&format!(
                    "{page}: making it {mode:?} in pid {} failed: {e}",
                    a.pid
                )),
            }
        }
        for id in revoked {
            s.detach(id);
        }
    }

    pub(super) fn fault_done(&mut self, id: u64, page: PageKey, result: FaultResult) {
        let Some(p) = self.faults.remove(id) else {
            return;
        };
        let copy = self.node.copy(page);
        match p.target {
            Target::Prefetch => {
                self.prefetches -= 1;
            }
            Target::Mapped { att, fault, start } => {
                debug_assert_eq!(fault.page, page.page.0);
                let addr = fault.addr;
                match result {
                    FaultResult::Ok if !self.home_of(page.seg).is_none_or(|h| self.lease(h)) => {
                        // Granted, but the lease lapsed meanwhile: the copy stays, the process
                        // waits for the lease like any other access.
                        self.park(Parked { att, fault, start });
                        return;
                    }
                    FaultResult::Ok => {
                        let writable = copy.is_some_and(|c| c.state == CacheState::Modified);
                        if p.access == Access::Write && !writable {
                            // Cannot happen by the core's contract; refault rather than hang.
                            log::error!("{page}: write fault resolved without a writable copy (a bug); retrying");
                            let _ = att.uffd.wake(addr, PS);
                            return;
                        }
                        let protect = if writable {
                            Protect::Writable
                        } else {
                            Protect::ReadOnly
                        };
                        match resolve_present(&att.uffd, &fault, protect) {
                            Ok(()) if p.access == Access::Read => self.map_around(&att, page),
                            Ok(()) => {}
                            Err(e) => {
                                att.refuse(&fault, &format_args!("mapping the page failed: {e}"))
                            }
                        }
                    }
                    bad => {
                        bump(&self.figures.sigbus);
                        if bad == FaultResult::Poisoned {
                            self.poisoned_seen
                                .entry(page.seg)
                                .or_default()
                                .insert(page.page.0);
                        }
                        att.refuse(
                            &fault,
                            &format_args!(
                                "offset {:#x}: the fault ended {bad:?}{}",
                                page.page.0 * PS,
                                match bad {
                                    FaultResult::TimedOut => {
                                        " (the home did not answer in time: is it alive?)"
                                    }
                                    FaultResult::Poisoned => {
                                        " (its only copy was lost with a node that died)"
                                    }
                                    _ => "",
                                }
                            ),
                        );
                    }
                }
                self.figures
                    .latency
                    .record(start.elapsed().as_nanos() as u64);
            }
            Target::Io { io } => {
                let home = self.home_of(page.seg);
                let failure = IoFailure::of_fault(page.page.0, result).or_else(|| {
                    let home = home.filter(|h| !self.lease(*h))?;
                    let silent_ms = self.membership.lease_ms();
                    Some(IoFailure::NoLease { home, silent_ms })
                });
                let Some(job) = self.ios.get_mut(io) else {
                    return;
                };
                let memfd = self.segs.get(&job.seg).map(|s| &s.memfd);
                if job.page_done(page.page.0, failure, memfd) {
                    self.ios.remove(io).expect("present").finish();
                }
            }
        }
    }
}
