//! Criterion benchmarks of the core's hot paths: the protocol work per fault (no I/O: the
//! driver's share of a fault is measured by `pagemesh bench`), and the pool's victim choice.
//!
//! `cargo bench -p pagemesh-core --bench hot_paths`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use pagemesh_core::pool::{victim, Limits, Usage};
use pagemesh_core::*;
use pagemesh_types::{NodeId, SegmentId};

const PAGES: u64 = 1 << 24;

fn home_node() -> Node {
    let seg = SegmentInfo {
        id: SegmentId(1),
        home: NodeId(0),
        pages: PAGES,
        backing: Backing::Zero,
    };
    let mut n = Node::new(
        NodeConfig::new(NodeId(0), Epoch(1), vec![NodeId(0)]),
        &[seg],
    );
    n.start(0);
    n
}

/// Drive one fault to completion on a single-node cluster (the node is its own home): deliver
/// its messages to itself and complete its intent writes, until FaultDone.
fn fault(n: &mut Node, out: &mut Vec<Output>, id: u64, page: u64, access: Access) {
    n.fault(0, FaultId(id), PageKey::new(SegmentId(1), page), access);
    for _ in 0..64 {
        out.clear();
        n.drain_outputs(out);
        let mut done = false;
        for o in out.drain(..) {
            match o {
                Output::Send(env) => n.step(0, env),
                Output::IntentWrite { token, .. } => n.intent_write_done(0, token, Ok(())),
                Output::FaultDone { .. } => done = true,
                _ => {}
            }
        }
        if done {
            return;
        }
    }
    panic!("fault {id} on page {page} did not complete in 64 rounds");
}

fn faults(c: &mut Criterion) {
    let mut g = c.benchmark_group("core");
    let mut n = home_node();
    let mut out = Vec::with_capacity(16);
    let mut next = 0u64;
    g.bench_function("dormant_write_fault_at_home", |b| {
        b.iter(|| {
            next += 1;
            fault(&mut n, &mut out, next, next % PAGES, Access::Write);
        })
    });
    let mut n = home_node();
    let mut next = 0u64;
    g.bench_function("dormant_read_fault_at_home", |b| {
        b.iter(|| {
            next += 1;
            fault(&mut n, &mut out, next, next % PAGES, Access::Read);
        })
    });
    g.finish();
}

fn pool(c: &mut Criterion) {
    let parts: Vec<(Limits, Usage)> = (0..8u64)
        .map(|i| {
            let l = Limits {
                min_pages: i * 1000,
                max_pages: 100_000 + i * 5000,
                weight: 1 + i as u32,
            };
            (
                l,
                Usage {
                    resident: 20_000 + i * 7_000,
                    pinned: i * 100,
                },
            )
        })
        .collect();
    c.bench_function("pool_victim_8_partitions", |b| {
        b.iter(|| victim(black_box(250_000), black_box(&parts)))
    });
}

criterion_group!(benches, faults, pool);
criterion_main!(benches);
