//! `pagemesh memtest`: a deterministic pattern written and checked through the mapped memory,
//! so every access is a real page fault served by the daemon.
//!
//! The pattern: the little-endian `u64` at byte offset `o` (8-aligned) is
//! `splitmix64(SEED.wrapping_add(o / 8))`.

use std::path::Path;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use pagemesh::{Client, Mapping};
use pagemesh_types::ByteSize;
use sha2::{Digest, Sha256};

use crate::parse_size;

#[derive(Args)]
#[command(group(clap::ArgGroup::new("op").required(true).args(["write", "verify", "increment", "sha256", "watch_ms"])))]
pub struct MemtestArgs {
    /// Segment name.
    pub name: String,
    /// Write the pattern for SEED.
    #[arg(long, value_name = "SEED")]
    pub write: Option<u64>,
    /// Verify the pattern for SEED; exit 1 and print the first bad offset on mismatch.
    #[arg(long, value_name = "SEED")]
    pub verify: Option<u64>,
    /// Do N atomic fetch_add(1) on the u64 at --offset.
    #[arg(long, value_name = "N")]
    pub increment: Option<u64>,
    /// Print the SHA-256 of the range as read through the mapping.
    #[arg(long)]
    pub sha256: bool,
    /// Read the u64 at --offset about every millisecond for MS ms, printing one line per read:
    /// `START_NS END_NS VALUE` (CLOCK_MONOTONIC when the read began and ended).
    #[arg(long, value_name = "MS")]
    pub watch_ms: Option<u64>,
    /// Start of the range (8-aligned for patterns).
    #[arg(long, value_parser = parse_size, default_value = "0")]
    pub offset: u64,
    /// Length of the range (default: to the end of the segment).
    #[arg(long, value_parser = parse_size)]
    pub len: Option<u64>,
    /// Threads that share the work.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// Run --verify or --sha256 this many times (a soak test; stops at the first failure).
    #[arg(long, default_value_t = 1)]
    pub repeat: u64,
    /// Pause between repetitions.
    #[arg(long, default_value_t = 0)]
    pub pause_ms: u64,
}

/// The standard splitmix64 finaliser.
pub fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The pattern word at byte offset `o`.
pub fn pattern(seed: u64, o: u64) -> u64 {
    splitmix64(seed.wrapping_add(o / 8))
}

/// Split word indices `[lo, hi)` into `n` contiguous parts.
fn parts(lo: usize, hi: usize, n: usize) -> Vec<(usize, usize)> {
    let n = n.max(1);
    let per = (hi - lo).div_ceil(n);
    (0..n)
        .map(|i| (lo + i * per, (lo + (i + 1) * per).min(hi)))
        .filter(|(a, b)| a < b)
        .collect()
}

fn rate(bytes: u64, secs: f64) -> String {
    format!("{:.0} MB/s", bytes as f64 / secs.max(1e-9) / 1e6)
}

/// The length of the range `a` names in a segment of `size` bytes, or why it is outside.
fn range_len(a: &MemtestArgs, size: u64) -> anyhow::Result<u64> {
    if a.offset > size {
        usage!(
            "offset {} is past the end of segment {} ({})",
            a.offset,
            a.name,
            ByteSize(size)
        );
    }
    let len = a.len.unwrap_or(size - a.offset);
    if a.offset.checked_add(len).is_none_or(|end| end > size) {
        usage!(
            "range {}+{} is outside segment {} ({})",
            a.offset,
            len,
            a.name,
            ByteSize(size)
        );
    }
    Ok(len)
}

/// Before every repetition but the first, `--pause-ms`.
fn pause_before(rep: u64, a: &MemtestArgs) {
    if rep > 0 {
        std::thread::sleep(std::time::Duration::from_millis(a.pause_ms));
    }
}

pub fn run(socket: &Path, a: MemtestArgs) -> anyhow::Result<ExitCode> {
    let client = Client::connect(socket)?;
    // What only reads (one operation per run) attaches read-only, so read permission on the
    // segment is enough; cluster segments cannot be attached read-only yet (the node's own
    // catalog says which it is: no round trip to a home).
    let reads = a.verify.is_some() || a.sha256 || a.watch_ms.is_some();
    let local = || {
        client
            .list_segments()
            .map(|l| l.iter().any(|s| s.name == a.name && s.home.is_none()))
    };
    let m = if reads && local()? {
        client.attach_read_only(&a.name)
    } else {
        client.attach(&a.name)
    }
    .with_context(|| format!("attaching segment {}", a.name))?;
    pagemesh_uffd::sigbus::report_sigbus_for(m.as_ptr() as u64, m.len() as u64)?;
    let len = range_len(&a, m.len() as u64)?;
    if let Some(n) = a.increment {
        return increment(&m, &a, n);
    }
    if a.sha256 {
        return sha256(&m, &a, len);
    }
    if let Some(ms) = a.watch_ms {
        return watch(&m, &a, ms);
    }
    if !a.offset.is_multiple_of(8) || !len.is_multiple_of(8) {
        usage!("--offset and --len must be multiples of 8 for --write/--verify");
    }
    if let Some(seed) = a.write {
        return write(&m, &a, len, seed);
    }
    let seed = a.verify.expect("clap requires one operation");
    verify(&m, &a, len, seed)
}

/// `--watch-ms MS`: timed reads of one word, each line written out before the next read (a
/// read that ends in SIGBUS leaves every earlier line behind).
fn watch(m: &Mapping, a: &MemtestArgs, ms: u64) -> anyhow::Result<ExitCode> {
    use pagemesh_uffd::clock::monotonic_ns;
    if !a.offset.is_multiple_of(8) {
        usage!("--offset must be 8-aligned for --watch-ms");
    }
    let index = (a.offset / 8) as usize;
    let end = monotonic_ns() + ms * 1_000_000;
    loop {
        let t0 = monotonic_ns();
        if t0 >= end {
            return Ok(ExitCode::SUCCESS);
        }
        let v = m.load_u64(index);
        let t1 = monotonic_ns();
        // Stdout is line-buffered: each line is out before the next read. A reader that went
        // away (`| head -1`) ends the watch quietly (`StdoutClosed`, exit 0).
        crate::stdout::write_bytes(format!("{t0} {t1} {v}\n").as_bytes())?;
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// `--increment N`: N atomic fetch_add(1) of the word at `--offset`, shared by the threads.
fn increment(m: &Mapping, a: &MemtestArgs, n: u64) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    if !a.offset.is_multiple_of(8) {
        usage!("--offset must be 8-aligned for --increment");
    }
    let word = &m.atomics_u64()[(a.offset / 8) as usize];
    let threads = a.threads.max(1) as u64;
    let per: Vec<u64> = (0..threads)
        .map(|i| n / threads + u64::from(i < n % threads))
        .collect();
    std::thread::scope(|s| {
        for k in per {
            s.spawn(move || {
                for _ in 0..k {
                    word.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    let v = word.load(Ordering::SeqCst);
    outln!(
        "memtest: {n} increments of offset {} done in {:.3} s; value now {v}",
        a.offset,
        start.elapsed().as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}

/// `--sha256`: the digest of the range as read through the mapping, once per repetition.
fn sha256(m: &Mapping, a: &MemtestArgs, len: u64) -> anyhow::Result<ExitCode> {
    for rep in 0..a.repeat.max(1) {
        pause_before(rep, a);
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            m.read_at(a.offset + done, &mut buf[..n])?;
            h.update(&buf[..n]);
            done += n as u64;
        }
        let digest: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
        outln!("{digest}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The range's words, as indices into `m.atomics_u64()`.
fn word_range(a: &MemtestArgs, len: u64) -> (usize, usize) {
    ((a.offset / 8) as usize, ((a.offset + len) / 8) as usize)
}

/// The pattern for `seed` into words `[lo, hi)`, `threads` threads each writing a contiguous
/// part (also the kernel baseline of `bench bulk`, so both write the same way).
pub fn write_words(words: &[AtomicU64], lo: usize, hi: usize, seed: u64, threads: usize) {
    std::thread::scope(|s| {
        for (p, q) in parts(lo, hi, threads) {
            s.spawn(move || {
                for (i, w) in words[p..q].iter().enumerate() {
                    w.store(pattern(seed, ((p + i) * 8) as u64), Ordering::Relaxed);
                }
            });
        }
    });
}

/// `--write SEED`: the pattern over the range, the threads each writing a part.
fn write(m: &Mapping, a: &MemtestArgs, len: u64, seed: u64) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let (lo, hi) = word_range(a, len);
    write_words(m.atomics_u64(), lo, hi, seed, a.threads);
    let secs = start.elapsed().as_secs_f64();
    outln!(
        "memtest: wrote {} at offset {} with seed {seed} in {secs:.3} s ({}, {} thread(s))",
        ByteSize(len),
        a.offset,
        rate(len, secs),
        a.threads
    );
    Ok(ExitCode::SUCCESS)
}

/// One check of the pattern over words `[lo, hi)` by `threads` threads: the number of bad
/// words and the byte offset of the first (`u64::MAX` when none).
fn check_pattern(
    load: &(impl Fn(usize) -> u64 + Sync),
    lo: usize,
    hi: usize,
    seed: u64,
    threads: usize,
) -> (u64, u64) {
    let first_bad = AtomicU64::new(u64::MAX);
    let bad = AtomicU64::new(0);
    std::thread::scope(|s| {
        for (p, q) in parts(lo, hi, threads) {
            let (first_bad, bad) = (&first_bad, &bad);
            s.spawn(move || {
                for i in p..q {
                    let o = (i * 8) as u64;
                    if load(i) != pattern(seed, o) {
                        first_bad.fetch_min(o, Ordering::Relaxed);
                        bad.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
    });
    (
        bad.load(Ordering::Relaxed),
        first_bad.load(Ordering::Relaxed),
    )
}

/// `--verify SEED`: check the pattern once per repetition; exit 1 at the first mismatch,
/// naming the first bad offset.
fn verify(m: &Mapping, a: &MemtestArgs, len: u64, seed: u64) -> anyhow::Result<ExitCode> {
    // Loads only: a verify attaches read-only.
    let load = |i: usize| m.load_u64(i);
    let (lo, hi) = word_range(a, len);
    for rep in 0..a.repeat.max(1) {
        pause_before(rep, a);
        let start = Instant::now();
        let (nbad, o) = check_pattern(&load, lo, hi, seed, a.threads);
        let secs = start.elapsed().as_secs_f64();
        if nbad > 0 {
            let found = load((o / 8) as usize);
            outln!(
                "memtest: MISMATCH in segment {}: first bad offset {o} ({o:#x}): expected {:#018x}, found {found:#018x}; {nbad} bad word(s) of {}",
                a.name,
                pattern(seed, o),
                hi - lo
            );
            return Ok(crate::exit::Exit::CheckFailed.code());
        }
        outln!(
            "memtest: verified {} at offset {} with seed {seed} in {secs:.3} s ({}, {} thread(s))",
            ByteSize(len),
            a.offset,
            rate(len, secs),
            a.threads
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitmix64_reference_values() {
        // The first outputs of the reference splitmix64 generator seeded with 0 are
        // splitmix64(0), splitmix64(0x9E3779B97F4A7C15), ...
        assert_eq!(splitmix64(0), 0xE220_A839_7B1D_CDAF);
        assert_eq!(splitmix64(0x9E37_79B9_7F4A_7C15), 0x6E78_9E6A_A1B9_65F4);
        assert_eq!(pattern(7, 16), splitmix64(9));
    }

    #[test]
    fn parts_cover_exactly() {
        let p = parts(3, 103, 4);
        assert_eq!(p.first().unwrap().0, 3);
        assert_eq!(p.last().unwrap().1, 103);
        assert!(p.windows(2).all(|w| w[0].1 == w[1].0));
        assert_eq!(parts(0, 2, 8).len(), 2);
    }
}
