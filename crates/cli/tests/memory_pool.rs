//! The memory pool end to end: a budget far below the data, paging, partitions, pinning and
//! paging errors, with real daemons, processes and uffds.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{finish, stat_json, Daemon};

const MIB: u64 = 1 << 20;

fn partition_json(d: &Daemon, name: &str) -> serde_json::Value {
    let out = d.run(&["partition", "stat", name, "--json"]).ok();
    serde_json::from_slice(&out.stdout).expect("partition stat --json is JSON")
}

/// Documented slack over --memory for the daemon's RSS + memfd pages (see ARCHITECTURE.md).
const SLACK_BYTES: u64 = 32 * MIB;

#[test]
fn four_gib_segment_in_a_512mib_budget() {
    let d = Daemon::start_with(&["--memory", "512MiB", "--paging-device-size", "5GiB"]);
    d.run(&["segment", "create", "big", "--size", "4GiB"]).ok();
    let peak = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(d.memory_bytes(), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let w = d.spawn_cmd(
            &["memtest", "big", "--write", "21", "--threads", "2"],
            false,
        );
        let w = finish(w, &[], Duration::from_secs(600), &["write 4 GiB"]);
        let v = d.spawn_cmd(
            &["memtest", "big", "--verify", "21", "--threads", "2"],
            false,
        );
        let v = finish(v, &[], Duration::from_secs(600), &["verify 4 GiB"]);
        done.store(true, Ordering::Relaxed);
        w.ok();
        v.ok();
    });
    let peak = peak.load(Ordering::Relaxed);
    assert!(peak > 0, "no memory sample taken");
    assert!(
        peak <= 512 * MIB + SLACK_BYTES,
        "daemon RSS + memfd pages peaked at {} MiB",
        peak / MIB
    );
    let st = stat_json(&d, "big");
    let paged = st["paged_pages"].as_u64().unwrap();
    let resident = st["resident_pages"].as_u64().unwrap();
    assert_eq!(
        paged + resident,
        (4u64 << 30) / 4096,
        "every page is resident or paged: {st}"
    );
    assert!(
        paged * 4096 >= 3 * (1u64 << 30),
        "the paging device holds the rest: {st}"
    );
    assert_eq!(st["poisoned_pages"], 0);
    eprintln!(
        "peak daemon memory {} MiB, paged {} MiB",
        peak / MIB,
        paged * 4096 / MIB
    );
}

#[test]
fn a_partition_min_is_kept_while_another_thrashes() {
    struct StopOnDrop<'a>(&'a AtomicBool);
    impl Drop for StopOnDrop<'_> {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let d = Daemon::start_with(&["--memory", "512MiB", "--paging-device-size", "3GiB"]);
    d.run(&["partition", "create", "gold", "--min", "300MiB"])
        .ok();
    d.run(&["partition", "create", "scratch"]).ok();
    d.run(&[
        "segment",
        "create",
        "keep",
        "--size",
        "400MiB",
        "--partition",
        "gold",
    ])
    .ok();
    d.run(&[
        "segment",
        "create",
        "churn",
        "--size",
        "1GiB",
        "--partition",
        "scratch",
    ])
    .ok();
    d.run(&["memtest", "keep", "--write", "1"]).ok();
    let low = AtomicU64::new(u64::MAX);
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let r = partition_json(&d, "gold")["resident_bytes"]
                    .as_u64()
                    .unwrap();
                low.fetch_min(r, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        // The poller stops however this ends (a failed churn must fail the test, not hang it).
        let _stop = StopOnDrop(&done);
        for seed in [2, 3] {
            let c = d.spawn_cmd(&["memtest", "churn", "--write", &seed.to_string()], false);
            finish(c, &[], Duration::from_secs(300), &["churn"]).ok();
        }
    });
    let low = low.load(Ordering::Relaxed);
    assert!(
        low >= 300 * MIB,
        "partition gold fell to {} MiB, below its 300 MiB min",
        low / MIB
    );
    let scratch = partition_json(&d, "scratch");
    assert!(
        scratch["evictions"].as_u64().unwrap() > 0,
        "scratch did not thrash: {scratch}"
    );
    d.run(&["memtest", "keep", "--verify", "1"]).ok();
    d.run(&["memtest", "churn", "--verify", "3"]).ok();
}

#[test]
fn pinned_pages_stay_and_pinning_past_the_max_fails() {
    let d = Daemon::start_with(&["--memory", "128MiB", "--paging-device-size", "1GiB"]);
    d.run(&["partition", "create", "small", "--max", "16MiB"])
        .ok();
    d.run(&[
        "segment",
        "create",
        "p",
        "--size",
        "64MiB",
        "--partition",
        "small",
    ])
    .ok();
    d.run(&["segment", "create", "other", "--size", "512MiB"])
        .ok();
    d.run(&["memtest", "p", "--write", "8", "--len", "8MiB"])
        .ok();
    d.run(&["segment", "pin", "p", "--offset", "0", "--len", "8MiB"])
        .ok();
    let e = d.run(&["segment", "pin", "p", "--offset", "8MiB", "--len", "16MiB"]);
    assert!(
        !e.status.success()
            && e.stderr
                .contains("would exceed what partition small may pin"),
        "{}",
        e.stderr
    );
    // Pressure from another segment: the pinned pages never leave.
    d.run(&["memtest", "other", "--write", "9"]).ok();
    for page in [0u64, 1000, 2047] {
        let out = d
            .run(&[
                "segment",
                "stat",
                "p",
                "--page",
                &page.to_string(),
                "--json",
            ])
            .ok();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["pinned"].as_bool().unwrap(), "{v}");
        assert!(
            v["state"] == "dirty" || v["state"] == "clean",
            "pinned page {page} left memory: {v}"
        );
    }
    assert_eq!(stat_json(&d, "p")["pinned_pages"], 2048);
    d.run(&["segment", "unpin", "p"]).ok();
    assert_eq!(stat_json(&d, "p")["pinned_pages"], 0);
    d.run(&["memtest", "p", "--verify", "8", "--len", "8MiB"])
        .ok();
    // Removing the segments gives every counted page back to the pool.
    d.run(&["segment", "rm", "p"]).ok();
    d.run(&["segment", "rm", "other"]).ok();
    for part in ["small", "default"] {
        let v = partition_json(&d, part);
        assert_eq!(
            (v["resident_bytes"].as_u64(), v["pinned_bytes"].as_u64()),
            (Some(0), Some(0)),
            "{v}"
        );
    }
    d.run(&["partition", "rm", "small"]).ok();
}

#[test]
fn a_corrupt_paging_slot_poisons_exactly_that_page() {
    let d = Daemon::start_with(&["--memory", "64MiB", "--paging-device-size", "1GiB"]);
    d.run(&["segment", "create", "s", "--size", "256MiB"]).ok();
    d.run(&["memtest", "s", "--write", "13"]).ok();
    let page = 10u64;
    let out = d
        .run(&[
            "segment",
            "stat",
            "s",
            "--page",
            &page.to_string(),
            "--json",
        ])
        .ok();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["state"], "paged",
        "page {page} should have been paged out: {v}"
    );
    let slot = v["slot"].as_u64().unwrap();
    // Corrupt the slot on the device itself.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(d.data_dir.join("paging.swap"))
            .unwrap();
        f.write_all_at(&[0xA5; 64], slot * 4096 + 128).unwrap();
    }
    let off = (page * 4096).to_string();
    let out = d.run(&[
        "memtest", "s", "--verify", "13", "--offset", &off, "--len", "4096",
    ]);
    out.assert_sigbus_at(page * 4096);
    // Everything else verifies, from another process.
    d.run(&["memtest", "s", "--verify", "13", "--len", &off])
        .ok();
    let rest = (page + 1) * 4096;
    d.run(&[
        "memtest",
        "s",
        "--verify",
        "13",
        "--offset",
        &rest.to_string(),
    ])
    .ok();
    assert_eq!(stat_json(&d, "s")["poisoned_pages"], 1);
    assert_eq!(partition_json(&d, "default")["paging_errors"], 1);
    let log = d.log();
    assert!(
        log.contains("segment s page 10")
            && log.contains("partition default")
            && log.contains("checksum mismatch"),
        "the log does not name segment, page, partition and cause: {log}"
    );
    // clear-poison: a zero segment's page comes back as zeros.
    d.run(&["segment", "clear-poison", "s"]).ok();
    let z = d
        .run(&["segment", "read", "s", "--offset", &off, "--len", "8"])
        .ok();
    assert_eq!(z.stdout, vec![0u8; 8]);
}

/// A sequential writer of a zero segment gets speculative runs of zero pages ahead of it (see
/// the node's `runs`). Here it writes the first MiB of every 4 MiB, so each region's last run
/// reaches past what it writes: those pages are Dirty and all zeros. Under a budget of a
/// quarter of what is touched, the evictor must drop them as dormant with no paging I/O, page
/// out the written ones, and every page must read back as written (or as zeros).
#[test]
fn speculative_zero_pages_leave_memory_without_paging_io() {
    let d = Daemon::start_with(&["--memory", "64MiB", "--paging-device-size", "512MiB"]);
    d.run(&["segment", "create", "sparse", "--size", "256MiB"])
        .ok();
    const PAGE_WORDS: usize = 512;
    const REGION_PAGES: usize = 1024;
    const WRITTEN_PAGES: usize = 256;
    const REGIONS: usize = 64;
    let word = |r: usize, p: usize| (r * REGION_PAGES + p) * PAGE_WORDS;
    let client = d.client();
    let m = client.attach("sparse").expect("attach");
    let words = m.atomics_u64();
    for r in 0..REGIONS {
        for p in 0..WRITTEN_PAGES {
            let w = word(r, p);
            words[w].store(common::pattern_word(5, w as u64 * 8), Ordering::Relaxed);
        }
    }
    let st = stat_json(&d, "sparse");
    let (evictions, page_outs) = (
        st["evictions"].as_u64().unwrap(),
        st["page_outs"].as_u64().unwrap(),
    );
    let written = (REGIONS * WRITTEN_PAGES) as u64;
    assert!(
        st["zero_fills"].as_u64().unwrap() > written,
        "the writer got no speculative runs: {st}"
    );
    assert!(evictions > page_outs, "no zero page was dropped: {st}");
    assert!(
        page_outs <= written,
        "{page_outs} pages were paged out, more than the {written} written: {st}"
    );
    for r in 0..REGIONS {
        for p in 0..REGION_PAGES {
            let w = word(r, p);
            let want = if p < WRITTEN_PAGES {
                common::pattern_word(5, w as u64 * 8)
            } else {
                0
            };
            let got = words[w].load(Ordering::Relaxed);
            assert_eq!(got, want, "region {r} page {p}: {got:#x}, want {want:#x}");
        }
    }
    assert_eq!(stat_json(&d, "sparse")["poisoned_pages"], 0);
}
