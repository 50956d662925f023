//! Single-node pager, end to end: real daemon processes, real client processes, real uffds.

mod common;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use common::{file_len, finish, pattern_word, stat_json, Daemon};
use sha2::{Digest, Sha256};

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

#[test]
fn two_writers_on_disjoint_halves_then_a_third_verifies() {
    let d = Daemon::start();
    d.run(&["segment", "create", "big", "--size", "1GiB"]).ok();
    let half = (GIB / 2).to_string();
    let a = d.spawn_cmd(
        &[
            "memtest", "big", "--write", "7", "--offset", "0", "--len", &half,
        ],
        false,
    );
    let b = d.spawn_cmd(
        &[
            "memtest", "big", "--write", "7", "--offset", &half, "--len", &half,
        ],
        false,
    );
    finish(a, &[], Duration::from_secs(120), &["writer a"]).ok();
    finish(b, &[], Duration::from_secs(120), &["writer b"]).ok();
    let v = d
        .run(&["memtest", "big", "--verify", "7", "--threads", "2"])
        .ok();
    assert!(
        v.stdout_str().contains("verified 1GiB"),
        "{}",
        v.stdout_str()
    );
    let bad = d.run(&["memtest", "big", "--verify", "8"]);
    assert_eq!(
        bad.status.code(),
        Some(1),
        "{}{}",
        bad.stdout_str(),
        bad.stderr
    );
    assert!(
        bad.stdout_str().contains("first bad offset 0 "),
        "{}",
        bad.stdout_str()
    );
    let st = stat_json(&d, "big");
    assert_eq!(st["resident_pages"], GIB / 4096);
    assert_eq!(st["poisoned_pages"], 0);
}

#[test]
fn file_segment_sync_writes_the_pattern_to_the_file() {
    let d = Daemon::start();
    let file = d.path("data.img");
    let spec = format!("file:{}", file.display());
    d.run(&[
        "segment",
        "create",
        "f",
        "--size",
        "256MiB",
        "--backing",
        &spec,
    ])
    .ok();
    d.run(&["memtest", "f", "--write", "9", "--threads", "2"])
        .ok();
    let st = stat_json(&d, "f");
    assert_eq!(st["dirty_pages"], 256 * MIB / 4096);
    let out = d.run(&["segment", "sync", "f"]).ok();
    assert!(
        out.stdout_str().contains("65536 dirty page(s) written"),
        "{}",
        out.stdout_str()
    );
    assert_eq!(stat_json(&d, "f")["dirty_pages"], 0);
    // An independent reader: plain file reads and our own splitmix64.
    let mut f = std::fs::File::open(&file).unwrap();
    let mut buf = vec![0u8; MIB as usize];
    for chunk in 0..256u64 {
        f.read_exact(&mut buf).unwrap();
        for (i, w) in buf.chunks_exact(8).enumerate() {
            let o = chunk * MIB + i as u64 * 8;
            assert_eq!(
                u64::from_le_bytes(w.try_into().unwrap()),
                pattern_word(9, o),
                "file differs at offset {o}"
            );
        }
    }
    assert_eq!(file_len(&file), 256 * MIB);
    // A write after sync dirties exactly the written page again, and only it is written back.
    d.run(&[
        "memtest", "f", "--write", "10", "--offset", "8192", "--len", "4096",
    ])
    .ok();
    assert_eq!(stat_json(&d, "f")["dirty_pages"], 1);
    assert!(d
        .run(&["segment", "sync", "f"])
        .ok()
        .stdout_str()
        .contains(" 1 dirty page(s)"));
}

#[test]
fn segment_io_and_mapped_access_see_one_copy() {
    let d = Daemon::start();
    let file = d.path("io.img");
    let spec = format!("file:{}", file.display());
    d.run(&[
        "segment",
        "create",
        "io",
        "--size",
        "1MiB",
        "--backing",
        &spec,
    ])
    .ok();
    let data: Vec<u8> = (0..10_000u32).map(|i| (i * 31 % 251) as u8).collect();
    // segment write, then a mapped read in this process (a real attach with its own uffd).
    d.run_stdin(&["segment", "write", "io", "--offset", "5000"], &data)
        .ok();
    let client = d.client();
    let m = client.attach("io").unwrap();
    let mut got = vec![0u8; data.len()];
    m.read_at(5000, &mut got).unwrap();
    assert_eq!(got, data);
    // A mapped write, then `segment read` in another process.
    m.write_at(700_000, b"written through the mapping").unwrap();
    let out = d
        .run(&["segment", "read", "io", "--offset", "700000", "--len", "27"])
        .ok();
    assert_eq!(out.stdout, b"written through the mapping");
    // The mapping sees later segment writes too (same page, already mapped here).
    d.run_stdin(
        &["segment", "write", "io", "--offset", "700000"],
        b"WRITTEN",
    )
    .ok();
    let mut again = [0u8; 27];
    m.read_at(700_000, &mut again).unwrap();
    assert_eq!(&again, b"WRITTEN through the mapping");
    // Both kinds of write reach the file on sync.
    m.sync().unwrap();
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(&bytes[5000..15_000], &data[..]);
    assert_eq!(&bytes[700_000..700_027], b"WRITTEN through the mapping");
    // And a hash through the mapping in another process equals the file's.
    let out = d.run(&["memtest", "io", "--sha256"]).ok();
    let want: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(out.stdout_str().trim(), want);
}

#[test]
fn mapper_read_error_poisons_exactly_that_page_until_cleared() {
    let d = Daemon::start();
    let file = d.path("shrinks.img");
    let spec = format!("file:{}", file.display());
    d.run(&[
        "segment",
        "create",
        "p",
        "--size",
        "1MiB",
        "--backing",
        &spec,
    ])
    .ok();
    d.run(&["memtest", "p", "--write", "5"]).ok();
    d.run(&["segment", "sync", "p"]).ok();
    // Drop the page cache by re-creating the segment, then shrink the file under it.
    d.run(&["segment", "rm", "p"]).ok();
    d.run(&["segment", "create", "p", "--backing", &spec]).ok();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(512 * 1024)
        .unwrap();
    // The first half still verifies; the first page past the new end gets SIGBUS.
    d.run(&["memtest", "p", "--verify", "5", "--len", "512KiB"])
        .ok();
    let out = d.run(&[
        "memtest", "p", "--verify", "5", "--offset", "512KiB", "--len", "4KiB",
    ]);
    out.assert_sigbus_at(0x80000);
    let st = stat_json(&d, "p");
    assert_eq!(st["poisoned_pages"], 1);
    assert!(
        d.log().contains("segment p page 128"),
        "daemon log does not name the page: {}",
        d.log()
    );
    // Segment I/O on the poisoned page is refused with a clear error, too.
    let r = d.run(&["segment", "read", "p", "--offset", "524288", "--len", "8"]);
    assert!(
        !r.status.success() && r.stderr.contains("poisoned"),
        "{}",
        r.stderr
    );
    // Restore the file, clear the poison: the page reloads from the file.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&file)
        .unwrap()
        .set_len(MIB)
        .unwrap();
    let c = d.run(&["segment", "clear-poison", "p"]).ok();
    assert!(
        c.stdout_str().contains("1 poisoned page(s) cleared"),
        "{}",
        c.stdout_str()
    );
    assert_eq!(stat_json(&d, "p")["poisoned_pages"], 0);
    // The file's tail is zero now (truncate + extend), so the pattern check fails cleanly there,
    // with no SIGBUS: the page is served again.
    let out = d.run(&[
        "memtest", "p", "--verify", "5", "--offset", "512KiB", "--len", "4KiB",
    ]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{} {}",
        out.stdout_str(),
        out.stderr
    );
    d.run(&["memtest", "p", "--verify", "5", "--len", "512KiB"])
        .ok();
}

#[test]
fn a_client_killed_mid_fault_is_cleaned_up_and_others_go_on() {
    let d = Daemon::start();
    d.run(&["segment", "create", "s", "--size", "512MiB"]).ok();
    let mut victim = d.spawn_cmd(&["memtest", "s", "--write", "1"], false);
    std::thread::sleep(Duration::from_millis(200));
    victim.kill().unwrap();
    victim.wait().unwrap();
    d.run(&["memtest", "s", "--write", "2", "--len", "64MiB"])
        .ok();
    d.run(&["memtest", "s", "--verify", "2", "--len", "64MiB"])
        .ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat_json(&d, "s")["attached_clients"] != 0 {
        assert!(Instant::now() < deadline, "dead client still attached");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn garbage_and_wrong_versions_are_refused_and_the_daemon_goes_on() {
    use pagemesh_proto_shim::*;
    let d = Daemon::start();
    // Raw garbage: an error frame (or a close), then the daemon still serves.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::io::Write::write_all(&mut s, &[5, 0, 0, 0, 0xff, 0xfe, 0xfd, 0xfc, 0xfb]).unwrap();
    let reply = read_all(&mut s);
    assert!(
        String::from_utf8_lossy(&reply).contains("expected a pagemesh hello"),
        "{reply:?}"
    );
    // An absurd frame length.
    let mut s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    std::io::Write::write_all(&mut s, &[0xff, 0xff, 0xff, 0x7f]).unwrap();
    let _ = read_all(&mut s);
    // A hello with an unknown version.
    let s = UnixStream::connect(&d.socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let err = hello_with_version(&s, 999);
    assert!(err.contains("protocol version 999"), "{err}");
    // Still alive and serving.
    d.run(&["segment", "create", "alive", "--size", "4KiB"])
        .ok();
    assert!(d
        .run(&["segment", "list"])
        .ok()
        .stdout_str()
        .contains("alive"));
}

/// Speaks the wire protocol by hand for the adversarial test.
mod pagemesh_proto_shim {
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    pub fn read_all(s: &mut UnixStream) -> Vec<u8> {
        let mut v = Vec::new();
        let _ = s.read_to_end(&mut v);
        v
    }

    pub fn hello_with_version(s: &UnixStream, version: u32) -> String {
        let hello = pagemesh_wire::Request::Hello {
            magic: *b"PGMS",
            version,
            client: "test".into(),
        };
        pagemesh_wire::write_frame(s, &hello, &[]).unwrap();
        match pagemesh_wire::read_frame::<pagemesh_wire::Response>(s) {
            Ok((pagemesh_wire::Response::Error { message, .. }, _)) => message,
            other => format!("unexpected {other:?}"),
        }
    }

    use pagemesh_proto as pagemesh_wire;
}

#[test]
fn catalog_and_synced_data_survive_a_daemon_restart() {
    let mut d = Daemon::start();
    let file = d.path("keep.img");
    let spec = format!("file:{}", file.display());
    d.run(&[
        "segment",
        "create",
        "keep",
        "--size",
        "8MiB",
        "--backing",
        &spec,
    ])
    .ok();
    d.run(&["segment", "create", "scratch", "--size", "16MiB"])
        .ok();
    d.run(&["memtest", "keep", "--write", "11"]).ok();
    d.run(&["segment", "sync", "keep"]).ok();
    d.kill9();
    d.spawn();
    let list = d.run(&["segment", "list", "--json"]).ok();
    let v: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["keep", "scratch"]);
    d.run(&["memtest", "keep", "--verify", "11"]).ok();
    // Zero segments are memory: after a restart they read as zero again.
    let z = d
        .run(&["memtest", "scratch", "--sha256", "--len", "4KiB"])
        .ok();
    let zero: String = Sha256::digest([0u8; 4096])
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(z.stdout_str().trim(), zero);
}

#[test]
fn huge_segment_creation_is_o1_and_atomics_count_exactly() {
    let d = Daemon::start();
    d.run(&["segment", "create", "huge", "--size", "1TiB"]).ok();
    let off = ((1u64 << 40) - 8).to_string();
    let a = d.spawn_cmd(
        &[
            "memtest",
            "huge",
            "--increment",
            "20000",
            "--offset",
            &off,
            "--threads",
            "2",
        ],
        false,
    );
    let b = d.spawn_cmd(
        &["memtest", "huge", "--increment", "20000", "--offset", &off],
        false,
    );
    finish(a, &[], Duration::from_secs(120), &["inc a"]).ok();
    finish(b, &[], Duration::from_secs(120), &["inc b"]).ok();
    let out = d
        .run(&["segment", "read", "huge", "--offset", &off, "--len", "8"])
        .ok();
    assert_eq!(
        u64::from_le_bytes(out.stdout[..8].try_into().unwrap()),
        40_000
    );
    let st = stat_json(&d, "huge");
    assert_eq!(st["resident_pages"], 1);
    assert_eq!(st["segment"]["size_bytes"], 1u64 << 40);
}

#[test]
fn errors_say_what_failed_and_what_to_do() {
    let d = Daemon::start();
    let e = d.run(&["segment", "stat", "nope"]);
    assert_eq!(e.status.code(), Some(66), "not found");
    assert!(
        e.stderr.contains("no segment named \"nope\"") && e.stderr.contains("segment list"),
        "{}",
        e.stderr
    );
    let e = d.run(&["segment", "create", "bad name", "--size", "4KiB"]);
    assert!(e.stderr.contains("invalid segment name"), "{}", e.stderr);
    d.run(&["segment", "create", "twice", "--size", "4KiB"])
        .ok();
    let e = d.run(&["segment", "create", "twice", "--size", "4KiB"]);
    assert!(e.stderr.contains("already exists"), "{}", e.stderr);
    let o = std::process::Command::new(common::BIN)
        .args(["--socket", "/nonexistent/pm.sock", "segment", "list"])
        .output()
        .unwrap();
    let e = common::Out {
        status: o.status,
        stdout: o.stdout,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    assert!(
        e.stderr.contains("is `pagemesh daemon` running?"),
        "{}",
        e.stderr
    );
    let e = d.run(&["memtest", "twice", "--write", "1", "--offset", "8192"]);
    assert!(e.stderr.contains("past the end"), "{}", e.stderr);
}

/// A page this process already mapped (write-protected: clean) before the daemon died must
/// raise SIGBUS on the next access after it, not be retried forever: zapping a write-protected
/// entry leaves a uffd-wp marker that POISON cannot replace unless protection is cleared first.
#[test]
fn pages_mapped_before_the_daemon_died_get_sigbus_after_it() {
    let mut d = Daemon::start();
    let file = d.path("wp.img");
    let spec = format!("file:{}", file.display());
    d.run(&[
        "segment",
        "create",
        "wp",
        "--size",
        "1MiB",
        "--backing",
        &spec,
    ])
    .ok();
    d.run(&["memtest", "wp", "--write", "4"]).ok();
    d.run(&["segment", "sync", "wp"]).ok(); // clean: mapped write-protected from now on
    let reader = d.spawn_cmd(
        &[
            "memtest",
            "wp",
            "--verify",
            "4",
            "--len",
            "64KiB",
            "--repeat",
            "100000",
            "--pause-ms",
            "5",
        ],
        false,
    );
    std::thread::sleep(Duration::from_millis(400));
    d.kill9();
    let out = finish(
        reader,
        &[],
        Duration::from_secs(10),
        &["re-reader after daemon kill"],
    );
    assert!(
        !out.status.success(),
        "re-reads succeeded after the daemon died: {}",
        out.stdout_str()
    );
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGBUS),
        "{}",
        out.stderr
    );
}

#[test]
fn a_segment_can_be_removed_as_soon_as_its_mapping_is_dropped() {
    // Dropping a mapping waits for the daemon to forget the attachment: a removal right
    // after it must not find the segment attached by this process (it did, now and then).
    let d = Daemon::start();
    let client = d.client();
    for i in 0..20 {
        let name = format!("gone{i}");
        client
            .create_segment(&name, Some(1 << 20), pagemesh::Backing::Zero)
            .expect("create");
        let m = client.attach(&name).expect("attach");
        m.write_at(0, &[7u8; 64])
            .expect("write through the mapping");
        drop(m);
        client
            .remove_segment(&name)
            .unwrap_or_else(|e| panic!("removing {name} right after its mapping was dropped: {e}"));
    }
}
