//! `pagemesh vm serve`: Firecracker's UFFD memory backend, served from a volume.
//!
//! Firecracker, loading a snapshot with `"mem_backend": {"backend_type": "Uffd",
//! "backend_path": UDS}`, connects to UDS and sends one message: its guest memory's
//! userfaultfd (SCM_RIGHTS) and a JSON array of regions (`base_host_virt_addr`, `size`,
//! `offset` in the snapshot memory file, `page_size`). This command listens on UDS, checks the
//! peer (SO_PEERCRED), hands the uffd, the regions and a pidfd of the VMM to the daemon, which
//! serves every fault from the volume's node-wide cache, and watches the daemon: if it dies, the
//! VMM is stopped loudly (see docs/firecracker.md).
//!
//! Working sets: with `--record FILE` the image pages each VM's faults brought in, in order,
//! are taken from the daemon when the VM ends (or this command is stopped) and written to FILE
//! (`working_set`); with `--replay FILE` they are handed to the daemon right after each
//! attach, to be pushed into the guest ahead of its faults.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use pagemesh::vm::{VmEnd, VmLease, VMM_STOP_GRACE};
use pagemesh::{Client, VmRegion};
use pagemesh_uffd::process::StopSignals;
use pagemesh_uffd::{fdpass, PidFd, Stopped};

use crate::working_set::WorkingSet;

/// Most bytes of the VMM's region list.
const MAX_MESSAGE_BYTES: usize = 64 << 10;
/// Time the VMM has to send its message after connecting.
const MESSAGE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Subcommand)]
pub enum VmCmd {
    /// Serve Firecracker's UFFD memory backend from a volume holding the snapshot's memory
    /// file: listen on a Unix socket for the VMM's connection (`mem_backend.backend_path`),
    /// and have the daemon serve every guest page fault from the volume's node-wide cache.
    /// If a page cannot be served, or the daemon dies, the VMM is stopped (SIGBUS, then
    /// SIGKILL after 2 s).
    Serve {
        /// The Unix socket to listen on (created mode 0600; an existing socket nobody listens
        /// on is replaced).
        #[arg(long)]
        listen: PathBuf,
        /// The volume whose image is the snapshot's memory file (`pagemesh volume add`).
        #[arg(long)]
        snapshot: String,
        /// Also accept VMMs running as this uid (besides root and this command's own uid);
        /// repeatable.
        #[arg(long)]
        allow_uid: Vec<u32>,
        /// Most VMs served at once through this socket.
        #[arg(long, default_value_t = 64)]
        max_vms: usize,
        /// Serve one VM, then exit: 0 when its VMM exited, 1 when it had to be stopped because
        /// the daemon went away.
        #[arg(long)]
        once: bool,
        /// Record the order of each VM's first faults (the image pages they brought in, each
        /// once, at most 262144) and write it to FILE, durably, when the VM ends or this
        /// command is stopped (SIGTERM, SIGINT); with several VMs, the last to end wins.
        #[arg(long, value_name = "FILE")]
        record: Option<PathBuf>,
        /// Push the pages recorded in FILE (by --record, from this snapshot) into each VM's
        /// memory, in their order, right after it connects and ahead of its own faults, which
        /// are still served first.
        #[arg(long, value_name = "FILE")]
        replay: Option<PathBuf>,
    },
}

/// What every VM this command serves shares.
struct Serving {
    client: Client,
    snapshot: String,
    image_bytes: u64,
    allowed: Allowed,
    record: Option<PathBuf>,
    replay: Option<Vec<u64>>,
    /// The VMs served now, for a stop signal to take their records.
    leases: Mutex<Vec<Arc<VmLease>>>,
    /// One write of the record file at a time.
    writing: Mutex<()>,
}

/// The region as Firecracker describes it (`GuestRegionUffdMapping`).
#[derive(serde::Deserialize)]
struct FcRegion {
    base_host_virt_addr: u64,
    size: u64,
    offset: u64,
    page_size: Option<u64>,
    page_size_kib: Option<u64>,
}

pub fn run(socket: &Path, cmd: VmCmd) -> anyhow::Result<ExitCode> {
    let VmCmd::Serve {
        listen,
        snapshot,
        allow_uid,
        max_vms,
        once,
        record,
        replay,
    } = cmd;
    let client = Client::connect(socket)?;
    let image_bytes = client
        .stat_volume(&snapshot)
        .with_context(|| format!("snapshot volume {snapshot:?}"))?
        .info
        .size_bytes;
    let replay = match replay {
        Some(path) => Some(replay_pages(&path, &snapshot, image_bytes)?),
        None => None,
    };
    // Blocked here, before any thread starts, so every thread inherits the mask.
    let signals = StopSignals::block().context("blocking SIGTERM and SIGINT")?;
    let listener = bind(&listen)?;
    eprintln!(
        "pagemesh vm serve: listening on {} for VMMs restoring volume {snapshot}",
        listen.display()
    );
    let serving = Arc::new(Serving {
        client,
        snapshot,
        image_bytes,
        allowed: Allowed::new(allow_uid)?,
        record,
        replay,
        leases: Mutex::new(Vec::new()),
        writing: Mutex::new(()),
    });
    on_stop_signal(signals, Arc::clone(&serving), listen.clone())?;
    let live = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let conn = match conn {
            Ok(c) => c,
            Err(e) => {
                eprintln!("pagemesh vm serve: accept failed: {e}");
                continue;
            }
        };
        if once {
            let end = serve_one(&serving, conn)?;
            let _ = std::fs::remove_file(&listen);
            return Ok(match end {
                VmEnd::VmmExited => ExitCode::SUCCESS,
                VmEnd::DaemonGone(_) => ExitCode::from(1),
            });
        }
        if live.fetch_add(1, Ordering::SeqCst) >= max_vms {
            live.fetch_sub(1, Ordering::SeqCst);
            refuse_and_stop(&conn, &format!("{max_vms} VMs are served already"));
            continue;
        }
        let (s, l) = (Arc::clone(&serving), Arc::clone(&live));
        std::thread::spawn(move || {
            if let Err(e) = serve_one(&s, conn) {
                eprintln!("pagemesh vm serve: {e:#}");
            }
            l.fetch_sub(1, Ordering::SeqCst);
        });
    }
    Ok(ExitCode::SUCCESS)
}

/// The pages of working-set file `path`, checked against the snapshot's image.
fn replay_pages(path: &Path, snapshot: &str, image_bytes: u64) -> anyhow::Result<Vec<u64>> {
    let ws = WorkingSet::load(path)?;
    if ws.image_bytes != image_bytes {
        bail!(
            "{}: recorded from an image of {} bytes; volume {snapshot} is {image_bytes} bytes:              record it again from this snapshot",
            path.display(),
            ws.image_bytes
        );
    }
    Ok(ws.pages)
}

/// On SIGTERM or SIGINT: write the records of the VMs served now (with --record), remove the
/// socket and exit 0. The VMs' leases close with this process, and the daemon stops them.
fn on_stop_signal(
    signals: StopSignals,
    serving: Arc<Serving>,
    listen: PathBuf,
) -> anyhow::Result<()> {
    std::thread::Builder::new()
        .name("stop-signals".into())
        .spawn(move || {
            let sig = signals.wait();
            let leases = serving
                .leases
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            eprintln!(
                "pagemesh vm serve: {sig}: stopping; the daemon stops the {} VMs served",
                leases.len()
            );
            for lease in &leases {
                save_record(&serving, lease);
            }
            let _ = std::fs::remove_file(&listen);
            std::process::exit(0);
        })
        .context("starting the signal thread")?;
    Ok(())
}

/// With --record: take the VM's recorded working set from the daemon and write it, durably.
/// A failure is said, not fatal: the VM's service is not affected.
fn save_record(serving: &Serving, lease: &VmLease) {
    let Some(path) = &serving.record else {
        return;
    };
    let id = lease.vm_id();
    let (pages, dropped) = match lease.record() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pagemesh vm serve: vm {id}: no working set recorded: {e}");
            return;
        }
    };
    let ws = WorkingSet {
        image_bytes: serving.image_bytes,
        pages,
        dropped,
    };
    let _g = serving
        .writing
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    match ws.save(path) {
        Ok(()) => eprintln!(
            "pagemesh vm serve: vm {id}: working set of {} pages recorded to {}{}",
            ws.pages.len(),
            path.display(),
            if dropped > 0 {
                format!(" ({dropped} more past the bound not kept)")
            } else {
                String::new()
            }
        ),
        Err(e) => eprintln!(
            "pagemesh vm serve: vm {id}: writing the working set to {}: {e}",
            path.display()
        ),
    }
}

/// The uids whose VMMs this command serves.
struct Allowed {
    uids: Vec<u32>,
}

impl Allowed {
    fn new(mut extra: Vec<u32>) -> anyhow::Result<Allowed> {
        let status = std::fs::read_to_string("/proc/self/status")?;
        let euid = status
            .lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|v| v.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| anyhow!("cannot read this process's uid"))?;
        extra.extend([0, euid]);
        Ok(Allowed { uids: extra })
    }
}

/// Listen on `path`, mode 0600; a stale socket file (nobody listening) is replaced.
fn bind(path: &Path) -> anyhow::Result<UnixListener> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!("{} is in use by another listener", path.display());
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let l = UnixListener::bind(path).with_context(|| format!("listening on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Refuse a VMM that connected: it has handed (or is handing) over its guest memory's uffd and
/// would wait forever on its next fault, so it is stopped loudly.
fn refuse_and_stop(conn: &UnixStream, why: &str) {
    let _ = conn.shutdown(std::net::Shutdown::Both);
    let pid = fdpass::peer_cred(conn).map(|c| c.pid);
    let who = match &pid {
        Ok(pid) => format!("pid {pid}"),
        Err(e) => format!("pid unknown: {e}"),
    };
    eprintln!("pagemesh vm serve: refusing the VMM ({who}): {why}; stopping it");
    if let Ok(vmm) = pid.and_then(PidFd::open) {
        vmm.stop_loudly(VMM_STOP_GRACE);
    }
}

/// Take one VMM's connection: check it, hand its memory to the daemon, watch until it ends.
fn serve_one(serving: &Serving, conn: UnixStream) -> anyhow::Result<VmEnd> {
    let (client, snapshot) = (&serving.client, serving.snapshot.as_str());
    let cred = fdpass::peer_cred(&conn).context("reading the VMM's credentials")?;
    if !serving.allowed.uids.contains(&cred.uid) {
        // Not stopped: a process of a user it may not serve is none of its business.
        let _ = conn.shutdown(std::net::Shutdown::Both);
        bail!(
            "refused a VMM (pid {}) running as uid {}: not root, not this command's uid, not --allow-uid",
            cred.pid,
            cred.uid
        );
    }
    let vmm = PidFd::open(cred.pid).with_context(|| format!("VMM pid {}", cred.pid))?;
    // From here on the VMM waits on its guest memory: any failure must stop it, or it would
    // wait forever on its next fault (it holds its own copy of the uffd).
    let attached = receive(&conn).and_then(|(uffd, regions)| {
        let lease = client.attach_vm(snapshot, &vmm, uffd.as_fd(), &regions)?;
        Ok((lease, regions.len()))
    });
    let (lease, n) = match attached {
        Ok(v) => v,
        Err(e) => {
            let stopped = vmm.stop_loudly(VMM_STOP_GRACE);
            return Err(e.context(format!(
                "VMM pid {} could not be served; {}",
                cred.pid,
                how_stopped(stopped)
            )));
        }
    };
    let lease = Arc::new(lease);
    eprintln!(
        "pagemesh vm serve: vm {} (VMM pid {}, {n} regions) served from volume {snapshot}",
        lease.vm_id(),
        cred.pid
    );
    if let Some(pages) = &serving.replay {
        match lease.replay(pages.clone()) {
            Ok(()) => eprintln!(
                "pagemesh vm serve: vm {}: replaying a working set of {} pages",
                lease.vm_id(),
                pages.len()
            ),
            Err(e) => eprintln!(
                "pagemesh vm serve: vm {}: the working set could not be handed over (served \
                 without it): {e}",
                lease.vm_id()
            ),
        }
    }
    let leases = || {
        serving
            .leases
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    };
    leases().push(Arc::clone(&lease));
    let end = lease.watch(&vmm);
    leases().retain(|l| !Arc::ptr_eq(l, &lease));
    if end == VmEnd::VmmExited {
        save_record(serving, &lease);
    }
    match end {
        VmEnd::VmmExited => eprintln!(
            "pagemesh vm serve: vm {} (VMM pid {}) exited",
            lease.vm_id(),
            cred.pid
        ),
        VmEnd::DaemonGone(how) => eprintln!(
            "pagemesh vm serve: the daemon went away: vm {} (VMM pid {}) cannot be served; {}",
            lease.vm_id(),
            cred.pid,
            how_stopped(how)
        ),
    }
    Ok(end)
}

/// How a VMM was stopped, for a message.
fn how_stopped(how: Stopped) -> &'static str {
    match how {
        Stopped::ByBus => "stopped it with SIGBUS",
        Stopped::ByKill => "it ignored SIGBUS: killed it (SIGKILL)",
        Stopped::AlreadyGone => "it had exited already",
    }
}

/// Read the VMM's one message: the uffd and the JSON regions.
fn receive(conn: &UnixStream) -> anyhow::Result<(OwnedFd, Vec<VmRegion>)> {
    conn.set_read_timeout(Some(MESSAGE_TIMEOUT))?;
    let mut buf = vec![0u8; MAX_MESSAGE_BYTES];
    let mut fds = Vec::new();
    let mut len = 0;
    let regions: Vec<FcRegion> = loop {
        let n = fdpass::recv_with_fds(conn, &mut buf[len..], &mut fds)
            .context("reading the VMM's message")?;
        len += n;
        if let Ok(r) = serde_json::from_slice(&buf[..len]) {
            break r;
        }
        if n == 0 || len == buf.len() {
            bail!(
                "the VMM's message is not a JSON list of regions: {:?}",
                String::from_utf8_lossy(&buf[..len.min(200)])
            );
        }
    };
    if fds.len() != 1 {
        bail!(
            "the VMM sent {} fds with its message, not one uffd",
            fds.len()
        );
    }
    let regions = regions
        .iter()
        .map(|r| {
            let ps = r.page_size.or(r.page_size_kib).unwrap_or(4096);
            if ps != 4096 {
                bail!("guest memory with {ps}-byte pages: only 4 KiB pages are served");
            }
            Ok(VmRegion {
                base: r.base_host_virt_addr,
                size_bytes: r.size,
                offset: r.offset,
            })
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    Ok((fds.pop().expect("one fd"), regions))
}
