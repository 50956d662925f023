//! A private daemon in a temp dir, and bounded child processes: shared by `demo` and `bench`.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pagemesh::Client;

/// A child process that is killed (by its pid, which we started) if still running on drop.
/// Its output goes to anonymous temp files (a pipe nobody reads could fill and block it).
pub struct Proc {
    pub child: Child,
    pub what: String,
    out: Option<(std::fs::File, std::fs::File)>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl Proc {
    /// Own a child started elsewhere (its output goes where its command sent it).
    pub fn adopt(child: Child, what: &str) -> Proc {
        Proc {
            child,
            what: what.into(),
            out: None,
        }
    }
}

pub fn exe() -> anyhow::Result<PathBuf> {
    std::env::current_exe().context("finding the pagemesh executable")
}

/// Start `pagemesh --socket SOCKET args...` with piped output.
pub fn spawn(socket: &Path, args: &[String], what: String) -> anyhow::Result<Proc> {
    let (out, err) = (tempfile::tempfile()?, tempfile::tempfile()?);
    let child = Command::new(exe()?)
        .arg("--socket")
        .arg(socket)
        .args(args)
        .stdout(out.try_clone()?)
        .stderr(err.try_clone()?)
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    Ok(Proc {
        child,
        what,
        out: Some((out, err)),
    })
}

/// Wait for every process (bounded by `timeout` in all); return their stdouts, or fail naming
/// the first that failed.
pub fn wait_all(procs: Vec<Proc>, timeout: Duration) -> anyhow::Result<Vec<String>> {
    let deadline = Instant::now() + timeout;
    let mut failures = Vec::new();
    let mut outs = Vec::new();
    for mut p in procs {
        loop {
            match p.child.try_wait()? {
                Some(status) => {
                    let out = read_output(&mut p);
                    if !status.success() {
                        failures.push(format!("{} failed ({status}): {}", p.what, out.1));
                    }
                    outs.push(out.0);
                    break;
                }
                None if Instant::now() > deadline => {
                    failures.push(format!("{} did not finish within {timeout:?}", p.what));
                    break;
                }
                None => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    }
    if !failures.is_empty() {
        bail!("{}", failures.join("\n"));
    }
    Ok(outs)
}

fn read_output(p: &mut Proc) -> (String, String) {
    use std::io::{Read, Seek};
    let (mut o, mut e) = (String::new(), String::new());
    if let Some((out, err)) = p.out.as_mut() {
        let _ = out.rewind().and_then(|()| out.read_to_string(&mut o));
        let _ = err.rewind().and_then(|()| err.read_to_string(&mut e));
    }
    let both = format!("{}{}", o.trim(), e.trim());
    (o, both)
}

/// A daemon of our own in a temp dir; killed and cleaned up on drop.
pub struct PrivateDaemon {
    pub client: Client,
    pub socket: PathBuf,
    proc: Proc,
    pub dir: tempfile::TempDir,
}

impl PrivateDaemon {
    pub fn start(prefix: &str, extra: &[&str]) -> anyhow::Result<PrivateDaemon> {
        let dir = tempfile::Builder::new()
            .prefix(prefix)
            .tempdir()
            .context("creating a temp dir")?;
        let socket = dir.path().join("pagemesh.sock");
        let log = dir.path().join("daemon.log");
        let child = Command::new(exe()?)
            .arg("--socket")
            .arg(&socket)
            .args(["daemon", "--log-level", "warn", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting a private daemon")?;
        let mut proc = Proc {
            child,
            what: "daemon".into(),
            out: None,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let client = loop {
            if let Ok(c) = Client::connect(&socket) {
                break c;
            }
            if let Some(status) = proc.child.try_wait()? {
                bail!(
                    "the private daemon exited ({status}): {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the private daemon did not listen on {} within 10 s",
                    socket.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        Ok(PrivateDaemon {
            client,
            socket,
            proc,
            dir,
        })
    }

    /// Stop the daemon now (it is also stopped on drop).
    pub fn stop(self) {
        drop(self.proc);
    }
}

fn free_ports(n: usize) -> anyhow::Result<Vec<u16>> {
    let ls = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .context("finding free loopback ports")?;
    Ok(ls
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()).unwrap_or(0))
        .collect())
}

/// `nodes` daemons on loopback forming one cluster (ids 1..=nodes), each with `extra` flags;
/// returns once every node sees every other (bounded).
pub fn start_cluster(
    nodes: usize,
    prefix: &str,
    extra: &[&str],
) -> anyhow::Result<Vec<PrivateDaemon>> {
    start_cluster_with(nodes, prefix, extra, None)
}

/// As [`start_cluster`], with TLS peer links if `pki` is a CA directory holding every node's
/// credentials (`pagemesh cluster ca init` and `issue`).
pub fn start_cluster_with(
    nodes: usize,
    prefix: &str,
    extra: &[&str],
    pki: Option<&Path>,
) -> anyhow::Result<Vec<PrivateDaemon>> {
    let ports = free_ports(nodes)?;
    let mut daemons = Vec::new();
    for i in 0..nodes {
        let mut args = vec![
            "--node-id".to_string(),
            (i + 1).to_string(),
            "--listen".into(),
            format!("127.0.0.1:{}", ports[i]),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        if let Some(d) = pki {
            for (flag, file) in [
                ("--tls-cert", format!("node-{}.pem", i + 1)),
                ("--tls-key", format!("node-{}.key", i + 1)),
                ("--tls-ca", "ca.pem".to_string()),
            ] {
                args.push(flag.into());
                args.push(d.join(file).display().to_string());
            }
        }
        for (j, p) in ports.iter().enumerate() {
            if j != i {
                args.push("--peer".into());
                args.push(format!("{}=127.0.0.1:{p}", j + 1));
            }
        }
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        daemons.push(PrivateDaemon::start(
            &format!("{prefix}-node{}-", i + 1),
            &a,
        )?);
    }
    // Every node sees every other (bounded).
    let deadline = Instant::now() + Duration::from_secs(20);
    for d in &daemons {
        loop {
            let s = d.client.cluster_status()?;
            if s.nodes.iter().all(|n| n.alive && n.figures.is_some()) {
                break;
            }
            if Instant::now() > deadline {
                let unheard: Vec<String> = s
                    .nodes
                    .iter()
                    .filter(|n| !(n.alive && n.figures.is_some()))
                    .map(|n| format!("node {} at {} (silent {} ms)", n.id, n.addr, n.silent_ms))
                    .collect();
                bail!(
                    "the cluster did not connect within 20 s: node {} does not hear {}",
                    s.node,
                    unheard.join(", ")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    Ok(daemons)
}
