//! `pagemesh bench bulk`: moving many pages at once, each figure against the kernel doing the
//! same in the same run, the two measured back to back in pairs (A B A B ...) and the ratio
//! reported as the median of the pairs' ratios.
//!
//! - first touch: a fresh zero segment written whole by one process (every page dormant)
//!   against the same pattern written into fresh private anonymous memory;
//! - rewrite of cached pages: a second process writes the same segment again (every page is in
//!   the node's page cache, not yet mapped in this process), against the same kernel first
//!   touch.
//!
//! - first touch through a non-home node: a fresh zero *cluster* segment homed on node 1 of a
//!   two-node cluster on loopback, written whole by a process on node 2 (every page a dormant
//!   page of another node's), against the local first touch of the same run (at most 64 MiB:
//!   it is slow, see docs/benchmarks.md).
//!
//! Both sides write with `memtest`'s loop (`memtest::write_words`) in a process of their own,
//! and each process times only its writing loop.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pagemesh::{Backing, Client};
use pagemesh_types::ByteSize;
use pagemesh_uffd::SharedMapping;

use crate::bench_report::{header, report_pairs};
use crate::harness::{spawn, start_cluster, wait_all, PrivateDaemon};
use crate::memtest::write_words;

const SEED: u64 = 77;
const CASE_TIMEOUT: Duration = Duration::from_secs(600);

/// (hidden `bench touch`) Write the pattern over a whole segment, or over `anon_bytes` of fresh
/// private anonymous memory, and print the seconds the writing took.
pub fn touch(socket: &Path, segment: Option<&str>, anon_bytes: Option<u64>) -> anyhow::Result<()> {
    let secs = match (segment, anon_bytes) {
        (Some(name), None) => {
            let client = Client::connect(socket)?;
            let m = client
                .attach(name)
                .with_context(|| format!("attaching segment {name}"))?;
            timed(|| write_words(m.atomics_u64(), 0, m.len() / 8, SEED, 1))
        }
        (None, Some(n)) => {
            let map = SharedMapping::anonymous(n as usize)?;
            timed(|| write_words(map.atomics_u64(), 0, n as usize / 8, SEED, 1))
        }
        _ => bail!("give exactly one of --segment and --anon-bytes"),
    };
    outln!("{secs}");
    Ok(())
}

fn timed(f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_secs_f64()
}

/// MB/s of one `bench touch` process with `args`.
fn touch_rate(d: &PrivateDaemon, args: &[&str], size: u64) -> anyhow::Result<f64> {
    let mut argv = vec!["bench".to_string(), "touch".to_string()];
    argv.extend(args.iter().map(|s| s.to_string()));
    let p = spawn(&d.socket, &argv, format!("bench touch {}", args.join(" ")))?;
    let out = wait_all(vec![p], CASE_TIMEOUT)?;
    let secs: f64 = out[0]
        .trim()
        .parse()
        .with_context(|| format!("bench touch printed {:?}", out[0]))?;
    Ok(size as f64 / secs.max(1e-9) / 1e6)
}

pub fn bulk(runs: usize, size: u64, json: bool) -> anyhow::Result<ExitCode> {
    if runs == 0 || size < (1 << 20) {
        bail!("--runs must be positive and --size at least 1MiB");
    }
    let size = size / 4096 * 4096;
    let d = PrivateDaemon::start("pagemesh-bench-", &[])?;
    let cluster = start_cluster(2, "pagemesh-bench-bulk", &[])?;
    let remote_size = size.min(64 << 20);
    let (mut kernel, mut first, mut rewrite) = (Vec::new(), Vec::new(), Vec::new());
    let (mut local, mut remote) = (Vec::new(), Vec::new());
    let bytes = size.to_string();
    for run in 0..runs {
        let name = format!("bulk{run}");
        kernel.push(touch_rate(&d, &["--anon-bytes", &bytes], size)?);
        d.client.create_segment(&name, Some(size), Backing::Zero)?;
        first.push(touch_rate(&d, &["--segment", &name], size)?);
        rewrite.push(touch_rate(&d, &["--segment", &name], size)?);
        d.client.remove_segment(&name)?;
        // The same size both ways for the cluster pair: local first touch, then through node 2.
        let small = format!("bulk{run}s");
        d.client
            .create_segment(&small, Some(remote_size), Backing::Zero)?;
        local.push(touch_rate(&d, &["--segment", &small], remote_size)?);
        d.client.remove_segment(&small)?;
        let far = format!("far{run}");
        cluster[1].client.create_cluster_segment(
            &far,
            Some(remote_size),
            Backing::Zero,
            Some(1),
        )?;
        remote.push(touch_rate(&cluster[1], &["--segment", &far], remote_size)?);
        cluster[1].client.remove_segment(&far)?;
        if !json {
            eprintln!("run {}/{runs} done", run + 1);
        }
    }
    header(
        json,
        &format!(
            "{} written whole by one process: a fresh zero segment, then again by a new process \
             (pages cached), vs the kernel's first touch of private anonymous memory; MB/s",
            ByteSize(size)
        ),
    );
    let rows = [
        ("first_touch_write_vs_kernel_anon", &first),
        ("rewrite_cached_vs_kernel_anon_first_touch", &rewrite),
    ];
    for (metric, pm) in rows {
        report_pairs(json, "bulk", metric, "MB/s", pm, &kernel, "higher");
    }
    header(
        json,
        &format!(
            "{} of a fresh zero cluster segment homed on node 1, written whole by a process on \
             node 2 of two on loopback, vs the same size written locally; MB/s",
            ByteSize(remote_size)
        ),
    );
    report_pairs(
        json,
        "bulk",
        "cluster_first_touch_write_vs_local_first_touch",
        "MB/s",
        &remote,
        &local,
        "higher",
    );
    d.stop();
    for n in cluster {
        n.stop();
    }
    Ok(ExitCode::SUCCESS)
}
