//! The daemon-death watchdog, for every segment kind: a process reading a segment when its
//! daemon is killed gets SIGBUS at the next page it needs, never zeros, never success with
//! wrong data, never a hang.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::{finish, stat_json, Daemon};

/// Run `reader` (a `pagemesh` command reading segment `seg`), kill the daemon as soon as the
/// reader is attached (with runs a whole 1 GiB read takes a fraction of a second, so a fixed
/// sleep could let it finish first), and check that the reader dies of SIGBUS, in bounded time.
fn reader_gets_sigbus_when_the_daemon_dies(d: &mut Daemon, seg: &str, reader: &[&str]) {
    let child = d.spawn_cmd(reader, false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat_json(d, seg)["attached_clients"] == 0 {
        assert!(Instant::now() < deadline, "the reader never attached");
        std::thread::sleep(Duration::from_millis(2));
    }
    let killed_at = Instant::now();
    d.kill9();
    let out = finish(child, &[], Duration::from_secs(10), reader);
    assert!(killed_at.elapsed() < Duration::from_secs(10));
    assert!(
        !out.status.success(),
        "{reader:?} reported success after the daemon died: {}",
        out.stdout_str()
    );
    let sigbus =
        out.status.code() == Some(128 + libc::SIGBUS) || out.status.signal() == Some(libc::SIGBUS);
    assert!(
        sigbus,
        "{reader:?}: expected SIGBUS, got {} / {}{}",
        out.status,
        out.stdout_str(),
        out.stderr
    );
    assert!(
        out.stderr.contains("SIGBUS at segment offset"),
        "{}",
        out.stderr
    );
}

#[test]
fn killing_the_daemon_mid_verify_gives_sigbus_not_success_or_a_hang() {
    let mut d = Daemon::start();
    d.run(&["segment", "create", "big", "--size", "1GiB"]).ok();
    d.run(&["memtest", "big", "--write", "3", "--threads", "2"])
        .ok();
    reader_gets_sigbus_when_the_daemon_dies(&mut d, "big", &["memtest", "big", "--verify", "3"]);
}

#[test]
fn a_file_segment_reader_gets_sigbus_when_the_daemon_dies() {
    let mut d = Daemon::start();
    d.file_segment("f", 1 << 30);
    reader_gets_sigbus_when_the_daemon_dies(&mut d, "f", &["memtest", "f", "--sha256"]);
}

#[test]
fn a_volume_segment_reader_gets_sigbus_when_the_daemon_dies() {
    let mut d = Daemon::start();
    let img = d.path("v.img");
    let chunk: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    let mut data = Vec::with_capacity(256 << 20);
    for _ in 0..256 {
        data.extend_from_slice(&chunk);
    }
    std::fs::write(&img, &data).expect("write the image");
    d.run(&["volume", "add", "v", img.to_str().unwrap()]).ok();
    d.run(&["segment", "create", "s", "--backing", "volume:v"])
        .ok();
    reader_gets_sigbus_when_the_daemon_dies(&mut d, "s", &["memtest", "s", "--sha256"]);
}
