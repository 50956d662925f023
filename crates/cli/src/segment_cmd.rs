//! `pagemesh segment ...`

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};
use clap::Subcommand;
use pagemesh::{Backing, Client, SegmentInfo, SegmentStat};
use pagemesh_types::ByteSize;

use crate::parse_size;

#[derive(Subcommand)]
pub enum SegmentCmd {
    /// Create a segment (O(1): every page starts dormant).
    Create {
        name: String,
        /// Size (e.g. 64GiB). Optional for file backing: the file's size.
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        /// zero (anonymous, dormant pages read as zero), file:PATH (created/extended to --size)
        /// or volume:NAME (the volume's frames; writes private to each process).
        #[arg(long, default_value = "zero")]
        backing: String,
        /// The memory partition its pages count against.
        #[arg(long)]
        partition: Option<String>,
        /// Cluster mode: the node that runs the segment's directory and mapper (default: the
        /// node this command talks to). The segment is visible on every node.
        #[arg(long)]
        home: Option<u32>,
    },
    /// Fault in and pin a range: never evicted until unpinned.
    Pin {
        name: String,
        #[arg(long, value_parser = parse_size, default_value = "0")]
        offset: u64,
        /// Default: to the end of the segment.
        #[arg(long, value_parser = parse_size)]
        len: Option<u64>,
    },
    /// Unpin a range.
    Unpin {
        name: String,
        #[arg(long, value_parser = parse_size, default_value = "0")]
        offset: u64,
        #[arg(long, value_parser = parse_size)]
        len: Option<u64>,
    },
    /// List the segments of this node.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Resident, dirty and poisoned pages, and fault counters.
    Stat {
        name: String,
        #[arg(long)]
        json: bool,
        /// Show one page's state and paging slot instead.
        #[arg(long)]
        page: Option<u64>,
    },
    /// Write a file segment's dirty pages back to the file and fsync.
    Sync { name: String },
    /// Remove a segment (a backing file is kept; its dirty pages are written back first).
    Rm { name: String },
    /// Read bytes through the node's page cache to stdout.
    Read {
        name: String,
        #[arg(long, value_parser = parse_size, default_value = "0")]
        offset: u64,
        /// Bytes to read (default: to the end of the segment).
        #[arg(long, value_parser = parse_size)]
        len: Option<u64>,
    },
    /// Write stdin through the node's page cache at --offset.
    Write {
        name: String,
        #[arg(long, value_parser = parse_size, default_value = "0")]
        offset: u64,
    },
    /// Forget poisoned pages: they reload from the backing file (or read as zero) on next access.
    ClearPoison { name: String },
}

fn backing_arg(s: &str) -> anyhow::Result<Backing> {
    let b: Backing = s.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    Ok(match b {
        Backing::File { path } => {
            let p = PathBuf::from(&path);
            let abs = if p.is_absolute() {
                p
            } else {
                std::env::current_dir()?.join(p)
            };
            Backing::File {
                path: abs.display().to_string(),
            }
        }
        other => other,
    })
}

pub fn info_json(i: &SegmentInfo) -> serde_json::Value {
    serde_json::json!({"name": i.name, "id": i.id, "size_bytes": i.size_bytes, "backing": i.backing.to_string(), "home": i.home})
}

pub fn stat_json(s: &SegmentStat) -> serde_json::Value {
    let c = &s.counters;
    serde_json::json!({
        "segment": info_json(&s.info), "partition": s.partition,
        "paged_pages": s.paged_pages, "pinned_pages": s.pinned_pages,
        "evictions": c.evictions, "page_ins": c.page_ins, "page_outs": c.page_outs, "prefetched": c.prefetched,
        "resident_pages": s.resident_pages, "dirty_pages": s.dirty_pages, "poisoned_pages": s.poisoned_pages,
        "attached_clients": s.attached_clients,
        "faults": {"missing": c.faults_missing, "minor": c.faults_minor, "write_protect": c.faults_wp},
        "zero_fills": c.zero_fills, "mapper_reads": c.mapper_reads,
        "mapper_bytes_read": c.mapper_bytes_read, "mapper_bytes_written": c.mapper_bytes_written,
        "poisonings": c.poisonings, "syncs": c.syncs,
        "fault_service_ns": {"p50": c.fault_service_p50_ns, "p99": c.fault_service_p99_ns},
    })
}

fn print_stat(s: &SegmentStat) {
    let c = &s.counters;
    println!("segment        {} (id {})", s.info.name, s.info.id);
    println!(
        "size           {} ({} bytes)",
        ByteSize(s.info.size_bytes),
        s.info.size_bytes
    );
    println!("backing        {}", s.info.backing);
    if let Some(h) = s.info.home {
        println!("home           node {h} (cluster segment)");
    }
    println!("resident pages {}", s.resident_pages);
    println!("dirty pages    {}", s.dirty_pages);
    println!("poisoned pages {}", s.poisoned_pages);
    println!("paged out      {}", s.paged_pages);
    println!("pinned pages   {}", s.pinned_pages);
    println!("partition      {}", s.partition);
    println!(
        "evictions      {}  page-ins {}  page-outs {}",
        c.evictions, c.page_ins, c.page_outs
    );
    println!("attached       {}", s.attached_clients);
    println!(
        "faults         missing {}  minor {}  write-protect {}",
        c.faults_missing, c.faults_minor, c.faults_wp
    );
    println!(
        "fills          zero {}  from mapper {}",
        c.zero_fills, c.mapper_reads
    );
    println!(
        "mapper bytes   read {}  written {}",
        c.mapper_bytes_read, c.mapper_bytes_written
    );
    println!("poisonings     {}", c.poisonings);
    println!("syncs          {}", c.syncs);
    println!(
        "fault service  p50 {} ns  p99 {} ns",
        c.fault_service_p50_ns, c.fault_service_p99_ns
    );
}

pub fn run(socket: &Path, cmd: SegmentCmd) -> anyhow::Result<ExitCode> {
    let client = Client::connect(socket)?;
    match cmd {
        SegmentCmd::Create {
            name,
            size,
            backing,
            partition,
            home,
        } => create(&client, &name, size, &backing, partition.as_deref(), home)?,
        SegmentCmd::List { json } => list(&client, json)?,
        SegmentCmd::Stat {
            name,
            json,
            page: Some(page),
        } => stat_page(&client, &name, page, json)?,
        SegmentCmd::Pin { name, offset, len } => {
            let len = range_len(&client, &name, offset, len)?;
            let n = client.pin(&name, offset, len)?;
            println!(
                "segment {name}: {n} page(s) newly pinned ({}+{})",
                offset, len
            );
        }
        SegmentCmd::Unpin { name, offset, len } => {
            let len = range_len(&client, &name, offset, len)?;
            let n = client.unpin(&name, offset, len)?;
            println!("segment {name}: {n} page(s) unpinned");
        }
        SegmentCmd::Stat {
            name,
            json,
            page: None,
        } => {
            let s = client.stat(&name)?;
            if json {
                println!("{}", stat_json(&s));
            } else {
                print_stat(&s);
            }
        }
        SegmentCmd::Sync { name } => {
            let n = client.sync(&name)?;
            println!("synced segment {name}: {n} dirty page(s) written and fsynced");
        }
        SegmentCmd::Rm { name } => {
            client.remove_segment(&name)?;
            println!("removed segment {name}");
        }
        SegmentCmd::Read { name, offset, len } => read(&client, &name, offset, len)?,
        SegmentCmd::Write { name, offset } => write(&client, &name, offset)?,
        SegmentCmd::ClearPoison { name } => {
            let n = client.clear_poison(&name)?;
            println!("segment {name}: {n} poisoned page(s) cleared; they reload from the backing store on next access");
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `segment create`: a cluster segment when `home` is given, else a local one.
fn create(
    client: &Client,
    name: &str,
    size: Option<u64>,
    backing: &str,
    partition: Option<&str>,
    home: Option<u32>,
) -> anyhow::Result<()> {
    let info = match home {
        Some(h) => client.create_cluster_segment(name, size, backing_arg(backing)?, Some(h))?,
        None => client.create_segment_in(name, size, backing_arg(backing)?, partition)?,
    };
    println!(
        "created segment {} ({}, {}{})",
        info.name,
        ByteSize(info.size_bytes),
        info.backing,
        info.home
            .map_or(String::new(), |h| format!(", home node {h}"))
    );
    Ok(())
}

/// `segment list`: a table, or one JSON array.
fn list(client: &Client, json: bool) -> anyhow::Result<()> {
    let segs = client.list_segments()?;
    if json {
        println!(
            "{}",
            serde_json::Value::Array(segs.iter().map(info_json).collect())
        );
        return Ok(());
    }
    println!(
        "{:<24} {:>14} {:>12} {:>5}  BACKING",
        "NAME", "ID", "SIZE", "HOME"
    );
    for s in segs {
        println!(
            "{:<24} {:>14} {:>12} {:>5}  {}",
            s.name,
            s.id,
            ByteSize(s.size_bytes).to_string(),
            s.home.map_or("-".to_string(), |h| h.to_string()),
            s.backing
        );
    }
    Ok(())
}

/// `segment stat --page N`: one page's state and paging slot.
fn stat_page(client: &Client, name: &str, page: u64, json: bool) -> anyhow::Result<()> {
    let p = client.page_info(name, page)?;
    if json {
        let v = serde_json::json!({"page": p.page, "state": p.state, "pinned": p.pinned,
            "referenced": p.referenced, "slot": p.slot});
        println!("{v}");
    } else {
        let slot = p.slot.map_or("-".to_string(), |s| s.to_string());
        println!(
            "segment {name} page {}: {} pinned={} referenced={} slot={slot}",
            p.page, p.state, p.pinned, p.referenced
        );
    }
    Ok(())
}

/// The length of a pin or unpin range: `len`, or from `offset` to the end of the segment.
fn range_len(client: &Client, name: &str, offset: u64, len: Option<u64>) -> anyhow::Result<u64> {
    let size = client.stat(name)?.info.size_bytes;
    Ok(len.unwrap_or(size.saturating_sub(offset)))
}

/// `segment read`: the range through the node's page cache to stdout, in chunks a request
/// may carry.
fn read(client: &Client, name: &str, offset: u64, len: Option<u64>) -> anyhow::Result<()> {
    let size = client.stat(name)?.info.size_bytes;
    if offset > size {
        bail!("offset {offset} is past the end of segment {name} ({size} bytes)");
    }
    let len = len.unwrap_or(size - offset);
    let mut out = std::io::stdout().lock();
    let mut buf = vec![0u8; pagemesh::MAX_IO_CHUNK_BYTES as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        client.read_at(name, offset + done, &mut buf[..n])?;
        out.write_all(&buf[..n]).context("writing to stdout")?;
        done += n as u64;
    }
    out.flush()?;
    Ok(())
}

/// `segment write`: stdin through the node's page cache from `offset` on, in chunks a request
/// may carry.
fn write(client: &Client, name: &str, offset: u64) -> anyhow::Result<()> {
    let mut stdin = std::io::stdin().lock();
    let mut buf = vec![0u8; pagemesh::MAX_IO_CHUNK_BYTES as usize];
    let mut done = 0u64;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            let n = stdin.read(&mut buf[filled..]).context("reading stdin")?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        if filled == 0 {
            break;
        }
        client.write_at(name, offset + done, &buf[..filled])?;
        done += filled as u64;
    }
    eprintln!("wrote {done} bytes to segment {name} at offset {offset}");
    Ok(())
}
