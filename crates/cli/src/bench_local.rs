//! Single-node benches: fault latency against a minimal uffd handler, 1 TiB create + first
//! touch, fault throughput scaling with client and worker threads, and file segments against
//! the kernel's mmap of the same file. Each figure is measured beside its baseline in the same
//! run.

use std::io::Write;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use pagemesh::Backing;
use pagemesh_uffd::fileio::drop_cached;
use pagemesh_uffd::{
    features, FaultKind, Memfd, Protect, ReadOnlyMapping, RegisterMode, SharedMapping, Uffd, Wake,
};

use crate::bench_baseline::serve_faults;
use crate::bench_report::{header, mean, pct, report, RunsArgs};
use crate::harness::{spawn, wait_all, PrivateDaemon};

const PS: u64 = 4096;
/// Pages between two timed touches: more than fault-around's reach either way, so every touch
/// is a fault of its own.
const STRIDE_PAGES: u64 = 64;

/// Touch `n` pages `STRIDE_PAGES` apart through `read`, returning each touch's latency in ns.
fn touch_all(n: u64, mut read: impl FnMut(usize, &mut [u8])) -> Vec<f64> {
    let mut b = [0u8; 8];
    (0..n)
        .map(|i| {
            let t = Instant::now();
            read((i * STRIDE_PAGES * PS) as usize, &mut b);
            t.elapsed().as_nanos() as f64
        })
        .collect()
}

/// The baseline: one handler thread, the same ioctls pagemesh uses (COPY of a zero page,
/// write-protected, for a missing fault; CONTINUE write-protected for a cached page), no
/// daemon, no sockets, no bookkeeping.
fn minimal_handler(n: u64, cached: bool) -> anyhow::Result<Vec<f64>> {
    let len = n * STRIDE_PAGES * PS;
    let memfd = Memfd::create("bench-minimal", len)?;
    if cached {
        for i in 0..n {
            memfd.write_all_at(&[0u8; 8], i * STRIDE_PAGES * PS)?;
        }
    }
    let map = SharedMapping::map(memfd.as_fd(), len as usize)?;
    let (uffd, _) = Uffd::open(features::PAGEMESH).map_err(|e| anyhow::anyhow!("{e}"))?;
    let modes = RegisterMode::MISSING
        .union(RegisterMode::MINOR)
        .union(RegisterMode::WP);
    uffd.register_mapping(&map, modes)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let stop = AtomicBool::new(false);
    let zero = vec![0u8; PS as usize];
    let lat = std::thread::scope(|s| {
        s.spawn(|| {
            serve_faults(&uffd, &stop, |address, kind| {
                let _ = match kind {
                    FaultKind::Minor => uffd.continue_(address, PS, Protect::ReadOnly, Wake::Yes),
                    _ => uffd.copy(address, &zero, Protect::ReadOnly, Wake::Yes),
                };
            })
        });
        let lat = touch_all(n, |off, b| map.read_at(off, b));
        stop.store(true, Ordering::Relaxed);
        lat
    });
    Ok(lat)
}

fn kernel_anon(n: u64) -> anyhow::Result<Vec<f64>> {
    let map = SharedMapping::anonymous((n * STRIDE_PAGES * PS) as usize)?;
    Ok(touch_all(n, |off, b| map.read_at(off, b)))
}

/// pagemesh: a fresh zero segment (dormant faults), or one whose touched pages another
/// attachment brought in first (cached: minor faults).
fn pagemesh_faults(
    d: &PrivateDaemon,
    n: u64,
    cached: bool,
    run: usize,
) -> anyhow::Result<Vec<f64>> {
    let name = format!("lf{run}{}", if cached { "c" } else { "d" });
    d.client
        .create_segment(&name, Some(n * STRIDE_PAGES * PS), Backing::Zero)?;
    if cached {
        let warm = d.client.attach(&name)?;
        touch_all(n, |off, b| warm.read_at(off as u64, b).expect("in range"));
    }
    let m = d.client.attach(&name)?;
    let lat = touch_all(n, |off, b| m.read_at(off as u64, b).expect("in range"));
    drop(m);
    d.client.remove_segment(&name)?;
    Ok(lat)
}

pub fn local_fault(a: RunsArgs) -> anyhow::Result<ExitCode> {
    if a.runs == 0 || a.faults < 10 {
        bail!("--runs must be positive and --faults at least 10");
    }
    let d = PrivateDaemon::start("pagemesh-bench-", &[])?;
    let mut rows: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
        ("dormant_fault_p50_vs_minimal_handler", vec![], vec![]),
        ("dormant_fault_p99_vs_minimal_handler", vec![], vec![]),
        ("dormant_fault_mean_vs_minimal_handler", vec![], vec![]),
        ("cached_fault_p50_vs_minimal_handler", vec![], vec![]),
        ("cached_fault_p99_vs_minimal_handler", vec![], vec![]),
        ("dormant_fault_p50_vs_kernel_anon_touch", vec![], vec![]),
    ];
    for run in 0..a.runs {
        let mut pd = pagemesh_faults(&d, a.faults, false, run)?;
        let mut md = minimal_handler(a.faults, false)?;
        let mut pc = pagemesh_faults(&d, a.faults, true, run)?;
        let mut mc = minimal_handler(a.faults, true)?;
        let mut ka = kernel_anon(a.faults)?;
        let vals = [
            (pct(&mut pd, 0.5), pct(&mut md, 0.5)),
            (pct(&mut pd, 0.99), pct(&mut md, 0.99)),
            (mean(&pd), mean(&md)),
            (pct(&mut pc, 0.5), pct(&mut mc, 0.5)),
            (pct(&mut pc, 0.99), pct(&mut mc, 0.99)),
            (pct(&mut pd, 0.5), pct(&mut ka, 0.5)),
        ];
        for (row, (p, b)) in rows.iter_mut().zip(vals) {
            row.1.push(p);
            row.2.push(b);
        }
    }
    header(
        a.json,
        "fault latency: pagemesh (daemon) vs a minimal in-process uffd handler and the kernel",
    );
    for (metric, p, b) in &rows {
        report(a.json, "local-fault", metric, "ns", p, b, "lower");
    }
    d.stop();
    Ok(ExitCode::SUCCESS)
}

pub fn create(a: RunsArgs) -> anyhow::Result<ExitCode> {
    let d = PrivateDaemon::start("pagemesh-bench-", &[])?;
    let (mut pm, mut base) = (Vec::new(), Vec::new());
    for run in 0..a.runs.max(1) {
        let name = format!("tib{run}");
        let t = Instant::now();
        d.client
            .create_segment(&name, Some(1 << 40), Backing::Zero)?;
        let m = d.client.attach(&name)?;
        let mut b = [0u8; 8];
        m.read_at(0, &mut b)?;
        pm.push(t.elapsed().as_secs_f64() * 1e3);
        drop(m);
        d.client.remove_segment(&name)?;
        // Baseline: the kernel's own O(1) creation, a 1 TiB MAP_NORESERVE mapping and a touch.
        let t = Instant::now();
        let map = SharedMapping::anonymous(1 << 40)?;
        map.read_at(0, &mut b);
        base.push(t.elapsed().as_secs_f64() * 1e3);
    }
    header(
        a.json,
        "create a 1 TiB segment, attach it and touch its first page (target < 10 ms)",
    );
    report(
        a.json,
        "create",
        "1tib_create_attach_touch_vs_kernel_mmap",
        "ms",
        &pm,
        &base,
        "lower",
    );
    d.stop();
    Ok(ExitCode::SUCCESS)
}

/// Faults per second with `threads` client threads touching disjoint strided pages.
fn throughput(d: &PrivateDaemon, name: &str, faults: u64, threads: u64) -> anyhow::Result<f64> {
    d.client
        .create_segment(name, Some(faults * STRIDE_PAGES * PS), Backing::Zero)?;
    let m = d.client.attach(name)?;
    let per = faults / threads;
    let done = AtomicU64::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for k in 0..threads {
            let (m, done) = (&m, &done);
            s.spawn(move || {
                let mut b = [0u8; 8];
                for i in 0..per {
                    let page = (i * threads + k) * STRIDE_PAGES;
                    m.read_at(page * PS, &mut b).expect("in range");
                }
                done.fetch_add(per, Ordering::Relaxed);
            });
        }
    });
    let rate = done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64();
    drop(m);
    d.client.remove_segment(name)?;
    Ok(rate)
}

pub fn scaling(a: RunsArgs) -> anyhow::Result<ExitCode> {
    let mut results: Vec<(String, Vec<f64>, Vec<f64>)> = Vec::new();
    for workers in [1u32, 2] {
        let d = PrivateDaemon::start("pagemesh-bench-", &["--workers", &workers.to_string()])?;
        for threads in [1u64, 2, 4] {
            let (mut pm, mut base) = (Vec::new(), Vec::new());
            for run in 0..a.runs.max(1) {
                // Baseline in the same run: 1 client thread on this daemon.
                base.push(throughput(&d, &format!("b{threads}-{run}"), a.faults, 1)?);
                pm.push(throughput(
                    &d,
                    &format!("s{threads}-{run}"),
                    a.faults * threads,
                    threads,
                )?);
            }
            results.push((
                format!("faults_per_s_{threads}_threads_{workers}_workers_vs_1_thread"),
                pm,
                base,
            ));
        }
        d.stop();
        std::thread::sleep(Duration::from_millis(50));
    }
    header(a.json, "dormant-fault throughput by client threads and daemon fault workers (baseline: 1 client thread, same daemon)");
    for (metric, p, b) in &results {
        report(a.json, "scaling", metric, "1/s", p, b, "higher");
    }
    Ok(ExitCode::SUCCESS)
}

/// The file the `scan` benches read: `size` rounded up to whole MiB of a fixed byte pattern;
/// its path and real size.
fn scan_file(d: &PrivateDaemon, size: u64) -> anyhow::Result<(PathBuf, u64)> {
    let file = d.dir.path().join("scan.dat");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&file)?);
    let chunk: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    for _ in 0..size.div_ceil(1 << 20) {
        f.write_all(&chunk)?;
    }
    f.flush()?;
    drop(f);
    let size = std::fs::metadata(&file)?.len();
    Ok((file, size))
}

/// Drop `file` from the kernel's page cache, so that the next read of it is cold.
fn drop_cache(file: &Path) -> anyhow::Result<()> {
    drop_cached(&std::fs::File::open(file)?, 0, 0)?;
    Ok(())
}

fn create_file_segment(
    d: &PrivateDaemon,
    name: &str,
    size: Option<u64>,
    file: &Path,
) -> anyhow::Result<()> {
    d.client.create_segment(
        name,
        size,
        Backing::File {
            path: file.display().to_string(),
        },
    )?;
    Ok(())
}

/// One cold sequential read of the whole file, by a `memtest --sha256` process through a file
/// segment and by a `bench mmap-hash` process through the kernel's mmap; MB/s of each.
fn sequential_scan(
    d: &PrivateDaemon,
    file: &Path,
    size: u64,
    run: usize,
) -> anyhow::Result<(f64, f64)> {
    let name = format!("scan{run}");
    create_file_segment(d, &name, None, file)?;
    drop_cache(file)?;
    let t = Instant::now();
    wait_all(
        vec![spawn(
            &d.socket,
            &["memtest".into(), name.clone(), "--sha256".into()],
            "scan".into(),
        )?],
        Duration::from_secs(600),
    )?;
    let pm = size as f64 / t.elapsed().as_secs_f64() / 1e6;
    d.client.remove_segment(&name)?;
    drop_cache(file)?;
    let t = Instant::now();
    let args = [
        "bench".into(),
        "mmap-hash".into(),
        file.display().to_string(),
    ];
    wait_all(
        vec![spawn(&d.socket, &args, "mmap scan".into())?],
        Duration::from_secs(600),
    )?;
    let base = size as f64 / t.elapsed().as_secs_f64() / 1e6;
    Ok((pm, base))
}

/// Random 8-byte reads at `offsets` in this process: through an attached segment, and
/// through the kernel's mmap of the same file; both cold. Reads per second of each.
fn random_reads(
    d: &PrivateDaemon,
    file: &Path,
    size: u64,
    offsets: &[u64],
    run: usize,
) -> anyhow::Result<(f64, f64)> {
    let name = format!("rand{run}");
    create_file_segment(d, &name, None, file)?;
    drop_cache(file)?;
    let m = d.client.attach(&name)?;
    let mut b = [0u8; 8];
    let t = Instant::now();
    for &o in offsets {
        m.read_at(o, &mut b)?;
    }
    let pm = offsets.len() as f64 / t.elapsed().as_secs_f64();
    drop(m);
    d.client.remove_segment(&name)?;
    drop_cache(file)?;
    let f = std::fs::File::open(file)?;
    let map = ReadOnlyMapping::map(f.as_fd(), size as usize)?;
    let t = Instant::now();
    for &o in offsets {
        map.read_at(o as usize, &mut b);
    }
    let base = offsets.len() as f64 / t.elapsed().as_secs_f64();
    Ok((pm, base))
}

/// Write every page of a new `size`-byte file, then make it durable: through a file segment
/// and its sync, against a shared mapping and msync(MS_SYNC). MB/s of each.
fn write_then_sync(d: &PrivateDaemon, size: u64, run: usize) -> anyhow::Result<(f64, f64)> {
    let pages = size / PS;
    let seg_file = d.dir.path().join(format!("w{run}.dat"));
    let name = format!("w{run}");
    create_file_segment(d, &name, Some(size), &seg_file)?;
    let m = d.client.attach(&name)?;
    let t = Instant::now();
    for p in 0..pages {
        m.write_at(p * PS, &p.to_le_bytes())?;
    }
    m.sync()?;
    let pm = size as f64 / t.elapsed().as_secs_f64() / 1e6;
    drop(m);
    d.client.remove_segment(&name)?;
    let base_file = d.dir.path().join(format!("b{run}.dat"));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&base_file)?;
    f.set_len(size)?;
    let map = SharedMapping::map(f.as_fd(), size as usize)?;
    let t = Instant::now();
    for p in 0..pages {
        map.write_at((p * PS) as usize, &p.to_le_bytes());
    }
    map.msync()?;
    let base = size as f64 / t.elapsed().as_secs_f64() / 1e6;
    drop(map);
    let _ = std::fs::remove_file(&seg_file);
    let _ = std::fs::remove_file(&base_file);
    Ok((pm, base))
}

/// File segments against the kernel's mmap of the same file: a cold sequential scan (the file
/// dropped from the kernel's page cache before every run; MB/s), cold random page reads, and
/// writing every page then syncing.
pub fn scan(a: RunsArgs, size: u64) -> anyhow::Result<ExitCode> {
    let d = PrivateDaemon::start("pagemesh-bench-", &[])?;
    let (file, size) = scan_file(&d, size)?;
    let runs = a.runs.max(1);
    let (mut pm, mut base) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let (p, b) = sequential_scan(&d, &file, size, run)?;
        pm.push(p);
        base.push(b);
    }
    let (mut rp, mut rb) = (Vec::new(), Vec::new());
    let offsets: Vec<u64> = (0..RANDOM_READS)
        .map(|i| crate::memtest::splitmix64(i) % (size / PS) * PS)
        .collect();
    for run in 0..runs {
        let (p, b) = random_reads(&d, &file, size, &offsets, run)?;
        rp.push(p);
        rb.push(b);
    }
    let (mut wp, mut wb) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let (p, b) = write_then_sync(&d, size, run)?;
        wp.push(p);
        wb.push(b);
    }
    header(
        a.json,
        "file segments vs the kernel's mmap of the same file (cold cache for reads)",
    );
    let rows = [
        ("cold_sequential_read_vs_kernel_mmap", "MB/s", &pm, &base),
        ("cold_random_page_reads_vs_kernel_mmap", "1/s", &rp, &rb),
        ("write_all_then_sync_vs_mmap_msync", "MB/s", &wp, &wb),
    ];
    for (metric, unit, p, b) in rows {
        report(a.json, "scan", metric, unit, p, b, "higher");
    }
    d.stop();
    Ok(ExitCode::SUCCESS)
}

/// Random page reads per `scan` run.
const RANDOM_READS: u64 = 4096;
