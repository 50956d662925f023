//! Every option and positional argument of every (visible) subcommand has a description in
//! its `--help`: walked recursively through the built binary, so what is checked is what a
//! user sees.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_pagemesh");

fn help(path: &[String]) -> String {
    let out = Command::new(BIN)
        .args(path)
        .arg("--help")
        .env_remove("PAGEMESH_SOCKET")
        .env_remove("PAGEMESH_LOG")
        .output()
        .expect("run pagemesh --help");
    assert!(out.status.success(), "{path:?} --help failed");
    String::from_utf8(out.stdout).expect("help is UTF-8")
}

/// The entries of one section ("Commands:", "Arguments:", "Options:"): for each, the
/// entry's first column and whether it has a description, on its line or (clap's layout when
/// descriptions are long) on the more deeply indented lines under it.
fn section(text: &str, title: &str) -> Vec<(String, bool)> {
    let mut entries: Vec<(String, bool)> = Vec::new();
    let mut inside = false;
    for line in text.lines() {
        if !line.starts_with(' ') {
            inside = line.trim_end() == title;
            continue;
        }
        if !inside {
            continue;
        }
        let body = line.trim();
        let indent = line.len() - line.trim_start().len();
        let is_entry = if title == "Commands:" {
            indent == 2
        } else {
            body.starts_with(['-', '<', '['])
        };
        if !is_entry {
            // A description under the entry before it.
            if let Some(last) = entries.last_mut() {
                last.1 |= described(body);
            }
            continue;
        }
        match body.split_once("  ") {
            Some((head, desc)) => entries.push((head.to_string(), described(desc))),
            None => entries.push((body.to_string(), false)),
        }
    }
    entries
}

/// Whether `text` says something besides what clap adds by itself ("[default: 3]",
/// "[env: X=]", "[possible values: ...]").
fn described(text: &str) -> bool {
    let mut rest = text.trim();
    while let Some(open) = rest.rfind(" [").or(rest.starts_with('[').then_some(0)) {
        if !rest.ends_with(']') {
            break;
        }
        rest = rest[..open].trim_end();
    }
    !rest.is_empty()
}

/// Walk the command tree from `path`, collecting every entry without a description.
fn walk(path: &mut Vec<String>, missing: &mut Vec<String>, seen: &mut usize) {
    let text = help(path);
    *seen += 1;
    for title in ["Arguments:", "Options:"] {
        for (entry, described) in section(&text, title) {
            if !described {
                missing.push(format!("pagemesh {} {entry}", path.join(" ")));
            }
        }
    }
    for (name, described) in section(&text, "Commands:") {
        if name == "help" {
            continue;
        }
        if !described {
            missing.push(format!("pagemesh {} {name} (command)", path.join(" ")));
        }
        path.push(name);
        walk(path, missing, seen);
        path.pop();
    }
}

#[test]
fn every_option_and_argument_has_a_description() {
    let mut missing = Vec::new();
    let mut seen = 0;
    walk(&mut Vec::new(), &mut missing, &mut seen);
    assert!(
        seen > 20,
        "walked only {seen} commands: is the help format parsed?"
    );
    assert!(
        missing.is_empty(),
        "without a description:\n{}",
        missing.join("\n")
    );
}

#[test]
fn the_parser_of_this_test_sees_a_missing_description() {
    let text = "Usage: x\n\nOptions:\n      --json\n      --all  Everything [default: 1]\n      \
                --runs <RUNS>  [default: 3]\n      \
                --size <SIZE>\n          Its size\n      --len <LEN>\n  -h, --help  Print help\n\n\
                Commands:\n  list  List\n  rm\n";
    let got = section(text, "Options:");
    let want = [
        ("--json", false),
        ("--all", true),
        ("--runs <RUNS>", false),
        ("--size <SIZE>", true),
        ("--len <LEN>", false),
        ("-h, --help", true),
    ];
    let want: Vec<(String, bool)> = want.iter().map(|(e, d)| (e.to_string(), *d)).collect();
    assert_eq!(got, want);
    let got = section(text, "Commands:");
    assert_eq!(
        got,
        vec![("list".to_string(), true), ("rm".to_string(), false)]
    );
}

/// `demo` and `bench` start daemons of their own: their help (and their subcommands') does not
/// list the global `--socket`, which every client command lists; they still accept it (a
/// script may pass it, or set PAGEMESH_SOCKET, for every command).
#[test]
fn socket_is_listed_only_where_it_is_used() {
    let path = |p: &[&str]| p.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    for cmd in [
        &["demo"][..],
        &["bench"],
        &["bench", "scan"],
        &["bench", "all"],
    ] {
        let text = help(&path(cmd));
        assert!(
            !text.contains("--socket"),
            "{cmd:?} lists --socket:\n{text}"
        );
    }
    for cmd in [
        &["segment", "list"][..],
        &["status"],
        &["daemon"],
        &["memtest"],
    ] {
        let text = help(&path(cmd));
        assert!(text.contains("--socket <SOCKET>"), "{cmd:?}:\n{text}");
    }
    for args in [
        &["demo", "--socket", "/nonexistent.sock", "--help"][..],
        &["bench", "scan", "--socket", "/nonexistent.sock", "--help"],
        &["--socket", "/nonexistent.sock", "demo", "--help"],
    ] {
        let out = Command::new(BIN).args(args).output().expect("run pagemesh");
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Options whose default comes from elsewhere (the cluster config) still show it, and `--peer`
/// says it takes host names.
#[test]
fn daemon_help_shows_the_cluster_defaults() {
    let text = help(&["daemon".to_string()]);
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    for want in [
        "--dead-after-ms <DEAD_AFTER_MS> A peer silent for this long is declared dead",
        "[default: 5000]",
        "[default: 30000]",
        "--peer <ID=HOST:PORT>",
    ] {
        assert!(joined.contains(want), "no {want:?} in:\n{text}");
    }
    assert!(!joined.contains("not a host name"), "{text}");
}
