//! Three nodes in network namespaces of their own, joined by veth pairs to a bridge in a hub
//! namespace (all made by this test, all removed at the end, even on failure). Each node's link
//! is slowed down with `tc` (netem delay where the kernel has it; otherwise a token-bucket rate
//! limit, which delays every page by its serialisation time), and one node is cut off and
//! reconnected mid-workload: the protocol's retransmission and the transport's reconnects carry
//! the workload through, and memtest still verifies.

mod common;

use std::time::{Duration, Instant};

use common::netns::Net;
use common::{finish, Daemon};

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
    let net = Net::build('a', 3);
    let shaping = net.shape();
    eprintln!("links shaped with {shaping}");
    let nodes = net.start_nodes(&["--dead-after-ms", "20000"]);
    create(&nodes, "net", "1MiB");
    nodes[0].run(&["memtest", "net", "--write", "21"]).ok();
    nodes[1].run(&["memtest", "net", "--verify", "21"]).ok();

    // Cut node 3 off (its hub-side link goes down) while it verifies; heal after 2 s.
    let reader = nodes[2].spawn_cmd(&["memtest", "net", "--verify", "21"], false);
    std::thread::sleep(Duration::from_millis(100));
    net.cut(3);
    std::thread::sleep(Duration::from_secs(2));
    net.heal(3);
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
    let net = Net::build('b', 3);
    net.shape();
    // Lease: half the dead-peer limit, 10 s. The limit is generous so that the heal (and TCP's
    // own retransmission backoff after it) comes well before anyone may be declared dead, even
    // on a loaded machine.
    let nodes = net.start_nodes(&["--dead-after-ms", "20000", "--fault-timeout-ms", "60000"]);
    create(&nodes, "lease", "64KiB");
    nodes[0].run(&["memtest", "lease", "--write", "5"]).ok();
    // Node 3 holds read-only copies of every page now.
    nodes[2].run(&["memtest", "lease", "--verify", "5"]).ok();
    net.cut(3);
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
    net.heal(3);
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
