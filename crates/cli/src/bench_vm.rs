//! `pagemesh bench vm`: the time for a Firecracker guest restored from a snapshot to print N TICK
//! lines with its memory served by pagemesh (`vm serve` on a volume of the snapshot), against
//! Firecracker's own File backend, pairs interleaved in one run, one private daemon for all
//! (so every pagemesh restore after the first is served from the volume cache, as a fleet's
//! restores would be). And working-set replay: one restore with `vm serve --record` first,
//! then in each pair a restore with `--replay` of that record against one without, in
//! alternating order.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

use crate::harness::{self, PrivateDaemon, Proc};

/// Bound on one restore reaching its TICK lines.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Args)]
pub struct VmBench {
    /// Directory with `firecracker` and `vm.sh` (the tick guest of ../shared/firecracker).
    #[arg(
        long,
        env = "PAGEMESH_FIRECRACKER_DIR",
        default_value = "../shared/firecracker"
    )]
    pub firecracker_dir: PathBuf,
    /// Rounds (File backend, pagemesh, pagemesh with --replay).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// TICK lines each restored guest must print.
    #[arg(long, default_value_t = 10)]
    pub ticks: usize,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Backend {
    File,
    Pagemesh,
    /// `vm serve --record FILE`.
    Record,
    /// `vm serve --replay FILE`.
    Replay,
}

/// How long one restore took from the load request: to the first TICK line, to the last.
#[derive(Clone, Copy)]
struct Took {
    first: Duration,
    all: Duration,
}

/// The median of `v` (sorted in place).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn vm(b: VmBench) -> anyhow::Result<ExitCode> {
    let fc = b.firecracker_dir.canonicalize().with_context(|| {
        format!(
            "no Firecracker at {} (--firecracker-dir)",
            b.firecracker_dir.display()
        )
    })?;
    let d = PrivateDaemon::start("pagemesh-bench-vm-", &[])?;
    let snap = d.dir.path().join("snap");
    snapshot(&fc, &snap)?;
    let mem = snap.join("snap.mem");
    d.client.add_volume("snap", &mem.display().to_string())?;
    let ws = d.dir.path().join("snap.ws");
    let r = |name: &str, backend| restore(&fc, &d, &snap, &ws, name, backend, b.ticks);
    // The record (its restore also brings the guest's pages into the volume cache, so every
    // pagemesh restore below is served from it).
    r("record", Backend::Record)?;
    let (mut ratios, mut replay_ratios) = (Vec::new(), Vec::new());
    for i in 0..b.runs {
        let file = r(&format!("file{i}"), Backend::File)?;
        let (pm, rp) = if i % 2 == 0 {
            let pm = r(&format!("pm{i}"), Backend::Pagemesh)?;
            (pm, r(&format!("replay{i}"), Backend::Replay)?)
        } else {
            let rp = r(&format!("replay{i}"), Backend::Replay)?;
            (r(&format!("pm{i}"), Backend::Pagemesh)?, rp)
        };
        let ratio = pm.all.as_secs_f64() / file.all.as_secs_f64();
        let replay_ratio = rp.all.as_secs_f64() / pm.all.as_secs_f64();
        ratios.push(ratio);
        replay_ratios.push(replay_ratio);
        let ms = |d: Duration| d.as_millis() as u64;
        if b.json {
            outln!(
                "{}",
                serde_json::json!({"bench": "vm", "pair": i, "ticks": b.ticks,
                    "file_backend_ms": ms(file.all), "pagemesh_ms": ms(pm.all), "ratio": ratio,
                    "replay_ms": ms(rp.all), "replay_ratio": replay_ratio,
                    "first_tick_ms": {"file": ms(file.first), "pagemesh": ms(pm.first),
                        "replay": ms(rp.first)}})
            );
        } else {
            outln!(
                "pair {i}: {} TICK lines after {:>6} ms (File backend) / {:>6} ms (pagemesh): {ratio:.2}x; \
                 with --replay {:>6} ms: {replay_ratio:.2}x (first TICK {} / {} / {} ms)",
                b.ticks,
                ms(file.all),
                ms(pm.all),
                ms(rp.all),
                ms(file.first),
                ms(pm.first),
                ms(rp.first)
            );
        }
    }
    let v = d.client.stat_volume("snap")?;
    let (median, replay_median) = (median(&mut ratios), median(&mut replay_ratios));
    if b.json {
        outln!(
            "{}",
            serde_json::json!({"bench": "vm", "median_ratio": median,
                "replay_median_ratio": replay_median,
                "storage_reads": v.storage_reads, "storage_bytes_read": v.storage_bytes_read,
                "image_bytes": v.info.size_bytes})
        );
    } else {
        outln!(
            "median {median:.2}x the File backend; with --replay, median {replay_median:.2}x a \
             restore without; {} pagemesh restores read {} MiB from storage in {} reads (image: {} MiB)",
            2 * b.runs + 1,
            v.storage_bytes_read >> 20,
            v.storage_reads,
            v.info.size_bytes >> 20
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `bench vm` with its defaults, in `bench all`: said and skipped when there is no Firecracker
/// (PAGEMESH_FIRECRACKER_DIR, or ../shared/firecracker from the current directory).
pub fn vm_if_present(json: bool) -> anyhow::Result<ExitCode> {
    let dir = std::env::var_os("PAGEMESH_FIRECRACKER_DIR")
        .map_or_else(|| PathBuf::from("../shared/firecracker"), PathBuf::from);
    if !dir.join("firecracker").is_file() {
        outln!(
            "bench vm: skipped, no Firecracker at {} (set PAGEMESH_FIRECRACKER_DIR)",
            dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    vm(VmBench {
        firecracker_dir: dir,
        runs: 3,
        ticks: 10,
        json,
    })
}

/// `vm.sh snapshot DIR`, in a process group of its own killed whole if it overruns.
fn snapshot(fc: &Path, dir: &Path) -> anyhow::Result<()> {
    let child = Command::new(fc.join("vm.sh"))
        .arg("snapshot")
        .arg(dir)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("running vm.sh snapshot")?;
    let pgid = child.id();
    let mut p = Proc::adopt(child, "vm.sh snapshot");
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.child.try_wait()?.is_none() {
        if Instant::now() > deadline {
            let _ = Command::new("kill")
                .args(["-9", &format!("-{pgid}")])
                .status();
            bail!("vm.sh snapshot did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !dir.join("snap.mem").is_file() {
        bail!(
            "vm.sh snapshot made no snapshot in {} (gcc, ld, curl?)",
            dir.display()
        );
    }
    Ok(())
}

/// One restore: time from the load request to the guest's `ticks`-th TICK line (all with
/// errors=0, or the bench fails).
fn restore(
    fc: &Path,
    d: &PrivateDaemon,
    snap: &Path,
    ws: &Path,
    name: &str,
    backend: Backend,
    ticks: usize,
) -> anyhow::Result<Took> {
    let dir = d.dir.path();
    let uds = dir.join(format!("{name}.uds"));
    let working_set: &[&str] = match backend {
        Backend::Record => &["--record"],
        Backend::Replay => &["--replay"],
        _ => &[],
    };
    let serve = match backend {
        Backend::File => None,
        _ => {
            let args: Vec<String> = ["vm", "serve", "--once", "--snapshot", "snap", "--listen"]
                .iter()
                .map(|s| s.to_string())
                .chain([uds.display().to_string()])
                .chain(working_set.iter().map(|s| s.to_string()))
                .chain((!working_set.is_empty()).then(|| ws.display().to_string()))
                .collect();
            let p = harness::spawn(&d.socket, &args, "vm serve".into())?;
            wait_for(&uds)?;
            Some(p)
        }
    };
    let api = dir.join(format!("{name}.api"));
    let console = dir.join(format!("{name}.console"));
    let out = std::fs::File::create(&console)?;
    let child = Command::new(fc.join("firecracker"))
        .arg("--api-sock")
        .arg(&api)
        .args(["--level", "Warn", "--log-path"])
        .arg(dir.join(format!("{name}.log")))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .context("starting firecracker")?;
    let vmm = Proc::adopt(child, "firecracker");
    wait_for(&api)?;
    let mem_backend = match backend {
        Backend::File => format!(
            r#"{{"backend_type":"File","backend_path":"{}"}}"#,
            snap.join("snap.mem").display()
        ),
        _ => format!(
            r#"{{"backend_type":"Uffd","backend_path":"{}"}}"#,
            uds.display()
        ),
    };
    let body = format!(
        r#"{{"snapshot_path":"{}","mem_backend":{mem_backend},"resume_vm":true}}"#,
        snap.join("snap.state").display()
    );
    let t0 = Instant::now();
    let status = put(&api, "/snapshot/load", &body)?;
    if status != 204 {
        bail!("{name}: the snapshot load answered HTTP {status}");
    }
    let mut first = None;
    let took = loop {
        let lines = tick_errors(&console);
        if lines.iter().any(|&e| e != 0) {
            bail!("{name}: the guest found wrong pages (errors > 0 in its TICK lines)");
        }
        if !lines.is_empty() && first.is_none() {
            first = Some(t0.elapsed());
        }
        if lines.len() >= ticks {
            break Took {
                first: first.unwrap_or_else(|| t0.elapsed()),
                all: t0.elapsed(),
            };
        }
        if t0.elapsed() > RESTORE_TIMEOUT {
            bail!("{name}: {} TICK lines in {RESTORE_TIMEOUT:?}", lines.len());
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    drop(vmm); // killed and reaped; vm serve sees its VMM exit and ends
    if let Some(s) = serve {
        harness::wait_all(vec![s], Duration::from_secs(10))?;
    }
    Ok(took)
}

/// The errors count of each TICK line of a console.
fn tick_errors(console: &Path) -> Vec<u64> {
    let text = std::fs::read(console).unwrap_or_default();
    String::from_utf8_lossy(&text)
        .lines()
        .filter_map(|l| l.split_once(" errors=").map(|(_, e)| e))
        .filter_map(|e| e.get(..16).and_then(|h| u64::from_str_radix(h, 16).ok()))
        .collect()
}

fn wait_for(path: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        if Instant::now() > deadline {
            bail!("no {} within 10 s", path.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    Ok(())
}

/// One HTTP PUT on Firecracker's API socket (bounded: 30 s); the response's status.
fn put(sock: &Path, path: &str, body: &str) -> anyhow::Result<u16> {
    let mut s = UnixStream::connect(sock).context("connecting to the Firecracker API")?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "PUT {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf)? {
            0 => break,
            n => got.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&got);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status from Firecracker: {text:?}"))
}
