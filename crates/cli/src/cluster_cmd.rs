//! Cluster membership for `pagemesh daemon` (flags or a TOML file) and `pagemesh cluster`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use pagemesh_daemon::cluster::pki;
use pagemesh_daemon::cluster::tls::TlsFiles;
use pagemesh_daemon::cluster::ClusterConfig;
use serde::Deserialize;

/// The cluster flags of `pagemesh daemon`.
#[derive(Args, Clone, Debug, Default)]
pub struct ClusterArgs {
    /// A TOML file with this node's settings (see docs/cluster.md); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// This node's id in the cluster (makes the daemon a cluster node).
    #[arg(long)]
    pub node_id: Option<u32>,
    /// Address peers reach this node on (e.g. 10.0.0.1:7100).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Another node: ID=HOST:PORT, HOST an IP address or a name resolved once at start
    /// (repeat for every other node; this node's own entry, at its --listen address, is
    /// skipped, so every node may be given the same list).
    #[arg(long = "peer", value_name = "ID=HOST:PORT", value_parser = parse_peer)]
    pub peers: Vec<(u32, SocketAddr)>,
    // The next three are options (the config file may set them), so clap cannot show their
    // defaults itself: the help takes them from `ClusterConfig::new`.
    #[arg(long, help = with_default("Nodes of different clusters refuse each other", |c| c.cluster_id))]
    pub cluster_id: Option<u64>,
    #[arg(long, help = with_default(
        "A peer silent for this long is declared dead (its unsynced pages are poisoned); at least 100",
        |c| c.dead_after_ms,
    ))]
    pub dead_after_ms: Option<u64>,
    #[arg(long, help = with_default(
        "A fault or sync with no answer for this long ends in SIGBUS / an error; at least 100",
        |c| c.fault_timeout_ms,
    ))]
    pub fault_timeout_ms: Option<u64>,
    /// This node's certificate (from `pagemesh cluster ca issue`): peer links become TLS 1.3,
    /// both ends authenticated by the cluster CA. Needs --tls-key and --tls-ca.
    #[arg(long, value_name = "PEM")]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key.
    #[arg(long, value_name = "PEM")]
    pub tls_key: Option<PathBuf>,
    /// The cluster CA's certificate (the only root peers are checked against).
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// Allow plaintext, unauthenticated peer links on a non-loopback address (labs only:
    /// anyone who reaches the address can read and write pages).
    #[arg(long)]
    pub insecure_peers: bool,
    /// For tests: most copies per part of a holdings report to a restarted home (default
    /// 1048576), to exercise reports in many parts without gigabytes held.
    #[arg(long, hide = true)]
    pub holdings_per_message: Option<usize>,
}

/// A flag's description with the default `ClusterConfig::new` gives it, in clap's form.
fn with_default(text: &str, field: fn(&ClusterConfig) -> u64) -> String {
    let c = ClusterConfig::new(0, SocketAddr::from(([127, 0, 0, 1], 0)), Vec::new());
    format!("{text} [default: {}]", field(&c))
}

fn parse_peer(s: &str) -> Result<(u32, SocketAddr), String> {
    let (id, addr) = s.split_once('=').ok_or_else(|| {
        format!("peer {s:?}: expected ID=HOST:PORT (e.g. 2=10.0.0.2:7100 or 2=node2:7100)")
    })?;
    let id = id
        .trim()
        .parse()
        .map_err(|e| format!("peer {s:?}: node id: {e}"))?;
    Ok((
        id,
        resolve(addr.trim()).map_err(|e| format!("peer {s:?}: {e}"))?,
    ))
}

/// `HOST:PORT` (an IP address or a name, resolved once, at start) as one socket address.
fn resolve(addr: &str) -> Result<SocketAddr, String> {
    use std::net::ToSocketAddrs;
    if let Ok(a) = addr.parse() {
        return Ok(a);
    }
    let mut all = addr
        .to_socket_addrs()
        .map_err(|e| format!("address {addr:?}: {e} (expected HOST:PORT)"))?;
    all.next()
        .ok_or_else(|| format!("address {addr:?} resolves to nothing"))
}

/// The TOML form: every field optional, flags win.
///
/// ```toml
/// node_id = 1
/// listen = "10.0.0.1:7100"
/// cluster_id = 42
/// dead_after_ms = 5000
/// tls_cert = "/etc/pagemesh/node-1.pem"
/// tls_key = "/etc/pagemesh/node-1.key"
/// tls_ca = "/etc/pagemesh/ca.pem"
/// [[peer]]
/// id = 2
/// addr = "10.0.0.2:7100"
/// ```
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    pub node_id: Option<u32>,
    pub listen: Option<SocketAddr>,
    pub cluster_id: Option<u64>,
    pub dead_after_ms: Option<u64>,
    pub fault_timeout_ms: Option<u64>,
    pub data_dir: Option<PathBuf>,
    pub socket: Option<PathBuf>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub tls_ca: Option<PathBuf>,
    #[serde(default)]
    pub insecure_peers: bool,
    #[serde(default)]
    pub peer: Vec<PeerEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    pub id: u32,
    /// `HOST:PORT`: an IP address or a name (resolved at start).
    pub addr: String,
}

pub fn read_config(path: &Path) -> anyhow::Result<ConfigFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing the config {}", path.display()))
}

/// The cluster configuration the flags and the file describe, or `None` for a single node.
pub fn cluster_config(
    args: &ClusterArgs,
    file: &ConfigFile,
) -> anyhow::Result<Option<ClusterConfig>> {
    let node_id = args.node_id.or(file.node_id);
    let mut peers: Vec<(u32, SocketAddr)> = Vec::new();
    for p in &file.peer {
        match resolve(&p.addr) {
            Ok(a) => peers.push((p.id, a)),
            Err(e) => usage!("the config's peer {}: {e}", p.id),
        }
    }
    for p in &args.peers {
        peers.retain(|q| q.0 != p.0);
        peers.push(*p);
    }
    let Some(node_id) = node_id else {
        if !peers.is_empty() || args.listen.is_some() || file.listen.is_some() {
            usage!("--peer and --listen need --node-id (or node_id in the config)");
        }
        return Ok(None);
    };
    let listen = args
        .listen
        .or(file.listen)
        .context("a cluster node needs --listen ADDR (or listen in the config)")?;
    // The same peer list may be given to every node (etcd's --initial-cluster): this node's
    // own entry is dropped, if it names this node's --listen address.
    if let Some(p) = peers.iter().find(|p| p.0 == node_id && p.1 != listen) {
        usage!(
            "peer {}={} has this node's id {node_id} but not its --listen address {listen}",
            p.0,
            p.1
        );
    }
    peers.retain(|p| p.0 != node_id);
    let mut c = ClusterConfig::new(node_id, listen, peers);
    if let Some(id) = args.cluster_id.or(file.cluster_id) {
        c.cluster_id = id;
    }
    if let Some(ms) = args.dead_after_ms.or(file.dead_after_ms) {
        if ms < 100 {
            usage!("--dead-after-ms {ms} is below 100 ms: every hiccup would kill a node");
        }
        c.dead_after_ms = ms;
    }
    if let Some(ms) = args.fault_timeout_ms.or(file.fault_timeout_ms) {
        if ms < 100 {
            usage!("--fault-timeout-ms {ms} is below 100 ms: faults would fail while peers answer");
        }
        c.fault_timeout_ms = ms;
    }
    if let Some(n) = args.holdings_per_message {
        if n == 0 {
            usage!("--holdings-per-message must be at least 1");
        }
        c.holdings_per_message = n;
    }
    c.tls = tls_files(args, file)?;
    c.insecure_peers = args.insecure_peers || file.insecure_peers;
    Ok(Some(c))
}

/// The TLS credentials the flags and the file name: all three or none.
fn tls_files(args: &ClusterArgs, file: &ConfigFile) -> anyhow::Result<Option<TlsFiles>> {
    let cert = args.tls_cert.clone().or(file.tls_cert.clone());
    let key = args.tls_key.clone().or(file.tls_key.clone());
    let ca = args.tls_ca.clone().or(file.tls_ca.clone());
    match (cert, key, ca) {
        (Some(cert), Some(key), Some(ca)) => Ok(Some(TlsFiles { cert, key, ca })),
        (None, None, None) => Ok(None),
        (cert, key, ca) => {
            let missing: Vec<&str> = [("--tls-cert", cert), ("--tls-key", key), ("--tls-ca", ca)]
                .into_iter()
                .filter(|(_, v)| v.is_none())
                .map(|(n, _)| n)
                .collect();
            usage!(
                "TLS needs --tls-cert, --tls-key and --tls-ca together (or tls_cert, tls_key, \
                 tls_ca in the config); missing {}",
                missing.join(", ")
            )
        }
    }
}

#[derive(Subcommand)]
pub enum ClusterCmd {
    /// Nodes (epoch, liveness, figures) and cluster segments with their homes.
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// The cluster's certificate authority: credentials for authenticated peer links.
    #[command(subcommand)]
    Ca(CaCmd),
}

#[derive(Subcommand)]
pub enum CaCmd {
    /// Make a new cluster CA in DIR (its key is written 0600; keep it off the nodes).
    Init {
        /// Directory for the CA (created if missing; existing CA files are never overwritten).
        #[arg(long)]
        dir: PathBuf,
        /// The cluster the CA is for (the daemons' --cluster-id; the default if not given).
        #[arg(long)]
        cluster_id: Option<u64>,
    },
    /// Issue node certificates from the CA in DIR: DIR/node-N.pem and DIR/node-N.key.
    Issue {
        /// The CA's directory (from `cluster ca init`).
        #[arg(long)]
        dir: PathBuf,
        /// A node id (repeat for several nodes).
        #[arg(long = "node", value_name = "N", required = true)]
        nodes: Vec<u32>,
    },
}

fn ca(cmd: CaCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        CaCmd::Init { dir, cluster_id } => {
            let id = cluster_id.unwrap_or(pagemesh_daemon::cluster::DEFAULT_CLUSTER_ID);
            let cert = pki::init(&dir, id)?;
            outln!("cluster CA for cluster {id:#x}: {}", cert.display());
        }
        CaCmd::Issue { dir, nodes } => {
            for n in nodes {
                let got = pki::issue(&dir, pagemesh_types::NodeId(n))?;
                outln!(
                    "node {n}: {} and {} ({}, valid until {})",
                    got.cert.display(),
                    got.key.display(),
                    got.name,
                    got.not_after.date()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn run(socket: &Path, cmd: ClusterCmd) -> anyhow::Result<ExitCode> {
    let json = match cmd {
        ClusterCmd::Ca(c) => return ca(c),
        ClusterCmd::Status { json } => json,
    };
    let client = pagemesh::Client::connect(socket)?;
    let s = client.cluster_status()?;
    if json {
        outln!("{}", status_json(&s));
        return Ok(ExitCode::SUCCESS);
    }
    outln!(
        "cluster {:#x}, answered by node {} (epoch {})",
        s.cluster_id,
        s.node,
        s.epoch
    );
    outln!(
        "{:>5} {:<22} {:>6} {:<6} {:>9} {:>10} {:>10} {:>8} {:>8}",
        "node",
        "address",
        "epoch",
        "state",
        "silent_ms",
        "faults",
        "fetches",
        "p50<=us",
        "p99<=us"
    );
    for n in &s.nodes {
        let state = if n.declared_dead {
            "dead"
        } else if n.alive {
            "alive"
        } else {
            "silent"
        };
        let (f, r, p50, p99) =
            n.figures
                .as_ref()
                .map_or(("-".into(), "-".into(), "-".into(), "-".into()), |f| {
                    (
                        f.faults.to_string(),
                        f.remote_fetches.to_string(),
                        crate::latency::cell_us(f.faults, f.fault_p50_ns),
                        crate::latency::cell_us(f.faults, f.fault_p99_ns),
                    )
                });
        outln!(
            "{:>5} {:<22} {:>6} {:<6} {:>9} {:>10} {:>10} {:>8} {:>8}",
            n.id,
            n.addr,
            n.epoch,
            state,
            n.silent_ms,
            f,
            r,
            p50,
            p99
        );
    }
    outln!("segments:");
    for seg in &s.segments {
        outln!(
            "  {:<20} {:>10}  {:<24} home node {}",
            seg.name,
            pagemesh_types::ByteSize(seg.size_bytes).to_string(),
            seg.backing.to_string(),
            seg.home.map_or("-".into(), |h| h.to_string())
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn status_json(s: &pagemesh::ClusterStatus) -> serde_json::Value {
    serde_json::json!({
        "cluster_id": s.cluster_id,
        "node": s.node,
        "epoch": s.epoch,
        "nodes": s.nodes.iter().map(|n| serde_json::json!({
            "id": n.id, "addr": n.addr, "epoch": n.epoch, "alive": n.alive,
            "declared_dead": n.declared_dead, "silent_ms": n.silent_ms,
            "figures": n.figures.as_ref().map(|f| serde_json::json!({
                "faults": f.faults, "remote_fetches": f.remote_fetches,
                "invalidations": f.invalidations, "downgrades": f.downgrades,
                "bytes_sent": f.bytes_sent, "bytes_received": f.bytes_received,
                "sigbus": f.sigbus, "fault_p50_ns": f.fault_p50_ns, "fault_p99_ns": f.fault_p99_ns,
            })),
        })).collect::<Vec<_>>(),
        "segments": s.segments.iter().map(|g| serde_json::json!({
            "name": g.name, "id": g.id, "size_bytes": g.size_bytes,
            "backing": g.backing.to_string(), "home": g.home,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_bad_configs_are_refused() {
        let file: ConfigFile = toml::from_str(
            "node_id = 1\nlisten = \"127.0.0.1:7001\"\ndead_after_ms = 3000\n\
             [[peer]]\nid = 2\naddr = \"127.0.0.1:7002\"\n[[peer]]\nid = 3\naddr = \"127.0.0.1:7003\"\n",
        )
        .expect("parses");
        let args = ClusterArgs {
            peers: vec![(3, "127.0.0.1:9003".parse().expect("addr"))],
            ..ClusterArgs::default()
        };
        let c = cluster_config(&args, &file)
            .expect("valid")
            .expect("cluster");
        assert_eq!(c.node_id, 1);
        assert_eq!(c.dead_after_ms, 3000);
        assert_eq!(c.peers.len(), 2);
        assert!(c
            .peers
            .contains(&(3, "127.0.0.1:9003".parse().expect("addr"))));
        assert!(toml::from_str::<ConfigFile>("nodeid = 1").is_err());
        assert!(cluster_config(
            &ClusterArgs {
                peers: vec![(2, "127.0.0.1:1".parse().expect("addr"))],
                ..ClusterArgs::default()
            },
            &ConfigFile::default()
        )
        .is_err());
        assert!(parse_peer("2=nowhere").is_err());
        assert_eq!(
            cluster_config(&ClusterArgs::default(), &ConfigFile::default()).expect("ok"),
            None
        );
    }

    #[test]
    fn timings_below_100_ms_are_refused_not_raised() {
        let node = |extra: ClusterArgs| ClusterArgs {
            node_id: Some(1),
            listen: Some("127.0.0.1:7001".parse().expect("addr")),
            ..extra
        };
        for (dead, fault) in [(Some(99), None), (None, Some(99)), (None, Some(0))] {
            let args = node(ClusterArgs {
                dead_after_ms: dead,
                fault_timeout_ms: fault,
                ..ClusterArgs::default()
            });
            let e = cluster_config(&args, &ConfigFile::default()).expect_err("refused");
            assert!(e.is::<crate::exit::Usage>(), "{e:#}");
            assert!(e.to_string().contains("below 100 ms"), "{e:#}");
        }
        let args = node(ClusterArgs {
            fault_timeout_ms: Some(100),
            ..ClusterArgs::default()
        });
        let c = cluster_config(&args, &ConfigFile::default()).expect("valid");
        assert_eq!(c.expect("cluster").fault_timeout_ms, 100);
    }

    #[test]
    fn peers_may_be_host_names_and_the_list_may_name_this_node_at_its_listen_address() {
        assert_eq!(
            parse_peer("2=localhost:7312")
                .expect("a name resolves")
                .1
                .port(),
            7312
        );
        let all = |me: u32| ClusterArgs {
            node_id: Some(me),
            listen: Some(format!("127.0.0.1:700{me}").parse().expect("addr")),
            peers: (1..=3)
                .map(|i| (i, format!("127.0.0.1:700{i}").parse().expect("addr")))
                .collect(),
            ..ClusterArgs::default()
        };
        for me in 1..=3 {
            let c = cluster_config(&all(me), &ConfigFile::default())
                .expect("the same list on every node")
                .expect("cluster");
            assert_eq!(c.peers.len(), 2);
            assert!(c.peers.iter().all(|p| p.0 != me));
        }
        // This node's id at another address is a mistake, said so.
        let mut wrong = all(1);
        wrong.peers[0].1 = "127.0.0.1:9999".parse().expect("addr");
        let e = cluster_config(&wrong, &ConfigFile::default()).unwrap_err();
        assert!(e.to_string().contains("not its --listen address"), "{e}");
    }
}
