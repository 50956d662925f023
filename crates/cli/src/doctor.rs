//! `pagemesh doctor`: can this machine run pagemesh, and how well?

use std::path::Path;
use std::process::ExitCode;

use pagemesh_uffd::{features, OpenMode, Uffd};

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|e| format!("unreadable ({e})"))
}

fn line(ok: bool, what: &str, detail: impl std::fmt::Display) {
    println!("[{}] {what:<28} {detail}", if ok { " ok " } else { "FAIL" });
}

pub fn run(socket: &Path) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    let release = read_trim("/proc/sys/kernel/osrelease");
    let (maj, min) = {
        let mut it = release
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|s| s.parse::<u32>().ok());
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    };
    let kernel_ok = (maj, min) >= (6, 8);
    failed |= !kernel_ok;
    line(kernel_ok, "kernel", format!("{release} (need >= 6.8)"));
    let ps = pagemesh_uffd::check_page_size();
    failed |= ps.is_err();
    line(
        ps.is_ok(),
        "page size",
        ps.map(|()| "4096".to_string())
            .unwrap_or_else(|e| e.to_string()),
    );
    match Uffd::probe() {
        Ok(p) => {
            let full = p.mode != OpenMode::UserModeOnly;
            line(full, "userfaultfd mode", p.mode);
            if !full {
                println!("       grant full mode: give the user access to /dev/userfaultfd (e.g. a group with rw), or CAP_SYS_PTRACE");
            }
            let have: Vec<&str> = features::NAMES
                .iter()
                .filter(|(b, _)| p.features & b != 0)
                .map(|(_, n)| *n)
                .collect();
            let missing: Vec<&str> = features::NAMES
                .iter()
                .filter(|(b, _)| features::PAGEMESH & b != 0 && p.features & b == 0)
                .map(|(_, n)| *n)
                .collect();
            failed |= !missing.is_empty();
            line(
                missing.is_empty(),
                "userfaultfd features",
                if missing.is_empty() {
                    "all needed present".to_string()
                } else {
                    format!("missing {missing:?}")
                },
            );
            println!("       kernel offers: {}", have.join(" "));
        }
        Err(e) => {
            failed = true;
            line(
                false,
                "userfaultfd",
                format!("{e}: run as root or grant access to /dev/userfaultfd"),
            );
        }
    }
    line(
        true,
        "vm.unprivileged_userfaultfd",
        read_trim("/proc/sys/vm/unprivileged_userfaultfd"),
    );
    let dev = std::fs::metadata("/dev/userfaultfd");
    line(
        dev.is_ok(),
        "/dev/userfaultfd",
        match dev {
            Ok(m) => {
                use std::os::unix::fs::PermissionsExt;
                format!("present, mode {:o}", m.permissions().mode() & 0o777)
            }
            Err(e) => format!("absent ({e}); the syscall is used instead"),
        },
    );
    line(
        true,
        "vm.max_map_count",
        read_trim("/proc/sys/vm/max_map_count"),
    );
    let thp = read_trim("/sys/kernel/mm/transparent_hugepage/shmem_enabled");
    line(
        true,
        "shmem THP",
        format!("{thp} (pagemesh maps segments with MADV_NOHUGEPAGE)"),
    );
    let limits = std::fs::read_to_string("/proc/self/limits").unwrap_or_default();
    if let Some(l) = limits.lines().find(|l| l.starts_with("Max open files")) {
        line(
            true,
            "open files limit",
            l.trim_start_matches("Max open files").trim(),
        );
    }
    match pagemesh::Client::connect(socket).and_then(|c| c.status()) {
        Ok(s) => line(
            true,
            "daemon",
            format!(
                "pid {} at {} ({} segments, {} attached)",
                s.pid,
                socket.display(),
                s.segments,
                s.attached_clients
            ),
        ),
        Err(e) => line(true, "daemon", format!("not reachable: {e}")),
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}
