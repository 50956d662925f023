//! `pagemesh-sim`: run the deterministic simulator on one seed or many.

#![forbid(unsafe_code)]

use pagemesh_core::Branch;
use pagemesh_sim::{run_seed, run_seeds, LeaseClocks, SimConfig};
use std::process::ExitCode;

const USAGE: &str = "usage: pagemesh-sim (--seed S | --seeds N [--start S]) [options]
  --seed S            run one seed and print a summary
  --seeds N           run N seeds; ends with 'N seeds passed' or the first failing seed
  --start S           first seed for --seeds (default 0)
  --threads T         threads for --seeds (default: available cores)
  --nodes N           nodes (default 4; nodes 0 and 1 are homes; any node may crash)
  --pages P           pages per segment (default 6)
  --ops N             operations per simulated process (default 40; two processes per node)
  --max-steps N       events a run may take before it counts as a livelock (default 5000000)
  --drop R            message drop probability (default 0.05)
  --dup R             message duplication probability (default 0.03)
  --max-delay MS      largest network delay (default 20)
  --crash R           crash probability per 10 ms tick (default 0.004)
  --partition R       partition probability per 10 ms tick (default 0.004)
  --mapper-ms MS      largest mapper latency (default 15)
  --mapper-fail R     mapper I/O failure probability (default 0.005)
  --dead R            'declared dead' fault probability per 10 ms tick: a node crashes or is
                      cut off for longer than the dead-peer limit and its peers call peer_dead
                      (default 0: membership off)
  --dead-after MS     dead-peer limit (default 1600)
  --minority-declares nodes on a minority side declare the peers they cannot hear dead too
                      (as the daemon does today, without a quorum rule)
  --cut-off-judges    nodes judge their peers while a majority does not hear them (the daemon
                      before its cut-off rule: a node fenced in a long partition fences a
                      healthy one when the link returns)
  --fences-forgotten  a node declared dead stops at the heal only if an up node still fences
                      it (fences are in memory, forgotten when the fencing node restarts)
  --leases            leases as the daemon keeps them: heartbeats echo the latest send time
                      heard from the receiver; a node uses its copies of a home's pages only
                      while that home heard it within dead-after/2 (accesses wait otherwise);
                      reads on nodes declared dead are then checked like all others
  --lease-clocks C    with --leases: ideal (one simulated clock, default), daemon (a clock per
                      process from its start; what was heard from a peer forgotten when a newer
                      incarnation of it is heard; echoes ahead of the clock ignored) or clamped
                      (the daemon's first rules: heard values kept across restarts, echoes
                      clamped to the clock)
  --mute R            one-way fault probability per 10 ms tick: a node's messages are all lost
                      while it hears everyone, for longer than the dead-peer limit (declared
                      dead, it stops when it can send again)
  --lease-bypass      --leases, but processes ignore leases (nothing waits) while the checks
                      count on them: the checkers must find the stale reads
  --fences-in-core    a restarting node gives its stored fences back to its core (Node::fence),
                      as the daemon does (fails today: the core takes a reloaded fence for the
                      peer's known incarnation)
  --no-home-crash     only non-home nodes crash
  --inject-bug        switch on the core's injected bug (skip one invalidation ack)
  --holdings-per-message N
                      most copies per Holdings report part (default 2: rebuilds take
                      reports in parts; the daemon sends up to 1Mi per part)
  --holdings-first-part-only
                      injected bug: a rebuilding home takes a node's first part of its
                      holdings for all of them
  --coverage          list protocol branches no seed reached
  --trace             print the full trace of a single seed";

struct Args {
    seed: Option<u64>,
    seeds: Option<u64>,
    start: u64,
    threads: usize,
    coverage: bool,
    cfg: SimConfig,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        seed: None,
        seeds: None,
        start: 0,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        coverage: false,
        cfg: SimConfig::default(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))
        };
        fn num<T: std::str::FromStr>(flag: &str, v: String) -> Result<T, String> {
            v.parse()
                .map_err(|_| format!("{flag}: cannot parse {v:?} as a number\n{USAGE}"))
        }
        match flag.as_str() {
            "--seed" => a.seed = Some(num(&flag, val()?)?),
            "--seeds" => a.seeds = Some(num(&flag, val()?)?),
            "--start" => a.start = num(&flag, val()?)?,
            "--threads" => a.threads = num(&flag, val()?)?,
            "--nodes" => a.cfg.nodes = num(&flag, val()?)?,
            "--pages" => a.cfg.pages = num(&flag, val()?)?,
            "--ops" => a.cfg.ops_per_process = num(&flag, val()?)?,
            "--max-steps" => a.cfg.max_steps = num(&flag, val()?)?,
            "--drop" => a.cfg.drop_rate = num(&flag, val()?)?,
            "--dup" => a.cfg.dup_rate = num(&flag, val()?)?,
            "--max-delay" => a.cfg.max_delay_ms = num(&flag, val()?)?,
            "--crash" => a.cfg.crash_rate = num(&flag, val()?)?,
            "--partition" => a.cfg.partition_rate = num(&flag, val()?)?,
            "--mapper-ms" => a.cfg.max_mapper_ms = num(&flag, val()?)?,
            "--mapper-fail" => a.cfg.mapper_fail_rate = num(&flag, val()?)?,
            "--dead" => a.cfg.dead_rate = num(&flag, val()?)?,
            "--dead-after" => a.cfg.dead_after_ms = num(&flag, val()?)?,
            "--minority-declares" => a.cfg.minority_declares = true,
            "--cut-off-judges" => a.cfg.cut_off_judges = true,
            "--fences-forgotten" => a.cfg.fences_forgotten = true,
            "--leases" => a.cfg.leases = true,
            "--mute" => a.cfg.mute_rate = num(&flag, val()?)?,
            "--fences-in-core" => a.cfg.fences_in_core = true,
            "--lease-clocks" => {
                a.cfg.lease_clocks = match val()?.as_str() {
                    "ideal" => LeaseClocks::Ideal,
                    "daemon" => LeaseClocks::Daemon,
                    "clamped" => LeaseClocks::Clamped,
                    other => {
                        return Err(format!(
                            "--lease-clocks: {other:?} is not ideal, daemon or clamped\n{USAGE}"
                        ))
                    }
                }
            }
            "--lease-bypass" => {
                a.cfg.leases = true;
                a.cfg.lease_bypass = true;
            }
            "--inject-bug" => a.cfg.inject_bug = true,
            "--holdings-per-message" => a.cfg.holdings_per_message = num(&flag, val()?)?,
            "--holdings-first-part-only" => a.cfg.holdings_first_part_only = true,
            "--no-home-crash" => a.cfg.crash_homes = false,
            "--coverage" => a.coverage = true,
            "--trace" => a.cfg.trace = true,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown option {other:?}\n{USAGE}")),
        }
    }
    if a.cfg.nodes < 3
        || a.cfg.pages < 1
        || a.cfg.max_delay_ms == 0
        || a.cfg.max_mapper_ms == 0
        || a.cfg.dead_after_ms == 0
    {
        return Err(format!(
            "need --nodes >= 3, --pages >= 1, --max-delay >= 1, --mapper-ms >= 1, --dead-after >= 1\n{USAGE}"
        ));
    }
    if a.seed.is_none() == a.seeds.is_none() {
        return Err(format!("give exactly one of --seed and --seeds\n{USAGE}"));
    }
    Ok(a)
}

fn print_coverage(cov: &pagemesh_core::Coverage) {
    let unreached = cov.unreached();
    println!(
        "coverage: {}/{} protocol branches reached",
        Branch::ALL.len() - unreached.len(),
        Branch::ALL.len()
    );
    for b in Branch::ALL {
        println!("  {:>10}  {}", cov.count(*b), b.name());
    }
    if !unreached.is_empty() {
        let names: Vec<&str> = unreached.iter().map(|b| b.name()).collect();
        println!("unreached: {}", names.join(", "));
    }
}

/// The membership and lease figures, when membership or leases were on.
fn dead_summary(s: &pagemesh_sim::Stats, leases: bool) -> String {
    let mut out = String::new();
    if s.dead_faults > 0 || s.declarations > 0 || s.mutes > 0 {
        if leases {
            out = format!(
                "; declared dead: {} faults, {} mute nodes, {} declarations, {} fenced nodes stopped, {} reads on fenced nodes of pages homed across ({} stale; all checked), {} writes there, {} reads on fenced nodes of pages homed on their side",
                s.dead_faults, s.mutes, s.declarations, s.fenced_stops, s.fenced_reads, s.fenced_stale_reads, s.fenced_writes, s.fenced_home_side_reads
            );
        } else {
            out = format!(
                "; declared dead: {} faults, {} declarations, {} fenced nodes stopped, {} reads on fenced nodes ({} stale, not checked), {} writes on orphaned copies",
                s.dead_faults, s.declarations, s.fenced_stops, s.fenced_reads, s.fenced_stale_reads, s.fenced_writes
            );
        }
    }
    if leases {
        out.push_str(&format!(
            "; leases: {} heartbeats, {} waits for a lease, {} accesses held back on fenced nodes until they stopped",
            s.heartbeats, s.lease_waits, s.fenced_lease_waits
        ));
    }
    out
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    if let Some(seed) = args.seed {
        let traced = args.cfg.trace;
        match run_seed(&args.cfg, seed) {
            Ok((s, cov)) => {
                if traced {
                    let mut w = pagemesh_sim::World::new(args.cfg.clone(), seed);
                    let _ = w.run();
                    for l in w.trace() {
                        println!("{l}");
                    }
                }
                println!(
                    "seed {seed} passed: {} steps, {} ms simulated; {} reads, {} writes, {} increments, {} SIGBUS, {} syncs, {} evictions; {} messages ({} dropped, {} duplicated); {} crashes, {} partitions, {} pages poisoned{}",
                    s.steps, s.time_ms, s.reads, s.writes, s.incrs, s.sigbus, s.syncs, s.evictions, s.sent, s.dropped, s.duplicated, s.crashes, s.partitions, s.poisoned, dead_summary(&s, args.cfg.leases)
                );
                if args.coverage {
                    print_coverage(&cov);
                }
                ExitCode::SUCCESS
            }
            Err(f) => {
                if traced {
                    let mut w = pagemesh_sim::World::new(args.cfg.clone(), seed);
                    let _ = w.run();
                    for l in w.trace() {
                        println!("{l}");
                    }
                }
                println!("{f}");
                ExitCode::FAILURE
            }
        }
    } else {
        let n = args.seeds.unwrap_or(0);
        let t0 = std::time::Instant::now();
        let out = run_seeds(&args.cfg, args.start, n, args.threads);
        let secs = t0.elapsed().as_secs_f64();
        if args.coverage {
            print_coverage(&out.coverage);
        }
        match out.failure {
            None => {
                let t = &out.total;
                println!(
                    "totals: {} reads, {} writes, {} increments, {} SIGBUS, {} syncs; {} messages ({} dropped, {} duplicated); {} crashes, {} partitions, {} poisoned{}; {:.1} s",
                    t.reads, t.writes, t.incrs, t.sigbus, t.syncs, t.sent, t.dropped, t.duplicated, t.crashes, t.partitions, t.poisoned, dead_summary(t, args.cfg.leases), secs
                );
                println!("{} seeds passed", out.passed);
                ExitCode::SUCCESS
            }
            Some(f) => {
                println!("{f}");
                ExitCode::FAILURE
            }
        }
    }
}
