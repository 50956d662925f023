//! `pagemesh bench tls`: what authenticated, encrypted peer links cost. Two 2-node clusters on
//! loopback run side by side, one with TLS links (a fresh cluster CA) and one plaintext; each
//! run measures both, in alternating order, on the same workloads:
//!
//! - remote read faults (p50), as in `bench remote-fault`;
//! - a bulk remote read: one node reads every page of a segment the other node wrote;
//! - ownership ping-pong of one page, as in `bench pingpong`.
//!
//! The baseline is the plaintext cluster: the ratio is TLS's cost.

use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::bail;
use pagemesh::Client;
use pagemesh_daemon::cluster::pki;
use pagemesh_types::NodeId;

use crate::bench_remote::{segment, touch, turns};
use crate::bench_report::{header, pct, report, RunsArgs};
use crate::harness::{start_cluster_with, PrivateDaemon};

const PS: u64 = 4096;

/// One run's figures on one cluster.
struct Figures {
    read_fault_p50_ns: f64,
    bulk_read_mb_s: f64,
    transfers_per_s: f64,
}

pub fn tls(a: RunsArgs, bulk_bytes: u64, secs: f64) -> anyhow::Result<ExitCode> {
    if a.runs == 0 || a.faults < 10 || bulk_bytes < PS {
        bail!("--runs must be positive, --faults at least 10, --size at least a page");
    }
    let ca = tempfile::Builder::new()
        .prefix("pagemesh-bench-ca-")
        .tempdir()?;
    pki::init(ca.path(), pagemesh_daemon::cluster::DEFAULT_CLUSTER_ID)?;
    for n in 1..=2 {
        pki::issue(ca.path(), NodeId(n))?;
    }
    let extra = ["--workers", "1"];
    let secure = start_cluster_with(2, "pagemesh-bench-tls", &extra, Some(ca.path()))?;
    let plain = start_cluster_with(2, "pagemesh-bench-plain", &extra, None)?;
    let (mut t, mut p) = (Vec::new(), Vec::new());
    for run in 0..a.runs {
        // Alternate which goes first, so drift in the machine's speed hits both alike.
        if run % 2 == 0 {
            t.push(measure(&secure, &format!("t{run}"), &a, bulk_bytes, secs)?);
            p.push(measure(&plain, &format!("p{run}"), &a, bulk_bytes, secs)?);
        } else {
            p.push(measure(&plain, &format!("p{run}"), &a, bulk_bytes, secs)?);
            t.push(measure(&secure, &format!("t{run}"), &a, bulk_bytes, secs)?);
        }
    }
    header(
        a.json,
        "tls: two nodes on loopback with TLS 1.3 peer links vs the same with plaintext links",
    );
    let col = |v: &[Figures], f: fn(&Figures) -> f64| v.iter().map(f).collect::<Vec<f64>>();
    report(
        a.json,
        "tls",
        "remote_read_fault_p50_vs_plaintext",
        "ns",
        &col(&t, |f| f.read_fault_p50_ns),
        &col(&p, |f| f.read_fault_p50_ns),
        "lower",
    );
    report(
        a.json,
        "tls",
        "bulk_remote_read_vs_plaintext",
        "MB/s",
        &col(&t, |f| f.bulk_read_mb_s),
        &col(&p, |f| f.bulk_read_mb_s),
        "higher",
    );
    report(
        a.json,
        "tls",
        "ownership_transfers_per_s_vs_plaintext",
        "1/s",
        &col(&t, |f| f.transfers_per_s),
        &col(&p, |f| f.transfers_per_s),
        "higher",
    );
    Ok(ExitCode::SUCCESS)
}

fn measure(
    nodes: &[PrivateDaemon],
    tag: &str,
    a: &RunsArgs,
    bulk_bytes: u64,
    secs: f64,
) -> anyhow::Result<Figures> {
    let (c1, c2) = (
        Client::connect(&nodes[0].socket)?,
        Client::connect(&nodes[1].socket)?,
    );
    // Remote read faults: node 2 writes (holds the pages Modified), node 1 reads.
    let rf = format!("{tag}rf");
    segment(nodes, &rf, a.faults * 2 * PS)?;
    touch(&c2.attach(&rf)?, a.faults, true);
    let mut lat = touch(&c1.attach(&rf)?, a.faults, false);
    // Bulk: every page of a segment node 2 wrote, read in order by node 1.
    let bulk = format!("{tag}bulk");
    segment(nodes, &bulk, bulk_bytes)?;
    let w = c2.attach(&bulk)?;
    let words = w.atomics_u64();
    for p in 0..bulk_bytes / PS {
        words[(p * PS / 8) as usize].store(p + 1, Ordering::Relaxed);
    }
    let r = c1.attach(&bulk)?;
    let words = r.atomics_u64();
    let t = Instant::now();
    for p in 0..bulk_bytes / PS {
        let v = words[(p * PS / 8) as usize].load(Ordering::Relaxed);
        if v != p + 1 {
            bail!("bulk read: page {p} holds {v}, not {}", p + 1);
        }
    }
    let bulk_read_mb_s = bulk_bytes as f64 / 1e6 / t.elapsed().as_secs_f64();
    // Ping-pong of one page.
    let pp = format!("{tag}pp");
    segment(nodes, &pp, PS)?;
    let transfers_per_s = turns(&c1.attach(&pp)?, &c2.attach(&pp)?, secs);
    Ok(Figures {
        read_fault_p50_ns: pct(&mut lat, 0.5),
        bulk_read_mb_s,
        transfers_per_s,
    })
}
