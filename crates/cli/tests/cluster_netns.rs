//! Three nodes in network namespaces of their own, joined by veth pairs to a bridge in a hub
//! namespace (all made by this test, all removed at the end, even on failure). Each node's link
//! is slowed down with `tc` (netem delay where the kernel has it; otherwise a token-bucket rate
//! limit, which delays every page by its serialisation time), and one node is cut off and
//! reconnected mid-workload: the protocol's retransmission and the transport's reconnects carry
//! the workload through, and memtest still verifies.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::Pki;
use common::{finish, Daemon};

fn sh(args: &[&str]) -> Result<(), String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// The namespaces this test made; removed on drop (which also removes their veths).
struct Net {
    prefix: String,
    names: Vec<String>,
    /// The nodes' credentials: their addresses are not loopback, so their links are TLS.
    pki: Pki,
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

impl Net {
    fn ns(&self, i: usize) -> String {
        format!("{}-n{i}", self.prefix)
    }
    fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }
    fn veth_hub(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }
    fn veth_node(&self, i: usize) -> String {
        format!("{}v{i}", self.prefix)
    }
    fn addr(i: usize) -> String {
        format!("10.211.0.{i}")
    }

    /// Build the hub and `n` node namespaces; returns how the links were slowed down.
    /// `tag` tells apart the networks of tests that run at the same time.
    fn build(tag: char, n: usize) -> (Net, String) {
        let prefix = format!("pm{}{tag}", std::process::id() % 100_000);
        let mut net = Net {
            prefix,
            names: Vec::new(),
            pki: Pki::new(3, None),
        };
        let hub = net.hub();
        sh(&["ip", "netns", "add", &hub]).expect("ip netns add (needs root and iproute2)");
        net.names.push(hub.clone());
        sh(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"]).expect("bridge");
        sh(&["ip", "-n", &hub, "link", "set", "br0", "up"]).expect("bridge up");
        let mut shaping = String::new();
        for i in 1..=n {
            let ns = net.ns(i);
            sh(&["ip", "netns", "add", &ns]).expect("netns");
            net.names.push(ns.clone());
            let (v, h) = (net.veth_node(i), net.veth_hub(i));
            sh(&[
                "ip", "link", "add", &v, "netns", &ns, "type", "veth", "peer", "name", &h, "netns",
                &hub,
            ])
            .expect("veth pair");
            let cidr = format!("{}/24", Net::addr(i));
            sh(&["ip", "-n", &ns, "addr", "add", &cidr, "dev", &v]).expect("addr");
            sh(&["ip", "-n", &ns, "link", "set", &v, "up"]).expect("up");
            sh(&["ip", "-n", &ns, "link", "set", "lo", "up"]).expect("lo up");
            sh(&["ip", "-n", &hub, "link", "set", &h, "master", "br0"]).expect("master");
            sh(&["ip", "-n", &hub, "link", "set", &h, "up"]).expect("up");
            // A slower link: netem delay if the kernel has it, else a token bucket.
            let netem = sh(&[
                "ip", "netns", "exec", &ns, "tc", "qdisc", "add", "dev", &v, "root", "netem",
                "delay", "2ms", "1ms",
            ]);
            shaping = match netem {
                Ok(()) => "netem delay 2ms +-1ms".into(),
                Err(_) => {
                    sh(&[
                        "ip", "netns", "exec", &ns, "tc", "qdisc", "add", "dev", &v, "root", "tbf",
                        "rate", "40mbit", "burst", "32kb", "latency", "100ms",
                    ])
                    .expect("tc tbf");
                    "tbf rate 40mbit (this kernel has no netem)".into()
                }
            };
        }
        (net, shaping)
    }
}

/// Start one daemon per node namespace (ids 1..=3, port 7400) and wait (bounded) for the mesh.
fn start_nodes(net: &Net, extra: &[&str]) -> Vec<Daemon> {
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let ns = net.ns(i);
        let listen = format!("{}:7400", Net::addr(i));
        let mut args: Vec<String> =
            vec!["--node-id".into(), i.to_string(), "--listen".into(), listen];
        for j in (1..=3).filter(|j| *j != i) {
            args.push("--peer".into());
            args.push(format!("{j}={}:7400", Net::addr(j)));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(net.pki.flags(i));
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        nodes.push(Daemon::start_wrapped(&["ip", "netns", "exec", &ns], &a));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = nodes[0].run(&["cluster", "status", "--json"]).ok();
        let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
        if s["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .all(|n| n["alive"] == true && n["figures"].is_object())
        {
            return nodes;
        }
        assert!(Instant::now() < deadline, "no mesh: {s}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn create(nodes: &[Daemon], name: &str, size: &str) {
    nodes[0]
        .run(&["segment", "create", name, "--size", size])
        .ok();
    let deadline = Instant::now() + Duration::from_secs(10);
    for n in nodes {
        while !n.run(&["segment", "list"]).ok().stdout_str().contains(name) {
            assert!(Instant::now() < deadline, "catalog did not spread");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[test]
fn a_cluster_across_namespaces_survives_a_slow_link_and_a_partition_that_heals() {
    let (net, shaping) = Net::build('a', 3);
    eprintln!("links shaped with {shaping}");
    let nodes = start_nodes(&net, &["--dead-after-ms", "20000"]);
    create(&nodes, "net", "1MiB");
    nodes[0].run(&["memtest", "net", "--write", "21"]).ok();
    nodes[1].run(&["memtest", "net", "--verify", "21"]).ok();

    // Cut node 3 off (its hub-side link goes down) while it verifies; heal after 2 s.
    let reader = nodes[2].spawn_cmd(&["memtest", "net", "--verify", "21"], false);
    std::thread::sleep(Duration::from_millis(100));
    let hub = net.hub();
    let h3 = net.veth_hub(3);
    sh(&["ip", "-n", &hub, "link", "set", &h3, "down"]).expect("partition");
    std::thread::sleep(Duration::from_secs(2));
    sh(&["ip", "-n", &hub, "link", "set", &h3, "up"]).expect("heal");
    let t = Instant::now();
    finish(
        reader,
        &[],
        Duration::from_secs(90),
        &["verify across the partition"],
    )
    .ok();
    eprintln!("verify finished {:?} after the heal", t.elapsed());

    // After the heal everything still works both ways, and nobody was declared dead.
    nodes[2].run(&["memtest", "net", "--write", "22"]).ok();
    nodes[0].run(&["memtest", "net", "--verify", "22"]).ok();
    let out = nodes[1].run(&["cluster", "status", "--json"]).ok();
    let s: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert!(
        s["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .all(|n| n["declared_dead"] == false && n["epoch"] == 1),
        "{s}"
    );
    drop(nodes);
    drop(net);
}

#[test]
fn a_cut_off_node_stops_serving_its_copies_once_its_lease_lapses() {
    let (net, _) = Net::build('b', 3);
    // Lease: half the dead-peer limit, 10 s. The limit is generous so that the heal (and TCP's
    // own retransmission backoff after it) comes well before anyone may be declared dead, even
    // on a loaded machine.
    let nodes = start_nodes(
        &net,
        &["--dead-after-ms", "20000", "--fault-timeout-ms", "60000"],
    );
    create(&nodes, "lease", "64KiB");
    nodes[0].run(&["memtest", "lease", "--write", "5"]).ok();
    // Node 3 holds read-only copies of every page now.
    nodes[2].run(&["memtest", "lease", "--verify", "5"]).ok();
    let hub = net.hub();
    let h3 = net.veth_hub(3);
    sh(&["ip", "-n", &hub, "link", "set", &h3, "down"]).expect("partition");
    let cut = Instant::now();
    // Within the lease, its copies are still served at once.
    let quick = nodes[2].run(&["memtest", "lease", "--verify", "5"]).ok();
    assert!(
        cut.elapsed() < Duration::from_secs(8),
        "{}",
        quick.stdout_str()
    );
    // Past the lease (but before anyone may declare it dead), a read of the same copies waits:
    // the home may be about to give the pages to someone else.
    std::thread::sleep(Duration::from_millis(11_000).saturating_sub(cut.elapsed()));
    let mut reader = nodes[2].spawn_cmd(&["memtest", "lease", "--verify", "5"], false);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        reader.try_wait().expect("try_wait").is_none(),
        "a read of a copy whose lease lapsed was served from the copy"
    );
    // The link comes back before the dead-peer limit: the lease is renewed and the read ends
    // with the right data.
    sh(&["ip", "-n", &hub, "link", "set", &h3, "up"]).expect("heal");
    let out = finish(
        reader,
        &[],
        Duration::from_secs(60),
        &["read after the heal"],
    )
    .ok();
    assert!(
        out.stdout_str().contains("verified"),
        "{}",
        out.stdout_str()
    );
    drop(nodes);
    drop(net);
}
