//! Volumes (shortcut I/O), end to end: one frame per block shared by every process, private
//! copies on write, one storage read per block however many processes fault on it.

mod common;

use std::time::Duration;

use common::{finish, Daemon};
use sha2::{Digest, Sha256};

fn volume_stat(d: &Daemon, name: &str) -> serde_json::Value {
    let out = d.run(&["volume", "stat", name, "--json"]).ok();
    serde_json::from_slice(&out.stdout).expect("volume stat --json is JSON")
}

/// An image with no two equal pages (so a wrong frame cannot go unnoticed).
fn make_image(path: &std::path::Path, size: usize) -> String {
    let mut data = vec![0u8; size];
    for (i, w) in data.chunks_exact_mut(8).enumerate() {
        w.copy_from_slice(&common::pattern_word(1234, i as u64 * 8).to_le_bytes());
    }
    std::fs::write(path, &data).unwrap();
    Sha256::digest(&data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn eight_processes_share_one_copy_of_a_1gib_volume() {
    let d = Daemon::start();
    let img = d.path("golden.img");
    let want = make_image(&img, 1 << 30);
    d.run(&["volume", "add", "golden", img.to_str().unwrap()])
        .ok();
    for i in 0..8 {
        d.run(&[
            "segment",
            "create",
            &format!("vm{i}"),
            "--backing",
            "volume:golden",
        ])
        .ok();
    }
    let readers: Vec<_> = (0..8)
        .map(|i| d.spawn_cmd(&["memtest", &format!("vm{i}"), "--sha256"], false))
        .collect();
    for (i, r) in readers.into_iter().enumerate() {
        let out = finish(r, &[], Duration::from_secs(300), &["reader"]).ok();
        assert_eq!(
            out.stdout_str().trim(),
            want,
            "reader {i} saw different bytes"
        );
    }
    let v = volume_stat(&d, "golden");
    assert_eq!(v["storage_bytes_read"], 1u64 << 30, "{v}");
    assert_eq!(v["cached_bytes"], 1u64 << 30, "{v}");
    assert_eq!(v["segments"], 8);
    assert_eq!(v["poisoned_blocks"], 0);
}

#[test]
fn writes_are_private_to_the_writing_process() {
    let d = Daemon::start();
    let img = d.path("base.img");
    let want = make_image(&img, 1 << 20);
    d.run(&["volume", "add", "base", img.to_str().unwrap()])
        .ok();
    d.run(&["segment", "create", "vm0", "--backing", "volume:base"])
        .ok();
    d.run(&["segment", "create", "vm1", "--backing", "volume:base"])
        .ok();
    let client = d.client();
    let m = client.attach("vm0").unwrap();
    let mut before = [0u8; 16];
    m.read_at(8192, &mut before).unwrap();
    m.write_at(8192, b"private write!!!").unwrap();
    let mut after = [0u8; 16];
    m.read_at(8192, &mut after).unwrap();
    assert_eq!(&after, b"private write!!!");
    // Another process on the same segment, one on another segment, segment I/O and the image
    // itself all still see the volume's bytes.
    for seg in ["vm0", "vm1"] {
        let out = d.run(&["memtest", seg, "--sha256"]).ok();
        assert_eq!(out.stdout_str().trim(), want, "{seg} saw the private write");
    }
    let out = d
        .run(&["segment", "read", "vm0", "--offset", "8192", "--len", "16"])
        .ok();
    assert_eq!(out.stdout, before);
    let file: String = Sha256::digest(std::fs::read(&img).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(file, want);
    // Segment writes to a volume segment are refused with a reason.
    let e = d.run_stdin(&["segment", "write", "vm1", "--offset", "0"], b"x");
    assert!(
        !e.status.success() && e.stderr.contains("read-only volume"),
        "{}",
        e.stderr
    );
    drop(m);
}

#[test]
fn eight_processes_faulting_one_block_cause_one_storage_read() {
    let d = Daemon::start();
    let img = d.path("one.img");
    let want_block: String = {
        make_image(&img, 4 << 20);
        let data = std::fs::read(&img).unwrap();
        Sha256::digest(&data[40960..45056])
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    d.run(&["volume", "add", "one", img.to_str().unwrap()]).ok();
    for i in 0..8 {
        d.run(&[
            "segment",
            "create",
            &format!("vm{i}"),
            "--backing",
            "volume:one",
        ])
        .ok();
    }
    let readers: Vec<_> = (0..8)
        .map(|i| {
            d.spawn_cmd(
                &[
                    "memtest",
                    &format!("vm{i}"),
                    "--sha256",
                    "--offset",
                    "40960",
                    "--len",
                    "4096",
                ],
                false,
            )
        })
        .collect();
    for r in readers {
        let out = finish(r, &[], Duration::from_secs(60), &["block reader"]).ok();
        assert_eq!(out.stdout_str().trim(), want_block);
    }
    let v = volume_stat(&d, "one");
    assert_eq!(v["storage_reads"], 1, "{v}");
}

#[test]
fn blocks_below_the_share_threshold_get_private_copies() {
    let mut d = Daemon::start();
    d.kill9();
    // Restart the test daemon with a threshold of 3 faults before a block is shared.
    let log = std::fs::File::create(d.path("t.log")).unwrap();
    let _child = KillOnDrop(
        std::process::Command::new(common::BIN)
            .arg("--socket")
            .arg(d.path("t.sock"))
            .args(["daemon", "--share-threshold", "3", "--data-dir"])
            .arg(d.path("t-data"))
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let sock = d.path("t.sock");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while pagemesh::Client::connect(&sock).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "threshold daemon did not come up"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let c = pagemesh::Client::connect(&sock).unwrap();
    let img = d.path("t.img");
    let want = make_image(&img, 64 << 10);
    c.add_volume("t", img.to_str().unwrap()).unwrap();
    c.create_segment("s", None, pagemesh::Backing::Volume { name: "t".into() })
        .unwrap();
    let hash = |c: &pagemesh::Client| {
        let m = c.attach("s").unwrap();
        let mut buf = vec![0u8; 64 << 10];
        m.read_at(0, &mut buf).unwrap();
        Sha256::digest(&buf)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    assert_eq!(hash(&c), want);
    assert_eq!(hash(&c), want);
    let v = c.stat_volume("t").unwrap();
    assert_eq!(
        (v.cached_blocks, v.private_copies),
        (0, 32),
        "two readers below the threshold: private copies"
    );
    assert_eq!(hash(&c), want);
    let v = c.stat_volume("t").unwrap();
    assert_eq!(
        v.cached_blocks, 16,
        "third reader: the blocks enter the shared cache"
    );
}

/// A daemon this test started, killed (by its pid) and reaped even if the test fails.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn volume_errors_say_what_to_do() {
    let d = Daemon::start();
    let img = d.path("e.img");
    make_image(&img, 8192);
    let e = d.run(&["volume", "add", "e", "/nonexistent.img"]);
    assert!(e.stderr.contains("/nonexistent.img"), "{}", e.stderr);
    d.run(&["volume", "add", "e", img.to_str().unwrap()]).ok();
    d.run(&["segment", "create", "s", "--backing", "volume:e"])
        .ok();
    let e = d.run(&["volume", "rm", "e"]);
    assert!(e.stderr.contains("remove them first"), "{}", e.stderr);
    let e = d.run(&["segment", "create", "t", "--backing", "volume:nope"]);
    assert!(
        e.stderr.contains("no volume named \"nope\""),
        "{}",
        e.stderr
    );
    d.run(&["segment", "rm", "s"]).ok();
    d.run(&["volume", "rm", "e"]).ok();
    assert!(!d.run(&["volume", "list"]).ok().stdout_str().contains(" e "));
}

/// Volume caches count against the memory pool: frames still mapped by a live process stay,
/// unmapped ones are dropped (clean: read again on demand) to bring the pool under its budget.
#[test]
fn volume_caches_live_within_the_memory_budget() {
    let d = Daemon::start_with(&["--memory", "64MiB"]);
    let img = d.path("big.img");
    let want = make_image(&img, 160 << 20);
    d.run(&["volume", "add", "big", img.to_str().unwrap()]).ok();
    for i in 0..3 {
        d.run(&[
            "segment",
            "create",
            &format!("vm{i}"),
            "--backing",
            "volume:big",
        ])
        .ok();
    }
    // One reader at a time maps the whole image (more than the budget): it must not stall.
    for i in 0..3 {
        let r = d.spawn_cmd(&["memtest", &format!("vm{i}"), "--sha256"], false);
        let out = finish(r, &[], Duration::from_secs(120), &["volume reader"]).ok();
        assert_eq!(out.stdout_str().trim(), want);
    }
    // Once no process maps the frames, the evictor drops them to the low watermark.
    let budget = 48u64 << 20; // 64 MiB minus the daemon's 16 MiB reserve
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let v = volume_stat(&d, "big");
        let cached = v["cached_bytes"].as_u64().unwrap();
        if cached <= budget {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "volume cache stayed at {} MiB > 48 MiB: {v}",
            cached >> 20
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = d.run(&["partition", "stat", "volumes", "--json"]).ok();
    let p: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(p["evictions"].as_u64().unwrap() > 0, "{p}");
    assert!(p["resident_bytes"].as_u64().unwrap() <= budget, "{p}");
    // Evicted blocks come back from storage, intact.
    let out = d.run(&["memtest", "vm0", "--sha256"]).ok();
    assert_eq!(out.stdout_str().trim(), want);
}

/// A sequential reader gets runs of up to 2 MiB and read-ahead past them: a region of the image
/// that cannot be read (here: cut off after `volume add`) must still cost exactly the blocks a
/// fault meets there (SIGBUS at that address), never the good blocks that shared a run with
/// them, and never zeros.
#[test]
fn a_sequential_reader_gets_sigbus_only_where_the_image_cannot_be_read() {
    let d = Daemon::start();
    let img = d.path("cut.img");
    make_image(&img, 8 << 20);
    d.run(&["volume", "add", "cut", img.to_str().unwrap()]).ok();
    d.run(&["segment", "create", "s", "--backing", "volume:cut"])
        .ok();
    let good = (5 << 20) + 3 * 4096; // not on a run's boundary
    let f = std::fs::OpenOptions::new().write(true).open(&img).unwrap();
    f.set_len(good).unwrap();
    let want: String = Sha256::digest(std::fs::read(&img).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let len = good.to_string();
    let out = d.run(&["memtest", "s", "--sha256", "--len", &len]).ok();
    assert_eq!(out.stdout_str().trim(), want, "the readable part");
    let out = d.run(&[
        "memtest", "s", "--sha256", "--offset", &len, "--len", "4KiB",
    ]);
    out.assert_sigbus_at(good);
    let v = volume_stat(&d, "cut");
    assert_eq!(v["poisoned_blocks"], 1, "{v}");
    assert_eq!(v["cached_bytes"], good, "{v}");
    assert_eq!(v["storage_bytes_read"], good, "{v}");
    // A second reader of the readable part is served from the cache: no storage read.
    let reads = v["storage_reads"].clone();
    let out = d.run(&["memtest", "s", "--sha256", "--len", &len]).ok();
    assert_eq!(out.stdout_str().trim(), want);
    assert_eq!(volume_stat(&d, "cut")["storage_reads"], reads);
}
