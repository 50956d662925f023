//! `pagemesh demo`: with nothing configured, start a private daemon, run a verifiable parallel
//! job in several processes that share segments through real page faults, sync, check the file
//! independently, print what happened, and clean up.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use pagemesh::{Backing, SegmentStat};
use pagemesh_types::ByteSize;

use crate::harness::{spawn, wait_all, PrivateDaemon};
use crate::memtest::pattern;
use crate::parse_size;

#[derive(Args)]
pub struct DemoArgs {
    /// Worker processes.
    #[arg(long, default_value_t = 4)]
    pub workers: u64,
    /// Size of each demo segment.
    #[arg(long, value_parser = parse_size, default_value = "64MiB")]
    pub size: u64,
    /// Increments per worker on the shared counter.
    #[arg(long, default_value_t = 50_000)]
    pub increments: u64,
}

/// Bound on any one phase.
const PHASE_TIMEOUT: Duration = Duration::from_secs(300);
const SEED_FILE: u64 = 42;
const SEED_ZERO: u64 = 4242;

struct Phase {
    name: String,
    secs: f64,
}

fn phase(
    phases: &mut Vec<Phase>,
    name: &str,
    f: impl FnOnce() -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let t = Instant::now();
    println!("  {name} ...");
    f()?;
    phases.push(Phase {
        name: name.to_string(),
        secs: t.elapsed().as_secs_f64(),
    });
    Ok(())
}

fn memtest_args(seg: &str, op: &str, value: u64, offset: u64, len: u64) -> Vec<String> {
    vec![
        "memtest".into(),
        seg.into(),
        op.into(),
        value.to_string(),
        "--offset".into(),
        offset.to_string(),
        "--len".into(),
        len.to_string(),
    ]
}

/// Check the backing file directly with std::fs (not through pagemesh).
fn check_file(path: &Path, offset: u64, len: u64, seed: u64) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    for o in (offset..offset + len).step_by(8) {
        let got = u64::from_le_bytes(
            bytes[o as usize..o as usize + 8]
                .try_into()
                .expect("8 bytes"),
        );
        if got != pattern(seed, o) {
            bail!(
                "backing file {} differs from the pattern at offset {o}",
                path.display()
            );
        }
    }
    Ok(())
}

fn print_stats(stats: &[SegmentStat]) {
    println!();
    println!(
        "{:<10} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>9} {:>9}",
        "segment",
        "missing",
        "minor",
        "wp",
        "zerofill",
        "from-file",
        "to-file",
        "resident",
        "p50",
        "p99"
    );
    for s in stats {
        let c = &s.counters;
        println!(
            "{:<10} {:>9} {:>9} {:>9} {:>9} {:>10} {:>10} {:>10} {:>7.1}us {:>7.1}us",
            s.info.name,
            c.faults_missing,
            c.faults_minor,
            c.faults_wp,
            c.zero_fills,
            ByteSize(c.mapper_bytes_read).to_string(),
            ByteSize(c.mapper_bytes_written).to_string(),
            ByteSize(s.resident_pages * 4096).to_string(),
            c.fault_service_p50_ns as f64 / 1e3,
            c.fault_service_p99_ns as f64 / 1e3,
        );
    }
}

pub fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    if a.workers == 0 || a.size < 2 * 4096 || !a.size.is_multiple_of(4096) {
        bail!("--workers must be >= 1 and --size a multiple of 4KiB of at least 8KiB");
    }
    let daemon = PrivateDaemon::start("pagemesh-demo-", &[])?;
    let socket = daemon.socket.clone();
    let file = daemon.dir.path().join("demo.dat");
    println!(
        "pagemesh demo: a private daemon in {}, {} worker processes",
        daemon.dir.path().display(),
        a.workers
    );
    let client = daemon.client.clone();
    client.create_segment(
        "demo-file",
        Some(a.size),
        Backing::File {
            path: file.display().to_string(),
        },
    )?;
    client.create_segment("demo-zero", Some(a.size), Backing::Zero)?;
    // Page 0 of demo-zero holds the shared counter; the rest is split into one stripe a worker.
    let data_off = 4096;
    let data_len = a.size - data_off;
    let stripe = (data_len / a.workers) / 4096 * 4096;
    let stripes: Vec<(u64, u64)> = (0..a.workers)
        .map(|i| {
            let off = data_off + i * stripe;
            (
                off,
                if i + 1 == a.workers {
                    a.size - off
                } else {
                    stripe
                },
            )
        })
        .collect();
    let mut phases = Vec::new();
    let t0 = Instant::now();
    phase(
        &mut phases,
        "each worker writes its stripe of both segments",
        || {
            let mut procs = Vec::new();
            for (i, &(off, len)) in stripes.iter().enumerate() {
                for (seg, seed) in [("demo-file", SEED_FILE), ("demo-zero", SEED_ZERO)] {
                    procs.push(spawn(
                        &socket,
                        &memtest_args(seg, "--write", seed, off, len),
                        format!("worker {i} writing {seg}"),
                    )?);
                }
            }
            wait_all(procs, PHASE_TIMEOUT).map(|_| ())
        },
    )?;
    phase(&mut phases, "every worker verifies every stripe", || {
        let mut procs = Vec::new();
        for i in 0..a.workers {
            for (seg, seed) in [("demo-file", SEED_FILE), ("demo-zero", SEED_ZERO)] {
                procs.push(spawn(
                    &socket,
                    &memtest_args(seg, "--verify", seed, data_off, data_len),
                    format!("worker {i} verifying {seg}"),
                )?);
            }
        }
        wait_all(procs, PHASE_TIMEOUT).map(|_| ())
    })?;
    phase(
        &mut phases,
        "all workers increment one shared AtomicU64",
        || {
            let mut procs = Vec::new();
            for i in 0..a.workers {
                let args = vec![
                    "memtest".into(),
                    "demo-zero".into(),
                    "--increment".into(),
                    a.increments.to_string(),
                    "--offset".into(),
                    "0".into(),
                ];
                procs.push(spawn(&socket, &args, format!("worker {i} incrementing"))?);
            }
            wait_all(procs, PHASE_TIMEOUT)?;
            let mut b = [0u8; 8];
            client.read_at("demo-zero", 0, &mut b)?;
            let got = u64::from_le_bytes(b);
            let want = a.workers * a.increments;
            if got != want {
                bail!("the shared counter is {got}, expected {want}: increments were lost");
            }
            println!(
                "    counter = {got} = {} workers x {} increments",
                a.workers, a.increments
            );
            Ok(())
        },
    )?;
    let mut written = 0;
    phase(
        &mut phases,
        "sync demo-file and check the file with plain reads",
        || {
            written = client.sync("demo-file")?;
            check_file(&file, data_off, data_len, SEED_FILE)
        },
    )?;
    let total = t0.elapsed().as_secs_f64();
    let stats = vec![client.stat("demo-file")?, client.stat("demo-zero")?];
    drop(client);
    daemon.stop();
    println!();
    println!("{:<55} {:>8}", "phase", "seconds");
    for p in &phases {
        println!("{:<55} {:>8.3}", p.name, p.secs);
    }
    print_stats(&stats);
    println!();
    println!(
        "verified: {} workers x 2 segments of {}, counter exact, {written} pages synced to the file and checked independently; {total:.2} s in all",
        a.workers,
        ByteSize(a.size)
    );
    Ok(ExitCode::SUCCESS)
}
