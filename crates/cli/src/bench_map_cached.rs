//! `pagemesh bench map-cached`: what a new process pays to write pages that are already in a
//! segment's memfd, under three registrations of its mapping, all in this one process (no
//! daemon, no sockets):
//!
//! - **kernel**: a plain shared mapping of the memfd, no uffd: the kernel maps each cached
//!   shmem page on its own fault;
//! - **minor-run**: registered `MINOR | WP`, a handler thread answering each minor fault with
//!   one `UFFDIO_CONTINUE` (writable) of the rest of the faulting page's 2 MiB-aligned block,
//!   and of the block's start without waking: what pagemesh does today at best (writable
//!   fault-around over Dirty pages, one trip per 2 MiB);
//! - **wp-async**: registered `MISSING | WP` on a uffd with `UFFD_FEATURE_WP_ASYNC`, the
//!   whole mapping write-protected on attach ("arm"): the kernel maps present pages itself and
//!   resolves each first write silently; a handler thread still watches the uffd and fails the
//!   bench if any message arrives. After the rewrite one `PAGEMAP_SCAN` collects the written
//!   pages and write-protects them again ("scan"), as a sync or eviction would; it must find
//!   exactly the pages written.
//!
//! Each run rewrites the memfd whole through a fresh mapping of each case in turn (kernel,
//! minor-run, wp-async), writing every word of every page (`memtest::write_words`), so the
//! ratios are medians of same-run ratios; then reads every word the same way (a scan after the
//! wp-async read must find no page written). Then each case takes `--faults` single-word
//! writes to distinct random pages of a fresh mapping, each timed alone (p50); here the
//! minor-run handler maps only the faulting page, as pagemesh's runs do for a random access.

use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use anyhow::{bail, Context};
use clap::Args;
use pagemesh_types::ByteSize;
use pagemesh_uffd::fault::{install, Source};
use pagemesh_uffd::{
    features, FaultKind, Memfd, Pagemap, Protect, Rearm, RegisterMode, SharedMapping, Uffd, Wake,
    PAGE_SIZE,
};

use crate::bench_baseline::serve_faults;
use crate::bench_report::{header, pct, report_pairs};
use crate::memtest::{pattern, write_words};
use crate::parse_size;

const PS: u64 = PAGE_SIZE as u64;
/// The minor-run handler's block: 512 pages.
const RUN_BYTES: u64 = 2 << 20;
const FILL_SEED: u64 = 5;

#[derive(Args)]
pub struct MapCachedBench {
    /// Repetitions (each one every case, back to back).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Size of the memfd rewritten whole per case.
    #[arg(long, value_parser = parse_size, default_value = "1GiB")]
    pub size: u64,
    /// Single-page writes timed per case and run.
    #[arg(long, default_value_t = 2000)]
    pub faults: usize,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// How a fresh mapping of the memfd is registered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Case {
    Kernel,
    MinorRun,
    WpAsync,
}

/// What one case's handler thread saw.
#[derive(Default)]
struct Counts {
    faults: AtomicU64,
    /// Messages the case should never raise, or faults that could not be answered.
    failed: AtomicU64,
}

/// A fresh mapping of the memfd and, unless `Case::Kernel`, its registered uffd.
struct Attached<'a> {
    map: &'a SharedMapping,
    uffd: Option<&'a Uffd>,
}

/// Map the memfd afresh (as a new process would), register it for `case`, serve its faults on
/// a thread of their own (one page per minor fault, or `run_bytes` blocks) while `work` runs,
/// and return `work`'s result and the faults served.
fn with_mapping<R>(
    memfd: &Memfd,
    size: u64,
    case: Case,
    run_bytes: u64,
    work: impl FnOnce(&Attached<'_>) -> anyhow::Result<R>,
) -> anyhow::Result<(R, u64)> {
    let map = SharedMapping::map(memfd.as_fd(), size as usize)?;
    let (wanted, modes) = match case {
        Case::Kernel => {
            return Ok((
                work(&Attached {
                    map: &map,
                    uffd: None,
                })?,
                0,
            ))
        }
        Case::MinorRun => (
            features::PAGEMESH,
            RegisterMode::MINOR.union(RegisterMode::WP),
        ),
        Case::WpAsync => (
            features::PAGEMESH | u64::from(features::WP_ASYNC),
            RegisterMode::MISSING.union(RegisterMode::WP),
        ),
    };
    let (uffd, _) = Uffd::open(wanted).with_context(|| format!("uffd for {case:?}"))?;
    uffd.register_mapping(&map, modes)
        .with_context(|| format!("registering {case:?}"))?;
    let counts = Counts::default();
    let stop = AtomicBool::new(false);
    let out = std::thread::scope(|s| {
        s.spawn(|| {
            serve_faults(&uffd, &stop, |address, kind| {
                on_fault(&uffd, &map, case, run_bytes, &counts, address, kind)
            })
        });
        let at = Attached {
            map: &map,
            uffd: Some(&uffd),
        };
        let out = work(&at);
        stop.store(true, Ordering::Relaxed);
        out
    });
    let failed = counts.failed.load(Ordering::Relaxed);
    if failed > 0 {
        bail!("{case:?}: {failed} fault(s) the case should not raise or could not answer");
    }
    Ok((out?, counts.faults.load(Ordering::Relaxed)))
}

/// The handler: a minor fault of `Case::MinorRun` maps the rest of its block writable (waking)
/// and then the block's start (not waking). Anything else is a failure of the case: it is
/// counted and the whole range unregistered, which wakes the faulting thread into the kernel's
/// own handling, so no thread is left waiting.
fn on_fault(
    uffd: &Uffd,
    map: &SharedMapping,
    case: Case,
    run_bytes: u64,
    counts: &Counts,
    address: u64,
    kind: FaultKind,
) {
    counts.faults.fetch_add(1, Ordering::Relaxed);
    let (base, end) = (map.addr(), map.addr() + map.len() as u64);
    let addr = address & !(PS - 1);
    let served = match (case, kind) {
        (Case::MinorRun, FaultKind::Minor) => {
            let block = (addr & !(run_bytes - 1)).max(base);
            let block_end = (block + run_bytes).min(end);
            let r = install(
                uffd,
                addr,
                block_end - addr,
                Source::PageCache,
                Protect::Writable,
                Wake::Yes,
            );
            if addr > block {
                let _ = install(
                    uffd,
                    block,
                    addr - block,
                    Source::PageCache,
                    Protect::Writable,
                    Wake::No,
                );
            }
            r.is_ok()
        }
        _ => false,
    };
    if !served {
        counts.failed.fetch_add(1, Ordering::Relaxed);
        let _ = uffd.unregister(base, map.len() as u64);
    }
}

fn timed(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

/// A whole pass over the memfd: write `seed`'s pattern into every word, or read every word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pass {
    Write { seed: u64 },
    Read,
}

/// One case's pass: its seconds, for `Case::WpAsync` the arm and scan seconds, the faults its
/// handler served, and for a read the wrapping sum of the words.
#[derive(Default)]
struct Timed {
    secs: f64,
    arm_secs: f64,
    scan_secs: f64,
    faults: u64,
    sum: u64,
}

fn run_pass(words: &[AtomicU64], pass: Pass) -> u64 {
    match pass {
        Pass::Write { seed } => {
            write_words(words, 0, words.len(), seed, 1);
            0
        }
        Pass::Read => words
            .iter()
            .fold(0u64, |s, w| s.wrapping_add(w.load(Ordering::Relaxed))),
    }
}

/// `pass` over the whole memfd through a fresh mapping registered for `case`. Under wp-async
/// the mapping is armed first, and a scan afterwards must find every page written after a
/// write pass and none after a read pass.
fn whole_pass(memfd: &Memfd, size: u64, case: Case, pass: Pass) -> anyhow::Result<Timed> {
    let (mut r, faults) = with_mapping(memfd, size, case, RUN_BYTES, |at| {
        let mut r = Timed::default();
        let words = at.map.atomics_u64();
        let Some(uffd) = at.uffd.filter(|_| case == Case::WpAsync) else {
            r.secs = timed(|| r.sum = run_pass(words, pass));
            return Ok(r);
        };
        let (base, len) = (at.map.addr(), size);
        let mut armed = Ok(());
        r.arm_secs = timed(|| armed = uffd.write_protect(base, len, Protect::ReadOnly, Wake::No));
        armed.context("write-protecting the whole mapping")?;
        r.secs = timed(|| r.sum = run_pass(words, pass));
        let pagemap = Pagemap::open_self()?;
        let mut ranges = Vec::new();
        let t = Instant::now();
        let found = pagemap.collect_written(base, len, Rearm::Yes, &mut ranges)?;
        r.scan_secs = t.elapsed().as_secs_f64();
        // Every page written, or none: the ranges are within the mapping, so a count alone
        // says it.
        let want = match pass {
            Pass::Write { .. } => size / PS,
            Pass::Read => 0,
        };
        if found != want {
            bail!(
                "PAGEMAP_SCAN found {found} written pages in {} range(s) after {pass:?} of {} pages",
                ranges.len(),
                size / PS
            );
        }
        let again = pagemap.collect_written(base, len, Rearm::No, &mut Vec::new())?;
        if again != 0 {
            bail!("{again} pages still written after the scan re-armed them");
        }
        Ok(r)
    })?;
    r.faults = faults;
    if let Pass::Write { seed } = pass {
        check_memfd(memfd, size, seed)?;
    }
    Ok(r)
}

/// The rewrite reached the memfd: one word in each of 64 pages spread over it.
fn check_memfd(memfd: &Memfd, size: u64, seed: u64) -> anyhow::Result<()> {
    let pages = size / PS;
    for i in 0..64 {
        let off = (i * pages / 64 + i % 7) * PS + (i % 512) * 8;
        let mut b = [0u8; 8];
        memfd.read_exact_at(&mut b, off)?;
        if u64::from_ne_bytes(b) != pattern(seed, off) {
            bail!("the memfd does not hold the rewrite at offset {off:#x}");
        }
    }
    Ok(())
}

/// `n` distinct pages of `pages`, chosen by `seed`.
fn random_pages(pages: u64, n: usize, seed: u64) -> Vec<u64> {
    let mut seen = std::collections::HashSet::with_capacity(n);
    (0u64..)
        .map(|i| pattern(seed, i * 8) % pages)
        .filter(|p| seen.insert(*p))
        .take(n)
        .collect()
}

/// One word written to each of `pages` through a fresh mapping registered for `case` (armed
/// first, untimed, for `Case::WpAsync`); each write's latency in ns.
fn touches(memfd: &Memfd, size: u64, case: Case, pages: &[u64]) -> anyhow::Result<Vec<f64>> {
    let (lat, _) = with_mapping(memfd, size, case, PS, |at| {
        if let Some(uffd) = at.uffd.filter(|_| case == Case::WpAsync) {
            uffd.write_protect(at.map.addr(), size, Protect::ReadOnly, Wake::No)?;
        }
        let words = at.map.atomics_u64();
        let lat = pages
            .iter()
            .map(|&p| {
                let w = &words[(p * PS / 8) as usize];
                let t = Instant::now();
                w.store(p, Ordering::Relaxed);
                t.elapsed().as_nanos() as f64
            })
            .collect();
        Ok(lat)
    })?;
    Ok(lat)
}

/// The figures of one run.
struct Figures {
    kernel_mbps: f64,
    minor_mbps: f64,
    wp_mbps: f64,
    /// The wp-async rewrite with its arm and scan counted in.
    wp_all_mbps: f64,
    arm_ms: f64,
    scan_ms: f64,
    kernel_ms: f64,
    touch_kernel_ns: f64,
    touch_minor_ns: f64,
    touch_wp_ns: f64,
    minor_faults: u64,
    read_kernel_mbps: f64,
    read_minor_mbps: f64,
    read_wp_mbps: f64,
}

fn one_run(memfd: &Memfd, size: u64, faults: usize, run: u64) -> anyhow::Result<Figures> {
    let seed = 100 + run;
    let write = |seed| Pass::Write { seed };
    let k = whole_pass(memfd, size, Case::Kernel, write(seed))?;
    let m = whole_pass(memfd, size, Case::MinorRun, write(seed + 1000))?;
    let w = whole_pass(memfd, size, Case::WpAsync, write(seed + 2000))?;
    let rk = whole_pass(memfd, size, Case::Kernel, Pass::Read)?;
    let rm = whole_pass(memfd, size, Case::MinorRun, Pass::Read)?;
    let rw = whole_pass(memfd, size, Case::WpAsync, Pass::Read)?;
    if w.faults + rw.faults != 0 {
        bail!("wp-async: {} messages", w.faults + rw.faults);
    }
    if rk.sum != rm.sum || rk.sum != rw.sum {
        bail!("the read passes disagree on the memfd's contents");
    }
    let pages = random_pages(size / PS, faults, seed);
    let mut tk = touches(memfd, size, Case::Kernel, &pages)?;
    let mut tm = touches(memfd, size, Case::MinorRun, &pages)?;
    let mut tw = touches(memfd, size, Case::WpAsync, &pages)?;
    let mbps = |secs: f64| size as f64 / secs.max(1e-9) / 1e6;
    Ok(Figures {
        kernel_mbps: mbps(k.secs),
        minor_mbps: mbps(m.secs),
        wp_mbps: mbps(w.secs),
        wp_all_mbps: mbps(w.secs + w.arm_secs + w.scan_secs),
        arm_ms: w.arm_secs * 1e3,
        scan_ms: w.scan_secs * 1e3,
        kernel_ms: k.secs * 1e3,
        touch_kernel_ns: pct(&mut tk, 0.5),
        touch_minor_ns: pct(&mut tm, 0.5),
        touch_wp_ns: pct(&mut tw, 0.5),
        minor_faults: m.faults,
        read_kernel_mbps: mbps(rk.secs),
        read_minor_mbps: mbps(rm.secs),
        read_wp_mbps: mbps(rw.secs),
    })
}

pub fn map_cached(a: MapCachedBench) -> anyhow::Result<ExitCode> {
    let size = a.size / RUN_BYTES * RUN_BYTES;
    if a.runs == 0 || size == 0 || a.faults == 0 || a.faults as u64 * 4 > size / PS {
        bail!("--runs and --faults must be positive, --size at least 2MiB and 4 pages per fault");
    }
    let memfd = Memfd::create("bench-map-cached", size)?;
    {
        let fill = SharedMapping::map(memfd.as_fd(), size as usize)?;
        write_words(fill.atomics_u64(), 0, size as usize / 8, FILL_SEED, 1);
    }
    if memfd.resident_bytes()? < size {
        bail!(
            "the memfd holds {} of {size} bytes after the fill",
            memfd.resident_bytes()?
        );
    }
    let mut figs: Vec<Figures> = Vec::with_capacity(a.runs);
    for run in 0..a.runs {
        let f = one_run(&memfd, size, a.faults, run as u64)?;
        if !a.json {
            eprintln!(
                "run {}/{} done: minor-run took {} faults; wp-async none, its scan found every page",
                run + 1,
                a.runs,
                f.minor_faults
            );
        }
        figs.push(f);
    }
    report_all(&a, size, &figs);
    Ok(ExitCode::SUCCESS)
}

fn report_all(a: &MapCachedBench, size: u64, figs: &[Figures]) {
    let col = |f: fn(&Figures) -> f64| figs.iter().map(f).collect::<Vec<_>>();
    let kernel = col(|f| f.kernel_mbps);
    let (minor, wp) = (col(|f| f.minor_mbps), col(|f| f.wp_mbps));
    header(
        a.json,
        &format!(
            "{} of cached memfd pages rewritten whole by a fresh mapping: minor-run (MINOR|WP, \
             CONTINUE of 2 MiB per fault) and wp-async (MISSING|WP + WP_ASYNC, PAGEMAP_SCAN) vs \
             the kernel's plain mapping; MB/s, arm and scan ms vs the kernel's rewrite ms, then a \
             read of every word by a fresh mapping",
            ByteSize(size)
        ),
    );
    let rows = [
        (
            "rewrite_minor_run_vs_kernel",
            "MB/s",
            &minor,
            &kernel,
            "higher",
        ),
        ("rewrite_wp_async_vs_kernel", "MB/s", &wp, &kernel, "higher"),
        (
            "rewrite_wp_async_vs_minor_run",
            "MB/s",
            &wp,
            &minor,
            "higher",
        ),
        (
            "rewrite_async_arm_scan_vs_kernel",
            "MB/s",
            &col(|f| f.wp_all_mbps),
            &kernel,
            "higher",
        ),
        (
            "arm_wp_async_vs_kernel_rewrite",
            "ms",
            &col(|f| f.arm_ms),
            &col(|f| f.kernel_ms),
            "lower",
        ),
        (
            "scan_rearm_vs_kernel_rewrite",
            "ms",
            &col(|f| f.scan_ms),
            &col(|f| f.kernel_ms),
            "lower",
        ),
    ];
    let (read_k, read_m) = (col(|f| f.read_kernel_mbps), col(|f| f.read_minor_mbps));
    let read_w = col(|f| f.read_wp_mbps);
    let reads = [
        (
            "read_minor_run_vs_kernel",
            "MB/s",
            &read_m,
            &read_k,
            "higher",
        ),
        (
            "read_wp_async_vs_kernel",
            "MB/s",
            &read_w,
            &read_k,
            "higher",
        ),
        (
            "read_wp_async_vs_minor_run",
            "MB/s",
            &read_w,
            &read_m,
            "higher",
        ),
    ];
    for (metric, unit, p, base, better) in rows.into_iter().chain(reads) {
        report_pairs(a.json, "map-cached", metric, unit, p, base, better);
    }
    report_touches(a, figs);
}

fn report_touches(a: &MapCachedBench, figs: &[Figures]) {
    let col = |f: fn(&Figures) -> f64| figs.iter().map(f).collect::<Vec<_>>();
    header(
        a.json,
        &format!(
            "one word written to each of {} random cached pages of a fresh mapping (minor-run \
             maps the faulting page only); p50 ns per write",
            a.faults
        ),
    );
    let (tk, tm, tw) = (
        col(|f| f.touch_kernel_ns),
        col(|f| f.touch_minor_ns),
        col(|f| f.touch_wp_ns),
    );
    let rows = [
        ("touch_p50_minor_vs_kernel", &tm, &tk),
        ("touch_p50_wp_async_vs_kernel", &tw, &tk),
        ("touch_p50_wp_async_vs_minor", &tw, &tm),
    ];
    for (metric, p, base) in rows {
        report_pairs(a.json, "map-cached", metric, "ns", p, base, "lower");
    }
}
