//! Leases enforced where the data is read: a process on a node whose daemon is stopped
//! (`SIGSTOP`) past the dead-peer limit stops reading its mapped copy of a page before the
//! cluster can acknowledge a newer write of it elsewhere, and ends in SIGBUS: on its own if the
//! daemon stays stopped for the fault timeout, or when the resumed daemon finds itself fenced.
//! Every time is `CLOCK_MONOTONIC`, one clock for every process of the machine.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Child;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::Cluster;
use common::{finish, Out};
use pagemesh_uffd::clock::monotonic_ns;

/// One timed read by the watcher: began, ended, value.
type Read = (u64, u64, u64);

/// The watcher process, killed (we started it) if the test ends before it does.
struct Watcher {
    child: Option<Child>,
    reads: Arc<Mutex<Vec<Read>>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Watcher {
    /// `memtest --watch-ms` of word 0 on `node`, its lines collected as they come.
    fn start(c: &Cluster, node: usize, name: &str) -> Watcher {
        let mut child = c
            .node(node)
            .spawn_cmd(&["memtest", name, "--watch-ms", "30000"], false);
        let out = child.stdout.take().expect("piped stdout");
        let reads = Arc::new(Mutex::new(Vec::new()));
        let r2 = Arc::clone(&reads);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                let w: Vec<u64> = line
                    .split(' ')
                    .map(|x| x.parse().expect("a number"))
                    .collect();
                r2.lock().unwrap().push((w[0], w[1], w[2]));
            }
        });
        Watcher {
            child: Some(child),
            reads,
            reader: Some(reader),
        }
    }

    fn reads(&self) -> Vec<Read> {
        self.reads.lock().unwrap().clone()
    }

    /// Wait (bounded) until a read returned `value`.
    fn wait_value(&self, value: u64) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.reads().iter().any(|r| r.2 == value) {
            assert!(Instant::now() < deadline, "the watcher never read {value}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Wait (bounded) for the watcher to end; its exit and stderr.
    fn finish(&mut self, within: Duration) -> Out {
        let child = self.child.take().expect("not finished yet");
        let out = finish(child, &[], within, &["memtest --watch-ms"]);
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        out
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) on a daemon this test started, by its pid.
    let r = unsafe { libc::kill(pid as i32, sig) };
    assert_eq!(r, 0, "kill({pid}, {sig})");
}

/// Continues the stopped daemon whatever happens (a stopped process would outlive the test's
/// SIGKILL only as a zombie, but its peers would wait on it).
struct Stopped(u32);

impl Drop for Stopped {
    fn drop(&mut self) {
        // SAFETY: as in `signal`.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

/// The two cases run one at a time: each starts three daemons whose dead-peer limit a starved
/// CPU could trip before the test's own stop.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The set-up both cases share: 3 nodes (dead-peer limit 2 s, so the lease is 1 s; fault
/// timeout 3 s), segment `s` homed on node 1 holding 1 in word 0, a watcher on node 3 reading
/// it from its mapped copy. Then node 3's daemon is stopped and node 1 writes 2 (which waits
/// for node 3 to be declared dead). Returns the cluster, the watcher, node 3's stop guard, when
/// it was stopped, and when the write of 2 was acknowledged.
fn stop_node_3_and_write_newer() -> (Cluster, Watcher, Stopped, u64, u64) {
    let c = Cluster::start(
        3,
        &["--dead-after-ms", "2000", "--fault-timeout-ms", "3000"],
    );
    c.create(1, "s", &["--size", "64K"]);
    let home = c.node(1).client().attach("s").expect("attach on the home");
    home.atomics_u64()[0].store(1, Ordering::SeqCst);
    let w = Watcher::start(&c, 3, "s");
    w.wait_value(1);
    // Let it read its copy for a while from its page table (no fault per read).
    std::thread::sleep(Duration::from_millis(100));
    let pid = c.node(3).pid();
    let t_stop = monotonic_ns();
    signal(pid, libc::SIGSTOP);
    let stopped = Stopped(pid);
    // The home takes the page back from node 3 only once node 3 is declared dead (about 2 s):
    // the store waits in its fault until then.
    home.atomics_u64()[0].store(2, Ordering::SeqCst);
    let t_ack = monotonic_ns();
    drop(home);
    assert!(
        t_ack - t_stop >= 1_900_000_000,
        "the write was acknowledged {} ms after node 3 stopped, before it could be declared dead\nnode 1: {}\nnode 3: {}",
        (t_ack - t_stop) / 1_000_000,
        c.node(1).log(),
        c.node(3).log()
    );
    (c, w, stopped, t_stop, t_ack)
}

/// No read of the old value began after the newer write was acknowledged; the copy was read
/// while the daemon was stopped (so the case was really exercised); the watcher ended in SIGBUS.
fn check(reads: &[Read], t_stop: u64, t_ack: u64, out: &Out) {
    let stale: Vec<&Read> = reads.iter().filter(|r| r.0 >= t_ack && r.2 != 2).collect();
    assert!(
        stale.is_empty(),
        "{} read(s) of the old value began after the newer write was acknowledged, first {:?} (ack at {t_ack})",
        stale.len(),
        stale[0]
    );
    let while_stopped = reads.iter().filter(|r| r.0 > t_stop && r.2 == 1).count();
    assert!(
        while_stopped > 0,
        "the watcher read nothing while the daemon was stopped: the case was not exercised"
    );
    let last = reads.iter().map(|r| r.0).max().unwrap_or(0);
    eprintln!(
        "{while_stopped} reads of the copy while node 3 was stopped; the last read began {} ms after the stop, {} ms before the newer write's ack",
        (last - t_stop) / 1_000_000,
        (t_ack.saturating_sub(last)) / 1_000_000
    );
    out.assert_sigbus_at(0);
}

#[test]
fn a_process_on_a_stopped_node_stops_reading_and_gets_sigbus_while_its_daemon_stays_stopped() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (c, mut w, stopped, t_stop, t_ack) = stop_node_3_and_write_newer();
    // The daemon stays stopped: the watcher gives up on it by itself once its lease has been
    // over for the fault timeout (about 4 s after the stop).
    let out = w.finish(Duration::from_secs(15));
    let t_end = monotonic_ns();
    check(&w.reads(), t_stop, t_ack, &out);
    assert!(out.stderr.contains("has not run for"), "{}", out.stderr);
    assert!(
        t_end - t_stop < 10_000_000_000,
        "gave up only {} ms after the stop",
        (t_end - t_stop) / 1_000_000
    );
    drop(stopped);
    drop(c);
}

#[test]
fn a_process_on_a_stopped_node_gets_sigbus_when_its_fenced_daemon_resumes() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (mut c, mut w, stopped, t_stop, t_ack) = stop_node_3_and_write_newer();
    // Resume the daemon before the watcher would give up by itself: it reads the parked fault,
    // holds it (no lease), learns it was declared dead, and exits; the watcher gets SIGBUS.
    // Not at once: a stale copy would be read in between.
    std::thread::sleep(Duration::from_millis(300));
    drop(stopped);
    let out = w.finish(Duration::from_secs(15));
    check(&w.reads(), t_stop, t_ack, &out);
    let exit = c.nodes[2].wait_exit(Duration::from_secs(10));
    assert_eq!(
        exit.and_then(|e| e.code()),
        Some(3),
        "node 3 should stop, fenced: {}",
        c.node(3).log()
    );
}
