//! Nodes in network namespaces of their own, joined by veth pairs to a bridge in a hub
//! namespace: all made by the test that builds them, all removed when it drops them, even on
//! failure. A node is cut off (and healed) by taking its hub-side link down (and up).

use std::process::Command;
use std::time::{Duration, Instant};

use super::cluster::{Cluster, Pki};
use super::Daemon;

/// The port every node listens on, in its own namespace.
pub const PORT: u16 = 7400;

pub fn sh(args: &[&str]) -> Result<(), String> {
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

/// The namespaces a test made; removed on drop (which also removes their veths).
pub struct Net {
    prefix: String,
    names: Vec<String>,
    n: usize,
    /// The nodes' credentials: their addresses are not loopback, so their links are TLS.
    pub pki: Pki,
}

impl Drop for Net {
    fn drop(&mut self) {
        for n in &self.names {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

impl Net {
    pub fn ns(&self, i: usize) -> String {
        format!("{}-n{i}", self.prefix)
    }
    pub fn hub(&self) -> String {
        format!("{}-hub", self.prefix)
    }
    pub fn veth_hub(&self, i: usize) -> String {
        format!("{}h{i}", self.prefix)
    }
    pub fn veth_node(&self, i: usize) -> String {
        format!("{}v{i}", self.prefix)
    }
    pub fn addr(i: usize) -> String {
        format!("10.211.0.{i}")
    }

    /// Build the hub and `n` node namespaces. `tag` tells apart the networks of tests that run
    /// at the same time.
    pub fn build(tag: char, n: usize) -> Net {
        let prefix = format!("pm{}{tag}", std::process::id() % 100_000);
        let mut net = Net {
            prefix,
            names: Vec::new(),
            n,
            pki: Pki::new(n, None),
        };
        let hub = net.hub();
        sh(&["ip", "netns", "add", &hub]).expect("ip netns add (needs root and iproute2)");
        net.names.push(hub.clone());
        sh(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"]).expect("bridge");
        sh(&["ip", "-n", &hub, "link", "set", "br0", "up"]).expect("bridge up");
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
        }
        net
    }

    /// Slow every node's link down: netem delay if the kernel has it, else a token bucket
    /// (which delays every page by its serialisation time). Says which.
    pub fn shape(&self) -> String {
        let mut shaping = String::new();
        for i in 1..=self.n {
            let (ns, v) = (self.ns(i), self.veth_node(i));
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
        shaping
    }

    /// Cut node `i` off from every other node (its hub-side link goes down).
    pub fn cut(&self, i: usize) {
        sh(&[
            "ip",
            "-n",
            &self.hub(),
            "link",
            "set",
            &self.veth_hub(i),
            "down",
        ])
        .expect("cut");
    }

    /// Reconnect node `i`.
    pub fn heal(&self, i: usize) {
        sh(&[
            "ip",
            "-n",
            &self.hub(),
            "link",
            "set",
            &self.veth_hub(i),
            "up",
        ])
        .expect("heal");
    }

    /// The flags of node `i` (ids 1..=n, every other node its peer) and its daemon's wrapper.
    pub fn node_args(&self, i: usize, extra: &[&str]) -> (Vec<String>, Vec<String>) {
        let listen = format!("{}:{PORT}", Net::addr(i));
        let mut args: Vec<String> =
            vec!["--node-id".into(), i.to_string(), "--listen".into(), listen];
        for j in (1..=self.n).filter(|j| *j != i) {
            args.push("--peer".into());
            args.push(format!("{j}={}:{PORT}", Net::addr(j)));
        }
        args.extend(extra.iter().map(|s| s.to_string()));
        args.extend(self.pki.flags(i));
        let wrapper = vec!["ip".into(), "netns".into(), "exec".into(), self.ns(i)];
        (args, wrapper)
    }

    /// One daemon per node namespace, and wait (bounded) for the mesh.
    pub fn start_nodes(&self, extra: &[&str]) -> Vec<Daemon> {
        let mut nodes = Vec::new();
        for i in 1..=self.n {
            let (args, wrapper) = self.node_args(i, extra);
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            let w: Vec<&str> = wrapper.iter().map(String::as_str).collect();
            nodes.push(Daemon::start_wrapped(&w, &a));
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

    /// The nodes as a `Cluster` (restartable: `Cluster::restart` runs a node again in its
    /// namespace with the same flags).
    pub fn start_cluster(&self, extra: &[&str]) -> Cluster {
        let nodes = self.start_nodes(extra);
        let args = (1..=self.n).map(|i| self.node_args(i, extra).0).collect();
        Cluster {
            nodes,
            args,
            pki: None,
        }
    }
}
