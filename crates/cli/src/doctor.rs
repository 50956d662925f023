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
    outln!("[{}] {what:<28} {detail}", if ok { " ok " } else { "FAIL" });
}

/// The kernel release: 6.8 or later. Whether it passed.
fn check_kernel() -> bool {
    let release = read_trim("/proc/sys/kernel/osrelease");
    let (maj, min) = {
        let mut it = release
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|s| s.parse::<u32>().ok());
        (it.next().unwrap_or(0), it.next().unwrap_or(0))
    };
    let ok = (maj, min) >= (6, 8);
    line(ok, "kernel", format!("{release} (need >= 6.8)"));
    ok
}

/// 4 KiB pages. Whether it passed.
fn check_page_size() -> bool {
    let ps = pagemesh_uffd::check_page_size();
    line(
        ps.is_ok(),
        "page size",
        ps.as_ref()
            .map(|()| "4096".to_string())
            .unwrap_or_else(|e| e.to_string()),
    );
    ps.is_ok()
}

/// userfaultfd can be opened, in which mode, and with every feature pagemesh needs. Whether
/// it passed (user-mode-only is shown as a failure but does not fail the check).
fn check_userfaultfd() -> bool {
    let p = match Uffd::probe() {
        Ok(p) => p,
        Err(e) => {
            line(
                false,
                "userfaultfd",
                format!("{e}: run as root or grant access to /dev/userfaultfd"),
            );
            return false;
        }
    };
    let full = p.mode != OpenMode::UserModeOnly;
    line(full, "userfaultfd mode", p.mode);
    if !full {
        outln!("       grant full mode: give the user access to /dev/userfaultfd (e.g. a group with rw), or CAP_SYS_PTRACE");
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
    line(
        missing.is_empty(),
        "userfaultfd features",
        features_verdict(&missing),
    );
    outln!("       kernel offers: {}", have.join(" "));
    missing.is_empty()
}

/// What the features line says: the missing features by name, space-separated like the
/// kernel's list below it.
fn features_verdict(missing: &[&str]) -> String {
    if missing.is_empty() {
        "all needed present".to_string()
    } else {
        format!("missing {}", missing.join(" "))
    }
}

/// Settings worth knowing that fail nothing.
fn show_settings() {
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
}

/// Whether a daemon answers at `socket` (informational: doctor needs none).
fn show_daemon(socket: &Path) {
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
}

pub fn run(socket: &Path) -> anyhow::Result<ExitCode> {
    // Every check runs and prints its line, whatever the ones before it found.
    let checks = [check_kernel(), check_page_size(), check_userfaultfd()];
    show_settings();
    show_daemon(socket);
    Ok(if checks.contains(&false) {
        crate::exit::Exit::CheckFailed.code()
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn missing_features_are_named_plainly() {
        assert_eq!(super::features_verdict(&[]), "all needed present");
        assert_eq!(
            super::features_verdict(&["MINOR_SHMEM", "POISON"]),
            "missing MINOR_SHMEM POISON"
        );
    }
}
