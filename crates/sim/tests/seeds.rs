//! Simulation seeds: the main test of the coherence protocol.
//!
//! `PAGEMESH_SIM_SEEDS` overrides the number of seeds (default 2000) and `PAGEMESH_SIM_START`
//! the first one.

use pagemesh_core::Branch;
use pagemesh_sim::{run_seeds, LeaseClocks, SimConfig, World};

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[test]
fn default_seeds_pass() {
    let n = env_u64("PAGEMESH_SIM_SEEDS", 2000);
    let start = env_u64("PAGEMESH_SIM_START", 0);
    let t0 = std::time::Instant::now();
    let out = run_seeds(&SimConfig::default(), start, n, threads());
    if let Some(f) = &out.failure {
        panic!("{f}");
    }
    assert_eq!(out.passed, n);
    // The seeds must exercise what they claim to: faults, crashes, poison, syncs.
    let t = &out.total;
    assert!(t.dropped > 0 && t.duplicated > 0 && t.crashes > 0 && t.partitions > 0);
    assert!(t.poisoned > 0 && t.syncs > 0 && t.incrs > 0);
    eprintln!("{n} seeds passed in {:.1} s", t0.elapsed().as_secs_f64());
}

#[test]
fn a_crowded_cluster_with_a_bad_network_passes() {
    let cfg = SimConfig {
        nodes: 6,
        pages: 3,
        drop_rate: 0.15,
        dup_rate: 0.1,
        crash_rate: 0.01,
        partition_rate: 0.01,
        ..SimConfig::default()
    };
    let out = run_seeds(&cfg, 100_000, 300, threads());
    if let Some(f) = &out.failure {
        panic!("{f}");
    }
}

#[test]
fn frequent_crashes_of_homes_and_nodes_with_a_failing_mapper_pass() {
    // The configuration that found the aborted-intent-clear bug.
    let cfg = SimConfig {
        nodes: 5,
        pages: 2,
        crash_rate: 0.02,
        partition_rate: 0.01,
        drop_rate: 0.1,
        mapper_fail_rate: 0.05,
        ..SimConfig::default()
    };
    let out = run_seeds(&cfg, 300_000, 300, threads());
    if let Some(f) = &out.failure {
        panic!("{f}");
    }
}

/// The "declared dead" fault: nodes crash or are cut off for longer than the dead-peer limit,
/// their peers call `Node::peer_dead`, and a node declared dead while alive stops when the
/// partition heals. `PAGEMESH_SIM_DEAD_SEEDS` overrides the number of seeds (default 400).
#[test]
fn nodes_declared_dead_are_fenced_and_their_pages_poisoned() {
    let n = env_u64("PAGEMESH_SIM_DEAD_SEEDS", 400);
    let t0 = std::time::Instant::now();
    let cfg = SimConfig {
        dead_rate: 0.003,
        ..SimConfig::default()
    };
    let out = run_seeds(&cfg, 200_000, n, threads());
    if let Some(f) = &out.failure {
        panic!("{f}");
    }
    assert_eq!(out.passed, n);
    let t = &out.total;
    assert!(t.dead_faults > 0 && t.declarations > 0, "{t:?}");
    // Some declared nodes were alive (cut off), used their orphaned copies and then stopped.
    assert!(t.fenced_stops > 0 && t.fenced_reads > 0, "{t:?}");
    assert!(t.poisoned > 0 && t.incrs > 0 && t.syncs > 0, "{t:?}");
    let cov = &out.coverage;
    assert!(cov.count(Branch::PeerRestartPoison) > 0);
    assert!(cov.count(Branch::StaleEpochDropped) > 0);
    // (`Branch::PeerDeadUnknownEpoch` is no longer reached: the core's membership never
    // declares a peer it never heard, as the daemon's engine did not.)
    eprintln!(
        "{n} seeds passed in {:.1} s: {} declared-dead faults, {} declarations, {} fenced nodes stopped, {} reads on fenced nodes ({} stale)",
        t0.elapsed().as_secs_f64(),
        t.dead_faults,
        t.declarations,
        t.fenced_stops,
        t.fenced_reads,
        t.fenced_stale_reads
    );

    // A dead-peer limit shorter than ordinary partitions: groups of nodes cut off together
    // are declared dead by the majority (and homes end up on the fenced side).
    let cfg = SimConfig {
        nodes: 5,
        dead_rate: 0.003,
        dead_after_ms: 300,
        ..SimConfig::default()
    };
    let out = run_seeds(&cfg, 500_000, n / 2, threads());
    if let Some(f) = &out.failure {
        panic!("{f}");
    }
    assert!(out.total.fenced_stops > 0);
}

/// Leases (`SimConfig::leases`): a node uses its copies of a home's pages only while that home
/// provably heard it within `dead_after_ms / 2`, so a node declared dead while only cut off has
/// stopped using the copies its home may give away before the home can declare it: every read
/// on such a node is checked like any other. `PAGEMESH_SIM_LEASE_SEEDS` overrides the number
/// of seeds (default 300).
#[test]
fn with_leases_reads_on_nodes_declared_dead_are_checked_and_never_stale() {
    let n = env_u64("PAGEMESH_SIM_LEASE_SEEDS", 300);
    let t0 = std::time::Instant::now();
    let cfg = SimConfig {
        dead_rate: 0.003,
        leases: true,
        ..SimConfig::default()
    };
    let out = run_seeds(&cfg, 200_000, n, threads());
    if let Some(f) = &out.failure {
        panic!("{f}");
    }
    assert_eq!(out.passed, n);
    let t = &out.total;
    assert!(t.dead_faults > 0 && t.fenced_stops > 0, "{t:?}");
    assert!(t.heartbeats > 0 && t.lease_waits > 0, "{t:?}");
    // Cut-off nodes declared dead tried to use their copies, and were held back until they
    // stopped; none of what they did complete was stale (it would have failed the seed).
    assert!(t.fenced_lease_waits > 0, "{t:?}");
    assert_eq!(t.fenced_stale_reads, 0, "{t:?}");
    assert!(t.poisoned > 0 && t.incrs > 0 && t.syncs > 0, "{t:?}");

    // Five nodes and a dead-peer limit shorter than ordinary partitions: groups cut off
    // together (homes among them) are declared dead by the majority, and go on using the pages
    // of the homes on their own side (checked); membership measures silence from the last
    // message heard, so a node can be declared dead soon after a partition starts and read
    // under a lease that is still valid.
    let cfg = SimConfig {
        nodes: 5,
        dead_rate: 0.003,
        dead_after_ms: 300,
        leases: true,
        ..SimConfig::default()
    };
    let out = run_seeds(&cfg, 500_000, n / 2, threads());
    if let Some(f) = &out.failure {
        panic!("{f}");
    }
    let t2 = &out.total;
    assert!(
        t2.fenced_stops > 0 && t2.fenced_home_side_reads > 0,
        "{t2:?}"
    );
    assert_eq!(t2.fenced_stale_reads, 0, "{t2:?}");
    eprintln!(
        "{} seeds with leases passed in {:.1} s: {} fenced nodes stopped, {} accesses held back on them, {} reads on them checked, {} waits for a lease",
        n + n / 2,
        t0.elapsed().as_secs_f64(),
        t.fenced_stops + t2.fenced_stops,
        t.fenced_lease_waits + t2.fenced_lease_waits,
        t.fenced_reads + t.fenced_home_side_reads + t2.fenced_reads + t2.fenced_home_side_reads,
        t.lease_waits + t2.lease_waits,
    );
}

/// A one-way failure: a mute node hears its homes (their heartbeats keep arriving) but nobody
/// hears it, so its lease must lapse by the homes' echoes alone, before they declare it dead.
/// With one simulated clock, and with the daemon's clocks (one per process) and its current
/// rules for echoes.
#[test]
fn with_leases_a_mute_node_stops_using_its_copies_before_it_is_declared_dead() {
    for (clocks, start) in [
        (LeaseClocks::Ideal, 600_000),
        (LeaseClocks::Daemon, 700_000),
    ] {
        let cfg = SimConfig {
            dead_rate: 0.002,
            mute_rate: 0.003,
            leases: true,
            lease_clocks: clocks,
            ..SimConfig::default()
        };
        let out = run_seeds(&cfg, start, 150, threads());
        if let Some(f) = &out.failure {
            panic!("{clocks:?}: {f}");
        }
        let t = &out.total;
        assert!(t.mutes > 0 && t.fenced_stops > 0, "{clocks:?}: {t:?}");
        assert!(t.fenced_lease_waits > 0, "{clocks:?}: {t:?}");
    }
}

#[test]
fn lease_echoes_clamped_to_the_clock_are_caught() {
    // The daemon's first rules (commit 10c3e7a): a home keeps the latest clock value it heard
    // from a peer across the peer's restarts, and the peer clamps an echo from its future to
    // its own clock. After a restart the peer's lease then runs from every heartbeat it
    // receives: a mute node keeps using its copies after its home declared it dead.
    let cfg = SimConfig {
        dead_rate: 0.002,
        mute_rate: 0.003,
        leases: true,
        lease_clocks: LeaseClocks::Clamped,
        ..SimConfig::default()
    };
    let out = run_seeds(&cfg, 0, 300, threads());
    assert_stale_data_caught(&out, "the leases of a restarted mute node");
}

/// The run failed, on stale or lost data (the violation an injected membership or lease bug
/// must produce).
fn assert_stale_data_caught(out: &pagemesh_sim::SeedsOutcome, bug: &str) {
    let f = out
        .failure
        .as_ref()
        .unwrap_or_else(|| panic!("the checkers missed {bug}"));
    let what = &f.violation.what;
    assert!(
        what.contains("single writer")
            || what.contains("latest write")
            || what.contains("stale")
            || what.contains("poisoned"),
        "unexpected violation with {bug}: {what}"
    );
}

/// The daemon gives the fences it stored back to the core when it restarts (`Node::fence`).
/// The core takes such a fence for the peer's known incarnation: when a live incarnation above
/// the fence (the peer restarted since, or was fenced on stale knowledge) is first heard, it
/// counts as a restart of the peer, and a rebuilding home drops the peer from the rebuild and
/// ignores its holdings. Seed 26: node0@3 fences node2 below epoch 3 while node2 is alive at
/// epoch 4, grants node2@4 a shared copy of seg0/4, restarts (epoch 5, fence reloaded), takes
/// node2@4's first message for a restart, finishes its rebuild without node2's holdings and
/// grants node3 write access: two holders, node2's copy stale. Ignored until the core keeps
/// fence floors apart from the incarnations it heard.
#[test]
fn fences_reloaded_into_the_core_keep_a_newer_incarnations_holdings() {
    let cfg = SimConfig {
        dead_rate: 0.003,
        fences_in_core: true,
        ..SimConfig::default()
    };
    let out = run_seeds(&cfg, 0, 2000, threads());
    if let Some(f) = &out.failure {
        panic!("{f}");
    }
}

#[test]
fn ignoring_leases_is_caught() {
    // Heartbeats run and the checks count on leases, but nothing waits for them: the reads a
    // cut-off node declared dead makes of its copies must be found stale.
    let cfg = SimConfig {
        dead_rate: 0.003,
        leases: true,
        lease_bypass: true,
        ..SimConfig::default()
    };
    let out = run_seeds(&cfg, 200_000, 500, threads());
    let f = out
        .failure
        .expect("the checkers missed the reads of a node that ignores its leases");
    let what = &f.violation.what;
    assert!(
        what.contains("single writer") || what.contains("latest write") || what.contains("stale"),
        "unexpected violation when leases are ignored: {what}"
    );
}

#[test]
fn membership_without_its_majority_rule_is_caught() {
    // The core's membership with its injected bug: a node cut off on a minority side declares
    // the peers it cannot hear dead, and its directory voids copies still in use.
    for (leases, mute) in [(false, 0.0), (true, 0.003)] {
        let cfg = SimConfig {
            dead_rate: 0.003,
            mute_rate: mute,
            leases,
            minority_declares: true,
            ..SimConfig::default()
        };
        let out = run_seeds(&cfg, 0, 300, threads());
        assert_stale_data_caught(&out, "a membership that declares without a majority");
    }
}

/// The core's membership judging while a majority does not hear the node (the daemon before
/// the cut-off rule, found by the history checker on a real cluster): a node fenced during a
/// long partition learns of it only when it reconnects to a node that fenced it, and before
/// that, hearing a peer again, counts it towards a majority and declares a healthy node dead.
#[test]
fn membership_that_judges_while_cut_off_is_caught() {
    for leases in [false, true] {
        let cfg = SimConfig {
            dead_rate: 0.003,
            leases,
            cut_off_judges: true,
            ..SimConfig::default()
        };
        let out = run_seeds(&cfg, 0, 300, threads());
        let f = out
            .failure
            .as_ref()
            .expect("the checkers missed a membership that judges while cut off");
        assert!(
            f.violation
                .what
                .contains("itself declared dead by its peers, declared healthy"),
            "unexpected violation: {}",
            f.violation.what
        );
    }
}

#[test]
fn injected_bug_is_caught_with_nodes_declared_dead() {
    // The checks left out on fenced nodes must not hide a real coherence bug elsewhere.
    let cfg = SimConfig {
        inject_bug: true,
        dead_rate: 0.003,
        ..SimConfig::default()
    };
    let out = run_seeds(&cfg, 0, 500, threads());
    let f = out
        .failure
        .expect("the checkers missed the injected bug with membership on");
    let what = &f.violation.what;
    assert!(
        what.contains("single writer") || what.contains("latest write") || what.contains("stale"),
        "unexpected violation for the injected bug: {what}"
    );
}

#[test]
fn injected_bug_is_caught() {
    // The core's home grants write access while one invalidation ack is outstanding.
    let cfg = SimConfig {
        inject_bug: true,
        ..SimConfig::default()
    };
    let out = run_seeds(&cfg, 0, 2000, threads());
    let f = out
        .failure
        .expect("the checkers missed the injected skip-one-invalidation-ack bug in 2000 seeds");
    let what = &f.violation.what;
    assert!(
        what.contains("single writer") || what.contains("latest write") || what.contains("stale"),
        "unexpected violation for the injected bug: {what}"
    );
    assert!(!f.trace.is_empty(), "a failure must come with a trace");
    eprintln!("caught at seed {}: {what}", f.seed);
}

/// Homes that restart rebuild from holdings reported in parts (two copies a part here), and
/// a home that takes a node's first part for its whole report is caught.
#[test]
fn holdings_in_parts_are_taken_whole_and_a_first_part_only_is_caught() {
    let out = run_seeds(&SimConfig::default(), 0, 300, threads());
    assert!(
        out.failure.is_none(),
        "{:?}",
        out.failure.map(|f| f.violation.what)
    );
    assert!(
        out.coverage.count(pagemesh_core::Branch::HoldingsInParts) > 0,
        "no rebuild took a report in parts"
    );
    let cfg = SimConfig {
        holdings_first_part_only: true,
        ..SimConfig::default()
    };
    let out = run_seeds(&cfg, 0, 300, threads());
    assert_stale_data_caught(&out, "a rebuild that takes the first part of a report only");
}

#[test]
fn a_seed_replays_exactly() {
    let cfg = SimConfig {
        trace: true,
        ..SimConfig::default()
    };
    let mut a = World::new(cfg.clone(), 77);
    let mut b = World::new(cfg.clone(), 77);
    let sa = a.run().expect("seed 77 passes");
    let sb = b.run().expect("seed 77 passes");
    assert_eq!(sa, sb);
    assert_eq!(a.trace(), b.trace());
    // Also with nodes declared dead (membership draws its own jitter from the seed).
    let cfg = SimConfig {
        dead_rate: 0.01,
        ..cfg
    };
    let mut a = World::new(cfg.clone(), 3);
    let mut b = World::new(cfg.clone(), 3);
    let sa = a.run().expect("seed 3 passes");
    let sb = b.run().expect("seed 3 passes");
    assert!(sa.declarations > 0, "{sa:?}");
    assert_eq!(sa, sb);
    assert_eq!(a.trace(), b.trace());
    // And with leases (heartbeats travel the same seeded network).
    let cfg = SimConfig {
        leases: true,
        ..cfg
    };
    let mut a = World::new(cfg.clone(), 3);
    let mut b = World::new(cfg, 3);
    let sa = a.run().expect("seed 3 passes");
    let sb = b.run().expect("seed 3 passes");
    assert!(sa.heartbeats > 0 && sa.lease_waits > 0, "{sa:?}");
    assert_eq!(sa, sb);
    assert_eq!(a.trace(), b.trace());
}
