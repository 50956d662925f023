//! Increment a shared counter in a segment from as many processes as you like:
//!
//! ```sh
//! pagemesh segment create counters --size 4KiB
//! cargo run --release -p pagemesh --example counter -- counters 100000 &
//! cargo run --release -p pagemesh --example counter -- counters 100000
//! pagemesh segment read counters --len 8 | od -An -tu8     # 200000
//! ```
//!
//! Uses `PAGEMESH_SOCKET` or the default socket.

use std::sync::atomic::Ordering;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let name = args.next().ok_or("usage: counter SEGMENT [INCREMENTS]")?;
    let n: u64 = args.next().map_or(Ok(1), |s| s.parse())?;
    let seg = pagemesh::Client::connect_default()?.attach(&name)?;
    let counter = &seg.atomics_u64()[0];
    for _ in 0..n {
        counter.fetch_add(1, Ordering::SeqCst);
    }
    println!(
        "{} after {n} increments from pid {}",
        counter.load(Ordering::SeqCst),
        std::process::id()
    );
    Ok(())
}
