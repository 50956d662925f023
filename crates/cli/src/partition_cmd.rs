//! `pagemesh partition ...`: memory tenants sharing the node's pool.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use pagemesh::{Client, PartitionLimits, PartitionStat};
use pagemesh_types::ByteSize;

use crate::parse_size;

#[derive(Subcommand)]
pub enum PartitionCmd {
    /// Create a partition. Under memory pressure a partition below its min is never robbed,
    /// one above its max gives pages up first, and the rest share the pool by weight.
    Create {
        name: String,
        #[arg(long, value_parser = parse_size, default_value = "0")]
        min: u64,
        /// Default: the whole pool.
        #[arg(long, value_parser = parse_size)]
        max: Option<u64>,
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    /// List partitions with their use.
    List {
        #[arg(long)]
        json: bool,
    },
    /// One partition's limits, entitlement, resident and pinned memory, paging counters.
    Stat {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Change limits.
    Set {
        name: String,
        #[arg(long, value_parser = parse_size)]
        min: Option<u64>,
        #[arg(long, value_parser = parse_size)]
        max: Option<u64>,
        #[arg(long)]
        weight: Option<u32>,
    },
    /// Remove a partition that holds no segment.
    Rm { name: String },
}

pub fn stat_json(p: &PartitionStat) -> serde_json::Value {
    serde_json::json!({
        "name": p.name, "min_bytes": p.limits.min_bytes, "max_bytes": p.limits.max_bytes, "weight": p.limits.weight,
        "entitlement_bytes": p.entitlement_bytes, "resident_bytes": p.resident_bytes, "pinned_bytes": p.pinned_bytes,
        "segments": p.segments, "evictions": p.evictions, "page_ins": p.page_ins, "page_outs": p.page_outs,
        "paging_errors": p.paging_errors,
    })
}

fn row(p: &PartitionStat) {
    let b = |v: u64| ByteSize(v).to_string();
    println!(
        "{:<16} {:>10} {:>10} {:>6} {:>12} {:>10} {:>10} {:>9} {:>10} {:>8}",
        p.name,
        b(p.limits.min_bytes),
        b(p.limits.max_bytes),
        p.limits.weight,
        b(p.entitlement_bytes),
        b(p.resident_bytes),
        b(p.pinned_bytes),
        p.segments,
        p.evictions,
        p.paging_errors
    );
}

fn header() {
    println!(
        "{:<16} {:>10} {:>10} {:>6} {:>12} {:>10} {:>10} {:>9} {:>10} {:>8}",
        "NAME",
        "MIN",
        "MAX",
        "WEIGHT",
        "ENTITLED",
        "RESIDENT",
        "PINNED",
        "SEGMENTS",
        "EVICTIONS",
        "PGERRS"
    );
}

pub fn run(socket: &Path, cmd: PartitionCmd) -> anyhow::Result<ExitCode> {
    let client = Client::connect(socket)?;
    let show = |p: PartitionStat, json: bool| {
        if json {
            println!("{}", stat_json(&p));
        } else {
            header();
            row(&p);
        }
    };
    match cmd {
        PartitionCmd::Create {
            name,
            min,
            max,
            weight,
        } => {
            let limits = PartitionLimits {
                min_bytes: min,
                max_bytes: max.unwrap_or(u64::MAX),
                weight,
            };
            show(client.create_partition(&name, limits)?, false);
        }
        PartitionCmd::List { json } => {
            let v = client.list_partitions()?;
            if json {
                println!(
                    "{}",
                    serde_json::Value::Array(v.iter().map(stat_json).collect())
                );
            } else {
                header();
                v.iter().for_each(row);
            }
        }
        PartitionCmd::Stat { name, json } => show(client.stat_partition(&name)?, json),
        PartitionCmd::Set {
            name,
            min,
            max,
            weight,
        } => show(client.set_partition(&name, min, max, weight)?, false),
        PartitionCmd::Rm { name } => {
            client.remove_partition(&name)?;
            println!("removed partition {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
