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
