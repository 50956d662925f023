//! The daemon's lifecycle around serving: one daemon per data dir, state only its user can
//! read, and a clean stop on `SIGTERM` or `SIGINT` (docs/ARCHITECTURE.md, "Lifecycle").

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsFd;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use pagemesh_proto::{Backing, Request, Response};

use crate::access::Caller;
use crate::cluster_requests::HeldLocks;
use crate::state::Daemon;
use crate::StartError;

/// The lock file in the data dir (its content: the holder's pid).
const LOCK_FILE: &str = "daemon.lock";

/// The data dir's lock, held (`flock`, exclusive) for the daemon's life; the kernel drops it
/// when the process ends, however it ends.
pub(crate) struct DirLock {
    _file: File,
}

/// Take the data dir for this daemon, or say which daemon has it.
pub(crate) fn lock_data_dir(dir: &Path) -> Result<DirLock, StartError> {
    let path = dir.join(LOCK_FILE);
    let io = |source| StartError::Dir {
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io)?;
    if !pagemesh_uffd::process::try_lock_exclusive(file.as_fd()).map_err(io)? {
        let mut text = String::new();
        let _ = file.read_to_string(&mut text);
        return Err(StartError::DataDirInUse {
            dir: dir.to_path_buf(),
            holder: match text.trim() {
                "" => "pid unknown".into(),
                pid => format!("pid {pid}"),
            },
        });
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    Ok(DirLock { _file: file })
}

/// Files the daemon creates from now on are its user's alone (`umask 077`): the catalog, the
/// paging device, the homes' stores, intent logs, epochs and fences hold segment data or
/// decide what is trusted. The socket's mode is set explicitly when it is bound.
pub(crate) fn private_umask() {
    pagemesh_uffd::process::set_umask(0o077);
}

/// Make the data dir 0700 and everything in it 0600 (directories 0700): a data dir from a
/// release that created them 0644 is fixed at start. Returns how many modes were changed.
pub(crate) fn make_private(dir: &Path) -> Result<usize, StartError> {
    let mut changed = 0;
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        let io = |source| StartError::Dir {
            path: p.clone(),
            source,
        };
        let meta = std::fs::symlink_metadata(&p).map_err(io)?;
        let want = if meta.is_dir() {
            0o700
        } else if meta.is_file() {
            0o600
        } else {
            continue; // sockets, symlinks: not state of ours
        };
        if meta.permissions().mode() & 0o777 != want {
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(want)).map_err(io)?;
            changed += 1;
        }
        if meta.is_dir() {
            for e in std::fs::read_dir(&p).map_err(io)? {
                stack.push(e.map_err(io)?.path());
            }
        }
    }
    Ok(changed)
}

/// Block `SIGTERM` and `SIGINT` in the calling thread (and so in every thread it starts from
/// now on), and wait for them on a thread of their own, which calls `on_signal` with the
/// signal's name (and ends when it returns false).
pub(crate) fn catch_stop_signals(
    on_signal: impl Fn(&'static str) -> bool + Send + 'static,
) -> Result<(), StartError> {
    let signals = pagemesh_uffd::process::StopSignals::block()
        .map_err(|e| StartError::State(format!("blocking SIGTERM and SIGINT: {e}")))?;
    std::thread::Builder::new()
        .name("stop-signals".into())
        .spawn(move || while on_signal(signals.wait()) {})
        .map(drop)
        .map_err(|e| StartError::State(format!("starting the signal thread: {e}")))
}

impl Daemon {
    /// Stop cleanly, within `timeout`: no new clients (the socket goes), no more faults
    /// served (they wait in their uffds, so no write lands after the sync without the writer
    /// knowing: its process gets SIGBUS once the daemon is gone), then every segment whose data
    /// outlives the daemon synced (file segments, and every cluster segment, whose sync writes
    /// back the copies held anywhere, this node's exclusive ones included). Each step is
    /// logged; what could not be synced is the error.
    pub(crate) fn shutdown(&self, signal: &str, timeout: Duration) -> Result<(), StartError> {
        let start = Instant::now();
        let end = start + timeout;
        log::info!(
            "{signal}: shutting down (at most {} s): no new clients, no more faults served, every segment with a backing synced",
            timeout.as_secs()
        );
        match std::fs::remove_file(&self.config.socket_path) {
            Ok(()) => log::info!("shutdown: removed {}", self.config.socket_path.display()),
            Err(e) => log::warn!(
                "shutdown: removing {}: {e}",
                self.config.socket_path.display()
            ),
        }
        if !self
            .workers
            .pause(end.saturating_duration_since(Instant::now()))
        {
            log::warn!("shutdown: a fault worker was still serving when the time ran out");
        }
        if let Some(c) = self.cluster.get() {
            let (tx, rx) = mpsc::channel();
            let stopped = c
                .send(pagemesh_cluster::Input::StopFaults { reply: tx })
                .is_ok()
                && rx
                    .recv_timeout(end.saturating_duration_since(Instant::now()))
                    .is_ok();
            if !stopped {
                log::warn!("shutdown: the cluster engine did not stop serving faults in time");
            }
        }
        let failed = self.sync_all(end);
        log::info!(
            "shutdown: done in {} ms; {} attachment(s) end now (their processes get SIGBUS at their next fault on the segment)",
            start.elapsed().as_millis(),
            self.workers.count()
        );
        if failed.is_empty() {
            Ok(())
        } else {
            Err(StartError::State(format!(
                "shutdown: {} segment(s) not synced: {}",
                failed.len(),
                failed.join("; ")
            )))
        }
    }

    /// Sync every segment whose data outlives the daemon, until `end`; what failed.
    fn sync_all(&self, end: Instant) -> Vec<String> {
        let mut names: Vec<(String, bool)> = self
            .segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| s.info.home.is_some() || matches!(s.info.backing, Backing::File { .. }))
            .map(|s| (s.info.name.clone(), s.info.home.is_some()))
            .collect();
        names.sort();
        let mut failed = Vec::new();
        for (name, cluster) in names {
            if Instant::now() >= end {
                failed.push(format!("{name}: out of time"));
                continue;
            }
            let answer = match (cluster, self.cluster.get()) {
                // Within what is left of the shutdown: an unreachable home must not hold it.
                (true, Some(c)) => {
                    let left = end.saturating_duration_since(Instant::now());
                    self.cluster_sync_within(c, &name, left)
                        .unwrap_or_else(|e| e)
                }
                _ => {
                    let req = Request::SyncSegment { name: name.clone() };
                    self.route(req, &Caller::root(), None, &mut HeldLocks::default())
                        .0
                }
            };
            match answer {
                Response::Synced { pages_written } if cluster => {
                    log::info!("shutdown: cluster segment {name} synced at its home ({pages_written} page(s) from here)")
                }
                Response::Synced { pages_written } => {
                    log::info!("shutdown: segment {name} synced ({pages_written} page(s) written)")
                }
                Response::Error { message, .. } => {
                    log::error!("shutdown: segment {name} not synced: {message}");
                    failed.push(format!("{name}: {message}"));
                }
                other => {
                    log::error!("shutdown: segment {name}: unexpected answer to sync: {other:?}");
                    failed.push(format!("{name}: unexpected answer {other:?}"));
                }
            }
        }
        failed
    }
}
