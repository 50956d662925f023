//! A cluster of real daemons on loopback for the multi-node tests: ids 1..=n, every node
//! peered with every other, bounded waits.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use super::Daemon;

/// Free loopback ports (bound once to learn them, then released for the daemons).
pub fn free_ports(n: usize) -> Vec<u16> {
    let ls: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .collect();
    ls.iter()
        .map(|l| l.local_addr().expect("addr").port())
        .collect()
}

pub struct Cluster {
    pub nodes: Vec<Daemon>,
    pub args: Vec<Vec<String>>,
    /// The cluster's CA and node credentials when the links are TLS.
    pub pki: Option<Pki>,
}

/// Whether the cluster tests run over TLS peer links (`PAGEMESH_TEST_PEER_TLS=1`; CI runs the
/// cluster suite both ways).
pub fn tls_from_env() -> bool {
    std::env::var("PAGEMESH_TEST_PEER_TLS").is_ok_and(|v| v == "1")
}

/// A cluster CA and node credentials made with `pagemesh cluster ca`, in a temp dir.
pub struct Pki {
    pub dir: tempfile::TempDir,
}

impl Pki {
    /// A CA for cluster `cluster_id` (the default one if `None`) and certificates for nodes
    /// 1..=n.
    pub fn new(n: usize, cluster_id: Option<u64>) -> Pki {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path().to_str().expect("utf-8 path").to_string();
        let mut init = vec!["cluster", "ca", "init", "--dir", &d];
        let id = cluster_id.map(|c| c.to_string());
        if let Some(id) = &id {
            init.extend(["--cluster-id", id.as_str()]);
        }
        super::pagemesh(&init).ok();
        let nodes: Vec<String> = (1..=n).map(|i| i.to_string()).collect();
        let mut issue = vec!["cluster", "ca", "issue", "--dir", &d];
        for i in &nodes {
            issue.extend(["--node", i.as_str()]);
        }
        super::pagemesh(&issue).ok();
        Pki { dir }
    }

    /// The daemon flags that make node `id` use its own credentials.
    pub fn flags(&self, id: usize) -> Vec<String> {
        self.flags_as(id, id)
    }

    /// The daemon flags for node `id` holding node `cert_of`'s credentials.
    pub fn flags_as(&self, _id: usize, cert_of: usize) -> Vec<String> {
        let p = |f: String| self.dir.path().join(f).to_str().expect("utf-8").to_string();
        vec![
            "--tls-cert".into(),
            p(format!("node-{cert_of}.pem")),
            "--tls-key".into(),
            p(format!("node-{cert_of}.key")),
            "--tls-ca".into(),
            p("ca.pem".into()),
        ]
    }
}

impl Cluster {
    /// `n` nodes with ids 1..=n; `extra` goes to every daemon.
    pub fn start(n: usize, extra: &[&str]) -> Cluster {
        Self::start_tls(n, extra, tls_from_env())
    }

    /// `n` nodes, with TLS peer links (a fresh CA) or plaintext ones.
    pub fn start_tls(n: usize, extra: &[&str], tls: bool) -> Cluster {
        let pki = tls.then(|| Pki::new(n, None));
        let ports = free_ports(n);
        let mut args = Vec::new();
        for i in 0..n {
            let mut a = vec![
                "--node-id".to_string(),
                (i + 1).to_string(),
                "--listen".into(),
                format!("127.0.0.1:{}", ports[i]),
            ];
            for (j, p) in ports.iter().enumerate() {
                if j != i {
                    a.push("--peer".into());
                    a.push(format!("{}=127.0.0.1:{p}", j + 1));
                }
            }
            a.extend(extra.iter().map(|s| s.to_string()));
            if let Some(pki) = &pki {
                a.extend(pki.flags(i + 1));
            }
            args.push(a);
        }
        let nodes = args
            .iter()
            .map(|a| Daemon::start_with(&a.iter().map(String::as_str).collect::<Vec<_>>()))
            .collect();
        let c = Cluster { nodes, args, pki };
        c.wait_connected();
        c
    }

    pub fn node(&self, id: usize) -> &Daemon {
        &self.nodes[id - 1]
    }

    pub fn restart(&mut self, id: usize) {
        let a: Vec<&str> = self.args[id - 1].iter().map(String::as_str).collect();
        self.nodes[id - 1].spawn_with(&a);
    }

    pub fn status(&self, id: usize) -> serde_json::Value {
        let out = self.node(id).run(&["cluster", "status", "--json"]).ok();
        serde_json::from_slice(&out.stdout).expect("cluster status --json is JSON")
    }

    /// Whether every node sees every other alive at its current epoch (a node that does not
    /// answer its status, e.g. one ending, is not).
    pub fn all_connected(&self) -> bool {
        (1..=self.nodes.len()).all(|i| {
            let out = self.node(i).run(&["cluster", "status", "--json"]);
            if !out.status.success() {
                return false;
            }
            let s: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("cluster status --json is JSON");
            s["nodes"]
                .as_array()
                .expect("nodes")
                .iter()
                .all(|n| n["alive"] == true && n["figures"].is_object())
        })
    }

    /// Wait (bounded) until every node sees every other alive at its current epoch.
    pub fn wait_connected(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if self.all_connected() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the cluster did not connect: {}",
                self.status(1)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait (bounded) until `name` is in node `id`'s catalog.
    pub fn wait_segment(&self, id: usize, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self
            .node(id)
            .run(&["segment", "list"])
            .ok()
            .stdout_str()
            .contains(name)
        {
            assert!(
                Instant::now() < deadline,
                "node {id} never learned of segment {name}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn create(&self, on: usize, name: &str, extra: &[&str]) {
        let mut a = vec!["segment", "create", name];
        a.extend_from_slice(extra);
        self.node(on).run(&a).ok();
        for i in 1..=self.nodes.len() {
            self.wait_segment(i, name);
        }
    }
}
