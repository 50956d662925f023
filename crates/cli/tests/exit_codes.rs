//! Exit codes a script can act on (README, "In scripts"): each class of failure has its own,
//! from real commands against real daemons.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::cluster::Cluster;
use common::{pagemesh, Daemon};

fn code(out: &common::Out) -> Option<i32> {
    out.status.code()
}

#[test]
fn usage_not_found_conflict_and_unavailable_have_their_codes() {
    let d = Daemon::start();
    d.run(&["segment", "create", "a", "--size", "1M"]).ok();
    // The command line is wrong: 64.
    assert_eq!(
        code(&d.run(&["segment", "create", "a", "--bogus"])),
        Some(64)
    );
    assert_eq!(code(&d.run(&["segment"])), Some(64), "no subcommand");
    let past = d.run(&["memtest", "a", "--verify", "1", "--offset", "4M"]);
    assert_eq!(code(&past), Some(64), "{}", past.stderr);
    // Nothing of that name: 66.
    assert_eq!(code(&d.run(&["segment", "stat", "nope"])), Some(66));
    // Exists already: 73.
    let again = d.run(&["segment", "create", "a", "--size", "1M"]);
    assert_eq!(code(&again), Some(73), "{}", again.stderr);
    // No daemon there: 69.
    let none = pagemesh(&["--socket", "/nonexistent/pm.sock", "segment", "list"]);
    assert_eq!(code(&none), Some(69), "{}", none.stderr);
    // Help is not an error.
    assert_eq!(code(&pagemesh(&["segment", "--help"])), Some(0));
}

#[test]
fn a_socket_this_user_may_not_use_is_a_permission_error() {
    let d = Daemon::start_with(&["--socket-mode", "0600"]);
    let (code, err) = run_as_nobody(&d, &["segment", "list"]);
    assert_eq!(code, Some(77), "{err}");
}

#[test]
fn lost_data_is_a_data_error() {
    let mut c = Cluster::start(3, &["--dead-after-ms", "1000"]);
    c.create(1, "lost", &["--size", "64K"]);
    // Node 2 holds the only copy of its writes, unsynced, and dies.
    c.node(2).run(&["memtest", "lost", "--write", "4"]).ok();
    c.nodes[1].kill9();
    let read = common::finish(
        c.node(1)
            .spawn_cmd(&["segment", "read", "lost", "--len", "4096"], false),
        &[],
        Duration::from_secs(60),
        &["segment read"],
    );
    assert_eq!(code(&read), Some(65), "{}", read.stderr);
    assert!(read.stderr.contains("poison"), "{}", read.stderr);
}

/// `pagemesh --socket S args` as uid/gid 65534 (a copy of the CLI any user may run): its exit
/// code and stderr.
fn run_as_nobody(d: &Daemon, args: &[&str]) -> (Option<i32>, String) {
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let bin = tempfile::Builder::new()
        .prefix("pagemesh-exit-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let cli = common::runnable_copy(bin.path(), Path::new(env!("CARGO_BIN_EXE_pagemesh")));
    let child = common::spawn_copied(
        Command::new(&cli)
            .arg("--socket")
            .arg(&d.socket)
            .args(args)
            .uid(65534)
            .gid(65534)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let out = common::finish(child, &[], Duration::from_secs(30), args);
    (out.status.code(), out.stderr)
}

#[test]
fn a_user_cannot_make_the_daemon_open_a_file_for_it_or_change_the_node() {
    let d = Daemon::start_with(&["--socket-mode", "0666"]);
    // A root-only file, which the daemon (root) could open.
    let secret = d.path("secret");
    std::fs::write(&secret, b"root's").unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let spec = format!("file:{}", secret.display());
    // The client opens a backing file itself, as its user: root's file is not its to open.
    let (code, err) = run_as_nobody(&d, &["segment", "create", "s", "--backing", &spec]);
    assert_eq!(code, Some(77), "{err}");
    assert!(err.contains("Permission denied"), "{err}");
    for args in [
        vec!["volume", "add", "v", secret.to_str().unwrap()],
        vec!["partition", "create", "p", "--max", "1M"],
    ] {
        let (code, err) = run_as_nobody(&d, &args);
        assert_eq!(code, Some(77), "{args:?}: {err}");
        assert!(err.contains("root's to do"), "{err}");
    }
    assert!(!d.run(&["segment", "list"]).ok().stdout_str().contains("s "));
    assert!(d.log().contains("uid 65534: refused"), "{}", d.log());
    // What needs no file of root's is served.
    let (code, err) = run_as_nobody(&d, &["segment", "create", "mine", "--size", "1M"]);
    assert_eq!(code, Some(0), "{err}");
}
