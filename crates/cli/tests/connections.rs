//! Bounded connections: an unprivileged user who opens 2,000 idle connections and stalls 50
//! half-sent frames does not stop anyone else from attaching and verifying; its idle ones are
//! closed after the idle timeout, its stalled frames after the frame deadline; a client whose
//! idle connection was closed reconnects by itself.
//!
//! The flood runs as uid 65534 (nobody): this test binary runs itself again, as that user,
//! with only `flood_helper` selected.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Daemon;
use pagemesh_proto::{
    read_frame, write_frame, ErrorCode, Request, Response, MAGIC, PROTOCOL_VERSION,
};

/// Set (to the daemon's socket) when this binary runs as the flooding user.
const FLOOD_ENV: &str = "PAGEMESH_TEST_FLOOD_SOCKET";
const NOBODY: u32 = 65534;
const IDLE: usize = 2000;
const STALLS: usize = 50;

fn hello(sock: &UnixStream) -> Response {
    let h = Request::Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        client: "flood".into(),
    };
    // A refused connection may be closed before the hello is written: its answer is read
    // all the same.
    let _ = write_frame(sock, &h, &[]);
    read_frame::<Response>(sock).expect("hello reply").0
}

/// The flooding user's side: stall `STALLS` frames half-way, then open `IDLE` idle connections;
/// print what it got and hold everything until its stdin closes.
#[test]
#[ignore = "the flooding user's side of flood_from_an_unprivileged_user_locks_nobody_out"]
fn flood_helper() {
    let Ok(socket) = std::env::var(FLOOD_ENV) else {
        return;
    };
    let mut held = Vec::new();
    let mut stalled = 0;
    for _ in 0..STALLS {
        let s = UnixStream::connect(&socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        if matches!(hello(&s), Response::HelloOk { .. }) {
            // A frame announcing 100 bytes, and 10 of them.
            (&s).write_all(&100u32.to_le_bytes()).unwrap();
            (&s).write_all(&[0u8; 10]).unwrap();
            stalled += 1;
        }
        held.push(s);
    }
    let (mut accepted, mut refused) = (0, 0);
    for _ in 0..IDLE {
        let s = UnixStream::connect(&socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        match hello(&s) {
            Response::HelloOk { .. } => accepted += 1,
            Response::Error {
                code: ErrorCode::Busy,
                ..
            } => refused += 1,
            other => panic!("flood: unexpected {other:?}"),
        }
        held.push(s);
    }
    println!("flood: stalled {stalled} accepted {accepted} refused {refused}");
    std::io::stdout().flush().unwrap();
    let _ = std::io::stdin().read_line(&mut String::new());
}

/// The flooding process (killed, by its pid, whatever happens).
struct Flood(Child);

impl Drop for Flood {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn connections(d: &Daemon) -> u64 {
    d.client().status().expect("status").connections
}

fn wait_until(what: &str, bound: Duration, mut ok: impl FnMut() -> bool) {
    let end = Instant::now() + bound;
    while !ok() {
        assert!(
            Instant::now() < end,
            "{what} did not happen within {bound:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn flood_from_an_unprivileged_user_locks_nobody_out() {
    let d = Daemon::start_with(&["--socket-mode", "0666", "--idle-timeout", "3"]);
    // Let other users reach the socket (the test's temp dir is 0700).
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    d.run(&["segment", "create", "s", "--size", "8M"]).ok();
    let bin = tempfile::Builder::new()
        .prefix("pagemesh-flood-")
        .tempdir()
        .unwrap();
    std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let me = common::runnable_copy(bin.path(), &std::env::current_exe().unwrap());
    let cli = common::runnable_copy(bin.path(), Path::new(env!("CARGO_BIN_EXE_pagemesh")));
    let mut child = common::spawn_copied(
        Command::new(&me)
            .args([
                "flood_helper",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(FLOOD_ENV, &d.socket)
            .uid(NOBODY)
            .gid(NOBODY)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    );
    let out = child.stdout.take().unwrap();
    let flood = Flood(child);
    let mut line = String::new();
    let mut lines = BufReader::new(out);
    let start = Instant::now();
    // libtest may print "test flood_helper ... " before it on the same line.
    while !line.contains("flood:") {
        line.clear();
        assert!(
            lines.read_line(&mut line).unwrap() > 0,
            "the flood ended without a count"
        );
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the flood took over a minute"
        );
    }
    let n: Vec<usize> = line
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    let (stalled, accepted, refused) = (n[0], n[1], n[2]);
    eprintln!("{line}");
    assert_eq!(stalled, STALLS);
    assert_eq!(
        stalled + accepted,
        128,
        "nobody holds exactly its per-user limit"
    );
    assert_eq!(refused, IDLE - accepted, "the rest were refused as busy");
    // With all of that held: root attaches and verifies, another user is served.
    let t = Instant::now();
    d.run(&["memtest", "s", "--write", "3"]).ok();
    d.run(&["memtest", "s", "--verify", "3"]).ok();
    eprintln!(
        "root wrote and verified 8 MiB in {:?} during the flood",
        t.elapsed()
    );
    let other = common::spawn_copied(
        Command::new(&cli)
            .args(["--socket"])
            .arg(&d.socket)
            .args(["segment", "list"])
            .uid(NOBODY - 1)
            .gid(NOBODY - 1)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
    let other = common::finish(other, &[], Duration::from_secs(30), &["segment list"]);
    assert!(other.status.success(), "{}", other.stderr);
    assert!(other.stdout_str().contains('s'));
    // The stalled frames end at the frame deadline, the idle connections at the idle timeout.
    wait_until("the stalls closed", Duration::from_secs(30), || {
        d.log().matches("did not end within").count() == STALLS
    });
    wait_until(
        "the idle connections closed",
        Duration::from_secs(30),
        || connections(&d) <= 1,
    );
    drop(flood);
}

#[test]
fn a_client_whose_idle_connection_was_closed_reconnects_by_itself() {
    let d = Daemon::start_with(&["--idle-timeout", "1"]);
    let c = d.client();
    c.create_segment("r", Some(1 << 20), pagemesh_proto::Backing::Zero)
        .expect("create");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(d.log().contains("idle for"), "{}", d.log());
    // The same client, its connection closed under it: the next calls just work.
    let list = c.list_segments().expect("list after the idle close");
    assert!(list.iter().any(|s| s.name == "r"));
    std::thread::sleep(Duration::from_millis(2500));
    c.status().expect("status after a second idle close");
}
