//! The loop of the benches' minimal uffd handlers (the local and the remote baseline): what
//! pagemesh's fault path is measured against, with nothing but the ioctls.

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};

use pagemesh_uffd::poll::Epoll;
use pagemesh_uffd::{Event, FaultKind, Uffd};

/// The baseline handlers' loop: one thread, epoll on the uffd, `on_fault(address, kind)` for
/// every page fault, until `stop`.
pub fn serve_faults(uffd: &Uffd, stop: &AtomicBool, mut on_fault: impl FnMut(u64, FaultKind)) {
    let mut evs = Vec::with_capacity(16);
    let epoll = Epoll::new().expect("epoll");
    epoll.add(uffd.as_fd(), 1).expect("epoll add");
    let mut ready = Vec::with_capacity(1);
    while !stop.load(Ordering::Relaxed) {
        ready.clear();
        if epoll.wait(&mut ready, 1, 50).is_err() || ready.is_empty() {
            continue;
        }
        let _ = epoll.rearm(uffd.as_fd(), 1);
        evs.clear();
        let _ = uffd.read_events(&mut evs, 16);
        for ev in &evs {
            if let Event::PageFault { address, kind, .. } = *ev {
                on_fault(address, kind);
            }
        }
    }
}
