//! Running seeds: one, or many in parallel, and replaying a failure with a trace.

use crate::config::SimConfig;
use crate::world::{Stats, Violation, World};
use pagemesh_core::Coverage;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A failing seed, with the violation and a readable trace of the events that led to it.
#[derive(Clone, Debug)]
pub struct Failure {
    /// The seed.
    pub seed: u64,
    /// What broke.
    pub violation: Violation,
    /// The last trace lines that concern the page involved (and crashes, partitions, phases).
    pub trace: Vec<String>,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = &self.violation;
        writeln!(
            f,
            "seed {} FAILED at step {} (t={} ms): {}",
            self.seed, v.step, v.time_ms, v.what
        )?;
        writeln!(f, "trace (most recent last):")?;
        for l in &self.trace {
            writeln!(f, "  {l}")?;
        }
        write!(f, "replay: pagemesh-sim --seed {}", self.seed)
    }
}

/// Run one seed. On failure, the seed is replayed with tracing on to attach a trace.
pub fn run_seed(cfg: &SimConfig, seed: u64) -> Result<(Stats, Coverage), Failure> {
    let mut w = World::new(cfg.clone(), seed);
    match w.run() {
        Ok(stats) => Ok((stats, w.coverage().clone())),
        Err(violation) => Err(replay(cfg, seed, violation)),
    }
}

fn replay(cfg: &SimConfig, seed: u64, violation: Violation) -> Failure {
    let mut traced = cfg.clone();
    traced.trace = true;
    let mut w = World::new(traced, seed);
    let again = w.run().err();
    let violation = again.unwrap_or(violation);
    let key = violation.page.map(|p| p.to_string());
    let relevant: Vec<String> = w
        .trace()
        .iter()
        .filter(|l| match &key {
            Some(k) => {
                l.contains(k.as_str())
                    || l.contains("CRASH")
                    || l.contains(" up, epoch")
                    || l.contains("partition")
                    || l.contains("DEAD")
                    || l.contains("stops")
                    || l.contains("lease")
                    || l.contains("QUIESCE")
            }
            None => true,
        })
        .cloned()
        .collect();
    let keep = 80;
    let trace = relevant[relevant.len().saturating_sub(keep)..].to_vec();
    Failure {
        seed,
        violation,
        trace,
    }
}

/// What a batch of seeds did.
#[derive(Clone, Debug)]
pub struct SeedsOutcome {
    /// Seeds that passed.
    pub passed: u64,
    /// The lowest failing seed, if any failed.
    pub failure: Option<Failure>,
    /// Branch counts summed over every passing seed.
    pub coverage: Coverage,
    /// Stats summed over every passing seed.
    pub total: Stats,
}

fn add(total: &mut Stats, s: &Stats) {
    total.steps += s.steps;
    total.time_ms += s.time_ms;
    total.reads += s.reads;
    total.writes += s.writes;
    total.incrs += s.incrs;
    total.sigbus += s.sigbus;
    total.syncs += s.syncs;
    total.evictions += s.evictions;
    total.sent += s.sent;
    total.dropped += s.dropped;
    total.duplicated += s.duplicated;
    total.crashes += s.crashes;
    total.partitions += s.partitions;
    total.poisoned += s.poisoned;
    total.dead_faults += s.dead_faults;
    total.declarations += s.declarations;
    total.fenced_stops += s.fenced_stops;
    total.fenced_reads += s.fenced_reads;
    total.fenced_stale_reads += s.fenced_stale_reads;
    total.fenced_writes += s.fenced_writes;
    total.fenced_home_side_reads += s.fenced_home_side_reads;
    total.heartbeats += s.heartbeats;
    total.lease_waits += s.lease_waits;
    total.fenced_lease_waits += s.fenced_lease_waits;
    total.mutes += s.mutes;
}

/// Run seeds `start..start + n` on `threads` threads. Stops early past a failure, and reports
/// the lowest failing seed (the same one whatever the thread count).
pub fn run_seeds(cfg: &SimConfig, start: u64, n: u64, threads: usize) -> SeedsOutcome {
    let next = AtomicU64::new(start);
    let lowest_fail = AtomicU64::new(u64::MAX);
    let acc = Mutex::new((0u64, Coverage::default(), Stats::default()));
    let failures = Mutex::new(Vec::<(u64, Violation)>::new());
    std::thread::scope(|s| {
        for _ in 0..threads.max(1) {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, Ordering::SeqCst);
                if seed >= start + n || seed > lowest_fail.load(Ordering::SeqCst) {
                    break;
                }
                let mut w = World::new(cfg.clone(), seed);
                match w.run() {
                    Ok(stats) => {
                        let mut a = acc.lock().unwrap_or_else(|e| e.into_inner());
                        a.0 += 1;
                        a.1.merge(w.coverage());
                        add(&mut a.2, &stats);
                    }
                    Err(v) => {
                        lowest_fail.fetch_min(seed, Ordering::SeqCst);
                        failures
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .push((seed, v));
                    }
                }
            });
        }
    });
    let (passed, coverage, total) = acc.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut failures = failures.into_inner().unwrap_or_else(|e| e.into_inner());
    failures.sort_by_key(|(s, _)| *s);
    let failure = failures
        .into_iter()
        .next()
        .map(|(seed, v)| replay(cfg, seed, v));
    SeedsOutcome {
        passed,
        failure,
        coverage,
        total,
    }
}
