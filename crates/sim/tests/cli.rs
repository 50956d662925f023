//! The `pagemesh-sim` command line: its output contract.

use std::process::Command;

fn sim(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pagemesh-sim"))
        .args(args)
        .output()
        .expect("run pagemesh-sim");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn seeds_end_with_the_count_passed() {
    let (ok, out) = sim(&["--seeds", "25", "--start", "1000"]);
    assert!(ok, "{out}");
    assert_eq!(out.lines().last(), Some("25 seeds passed"), "{out}");
}

#[test]
fn declared_dead_faults_are_reported() {
    let (ok, out) = sim(&["--seeds", "20", "--start", "2000", "--dead", "0.01"]);
    assert!(ok, "{out}");
    assert!(out.contains("declared dead:"), "{out}");
    assert_eq!(out.lines().last(), Some("20 seeds passed"), "{out}");
}

#[test]
fn leases_are_reported() {
    let (ok, out) = sim(&[
        "--seeds", "20", "--start", "2000", "--dead", "0.01", "--leases",
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("leases:") && out.contains("all checked"),
        "{out}"
    );
    assert_eq!(out.lines().last(), Some("20 seeds passed"), "{out}");
}

#[test]
fn one_seed_prints_a_summary() {
    let (ok, out) = sim(&["--seed", "3"]);
    assert!(ok, "{out}");
    assert!(out.starts_with("seed 3 passed:"), "{out}");
}

#[test]
fn a_failing_seed_is_named_with_its_step_and_trace() {
    let (ok, out) = sim(&["--seeds", "200", "--inject-bug"]);
    assert!(!ok, "the injected bug must fail a seed:\n{out}");
    assert!(out.contains("FAILED at step"), "{out}");
    assert!(out.contains("trace (most recent last):"), "{out}");
    assert!(out.contains("replay: pagemesh-sim --seed"), "{out}");
}

#[test]
fn bad_options_are_refused_with_usage() {
    let out = Command::new(env!("CARGO_BIN_EXE_pagemesh-sim"))
        .args(["--seeds", "lots"])
        .output()
        .expect("run pagemesh-sim");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("usage:"));
    let out = Command::new(env!("CARGO_BIN_EXE_pagemesh-sim"))
        .args(["--seeds", "1", "--leases", "--lease-clocks", "sometimes"])
        .output()
        .expect("run pagemesh-sim");
    assert_eq!(out.status.code(), Some(2));
}
