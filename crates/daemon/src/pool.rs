//! The node's memory pool as the daemon builds it from its configuration and catalog: the
//! budget, the paging device, the partitions (the built-in `default` and `volumes` and the
//! catalog's own), and which partition's memory a new segment or volume counts against.

// Errors here are the reply itself, built once per request: their size does not matter.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use pagemesh_proto::{Backing, PartitionLimits};
use pagemesh_store::paging::PagingDevice;
use pagemesh_types::{ByteSize, PAGE_SIZE};

use crate::catalog::Catalog;
use crate::Config;
use pagemesh_core::pool::Limits;
use pagemesh_node::memory::{Partition, Pool};
use pagemesh_node::segment::Memory;
use pagemesh_node::volume::VolumeMemory;

/// Memory kept out of the page-cache budget for the daemon's own heap, stacks and buffers, so
/// that RSS plus memfd pages stays within `--memory` (the documented slack covers the rest).
pub const DAEMON_RESERVE_BYTES: u64 = 16 << 20;

pub(crate) fn to_pages(bytes: u64) -> u64 {
    bytes / PAGE_SIZE
}

pub(crate) fn limits_of(l: PartitionLimits) -> Limits {
    Limits {
        min_pages: to_pages(l.min_bytes),
        max_pages: to_pages(l.max_bytes),
        weight: l.weight.max(1),
    }
}

/// Create the pool: budget, paging device, the `default` partition and those of the catalog;
/// start the evictor.
pub fn build_pool(config: &Config, catalog: &Catalog) -> Result<Arc<Pool>, String> {
    let budget = to_pages(
        config
            .memory_bytes
            .saturating_sub(DAEMON_RESERVE_BYTES.min(config.memory_bytes / 4)),
    );
    if budget < 64 {
        return Err(format!(
            "--memory {} is too small: pagemesh needs at least 1 MiB",
            ByteSize(config.memory_bytes)
        ));
    }
    if let Some(dir) = config.paging_device.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let paging =
        PagingDevice::create(&config.paging_device, config.paging_device_bytes).map_err(|e| {
            format!(
                "creating the paging device {}: {e}",
                config.paging_device.display()
            )
        })?;
    log::info!(
        "memory pool: budget {} for segment pages (+{} reserved for the daemon), paging device {} ({})",
        ByteSize(budget * PAGE_SIZE),
        ByteSize(config.memory_bytes - budget * PAGE_SIZE),
        config.paging_device.display(),
        ByteSize(config.paging_device_bytes),
    );
    let pool = Pool::new(budget, Some(paging));
    pool.add_partition(Partition::new(
        "default",
        Limits {
            min_pages: 0,
            max_pages: budget,
            weight: 1,
        },
    ));
    pool.add_partition(Partition::new(
        VOLUMES,
        Limits {
            min_pages: 0,
            max_pages: budget,
            weight: 1,
        },
    ));
    for (name, l) in catalog.partitions() {
        match pool.partitions().into_iter().find(|p| p.name == name) {
            // `partition set` on a built-in partition is kept in the catalog too.
            Some(builtin) => builtin.set_limits(limits_of(l)),
            None => pool.add_partition(Partition::new(&name, limits_of(l))),
        }
    }
    pool.start_prefetcher()
        .map_err(|e| format!("starting the prefetcher thread: {e}"))?;
    let p = Arc::clone(&pool);
    std::thread::Builder::new()
        .name("evictor".into())
        .spawn(move || p.run_evictor())
        .map_err(|e| format!("starting the evictor thread: {e}"))?;
    Ok(pool)
}

/// The built-in partition that volume caches count against.
pub const VOLUMES: &str = "volumes";

/// Accounting for a volume's cache: the `volumes` partition, and a clock id.
pub fn volume_memory(pool: &Arc<Pool>) -> (Option<VolumeMemory>, u64) {
    let id = pool.volume_id();
    let partition = pool.partitions().into_iter().find(|p| p.name == VOLUMES);
    (
        partition.map(|partition| VolumeMemory {
            pool: Arc::clone(pool),
            partition,
            id,
        }),
        id,
    )
}

/// Where a new segment's pages are accounted: volume segments nowhere (their frames belong to
/// the volume), others in the named partition.
pub fn memory_for(
    pool: &Arc<Pool>,
    backing: &Backing,
    partition: &str,
) -> Result<Option<Memory>, String> {
    if matches!(backing, Backing::Volume { .. }) {
        return Ok(None);
    }
    if partition == VOLUMES {
        return Err(format!(
            "partition {VOLUMES} holds volume caches only; choose another partition"
        ));
    }
    let p = pool
        .partitions()
        .into_iter()
        .find(|p| p.name == partition)
        .ok_or_else(|| {
            format!("no partition named {partition:?} (see `pagemesh partition list`)")
        })?;
    Ok(Some(Memory {
        pool: Arc::clone(pool),
        partition: p,
    }))
}
