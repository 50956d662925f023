//! `pagemesh demo`: with nothing configured, start a three-node cluster on loopback (separate
//! daemon processes), run a classic DSM workload across them — a 2D Jacobi heat stencil over
//! one shared grid, a block of rows per worker process, a barrier per iteration served by the
//! grid's home — verify the result bit for bit against a single-process run, show what moved
//! between the nodes, and clean up. Exits 0 only if the result verified.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::bail;
use clap::Args;
use pagemesh::{Backing, Client, ClusterStatus};

use crate::harness::{spawn, wait_all, PrivateDaemon};
use crate::jacobi;

#[derive(Args)]
pub struct DemoArgs {
    /// Nodes (daemon processes) in the loopback cluster.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// Worker processes per node.
    #[arg(long, default_value_t = 2)]
    pub workers_per_node: usize,
    /// Grid size (n x n doubles, two grids).
    #[arg(long, default_value_t = 512)]
    pub n: usize,
    /// Jacobi iterations (one barrier each).
    #[arg(long, default_value_t = 200)]
    pub iters: usize,
    /// Atomic increments per worker on a shared counter (0: skip that phase).
    #[arg(long, default_value_t = 20_000)]
    pub increments: u64,
}

/// Arguments of one demo worker process (a hidden subcommand).
#[derive(Args)]
pub struct WorkerArgs {
    #[arg(long)]
    pub segment: String,
    #[arg(long)]
    pub n: usize,
    #[arg(long)]
    pub iters: usize,
    #[arg(long)]
    pub rank: usize,
    #[arg(long)]
    pub ranks: usize,
}

const PHASE_TIMEOUT: Duration = Duration::from_secs(300);
const BARRIER_TIMEOUT: Duration = Duration::from_secs(120);
const SEGMENT: &str = "heat";
const COUNTER: &str = "counter";

/// One worker: its block of rows, a barrier per iteration.
pub fn worker(socket: &std::path::Path, a: WorkerArgs) -> anyhow::Result<ExitCode> {
    let client = Client::connect(socket)?;
    let m = client.attach(&a.segment)?;
    let p = jacobi::Params {
        n: a.n,
        iters: a.iters,
    };
    let grid = &m.atomics_u64()[..jacobi::words(a.n)];
    let rows = block(a.n, a.ranks)[a.rank].clone();
    let ranks = a.ranks as u32;
    jacobi::run_worker(&p, grid, rows, || {
        client
            .barrier_wait(&a.segment, 0, ranks, BARRIER_TIMEOUT)
            .map(|_| ())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Row blocks that start on page boundaries when rows are small enough.
fn block(n: usize, ranks: usize) -> Vec<std::ops::Range<usize>> {
    match 4096 / (8 * n) {
        0 | 1 => jacobi::row_blocks(n, ranks),
        align => jacobi::row_blocks_aligned(n, ranks, align),
    }
}

pub fn wait_for_segment(daemons: &[PrivateDaemon], name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    for d in daemons {
        while !d.client.list_segments()?.iter().any(|s| s.name == name) {
            if Instant::now() > deadline {
                bail!("segment {name} did not reach every node within 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    Ok(())
}

/// The stencil's result as a node other than the home reads it, against the single-process
/// reference.
struct Verdict {
    verified: Result<(), jacobi::Mismatch>,
    /// Checksums of the shared grid and of the reference.
    sum: u64,
    want: u64,
    /// Time the single-process reference took.
    ref_secs: f64,
}

/// Run one process per rank, `workers_per_node` on each node, until all are done (their
/// output is not shown).
fn spawn_ranks(
    a: &DemoArgs,
    daemons: &[PrivateDaemon],
    args_of: impl Fn(usize) -> Vec<String>,
    what_of: impl Fn(usize, usize) -> String,
) -> anyhow::Result<()> {
    let mut procs = Vec::new();
    for rank in 0..a.nodes * a.workers_per_node {
        let node = rank / a.workers_per_node;
        procs.push(spawn(
            &daemons[node].socket,
            &args_of(rank),
            what_of(rank, node),
        )?);
    }
    wait_all(procs, PHASE_TIMEOUT)?;
    Ok(())
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// The Jacobi phase: the grid segment homed on node 1, every worker process on its node; the
/// wall time from the first spawn until the last worker is done.
fn stencil(a: &DemoArgs, daemons: &[PrivateDaemon]) -> anyhow::Result<f64> {
    let ranks = a.nodes * a.workers_per_node;
    let bytes = (jacobi::words(a.n) * 8) as u64;
    daemons[0].client.create_cluster_segment(
        SEGMENT,
        Some(bytes.div_ceil(4096) * 4096),
        Backing::Zero,
        None,
    )?;
    wait_for_segment(daemons, SEGMENT)?;
    let t = Instant::now();
    spawn_ranks(
        a,
        daemons,
        |rank| {
            strings(&[
                "demo-worker",
                "--segment",
                SEGMENT,
                "--n",
                &a.n.to_string(),
                "--iters",
                &a.iters.to_string(),
                "--rank",
                &rank.to_string(),
                "--ranks",
                &ranks.to_string(),
            ])
        },
        |rank, node| format!("worker {rank} on node {}", node + 1),
    )?;
    Ok(t.elapsed().as_secs_f64())
}

/// Check the grid through another node than the home: every page comes over the wire.
fn verify(a: &DemoArgs, daemons: &[PrivateDaemon]) -> anyhow::Result<Verdict> {
    let p = jacobi::Params {
        n: a.n,
        iters: a.iters,
    };
    let check_node = &daemons[a.nodes.min(2) - 1];
    let m = check_node.client.attach(SEGMENT)?;
    let grid = &m.atomics_u64()[..jacobi::words(a.n)];
    let t_ref = Instant::now();
    let reference = jacobi::reference(&p);
    let ref_secs = t_ref.elapsed().as_secs_f64();
    Ok(Verdict {
        verified: jacobi::verify(&p, grid),
        sum: jacobi::checksum(jacobi::result_values(&p, grid)),
        want: jacobi::checksum(reference.into_iter()),
        ref_secs,
    })
}

/// The counter phase: every worker process does `increments` atomic increments of one shared
/// word; an error unless none was lost. The line that says so.
fn counter(a: &DemoArgs, daemons: &[PrivateDaemon]) -> anyhow::Result<String> {
    let ranks = a.nodes * a.workers_per_node;
    daemons[0].client.create_cluster_segment(
        COUNTER,
        Some(4096),
        Backing::Zero,
        Some(a.nodes as u32),
    )?;
    wait_for_segment(daemons, COUNTER)?;
    let increments = a.increments.to_string();
    spawn_ranks(
        a,
        daemons,
        |_| strings(&["memtest", COUNTER, "--increment", &increments]),
        |rank, _| format!("counter {rank}"),
    )?;
    let mut b = [0u8; 8];
    daemons[0].client.read_at(COUNTER, 0, &mut b)?;
    let got = u64::from_le_bytes(b);
    let expect = ranks as u64 * a.increments;
    if got != expect {
        bail!("the shared counter is {got}, expected {expect}: increments were lost");
    }
    Ok(format!(
        "counter: {ranks} processes on {} nodes x {} atomic increments = {got}, exact",
        a.nodes, a.increments
    ))
}

/// What moved between the nodes: one row of figures per node.
fn print_figures(status: &ClusterStatus) {
    outln!();
    outln!(
        "{:>5} {:>9} {:>9} {:>9} {:>9} {:>12} {:>9} {:>9}",
        "node",
        "faults",
        "fetches",
        "invals",
        "downgr",
        "bytes moved",
        "p50<=us",
        "p99<=us"
    );
    for n in &status.nodes {
        match &n.figures {
            Some(f) => outln!(
                "{:>5} {:>9} {:>9} {:>9} {:>9} {:>12} {:>9} {:>9}",
                n.id,
                f.faults,
                f.remote_fetches,
                f.invalidations,
                f.downgrades,
                pagemesh_types::ByteSize(f.bytes_sent + f.bytes_received).to_string(),
                crate::latency::cell_us(f.faults, f.fault_p50_ns),
                crate::latency::cell_us(f.faults, f.fault_p99_ns)
            ),
            None => outln!("{:>5} (no answer)", n.id),
        }
    }
}

pub fn run(a: DemoArgs) -> anyhow::Result<ExitCode> {
    if a.nodes == 0 || a.workers_per_node == 0 || a.n < 3 || a.iters == 0 {
        usage!("--nodes, --workers-per-node and --iters must be >= 1 and --n >= 3");
    }
    let ranks = a.nodes * a.workers_per_node;
    outln!(
        "pagemesh demo: {} nodes on loopback (separate daemons), {ranks} worker processes, \
         Jacobi heat stencil on a {}x{} grid, {} iterations",
        a.nodes,
        a.n,
        a.n,
        a.iters
    );
    let daemons = crate::harness::start_cluster(
        a.nodes,
        "pagemesh-demo",
        &["--workers", "1", "--memory", "256MiB"],
    )?;
    for (i, d) in daemons.iter().enumerate() {
        outln!("  node {} in {}", i + 1, d.dir.path().display());
    }
    let wall = stencil(&a, &daemons)?;
    let v = verify(&a, &daemons)?;
    let counter_line = if a.increments > 0 {
        Some(counter(&a, &daemons)?)
    } else {
        None
    };
    print_figures(&daemons[0].client.cluster_status()?);
    outln!();
    outln!(
        "stencil: {ranks} processes on {} nodes, {} iterations in {wall:.2} s (one process, no sharing: {:.3} s)",
        a.nodes, a.iters, v.ref_secs
    );
    if let Some(line) = counter_line {
        outln!("{line}");
    }
    drop(daemons);
    let (sum, want) = (v.sum, v.want);
    match v.verified {
        Ok(()) => {
            outln!("verified: the shared grid equals the single-process result bit for bit (checksum {sum:016x})");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            outln!("NOT VERIFIED: {e} (checksum {sum:016x}, expected {want:016x})");
            Ok(crate::exit::Exit::CheckFailed.code())
        }
    }
}
