//! Firecracker microVMs restored through pagemesh (issue 21): the real Firecracker in
//! `../shared/firecracker` loads a snapshot of the tick guest with its UFFD memory backend
//! pointed at `pagemesh vm serve`, which has the daemon serve the guest's memory from a volume
//! on the snapshot's memory file. The guest checks every page it re-reads and prints
//! `TICK iter=.. errors=..`; a wrong or zero page shows as errors > 0.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::firecracker::{self, serve_log, snapshot, vm_serve, Vmm};
use common::Daemon;

/// The documented bound (docs/firecracker.md) on stopping a VM once its pages can no longer be
/// served: SIGBUS at once, SIGKILL after 2 s; plus a second for a loaded CI machine.
const STOP_BOUND: Duration = Duration::from_secs(3);
/// The guest's memory area (tick.S: 64 MiB from guest-physical 32 MiB), which it reads page
/// by page on its first pass after the restore.
const AREA: u64 = 32 << 20;

fn volume_stat(d: &Daemon, name: &str) -> serde_json::Value {
    let out = d.run(&["volume", "stat", name, "--json"]).ok();
    serde_json::from_slice(&out.stdout).expect("volume stat --json is JSON")
}

/// A snapshot in the daemon's temp dir, checksummed and added as volume `snap`.
fn snapshot_volume(d: &Daemon, corrupt_at: Option<u64>) -> PathBuf {
    let snap = d.path("snap");
    snapshot(&snap);
    let mem = snap.join("snap.mem");
    d.run(&["volume", "checksum", mem.to_str().unwrap()]).ok();
    if let Some(off) = corrupt_at {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&mem).unwrap();
        f.write_all_at(&[0xa5; 64], off).unwrap();
    }
    d.run(&["volume", "add", "snap", mem.to_str().unwrap()])
        .ok();
    snap
}

/// The last TICK the guest printed before its snapshot.
fn last_boot_tick(snap: &Path) -> u64 {
    firecracker::ticks(&snap.join("boot.console"))
        .last()
        .expect("the guest ticked before its snapshot")
        .0
}

#[test]
fn a_vm_restored_through_pagemesh_advances_with_no_errors() {
    let d = Daemon::start();
    let snap = snapshot_volume(&d, None);
    let uds = d.path("uffd.sock");
    let mut serve = vm_serve(&d, "snap", &uds);
    let mut vm = Vmm::start(d.dir.path(), "vm");
    let t0 = Instant::now();
    assert_eq!(vm.load_uffd(&snap, &uds), 204, "{}", vm.log_text());
    let load = t0.elapsed();
    let ticks = vm.wait_ticks(10, Duration::from_secs(60));
    let ten = t0.elapsed();
    assert!(
        ticks.len() >= 10,
        "{} TICK lines in 60 s: {}",
        ticks.len(),
        vm.log_text()
    );
    assert!(
        ticks.iter().all(|t| t.1 == 0),
        "errors after the restore: {ticks:x?}"
    );
    assert!(
        ticks[0].0 > last_boot_tick(&snap) && ticks.windows(2).all(|w| w[1].0 > w[0].0),
        "the guest did not go on from its snapshot: {ticks:x?}"
    );
    let v = volume_stat(&d, "snap");
    let image = 128u64 << 20;
    assert_eq!(v["poisoned_blocks"], 0, "{v}");
    let read = v["storage_bytes_read"].as_u64().unwrap();
    assert!(read > 0 && read <= image, "{v}");
    // The VMM's exit ends vm serve (0: the VM was not stopped).
    vm.proc.kill();
    let st = serve
        .wait_exit(Duration::from_secs(10))
        .expect("vm serve ended");
    assert!(st.success(), "{st}: {}", serve_log(&uds));
    eprintln!(
        "load {load:?}, 10 TICK lines {ten:?} after the load started; {} MiB read from storage",
        read >> 20
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log().contains("ended:") {
        assert!(Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_corrupt_snapshot_block_stops_the_vm_instead_of_feeding_it() {
    let d = Daemon::start();
    let bad = AREA + (8 << 20) + 3 * 4096; // read on the guest's first pass
    let snap = snapshot_volume(&d, Some(bad));
    let uds = d.path("uffd.sock");
    let mut serve = vm_serve(&d, "snap", &uds);
    let mut vm = Vmm::start(d.dir.path(), "vm");
    // The load may end before the guest reaches the block, or not at all.
    let _ = vm.load_uffd(&snap, &uds);
    let st = vm.proc.wait_exit(Duration::from_secs(30));
    assert!(st.is_some(), "the VM still runs: {}", d.log());
    assert!(
        vm.ticks().iter().all(|t| t.1 == 0),
        "the guest was fed wrong data: {:x?}",
        vm.ticks()
    );
    assert!(
        vm.log_text().contains("intercepting signal 7"),
        "Firecracker did not report the SIGBUS: {}",
        vm.log_text()
    );
    let log = d.log();
    let block = bad / 4096;
    assert!(
        log.contains(&format!("block {block} of")) && log.contains("does not match its checksum"),
        "{log}"
    );
    assert!(log.contains("stopping the VM"), "{log}");
    assert_eq!(volume_stat(&d, "snap")["poisoned_blocks"], 1);
    assert!(serve.wait_exit(Duration::from_secs(10)).is_some());
}

#[test]
fn killing_the_daemon_mid_restore_stops_the_vm_within_the_bound() {
    let mut d = Daemon::start();
    let snap = snapshot_volume(&d, None);
    let uds = d.path("uffd.sock");
    let mut serve = vm_serve(&d, "snap", &uds);
    let mut vm = Vmm::start(d.dir.path(), "vm");
    // Killed while the load request itself is in flight: Firecracker touches guest memory
    // during the load, so faults are being served when the daemon dies.
    let api = vm.api.clone();
    let took = std::thread::scope(|s| {
        let load = s.spawn(|| firecracker::load_uffd_at(&api, &snap, &uds));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !d.log().contains("serving VMM pid") {
            assert!(Instant::now() < deadline, "{}", d.log());
            std::thread::sleep(Duration::from_millis(1));
        }
        d.kill9();
        let t0 = Instant::now();
        let st = vm.proc.wait_exit(Duration::from_secs(30));
        let took = t0.elapsed();
        assert!(st.is_some(), "the VM still runs 30 s after the daemon died");
        // The VMM's death ends its load request (bounded by the harness's 30 s read timeout).
        let status = load.join().expect("load thread");
        eprintln!("load answered {status} (0: the VMM died first)");
        took
    });
    assert!(took <= STOP_BOUND, "the VM was stopped after {took:?}");
    assert!(vm.ticks().iter().all(|t| t.1 == 0), "{:x?}", vm.ticks());
    let st = serve
        .wait_exit(Duration::from_secs(10))
        .expect("vm serve ended");
    assert_eq!(st.code(), Some(1), "{}", serve_log(&uds));
    assert!(
        serve_log(&uds).contains("the daemon went away"),
        "{}",
        serve_log(&uds)
    );
    eprintln!("VM stopped {took:?} after the daemon's death");
}

/// Two VMs restored at once from one snapshot through one `vm serve` (one socket, a
/// connection each): both advance with errors=0, and the storage reads of both together stay
/// within one image (a block one VM is reading is waited for by the other, not read again).
#[test]
fn two_vms_restored_at_once_share_the_storage_reads() {
    let d = Daemon::start();
    let snap = snapshot_volume(&d, None);
    let uds = d.path("uffd.sock");
    let _serve = firecracker::vm_serve_with(&d, "snap", &uds, &[]);
    let vm1 = Vmm::start(d.dir.path(), "vm1");
    let vm2 = Vmm::start(d.dir.path(), "vm2");
    let (api1, api2) = (vm1.api.clone(), vm2.api.clone());
    std::thread::scope(|s| {
        let l1 = s.spawn(|| firecracker::load_uffd_at(&api1, &snap, &uds));
        let l2 = s.spawn(|| firecracker::load_uffd_at(&api2, &snap, &uds));
        assert_eq!(l1.join().unwrap(), 204, "{}", vm1.log_text());
        assert_eq!(l2.join().unwrap(), 204, "{}", vm2.log_text());
    });
    for vm in [&vm1, &vm2] {
        let ticks = vm.wait_ticks(5, Duration::from_secs(60));
        assert!(ticks.len() >= 5, "{ticks:x?}: {}", vm.log_text());
        assert!(ticks.iter().all(|t| t.1 == 0), "errors: {ticks:x?}");
    }
    let v = volume_stat(&d, "snap");
    assert!(
        v["storage_bytes_read"].as_u64().unwrap() <= 128 << 20,
        "{v}"
    );
    assert_eq!(v["poisoned_blocks"], 0, "{v}");
    let log = serve_log(&uds);
    assert_eq!(log.matches("served from volume snap").count(), 2, "{log}");
    eprintln!(
        "two VMs: {} MiB read from storage in {} reads, {} waits on another's read",
        v["storage_bytes_read"].as_u64().unwrap() >> 20,
        v["storage_reads"],
        v["coalesced_waits"]
    );
}

/// A balloon's `MADV_DONTNEED` (`UFFD_EVENT_REMOVE`) makes the range read as zeros afterwards,
/// never the image again. Firecracker's tick guest has no balloon, so the VMM here is a small
/// script doing what Firecracker does with its UFFD backend (tests/fixtures/vmm.py), on real
/// memory and a real userfaultfd.
#[test]
fn guest_memory_given_back_reads_as_zeros() {
    let d = Daemon::start();
    let img = d.path("img");
    let size = 2u64 << 20;
    let data: Vec<u8> = (0..size / 8)
        .flat_map(|i| common::pattern_word(77, i * 8).to_le_bytes())
        .collect();
    std::fs::write(&img, &data).unwrap();
    d.run(&["volume", "add", "img", img.to_str().unwrap()]).ok();
    let uds = d.path("uffd.sock");
    let mut serve = vm_serve(&d, "img", &uds);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/vmm.py");
    let child = std::process::Command::new("python3")
        .arg(script)
        .arg(&uds)
        .arg(&img)
        .arg(size.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let out = common::finish(child, &[], Duration::from_secs(60), &["vmm.py"]);
    let said = format!("{}{}", out.stdout_str(), out.stderr);
    assert!(out.status.success(), "{said}\n{}", d.log());
    assert_eq!(said.matches("ok   ").count(), 3, "{said}");
    let st = serve
        .wait_exit(Duration::from_secs(10))
        .expect("vm serve ended");
    assert!(st.success(), "{}", serve_log(&uds));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.log().contains("1 removals") {
        assert!(Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A figure of the daemon's line on a VM that ended: the number before `what`.
fn figure(line: &str, what: &str) -> u64 {
    let at = line
        .find(what)
        .unwrap_or_else(|| panic!("no {what:?} in {line}"));
    line[..at]
        .split_whitespace()
        .last()
        .and_then(|n| n.trim_start_matches('(').parse().ok())
        .unwrap_or_else(|| panic!("no number before {what:?} in {line}"))
}

/// Restore through `vm serve --once extra...`, wait for `ticks` TICK lines (all errors=0,
/// going on from the snapshot), stop the VMM; what `vm serve` said.
fn restore_with(d: &Daemon, snap: &Path, name: &str, extra: &[&str], ticks: usize) -> String {
    let uds = d.path(&format!("{name}.sock"));
    let mut args = vec!["--once"];
    args.extend_from_slice(extra);
    let mut serve = firecracker::vm_serve_with(d, "snap", &uds, &args);
    let mut vm = Vmm::start(d.dir.path(), name);
    assert_eq!(vm.load_uffd(snap, &uds), 204, "{}", vm.log_text());
    let got = vm.wait_ticks(ticks, Duration::from_secs(60));
    assert!(got.len() >= ticks, "{got:x?}: {}", vm.log_text());
    assert!(got.iter().all(|t| t.1 == 0), "errors: {got:x?}");
    assert!(got[0].0 > last_boot_tick(snap), "{got:x?}");
    vm.proc.kill();
    let st = serve
        .wait_exit(Duration::from_secs(10))
        .expect("vm serve ended");
    assert!(st.success(), "{st}: {}", serve_log(&uds));
    serve_log(&uds)
}

/// Working-set replay: a restore with `--record` writes the order of its faults; the next
/// restore with `--replay` has the daemon push those pages ahead of the guest's own faults,
/// and the guest goes on with errors=0.
#[test]
fn a_recorded_working_set_is_replayed_into_the_next_restore() {
    let d = Daemon::start();
    let snap = snapshot_volume(&d, None);
    let ws = d.path("snap.ws");
    let ws_arg = ws.to_str().unwrap();
    let said = restore_with(&d, &snap, "rec", &["--record", ws_arg], 3);
    assert!(said.contains("pages recorded to"), "{said}");
    let bytes = std::fs::read(&ws).expect("the record was written");
    assert_eq!(&bytes[..8], b"PMWSET\0\n");
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), 1);
    let recorded = u64::from_le_bytes(bytes[24..32].try_into().unwrap());
    // The guest reads its whole 64 MiB area on its first pass: every page of it came in by a
    // fault (or a fault's run), so it is in the record, each page once.
    assert!(
        (AREA / 4096..=(128 << 20) / 4096).contains(&recorded),
        "{recorded} pages recorded"
    );

    let said = restore_with(&d, &snap, "replay", &["--replay", ws_arg], 3);
    assert!(
        said.contains(&format!("replaying a working set of {recorded} pages")),
        "{said}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let log = d.log();
        if let Some(l) = log.lines().find(|l| l.contains("pages replayed")) {
            break l.to_string();
        }
        assert!(Instant::now() < deadline, "{log}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let pushed = figure(&line, "pages replayed");
    let present = figure(&line, "present already");
    let skipped = figure(&line, "skipped");
    assert!(pushed > 0, "the replay pushed nothing: {line}");
    assert!(line.contains("replay ended after"), "{line}");
    assert!(pushed + present <= recorded && skipped == 0, "{line}");
    assert_eq!(volume_stat(&d, "snap")["poisoned_blocks"], 0);
    eprintln!("{recorded} pages recorded; replay: {line}");
}

/// A working-set file of a format version this pagemesh does not read is refused before
/// anything is served, naming both versions.
#[test]
fn a_working_set_of_another_version_is_refused() {
    let d = Daemon::start();
    let img = d.path("img");
    std::fs::write(&img, vec![7u8; 1 << 20]).unwrap();
    d.run(&["volume", "add", "snap", img.to_str().unwrap()])
        .ok();
    let ws = d.path("future.ws");
    let mut b = b"PMWSET\0\n".to_vec();
    b.extend_from_slice(&2u32.to_le_bytes());
    b.extend_from_slice(&[0u8; 48]);
    std::fs::write(&ws, &b).unwrap();
    let uds = d.path("uffd.sock");
    let out = d.run(&[
        "vm",
        "serve",
        "--once",
        "--snapshot",
        "snap",
        "--replay",
        ws.to_str().unwrap(),
        "--listen",
        uds.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(65), "{}", out.stderr);
    assert!(
        out.stderr.contains("format version 2") && out.stderr.contains("reads version 1"),
        "{}",
        out.stderr
    );
    assert!(!uds.exists(), "it listened anyway");
}

/// `vm serve --record` stopped with SIGTERM while its VM runs writes that VM's record before it
/// exits (0); the daemon then stops the VM, as when `vm serve` goes.
#[test]
fn a_stopped_vm_serve_writes_its_record_first() {
    let d = Daemon::start();
    let snap = snapshot_volume(&d, None);
    let ws = d.path("snap.ws");
    let uds = d.path("uffd.sock");
    let mut serve =
        firecracker::vm_serve_with(&d, "snap", &uds, &["--record", ws.to_str().unwrap()]);
    let mut vm = Vmm::start(d.dir.path(), "vm");
    assert_eq!(vm.load_uffd(&snap, &uds), 204, "{}", vm.log_text());
    let ticks = vm.wait_ticks(2, Duration::from_secs(60));
    assert!(
        ticks.len() >= 2 && ticks.iter().all(|t| t.1 == 0),
        "{ticks:x?}"
    );
    let st = std::process::Command::new("kill")
        .args(["-TERM", &serve.pid().to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    let st = serve
        .wait_exit(Duration::from_secs(10))
        .expect("vm serve ended");
    assert!(st.success(), "{st}: {}", serve_log(&uds));
    let bytes = std::fs::read(&ws).expect("the record was written");
    let recorded = u64::from_le_bytes(bytes[24..32].try_into().unwrap());
    assert!(recorded >= AREA / 4096, "{recorded} pages recorded");
    assert!(!uds.exists(), "the socket stayed");
    assert!(
        vm.proc.wait_exit(STOP_BOUND).is_some(),
        "the VM runs on with nobody to watch it"
    );
}
