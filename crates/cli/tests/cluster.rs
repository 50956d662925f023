//! Multi-node tests: three real daemon processes on loopback, coherent segments across them,
//! and node death. Every daemon and command is bounded and cleaned up by the harness.

mod common;

use std::time::{Duration, Instant};

use common::cluster::{free_ports, Cluster, Pki};
use common::{finish, Daemon, Out};

fn run_for(d: &Daemon, args: &[&str], timeout: Duration) -> Out {
    finish(d.spawn_cmd(args, false), &[], timeout, args)
}

#[test]
fn a_pattern_written_through_one_node_verifies_through_the_others() {
    let c = Cluster::start(3, &[]);
    c.create(1, "grid", &["--size", "8MiB"]);
    c.node(1).run(&["memtest", "grid", "--write", "7"]).ok();
    for n in [2, 3] {
        let out = c.node(n).run(&["memtest", "grid", "--verify", "7"]).ok();
        assert!(
            out.stdout_str().contains("verified 8MiB"),
            "{}",
            out.stdout_str()
        );
    }
    let bad = c.node(3).run(&["memtest", "grid", "--verify", "8"]);
    assert!(!bad.status.success(), "a wrong seed must fail");
    assert!(
        bad.stdout_str().contains("MISMATCH") || bad.stderr.contains("MISMATCH"),
        "{}{}",
        bad.stdout_str(),
        bad.stderr
    );
    // Writes through node 3 of a segment homed on node 2 land too, and segment I/O agrees.
    c.create(1, "other", &["--size", "1MiB", "--home", "2"]);
    c.node(3).run(&["memtest", "other", "--write", "9"]).ok();
    c.node(1).run(&["memtest", "other", "--verify", "9"]).ok();
    let out = c
        .node(2)
        .run(&["segment", "read", "other", "--offset", "4096", "--len", "8"])
        .ok();
    assert_eq!(
        u64::from_le_bytes(out.stdout[..8].try_into().expect("8 bytes")),
        common::pattern_word(9, 4096)
    );
    let s = c.status(2);
    let seg = s["segments"]
        .as_array()
        .expect("segments")
        .iter()
        .find(|g| g["name"] == "other")
        .expect("listed");
    assert_eq!(seg["home"], 2);
    let figures = &s["nodes"][0]["figures"];
    assert!(figures["faults"].as_u64().expect("faults") > 0, "{s}");
}

#[test]
fn atomic_increments_from_three_nodes_are_never_lost() {
    let c = Cluster::start(3, &[]);
    c.create(2, "ctr", &["--size", "4KiB"]);
    let mut procs = Vec::new();
    for n in 1..=3 {
        for _ in 0..2 {
            procs.push(
                c.node(n)
                    .spawn_cmd(&["memtest", "ctr", "--increment", "100000"], false),
            );
        }
    }
    for p in procs {
        finish(p, &[], Duration::from_secs(120), &["memtest --increment"]).ok();
    }
    for n in 1..=3 {
        let out = c
            .node(n)
            .run(&["segment", "read", "ctr", "--offset", "0", "--len", "8"])
            .ok();
        assert_eq!(
            u64::from_le_bytes(out.stdout[..8].try_into().expect("8 bytes")),
            600_000,
            "node {n}"
        );
    }
}

#[test]
fn a_node_killed_mid_workload_poisons_only_its_unsynced_pages_and_rejoins() {
    let mut c = Cluster::start(
        3,
        &["--dead-after-ms", "1500", "--fault-timeout-ms", "8000"],
    );
    c.create(1, "data", &["--size", "8MiB"]);
    let half = (4 << 20).to_string();
    // The first half is written through node 2 and synced; the second through node 3, not synced.
    c.node(2)
        .run(&["memtest", "data", "--write", "5", "--len", &half])
        .ok();
    c.node(2).run(&["segment", "sync", "data"]).ok();
    c.node(3)
        .run(&["memtest", "data", "--write", "6", "--offset", &half])
        .ok();
    // Node 3 keeps reading its half while node 2 re-reads the synced one.
    c.create(1, "ctr", &["--size", "4KiB"]);
    let busy = c.node(3).spawn_cmd(
        &[
            "memtest",
            "data",
            "--verify",
            "6",
            "--offset",
            &half,
            "--repeat",
            "100000",
            "--pause-ms",
            "1",
        ],
        false,
    );
    let reader = c.node(2).spawn_cmd(
        &[
            "memtest",
            "data",
            "--verify",
            "5",
            "--len",
            &half,
            "--repeat",
            "20",
            "--pause-ms",
            "50",
        ],
        false,
    );
    std::thread::sleep(Duration::from_millis(300));
    c.nodes[2].kill9();
    let t = Instant::now();
    // The process on the dead node gets SIGBUS from its watchdog, not a hang.
    let busy = finish(busy, &[], Duration::from_secs(30), &["busy on node 3"]);
    assert!(!busy.status.success());
    // The reader on node 2 never noticed.
    finish(reader, &[], Duration::from_secs(60), &["reader on node 2"]).ok();
    // Unsynced pages whose only copy died are poisoned: SIGBUS, bounded.
    let lost = run_for(
        c.node(1),
        &[
            "memtest", "data", "--verify", "6", "--offset", &half, "--len", "4096",
        ],
        Duration::from_secs(30),
    );
    use std::os::unix::process::ExitStatusExt;
    assert!(
        lost.status.code() == Some(135) || lost.status.signal() == Some(7),
        "a lost page must give SIGBUS: {:?} {}{}",
        lost.status,
        lost.stdout_str(),
        lost.stderr
    );
    assert!(t.elapsed() < Duration::from_secs(40));
    let stat = common::stat_json(c.node(1), "data");
    assert_eq!(stat["poisoned_pages"], 1024, "{stat}");
    // Clearing the poison (asked on another node than the home) restores the mapper's contents:
    // never synced, so zeros.
    let out = c.node(2).run(&["segment", "clear-poison", "data"]).ok();
    assert!(out.stdout_str().contains("1024"), "{}", out.stdout_str());
    let stat = common::stat_json(c.node(1), "data");
    assert_eq!(stat["poisoned_pages"], 0, "{stat}");
    let out = c
        .node(2)
        .run(&["segment", "read", "data", "--offset", &half, "--len", "8"])
        .ok();
    assert_eq!(out.stdout, vec![0u8; 8]);
    // Synced pages are intact, through both survivors.
    c.node(1)
        .run(&["memtest", "data", "--verify", "5", "--len", &half])
        .ok();
    c.node(2)
        .run(&["memtest", "data", "--verify", "5", "--len", &half])
        .ok();
    // The node comes back with a new epoch and works again.
    c.restart(3);
    c.wait_connected();
    let s = c.status(1);
    let n3 = s["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .find(|n| n["id"] == 3)
        .expect("node 3");
    assert_eq!(n3["epoch"], 2, "{s}");
    c.node(3)
        .run(&["memtest", "data", "--verify", "5", "--len", &half])
        .ok();
    c.node(3).run(&["memtest", "ctr", "--increment", "10"]).ok();
}

#[test]
fn synced_data_of_a_dead_home_is_served_again_when_it_returns() {
    let mut c = Cluster::start(
        3,
        &["--dead-after-ms", "1500", "--fault-timeout-ms", "4000"],
    );
    let file = c.node(2).path("backing.img");
    let backing = format!("file:{}", file.display());
    c.create(
        1,
        "img",
        &["--size", "2MiB", "--backing", &backing, "--home", "2"],
    );
    c.node(1).run(&["memtest", "img", "--write", "11"]).ok();
    c.node(1).run(&["segment", "sync", "img"]).ok();
    c.nodes[1].kill9();
    // Node 3 holds nothing of it: its faults wait for the home and end in SIGBUS, bounded.
    let out = run_for(
        c.node(3),
        &["memtest", "img", "--verify", "11", "--len", "4096"],
        Duration::from_secs(30),
    );
    assert!(!out.status.success());
    c.restart(2);
    c.wait_connected();
    c.node(3).run(&["memtest", "img", "--verify", "11"]).ok();
    c.node(2).run(&["memtest", "img", "--verify", "11"]).ok();
    // The file itself holds the synced data.
    let bytes = std::fs::read(&file).expect("read backing file");
    for o in (0..bytes.len()).step_by(4096 * 7) {
        let w = u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        assert_eq!(w, common::pattern_word(11, o as u64), "offset {o}");
    }
}

#[test]
fn barriers_and_locks_are_served_by_the_home() {
    let c = Cluster::start(2, &[]);
    c.create(1, "sync", &["--size", "4KiB"]);
    let a = c.node(1).client();
    let b = c.node(2).client();
    let t = std::thread::spawn(move || {
        let g1 = b
            .barrier_wait("sync", 3, 2, Duration::from_secs(20))
            .expect("barrier");
        b.lock("sync", 0, Duration::from_secs(20)).expect("lock");
        b.unlock("sync", 0).expect("unlock");
        g1
    });
    std::thread::sleep(Duration::from_millis(200));
    let g0 = a
        .barrier_wait("sync", 3, 2, Duration::from_secs(20))
        .expect("barrier");
    assert_eq!(g0, t.join().expect("thread"));
    // A lock held by one node's client blocks the other's until released.
    a.lock("sync", 1, Duration::from_secs(5)).expect("lock");
    let b = c.node(2).client();
    let err = b
        .lock("sync", 1, Duration::from_millis(300))
        .expect_err("held elsewhere");
    assert!(err.to_string().contains("not granted"), "{err}");
    a.unlock("sync", 1).expect("unlock");
    b.lock("sync", 1, Duration::from_secs(5)).expect("free now");
    // A barrier nobody else reaches times out instead of hanging.
    let err = a
        .barrier_wait("sync", 9, 2, Duration::from_millis(300))
        .expect_err("alone");
    assert!(err.to_string().contains("parties"), "{err}");
    // The waiter that gave up is not counted: the next one waits for a real partner.
    let err = b
        .barrier_wait("sync", 9, 2, Duration::from_millis(300))
        .expect_err("still alone");
    assert!(err.to_string().contains("parties"), "{err}");
}

/// `docs/cluster.md` §5: a home that restarts has forgotten its locks; it grants none until
/// every node has reported what its clients hold, so a lock held across the restart is not
/// granted a second time.
#[test]
fn a_restarted_home_does_not_grant_a_lock_held_across_its_restart() {
    let mut c = Cluster::start(3, &[]);
    c.create(1, "held", &["--size", "4KiB"]);
    c.wait_segment(2, "held");
    c.wait_segment(3, "held");
    let holder = c.node(2).client();
    holder
        .lock("held", 0, Duration::from_secs(10))
        .expect("lock");
    c.nodes[0].kill9();
    c.restart(1);
    c.wait_connected();
    let other = c.node(3).client();
    let err = other
        .lock("held", 0, Duration::from_millis(1500))
        .expect_err("held by node 2's client across the home's restart");
    assert!(err.to_string().contains("not granted"), "{err}");
    holder.unlock("held", 0).expect("unlock");
    other
        .lock("held", 0, Duration::from_secs(10))
        .expect("free once its holder released it");
    assert!(
        c.node(1).log().contains("reported its locks"),
        "{}",
        c.node(1).log()
    );
}

#[test]
fn a_node_configured_by_a_toml_file_joins_nodes_configured_by_flags() {
    let ports = free_ports(2);
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(2, Some(77));
    let cred = |f: &str| pki.dir.path().join(f).display().to_string();
    let conf = dir.path().join("node1.toml");
    std::fs::write(
        &conf,
        format!(
            "node_id = 1\nlisten = \"127.0.0.1:{}\"\ncluster_id = 77\ndead_after_ms = 4000\n\
             tls_cert = \"{}\"\ntls_key = \"{}\"\ntls_ca = \"{}\"\n\
             [[peer]]\nid = 2\naddr = \"127.0.0.1:{}\"\n",
            ports[0],
            cred("node-1.pem"),
            cred("node-1.key"),
            cred("ca.pem"),
            ports[1]
        ),
    )
    .expect("write config");
    let conf = conf.display().to_string();
    let n1 = Daemon::start_with(&["--config", &conf]);
    let p1 = format!("1=127.0.0.1:{}", ports[0]);
    let l2 = format!("127.0.0.1:{}", ports[1]);
    let mut a2: Vec<String> = [
        "--node-id",
        "2",
        "--listen",
        &l2,
        "--peer",
        &p1,
        "--cluster-id",
        "77",
    ]
    .map(String::from)
    .to_vec();
    a2.extend(pki.flags(2));
    let n2 = Daemon::start_with(&a2.iter().map(String::as_str).collect::<Vec<_>>());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = n2.run(&["cluster", "status", "--json"]).ok();
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        if s["cluster_id"] == 77
            && s["nodes"]
                .as_array()
                .expect("nodes")
                .iter()
                .all(|n| n["alive"] == true && n["figures"].is_object())
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no connection: {s}\n{}",
            n1.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A node without this cluster's credentials is refused, loudly.
    let bad = Daemon::start_with(&[
        "--node-id",
        "2",
        "--listen",
        "127.0.0.1:0",
        "--peer",
        &p1,
        "--cluster-id",
        "78",
    ]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !n1.log().contains("TLS handshake failed") {
        assert!(Instant::now() < deadline, "no refusal logged: {}", n1.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(bad);
    // A config with a typo is an error that names it.
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "node_idd = 1\n").expect("write");
    let out = std::process::Command::new(common::BIN)
        .args(["--socket", "/nonexistent/x.sock", "daemon", "--config"])
        .arg(&typo)
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("node_idd"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_demo_runs_a_three_node_stencil_and_verifies_it() {
    let out = finish(
        std::process::Command::new(common::BIN)
            .args([
                "demo",
                "--n",
                "128",
                "--iters",
                "30",
                "--increments",
                "2000",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start demo"),
        &[],
        Duration::from_secs(120),
        &["pagemesh demo"],
    )
    .ok();
    let text = out.stdout_str();
    assert!(
        text.contains("verified: the shared grid equals the single-process result bit for bit"),
        "{text}"
    );
    assert!(
        text.contains("counter: 6 processes on 3 nodes x 2000 atomic increments = 12000, exact"),
        "{text}"
    );
    // Every node reports its figures, and pages really moved between them.
    for n in 1..=3 {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(&format!("{n} "))),
            "{text}"
        );
    }
    assert!(!text.contains("(no answer)"), "{text}");
}

#[test]
fn cluster_segments_larger_than_a_nodes_memory_page_through_their_home() {
    // Each node's pool is 32 MiB (48 MiB minus the daemon's reserve); the segment is 3x that.
    let c = Cluster::start(3, &["--memory", "48MiB"]);
    c.create(1, "big", &["--size", "96MiB"]);
    let status = |n: usize| -> serde_json::Value {
        let out = c.node(n).run(&["status", "--json"]).ok();
        serde_json::from_slice(&out.stdout).expect("status --json is JSON")
    };
    let bounded = |n: usize| {
        let s = status(n);
        let (used, budget) = (
            s["memory_resident_bytes"].as_u64().expect("resident"),
            s["memory_budget_bytes"].as_u64().expect("budget"),
        );
        // The evictor works asynchronously: allow the in-flight slack.
        assert!(
            used <= budget + (8 << 20),
            "node {n}: {used} resident of {budget}: {s}"
        );
    };
    let w = run_for(
        c.node(2),
        &["memtest", "big", "--write", "31"],
        Duration::from_secs(240),
    );
    assert!(w.status.success(), "{}{}", w.stdout_str(), w.stderr);
    bounded(2);
    let v = run_for(
        c.node(3),
        &["memtest", "big", "--verify", "31"],
        Duration::from_secs(240),
    );
    assert!(v.status.success(), "{}{}", v.stdout_str(), v.stderr);
    bounded(3);
    // Everything evicted went to the home's store, not lost: node 2 reads it all back too.
    let v = run_for(
        c.node(2),
        &["memtest", "big", "--verify", "31"],
        Duration::from_secs(240),
    );
    assert!(v.status.success(), "{}{}", v.stdout_str(), v.stderr);
    bounded(2);
}

#[test]
fn a_cluster_segment_is_removed_everywhere_only_when_nobody_uses_it() {
    let mut c = Cluster::start(3, &["--dead-after-ms", "1500"]);
    c.create(1, "gone", &["--size", "1MiB", "--home", "2"]);
    c.node(1).run(&["memtest", "gone", "--write", "3"]).ok();
    // A process on node 3 has it attached: the removal (asked on node 1) is refused.
    let mut busy = c.node(3).spawn_cmd(
        &[
            "memtest",
            "gone",
            "--verify",
            "3",
            "--repeat",
            "100000",
            "--pause-ms",
            "5",
        ],
        false,
    );
    std::thread::sleep(Duration::from_millis(300));
    let refused = c.node(1).run(&["segment", "rm", "gone"]);
    assert!(!refused.status.success());
    assert!(refused.stderr.contains("attached"), "{}", refused.stderr);
    // Still usable everywhere after the refusal.
    c.node(2).run(&["memtest", "gone", "--verify", "3"]).ok();
    assert!(
        busy.try_wait().expect("try_wait").is_none(),
        "the user stayed attached"
    );
    let refused = c.node(2).run(&["segment", "rm", "gone"]);
    assert!(
        !refused.status.success(),
        "removed while attached on node 3"
    );
    busy.kill().expect("kill the process this test started");
    busy.wait().expect("reap");
    std::thread::sleep(Duration::from_millis(300));
    c.node(1).run(&["segment", "rm", "gone"]).ok();
    for n in 1..=3 {
        let list = c.node(n).run(&["segment", "list"]).ok().stdout_str();
        assert!(!list.contains("gone"), "node {n}: {list}");
    }
    // The name can be used again (a new segment, a new id).
    c.create(3, "gone", &["--size", "4KiB"]);
    c.node(1).run(&["memtest", "gone", "--write", "4"]).ok();
    c.node(2).run(&["memtest", "gone", "--verify", "4"]).ok();
    // A node that was down during a removal forgets the segment when it comes back, and does
    // not bring it back to the others.
    c.create(1, "old", &["--size", "4KiB"]);
    c.nodes[2].kill9();
    std::thread::sleep(Duration::from_millis(2500)); // declared dead
    c.node(1).run(&["segment", "rm", "old"]).ok();
    c.restart(3);
    c.wait_connected();
    let deadline = Instant::now() + Duration::from_secs(10);
    while c
        .node(3)
        .run(&["segment", "list"])
        .ok()
        .stdout_str()
        .contains("old")
    {
        assert!(Instant::now() < deadline, "node 3 kept the removed segment");
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    for n in 1..=2 {
        let list = c.node(n).run(&["segment", "list"]).ok().stdout_str();
        assert!(!list.contains("old"), "node {n}: {list}");
    }
}

/// Resumes a daemon this test stopped, even when an assertion fails first.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        // SAFETY: kill(2) with a pid this test's harness started, and a signal number.
        unsafe { libc::kill(self.0 as i32, libc::SIGCONT) };
    }
}

#[test]
fn io_during_a_removal_is_refused_as_being_removed_not_poisoned() {
    // A dead-peer limit far beyond the removal's 5 s wait: the stalled node is not declared
    // dead meanwhile, so the home waits for its answer.
    let c = Cluster::start(3, &["--dead-after-ms", "30000"]);
    c.create(1, "going", &["--size", "64KiB", "--home", "2"]);
    c.node(1).run(&["memtest", "going", "--write", "5"]).ok();
    // Node 3 stalls (SIGSTOP, by the pid of the daemon this test started).
    let stalled = c.nodes[2].pid();
    // SAFETY: kill(2) with a pid the harness started, and a signal number.
    assert_eq!(unsafe { libc::kill(stalled as i32, libc::SIGSTOP) }, 0);
    let resume = Resume(stalled);
    let rm = c.node(2).spawn_cmd(&["segment", "rm", "going"], false);
    // Once the home has begun the removal, its segment I/O is refused, and says why.
    let read = ["segment", "read", "going", "--offset", "0", "--len", "16"];
    let deadline = Instant::now() + Duration::from_secs(4);
    let refused = loop {
        let r = c.node(2).run(&read);
        if !r.status.success() {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "reads still served 4 s into the removal"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(
        refused.stderr.contains("being removed"),
        "{}",
        refused.stderr
    );
    assert!(
        !refused.stderr.to_lowercase().contains("poison"),
        "{}",
        refused.stderr
    );
    // Through the library the cause is matchable: not found (being removed), never Poisoned.
    let mut buf = [0u8; 16];
    match c.node(2).client().read_at("going", 0, &mut buf) {
        Err(pagemesh::ClientError::Daemon { code, message }) => {
            assert_eq!(code, pagemesh_proto::ErrorCode::NotFound, "{message}");
            assert!(message.contains("being removed"), "{message}");
        }
        other => panic!("a read during the removal: {other:?}"),
    }
    drop(resume);
    let removed = finish(rm, b"", Duration::from_secs(30), &["segment", "rm"]);
    // Whether node 3 answered in time or not, the outcome is whole: gone everywhere, or
    // still there with its data.
    if removed.status.success() {
        for n in 1..=3 {
            let list = c.node(n).run(&["segment", "list"]).ok().stdout_str();
            assert!(!list.contains("going"), "node {n}: {list}");
        }
    } else {
        assert!(
            removed.stderr.contains("did not answer"),
            "{}",
            removed.stderr
        );
        c.node(1).run(&["memtest", "going", "--verify", "5"]).ok();
    }
}

#[test]
fn a_peer_speaking_another_protocol_version_is_refused_naming_both() {
    use pagemesh_proto::peer::{read_peer_frame, write_peer_frame, PeerFrame};
    // Plaintext links: the hello is what is checked here (TLS peers: tests/peer_auth.rs).
    let c = Cluster::start_tls(2, &[], false);
    let listen = &c.args[0][c.args[0]
        .iter()
        .position(|a| a == "--listen")
        .expect("listen")
        + 1];
    let mut s = std::net::TcpStream::connect(listen).expect("connect to node 1");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    // The previous release's version (2: before lock reports).
    let old = pagemesh_proto::peer::PEER_PROTOCOL_VERSION - 1;
    let hello = PeerFrame::Hello {
        version: old,
        cluster_id: 0,
        from: pagemesh_types::NodeId(2),
        from_epoch: pagemesh_core::Epoch(99),
        to: pagemesh_types::NodeId(1),
    };
    write_peer_frame(&mut s, &hello).expect("send the hello");
    let mut buf = Vec::new();
    match read_peer_frame(&mut s, &mut buf).expect("an answer") {
        (PeerFrame::Refused { reason, fenced }, _) => {
            assert!(!fenced);
            assert!(
                reason.contains(&format!("version {old}"))
                    && reason.contains(&format!(
                        "speaks {}",
                        pagemesh_proto::peer::PEER_PROTOCOL_VERSION
                    )),
                "{reason}"
            );
        }
        (other, _) => panic!("a hello of version {old} was answered {other:?}"),
    }
    // A node of another cluster is refused, naming both cluster ids.
    let mut s = std::net::TcpStream::connect(listen).expect("connect to node 1");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let hello = PeerFrame::Hello {
        version: pagemesh_proto::peer::PEER_PROTOCOL_VERSION,
        cluster_id: 78,
        from: pagemesh_types::NodeId(2),
        from_epoch: pagemesh_core::Epoch(99),
        to: pagemesh_types::NodeId(1),
    };
    write_peer_frame(&mut s, &hello).expect("send the hello");
    match read_peer_frame(&mut s, &mut buf).expect("an answer") {
        (PeerFrame::Refused { reason, .. }, _) => {
            assert!(reason.contains("cluster id 0x4e"), "{reason}");
        }
        (other, _) => panic!("a hello of cluster 78 was answered {other:?}"),
    }
    // The node goes on with its real peer.
    c.create(1, "after", &["--size", "4KiB"]);
    c.node(1).run(&["memtest", "after", "--write", "1"]).ok();
    c.node(2).run(&["memtest", "after", "--verify", "1"]).ok();
}

#[test]
fn a_node_declared_dead_while_stalled_stops_with_exit_code_3_when_it_resumes() {
    let mut c = Cluster::start(3, &["--dead-after-ms", "1500"]);
    c.create(3, "held", &["--size", "16KiB"]);
    c.node(3).run(&["memtest", "held", "--write", "2"]).ok();
    // Node 1 reads node 3's pages, so its core knows node 3's incarnation (a peer the core never
    // heard from holds nothing of anyone's and is not declared: there is nothing to fence).
    c.node(1).run(&["memtest", "held", "--verify", "2"]).ok();
    let stalled = c.nodes[2].pid();
    // SAFETY: kill(2) with a pid the harness started, and a signal number.
    assert_eq!(unsafe { libc::kill(stalled as i32, libc::SIGSTOP) }, 0);
    let resume = Resume(stalled);
    // Nodes 1 and 2 are a majority: node 1 declares it dead and fences it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while !c.node(1).log().contains("declared dead") {
        assert!(
            Instant::now() < deadline,
            "node 3 was not declared dead: {}",
            c.node(1).log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(resume);
    // Resumed, it is refused as fenced; the daemon returns that to its binary, which exits
    // with the code for it.
    let Some(status) = c.nodes[2].wait_exit(Duration::from_secs(30)) else {
        panic!(
            "the fenced node did not stop: {}\n--- node 1: {}",
            c.nodes[2].log(),
            c.node(1).log()
        );
    };
    assert_eq!(status.code(), Some(3), "{}", c.nodes[2].log());
    assert!(
        c.nodes[2].log().contains("was declared dead"),
        "{}",
        c.nodes[2].log()
    );
    // Resuming, it judged nobody by the silence of its own pause: the healthy nodes go on.
    assert!(
        !c.nodes[2].log().contains("node1: nothing heard"),
        "{}",
        c.nodes[2].log()
    );
    for n in 1..=2 {
        c.node(n).run(&["segment", "list"]).ok();
        let log = c.node(n).log();
        assert!(
            !log.contains("refused this node"),
            "node {n} was fenced: {log}"
        );
    }
}

/// A home restarts while a node holds more of its pages than one part of a holdings report
/// carries (lowered to 16 copies a part): the node reports in 64 parts, the rebuild takes them
/// all, and every page verifies, on the node that holds them and on another.
#[test]
fn a_home_rebuilds_from_holdings_reported_in_many_parts() {
    let mut c = Cluster::start(3, &["--holdings-per-message", "16"]);
    c.create(1, "many", &["--size", "4MiB", "--home", "1"]);
    // 1,024 pages written on node 2, unsynced: node 2 holds the only copies.
    c.node(2).run(&["memtest", "many", "--write", "5"]).ok();
    c.nodes[0].kill9();
    c.restart(1);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !c
        .node(1)
        .log()
        .contains("directory rebuilt after this home restarted")
    {
        assert!(Instant::now() < deadline, "no rebuild: {}", c.node(1).log());
        std::thread::sleep(Duration::from_millis(50));
    }
    c.node(2).run(&["memtest", "many", "--verify", "5"]).ok();
    c.node(3).run(&["memtest", "many", "--verify", "5"]).ok();
    assert_eq!(common::stat_json(c.node(1), "many")["poisoned_pages"], 0);
}
