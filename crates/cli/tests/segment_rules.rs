//! The catalog's rules for segments: a segment whose backing vanished is listed unavailable,
//! keeps its name and can be removed; one file backs one segment; a request carries at most
//! `MAX_IO_CHUNK_BYTES`; a client's memfd cannot be grown or shrunk under the daemon.

mod common;

use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::Daemon;
use pagemesh_proto::{
    read_frame, write_frame, ErrorCode, Request, Response, MAGIC, MAX_IO_CHUNK_BYTES,
    PROTOCOL_VERSION,
};

/// A connection that said hello.
fn raw(d: &Daemon) -> UnixStream {
    let s = UnixStream::connect(&d.socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let h = Request::Hello {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        client: "segment rules test".into(),
    };
    write_frame(&s, &h, &[]).unwrap();
    assert!(matches!(
        read_frame::<Response>(&s).unwrap().0,
        Response::HelloOk { .. }
    ));
    s
}

#[test]
fn a_segment_whose_file_vanished_is_listed_unavailable_keeps_its_name_and_can_be_removed() {
    let mut d = Daemon::start();
    let file = d.file_segment("gone", 1 << 20);
    d.run(&["segment", "create", "kept", "--size", "1M"]).ok();
    d.kill9();
    std::fs::remove_file(&file).unwrap();
    d.spawn();
    let list = d.run(&["segment", "list"]).ok().stdout_str();
    assert!(
        list.lines()
            .any(|l| l.starts_with("gone ") && l.contains("UNAVAILABLE")),
        "{list}"
    );
    let json = d.run(&["segment", "list", "--json"]).ok().stdout_str();
    assert!(json.contains("\"unavailable\""), "{json}");
    // Its name stays taken, and saying why.
    let again = d.run(&["segment", "create", "gone", "--size", "1M"]);
    assert!(!again.status.success());
    assert!(again.stderr.contains("unavailable"), "{}", again.stderr);
    let stat = d.run(&["segment", "stat", "gone"]);
    assert!(stat.stderr.contains("is unavailable"), "{}", stat.stderr);
    // Removed: forgotten, the name free again, once in the catalog after a restart.
    d.run(&["segment", "rm", "gone"]).ok();
    assert!(!d
        .run(&["segment", "list"])
        .ok()
        .stdout_str()
        .contains("gone"));
    d.run(&["segment", "create", "gone", "--size", "1M"]).ok();
    d.kill9();
    d.spawn();
    let list = d.run(&["segment", "list"]).ok().stdout_str();
    assert_eq!(list.matches("gone ").count(), 1, "{list}");
    assert!(!list.contains("UNAVAILABLE"), "{list}");
    assert!(list.contains("kept"), "{list}");
}

#[test]
fn one_file_backs_one_segment_whatever_it_is_called() {
    let d = Daemon::start();
    let file = d.file_segment("first", 1 << 20);
    let spec = format!("file:{}", file.display());
    let second = d.run(&["segment", "create", "second", "--backing", &spec]);
    assert!(!second.status.success());
    assert!(
        second.stderr.contains("already backs segment first"),
        "{}",
        second.stderr
    );
    // The same file by another name (a hard link) is the same file.
    let link = d.path("link.img");
    std::fs::hard_link(&file, &link).unwrap();
    let spec = format!("file:{}", link.display());
    let third = d.run(&["segment", "create", "third", "--backing", &spec]);
    assert!(
        third.stderr.contains("already backs segment first"),
        "{}",
        third.stderr
    );
}

#[test]
fn a_write_request_over_the_chunk_limit_is_refused() {
    let d = Daemon::start();
    d.run(&["segment", "create", "w", "--size", "16M"]).ok();
    let s = raw(&d);
    let big = Request::WriteAt {
        name: "w".into(),
        offset: 0,
        data: vec![7u8; MAX_IO_CHUNK_BYTES as usize + 4096],
    };
    write_frame(&s, &big, &[]).unwrap();
    match read_frame::<Response>(&s).unwrap().0 {
        Response::Error {
            code: ErrorCode::InvalidArgument,
            message,
        } => assert!(message.contains("per request"), "{message}"),
        other => panic!("{other:?}"),
    }
    // Nothing of it was written.
    let stat = common::stat_json(&d, "w");
    assert_eq!(stat["resident_pages"], 0, "{stat}");
}

#[test]
fn a_client_cannot_grow_or_shrink_the_memfd_it_is_given() {
    let d = Daemon::start();
    d.run(&["segment", "create", "m", "--size", "1M"]).ok();
    let s = raw(&d);
    write_frame(
        &s,
        &Request::Attach {
            name: "m".into(),
            read_only: false,
        },
        &[],
    )
    .unwrap();
    let (r, mut fds) = read_frame::<Response>(&s).unwrap();
    assert!(matches!(r, Response::Attached { .. }), "{r:?}");
    let file = std::fs::File::from(fds.remove(0));
    assert!(file.set_len(4096).is_err(), "shrinking was allowed");
    assert!(file.set_len(1 << 30).is_err(), "growing was allowed");
    assert_eq!(file.metadata().unwrap().len(), 1 << 20);
}
