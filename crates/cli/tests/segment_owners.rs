//! Segments have owners: the creator's uid and gid and a mode, checked against the caller's
//! `SO_PEERCRED` and groups (README, "Users and permissions"). Real daemons, real users
//! (`setpriv` to uid 65534 and 65533 with no supplementary groups).

mod common;

use common::cluster::Cluster;
use common::{Daemon, Out};

const NOBODY: u32 = 65534;
const OTHER: u32 = 65533;

fn code(out: &Out) -> Option<i32> {
    out.status.code()
}

/// A daemon whose socket every user may reach.
fn open_daemon() -> Daemon {
    Daemon::start_with(&["--socket-mode", "0666"])
}

fn json_of(out: &Out) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn another_users_private_segment_cannot_be_read_written_attached_or_removed() {
    let d = open_daemon();
    d.run(&["segment", "create", "priv", "--size", "64K"]).ok();
    // (`segment sync` of a zero segment writes nothing anywhere: a file segment shows it.)
    d.file_segment("pfile", 64 << 10);
    d.run_stdin(&["segment", "write", "priv"], b"root's secret")
        .ok();
    let list = json_of(&d.run(&["segment", "list", "--json"]).ok());
    for seg in list.as_array().expect("an array") {
        assert_eq!(seg["uid"], 0);
        assert_eq!(seg["mode"], "0600", "the default mode: {list}");
    }
    for args in [
        vec!["segment", "read", "priv", "--len", "13"],
        vec!["segment", "write", "priv"],
        vec!["segment", "sync", "pfile"],
        vec!["segment", "write", "pfile"],
        vec!["segment", "clear-poison", "priv"],
        vec!["segment", "rm", "priv"],
        vec!["segment", "chmod", "priv", "0666"],
        vec!["segment", "chown", "priv", "65534"],
        vec!["memtest", "priv", "--write", "1"],
    ] {
        let out = d.run_as(NOBODY, NOBODY, &args, b"evil");
        assert_eq!(code(&out), Some(77), "{args:?}: {}", out.stderr);
        assert!(
            out.stderr.contains("permission denied") || out.stderr.contains("root's to do"),
            "{args:?}: {}",
            out.stderr
        );
        assert!(!out.stdout_str().contains("secret"), "{args:?}");
    }
    assert!(d.log().contains("uid 65534: refused"), "{}", d.log());
    // Listing is everyone's (as `ls` of a directory), and nothing changed.
    let theirs = d.run_as(NOBODY, NOBODY, &["segment", "list"], b"");
    assert_eq!(code(&theirs), Some(0), "{}", theirs.stderr);
    assert!(
        theirs.stdout_str().contains("rw-------"),
        "{}",
        theirs.stdout_str()
    );
    let read = d.run(&["segment", "read", "priv", "--len", "13"]).ok();
    assert_eq!(read.stdout, b"root's secret");
}

#[test]
fn a_segment_shared_with_a_group_is_read_only_when_the_mode_says_so() {
    let d = open_daemon();
    d.run(&[
        "segment", "create", "shared", "--size", "64K", "--mode", "0640",
    ])
    .ok();
    d.run_stdin(&["segment", "write", "shared"], b"for the group")
        .ok();
    d.run(&["segment", "chown", "shared", ":65534"]).ok();
    // A member of the group reads, and may not write or attach (attaching maps it writable).
    let read = d.run_as(
        NOBODY,
        NOBODY,
        &["segment", "read", "shared", "--len", "13"],
        b"",
    );
    assert_eq!(code(&read), Some(0), "{}", read.stderr);
    assert_eq!(read.stdout, b"for the group");
    for args in [
        vec!["segment", "write", "shared"],
        vec!["memtest", "shared", "--write", "1"],
    ] {
        let out = d.run_as(NOBODY, NOBODY, &args, b"x");
        assert_eq!(code(&out), Some(77), "{args:?}: {}", out.stderr);
    }
    // Someone outside the group reads nothing; the group member may not change the mode.
    let out = d.run_as(OTHER, OTHER, &["segment", "read", "shared"], b"");
    assert_eq!(code(&out), Some(77), "{}", out.stderr);
    let out = d.run_as(NOBODY, NOBODY, &["segment", "chmod", "shared", "0660"], b"");
    assert_eq!(code(&out), Some(77), "{}", out.stderr);
    // Once the owner makes it group-writable, the member writes.
    d.run(&["segment", "chmod", "shared", "0660"]).ok();
    let out = d.run_as(NOBODY, NOBODY, &["segment", "write", "shared"], b"FOR");
    assert_eq!(code(&out), Some(0), "{}", out.stderr);
    let read = d.run(&["segment", "read", "shared", "--len", "13"]).ok();
    assert_eq!(read.stdout, b"FOR the group");
}

#[test]
fn a_user_owns_the_segments_it_creates() {
    let d = open_daemon();
    let out = d.run_as(
        NOBODY,
        NOBODY,
        &["segment", "create", "mine", "--size", "64K"],
        b"",
    );
    assert_eq!(code(&out), Some(0), "{}", out.stderr);
    let list = json_of(&d.run(&["segment", "list", "--json"]).ok());
    assert_eq!(
        (&list[0]["uid"], &list[0]["gid"], &list[0]["mode"]),
        (&NOBODY.into(), &NOBODY.into(), &"0600".into()),
        "{list}"
    );
    let w = d.run_as(NOBODY, NOBODY, &["segment", "write", "mine"], b"its own");
    assert_eq!(code(&w), Some(0), "{}", w.stderr);
    let out = d.run_as(OTHER, OTHER, &["segment", "read", "mine"], b"");
    assert_eq!(code(&out), Some(77), "{}", out.stderr);
    let out = d.run_as(OTHER, OTHER, &["segment", "rm", "mine"], b"");
    assert_eq!(code(&out), Some(77), "{}", out.stderr);
    // Only root gives a segment away; a mode outside the permission bits is refused.
    let out = d.run_as(NOBODY, NOBODY, &["segment", "chown", "mine", "65533"], b"");
    assert_eq!(code(&out), Some(77), "{}", out.stderr);
    let out = d.run_as(NOBODY, NOBODY, &["segment", "chmod", "mine", "4755"], b"");
    assert_eq!(code(&out), Some(64), "{}", out.stderr);
    // Root may do everything, and the owner removes its own.
    assert_eq!(
        d.run(&["segment", "read", "mine", "--len", "7"])
            .ok()
            .stdout,
        b"its own"
    );
    let out = d.run_as(NOBODY, NOBODY, &["segment", "rm", "mine"], b"");
    assert_eq!(code(&out), Some(0), "{}", out.stderr);
}

#[test]
fn owners_and_modes_survive_a_restart() {
    let mut d = open_daemon();
    d.run(&[
        "segment", "create", "kept", "--size", "64K", "--mode", "0604",
    ])
    .ok();
    d.run(&["segment", "chown", "kept", "65533:65533"]).ok();
    d.kill9();
    d.spawn_with(&["--socket-mode", "0666"]);
    let list = json_of(&d.run(&["segment", "list", "--json"]).ok());
    assert_eq!(
        (&list[0]["uid"], &list[0]["gid"], &list[0]["mode"]),
        (&OTHER.into(), &OTHER.into(), &"0604".into()),
        "{list}"
    );
    // Others may read (the last digit), not write.
    let r = d.run_as(
        NOBODY,
        NOBODY,
        &["segment", "read", "kept", "--len", "1"],
        b"",
    );
    assert_eq!(code(&r), Some(0), "{}", r.stderr);
    let w = d.run_as(NOBODY, NOBODY, &["segment", "write", "kept"], b"x");
    assert_eq!(code(&w), Some(77), "{}", w.stderr);
}

#[test]
fn a_cluster_segment_is_owned_by_its_creator_on_every_node() {
    let c = Cluster::start(3, &["--socket-mode", "0666"]);
    // Created by uid 65534 on node 1, homed on node 2.
    let out = c.node(1).run_as(
        NOBODY,
        NOBODY,
        &[
            "segment", "create", "theirs", "--size", "64K", "--home", "2", "--mode", "0600",
        ],
        b"",
    );
    assert_eq!(code(&out), Some(0), "{}", out.stderr);
    for n in 1..=3 {
        c.wait_segment(n, "theirs");
        let list = json_of(&c.node(n).run(&["segment", "list", "--json"]).ok());
        assert_eq!(
            (&list[0]["uid"], &list[0]["mode"]),
            (&NOBODY.into(), &"0600".into()),
            "node {n}: {list}"
        );
    }
    // Exit 75 is "try again" (no lease of the home yet, on a loaded machine).
    let w = retry(|| {
        c.node(3).run_as(
            NOBODY,
            NOBODY,
            &["segment", "write", "theirs"],
            b"from node 3",
        )
    });
    assert_eq!(code(&w), Some(0), "{}", w.stderr);
    // Another user reads or removes it on no node.
    for n in 1..=3 {
        for args in [
            vec!["segment", "read", "theirs"],
            vec!["segment", "rm", "theirs"],
        ] {
            let out = c.node(n).run_as(OTHER, OTHER, &args, b"");
            assert_eq!(code(&out), Some(77), "node {n} {args:?}: {}", out.stderr);
        }
    }
    // Its owner, on node 3 (not the home), opens it to others: the home records the change
    // and every node takes it.
    let out = c
        .node(3)
        .run_as(NOBODY, NOBODY, &["segment", "chmod", "theirs", "0644"], b"");
    assert_eq!(code(&out), Some(0), "{}", out.stderr);
    for n in 1..=3 {
        wait_for(&c, n, "mode", "0644".into());
        let r = c.node(n).run_as(
            OTHER,
            OTHER,
            &["segment", "read", "theirs", "--len", "11"],
            b"",
        );
        assert_eq!(code(&r), Some(0), "node {n}: {}", r.stderr);
        assert_eq!(r.stdout, b"from node 3");
    }
    // Writing stays the owner's; giving it away stays root's, and root does, from node 1.
    let w = c
        .node(1)
        .run_as(OTHER, OTHER, &["segment", "write", "theirs"], b"x");
    assert_eq!(code(&w), Some(77), "{}", w.stderr);
    let out = c.node(1).run_as(
        NOBODY,
        NOBODY,
        &["segment", "chown", "theirs", "65533"],
        b"",
    );
    assert_eq!(code(&out), Some(77), "{}", out.stderr);
    c.node(1).run(&["segment", "chown", "theirs", "65533"]).ok();
    wait_for(&c, 3, "uid", OTHER.into());
    let w = c
        .node(3)
        .run_as(OTHER, OTHER, &["segment", "write", "theirs"], b"F");
    assert_eq!(code(&w), Some(0), "{}", w.stderr);
}

/// Wait (bounded) until node `n` lists the first segment with `field` = `want`.
fn wait_for(c: &Cluster, n: usize, field: &str, want: serde_json::Value) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let list = json_of(&c.node(n).run(&["segment", "list", "--json"]).ok());
        if list[0][field] == want {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "node {n}: {list}");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn a_read_only_attachment_reads_what_writers_write_and_cannot_write() {
    let d = open_daemon();
    d.run(&["segment", "create", "ro", "--size", "64K", "--mode", "0640"])
        .ok();
    let client = d.client();
    let writer = client.attach("ro").expect("attach");
    let reader = client.attach_read_only("ro").expect("attach read-only");
    assert!(reader.is_read_only() && !writer.is_read_only());
    assert_eq!(reader.load_u64(1), 0);
    // The reader maps the segment's own frames: a later write is seen at once.
    writer.atomics_u64()[1].store(42, std::sync::atomic::Ordering::Release);
    assert_eq!(reader.load_u64(1), 42);
    let e = reader
        .write_at(0, b"x")
        .expect_err("a read-only attachment wrote");
    assert!(e.to_string().contains("read-only"), "{e}");
    // A verify attaches read-only: a group member with read permission runs it.
    d.run(&["memtest", "ro", "--write", "7"]).ok();
    d.run(&["segment", "chown", "ro", ":65534"]).ok();
    let out = d.run_as(NOBODY, NOBODY, &["memtest", "ro", "--verify", "7"], b"");
    assert_eq!(code(&out), Some(0), "{}", out.stderr);
    let out = d.run_as(NOBODY, NOBODY, &["memtest", "ro", "--write", "8"], b"");
    assert_eq!(code(&out), Some(77), "{}", out.stderr);
}

#[test]
fn a_read_only_attachment_of_a_file_segment_reads_pages_never_faulted_in() {
    let d = open_daemon();
    let file = d.path("data.img");
    let bytes: Vec<u8> = (0..(256u32 << 10)).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &bytes).expect("the file");
    let spec = format!("file:{}", file.display());
    d.run(&["segment", "create", "f", "--backing", &spec]).ok();
    let m = d.client().attach_read_only("f").expect("attach read-only");
    let mut got = vec![0u8; bytes.len()];
    m.read_at(0, &mut got).expect("read");
    assert!(
        got == bytes,
        "a read-only attachment read other bytes than the file's"
    );
    // They went through the page cache: a read-write attachment sees the same frames.
    let w = d.client().attach("f").expect("attach");
    w.write_at(4096, b"new").expect("write");
    let mut three = [0u8; 3];
    m.read_at(4096, &mut three).expect("read");
    assert_eq!(&three, b"new");
}

/// A user's file segment: its client opens the file with the user's rights and passes it; at
/// restart the daemon reopens it as the segment's owner, never as root.
#[test]
fn a_users_file_segment_is_opened_with_the_users_rights_only() {
    use std::os::unix::fs::PermissionsExt;
    let mut d = open_daemon();
    let home = d.path("home");
    std::fs::create_dir(&home).unwrap();
    std::os::unix::fs::chown(&home, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let file = home.join("mine.img");
    let spec = format!("file:{}", file.display());
    let out = d.run_as(
        NOBODY,
        NOBODY,
        &[
            "segment",
            "create",
            "mine",
            "--backing",
            &spec,
            "--size",
            "64K",
        ],
        b"",
    );
    assert_eq!(code(&out), Some(0), "{}", out.stderr);
    let w = d.run_as(NOBODY, NOBODY, &["segment", "write", "mine"], b"its data");
    assert_eq!(code(&w), Some(0), "{}", w.stderr);
    let s = d.run_as(NOBODY, NOBODY, &["segment", "sync", "mine"], b"");
    assert_eq!(code(&s), Some(0), "{}", s.stderr);
    assert_eq!(&std::fs::read(&file).unwrap()[..8], b"its data");
    // Reopened at restart as uid 65534: still served.
    d.kill9();
    d.spawn_with(&["--socket-mode", "0666"]);
    let r = d.run_as(
        NOBODY,
        NOBODY,
        &["segment", "read", "mine", "--len", "8"],
        b"",
    );
    assert_eq!(
        (code(&r), r.stdout.as_slice()),
        (Some(0), &b"its data"[..]),
        "{}",
        r.stderr
    );
    // The file becomes root's alone: at the next restart the daemon does not open it for the
    // user (it would have, as root), and says why.
    std::os::unix::fs::chown(&file, Some(0), Some(0)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    d.kill9();
    d.spawn_with(&["--socket-mode", "0666"]);
    let list = json_of(&d.run(&["segment", "list", "--json"]).ok());
    assert!(
        list[0]["unavailable"]
            .as_str()
            .is_some_and(|w| w.contains("as its owner, uid 65534")),
        "{list}"
    );
}

/// One user's segments count against a partition of its own with `--user-memory` as its
/// maximum: writing four times that pages the rest out, root's memory is not taken, and
/// every byte reads back. Another partition is root's to give.
#[test]
fn a_user_cannot_take_more_memory_than_its_quota() {
    let d = Daemon::start_with(&[
        "--socket-mode",
        "0666",
        "--memory",
        "64MiB",
        "--user-memory",
        "8MiB",
    ]);
    let out = d.run_as(
        NOBODY,
        NOBODY,
        &["segment", "create", "big", "--size", "32MiB"],
        b"",
    );
    assert_eq!(code(&out), Some(0), "{}", out.stderr);
    let w = d.run_as(NOBODY, NOBODY, &["memtest", "big", "--write", "3"], b"");
    assert_eq!(code(&w), Some(0), "{}", w.stderr);
    let p = json_of(&d.run(&["partition", "stat", "uid-65534", "--json"]).ok());
    let resident = p["resident_bytes"].as_u64().expect("resident_bytes");
    assert!(
        resident <= 8 << 20,
        "uid 65534 holds {resident} bytes resident: {p}"
    );
    assert!(p["page_outs"].as_u64().unwrap_or(0) > 0, "{p}");
    let v = d.run_as(NOBODY, NOBODY, &["memtest", "big", "--verify", "3"], b"");
    assert_eq!(code(&v), Some(0), "{}", v.stderr);
    // Root's own segments are not in that partition.
    d.run(&["segment", "create", "roots", "--size", "16MiB"])
        .ok();
    d.run(&["memtest", "roots", "--write", "4"]).ok();
    let mine = json_of(&d.run(&["partition", "stat", "default", "--json"]).ok());
    assert!(
        mine["resident_bytes"].as_u64().unwrap_or(0) > 8 << 20,
        "{mine}"
    );
    // A user does not choose another partition.
    d.run(&["partition", "create", "gold", "--max", "32MiB"])
        .ok();
    let out = d.run_as(
        NOBODY,
        NOBODY,
        &[
            "segment",
            "create",
            "g",
            "--size",
            "1MiB",
            "--partition",
            "gold",
        ],
        b"",
    );
    assert_eq!(code(&out), Some(77), "{}", out.stderr);
    assert!(out.stderr.contains("uid-65534"), "{}", out.stderr);
}

/// Run `f` again (bounded, 30 s) while it exits 75, "try again".
fn retry(f: impl Fn() -> Out) -> Out {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let out = f();
        if code(&out) != Some(75) || std::time::Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}
