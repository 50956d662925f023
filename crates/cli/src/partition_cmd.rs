//! `pagemesh partition ...`: memory tenants sharing the node's pool.

use std::path::Path;
use std::process::ExitCode;

use clap::Subcommand;
use pagemesh::{Client, PartitionLimits, PartitionStat};
use pagemesh_types::{ByteSize, PAGE_SIZE};

use crate::parse_size;

#[derive(Subcommand)]
pub enum PartitionCmd {
    /// Create a partition. Under memory pressure a partition below its min is never robbed,
    /// one above its max gives pages up first, and the rest share the pool by weight.
    Create {
        /// Partition name (1-64 of A-Z a-z 0-9 . _ -).
        name: String,
        /// Memory the partition keeps under pressure (e.g. 1GiB).
        #[arg(long, value_parser = parse_size, default_value = "0")]
        min: u64,
        /// Most memory the partition may hold (default: the whole pool).
        #[arg(long, value_parser = parse_size)]
        max: Option<u64>,
        /// Its share of the memory above the mins, relative to the other partitions (at
        /// least 1).
        #[arg(long, default_value_t = 1)]
        weight: u32,
        /// Print the new partition as JSON.
        #[arg(long)]
        json: bool,
    },
    /// List partitions with their use.
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// One partition's limits, entitlement, resident and pinned memory, paging counters.
    Stat {
        /// Partition name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change limits (at least one of --min, --max, --weight).
    Set {
        /// Partition name.
        name: String,
        /// New min (see `partition create`).
        #[arg(long, value_parser = parse_size)]
        min: Option<u64>,
        /// New max.
        #[arg(long, value_parser = parse_size)]
        max: Option<u64>,
        /// New weight (at least 1).
        #[arg(long)]
        weight: Option<u32>,
        /// Print the changed partition as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Remove a partition that holds no segment.
    Rm {
        /// Partition name.
        name: String,
    },
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
    outln!(
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
    outln!(
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

/// Say on stderr (stdout stays the result, JSON or text) each limit the daemon stored other
/// than as asked: limits are whole pages (rounded down), and a max is at most the pool's
/// budget.
fn say_what_changed(name: &str, min: Option<u64>, max: Option<u64>, stored: &PartitionLimits) {
    for (flag, asked, got) in [
        ("--min", min, stored.min_bytes),
        ("--max", max, stored.max_bytes),
    ] {
        if let Some(note) = asked.and_then(|a| change_note(flag, a, got)) {
            eprintln!("pagemesh: partition {name}: {note}");
        }
    }
}

/// What a script is told when `asked` was stored as `got`; nothing when it was not changed.
fn change_note(flag: &str, asked: u64, got: u64) -> Option<String> {
    if asked == got {
        return None;
    }
    let (asked, got) = (ByteSize(asked), ByteSize(got));
    Some(if got.0 == asked.0 - asked.0 % PAGE_SIZE {
        format!(
            "{flag} {asked} ({} bytes) stored as {got} (limits are whole pages)",
            asked.0
        )
    } else {
        format!("{flag} {asked} stored as {got} (the pool's budget)")
    })
}

pub fn run(socket: &Path, cmd: PartitionCmd) -> anyhow::Result<ExitCode> {
    let client = Client::connect(socket)?;
    let show = |p: PartitionStat, json: bool| {
        if json {
            outln!("{}", stat_json(&p));
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
            json,
        } => {
            let limits = PartitionLimits {
                min_bytes: min,
                max_bytes: max.unwrap_or(u64::MAX),
                weight,
            };
            let p = client.create_partition(&name, limits)?;
            say_what_changed(&name, Some(min), max, &p.limits);
            show(p, json);
        }
        PartitionCmd::List { json } => {
            let v = client.list_partitions()?;
            if json {
                outln!(
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
            json,
        } => {
            if min.is_none() && max.is_none() && weight.is_none() {
                return Err(crate::exit::Usage(format!(
                    "partition {name}: nothing to change: give --min, --max or --weight"
                ))
                .into());
            }
            let p = client.set_partition(&name, min, max, weight)?;
            say_what_changed(&name, min, max, &p.limits);
            show(p, json);
        }
        PartitionCmd::Rm { name } => {
            client.remove_partition(&name)?;
            outln!("removed partition {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::change_note;

    #[test]
    fn a_limit_stored_otherwise_is_named_with_the_reason() {
        assert_eq!(change_note("--max", 1 << 30, 1 << 30), None);
        assert_eq!(
            change_note("--max", 1 << 30, 64 << 20).as_deref(),
            Some("--max 1GiB stored as 64MiB (the pool's budget)")
        );
        assert_eq!(
            change_note("--min", (1 << 20) + 100, 1 << 20).as_deref(),
            Some("--min 1.0MiB (1048676 bytes) stored as 1MiB (limits are whole pages)")
        );
    }
}
