//! Runs of pages (a fault installing or mapping many pages at once) never lose or invent a
//! write: what reaches a backing file is exactly what was written, page for page.

mod common;

use std::io::Read;
use std::sync::atomic::Ordering;

use common::{pattern_word, stat_json, Daemon};

const PAGE: u64 = 4096;

/// Scattered pages of a 1 GiB file segment, plus a few runs of consecutive ones, written through
/// the mapping and synced: an independent reader of the file finds exactly those pages
/// changed, each with the word written into it, and every other page still zero.
#[test]
fn sync_writes_back_exactly_the_pages_written() {
    let d = Daemon::start();
    let size: u64 = 1 << 30;
    let file = d.file_segment("big", size);
    let pages = size / PAGE;
    let mut written = std::collections::BTreeSet::new();
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    for _ in 0..3000 {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        written.insert((x >> 33) % pages);
    }
    for start in [0, 4096, 100_000, pages - 64] {
        written.extend(start..start + 64);
    }
    // Read a few regions first, so writes also land on clean pages mapped by read-ahead.
    let client = d.client();
    let m = client.attach("big").expect("attach");
    let words = m.atomics_u64();
    for region in [0u64, 100_000, 200_000] {
        for p in region..region + 512 {
            assert_eq!(words[(p * PAGE / 8) as usize].load(Ordering::Relaxed), 0);
        }
    }
    let word_of = |p: u64| (p * PAGE + (p % 512) * 8) as usize / 8;
    for &p in &written {
        let w = word_of(p);
        words[w].store(pattern_word(9, w as u64 * 8), Ordering::Relaxed);
    }
    m.sync().expect("sync");
    let st = stat_json(&d, "big");
    assert_eq!(st["dirty_pages"], 0, "sync left dirty pages: {st}");

    let mut f = std::fs::File::open(&file).expect("open the file");
    let mut buf = vec![0u8; 1 << 20];
    let (mut changed, mut page) = (0u64, 0u64);
    loop {
        let n = f.read(&mut buf).expect("read the file");
        if n == 0 {
            break;
        }
        assert_eq!(n % PAGE as usize, 0, "short read");
        for chunk in buf[..n].chunks(PAGE as usize) {
            let nonzero = chunk.iter().any(|&b| b != 0);
            if written.contains(&page) {
                let w = word_of(page);
                let at = w * 8 - (page * PAGE) as usize;
                let got = u64::from_le_bytes(chunk[at..at + 8].try_into().unwrap());
                assert_eq!(
                    got,
                    pattern_word(9, w as u64 * 8),
                    "page {page}: wrong word"
                );
                let rest_zero = chunk[..at].iter().chain(&chunk[at + 8..]).all(|&b| b == 0);
                assert!(rest_zero, "page {page}: bytes written that were not");
                changed += 1;
            } else {
                assert!(!nonzero, "page {page} changed but was never written");
            }
            page += 1;
        }
    }
    assert_eq!(page, pages, "the file is {page} pages");
    assert_eq!(changed, written.len() as u64);
}

/// A file segment four times the memory budget, written whole through the mapping: eviction
/// takes the dirty pages out in runs (one write-back per run of consecutive pages, one punch),
/// and after a sync an independent reader of the file finds every word of the pattern. Then a
/// scattered rewrite of a few pages under the same pressure: only those pages change.
#[test]
fn eviction_runs_write_back_every_page_of_a_file_larger_than_memory() {
    let d = Daemon::start_with(&["--memory", "64MiB"]);
    let size: u64 = 256 << 20;
    let file = d.file_segment("over", size);
    d.run(&["memtest", "over", "--write", "21"]).ok();
    let st = stat_json(&d, "over");
    assert!(
        st["evictions"].as_u64().unwrap_or(0) > 0,
        "nothing was evicted (the test must run under pressure): {st}"
    );
    let client = d.client();
    let m = client.attach("over").expect("attach");
    let words = m.atomics_u64();
    let pages = size / PAGE;
    let rewritten: Vec<u64> = (0..pages).step_by(997).collect();
    for &p in &rewritten {
        words[(p * PAGE / 8) as usize].store(!0, Ordering::Relaxed);
    }
    m.sync().expect("sync");
    drop(m);

    let mut f = std::fs::File::open(&file).expect("open the file");
    let mut buf = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = f.read(&mut buf).expect("read the file");
        if n == 0 {
            break;
        }
        for (i, w) in buf[..n].chunks_exact(8).enumerate() {
            let at = offset + i as u64 * 8;
            let got = u64::from_le_bytes(w.try_into().unwrap());
            let page = at / PAGE;
            let want = if at.is_multiple_of(PAGE) && page.is_multiple_of(997) {
                !0
            } else {
                pattern_word(21, at)
            };
            assert_eq!(got, want, "file offset {at} (page {page}): wrong word");
        }
        offset += n as u64;
    }
    assert_eq!(offset, size, "the file is {offset} bytes");
}

/// A write to a page of a file segment followed at once by a sync is in the file when the sync
/// returns, every time: the fault that maps a page writable marks it Dirty before it wakes the
/// writer (a sync that scanned for Dirty pages between the wake and the marking skipped the
/// page and reported the write durable; seen under CPU load).
#[test]
fn a_write_then_sync_is_always_in_the_file() {
    let d = Daemon::start();
    let size: u64 = 64 << 20;
    let file = d.file_segment("ws", size);
    let client = d.client();
    let m = client.attach("ws").expect("attach");
    let words = m.atomics_u64();
    let f = std::fs::File::open(&file).expect("open the file");
    // Pages far apart, so each write is a first touch of an Absent page (and some continue a
    // writer's stream, so write runs are exercised too).
    for i in 0..400u64 {
        let page = (i * 37) % (size / PAGE);
        let w = (page * PAGE / 8) as usize;
        let value = pattern_word(5, i);
        words[w].store(value, Ordering::Relaxed);
        m.sync().expect("sync");
        let mut got = [0u8; 8];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut got, page * PAGE).expect("read");
        assert_eq!(
            u64::from_le_bytes(got),
            value,
            "write {i} to page {page}: not in the file after sync returned"
        );
    }
}
