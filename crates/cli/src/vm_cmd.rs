//! `pagemesh vm serve`: Firecracker's UFFD memory backend, served from a volume.
//!
//! Firecracker, loading a snapshot with `"mem_backend": {"backend_type": "Uffd",
//! "backend_path": UDS}`, connects to UDS and sends one message: its guest memory's
//! userfaultfd (SCM_RIGHTS) and a JSON array of regions (`base_host_virt_addr`, `size`,
//! `offset` in the snapshot memory file, `page_size`). This command listens on UDS, checks the
//! peer (SO_PEERCRED), hands the uffd, the regions and a pidfd of the VMM to the daemon, which
//! serves every fault from the volume's node-wide cache, and watches the daemon: if it dies, the
//! VMM is stopped loudly (see docs/firecracker.md).

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Subcommand;
use pagemesh::vm::{VmEnd, VMM_STOP_GRACE};
use pagemesh::{Client, VmRegion};
use pagemesh_uffd::{fdpass, PidFd, Stopped};

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
    },
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
    } = cmd;
    let client = Client::connect(socket)?;
    client
        .stat_volume(&snapshot)
        .with_context(|| format!("snapshot volume {snapshot:?}"))?;
    let listener = bind(&listen)?;
    eprintln!(
        "pagemesh vm serve: listening on {} for VMMs restoring volume {snapshot}",
        listen.display()
    );
    let allowed = Arc::new(Allowed::new(allow_uid)?);
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
            let end = serve_one(&client, &snapshot, &allowed, conn)?;
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
        let (c, s, a, l) = (
            client.clone(),
            snapshot.clone(),
            Arc::clone(&allowed),
            Arc::clone(&live),
        );
        std::thread::spawn(move || {
            if let Err(e) = serve_one(&c, &s, &a, conn) {
                eprintln!("pagemesh vm serve: {e:#}");
            }
            l.fetch_sub(1, Ordering::SeqCst);
        });
    }
    Ok(ExitCode::SUCCESS)
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
fn serve_one(
    client: &Client,
    snapshot: &str,
    allowed: &Allowed,
    conn: UnixStream,
) -> anyhow::Result<VmEnd> {
    let cred = fdpass::peer_cred(&conn).context("reading the VMM's credentials")?;
    if !allowed.uids.contains(&cred.uid) {
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
    eprintln!(
        "pagemesh vm serve: vm {} (VMM pid {}, {n} regions) served from volume {snapshot}",
        lease.vm_id(),
        cred.pid
    );
    let end = lease.watch(&vmm);
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
