//! `pagemesh`: run a node daemon, manage segments, test memory through real page faults, check
//! the machine, and show it all working (`pagemesh demo`).

#![forbid(unsafe_code)]

#[macro_use]
mod stdout;
#[macro_use]
mod exit;

mod bench;
mod bench_baseline;
mod bench_bulk;
mod bench_local;
mod bench_map_cached;
mod bench_remote;
mod bench_report;
mod bench_tls;
mod bench_vm;
mod chaos;
mod cluster_cmd;
mod daemon_cmd;
mod demo;
mod doctor;
mod harness;
mod jacobi;
mod latency;
mod logger;
mod memtest;
mod partition_cmd;
mod segment_cmd;
mod vm_cmd;
mod volume_cmd;
mod working_set;

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use pagemesh_types::ByteSize;

#[derive(Parser)]
#[command(
    name = "pagemesh",
    version,
    about = "Distributed memory manager on userfaultfd: named segments used as plain memory"
)]
struct Cli {
    /// The node daemon's socket (ignored by `demo` and `bench`, which start daemons of
    /// their own).
    #[arg(long, global = true, env = "PAGEMESH_SOCKET", default_value = pagemesh::DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the node daemon (pagemeshd) in the foreground.
    Daemon(Box<daemon_cmd::DaemonArgs>),
    /// The cluster this node belongs to.
    #[command(subcommand)]
    Cluster(cluster_cmd::ClusterCmd),
    /// Create, inspect, sync, read, write and remove segments.
    #[command(subcommand)]
    Segment(segment_cmd::SegmentCmd),
    /// Memory partitions: min, max and weight in the node's pool.
    #[command(subcommand)]
    Partition(partition_cmd::PartitionCmd),
    /// Read-only volumes whose frames many segments share (shortcut I/O).
    #[command(subcommand)]
    Volume(volume_cmd::VolumeCmd),
    /// Firecracker microVMs whose memory pagemesh serves from a snapshot volume.
    #[command(subcommand)]
    Vm(vm_cmd::VmCmd),
    /// Measurements, each against a baseline measured in the same run.
    #[command(subcommand)]
    Bench(bench::BenchCmd),
    /// Write, verify, increment or hash a segment through its mapping (real page faults).
    Memtest(memtest::MemtestArgs),
    /// Check the kernel, userfaultfd mode and features, and limits.
    Doctor,
    /// Start a three-node cluster on loopback, run a Jacobi stencil in worker processes on every
    /// node, verify it against a single-process run, show what moved, clean up.
    Demo(demo::DemoArgs),
    /// One worker process of `pagemesh demo`.
    #[command(hide = true)]
    DemoWorker(demo::WorkerArgs),
    /// One worker process of the chaos test (tests/chaos.rs).
    #[command(hide = true)]
    ChaosWorker(chaos::WorkerArgs),
    /// Check the history a chaos test run left in a directory.
    #[command(hide = true)]
    ChaosCheck(chaos::CheckArgs),
    /// Show the daemon's identity and state.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}

fn parse_size(s: &str) -> Result<u64, String> {
    s.parse::<ByteSize>()
        .map(|b| b.0)
        .map_err(|e| e.to_string())
}

/// The commands that start daemons of their own and never use `--socket`.
const OWN_DAEMONS: [&str; 2] = ["demo", "bench"];

/// `Cli`'s command line, with the global `--socket` hidden from the help of `demo` and `bench`
/// (and their subcommands). They still accept it, so a script's `--socket` or
/// `PAGEMESH_SOCKET` set for every command does not break them; they do not use it. A global
/// argument is not copied into a subcommand that has one of its own id, so each gets a hidden
/// copy before the command is built.
fn command() -> clap::Command {
    let cmd = Cli::command();
    let hidden = cmd
        .get_arguments()
        .find(|a| a.get_id() == "socket")
        .expect("Cli has --socket")
        .clone()
        .hide(true);
    OWN_DAEMONS.iter().fold(cmd, |cmd, name| {
        cmd.mut_subcommand(name, |sub| sub.arg(hidden.clone()))
    })
}

fn parse() -> Result<Cli, clap::Error> {
    let mut cmd = command();
    let matches = cmd.try_get_matches_from_mut(std::env::args_os())?;
    Cli::from_arg_matches(&matches).map_err(|e| e.format(&mut cmd))
}

fn main() -> ExitCode {
    let cli = match parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => exit::Exit::Usage.code(),
            };
        }
    };
    let result = match cli.cmd {
        Cmd::Daemon(args) => daemon_cmd::run(cli.socket, *args),
        Cmd::Segment(cmd) => segment_cmd::run(&cli.socket, cmd),
        Cmd::Cluster(cmd) => cluster_cmd::run(&cli.socket, cmd),
        Cmd::Volume(cmd) => volume_cmd::run(&cli.socket, cmd),
        Cmd::Partition(cmd) => partition_cmd::run(&cli.socket, cmd),
        Cmd::Vm(cmd) => vm_cmd::run(&cli.socket, cmd),
        Cmd::Bench(cmd) => bench::run(&cli.socket, cmd),
        Cmd::Memtest(args) => memtest::run(&cli.socket, args),
        Cmd::Doctor => doctor::run(&cli.socket),
        Cmd::Demo(args) => demo::run(args),
        Cmd::DemoWorker(args) => demo::worker(&cli.socket, args),
        Cmd::ChaosWorker(args) => chaos::run_worker(&cli.socket, args),
        Cmd::ChaosCheck(args) => chaos::run_check(args),
        Cmd::Status { json } => status(&cli.socket, json),
    };
    let result = result.and_then(|code| stdout::flush().map(|()| code));
    match result {
        Ok(code) => code,
        // The reader of our output went away (`| head`): not a failure of the command.
        Err(e) if e.is::<stdout::StdoutClosed>() => ExitCode::SUCCESS,
        Err(e) => {
            // Not `eprintln!`: a closed stderr (`2>&1 | head`) must not turn into a panic.
            let _ = writeln!(std::io::stderr(), "pagemesh: error: {e:#}");
            exit::Exit::of(&e).code()
        }
    }
}

fn status(socket: &std::path::Path, json: bool) -> anyhow::Result<ExitCode> {
    let s = pagemesh::Client::connect(socket)?.status()?;
    if json {
        outln!(
            "{}",
            serde_json::json!({
                "pid": s.pid, "version": s.version, "uffd_mode": s.uffd_mode, "fault_workers": s.fault_workers,
                "segments": s.segments, "attached_clients": s.attached_clients, "connections": s.connections, "data_dir": s.data_dir,
                "memory_budget_bytes": s.memory_budget_bytes, "memory_resident_bytes": s.memory_resident_bytes,
                "paging_device": s.paging_device, "paging_slots_used": s.paging_slots_used,
                "paging_slots_total": s.paging_slots_total, "backpressure_waits": s.backpressure_waits,
            })
        );
    } else {
        outln!("daemon pid {} version {}", s.pid, s.version);
        outln!("uffd mode       {}", s.uffd_mode);
        outln!("fault workers   {}", s.fault_workers);
        outln!("segments        {}", s.segments);
        outln!("attached        {}", s.attached_clients);
        outln!("connections     {}", s.connections);
        outln!("data dir        {}", s.data_dir);
        outln!(
            "memory          {} resident of a {} pool ({} backpressure waits)",
            ByteSize(s.memory_resident_bytes),
            ByteSize(s.memory_budget_bytes),
            s.backpressure_waits
        );
        // A slot holds one page.
        let page = pagemesh_types::PAGE_SIZE;
        outln!(
            "paging device   {} ({} of {} used: {} of {} page slots)",
            s.paging_device,
            ByteSize(s.paging_slots_used * page),
            ByteSize(s.paging_slots_total * page),
            s.paging_slots_used,
            s.paging_slots_total
        );
    }
    Ok(ExitCode::SUCCESS)
}
