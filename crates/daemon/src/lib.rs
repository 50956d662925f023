//! pagemeshd: the node daemon. It owns each segment's page cache (a memfd), receives the uffd of
//! every process that attaches a segment, and serves all their page faults from a pool of
//! worker threads: dormant pages as zeros, file pages from the file, present pages by mapping
//! the one shared copy, tracking clean/dirty with write protection.

#![forbid(unsafe_code)]

mod access;
mod backing;
mod catalog;
mod cluster_requests;
mod cluster_segments;
mod connections;
pub mod datadir;
mod lifecycle;
mod owners;
mod partitions;
mod pool;
mod reply;
mod segments;
mod server;
mod state;
mod vms;
mod volumes;

/// The cluster side (its configuration and fatal reasons are part of this crate's API).
pub use pagemesh_cluster as cluster;

use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use connections::ConnectionLimits;
pub use state::Daemon;

/// Default socket path.
pub const DEFAULT_SOCKET: &str = "/run/pagemesh/pagemesh.sock";
/// Default state directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/pagemesh";

/// How a daemon is started.
#[derive(Clone, Debug)]
pub struct Config {
    pub socket_path: PathBuf,
    pub data_dir: PathBuf,
    pub fault_workers: usize,
    /// Faults a volume block needs before it enters the shared volume cache (1: always share).
    pub share_threshold: u8,
    /// The memory pool's budget for segment pages.
    pub memory_bytes: u64,
    /// The paging device file (created at start; its contents do not survive a restart).
    pub paging_device: PathBuf,
    /// Its size.
    pub paging_device_bytes: u64,
    /// The most resident memory the segments of one user other than root may take: its
    /// segments count against a partition of its own (`uid-N`) with this maximum.
    pub user_memory_bytes: u64,
    /// This node's place in a cluster (`None`: a single node; every segment is local).
    pub cluster: Option<cluster::ClusterConfig>,
    /// Longest clean stop on `SIGTERM`/`SIGINT` (syncing every segment included).
    pub shutdown_timeout: std::time::Duration,
    /// Who may connect, and how much they may hold.
    pub connections: ConnectionLimits,
}

/// The default for [`Config::shutdown_timeout`].
pub const DEFAULT_SHUTDOWN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// The default memory budget: half of the machine's RAM.
pub fn default_memory_bytes() -> u64 {
    let mem_total_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .map(str::to_string)
        })
        .and_then(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|v| v.parse::<u64>().ok())
        })
        .unwrap_or(2 << 20);
    mem_total_kib * 1024 / 2
}

/// Why the daemon could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("{0}")]
    Kernel(String),
    #[error("creating {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("another daemon is already listening on {0}; stop it or use --socket")]
    AlreadyRunning(PathBuf),
    #[error("data dir {dir} is in use by another pagemesh daemon ({holder}); stop it or use another --data-dir")]
    DataDirInUse { dir: PathBuf, holder: String },
    #[error("binding {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    DataDir(#[from] datadir::DataDirError),
    /// The cluster side stopped the node (the binary exits with [`cluster::fatal::Fatal::exit_code`]).
    #[error("{0}")]
    Fatal(#[from] cluster::fatal::Fatal),
    #[error("{0}")]
    State(String),
}

fn check_kernel() -> Result<String, StartError> {
    pagemesh_uffd::check_page_size().map_err(|e| StartError::Kernel(e.to_string()))?;
    let probe = pagemesh_uffd::Uffd::probe().map_err(|e| {
        StartError::Kernel(format!(
            "cannot open a userfaultfd ({e}): run as root, or give the daemon's user access to /dev/userfaultfd"
        ))
    })?;
    let need = pagemesh_uffd::features::PAGEMESH;
    if probe.features & need != need {
        let missing: Vec<&str> = pagemesh_uffd::features::NAMES
            .iter()
            .filter(|(bit, _)| need & bit != 0 && probe.features & bit == 0)
            .map(|(_, n)| *n)
            .collect();
        return Err(StartError::Kernel(format!(
            "this kernel's userfaultfd lacks {}: pagemesh needs Linux >= 6.8",
            missing.join(", ")
        )));
    }
    Ok(probe.mode.to_string())
}

fn bind(path: &Path, limits: &ConnectionLimits) -> Result<UnixListener, StartError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| StartError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(StartError::AlreadyRunning(path.to_path_buf()));
        }
        log::info!("removing stale socket {}", path.display());
        let _ = std::fs::remove_file(path);
    }
    let l = UnixListener::bind(path).map_err(|source| StartError::Bind {
        path: path.to_path_buf(),
        source,
    })?;
    // Who may connect is the socket's mode and group (`--socket-mode`, `--socket-group`).
    let set = |source| StartError::Bind {
        path: path.to_path_buf(),
        source,
    };
    if let Some(gid) = limits.socket_group {
        std::os::unix::fs::chown(path, None, Some(gid)).map_err(set)?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(limits.socket_mode))
        .map_err(set)?;
    Ok(l)
}

/// What ended the daemon.
enum End {
    /// `SIGTERM` or `SIGINT`: stop cleanly.
    Signal(&'static str),
    /// The socket server or the cluster side ended it.
    Ended(Result<(), StartError>),
}

/// Start a daemon and serve until it is stopped: `SIGTERM` or `SIGINT` (a clean stop, see
/// [`Config::shutdown_timeout`]), or the node stopped by its cluster. The catalog is persisted
/// on every change, so even a kill at any point loses nothing but unsynced page-cache contents.
///
/// `run` takes over `SIGTERM` and `SIGINT`: it blocks them in the calling thread and waits for
/// them on a thread of its own, so call it before starting other threads.
pub fn run(config: Config) -> Result<(), StartError> {
    let uffd_mode = check_kernel()?;
    lifecycle::private_umask();
    match pagemesh_uffd::process::raise_open_files_limit() {
        Ok(n) if n < 4096 => log::warn!(
            "open files are limited to {n}: each client connection and attachment takes some; raise the hard limit (LimitNOFILE=) for many clients"
        ),
        Ok(_) => {}
        Err(e) => log::warn!("raising the open-files limit: {e}"),
    }
    std::fs::create_dir_all(&config.data_dir).map_err(|source| StartError::Dir {
        path: config.data_dir.clone(),
        source,
    })?;
    // One daemon per data dir, before anything in it is read or recreated.
    let _lock = lifecycle::lock_data_dir(&config.data_dir)?;
    // Before anything in the data dir is read: can this pagemesh read its format?
    datadir::open(&config.data_dir)?;
    let fixed = lifecycle::make_private(&config.data_dir)?;
    if fixed > 0 {
        log::info!(
            "data dir {}: {fixed} file(s) or dir(s) made private to the daemon's user (0600/0700)",
            config.data_dir.display()
        );
    }
    // Whatever ends the daemon (a stop signal, the socket server failing, the cluster side
    // stopping the node) comes back here, and `run` returns it: the library never exits the
    // process.
    let (ended, end) = std::sync::mpsc::channel::<End>();
    let on_signal = ended.clone();
    lifecycle::catch_stop_signals(move |signal| on_signal.send(End::Signal(signal)).is_ok())?;
    let listener = bind(&config.socket_path, &config.connections)?;
    let daemon = Daemon::new(config.clone(), uffd_mode.clone()).map_err(StartError::State)?;
    if let Some(c) = &config.cluster {
        let ended = ended.clone();
        let on_fatal = Box::new(move |f: cluster::fatal::Fatal| {
            let _ = ended.send(End::Ended(Err(StartError::Fatal(f))));
        });
        cluster_segments::start(&daemon, c.clone(), on_fatal).map_err(StartError::State)?;
    }
    log::info!(
        "pagemeshd {} pid {} listening on {} (uffd {uffd_mode}, {} fault workers, data in {})",
        env!("CARGO_PKG_VERSION"),
        std::process::id(),
        config.socket_path.display(),
        config.fault_workers,
        config.data_dir.display()
    );
    let socket = config.socket_path.clone();
    let server = Arc::clone(&daemon);
    std::thread::Builder::new()
        .name("socket-server".into())
        .spawn(move || {
            let served = server
                .serve(listener)
                .map_err(|e| StartError::State(format!("serving {}: {e}", socket.display())));
            let _ = ended.send(End::Ended(served));
        })
        .map_err(|e| StartError::State(format!("starting the socket server: {e}")))?;
    match end.recv() {
        Ok(End::Signal(signal)) => daemon.shutdown(signal, config.shutdown_timeout),
        Ok(End::Ended(r)) => r,
        Err(_) => Err(StartError::State(
            "the socket server thread vanished".into(),
        )),
    }
}
