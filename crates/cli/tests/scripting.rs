//! What a script can rely on from the `pagemesh` command: an unknown value is an error that
//! names the accepted ones, a reader that stops reading ends the output quietly (exit 0),
//! an invalid or empty change is refused rather than stored differently or ignored, a
//! command does not claim work it did not do, and messages name things plainly.

mod common;

use std::io::Read;
use std::time::Duration;

use common::{finish, stat_json, Daemon};

fn json_of(out: &common::Out) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).expect("--json prints JSON")
}

#[test]
fn an_unknown_log_level_is_an_error_naming_the_levels() {
    let d = Daemon::unstarted();
    for bad in [["--log-level", "bogus"], ["--log-level", "verbose"]] {
        let out = d.refused_start(&bad);
        assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
        assert!(
            out.stderr.contains(bad[1]) && out.stderr.contains("error, warn, info, debug, trace"),
            "{}",
            out.stderr
        );
    }
    assert!(!d.socket.exists(), "the daemon started anyway");
}

#[test]
fn a_reader_that_stops_reading_ends_the_output_quietly() {
    let d = Daemon::start();
    d.run(&["segment", "create", "big", "--size", "256MiB"])
        .ok();
    // `segment read big | head -c 4096`: the reader takes one page and goes away.
    let mut read = d.spawn_cmd(&["segment", "read", "big"], false);
    let mut out = read.stdout.take().expect("stdout");
    let mut page = vec![0u8; 4096];
    out.read_exact(&mut page).expect("first page");
    assert!(page.iter().all(|&b| b == 0));
    drop(out);
    let done = finish(read, &[], Duration::from_secs(60), &["segment read"]);
    assert!(done.status.success(), "{}: {}", done.status, done.stderr);
    assert_eq!(done.stderr, "", "nothing on stderr");
    // Line output too: stdout closed before (or while) the command prints.
    for args in [
        &["segment", "list"][..],
        &["segment", "stat", "big"],
        &["status"],
    ] {
        let mut c = d.spawn_cmd(args, false);
        drop(c.stdout.take());
        let done = finish(c, &[], Duration::from_secs(60), args);
        assert!(done.status.success(), "{args:?}: {}", done.stderr);
        assert_eq!(done.stderr, "", "{args:?}");
    }
}

/// `pagemesh ARGS | READER` through bash with `pipefail` (so the status is pagemesh's unless
/// the reader failed): a real pipe to a real reader that exits early. Bounded; stdout is
/// the reader's output, stderr both's.
fn piped(d: &Daemon, args: &str, reader: &str, timeout: Duration) -> common::Out {
    let child = std::process::Command::new("bash")
        .arg("-o")
        .arg("pipefail")
        .arg("-c")
        .arg(format!("\"$PM\" --socket \"$SOCK\" {args} | {reader}"))
        .env("PM", common::BIN)
        .env("SOCK", &d.socket)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn bash");
    finish(child, &[], timeout, &[args, reader])
}

#[test]
fn a_shell_pipeline_into_head_ends_quietly() {
    let d = Daemon::start();
    d.run(&["segment", "create", "big", "--size", "256MiB"])
        .ok();
    d.run_stdin(&["segment", "write", "big"], b"0123456789abcdef")
        .ok();
    // The issue's own command: head takes 10 bytes of 256 MiB and exits.
    let out = piped(
        &d,
        "segment read big",
        "head -c 10",
        Duration::from_secs(60),
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert_eq!(out.stderr, "", "nothing on stderr");
    assert_eq!(out.stdout, b"0123456789");

    // A line a millisecond for 20 s, and a reader that wants one: over as soon as the next
    // line finds the pipe closed, not when the 20 s are up.
    d.run(&["segment", "create", "w", "--size", "4KiB"]).ok();
    let t = std::time::Instant::now();
    let out = piped(
        &d,
        "memtest w --watch-ms 20000",
        "head -n 1",
        Duration::from_secs(15),
    );
    assert_eq!(out.status.code(), Some(0), "{}", out.stderr);
    assert_eq!(out.stderr, "", "nothing on stderr");
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    let line = out.stdout_str();
    assert_eq!(line.lines().count(), 1, "{line}");
    assert_eq!(
        line.split_whitespace().count(),
        3,
        "START_NS END_NS VALUE: {line}"
    );
}

#[test]
fn a_limit_stored_otherwise_than_asked_is_said_on_stderr() {
    let d = Daemon::start_with(&["--memory", "64MiB"]);
    let status = json_of(&d.run(&["status", "--json"]).ok());
    let budget = status["memory_budget_bytes"].as_u64().expect("budget");
    let out = d
        .run(&["partition", "create", "p", "--max", "1GiB", "--json"])
        .ok();
    let said = format!(
        "partition p: --max 1GiB stored as {} (the pool's budget)",
        pagemesh_types::ByteSize(budget)
    );
    assert!(out.stderr.contains(&said), "{}", out.stderr);
    assert_eq!(json_of(&out)["max_bytes"], budget, "stdout stays the JSON");
    let out = d.run(&["partition", "set", "p", "--min", "5000"]).ok();
    assert!(
        out.stderr
            .contains("--min 4.9KiB (5000 bytes) stored as 4KiB (limits are whole pages)"),
        "{}",
        out.stderr
    );
    let out = d.run(&["partition", "set", "p", "--max", "32MiB"]).ok();
    assert_eq!(out.stderr, "", "stored as asked: nothing to say");
}

#[test]
fn partition_changes_are_refused_rather_than_altered_or_ignored() {
    let d = Daemon::start_with(&["--memory", "64MiB"]);
    let out = d.run(&["partition", "create", "gold", "--weight", "0"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(
        out.stderr.contains("--weight must be at least 1"),
        "{}",
        out.stderr
    );
    let list = json_of(&d.run(&["partition", "list", "--json"]).ok());
    assert!(
        list.as_array().unwrap().iter().all(|p| p["name"] != "gold"),
        "a refused partition was stored: {list}"
    );

    let made = d
        .run(&["partition", "create", "gold", "--weight", "2", "--json"])
        .ok();
    assert_eq!(json_of(&made)["weight"], 2);
    let out = d.run(&["partition", "set", "gold"]);
    assert_eq!(out.status.code(), Some(64));
    assert!(out.stderr.contains("nothing to change"), "{}", out.stderr);
    let out = d.run(&["partition", "set", "gold", "--weight", "0"]);
    assert_eq!(out.status.code(), Some(64), "{}", out.stderr);
    let set = d
        .run(&["partition", "set", "gold", "--weight", "3", "--json"])
        .ok();
    assert_eq!(json_of(&set)["weight"], 3);
}

#[test]
fn sync_of_a_zero_segment_says_there_is_no_file_to_sync() {
    let d = Daemon::start();
    d.run(&["segment", "create", "z", "--size", "1MiB"]).ok();
    d.run_stdin(&["segment", "write", "z"], &[7u8; 64 << 10])
        .ok();
    let dirty = stat_json(&d, "z")["dirty_pages"].as_u64().unwrap();
    let text = d.run(&["segment", "sync", "z"]).ok().stdout_str();
    assert!(text.contains("no backing file to sync"), "{text}");
    assert!(text.contains(&format!("{dirty} dirty page(s)")), "{text}");
    assert!(!text.contains("fsynced"), "{text}");
    let v = json_of(&d.run(&["segment", "sync", "z", "--json"]).ok());
    assert_eq!(v["synced"], false, "{v}");
    assert_eq!(v["backing"], "zero", "{v}");
    assert_eq!(v["pages_written"], 0, "{v}");
    assert_eq!(v["dirty_pages"], dirty, "{v}");

    let file = d.path("f.raw");
    std::fs::write(&file, vec![0u8; 1 << 20]).unwrap();
    let backing = format!("file:{}", file.display());
    d.run(&["segment", "create", "f", "--backing", &backing])
        .ok();
    d.run_stdin(&["segment", "write", "f"], &[9u8; 8192]).ok();
    let v = json_of(&d.run(&["segment", "sync", "f", "--json"]).ok());
    assert_eq!(v["synced"], true, "{v}");
    assert_eq!(v["pages_written"], 2, "{v}");
    // Sizes are human, in the log too: the file segment has the file's size, not "0B".
    assert!(
        d.log().contains("created segment f: 1MiB backed by file:"),
        "{}",
        d.log()
    );
}

#[test]
fn sizes_print_in_the_largest_unit_they_reach() {
    let d = Daemon::start_with(&["--memory", "64MiB", "--paging-device-size", "256MiB"]);
    d.run(&["segment", "create", "odd", "--size", "65540KiB"])
        .ok();
    let list = d.run(&["segment", "list"]).ok().stdout_str();
    assert!(list.contains("64.0MiB"), "{list}");
    let stat = d.run(&["segment", "stat", "odd"]).ok().stdout_str();
    assert!(stat.contains("fault service  no faults"), "{stat}");
    let status = d.run(&["status"]).ok().stdout_str();
    assert!(
        status.contains("(0B of 256MiB used: 0 of 65536 page slots)"),
        "{status}"
    );
}

#[test]
fn messages_name_segments_plainly() {
    let d = Daemon::start();
    let img = d.path("base.img");
    std::fs::write(&img, vec![1u8; 1 << 20]).unwrap();
    d.run(&["volume", "add", "base", img.to_str().unwrap()])
        .ok();
    for vm in ["vm1", "vm2"] {
        d.run(&["segment", "create", vm, "--backing", "volume:base"])
            .ok();
    }
    let out = d.run(&["volume", "rm", "base"]);
    assert_eq!(out.status.code(), Some(73));
    assert!(
        out.stderr.contains("segment(s) vm1, vm2;") || out.stderr.contains("segment(s) vm2, vm1;"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("[\""), "{}", out.stderr);
}

/// Every segment command that changes something says what it did in JSON with `--json`.
#[test]
fn segment_commands_that_change_something_answer_in_json() {
    let d = Daemon::start();
    let made = json_of(
        &d.run(&[
            "segment", "create", "j", "--size", "64KiB", "--mode", "0640", "--json",
        ])
        .ok(),
    );
    assert_eq!(
        (&made["name"], &made["size_bytes"], &made["mode"]),
        (&"j".into(), &65536.into(), &"0640".into())
    );
    let m = json_of(&d.run(&["segment", "chmod", "j", "0600", "--json"]).ok());
    assert_eq!(m["mode"], "0600");
    let o = json_of(&d.run(&["segment", "chown", "j", "7:8", "--json"]).ok());
    assert_eq!((&o["uid"], &o["gid"]), (&7.into(), &8.into()));
    let p = json_of(
        &d.run(&["segment", "pin", "j", "--len", "8KiB", "--json"])
            .ok(),
    );
    assert_eq!((&p["pages_pinned"], &p["len"]), (&2.into(), &8192.into()));
    let u = json_of(&d.run(&["segment", "unpin", "j", "--json"]).ok());
    assert_eq!(u["pages_unpinned"], 2);
    let c = json_of(&d.run(&["segment", "clear-poison", "j", "--json"]).ok());
    assert_eq!(c["pages_cleared"], 0);
    let r = json_of(&d.run(&["segment", "rm", "j", "--json"]).ok());
    assert_eq!((&r["segment"], &r["removed"]), (&"j".into(), &true.into()));
}
