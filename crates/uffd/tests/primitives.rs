//! Each userfaultfd primitive against the real kernel: a memfd mapped shared and registered
//! MISSING | MINOR | WP, a thread that touches it, and this thread resolving its faults.

use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use pagemesh_uffd::fault::{answer_unservable, install, resolve_present};
use pagemesh_uffd::{
    fdpass, features, Access, Bounds, Event, Fault, FaultKind, FaultReader, Incoming, Memfd,
    Protect, RegisterMode, SharedMapping, Source, Uffd, Unservable, Wake, PAGE_SIZE,
};

const PS: u64 = PAGE_SIZE as u64;

fn all_modes() -> RegisterMode {
    RegisterMode::MISSING
        .union(RegisterMode::MINOR)
        .union(RegisterMode::WP)
}

struct Setup {
    memfd: Memfd,
    map: SharedMapping,
    uffd: Uffd,
}

fn setup(pages: u64) -> Setup {
    let memfd = Memfd::create("uffd-test", pages * PS).unwrap();
    let map = SharedMapping::map(memfd.as_fd(), (pages * PS) as usize).unwrap();
    let (uffd, _mode) = Uffd::open(features::PAGEMESH).unwrap();
    uffd.register_mapping(&map, all_modes()).unwrap();
    Setup { memfd, map, uffd }
}

/// Wait (bounded) for the next fault event.
fn next_fault(uffd: &Uffd) -> (u64, FaultKind, bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut evs = Vec::new();
    loop {
        uffd.read_events(&mut evs, 1).unwrap();
        if let Some(ev) = evs.pop() {
            match ev {
                Event::PageFault {
                    address,
                    kind,
                    write,
                    ..
                } => return (address, kind, write),
                Event::Other { event } => panic!("unexpected uffd event {event}"),
                Event::Layout(l) => panic!("unexpected uffd event {l:?}"),
            }
        }
        assert!(Instant::now() < deadline, "no fault within 10 s");
        thread::sleep(Duration::from_micros(200));
    }
}

fn word(map: &SharedMapping, page: u64) -> &AtomicU64 {
    // SAFETY: the page lies inside the mapping, is 8-aligned, and is only accessed atomically.
    unsafe { &*(map.as_ptr().add((page * PS) as usize) as *const AtomicU64) }
}

#[test]
fn probe_reports_what_pagemesh_needs() {
    let p = Uffd::probe().unwrap();
    assert_eq!(
        p.features & features::PAGEMESH,
        features::PAGEMESH,
        "features {:#x}",
        p.features
    );
}

#[test]
fn missing_fault_copy_write_protected_then_write_fault_unprotects() {
    let s = setup(4);
    let addr = s.map.addr();
    thread::scope(|sc| {
        let map = &s.map;
        let h = sc.spawn(move || {
            let v = word(map, 1).load(Ordering::SeqCst);
            word(map, 1).store(v + 1, Ordering::SeqCst);
            word(map, 1).load(Ordering::SeqCst)
        });
        let (a, kind, write) = next_fault(&s.uffd);
        assert_eq!((a, kind, write), (addr + PS, FaultKind::Missing, false));
        let mut page = vec![0u8; PAGE_SIZE];
        page[..8].copy_from_slice(&41u64.to_ne_bytes());
        s.uffd.copy(a, &page, Protect::ReadOnly, Wake::Yes).unwrap();
        let (a2, kind2, write2) = next_fault(&s.uffd);
        assert_eq!(
            (a2, kind2, write2),
            (addr + PS, FaultKind::WriteProtect, true)
        );
        s.uffd
            .write_protect(a2, PS, Protect::Writable, Wake::Yes)
            .unwrap();
        assert_eq!(h.join().unwrap(), 42);
    });
    // The copy went into the memfd: the page cache holds it.
    let mut b = [0u8; 8];
    s.memfd.read_exact_at(&mut b, PS).unwrap();
    assert_eq!(u64::from_ne_bytes(b), 42);
}

#[test]
fn zeropage_and_copy_eexist_needs_wake() {
    let s = setup(2);
    let addr = s.map.addr();
    thread::scope(|sc| {
        let map = &s.map;
        let h = sc.spawn(move || word(map, 0).load(Ordering::SeqCst));
        let (a, kind, _) = next_fault(&s.uffd);
        assert_eq!((a, kind), (addr, FaultKind::Missing));
        // Resolve without waking, then a second COPY sees EEXIST; only WAKE releases the thread.
        s.uffd.zeropage(a, PS, Wake::No).unwrap();
        let err = s
            .uffd
            .copy(a, &[1u8; PAGE_SIZE], Protect::Writable, Wake::Yes)
            .unwrap_err();
        assert!(err.is_exists(), "{err}");
        s.uffd.wake(a, PS).unwrap();
        assert_eq!(h.join().unwrap(), 0);
    });
}

#[test]
fn minor_fault_continue() {
    let s = setup(2);
    s.memfd.write_all_at(&7u64.to_ne_bytes(), PS).unwrap();
    thread::scope(|sc| {
        let map = &s.map;
        let h = sc.spawn(move || word(map, 1).load(Ordering::SeqCst));
        let (a, kind, _) = next_fault(&s.uffd);
        assert_eq!((a, kind), (s.map.addr() + PS, FaultKind::Minor));
        s.uffd
            .continue_(a, PS, Protect::ReadOnly, Wake::Yes)
            .unwrap();
        assert_eq!(h.join().unwrap(), 7);
    });
    assert!(s.memfd.is_present(PS).unwrap());
    assert!(!s.memfd.is_present(0).unwrap());
}

#[test]
fn punch_hole_zaps_mapping_and_refaults() {
    let s = setup(1);
    s.memfd.write_all_at(&9u64.to_ne_bytes(), 0).unwrap();
    thread::scope(|sc| {
        let map = &s.map;
        let h = sc.spawn(move || word(map, 0).load(Ordering::SeqCst));
        let (a, _, _) = next_fault(&s.uffd);
        s.uffd
            .continue_(a, PS, Protect::Writable, Wake::Yes)
            .unwrap();
        assert_eq!(h.join().unwrap(), 9);
    });
    s.memfd.punch_hole(0, PS).unwrap();
    assert!(!s.memfd.is_present(0).unwrap());
    thread::scope(|sc| {
        let map = &s.map;
        let h = sc.spawn(move || word(map, 0).load(Ordering::SeqCst));
        let (_, kind, _) = next_fault(&s.uffd);
        assert_eq!(kind, FaultKind::Missing);
        s.uffd.zeropage(s.map.addr(), PS, Wake::Yes).unwrap();
        assert_eq!(h.join().unwrap(), 0);
    });
}

#[test]
fn poison_gives_sigbus_at_the_page() {
    // An anonymous mapping (no MADV_DONTFORK) so a forked child inherits the poison marker.
    let map = SharedMapping::anonymous(2 * PAGE_SIZE).unwrap();
    let (uffd, _) = Uffd::open(features::PAGEMESH).unwrap();
    uffd.register_mapping(&map, RegisterMode::MISSING).unwrap();
    assert_eq!(uffd.poison(map.addr() + PS, PS, Wake::Yes).unwrap(), PS);
    let target = map.addr() + PS;
    // SAFETY: the child only performs a volatile read and _exit (async-signal-safe).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0);
    if pid == 0 {
        // SAFETY: the address is inside the mapping; the read is expected to raise SIGBUS.
        unsafe {
            std::ptr::read_volatile(target as *const u8);
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    assert!(
        libc::WIFSIGNALED(status),
        "child exited normally: status {status:#x}"
    );
    assert_eq!(libc::WTERMSIG(status), libc::SIGBUS);
}

#[test]
fn fd_passing_shares_one_memfd() {
    let (a, b) = UnixStream::pair().unwrap();
    let memfd = Memfd::create("pass", PS).unwrap();
    fdpass::send_with_fds(&a, b"hello", &[memfd.as_fd()]).unwrap();
    let mut buf = [0u8; 16];
    let mut fds = Vec::new();
    let n = fdpass::recv_with_fds(&b, &mut buf, &mut fds).unwrap();
    assert_eq!(&buf[..n], b"hello");
    assert_eq!(fds.len(), 1);
    let other = Memfd::from_owned(fds.pop().unwrap());
    other.write_all_at(b"shared", 100).unwrap();
    let mut out = [0u8; 6];
    memfd.read_exact_at(&mut out, 100).unwrap();
    assert_eq!(&out, b"shared");
    let cred = fdpass::peer_cred(&a).unwrap();
    assert_eq!(cred.pid, std::process::id() as i32);
}

#[test]
fn write_protect_then_write_raises_wp_fault() {
    let s = setup(1);
    s.memfd.write_all_at(&[5u8; 8], 0).unwrap();
    // Map it writable first, then protect.
    thread::scope(|sc| {
        let map = &s.map;
        let h = sc.spawn(move || word(map, 0).load(Ordering::SeqCst));
        let (a, _, _) = next_fault(&s.uffd);
        s.uffd
            .continue_(a, PS, Protect::Writable, Wake::Yes)
            .unwrap();
        h.join().unwrap();
    });
    s.uffd
        .write_protect(s.map.addr(), PS, Protect::ReadOnly, Wake::No)
        .unwrap();
    thread::scope(|sc| {
        let map = &s.map;
        let h = sc.spawn(move || word(map, 0).store(3, Ordering::SeqCst));
        let (_, kind, write) = next_fault(&s.uffd);
        assert_eq!((kind, write), (FaultKind::WriteProtect, true));
        s.uffd
            .write_protect(s.map.addr(), PS, Protect::Writable, Wake::Yes)
            .unwrap();
        h.join().unwrap();
    });
    let mut b = [0u8; 8];
    s.memfd.read_exact_at(&mut b, 0).unwrap();
    assert_eq!(u64::from_ne_bytes(b), 3);
}

/// The shortcut-I/O primitive: a private mapping of a memfd, registered MINOR, resolved with
/// CONTINUE, maps the shared frame; a write then copies it privately with no uffd event.
#[test]
fn private_mapping_continue_shares_the_frame_and_writes_copy() {
    let memfd = Memfd::create("vol", 2 * PS).unwrap();
    memfd.write_all_at(&77u64.to_ne_bytes(), 0).unwrap();
    let map = SharedMapping::map_private(memfd.as_fd(), 2 * PAGE_SIZE).unwrap();
    let (uffd, _) = Uffd::open(features::PAGEMESH).unwrap();
    uffd.register_mapping(&map, RegisterMode::MISSING.union(RegisterMode::MINOR))
        .unwrap();
    thread::scope(|sc| {
        let m = &map;
        let h = sc.spawn(move || {
            let v = word(m, 0).load(Ordering::SeqCst);
            word(m, 0).store(v + 1, Ordering::SeqCst); // COW: no second uffd event
            (v, word(m, 0).load(Ordering::SeqCst))
        });
        let (a, kind, _) = next_fault(&uffd);
        assert_eq!((a, kind), (map.addr(), FaultKind::Minor));
        uffd.continue_(a, PS, Protect::Writable, Wake::Yes).unwrap();
        assert_eq!(h.join().unwrap(), (77, 78));
    });
    let mut b = [0u8; 8];
    memfd.read_exact_at(&mut b, 0).unwrap();
    assert_eq!(
        u64::from_ne_bytes(b),
        77,
        "the shared frame must not see a private write"
    );
    let mut evs = Vec::new();
    assert_eq!(
        uffd.read_events(&mut evs, 4).unwrap(),
        0,
        "unexpected events: {evs:?}"
    );
}

/// One CONTINUE over a run maps every page of it (fault-around): touching the run raises one
/// fault, on shared and private mappings alike.
#[test]
fn continue_over_a_run_maps_every_page() {
    for private in [false, true] {
        let memfd = Memfd::create("run", 8 * PS).unwrap();
        memfd.write_all_at(&[1u8; 8 * PAGE_SIZE], 0).unwrap();
        let map = if private {
            SharedMapping::map_private(memfd.as_fd(), 8 * PAGE_SIZE).unwrap()
        } else {
            SharedMapping::map(memfd.as_fd(), 8 * PAGE_SIZE).unwrap()
        };
        let (uffd, _) = Uffd::open(features::PAGEMESH).unwrap();
        uffd.register_mapping(&map, RegisterMode::MISSING.union(RegisterMode::MINOR))
            .unwrap();
        thread::scope(|sc| {
            let m = &map;
            let h = sc.spawn(move || {
                (0..8)
                    .map(|p| word(m, p).load(Ordering::SeqCst))
                    .sum::<u64>()
            });
            let (a, kind, _) = next_fault(&uffd);
            assert_eq!((a, kind), (map.addr(), FaultKind::Minor));
            uffd.continue_(a, 8 * PS, Protect::Writable, Wake::Yes)
                .unwrap();
            assert_eq!(h.join().unwrap(), 8 * 0x0101_0101_0101_0101);
        });
        let mut evs = Vec::new();
        assert_eq!(
            uffd.read_events(&mut evs, 4).unwrap(),
            0,
            "private={private}: {evs:?}"
        );
    }
}

/// A run that reaches an already-mapped page maps (and wakes) what comes before it and reports
/// the partial count instead of failing.
#[test]
fn continue_run_reports_partial_runs() {
    let memfd = Memfd::create("partial", 8 * PS).unwrap();
    memfd.write_all_at(&[2u8; 8 * PAGE_SIZE], 0).unwrap();
    let map = SharedMapping::map_private(memfd.as_fd(), 8 * PAGE_SIZE).unwrap();
    let (uffd, _) = Uffd::open(features::PAGEMESH).unwrap();
    uffd.register_mapping(&map, RegisterMode::MISSING.union(RegisterMode::MINOR))
        .unwrap();
    // Map page 3 first.
    assert_eq!(
        uffd.continue_run(map.addr() + 3 * PS, PS, Protect::Writable, Wake::No)
            .unwrap(),
        PS
    );
    thread::scope(|sc| {
        let m = &map;
        let h = sc.spawn(move || word(m, 0).load(Ordering::SeqCst));
        let (a, _, _) = next_fault(&uffd);
        assert_eq!(
            uffd.continue_run(a, 8 * PS, Protect::Writable, Wake::Yes)
                .unwrap(),
            3 * PS
        );
        assert_eq!(h.join().unwrap(), 0x0202_0202_0202_0202);
    });
    assert_eq!(
        uffd.continue_run(map.addr() + 3 * PS, 2 * PS, Protect::Writable, Wake::No)
            .unwrap(),
        0
    );
}

/// Wait (bounded) for the next batch through the fault runtime's reader, which must re-arm.
fn next_incoming(uffd: &Uffd, reader: &mut FaultReader, bounds: Bounds) -> Incoming {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut rearmed = false;
        let batch = reader.read(uffd, bounds, || rearmed = true).unwrap();
        assert!(rearmed, "the reader re-arms after every read");
        if let Some(first) = batch.first() {
            return *first;
        }
        assert!(Instant::now() < deadline, "no fault within 10 s");
        thread::sleep(Duration::from_micros(200));
    }
}

#[test]
fn fault_reader_types_faults_within_bounds() {
    let s = setup(4);
    let bounds = Bounds {
        base: s.map.addr(),
        len: 4 * PS,
    };
    let mut reader = FaultReader::new(16);
    thread::scope(|sc| {
        let map = &s.map;
        let h = sc.spawn(move || word(map, 2).fetch_add(5, Ordering::SeqCst));
        let f = match next_incoming(&s.uffd, &mut reader, bounds) {
            Incoming::Fault(f) => f,
            other => panic!("{other:?}"),
        };
        assert_eq!((f.page, f.addr), (2, s.map.addr() + 2 * PS));
        assert_eq!((f.kind, f.access), (FaultKind::Missing, Access::Write));
        assert_eq!(
            install(
                &s.uffd,
                f.addr,
                PS,
                Source::Zeros,
                Protect::Writable,
                Wake::Yes
            )
            .unwrap(),
            PS
        );
        assert_eq!(h.join().unwrap(), 0);
    });
    // A fault outside the attachment's bounds is stray.
    let narrow = Bounds {
        base: s.map.addr(),
        len: PS,
    };
    thread::scope(|sc| {
        let map = &s.map;
        let h = sc.spawn(move || word(map, 3).load(Ordering::SeqCst));
        let f = match next_incoming(&s.uffd, &mut reader, narrow) {
            Incoming::Stray(f) => f,
            other => panic!("{other:?}"),
        };
        assert_eq!(f.addr, s.map.addr() + 3 * PS);
        install(
            &s.uffd,
            f.addr,
            PS,
            Source::Zeros,
            Protect::ReadOnly,
            Wake::Yes,
        )
        .unwrap();
        assert_eq!(h.join().unwrap(), 0);
    });
}

#[test]
fn install_read_only_zeros_then_resolve_the_write() {
    let s = setup(8);
    let bounds = Bounds {
        base: s.map.addr(),
        len: 8 * PS,
    };
    let mut reader = FaultReader::new(4);
    thread::scope(|sc| {
        let map = &s.map;
        let h = sc.spawn(move || {
            let v = word(map, 0).load(Ordering::SeqCst);
            word(map, 5).store(v + 3, Ordering::SeqCst);
        });
        let Incoming::Fault(f) = next_incoming(&s.uffd, &mut reader, bounds) else {
            panic!("a fault")
        };
        assert_eq!(f.access, Access::Read);
        // A read-only run of zeros over the whole mapping: COPY (ZEROPAGE cannot protect).
        let n = install(
            &s.uffd,
            f.addr,
            8 * PS,
            Source::Zeros,
            Protect::ReadOnly,
            Wake::Yes,
        );
        assert_eq!(n.unwrap(), 8 * PS);
        // The write to page 5 of the run traps, and is resolved in place.
        let Incoming::Fault(w) = next_incoming(&s.uffd, &mut reader, bounds) else {
            panic!("a fault")
        };
        assert_eq!((w.page, w.kind), (5, FaultKind::WriteProtect));
        assert_eq!(w.access, Access::Write);
        resolve_present(&s.uffd, &w, Protect::Writable).unwrap();
        h.join().unwrap();
    });
    let mut b = [0u8; 8];
    s.memfd.read_exact_at(&mut b, 5 * PS).unwrap();
    assert_eq!(u64::from_ne_bytes(b), 3);
}

#[test]
fn install_stops_at_a_mapped_page_and_nothing_installed_is_zero() {
    let s = setup(8);
    let a = s.map.addr();
    let page = [7u8; PAGE_SIZE];
    install(
        &s.uffd,
        a + 3 * PS,
        0,
        Source::Bytes(&page),
        Protect::Writable,
        Wake::Yes,
    )
    .unwrap();
    let run = vec![1u8; 8 * PAGE_SIZE];
    let got = install(
        &s.uffd,
        a,
        0,
        Source::Bytes(&run),
        Protect::ReadOnly,
        Wake::Yes,
    );
    assert_eq!(
        got.unwrap(),
        3 * PS,
        "the run ends at the page already mapped"
    );
    let again = install(
        &s.uffd,
        a + 3 * PS,
        PS,
        Source::PageCache,
        Protect::ReadOnly,
        Wake::Yes,
    );
    assert_eq!(again.unwrap(), 0);
    assert_eq!(
        word(&s.map, 3).load(Ordering::SeqCst),
        0x0707_0707_0707_0707
    );
    assert_eq!(
        word(&s.map, 1).load(Ordering::SeqCst),
        0x0101_0101_0101_0101
    );
}

#[test]
fn unservable_faults_are_poisoned_or_revoked() {
    let s = setup(4);
    let a = s.map.addr();
    let fault = |page: u64, kind| Fault {
        addr: a + page * PS,
        page,
        kind,
        access: Access::Read,
    };
    // No page there: poisoned (nobody touches it here, so no SIGBUS is raised in the test).
    assert_eq!(
        answer_unservable(&s.uffd, &fault(1, FaultKind::Missing)).unwrap(),
        Unservable::Sigbus
    );
    // A page mapped meanwhile: the thread is woken to retry.
    s.uffd.zeropage(a + 2 * PS, PS, Wake::No).unwrap();
    assert_eq!(
        answer_unservable(&s.uffd, &fault(2, FaultKind::Minor)).unwrap(),
        Unservable::AlreadyMapped
    );
    // A read-only copy cannot be poisoned in place: the attachment must go.
    assert_eq!(
        answer_unservable(&s.uffd, &fault(2, FaultKind::WriteProtect)).unwrap(),
        Unservable::Revoke
    );
}

/// A read-only descriptor of a memfd maps readable and shared, never writable and shared; the
/// read-only mapping registers with every mode (WP included) and its faults resolve with
/// CONTINUE like a writable one's, read-only.
#[test]
fn a_read_only_descriptor_maps_read_only_and_its_faults_resolve() {
    let memfd = Memfd::create("ro", 2 * PS).unwrap();
    memfd.write_all_at(&[7u8; PAGE_SIZE], 0).unwrap();
    let ro = memfd.reopen_read_only().unwrap();
    let writable = SharedMapping::map(ro.as_fd(), 2 * PAGE_SIZE);
    assert_eq!(
        writable.err().map(|e| e.raw_os_error()),
        Some(Some(libc::EACCES)),
        "a read-only descriptor mapped writable and shared"
    );
    // Shared, it is readable, but userfaultfd refuses to register it (EPERM: the kernel wants
    // VM_MAYWRITE); private, it registers, and its faults map the memfd's own frames.
    let shared = SharedMapping::map_read_only(ro.as_fd(), 2 * PAGE_SIZE, false).unwrap();
    let (uffd, _) = Uffd::open(features::PAGEMESH).unwrap();
    let refused = uffd.register_mapping(&shared, all_modes()).unwrap_err();
    assert_eq!(
        refused.source.raw_os_error(),
        Some(libc::EPERM),
        "{refused}"
    );
    let map = SharedMapping::map_read_only(ro.as_fd(), 2 * PAGE_SIZE, true).unwrap();
    assert!(!map.is_writable());
    uffd.register_mapping(&map, all_modes()).unwrap();
    let addr = map.addr();
    thread::scope(|sc| {
        let m = &map;
        // The page is in the memfd: a MINOR fault.
        let h = sc.spawn(move || m.load_u64(0));
        let (a, kind, write) = next_fault(&uffd);
        assert_eq!((a, kind, write), (addr, FaultKind::Minor, false));
        uffd.continue_(a, PS, Protect::ReadOnly, Wake::Yes).unwrap();
        assert_eq!(h.join().unwrap(), u64::from_ne_bytes([7; 8]));
    });
}

/// A file opened as another user: only what that user may open, and this process's own
/// credentials are untouched.
#[test]
fn open_as_opens_with_the_rights_of_the_user_named() {
    use pagemesh_uffd::process::{open_as, Identity};
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let roots = dir.path().join("roots");
    std::fs::write(&roots, b"root's").unwrap();
    std::fs::set_permissions(&roots, std::fs::Permissions::from_mode(0o600)).unwrap();
    let theirs = dir.path().join("theirs");
    std::fs::write(&theirs, b"nobody's").unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o600)).unwrap();
    let nobody = Identity {
        uid: 65534,
        gid: 65534,
        groups: vec![],
    };
    let e = open_as(&roots, &nobody).expect_err("nobody opened root's 0600 file");
    assert_eq!(e.kind(), std::io::ErrorKind::PermissionDenied, "{e}");
    let f = open_as(&theirs, &nobody).expect("nobody opens its own file");
    assert_eq!(f.metadata().unwrap().len(), 8);
    // This thread is still root: it opens root's file.
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&roots)
        .unwrap();
}
