//! Two-node benches on loopback, each beside its baseline in the same run:
//!
//! - `remote-fault`: a read fault and a write (ownership) fault on pages another node holds,
//!   against a minimal uffd handler that fetches each page with one raw TCP round trip (a 16-byte
//!   request, a 4 KiB reply) before `UFFDIO_COPY`: the least any remote pager can do.
//! - `pingpong`: two nodes take turns writing one page (ownership moves at every turn), against
//!   two threads passing a 4 KiB page back and forth over a raw TCP connection.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use pagemesh::{Backing, Client, Mapping};
use pagemesh_uffd::{features, Memfd, Protect, RegisterMode, SharedMapping, Uffd, Wake};

use crate::bench_baseline::serve_faults;
use crate::bench_report::{header, mean, pct, report, RunsArgs};
use crate::harness::{start_cluster, PrivateDaemon};

const PS: u64 = 4096;

/// Pages between two timed touches: not sequential, so no read-ahead or fault-around hides
/// the fault being measured.
const STRIDE: u64 = 2;

/// Time one access per `STRIDE` pages of `m` (a read, or a write of one word).
pub(crate) fn touch(m: &Mapping, n: u64, write: bool) -> Vec<f64> {
    let words = m.atomics_u64();
    (0..n)
        .map(|i| {
            let w = &words[(i * STRIDE * PS / 8) as usize];
            let t = Instant::now();
            if write {
                w.store(i + 1, Ordering::Relaxed);
            } else {
                std::hint::black_box(w.load(Ordering::Relaxed));
            }
            t.elapsed().as_nanos() as f64
        })
        .collect()
}

/// A page server: answers every 16-byte request with a 4 KiB page (one thread, blocking).
fn page_server(stop: Arc<AtomicBool>) -> anyhow::Result<(u16, std::thread::JoinHandle<()>)> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    l.set_nonblocking(true)?;
    let h = std::thread::spawn(move || {
        let page = vec![7u8; PS as usize];
        let mut req = [0u8; 16];
        while !stop.load(Ordering::Relaxed) {
            let (mut s, _) = match l.accept() {
                Ok(c) => c,
                Err(_) => {
                    std::thread::sleep(Duration::from_millis(1));
                    continue;
                }
            };
            let _ = s.set_nonblocking(false);
            let _ = s.set_nodelay(true);
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            while s.read_exact(&mut req).is_ok() {
                if s.write_all(&page).is_err() {
                    break;
                }
            }
        }
    });
    Ok((port, h))
}

/// The baseline remote pager: one handler thread, one TCP round trip per fault, then COPY.
fn minimal_remote_handler(n: u64, port: u16) -> anyhow::Result<Vec<f64>> {
    let len = n * PS;
    let memfd = Memfd::create("bench-remote-minimal", len)?;
    let map = SharedMapping::map(memfd.as_fd(), len as usize)?;
    let (uffd, _) = Uffd::open(features::PAGEMESH).map_err(|e| anyhow::anyhow!("{e}"))?;
    uffd.register_mapping(&map, RegisterMode::MISSING)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut conn = TcpStream::connect(("127.0.0.1", port)).context("page server")?;
    conn.set_nodelay(true)?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let stop = AtomicBool::new(false);
    let lat = std::thread::scope(|s| {
        s.spawn(|| {
            let mut page = vec![0u8; PS as usize];
            let mut req = [0u8; 16];
            serve_faults(&uffd, &stop, |address, _| {
                req[..8].copy_from_slice(&address.to_le_bytes());
                let ok = conn.write_all(&req).is_ok() && conn.read_exact(&mut page).is_ok();
                if ok {
                    let _ = uffd.copy(address & !(PS - 1), &page, Protect::Writable, Wake::Yes);
                } else {
                    let _ = uffd.poison(address & !(PS - 1), PS, Wake::Yes);
                }
            })
        });
        let words = map.atomics_u64();
        let lat: Vec<f64> = (0..n)
            .map(|i| {
                let t = Instant::now();
                std::hint::black_box(words[(i * PS / 8) as usize].load(Ordering::Relaxed));
                t.elapsed().as_nanos() as f64
            })
            .collect();
        stop.store(true, Ordering::Relaxed);
        lat
    });
    Ok(lat)
}

fn two_nodes() -> anyhow::Result<Vec<PrivateDaemon>> {
    start_cluster(2, "pagemesh-bench", &["--workers", "1"])
}

pub(crate) fn segment(nodes: &[PrivateDaemon], name: &str, bytes: u64) -> anyhow::Result<()> {
    nodes[0]
        .client
        .create_cluster_segment(name, Some(bytes), Backing::Zero, Some(2))?;
    crate::demo::wait_for_segment(nodes, name)
}

pub fn remote_fault(a: RunsArgs) -> anyhow::Result<ExitCode> {
    if a.runs == 0 || a.faults < 10 {
        bail!("--runs must be positive and --faults at least 10");
    }
    let nodes = two_nodes()?;
    let stop = Arc::new(AtomicBool::new(false));
    let (port, server) = page_server(Arc::clone(&stop))?;
    let mut rows: Vec<(&str, Vec<f64>, Vec<f64>)> = vec![
        ("read_fault_p50_vs_uffd_plus_tcp_rtt", vec![], vec![]),
        ("read_fault_p99_vs_uffd_plus_tcp_rtt", vec![], vec![]),
        ("read_fault_mean_vs_uffd_plus_tcp_rtt", vec![], vec![]),
        ("write_fault_p50_vs_uffd_plus_tcp_rtt", vec![], vec![]),
        ("write_fault_p99_vs_uffd_plus_tcp_rtt", vec![], vec![]),
    ];
    for run in 0..a.runs {
        // Node 2 (the home) writes every page: it holds them Modified. Node 1 then reads one
        // set (a copy comes over) and writes the other (ownership and data come over).
        let (r, w) = (format!("rf{run}r"), format!("rf{run}w"));
        segment(&nodes, &r, a.faults * STRIDE * PS)?;
        segment(&nodes, &w, a.faults * STRIDE * PS)?;
        let c2 = Client::connect(&nodes[1].socket)?;
        let (r2, w2) = (c2.attach(&r)?, c2.attach(&w)?);
        touch(&r2, a.faults, true);
        touch(&w2, a.faults, true);
        let c1 = Client::connect(&nodes[0].socket)?;
        let (r1, w1) = (c1.attach(&r)?, c1.attach(&w)?);
        let mut rd = touch(&r1, a.faults, false);
        let mut wr = touch(&w1, a.faults, true);
        let mut base = minimal_remote_handler(a.faults, port)?;
        let vals = [
            (pct(&mut rd, 0.5), pct(&mut base, 0.5)),
            (pct(&mut rd, 0.99), pct(&mut base, 0.99)),
            (mean(&rd), mean(&base)),
            (pct(&mut wr, 0.5), pct(&mut base, 0.5)),
            (pct(&mut wr, 0.99), pct(&mut base, 0.99)),
        ];
        for (row, (p, b)) in rows.iter_mut().zip(vals) {
            row.1.push(p);
            row.2.push(b);
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = server.join();
    header(
        a.json,
        "remote fault: a page held by the other node on loopback vs a minimal uffd handler + one raw TCP round trip of a 4 KiB page",
    );
    for (metric, p, b) in &rows {
        report(a.json, "remote-fault", metric, "ns", p, b, "lower");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn pingpong(a: RunsArgs, secs: f64) -> anyhow::Result<ExitCode> {
    if a.runs == 0 {
        bail!("--runs must be positive");
    }
    let nodes = two_nodes()?;
    let mut pm = Vec::new();
    let mut base = Vec::new();
    for run in 0..a.runs {
        let name = format!("pp{run}");
        segment(&nodes, &name, PS)?;
        let ma = Client::connect(&nodes[0].socket)?.attach(&name)?;
        let mb = Client::connect(&nodes[1].socket)?.attach(&name)?;
        pm.push(turns(&ma, &mb, secs));
        base.push(tcp_pingpong(secs)?);
    }
    header(
        a.json,
        "pingpong: two nodes take turns writing one page vs two threads passing a 4 KiB page over raw TCP",
    );
    report(
        a.json,
        "pingpong",
        "ownership_transfers_per_s_vs_tcp_page_pingpong",
        "1/s",
        &pm,
        &base,
        "higher",
    );
    Ok(ExitCode::SUCCESS)
}

/// Two threads, each through its own node's mapping, take turns incrementing word 0: a thread
/// may write only when the value's parity is its own. Every turn moves ownership of the page.
pub(crate) fn turns(ma: &Mapping, mb: &Mapping, secs: f64) -> f64 {
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for (m, parity) in [(ma, 0u64), (mb, 1u64)] {
            let (stop, done) = (&stop, &done);
            s.spawn(move || {
                let w = &m.atomics_u64()[0];
                while !stop.load(Ordering::Relaxed) {
                    let v = w.load(Ordering::SeqCst);
                    if v % 2 == parity {
                        w.store(v + 1, Ordering::SeqCst);
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        // Not our turn: let the daemons (which move the page) have the CPU.
                        std::thread::yield_now();
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    done.load(Ordering::Relaxed) as f64 / t.elapsed().as_secs_f64()
}

/// The baseline: a 4 KiB page passed back and forth between two threads over loopback TCP.
fn tcp_pingpong(secs: f64) -> anyhow::Result<f64> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    let mut a = TcpStream::connect(("127.0.0.1", port))?;
    let (mut b, _) = l.accept()?;
    for s in [&a, &b] {
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
    }
    let stop = AtomicBool::new(false);
    let t = Instant::now();
    let n = std::thread::scope(|s| {
        let stop = &stop;
        let echo = s.spawn(move || {
            let mut page = vec![0u8; PS as usize];
            while b.read_exact(&mut page).is_ok() {
                page[0] = page[0].wrapping_add(1);
                if b.write_all(&page).is_err() {
                    break;
                }
            }
        });
        let mut page = vec![0u8; PS as usize];
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) && t.elapsed().as_secs_f64() < secs {
            if a.write_all(&page).is_err() || a.read_exact(&mut page).is_err() {
                break;
            }
            n += 2;
        }
        let _ = a.shutdown(std::net::Shutdown::Both);
        let _ = echo.join();
        stop.store(true, Ordering::Relaxed);
        n
    });
    Ok(n as f64 / t.elapsed().as_secs_f64())
}
