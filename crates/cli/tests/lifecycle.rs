//! The daemon's lifecycle: one daemon per data dir, state only its user can read, and a clean
//! stop on SIGTERM that loses nothing written before it: synced files, cluster copies written
//! back to their homes, a writer caught mid-way told with SIGBUS instead of losing its writes.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::cluster::Cluster;
use common::{finish, pattern_word, Daemon};

const PAGE: u64 = 4096;

fn sigterm(pid: u32) {
    // SAFETY: kill(2) of a daemon this test started, by its pid.
    let r = unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    assert_eq!(r, 0, "kill({pid}, SIGTERM)");
}

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).expect("stat").permissions().mode() & 0o777
}

#[test]
fn a_second_daemon_on_one_data_dir_is_refused_naming_the_first() {
    let d = Daemon::start();
    d.run(&["segment", "create", "a", "--size", "1M"]).ok();
    let mut other = Daemon::unstarted();
    other.data_dir = d.data_dir.clone();
    let out = other.refused_start(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", out.stderr);
    let want = format!("in use by another pagemesh daemon (pid {})", d.pid());
    assert!(out.stderr.contains(&want), "{}", out.stderr);
    // The first daemon is untouched: its socket, its segment, its paging device.
    d.run(&["memtest", "a", "--write", "7"]).ok();
    d.run(&["memtest", "a", "--verify", "7"]).ok();
    assert!(
        !other.socket.exists(),
        "the refused daemon bound its socket"
    );
}

#[test]
fn state_files_are_private_and_an_old_data_dir_is_made_private() {
    let mut d = Daemon::unstarted();
    // A data dir as an earlier release left it: 0755, with a 0644 file in it.
    std::fs::create_dir_all(d.data_dir.join("cluster")).unwrap();
    std::fs::set_permissions(&d.data_dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let old = d.data_dir.join("cluster").join("epoch");
    std::fs::write(&old, b"3\n").unwrap();
    std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
    d.spawn_with(&[]);
    d.run(&["segment", "create", "z", "--size", "1M"]).ok();
    assert_eq!(mode(&d.data_dir), 0o700);
    assert_eq!(mode(&d.data_dir.join("cluster")), 0o700);
    assert_eq!(mode(&old), 0o600);
    for f in std::fs::read_dir(&d.data_dir).unwrap() {
        let p = f.unwrap().path();
        if p.is_file() {
            assert_eq!(mode(&p), 0o600, "{}", p.display());
        }
    }
    assert!(d.log().contains("made private"), "{}", d.log());
}

#[test]
fn sigterm_right_after_a_segment_write_leaves_the_bytes_in_the_file_and_no_socket() {
    let mut d = Daemon::start();
    let file = d.file_segment("f", 1 << 20);
    d.run_stdin(
        &["segment", "write", "f", "--offset", "8192"],
        b"written before SIGTERM",
    )
    .ok();
    sigterm(d.pid());
    let st = d
        .wait_exit(Duration::from_secs(30))
        .expect("the daemon stops");
    assert_eq!(st.code(), Some(0), "{}", d.log());
    let bytes = std::fs::read(&file).unwrap();
    assert_eq!(&bytes[8192..8192 + 22], b"written before SIGTERM");
    assert!(!d.socket.exists(), "the socket is left behind");
    let log = d.log();
    for step in [
        "SIGTERM: shutting down",
        "shutdown: removed",
        "shutdown: segment f synced",
        "shutdown: done",
    ] {
        assert!(log.contains(step), "no {step:?} in the log: {log}");
    }
}

#[test]
fn a_writer_caught_by_sigterm_gets_sigbus_and_everything_it_wrote_before_is_in_the_file() {
    let mut d = Daemon::start();
    let size = 1u64 << 30;
    let file = d.file_segment("big", size);
    let writer = d.spawn_cmd(&["memtest", "big", "--write", "11"], false);
    // Let it write some of the gigabyte, then stop the daemon under it.
    std::thread::sleep(Duration::from_millis(400));
    sigterm(d.pid());
    let st = d
        .wait_exit(Duration::from_secs(60))
        .expect("the daemon stops");
    assert_eq!(st.code(), Some(0), "{}", d.log());
    let out = finish(writer, &[], Duration::from_secs(30), &["memtest --write"]);
    assert_eq!(
        out.status.code(),
        Some(128 + libc::SIGBUS),
        "the writer should be stopped by SIGBUS (it wrote the whole GiB before SIGTERM?): {:?} {}",
        out.status.signal(),
        out.stderr
    );
    let at = out
        .stderr
        .split("SIGBUS at segment offset 0x")
        .nth(1)
        .and_then(|s| u64::from_str_radix(s.split(':').next()?, 16).ok())
        .expect("the offset of the SIGBUS");
    // One thread writes in order: every page before the one it could not fault in was
    // written whole, and must be in the file.
    let written = at / PAGE * PAGE;
    assert!(written > 0, "the writer wrote nothing before SIGTERM");
    let bytes = std::fs::read(&file).unwrap();
    let bad = (0..written / 8).find(|&w| {
        let o = (w * 8) as usize;
        u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap()) != pattern_word(11, w * 8)
    });
    assert_eq!(
        bad, None,
        "a word written before SIGTERM is not in the file"
    );
    eprintln!(
        "{} MiB written before SIGTERM, all in the file",
        written >> 20
    );
}

#[test]
fn a_cluster_node_stopped_by_sigterm_loses_no_page() {
    let mut c = Cluster::start(3, &["--dead-after-ms", "1000"]);
    c.create(1, "z", &["--size", "4M"]);
    // Node 2 writes every page: it holds them all, exclusive and dirty.
    c.node(2).run(&["memtest", "z", "--write", "5"]).ok();
    sigterm(c.node(2).pid());
    let st = c.nodes[1]
        .wait_exit(Duration::from_secs(30))
        .expect("node 2 stops");
    assert_eq!(st.code(), Some(0), "{}", c.node(2).log());
    assert!(
        c.node(2)
            .log()
            .contains("shutdown: cluster segment z synced"),
        "{}",
        c.node(2).log()
    );
    // Node 3 reads every page once node 2 is declared dead: all there, none poisoned.
    c.node(3).run(&["memtest", "z", "--verify", "5"]).ok();
    let stat = common::stat_json(c.node(1), "z");
    assert_eq!(stat["poisoned_pages"], 0, "{stat}");
    // And node 2 comes back to the same data.
    c.restart(2);
    c.node(2).run(&["memtest", "z", "--verify", "5"]).ok();
}

#[test]
fn a_shutdown_whose_home_is_unreachable_ends_within_its_timeout_and_says_what_was_not_synced() {
    let mut c = Cluster::start(
        3,
        &["--fault-timeout-ms", "60000", "--shutdown-timeout", "3"],
    );
    c.create(1, "far", &["--size", "1M"]);
    c.node(2).run(&["memtest", "far", "--write", "8"]).ok();
    // The home is gone: node 2's sync of its pages cannot be answered.
    c.nodes[0].kill9();
    let t = std::time::Instant::now();
    sigterm(c.node(2).pid());
    let st = c.nodes[1]
        .wait_exit(Duration::from_secs(30))
        .expect("node 2 stops");
    let took = t.elapsed();
    assert_eq!(st.code(), Some(2), "{}", c.node(2).log());
    assert!(took < Duration::from_secs(10), "the shutdown took {took:?}");
    let log = c.node(2).log();
    assert!(log.contains("shutdown: segment far not synced"), "{log}");
}
