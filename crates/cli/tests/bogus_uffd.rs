//! A client's bad uffd is the client's problem, never the node's: a uffd that cannot serve the
//! mapping it is sent for is refused at attach, and a client whose uffd stops serving (it
//! unregistered its range) loses its attachment while the node and every other process go on.
//! These clients speak the socket protocol themselves, as a buggy or hostile one would.

mod common;

use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::cluster::Cluster;
use common::{pattern_word, stat_json, Daemon};
use pagemesh_proto::{read_frame, write_frame, Request, Response, MAGIC, PROTOCOL_VERSION};
use pagemesh_uffd::{features, Memfd, RegisterMode, SharedMapping, Uffd};

const PAGE: u64 = 4096;

/// A connection that said hello and attached `name`: the lease socket, the attachment id, the
/// segment's memfd mapped shared, and its length.
fn raw_attach(socket: &Path, name: &str) -> (UnixStream, u64, SharedMapping, u64) {
    let sock = UnixStream::connect(socket).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let hello = Request::Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        client: "bogus-uffd test".into(),
    };
    write_frame(&sock, &hello, &[]).expect("hello");
    let (r, _) = read_frame::<Response>(&sock).expect("hello reply");
    assert!(matches!(r, Response::HelloOk { .. }), "{r:?}");
    write_frame(
        &sock,
        &Request::Attach {
            name: name.into(),
            read_only: false,
        },
        &[],
    )
    .expect("attach");
    let (r, mut fds) = read_frame::<Response>(&sock).expect("attach reply");
    let (info, attach_id) = match r {
        Response::Attached {
            info, attach_id, ..
        } => (info, attach_id),
        other => panic!("attach: {other:?}"),
    };
    // The memfd first; for a segment homed elsewhere the node's lease board follows.
    assert!(!fds.is_empty(), "no memfd with the attach reply");
    let memfd = Memfd::from_owned(fds.remove(0));
    let len = info.size_bytes.div_ceil(PAGE) * PAGE;
    let map = SharedMapping::map(memfd.as_fd(), len as usize).expect("map the memfd");
    (sock, attach_id, map, len)
}

/// Send `uffd` as the one serving `[base, base+len)`; the daemon's answer.
fn register(sock: &UnixStream, attach_id: u64, base: u64, len: u64, uffd: &OwnedFd) -> Response {
    let req = Request::RegisterUffd {
        attach_id,
        base,
        len,
    };
    write_frame(sock, &req, &[uffd.as_fd()]).expect("register");
    read_frame::<Response>(sock).expect("register reply").0
}

/// A client that attaches `name` properly (its uffd registered over the mapping and accepted)
/// and then unregisters its range behind the daemon's back; its lease and mapping.
fn attach_then_unregister(socket: &Path, name: &str) -> (UnixStream, SharedMapping) {
    let (sock, id, map, len) = raw_attach(socket, name);
    let (uffd, _) = Uffd::open(features::PAGEMESH).expect("uffd");
    let modes = RegisterMode::MISSING
        .union(RegisterMode::MINOR)
        .union(RegisterMode::WP);
    uffd.register_mapping(&map, modes).expect("register");
    let fd: OwnedFd = uffd.as_fd().try_clone_to_owned().unwrap();
    let r = register(&sock, id, map.addr(), len, &fd);
    assert!(matches!(r, Response::Registered), "{r:?}");
    uffd.unregister(map.addr(), len).expect("unregister");
    (sock, map)
}

/// A userfaultfd that never did its `UFFDIO_API` handshake.
fn uffd_without_api() -> OwnedFd {
    // SAFETY: the userfaultfd syscall takes flags and returns a new fd or -1; nothing else.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert!(fd >= 0, "userfaultfd: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just returned by the kernel and is owned by nothing else.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

fn refused(r: &Response, what: &str) {
    match r {
        Response::Error { message, .. } => {
            assert!(
                message.contains("cannot serve the mapping"),
                "{what}: {message}"
            )
        }
        other => panic!("{what}: accepted ({other:?})"),
    }
}

/// The node serves a normal client afterwards, through real faults, and is still running.
fn node_goes_on(d: &mut Daemon, seg: &str) {
    d.run(&["memtest", seg, "--write", "4", "--len", "4MiB"])
        .ok();
    d.run(&["memtest", seg, "--verify", "4", "--len", "4MiB"])
        .ok();
    assert!(
        d.wait_exit(Duration::from_millis(10)).is_none(),
        "the daemon exited: {}",
        d.log()
    );
}

fn refuses_bogus_uffds(d: &Daemon, seg: &str) {
    // 1. A uffd that never did UFFDIO_API, sent for the real mapping.
    let (sock, id, map, len) = raw_attach(&d.socket, seg);
    refused(
        &register(&sock, id, map.addr(), len, &uffd_without_api()),
        "no API handshake",
    );
    // 2. A proper uffd, registered over the real mapping, but sent for base 0.
    let (sock, id, map, len) = raw_attach(&d.socket, seg);
    let (uffd, _) = Uffd::open(features::PAGEMESH).expect("uffd");
    uffd.register_mapping(
        &map,
        RegisterMode::MISSING
            .union(RegisterMode::MINOR)
            .union(RegisterMode::WP),
    )
    .expect("register");
    let fd: OwnedFd = uffd.as_fd().try_clone_to_owned().unwrap();
    refused(&register(&sock, id, 0, len, &fd), "base 0");
    drop((sock, map));
    // 3. A proper uffd sent for an address where the process has an anonymous mapping, not
    // the segment's memfd (a private anonymous range cannot take MINOR faults). A refusal
    // ends its connection: each case attaches anew.
    let (sock, id, map, len) = raw_attach(&d.socket, seg);
    let other = SharedMapping::anonymous(len as usize).expect("anonymous");
    refused(
        &register(&sock, id, other.addr(), len, &fd),
        "not the memfd",
    );
    drop((sock, map));
}

#[test]
fn a_uffd_that_cannot_serve_the_mapping_is_refused_and_the_node_goes_on() {
    let mut d = Daemon::start();
    d.run(&["segment", "create", "s", "--size", "16MiB"]).ok();
    refuses_bogus_uffds(&d, "s");
    node_goes_on(&mut d, "s");
    assert!(d.log().contains("refused its uffd"), "{}", d.log());
}

/// The same on a cluster node (a cluster of one: its segments are served by the cluster
/// engine, where a failed write-protect used to stop the node).
#[test]
fn a_cluster_node_refuses_a_bogus_uffd_and_goes_on() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let listen = format!("127.0.0.1:{port}");
    let mut d = Daemon::start_with(&["--node-id", "1", "--listen", &listen]);
    d.run(&["segment", "create", "c", "--size", "16MiB"]).ok();
    refuses_bogus_uffds(&d, "c");
    node_goes_on(&mut d, "c");
}

/// A client that unregisters its range after attaching (its writes would no longer fault):
/// the sync that cannot write-protect it closes its attachment instead of failing, another
/// client's writes reach the file, and the node goes on.
#[test]
fn a_client_whose_uffd_stops_serving_loses_its_attachment_not_the_node() {
    let mut d = Daemon::start();
    let file = d.file_segment("f", 16 << 20);
    let (sock, _map) = attach_then_unregister(&d.socket, "f");

    let client = d.client();
    let m = client.attach("f").expect("attach");
    let words = m.atomics_u64();
    for p in [0u64, 7, 300, 4000] {
        let w = (p * PAGE / 8) as usize;
        words[w].store(pattern_word(8, p), Ordering::Relaxed);
    }
    let out = d.run(&["segment", "sync", "f"]).ok();
    assert!(
        out.stdout_str().contains("dirty page"),
        "{}",
        out.stdout_str()
    );
    assert_eq!(stat_json(&d, "f")["dirty_pages"], 0);
    // The unregistered client's lease is closed: its socket reads end-of-file.
    let mut buf = [0u8; 1];
    let got = std::io::Read::read(&mut &sock, &mut buf);
    assert!(matches!(got, Ok(0) | Err(_)), "lease still open: {got:?}");
    assert!(d.log().contains("no longer has pages"), "{}", d.log());
    let f = std::fs::File::open(&file).expect("open the file");
    for p in [0u64, 7, 300, 4000] {
        let mut b = [0u8; 8];
        std::os::unix::fs::FileExt::read_exact_at(&f, &mut b, p * PAGE).unwrap();
        assert_eq!(u64::from_le_bytes(b), pattern_word(8, p), "page {p}");
    }
    drop(m);
    node_goes_on(&mut d, "f");
}

/// A revoked client that writes into a page the daemon had evicted (its range no longer
/// registered, the kernel puts a fresh page into the shared page cache for it): another
/// client's next access to that page gets the page's real data, never the stray page.
#[test]
fn a_stray_page_written_past_the_daemon_is_never_adopted() {
    let mut d = Daemon::start_with(&["--memory", "64MiB"]);
    d.file_segment("g", 256 << 20);
    let (sock, map) = attach_then_unregister(&d.socket, "g");
    // Four times the budget through a good client: early pages are evicted (written back and
    // punched), and the unregistered client is revoked on the first eviction.
    d.run(&["memtest", "g", "--write", "6"]).ok();
    assert!(stat_json(&d, "g")["evictions"].as_u64().unwrap_or(0) > 0);
    // The revoked client writes into page 1 (evicted: a hole in the page cache), past the
    // daemon.
    let words = map.atomics_u64();
    words[(PAGE / 8) as usize].store(0xdead_beef, Ordering::Relaxed);
    // A good client reads the pattern there, from the file.
    d.run(&["memtest", "g", "--verify", "6", "--len", "1MiB"])
        .ok();
    assert!(d.log().contains("a page nobody installed"), "{}", d.log());
    drop((sock, map));
    node_goes_on(&mut d, "g");
}

/// On a cluster node: a process that unregisters its range after attaching loses its
/// attachment when the node must write-protect a page for another node's read (it used to be
/// skipped as if gone, or, for other errors, to stop the node); the other node reads the data
/// and both nodes go on.
#[test]
fn a_cluster_node_revokes_a_client_whose_uffd_stops_serving() {
    let c = Cluster::start(2, &[]);
    c.create(1, "c", &["--size", "16MiB", "--home", "1"]);
    let n1 = c.node(1);
    let (sock, map) = attach_then_unregister(&n1.socket, "c");
    // Node 1 writes (its pages Modified here), node 2 reads them: node 1 write-protects them
    // in every process attached to it, the unregistered one included.
    n1.run(&["memtest", "c", "--write", "9", "--len", "1MiB"])
        .ok();
    c.node(2)
        .run(&["memtest", "c", "--verify", "9", "--len", "1MiB"])
        .ok();
    assert!(
        n1.log().contains("no longer has it registered"),
        "{}\n{}",
        n1.log(),
        c.status(1)
    );
    drop((sock, map));
    // Both nodes go on: node 1 takes the pages back and verifies them.
    n1.run(&["memtest", "c", "--write", "10", "--len", "1MiB"])
        .ok();
    c.node(2)
        .run(&["memtest", "c", "--verify", "10", "--len", "1MiB"])
        .ok();
}
