//! `pagemesh daemon`: the node daemon's options, gathered from flags and the TOML config.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use crate::{cluster_cmd, logger};

#[derive(Args)]
pub struct DaemonArgs {
    /// Where the segment catalog lives (default: /var/lib/pagemesh).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Fault worker threads (default: number of CPUs).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Faults a volume block needs before it enters the shared volume cache; below that a
    /// fault gets a private copy read from storage (1: share every block at once).
    #[arg(long, default_value_t = 1)]
    pub share_threshold: u8,
    /// Memory budget for segment pages (default: half of the machine's RAM). Resident pages
    /// above it are evicted: clean ones dropped, dirty ones written back or paged out.
    #[arg(long, value_parser = crate::parse_size)]
    pub memory: Option<u64>,
    /// Paging device file (default: DATA_DIR/paging.swap; recreated at every start).
    #[arg(long)]
    pub paging_device: Option<PathBuf>,
    /// Paging device size (default: 4 x --memory; the file is sparse).
    #[arg(long, value_parser = crate::parse_size)]
    pub paging_device_size: Option<u64>,
    /// Most resident memory the segments of one user other than root may take (default: half
    /// of --memory): a user's segments count against a partition of its own, uid-N, and are
    /// paged out beyond it, so no one user fills the pool.
    #[arg(long, value_parser = crate::parse_size)]
    pub user_memory: Option<u64>,
    /// The least severe messages the daemon logs (on stderr).
    #[arg(long, env = "PAGEMESH_LOG", value_enum, default_value_t = crate::logger::Level::Info)]
    pub log_level: crate::logger::Level,
    /// Longest clean stop on SIGTERM or SIGINT, in seconds: stop serving, sync every
    /// segment with a backing (cluster segments at their homes), remove the socket.
    #[arg(long, value_name = "SECS", default_value_t = pagemesh_daemon::DEFAULT_SHUTDOWN_TIMEOUT.as_secs())]
    pub shutdown_timeout: u64,
    #[command(flatten)]
    pub cluster: crate::cluster_cmd::ClusterArgs,
    /// Mode of the socket file, in octal: who may connect (owner, group, others).
    #[arg(long, value_name = "OCTAL", default_value = "0660", value_parser = parse_mode)]
    pub socket_mode: u32,
    /// Group of the socket file (a group name or a gid; default: the daemon's).
    #[arg(long, value_name = "GROUP")]
    pub socket_group: Option<String>,
    /// Most connections one user other than root may hold at once; more are refused (busy).
    #[arg(long, value_name = "N", default_value_t = pagemesh_daemon::ConnectionLimits::default().per_uid)]
    pub max_connections_per_uid: usize,
    /// Seconds a connection that holds no lock may go without a request before the daemon
    /// closes it (clients reconnect by themselves).
    #[arg(long, value_name = "SECS", default_value_t = pagemesh_daemon::ConnectionLimits::default().idle_timeout.as_secs())]
    pub idle_timeout: u64,
}

/// `--socket-mode`: an octal mode of permission bits only.
fn parse_mode(s: &str) -> Result<u32, String> {
    let m = u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .map_err(|_| format!("{s:?} is not an octal mode (e.g. 0660)"))?;
    if m > 0o777 {
        return Err(format!("{s} has bits beyond rwxrwxrwx (at most 0777)"));
    }
    Ok(m)
}

/// `--socket-group`: a gid, or a group name from /etc/group.
fn group_id(g: &str) -> anyhow::Result<u32> {
    if let Ok(gid) = g.parse::<u32>() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group").context("reading /etc/group")?;
    for line in groups.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 3 && f[0] == g {
            return f[2]
                .parse()
                .with_context(|| format!("/etc/group: group {g} has gid {:?}", f[2]));
        }
    }
    usage!("--socket-group {g}: no such group in /etc/group (give a name or a gid)")
}

/// Gather the configuration and run the daemon until it stops; its exit code.
pub fn run(socket: PathBuf, a: DaemonArgs) -> anyhow::Result<ExitCode> {
    logger::init(a.log_level);
    let file = match &a.cluster.config {
        Some(p) => cluster_cmd::read_config(p)?,
        None => cluster_cmd::ConfigFile::default(),
    };
    let cluster_cfg = cluster_cmd::cluster_config(&a.cluster, &file)?;
    let data_dir = a
        .data_dir
        .or(file.data_dir.clone())
        .unwrap_or_else(|| PathBuf::from(pagemesh_daemon::DEFAULT_DATA_DIR));
    let socket_path = if socket == std::path::Path::new(pagemesh::DEFAULT_SOCKET) {
        file.socket.clone().unwrap_or(socket)
    } else {
        socket
    };
    let memory_bytes = a
        .memory
        .unwrap_or_else(pagemesh_daemon::default_memory_bytes);
    let workers = a.workers.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let connections = pagemesh_daemon::ConnectionLimits {
        socket_mode: a.socket_mode,
        socket_group: a.socket_group.as_deref().map(group_id).transpose()?,
        per_uid: a.max_connections_per_uid.max(1),
        idle_timeout: Duration::from_secs(a.idle_timeout.max(1)),
    };
    let config = pagemesh_daemon::Config {
        socket_path,
        cluster: cluster_cfg,
        fault_workers: workers.max(1),
        share_threshold: a.share_threshold,
        memory_bytes,
        paging_device: a
            .paging_device
            .unwrap_or_else(|| data_dir.join("paging.swap")),
        paging_device_bytes: a.paging_device_size.unwrap_or(memory_bytes * 4),
        user_memory_bytes: a.user_memory.unwrap_or(memory_bytes / 2),
        data_dir,
        shutdown_timeout: Duration::from_secs(a.shutdown_timeout),
        connections,
    };
    match pagemesh_daemon::run(config) {
        Ok(()) => Ok(ExitCode::SUCCESS),
        // The node was stopped (fenced, or its page cache diverged from the protocol): its own
        // exit code, so supervisors and tests can tell why.
        Err(pagemesh_daemon::StartError::Fatal(f)) => {
            log::error!("{f}");
            Ok(ExitCode::from(f.exit_code()))
        }
        Err(e) => Err(anyhow::Error::from(e)),
    }
}
