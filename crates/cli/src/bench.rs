//! `pagemesh bench ...`: measurements, each side by side with a baseline measured in the same run.
//!
//! With `--json`, one object per line:
//! `{"bench","metric","unit","pagemesh","baseline","ratio","better","runs","min","median","max"}`
//! where min/median/max are pagemesh's over the runs and `pagemesh`/`baseline` are medians.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use pagemesh::Backing;
use pagemesh_types::ByteSize;
use pagemesh_uffd::fileio::drop_cached;
use pagemesh_uffd::ReadOnlyMapping;
use sha2::{Digest, Sha256};

use crate::bench_report::{header, report, RunsArgs};
use crate::harness::{spawn, wait_all, PrivateDaemon, Proc};
use crate::memtest::pattern;
use crate::parse_size;

#[derive(Subcommand)]
pub enum BenchCmd {
    /// N processes read one read-only image: through pagemesh volume segments (one shared frame
    /// per block), versus each process mmap'ing its own copy of the image (no sharing), versus
    /// all mmap'ing the one file. Wall time and memory used.
    Volume(VolumeBench),
    /// A Firecracker guest restored from a snapshot with its memory served by pagemesh (vm
    /// serve on a volume), against Firecracker's File backend: time to N TICK lines, pairs
    /// interleaved.
    Vm(crate::bench_vm::VmBench),
    /// Sequential write and read of a zero segment 4x larger than the daemon's memory budget
    /// (paging to the paging device), beside the same scan of a segment that fits in memory.
    Overcommit(OvercommitBench),
    /// Fault latency (p50, p99, mean) of dormant and cached faults against a minimal uffd
    /// handler in one process, and a kernel anonymous first touch.
    LocalFault(RunsArgs),
    /// Create a 1 TiB segment and touch its first page, against a 1 TiB kernel mapping.
    Create(RunsArgs),
    /// Fault throughput with 1, 2 and 4 client threads and 1 and 2 fault workers.
    Scaling(RunsArgs),
    /// Read and write faults on pages another node holds (two nodes on loopback), against a
    /// minimal uffd handler plus one raw TCP round trip of a page.
    RemoteFault(RunsArgs),
    /// What TLS peer links cost: remote read faults, a bulk remote read and ownership
    /// ping-pong on two nodes with TLS links, against the same with plaintext links.
    Tls {
        #[command(flatten)]
        runs: RunsArgs,
        /// Size of the bulk remote read.
        #[arg(long, default_value = "32MiB", value_parser = parse_size)]
        size: u64,
        /// Seconds of ping-pong per run.
        #[arg(long, default_value_t = 1.0)]
        secs: f64,
    },
    /// Two nodes taking turns writing one page: ownership transfers per second, against a page
    /// passed back and forth over raw TCP.
    Pingpong {
        #[command(flatten)]
        runs: RunsArgs,
        /// Seconds per repetition.
        #[arg(long, default_value_t = 2.0)]
        secs: f64,
    },
    /// Cold sequential scan of a file segment against the kernel's mmap of the same file.
    Scan {
        #[command(flatten)]
        runs: RunsArgs,
        /// File size.
        #[arg(long, value_parser = parse_size, default_value = "256MiB")]
        size: u64,
    },
    /// Many pages at once: first touch of a zero segment and a rewrite of its cached pages by
    /// a new process, against the kernel's first touch of anonymous memory (pairs interleaved).
    Bulk {
        /// Repetitions (pairs).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Bytes written per run.
        #[arg(long, value_parser = parse_size, default_value = "1GiB")]
        size: u64,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// A new mapping rewriting pages already in a memfd, in one process: MINOR faults answered
    /// with 2 MiB runs, and MISSING plus asynchronous write-protect (dirty pages collected with
    /// PAGEMAP_SCAN), against a plain mapping (pairs interleaved).
    MapCached(crate::bench_map_cached::MapCachedBench),
    /// Every bench above, one after the other.
    All {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// (internal) write `bench bulk`'s pattern over a segment or fresh anonymous memory and
    /// print the seconds it took.
    #[command(hide = true)]
    Touch {
        #[arg(long)]
        segment: Option<String>,
        #[arg(long)]
        anon_bytes: Option<u64>,
    },
    /// (internal) mmap FILE read-only and print the SHA-256 of its bytes.
    #[command(hide = true)]
    MmapHash { file: PathBuf },
}

#[derive(Args)]
pub struct VolumeBench {
    /// Image size.
    #[arg(long, value_parser = parse_size, default_value = "256MiB")]
    pub size: u64,
    /// Reader processes.
    #[arg(long, default_value_t = 8)]
    pub procs: usize,
    /// Repetitions of each case.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Passed to the bench's daemon: faults a block needs before it is shared.
    #[arg(long, default_value_t = 1)]
    pub share_threshold: u8,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct OvercommitBench {
    /// The bench daemon's --memory; the overcommitted segment is 4x this.
    #[arg(long, value_parser = parse_size, default_value = "256MiB")]
    pub memory: u64,
    /// Repetitions (rounds in one daemon).
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

const CASE_TIMEOUT: Duration = Duration::from_secs(600);

pub fn run(socket: &Path, cmd: BenchCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCmd::Volume(b) => volume(b),
        BenchCmd::Overcommit(b) => overcommit(b),
        BenchCmd::Vm(b) => crate::bench_vm::vm(b),
        BenchCmd::LocalFault(a) => crate::bench_local::local_fault(a),
        BenchCmd::Create(a) => crate::bench_local::create(a),
        BenchCmd::Scaling(a) => crate::bench_local::scaling(a),
        BenchCmd::RemoteFault(a) => crate::bench_remote::remote_fault(a),
        BenchCmd::Tls { runs, size, secs } => crate::bench_tls::tls(runs, size, secs),
        BenchCmd::Pingpong { runs, secs } => crate::bench_remote::pingpong(runs, secs),
        BenchCmd::Scan { runs, size } => crate::bench_local::scan(runs, size),
        BenchCmd::Bulk { runs, size, json } => crate::bench_bulk::bulk(runs, size, json),
        BenchCmd::MapCached(b) => crate::bench_map_cached::map_cached(b),
        BenchCmd::All { json } => {
            let runs = || RunsArgs {
                runs: 5,
                faults: 2000,
                json,
            };
            crate::bench_local::local_fault(runs())?;
            crate::bench_remote::remote_fault(runs())?;
            crate::bench_remote::pingpong(runs(), 2.0)?;
            crate::bench_tls::tls(runs(), 32 << 20, 1.0)?;
            crate::bench_local::scan(runs(), 256 << 20)?;
            crate::bench_local::create(runs())?;
            crate::bench_local::scaling(runs())?;
            crate::bench_bulk::bulk(5, 1 << 30, json)?;
            crate::bench_map_cached::map_cached(crate::bench_map_cached::MapCachedBench {
                runs: 5,
                size: 1 << 30,
                faults: 2000,
                json,
            })?;
            volume(VolumeBench {
                size: 256 << 20,
                procs: 8,
                runs: 5,
                share_threshold: 1,
                json,
            })?;
            overcommit(OvercommitBench {
                memory: 256 << 20,
                runs: 3,
                json,
            })?;
            crate::bench_vm::vm_if_present(json)
        }
        BenchCmd::Touch {
            segment,
            anon_bytes,
        } => {
            crate::bench_bulk::touch(socket, segment.as_deref(), anon_bytes)?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCmd::MmapHash { file } => {
            let f = File::open(&file).with_context(|| format!("opening {}", file.display()))?;
            let len = f.metadata()?.len() as usize;
            let m = ReadOnlyMapping::map(f.as_fd(), len)?;
            outln!("{}", sha256_of(|off, buf| m.read_at(off, buf), len));
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn sha256_of(mut read: impl FnMut(usize, &mut [u8]), len: usize) -> String {
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(buf.len());
        read(off, &mut buf[..n]);
        h.update(&buf[..n]);
        off += n;
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Page cache (shmem and memfds included) plus anonymous memory, from /proc/meminfo, in bytes:
/// what a set of readers costs the machine, whether their copies are cached or private.
fn used_bytes() -> anyhow::Result<u64> {
    let m = std::fs::read_to_string("/proc/meminfo")?;
    let field = |name: &str| -> anyhow::Result<u64> {
        let line = m
            .lines()
            .find(|l| l.starts_with(name))
            .with_context(|| format!("no {name} in /proc/meminfo"))?;
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .context("malformed /proc/meminfo line")?
            .parse()?;
        Ok(kib * 1024)
    };
    Ok(field("Cached:")? + field("AnonPages:")?)
}

fn write_image(path: &Path, size: u64) -> anyhow::Result<()> {
    let mut f = std::io::BufWriter::new(File::create(path)?);
    let mut buf = Vec::with_capacity(1 << 20);
    let mut off = 0;
    while off < size {
        buf.clear();
        let n = (size - off).min(1 << 20);
        for o in (off..off + n).step_by(8) {
            buf.extend_from_slice(&pattern(99, o).to_le_bytes());
        }
        buf.truncate(n as usize);
        f.write_all(&buf)?;
        off += n;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    Ok(())
}

struct Sample {
    secs: f64,
    mem_bytes: f64,
}

impl Sample {
    fn mem_mib(&self) -> f64 {
        self.mem_bytes / (1 << 20) as f64
    }
}

/// Run `procs` at once; the time until all are done, and the peak growth of used memory
/// (sampled every 5 ms while they run, and once after).
fn measure(
    procs: impl FnOnce() -> anyhow::Result<Vec<Proc>>,
    want: &str,
) -> anyhow::Result<Sample> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let before = used_bytes()?;
    let peak = AtomicU64::new(before);
    let done = AtomicBool::new(false);
    let t = Instant::now();
    let outs = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if let Ok(u) = used_bytes() {
                    peak.fetch_max(u, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let r = procs().and_then(|p| wait_all(p, CASE_TIMEOUT));
        done.store(true, Ordering::Relaxed);
        r
    })?;
    let secs = t.elapsed().as_secs_f64();
    peak.fetch_max(used_bytes()?, Ordering::Relaxed);
    for o in outs {
        if o.trim() != want {
            bail!(
                "a reader saw different bytes: sha256 {} instead of {want}",
                o.trim()
            );
        }
    }
    Ok(Sample {
        secs,
        mem_bytes: peak.load(Ordering::Relaxed).saturating_sub(before) as f64,
    })
}

fn drop_file(p: &Path) -> anyhow::Result<()> {
    drop_cached(&File::open(p)?, 0, 0)?;
    Ok(())
}

/// The image the volume bench reads, its digest, and one private copy of it per reader.
struct VolumeImage {
    image: PathBuf,
    want: String,
    copies: Vec<PathBuf>,
}

fn volume_image(d: &PrivateDaemon, b: &VolumeBench) -> anyhow::Result<VolumeImage> {
    let image = d.dir.path().join("image.raw");
    write_image(&image, b.size)?;
    let want = {
        let f = File::open(&image)?;
        let m = ReadOnlyMapping::map(f.as_fd(), b.size as usize)?;
        sha256_of(|off, buf| m.read_at(off, buf), b.size as usize)
    };
    let copies: Vec<PathBuf> = (0..b.procs)
        .map(|i| d.dir.path().join(format!("copy{i}.raw")))
        .collect();
    for c in &copies {
        std::fs::copy(&image, c)?;
    }
    Ok(VolumeImage {
        image,
        want,
        copies,
    })
}

/// One run of the volume bench: pagemesh and both baselines, and the bytes pagemesh read
/// from the image.
struct VolumeRun {
    pm: Sample,
    own: Sample,
    one: Sample,
    storage_bytes: f64,
}

/// pagemesh: a fresh volume (empty cache), one segment per reader process; the sample and
/// the bytes the volume read from storage.
fn volume_pagemesh(
    d: &PrivateDaemon,
    b: &VolumeBench,
    img: &VolumeImage,
) -> anyhow::Result<(Sample, f64)> {
    drop_file(&img.image)?;
    d.client
        .add_volume("bench", &img.image.display().to_string())?;
    for i in 0..b.procs {
        d.client.create_segment(
            &format!("vm{i}"),
            None,
            Backing::Volume {
                name: "bench".into(),
            },
        )?;
    }
    let sample = measure(
        || {
            (0..b.procs)
                .map(|i| {
                    spawn(
                        &d.socket,
                        &["memtest".into(), format!("vm{i}"), "--sha256".into()],
                        format!("reader {i}"),
                    )
                })
                .collect()
        },
        &img.want,
    )?;
    let vs = d.client.stat_volume("bench")?;
    for i in 0..b.procs {
        d.client.remove_segment(&format!("vm{i}"))?;
    }
    d.client.remove_volume("bench")?;
    Ok((sample, vs.storage_bytes_read as f64))
}

fn volume_run(d: &PrivateDaemon, b: &VolumeBench, img: &VolumeImage) -> anyhow::Result<VolumeRun> {
    let (pm, storage_bytes) = volume_pagemesh(d, b, img)?;
    // Baseline 1: every process mmaps its own copy (what a system without shared frames does).
    for c in &img.copies {
        drop_file(c)?;
    }
    let own = measure(
        || {
            img.copies
                .iter()
                .enumerate()
                .map(|(i, c)| mmap_reader(&d.socket, c, i))
                .collect()
        },
        &img.want,
    )?;
    // Baseline 2: every process mmaps the one file (the kernel's own sharing).
    drop_file(&img.image)?;
    let one = measure(
        || {
            (0..b.procs)
                .map(|i| mmap_reader(&d.socket, &img.image, i))
                .collect()
        },
        &img.want,
    )?;
    Ok(VolumeRun {
        pm,
        own,
        one,
        storage_bytes,
    })
}

fn volume_report(b: &VolumeBench, runs: &[VolumeRun]) {
    let of = |f: fn(&VolumeRun) -> f64| runs.iter().map(f).collect::<Vec<_>>();
    header(
        b.json,
        &format!(
            "{} processes reading a {} image; pagemesh = volume segments, baselines: own copies via mmap | one file via mmap",
            b.procs,
            ByteSize(b.size)
        ),
    );
    let rows = [
        (
            "wall_time_vs_private_copies",
            "s",
            of(|r| r.pm.secs),
            of(|r| r.own.secs),
        ),
        (
            "memory_vs_private_copies",
            "MiB",
            of(|r| r.pm.mem_mib()),
            of(|r| r.own.mem_mib()),
        ),
        (
            "wall_time_vs_one_file_mmap",
            "s",
            of(|r| r.pm.secs),
            of(|r| r.one.secs),
        ),
        (
            "memory_vs_one_file_mmap",
            "MiB",
            of(|r| r.pm.mem_mib()),
            of(|r| r.one.mem_mib()),
        ),
        (
            "storage_bytes_read_vs_image_size",
            "B",
            of(|r| r.storage_bytes),
            vec![b.size as f64; runs.len()],
        ),
    ];
    for (metric, unit, p, base) in &rows {
        report(b.json, "volume", metric, unit, p, base, "lower");
    }
}

fn volume(b: VolumeBench) -> anyhow::Result<ExitCode> {
    if b.procs == 0 || b.runs == 0 || b.size == 0 {
        bail!("--procs, --runs and --size must be positive");
    }
    let threshold = b.share_threshold.to_string();
    let d = PrivateDaemon::start("pagemesh-bench-", &["--share-threshold", &threshold])?;
    let img = volume_image(&d, &b)?;
    let mut runs = Vec::with_capacity(b.runs);
    for run in 0..b.runs {
        runs.push(volume_run(&d, &b, &img)?);
        if !b.json {
            eprintln!("run {}/{} done", run + 1, b.runs);
        }
    }
    volume_report(&b, &runs);
    d.stop();
    Ok(ExitCode::SUCCESS)
}

fn mmap_reader(socket: &Path, file: &Path, i: usize) -> anyhow::Result<Proc> {
    spawn(
        socket,
        &[
            "bench".into(),
            "mmap-hash".into(),
            file.display().to_string(),
        ],
        format!("mmap reader {i}"),
    )
}

/// MB/s of one `memtest` pass over a whole segment.
fn memtest_rate(socket: &Path, seg: &str, op: &str, size: u64) -> anyhow::Result<f64> {
    let t = Instant::now();
    let p = spawn(
        socket,
        &["memtest".into(), seg.into(), op.into(), "77".into()],
        format!("memtest {op} {seg}"),
    )?;
    wait_all(vec![p], CASE_TIMEOUT)?;
    Ok(size as f64 / t.elapsed().as_secs_f64() / 1e6)
}

fn overcommit(b: OvercommitBench) -> anyhow::Result<ExitCode> {
    if b.runs == 0 || b.memory < (64 << 20) {
        bail!("--runs must be positive and --memory at least 64MiB");
    }
    let mem = b.memory.to_string();
    let paging = (b.memory * 6).to_string();
    let d = PrivateDaemon::start(
        "pagemesh-bench-",
        &["--memory", &mem, "--paging-device-size", &paging],
    )?;
    let (fit, over) = (b.memory / 2 / 4096 * 4096, b.memory * 4);
    let (mut wf, mut rf, mut wo, mut ro) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..b.runs {
        for (name, size, w, r) in [
            ("fit", fit, &mut wf, &mut rf),
            ("over", over, &mut wo, &mut ro),
        ] {
            d.client.create_segment(name, Some(size), Backing::Zero)?;
            w.push(memtest_rate(&d.socket, name, "--write", size)?);
            r.push(memtest_rate(&d.socket, name, "--verify", size)?);
            d.client.remove_segment(name)?;
        }
        if !b.json {
            eprintln!("run {}/{} done", run + 1, b.runs);
        }
    }
    header(
        b.json,
        &format!(
            "sequential scan of a zero segment 4x the --memory {} budget (paged) vs one that fits ({}); MB/s",
            ByteSize(b.memory),
            ByteSize(fit)
        ),
    );
    report(
        b.json,
        "overcommit",
        "seq_write_4x_overcommit_vs_in_memory",
        "MB/s",
        &wo,
        &wf,
        "higher",
    );
    report(
        b.json,
        "overcommit",
        "seq_read_4x_overcommit_vs_in_memory",
        "MB/s",
        &ro,
        &rf,
        "higher",
    );
    d.stop();
    Ok(ExitCode::SUCCESS)
}
