//! A real Firecracker for the tests (`../shared/firecracker`: the binary, the tick guest and
//! `vm.sh`; see its README): snapshots taken with `vm.sh snapshot`, VMMs started and driven
//! here (their pids are needed), `pagemesh vm serve` started against a test daemon. Every
//! process is killed by its pid and reaped on drop, and every wait is bounded.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use super::{Daemon, BIN};

/// The directory holding `firecracker` and `vm.sh` (`PAGEMESH_FIRECRACKER_DIR`, or the
/// repository's `../shared/firecracker`).
pub fn dir() -> PathBuf {
    let d = std::env::var_os("PAGEMESH_FIRECRACKER_DIR").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/firecracker"),
        PathBuf::from,
    );
    assert!(
        d.join("firecracker").is_file() && d.join("vm.sh").is_file(),
        "no Firecracker at {} (set PAGEMESH_FIRECRACKER_DIR to the directory with firecracker \
         and vm.sh)",
        d.display()
    );
    d
}

/// A process this test started, killed (SIGKILL, by its pid) and reaped on drop.
pub struct Owned(pub Option<Child>);

impl Owned {
    pub fn pid(&self) -> u32 {
        self.0.as_ref().expect("running").id()
    }

    /// Wait (bounded) for it to exit; its status, or None at the deadline.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.0.as_mut()?;
            if let Some(st) = c.try_wait().expect("try_wait") {
                self.0 = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Take a snapshot of the tick guest into `dir` (`vm.sh snapshot`: snap.state, snap.mem).
/// `vm.sh` runs in a process group of its own, killed whole if it overruns.
pub fn snapshot(dir: &Path) {
    let child = Command::new(self::dir().join("vm.sh"))
        .arg("snapshot")
        .arg(dir)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run vm.sh");
    let pgid = child.id();
    let mut owned = Owned(Some(child));
    let done = owned.wait_exit(Duration::from_secs(60));
    if done.is_none() {
        let _ = Command::new("kill")
            .args(["-9", &format!("-{pgid}")])
            .status();
    }
    let st = done.expect("vm.sh snapshot finished within 60 s");
    assert!(
        st.success() && dir.join("snap.mem").is_file(),
        "vm.sh snapshot failed ({st}); is gcc/ld/curl installed?"
    );
}

/// The TICK lines of a console: (iteration, errors).
pub fn ticks(console: &Path) -> Vec<(u64, u64)> {
    let text = std::fs::read(console).unwrap_or_default();
    String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|l| {
            let t = &l[l.find("TICK iter=")? + 10..];
            let (iter, rest) = t.split_once(" errors=")?;
            let errors = rest.get(..16)?;
            Some((
                u64::from_str_radix(iter, 16).ok()?,
                u64::from_str_radix(errors, 16).ok()?,
            ))
        })
        .collect()
}

/// A Firecracker process waiting for a snapshot to load.
pub struct Vmm {
    pub proc: Owned,
    pub api: PathBuf,
    pub console: PathBuf,
    pub log: PathBuf,
}

impl Vmm {
    /// Start Firecracker with its API socket, console and log in `dir` (named `name`).
    pub fn start(dir: &Path, name: &str) -> Vmm {
        let api = dir.join(format!("{name}.api"));
        let console = dir.join(format!("{name}.console"));
        let log = dir.join(format!("{name}.log"));
        std::fs::File::create(&log).expect("log file");
        let out = std::fs::File::create(&console).expect("console file");
        let child = Command::new(self::dir().join("firecracker"))
            .arg("--api-sock")
            .arg(&api)
            .args(["--level", "Warn", "--log-path"])
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .spawn()
            .expect("start firecracker");
        let vmm = Vmm {
            proc: Owned(Some(child)),
            api,
            console,
            log,
        };
        wait_for(&vmm.api, Duration::from_secs(10));
        vmm
    }

    /// `PUT /snapshot/load` of `snap`'s snapshot with the Uffd backend at `uds`, resumed: the
    /// HTTP status (0 if the VMM closed the connection first: it died during the load).
    pub fn load_uffd(&self, snap: &Path, uds: &Path) -> u16 {
        load_uffd_at(&self.api, snap, uds)
    }

    /// The same with Firecracker's own File backend (the baseline).
    pub fn load_file(&self, snap: &Path) -> u16 {
        let body = format!(
            r#"{{"snapshot_path":"{}","mem_backend":{{"backend_type":"File","backend_path":"{}"}},"resume_vm":true}}"#,
            snap.join("snap.state").display(),
            snap.join("snap.mem").display()
        );
        api(&self.api, "PUT", "/snapshot/load", &body)
    }

    pub fn ticks(&self) -> Vec<(u64, u64)> {
        ticks(&self.console)
    }

    /// Wait (bounded) until the guest printed `n` TICK lines; all of them, or what there was
    /// at the deadline.
    pub fn wait_ticks(&self, n: usize, timeout: Duration) -> Vec<(u64, u64)> {
        let deadline = Instant::now() + timeout;
        loop {
            let t = self.ticks();
            if t.len() >= n || Instant::now() > deadline {
                return t;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `Vmm::load_uffd` on the API socket `api_sock` (for a thread that must not borrow the `Vmm`).
pub fn load_uffd_at(api_sock: &Path, snap: &Path, uds: &Path) -> u16 {
    let body = format!(
        r#"{{"snapshot_path":"{}","mem_backend":{{"backend_type":"Uffd","backend_path":"{}"}},"resume_vm":true}}"#,
        snap.join("snap.state").display(),
        uds.display()
    );
    api(api_sock, "PUT", "/snapshot/load", &body)
}

/// One HTTP request on Firecracker's API socket; the response's status (0: no response).
fn api(sock: &Path, method: &str, path: &str, body: &str) -> u16 {
    // The socket file appears at bind, before Firecracker listens: refused until then.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match UnixStream::connect(sock) {
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            r => break r.expect("connect to the Firecracker API"),
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send the request");
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&got)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// Wait (bounded) for a socket file to appear.
pub fn wait_for(path: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "no {} within {timeout:?}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `pagemesh vm serve --once` against `d` for volume `volume`, listening on `uds`.
pub fn vm_serve(d: &Daemon, volume: &str, uds: &Path) -> Owned {
    vm_serve_with(d, volume, uds, &["--once"])
}

/// `pagemesh vm serve` with `extra` flags.
pub fn vm_serve_with(d: &Daemon, volume: &str, uds: &Path, extra: &[&str]) -> Owned {
    let child = Command::new(BIN)
        .arg("--socket")
        .arg(&d.socket)
        .args(["vm", "serve"])
        .args(extra)
        .args(["--snapshot", volume, "--listen"])
        .arg(uds)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(uds.with_extension("serve.log")).expect("log"))
        .spawn()
        .expect("start vm serve");
    let owned = Owned(Some(child));
    wait_for(uds, Duration::from_secs(10));
    owned
}

/// What `vm serve` said.
pub fn serve_log(uds: &Path) -> String {
    std::fs::read_to_string(uds.with_extension("serve.log")).unwrap_or_default()
}
