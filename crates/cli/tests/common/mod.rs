//! Test harness: a real daemon process in a temp dir, killed (by its pid) and cleaned up on drop,
//! and bounded runs of the `pagemesh` command.

#![allow(dead_code)]

pub mod cluster;
pub mod firecracker;
pub mod netns;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_pagemesh");

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub socket: PathBuf,
    pub data_dir: PathBuf,
    child: Option<Child>,
    /// A command the daemon runs under (e.g. `ip netns exec NS`); it must exec the daemon, so
    /// the child's pid is the daemon's.
    pub wrapper: Vec<String>,
}

impl Daemon {
    pub fn start() -> Daemon {
        Daemon::start_with(&[])
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A zero-filled (sparse) file of `size` bytes in the temp dir and a segment `name` on it;
    /// the file's path.
    pub fn file_segment(&self, name: &str, size: u64) -> PathBuf {
        let file = self.path(&format!("{name}.img"));
        std::fs::File::create(&file)
            .and_then(|f| f.set_len(size))
            .expect("create the file");
        let spec = format!("file:{}", file.display());
        self.run(&["segment", "create", name, "--backing", &spec])
            .ok();
        file
    }

    /// Start (or restart) the daemon process and wait (bounded) until it answers.
    pub fn spawn(&mut self) {
        self.spawn_with(&[]);
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// SIGKILL the daemon (a process this test started) and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Wait (bounded) for the daemon process to end by itself; its exit status, or None if
    /// it is still running at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let c = self.child.as_mut()?;
            if let Some(st) = c.try_wait().expect("try_wait") {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// The daemon's exit status if it ended by itself (reaped), without waiting.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        let st = self.child.as_mut()?.try_wait().expect("try_wait")?;
        self.child = None;
        Some(st)
    }

    /// Whether the daemon process is running (or stopped): started and not reaped.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Send `sig` (SIGSTOP, SIGCONT) to the daemon, a process this test started.
    pub fn signal(&self, sig: libc::c_int) {
        let pid = self.pid() as libc::pid_t;
        // SAFETY: kill(2) with the pid of our own unreaped child; no memory is involved.
        let r = unsafe { libc::kill(pid, sig) };
        assert_eq!(
            r,
            0,
            "kill({pid}, {sig}): {}",
            std::io::Error::last_os_error()
        );
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    pub fn client(&self) -> pagemesh::Client {
        pagemesh::Client::connect(&self.socket).expect("connect")
    }

    /// Run `pagemesh --socket S args...` to completion (bounded).
    pub fn run(&self, args: &[&str]) -> Out {
        self.run_stdin(args, &[])
    }

    pub fn run_stdin(&self, args: &[&str], stdin: &[u8]) -> Out {
        let child = self.spawn_cmd(args, true);
        finish(child, stdin, Duration::from_secs(120), args)
    }

    /// Start `pagemesh --socket S args...` without waiting.
    pub fn spawn_cmd(&self, args: &[&str], piped_stdin: bool) -> Child {
        Command::new(BIN)
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .stdin(if piped_stdin {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn pagemesh")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub struct Out {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Out {
    /// The command died of SIGBUS (exit 128 + SIGBUS, as memtest reports it) at `offset` of
    /// the segment, and said so.
    pub fn assert_sigbus_at(&self, offset: u64) {
        assert_eq!(
            self.status.code(),
            Some(128 + libc::SIGBUS),
            "{} {}",
            self.stdout_str(),
            self.stderr
        );
        assert!(
            self.stderr
                .contains(&format!("SIGBUS at segment offset {offset:#x}")),
            "{}",
            self.stderr
        );
    }

    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    pub fn ok(self) -> Out {
        assert!(
            self.status.success(),
            "command failed ({}): {}{}",
            self.status,
            self.stdout_str(),
            self.stderr
        );
        self
    }
}

/// Wait for a child with a bound; kill it (we started it) if it overruns.
pub fn finish(mut child: Child, stdin: &[u8], timeout: Duration, what: &[&str]) -> Out {
    if let Some(mut s) = child.stdin.take() {
        s.write_all(stdin).expect("write stdin");
    }
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait().expect("try_wait").is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what:?} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let o = child.wait_with_output().expect("output");
    Out {
        status: o.status,
        stdout: o.stdout,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

/// A copy of `exe` any user may run, in `dir` (which the caller opens to every user): for
/// running the CLI or a test binary as another uid, which may not enter the build tree.
pub fn runnable_copy(dir: &Path, exe: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let to = dir.join(exe.file_name().expect("a file name"));
    std::fs::copy(exe, &to).expect("copy the binary");
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    to
}

/// `cmd.spawn()` of a program copied by [`runnable_copy`]: a child that another test thread
/// forked while the copy was open for writing keeps that descriptor until it execs, and until
/// then the kernel refuses to run the copy (ETXTBSY). Retried for up to 10 s.
pub fn spawn_copied(cmd: &mut Command) -> Child {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match cmd.spawn() {
            Err(e)
                if e.kind() == std::io::ErrorKind::ExecutableFileBusy
                    && Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            r => return r.expect("spawn the copied program"),
        }
    }
}

impl Daemon {
    /// `pagemesh --socket S args` run as `uid`/`gid` (a copy of the CLI any user may run; the
    /// daemon's dir is opened to every user), with `stdin`, bounded.
    pub fn run_as(&self, uid: u32, gid: u32, args: &[&str], stdin: &[u8]) -> Out {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(self.dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("open the daemon's dir");
        let bin = tempfile::Builder::new()
            .prefix("pagemesh-as-")
            .tempdir()
            .expect("temp dir");
        std::fs::set_permissions(bin.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let cli = runnable_copy(bin.path(), Path::new(BIN));
        // setpriv drops root's supplementary groups too (std cannot yet); it execs the copy,
        // which another test thread's fork may briefly hold open for writing (ETXTBSY).
        for _ in 0..100 {
            let (u, g) = (uid.to_string(), gid.to_string());
            let child = Command::new("setpriv")
                .args(["--reuid", &u, "--regid", &g, "--clear-groups", "--"])
                .arg(&cli)
                .arg("--socket")
                .arg(&self.socket)
                .args(args)
                .current_dir("/")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("setpriv (util-linux)");
            let out = finish(child, stdin, Duration::from_secs(60), args);
            if !out.stderr.contains("Text file busy") {
                return out;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{args:?} as uid {uid}: the copied CLI stayed busy for 2 s");
    }
}

/// Run the CLI with no daemon involved (e.g. `cluster ca`), bounded.
pub fn pagemesh(args: &[&str]) -> Out {
    let child = std::process::Command::new(BIN)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn pagemesh");
    finish(child, &[], Duration::from_secs(30), args)
}

/// The memtest pattern, written independently of the CLI's implementation.
pub fn pattern_word(seed: u64, offset: u64) -> u64 {
    let mut z = seed
        .wrapping_add(offset / 8)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

pub fn stat_json(d: &Daemon, name: &str) -> serde_json::Value {
    let out = d.run(&["segment", "stat", name, "--json"]).ok();
    serde_json::from_slice(&out.stdout).expect("stat --json is JSON")
}

pub fn file_len(p: &Path) -> u64 {
    std::fs::metadata(p).expect("metadata").len()
}

impl Daemon {
    /// Start a daemon with extra `daemon` flags.
    pub fn start_with(extra: &[&str]) -> Daemon {
        Daemon::start_wrapped(&[], extra)
    }

    /// Start a daemon under `wrapper` (e.g. `ip netns exec NS`; empty: none).
    pub fn start_wrapped(wrapper: &[&str], extra: &[&str]) -> Daemon {
        let mut d = Daemon::unstarted();
        d.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        d.spawn_with(extra);
        d
    }

    /// A temp dir and the paths of a daemon not started yet (fill its data dir, then
    /// `spawn_with`).
    pub fn unstarted() -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("pagemesh-test-")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("pm.sock");
        let data_dir = dir.path().join("data");
        Daemon {
            dir,
            socket,
            data_dir,
            child: None,
            wrapper: Vec::new(),
        }
    }

    /// Run the daemon with `extra` flags expecting it to refuse to start: its exit (bounded)
    /// and what it said.
    pub fn refused_start(&self, extra: &[&str]) -> Out {
        let child = Command::new(BIN)
            .arg("--socket")
            .arg(&self.socket)
            .args(["daemon", "--data-dir"])
            .arg(&self.data_dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start daemon");
        finish(child, &[], Duration::from_secs(20), &["daemon"])
    }

    pub fn spawn_with(&mut self, extra: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("daemon.log"))
            .expect("log file");
        let mut cmd = match self.wrapper.split_first() {
            Some((first, rest)) => {
                let mut c = Command::new(first);
                c.args(rest).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = cmd
            .arg("--socket")
            .arg(&self.socket)
            .args([
                "daemon",
                "--log-level",
                "debug",
                "--workers",
                "2",
                "--data-dir",
            ])
            .arg(&self.data_dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start daemon");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while pagemesh::Client::connect(&self.socket).is_err() {
            assert!(
                Instant::now() < deadline,
                "daemon did not come up: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's memory: its RSS plus the pages of every memfd it holds (segment caches).
    pub fn memory_bytes(&self) -> u64 {
        let pid = self.pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let rss_kib: u64 = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut memfd = 0;
        if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
            for fd in fds.flatten() {
                let is_memfd = std::fs::read_link(fd.path())
                    .map(|l| l.to_string_lossy().starts_with("/memfd:"))
                    .unwrap_or(false);
                if is_memfd {
                    use std::os::unix::fs::MetadataExt;
                    memfd += std::fs::metadata(fd.path())
                        .map(|m| m.blocks() * 512)
                        .unwrap_or(0);
                }
            }
        }
        rss_kib * 1024 + memfd
    }
}
