//! The C ABI (crates/capi) used from C and C++ as a user would: `crates/capi/install.sh` puts
//! libpagemesh, pagemesh.h and pagemesh.pc under a prefix, the programs in
//! `crates/capi/tests/c/` and the example of `docs/c-api.md` are compiled with the system's
//! `cc`/`c++` and linked through pkg-config against that install, and run against real daemons.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::OnceLock;
use std::time::Duration;

use common::{finish, Daemon, Out};

/// How long one C program may run.
const RUN_BOUND: Duration = Duration::from_secs(120);

fn capi_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../capi")
}

/// A program's source in `crates/capi/tests/c/`.
fn c_source(name: &str) -> PathBuf {
    capi_dir().join("tests/c").join(name)
}

/// Run `cmd` to its end (bounded), its output going to `log` (a pipe could fill and stall
/// it); the status and what it printed.
fn run_logged(mut cmd: Command, log: &Path, bound: Duration, what: &str) -> (bool, String) {
    let file = std::fs::File::create(log).expect("log file");
    let child = cmd
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("clone log"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("starting {what}: {e}"));
    let out = finish(child, &[], bound, &[what]);
    let text = std::fs::read_to_string(log).unwrap_or_default();
    (out.status.success(), text)
}

/// libpagemesh installed once per test process by `install.sh` (which builds it in release),
/// in a prefix of the process's own: test runners that run each test in a process of its own
/// (nextest) must not install into, or delete, a prefix another test is compiling against.
/// Prefixes of processes that have ended are removed.
fn prefix() -> &'static Path {
    static PREFIX: OnceLock<PathBuf> = OnceLock::new();
    PREFIX.get_or_init(|| {
        let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
        for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix("capi-prefix-")
                .or_else(|| name.strip_prefix("capi-install-")?.strip_suffix(".log"))
                .and_then(|p| p.parse::<u32>().ok());
            if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
                let _ = std::fs::remove_dir_all(e.path());
                let _ = std::fs::remove_file(e.path());
            }
        }
        let p = tmp.join(format!("capi-prefix-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        let mut cmd = Command::new("bash");
        cmd.arg(capi_dir().join("install.sh"))
            .arg("--prefix")
            .arg(&p)
            .env("CARGO", env!("CARGO"));
        // A cold release build of the library and the client library it wraps.
        let bound = Duration::from_secs(1200);
        let log = tmp.join(format!("capi-install-{}.log", std::process::id()));
        let (ok, log) = run_logged(cmd, &log, bound, "install.sh");
        assert!(ok, "crates/capi/install.sh failed:\n{log}");
        p
    })
}

/// `pkg-config ARGS pagemesh` against the test install; `None` when pkg-config is missing.
fn pkg_config(args: &[&str]) -> Option<String> {
    let out = Command::new("pkg-config")
        .args(args)
        .arg("pagemesh")
        .env("PKG_CONFIG_PATH", prefix().join("lib/pkgconfig"))
        .output()
        .ok()?;
    assert!(
        out.status.success(),
        "pkg-config {args:?} pagemesh: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        String::from_utf8(out.stdout)
            .expect("UTF-8")
            .trim()
            .to_string(),
    )
}

/// How to link: against the shared library (found through an rpath), or the static one.
#[derive(Clone, Copy)]
enum Link {
    Shared,
    Static,
}

/// The compiler and linker flags for libpagemesh, from pkg-config (or from the install's
/// layout, with a note, where pkg-config is missing).
fn flags(link: Link) -> Vec<String> {
    let p = prefix();
    let libdir = p.join("lib");
    let static_lib = libdir.join("libpagemesh.a").display().to_string();
    let (cflags, libs) = match (pkg_config(&["--cflags"]), link) {
        (Some(cflags), Link::Shared) => (cflags, pkg_config(&["--libs"]).expect("pkg-config")),
        (Some(cflags), Link::Static) => (
            cflags,
            pkg_config(&["--static", "--libs"]).expect("pkg-config"),
        ),
        (None, _) => {
            eprintln!(
                "pkg-config is missing: linking with -I/-L (install pkg-config to test the .pc)"
            );
            let pc = std::fs::read_to_string(libdir.join("pkgconfig/pagemesh.pc")).expect("pc");
            let private = pc
                .lines()
                .find_map(|l| l.strip_prefix("Libs.private:"))
                .unwrap_or("")
                .to_string();
            let libs = match link {
                Link::Shared => format!("-L{} -lpagemesh", libdir.display()),
                Link::Static => format!("-L{} -lpagemesh {private}", libdir.display()),
            };
            (format!("-I{}", p.join("include").display()), libs)
        }
    };
    let mut out: Vec<String> = cflags.split_whitespace().map(String::from).collect();
    for l in libs.split_whitespace() {
        match (l, link) {
            ("-lpagemesh", Link::Static) => out.push(static_lib.clone()),
            _ => out.push(l.to_string()),
        }
    }
    if let Link::Shared = link {
        out.push(format!("-Wl,-rpath,{}", libdir.display()));
    }
    out
}

/// Compile `src` (C, or C++ for a `.cpp`) into `exe`, warnings as errors.
fn compile(src: &Path, exe: &Path, link: Link) {
    let cxx = src.extension().is_some_and(|e| e == "cpp");
    let mut cmd = Command::new(if cxx { "c++" } else { "cc" });
    cmd.arg(if cxx { "-std=c++11" } else { "-std=c11" })
        .args(["-Wall", "-Wextra", "-Wpedantic", "-Werror", "-O1", "-g"])
        .arg("-I")
        .arg(c_source(""))
        .arg("-o")
        .arg(exe)
        .arg(src)
        .args(flags(link))
        .arg("-lpthread");
    let log = exe.with_extension("cc.log");
    let (ok, text) = run_logged(cmd, &log, Duration::from_secs(120), "cc");
    assert!(ok, "compiling {}:\n{text}", src.display());
}

/// A compiled program started with the test's environment minus `LD_LIBRARY_PATH` (cargo's
/// would find the target dir's libpagemesh before the install's).
fn program(exe: &Path) -> Command {
    let mut cmd = Command::new(exe);
    cmd.env_remove("LD_LIBRARY_PATH")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn run(cmd: &mut Command) -> Out {
    let child = cmd.stdin(Stdio::null()).spawn().expect("start the program");
    finish(child, &[], RUN_BOUND, &["C program"])
}

fn assert_passed(out: &Out, line: &str) {
    assert!(
        out.status.success() && out.stdout_str().contains(line),
        "{}\nstdout: {}\nstderr: {}",
        out.status,
        out.stdout_str(),
        out.stderr
    );
}

#[test]
fn install_places_the_library_the_header_and_the_pc() {
    let p = prefix();
    for f in [
        "lib/libpagemesh.so",
        "lib/libpagemesh.a",
        "include/pagemesh.h",
    ] {
        assert!(
            p.join(f).is_file(),
            "{f} is not installed under {}",
            p.display()
        );
    }
    let header = std::fs::read(p.join("include/pagemesh.h")).expect("installed header");
    let committed = std::fs::read(capi_dir().join("include/pagemesh.h")).expect("header");
    assert!(
        header == committed,
        "the installed header is not the committed one"
    );
    let pc = std::fs::read_to_string(p.join("lib/pkgconfig/pagemesh.pc")).expect("pagemesh.pc");
    assert!(pc.contains(&format!("prefix={}\n", p.display())), "{pc}");
    assert!(
        !pc.contains('@'),
        "a placeholder is left in pagemesh.pc:\n{pc}"
    );
    if let Some(v) = pkg_config(&["--modversion"]) {
        assert_eq!(v, env!("CARGO_PKG_VERSION"));
        let cflags = pkg_config(&["--cflags"]).expect("pkg-config");
        assert_eq!(cflags, format!("-I{}/include", p.display()));
    }
    // Without a prefix: a usage message and exit 2, nothing built.
    let out = Command::new("bash")
        .arg(capi_dir().join("install.sh"))
        .output()
        .expect("run install.sh");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
}

#[test]
fn every_call_from_c_with_its_error_paths() {
    let d = Daemon::start();
    let exe = d.path("api");
    compile(&c_source("api.c"), &exe, Link::Shared);
    let work = d.path("work");
    std::fs::create_dir(&work).expect("work dir");
    let out = run(program(&exe).arg(&d.socket).arg(&work));
    assert_passed(&out, "api: all checks passed");
}

#[test]
fn barriers_and_locks_from_c_on_a_cluster_segment() {
    let port = common::cluster::free_ports(1)[0];
    let listen = format!("127.0.0.1:{port}");
    let d = Daemon::start_with(&["--node-id", "1", "--listen", &listen]);
    let exe = d.path("cluster");
    compile(&c_source("cluster.c"), &exe, Link::Shared);
    let out = run(program(&exe).arg(&d.socket));
    assert_passed(&out, "cluster: all checks passed");
}

/// The first line `child` prints, within `bound`.
fn first_line(child: &mut Child, bound: Duration) -> (String, mpsc::Receiver<String>) {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let line = rx.recv_timeout(bound).unwrap_or_else(|_| {
        let _ = child.kill();
        panic!("the program printed nothing within {bound:?}");
    });
    (line, rx)
}

#[test]
fn daemon_gone_raises_sigbus_in_c_as_in_rust() {
    let mut d = Daemon::start();
    let exe = d.path("gone");
    compile(&c_source("gone.c"), &exe, Link::Shared);
    let mut child = program(&exe)
        .arg(&d.socket)
        .stdin(Stdio::piped())
        .spawn()
        .expect("start gone");
    let (line, rest) = first_line(&mut child, RUN_BOUND);
    assert_eq!(line, "attached");
    d.kill9();
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(b"go\n")
        .expect("tell it to go on");
    let out = finish(child, &[], RUN_BOUND, &["gone"]);
    let printed: Vec<String> = rest.try_iter().collect();
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGBUS),
        "{}: {printed:?} {}",
        out.status,
        out.stderr
    );
    assert_eq!(
        printed,
        ["stat after the daemon died: PAGEMESH_ERR_CONNECT"],
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("lost the daemon"), "{}", out.stderr);
}

/// The example of docs/c-api.md: the C block that starts with `/* counter.c`.
fn documented_example() -> String {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/c-api.md");
    let text = std::fs::read_to_string(&doc).expect("docs/c-api.md");
    let start = text
        .find("```c\n/* counter.c")
        .expect("docs/c-api.md has the counter.c example");
    let body = &text[start + "```c\n".len()..];
    let end = body.find("\n```").expect("the example's block ends");
    format!("{}\n", &body[..end])
}

#[test]
fn the_documented_example_runs_linked_shared_and_static() {
    let d = Daemon::start();
    let src = d.path("counter.c");
    std::fs::write(&src, documented_example()).expect("write counter.c");
    let (shared, fixed) = (d.path("counter"), d.path("counter-static"));
    compile(&src, &shared, Link::Shared);
    compile(&src, &fixed, Link::Static);
    for (n, exe) in [(1, &shared), (2, &fixed), (3, &shared)] {
        let out = run(program(exe).env("PAGEMESH_SOCKET", &d.socket));
        let want = format!("counter = {n} (segment of 4096 bytes)");
        assert_passed(&out, &want);
    }
}

#[test]
fn the_header_serves_cxx() {
    let dir = tempfile::tempdir().expect("tempdir");
    let exe = dir.path().join("cxx");
    compile(&c_source("cxx.cpp"), &exe, Link::Shared);
    let out = run(&mut program(&exe));
    assert_passed(&out, "c++: all checks passed");
}
