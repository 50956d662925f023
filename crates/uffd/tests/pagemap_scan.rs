//! PAGEMAP_SCAN over a memfd mapping under asynchronous write-protect, against the real kernel:
//! the pages written since the last protection are exactly the ones reported, and a scan that
//! re-arms leaves none to report.

use std::os::fd::AsFd;
use std::sync::atomic::Ordering;

use pagemesh_uffd::{
    features, Event, Memfd, Pagemap, Protect, Rearm, RegisterMode, ScanError, SharedMapping, Uffd,
    Wake, PAGE_SIZE,
};

const PS: u64 = PAGE_SIZE as u64;

/// `pages` pages of a memfd, every one present,, mapped shared, registered `MISSING | WP` on a uffd with
/// `WP_ASYNC`, and write-protected whole.
struct Armed {
    pages: u64,
    memfd: Memfd,
    map: SharedMapping,
    uffd: Uffd,
}

fn armed(pages: u64) -> Armed {
    let memfd = Memfd::create("pagemap-scan-test", pages * PS).unwrap();
    for p in 0..pages {
        memfd.write_all_at(&p.to_ne_bytes(), p * PS).unwrap();
    }
    let map = SharedMapping::map(memfd.as_fd(), (pages * PS) as usize).unwrap();
    let (uffd, _) = Uffd::open(features::PAGEMESH | u64::from(features::WP_ASYNC)).unwrap();
    uffd.register_mapping(&map, RegisterMode::MISSING.union(RegisterMode::WP))
        .unwrap();
    uffd.write_protect(map.addr(), pages * PS, Protect::ReadOnly, Wake::No)
        .unwrap();
    Armed {
        pages,
        memfd,
        map,
        uffd,
    }
}

fn written(pm: &Pagemap, a: &Armed, rearm: Rearm) -> (u64, Vec<u64>) {
    let mut ranges = Vec::new();
    let n = pm
        .collect_written(a.map.addr(), a.pages * PS, rearm, &mut ranges)
        .unwrap();
    let pages = ranges
        .iter()
        .flat_map(|r| (r.start..r.end).step_by(PAGE_SIZE))
        .map(|addr| (addr - a.map.addr()) / PS)
        .collect();
    (n, pages)
}

#[test]
fn scan_reports_exactly_the_written_pages_then_none_after_rearm() {
    let a = armed(256);
    let pm = Pagemap::open_self().unwrap();
    // Nothing is mapped yet: nothing is written.
    assert_eq!(written(&pm, &a, Rearm::No), (0, vec![]));

    let words = a.map.atomics_u64();
    let per_page = PAGE_SIZE / 8;
    // Reads map pages (present in the memfd, so with no uffd message) but write none of them.
    for p in [0u64, 9, 100, 255] {
        assert_eq!(words[p as usize * per_page].load(Ordering::SeqCst), p);
    }
    // Scattered writes, two of them adjacent (3 and 4 come back as one range).
    let mut want = vec![3u64, 4, 9, 77, 200, 255];
    for &p in want.iter().rev() {
        words[p as usize * per_page + 5].store(1000 + p, Ordering::SeqCst);
    }
    want.sort();
    let n = want.len() as u64;
    // A scan without re-arming reports them and leaves them writable.
    assert_eq!(written(&pm, &a, Rearm::No), (n, want.clone()));
    assert_eq!(written(&pm, &a, Rearm::Yes), (n, want.clone()));
    assert_eq!(written(&pm, &a, Rearm::No), (0, vec![]));

    // A write after the re-arm is reported again, alone; the bytes reached the memfd.
    words[77 * per_page].store(7, Ordering::SeqCst);
    assert_eq!(written(&pm, &a, Rearm::Yes), (1, vec![77]));
    assert_eq!(written(&pm, &a, Rearm::No), (0, vec![]));
    let mut b = [0u8; 8];
    a.memfd.read_exact_at(&mut b, 77 * PS + 40).unwrap();
    assert_eq!(u64::from_ne_bytes(b), 1077);

    // No message was raised for any of it.
    let mut evs: Vec<Event> = Vec::new();
    assert_eq!(a.uffd.read_events(&mut evs, 16).unwrap(), 0, "{evs:?}");
}

#[test]
fn scan_continues_past_a_full_region_buffer() {
    // Every other page written: 1024 separate regions, more than one ioctl reports.
    let a = armed(2048);
    let pm = Pagemap::open_self().unwrap();
    let words = a.map.atomics_u64();
    let want: Vec<u64> = (0..a.pages).step_by(2).collect();
    for &p in &want {
        words[p as usize * (PAGE_SIZE / 8)].store(1, Ordering::SeqCst);
    }
    assert_eq!(written(&pm, &a, Rearm::Yes), (want.len() as u64, want));
    assert_eq!(written(&pm, &a, Rearm::No), (0, vec![]));
}

#[test]
fn scan_refuses_a_range_without_wp_async() {
    let memfd = Memfd::create("pagemap-scan-sync", 4 * PS).unwrap();
    let map = SharedMapping::map(memfd.as_fd(), (4 * PS) as usize).unwrap();
    let (uffd, _) = Uffd::open(features::PAGEMESH).unwrap();
    uffd.register_mapping(&map, RegisterMode::MISSING.union(RegisterMode::WP))
        .unwrap();
    let pm = Pagemap::open_self().unwrap();
    let err = pm
        .collect_written(map.addr(), 4 * PS, Rearm::Yes, &mut Vec::new())
        .unwrap_err();
    assert!(matches!(err, ScanError::NotWpAsync), "{err}");
    let err = pm
        .collect_written(map.addr() + 1, PS, Rearm::No, &mut Vec::new())
        .unwrap_err();
    assert!(matches!(err, ScanError::BadRange { .. }), "{err}");
}

#[test]
fn rearming_minor_makes_a_zapped_present_page_fault_again() {
    // Under MISSING | WP with WP_ASYNC the kernel maps a present page itself, so zapping it
    // no longer makes the next access fault (the client watchdog's revocation relies on that).
    // Re-registering the range MISSING | MINOR on the same uffd (opened with MINOR_SHMEM)
    // brings the fault back.
    let a = armed(4);
    let words = a.map.atomics_u64();
    let per_page = PAGE_SIZE / 8;
    a.map.zap(0, 4 * PAGE_SIZE).unwrap();
    assert_eq!(
        words[per_page].load(Ordering::SeqCst),
        1,
        "mapped with no message"
    );
    a.uffd.unregister(a.map.addr(), 4 * PS).unwrap();
    a.uffd
        .register_mapping(&a.map, RegisterMode::MISSING.union(RegisterMode::MINOR))
        .unwrap();
    // Drop the entries mapped so far: every page is unmapped again.
    a.map.zap(0, 4 * PAGE_SIZE).unwrap();
    std::thread::scope(|s| {
        let h = s.spawn(|| words[2 * per_page].load(Ordering::SeqCst));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let mut evs = Vec::new();
        while evs.is_empty() {
            a.uffd.read_events(&mut evs, 1).unwrap();
            assert!(std::time::Instant::now() < deadline, "no fault within 10 s");
            std::thread::sleep(std::time::Duration::from_micros(200));
        }
        let Event::PageFault { address, kind, .. } = evs[0] else {
            panic!("{evs:?}")
        };
        assert_eq!(address, a.map.addr() + 2 * PS);
        assert_eq!(kind, pagemesh_uffd::FaultKind::Minor);
        a.uffd
            .continue_(address, PS, Protect::Writable, Wake::Yes)
            .unwrap();
        assert_eq!(h.join().unwrap(), 2);
    });
}

#[test]
fn pages_never_armed_count_as_written() {
    // Entries never write-protected carry no write-protect bit: the page that was only read is
    // reported written, and so (on 6.18, whose scan takes a fast path for exactly this query)
    // are the unmapped entries of the same page table. Over-reporting costs write-back, never
    // a lost write; a scan that re-arms makes the next one exact.
    let memfd = Memfd::create("pagemap-scan-unarmed", 4 * PS).unwrap();
    memfd.write_all_at(&[1u8; PAGE_SIZE * 4], 0).unwrap();
    let map = SharedMapping::map(memfd.as_fd(), 4 * PAGE_SIZE).unwrap();
    let (uffd, _) = Uffd::open(features::PAGEMESH | u64::from(features::WP_ASYNC)).unwrap();
    uffd.register_mapping(&map, RegisterMode::MISSING.union(RegisterMode::WP))
        .unwrap();
    assert_ne!(map.atomics_u64()[PAGE_SIZE / 8].load(Ordering::SeqCst), 0);
    let pm = Pagemap::open_self().unwrap();
    let mut ranges = Vec::new();
    let n = pm
        .collect_written(map.addr(), 4 * PS, Rearm::Yes, &mut ranges)
        .unwrap();
    let page1 = map.addr() + PS;
    assert!(
        (1..=4).contains(&n) && ranges.iter().any(|r| r.contains(&page1)),
        "{n} pages: {ranges:x?}"
    );
    let n = pm
        .collect_written(map.addr(), 4 * PS, Rearm::No, &mut Vec::new())
        .unwrap();
    assert_eq!(n, 0);
}
