//! The history checker for the real cluster (hidden commands of the chaos test,
//! `crates/cli/tests/chaos.rs`): `pagemesh chaos-worker` runs one worker process, and
//! `pagemesh chaos-check DIR` checks the history a run left in `DIR` (`docs/cluster.md`,
//! "History checker").

pub mod check;
pub mod history;
pub mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

pub use worker::{run as run_worker, WorkerArgs};

#[derive(Args)]
pub struct CheckArgs {
    /// The run's directory (`events.log` and the workers' `w*.log`).
    pub dir: PathBuf,
    /// Violations to print (all are counted).
    #[arg(long, default_value_t = 30)]
    pub show: usize,
}

/// Check a run's history: its counts on stdout, one line each, then the violations; exit 1 if
/// there are any.
pub fn run_check(a: CheckArgs) -> anyhow::Result<ExitCode> {
    let h = history::History::load(&a.dir)?;
    let r = check::check(&h);
    let c = &r.counts;
    let counts: [(&str, u64); 24] = [
        ("ops", c.ops),
        ("writes", c.writes),
        ("writes_ok", c.writes_ok),
        ("writes_durable", c.writes_durable),
        ("reads", c.reads),
        ("reads_ok", c.reads_ok),
        ("reads_zero", c.reads_zero),
        ("reads_reverted", c.reads_reverted),
        ("syncs", c.syncs),
        ("syncs_ok", c.syncs_ok),
        ("clears", c.clears),
        ("clears_ok", c.clears_ok),
        ("pages_cleared", c.pages_cleared),
        ("sigbus_poisoned", c.sigbus_poisoned),
        ("sigbus_daemon_lost", c.sigbus_daemon_lost),
        ("sigbus_timeout", c.sigbus_timeout),
        ("faults_kill", c.kills),
        ("faults_stop", c.stops),
        ("faults_partition", c.cuts),
        ("deaths", c.deaths),
        ("fenced_exits", c.fenced_exits),
        ("unprovoked_fences", c.unprovoked_fences),
        ("worker_incarnations", h.lives.len() as u64),
        ("violations", r.violations.len() as u64),
    ];
    for (k, v) in counts {
        outln!("{k} {v}");
    }
    for n in &r.notes {
        outln!("NOTE {n}");
    }
    for v in r.violations.iter().take(a.show) {
        outln!("VIOLATION {v}");
    }
    if r.violations.len() > a.show {
        outln!("... and {} more", r.violations.len() - a.show);
    }
    Ok(if r.violations.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
