//! `pagemesh segment ...`

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Subcommand;
use pagemesh::{Backing, Client, SegmentInfo, SegmentStat};
use pagemesh_types::ByteSize;

use crate::parse_size;

#[derive(Subcommand)]
pub enum SegmentCmd {
    /// Create a segment (O(1): every page starts dormant).
    Create {
        /// Segment name (1-64 of A-Z a-z 0-9 . _ -).
        name: String,
        /// Size (e.g. 64GiB). Optional for file backing: the file's size.
        #[arg(long, value_parser = parse_size)]
        size: Option<u64>,
        /// zero (anonymous, dormant pages read as zero), file:PATH (created/extended to --size)
        /// or volume:NAME (the volume's frames; writes private to each process).
        #[arg(long, default_value = "zero")]
        backing: String,
        /// The memory partition its pages count against (default: the default partition).
        #[arg(long)]
        partition: Option<String>,
        /// Cluster mode: the node that runs the segment's directory and mapper (default: the
        /// node this command talks to). The segment is visible on every node.
        #[arg(long)]
        home: Option<u32>,
        /// Permission bits, octal, as for a file: read lets a user read it through the
        /// daemon, write lets it attach, write, sync, pin and clear poison (default 0600). You
        /// own the segment.
        #[arg(long, value_parser = parse_mode)]
        mode: Option<u32>,
        /// Print JSON instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// Change a segment's permission bits (its owner or root).
    Chmod {
        /// Segment name.
        name: String,
        /// Permission bits, octal (e.g. 0640).
        #[arg(value_parser = parse_mode)]
        mode: u32,
        /// Print JSON instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// Change a segment's owner and group (root only): UID, UID:GID or :GID, numeric.
    Chown {
        /// Segment name.
        name: String,
        /// The new owner: UID, UID:GID or :GID.
        owner: String,
        /// Print JSON instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// Fault in and pin a range: never evicted until unpinned.
    Pin {
        /// Segment name.
        name: String,
        /// Start of the range (rounded down to a page).
        #[arg(long, value_parser = parse_size, default_value = "0")]
        offset: u64,
        /// Length of the range (default: to the end of the segment).
        #[arg(long, value_parser = parse_size)]
        len: Option<u64>,
        /// Print JSON instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// Unpin a range.
    Unpin {
        /// Segment name.
        name: String,
        /// Start of the range (rounded down to a page).
        #[arg(long, value_parser = parse_size, default_value = "0")]
        offset: u64,
        /// Length of the range (default: to the end of the segment).
        #[arg(long, value_parser = parse_size)]
        len: Option<u64>,
        /// Print JSON instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// List the segments of this node.
    List {
        /// Print a JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Resident, dirty and poisoned pages, and fault counters.
    Stat {
        /// Segment name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Show one page's state and paging slot instead.
        #[arg(long)]
        page: Option<u64>,
    },
    /// Write a file segment's dirty pages back to the file and fsync. A zero or volume
    /// segment has no file to write to: its dirty pages stay in memory (or on the paging
    /// device), and the command says so.
    Sync {
        /// Segment name.
        name: String,
        /// Print JSON: {"segment", "backing", "synced", "pages_written", "dirty_pages"}.
        #[arg(long)]
        json: bool,
    },
    /// Remove a segment (a backing file is kept; its dirty pages are written back first).
    Rm {
        /// Segment name.
        name: String,
        /// Print JSON instead of a sentence.
        #[arg(long)]
        json: bool,
    },
    /// Read bytes through the node's page cache to stdout.
    Read {
        /// Segment name.
        name: String,
        /// Where to start reading (e.g. 4KiB).
        #[arg(long, value_parser = parse_size, default_value = "0")]
        offset: u64,
        /// Bytes to read (default: to the end of the segment).
        #[arg(long, value_parser = parse_size)]
        len: Option<u64>,
    },
    /// Write stdin through the node's page cache at --offset.
    Write {
        /// Segment name.
        name: String,
        /// Where the first byte of stdin goes (e.g. 4KiB).
        #[arg(long, value_parser = parse_size, default_value = "0")]
        offset: u64,
    },
    /// Forget poisoned pages: they reload from the backing file (or read as zero) on next access.
    ClearPoison {
        /// Segment name.
        name: String,
        /// Print JSON instead of a sentence.
        #[arg(long)]
        json: bool,
    },
}

/// An octal mode of permission bits (e.g. 640 or 0640).
fn parse_mode(s: &str) -> Result<u32, String> {
    match u32::from_str_radix(s.trim_start_matches("0o"), 8) {
        Ok(m) if m <= 0o777 => Ok(m),
        _ => Err(format!(
            "{s:?} is not an octal mode of permission bits (000 to 777)"
        )),
    }
}

/// `UID`, `UID:GID` or `:GID` (numeric).
fn parse_owner(s: &str) -> anyhow::Result<(Option<u32>, Option<u32>)> {
    let (u, g) = s.split_once(':').unwrap_or((s, ""));
    let num = |x: &str, what: &str| -> anyhow::Result<Option<u32>> {
        if x.is_empty() {
            return Ok(None);
        }
        x.parse()
            .map(Some)
            .map_err(|_| anyhow::anyhow!("owner {s:?}: {what} {x:?} is not a number"))
    };
    let (uid, gid) = (num(u, "uid")?, num(g, "gid")?);
    anyhow::ensure!(
        uid.is_some() || gid.is_some(),
        "owner {s:?}: give UID, UID:GID or :GID"
    );
    Ok((uid, gid))
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
    serde_json::json!({"name": i.name, "id": i.id, "size_bytes": i.size_bytes, "backing": i.backing.to_string(), "home": i.home,
        "uid": i.owner.uid, "gid": i.owner.gid, "mode": format!("{:04o}", i.owner.mode)})
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
    outln!("segment        {} (id {})", s.info.name, s.info.id);
    outln!(
        "size           {} ({} bytes)",
        ByteSize(s.info.size_bytes),
        s.info.size_bytes
    );
    outln!("backing        {}", s.info.backing);
    let o = &s.info.owner;
    outln!(
        "owner          uid {} gid {}, mode {:04o} ({})",
        o.uid,
        o.gid,
        o.mode,
        o.mode_string()
    );
    if let Some(h) = s.info.home {
        outln!("home           node {h} (cluster segment)");
    }
    outln!("resident pages {}", s.resident_pages);
    outln!("dirty pages    {}", s.dirty_pages);
    outln!("poisoned pages {}", s.poisoned_pages);
    outln!("paged out      {}", s.paged_pages);
    outln!("pinned pages   {}", s.pinned_pages);
    outln!("partition      {}", s.partition);
    outln!(
        "evictions      {}  page-ins {}  page-outs {}",
        c.evictions,
        c.page_ins,
        c.page_outs
    );
    outln!("attached       {}", s.attached_clients);
    outln!(
        "faults         missing {}  minor {}  write-protect {}",
        c.faults_missing,
        c.faults_minor,
        c.faults_wp
    );
    outln!(
        "fills          zero {}  from mapper {}",
        c.zero_fills,
        c.mapper_reads
    );
    outln!(
        "mapper bytes   read {}  written {}",
        ByteSize(c.mapper_bytes_read),
        ByteSize(c.mapper_bytes_written)
    );
    outln!("poisonings     {}", c.poisonings);
    outln!("syncs          {}", c.syncs);
    let faults = c.faults_missing + c.faults_minor + c.faults_wp;
    outln!(
        "fault service  {}",
        crate::latency::percentiles(faults, c.fault_service_p50_ns, c.fault_service_p99_ns)
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
            mode,
            json,
        } => {
            let opts = pagemesh::CreateOptions {
                partition,
                home,
                mode,
            };
            create(&client, &name, size, &backing, &opts, json)?
        }
        SegmentCmd::Chmod { name, mode, json } => {
            let i = client.chmod_segment(&name, mode)?;
            let o = i.owner;
            let text = format!("segment {name}: mode {:04o} ({})", o.mode, o.mode_string());
            say(json, text, info_json(&i));
        }
        SegmentCmd::Chown { name, owner, json } => {
            let (uid, gid) = parse_owner(&owner)?;
            let i = client.chown_segment(&name, uid, gid)?;
            let text = format!(
                "segment {name}: owner uid {} gid {}",
                i.owner.uid, i.owner.gid
            );
            say(json, text, info_json(&i));
        }
        SegmentCmd::List { json } => list(&client, json)?,
        SegmentCmd::Stat {
            name,
            json,
            page: Some(page),
        } => stat_page(&client, &name, page, json)?,
        SegmentCmd::Pin {
            name,
            offset,
            len,
            json,
        } => {
            let len = range_len(&client, &name, offset, len)?;
            let n = client.pin(&name, offset, len)?;
            let text = format!(
                "segment {name}: {n} page(s) newly pinned ({} from offset {})",
                ByteSize(len),
                ByteSize(offset)
            );
            let v = serde_json::json!({"segment": name, "offset": offset, "len": len, "pages_pinned": n});
            say(json, text, v);
        }
        SegmentCmd::Unpin {
            name,
            offset,
            len,
            json,
        } => {
            let len = range_len(&client, &name, offset, len)?;
            let n = client.unpin(&name, offset, len)?;
            let v = serde_json::json!({"segment": name, "offset": offset, "len": len, "pages_unpinned": n});
            say(json, format!("segment {name}: {n} page(s) unpinned"), v);
        }
        SegmentCmd::Stat {
            name,
            json,
            page: None,
        } => {
            let s = client.stat(&name)?;
            if json {
                outln!("{}", stat_json(&s));
            } else {
                print_stat(&s);
            }
        }
        SegmentCmd::Sync { name, json } => sync(&client, &name, json)?,
        SegmentCmd::Rm { name, json } => {
            client.remove_segment(&name)?;
            let v = serde_json::json!({"segment": name, "removed": true});
            say(json, format!("removed segment {name}"), v);
        }
        SegmentCmd::Read { name, offset, len } => read(&client, &name, offset, len)?,
        SegmentCmd::Write { name, offset } => write(&client, &name, offset)?,
        SegmentCmd::ClearPoison { name, json } => {
            let n = client.clear_poison(&name)?;
            let text = format!("segment {name}: {n} poisoned page(s) cleared; they reload from the backing store on next access");
            let v = serde_json::json!({"segment": name, "pages_cleared": n});
            say(json, text, v);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Print `value` (with `--json`) or `text`.
fn say(json: bool, text: String, value: serde_json::Value) {
    if json {
        outln!("{value}");
    } else {
        outln!("{text}");
    }
}

/// `segment create`: a cluster segment when `home` is given, else a local one.
fn create(
    client: &Client,
    name: &str,
    size: Option<u64>,
    backing: &str,
    opts: &pagemesh::CreateOptions,
    json: bool,
) -> anyhow::Result<()> {
    let info = client.create_segment_with(name, size, backing_arg(backing)?, opts)?;
    let text = format!(
        "created segment {} ({}, {}{})",
        info.name,
        ByteSize(info.size_bytes),
        info.backing,
        info.home
            .map_or(String::new(), |h| format!(", home node {h}"))
    );
    say(json, text, info_json(&info));
    Ok(())
}

/// `segment sync`: a file segment's dirty pages to its file and fsync; for a segment without
/// a file, what happens to its dirty pages instead (nothing is written).
fn sync(client: &Client, name: &str, json: bool) -> anyhow::Result<()> {
    let s = client.stat(name)?;
    let has_file = matches!(s.info.backing, Backing::File { .. });
    let (written, dirty) = if has_file {
        (client.sync(name)?, 0)
    } else {
        (0, s.dirty_pages)
    };
    if json {
        let v = serde_json::json!({"segment": name, "backing": s.info.backing.to_string(),
            "synced": has_file, "pages_written": written, "dirty_pages": dirty});
        outln!("{v}");
    } else if has_file {
        outln!("synced segment {name}: {written} dirty page(s) written to its file and fsynced");
    } else {
        let what = match s.info.backing {
            Backing::Volume { .. } => "a volume segment (writes are private copies)",
            _ => "a zero segment",
        };
        outln!(
            "segment {name} is {what}: no backing file to sync; its {dirty} dirty page(s) stay \
             in memory or on the paging device"
        );
    }
    Ok(())
}

/// `segment list`: a table, or one JSON array.
fn list(client: &Client, json: bool) -> anyhow::Result<()> {
    let segs = client.list_segments()?;
    let unavailable = client.list_unavailable()?;
    if json {
        let all = segs
            .iter()
            .map(info_json)
            .chain(unavailable.iter().map(|u| {
                let mut v = info_json(&u.info);
                v["unavailable"] = serde_json::Value::String(u.why.clone());
                v
            }));
        outln!("{}", serde_json::Value::Array(all.collect()));
        return Ok(());
    }
    outln!(
        "{:<24} {:>14} {:>12} {:>5}  {:<9} {:<11}  BACKING",
        "NAME",
        "ID",
        "SIZE",
        "HOME",
        "MODE",
        "OWNER"
    );
    let row = |s: &pagemesh::SegmentInfo, note: &str| {
        outln!(
            "{:<24} {:>14} {:>12} {:>5}  {:<9} {:<11}  {}{note}",
            s.name,
            s.id,
            ByteSize(s.size_bytes).to_string(),
            s.home.map_or("-".to_string(), |h| h.to_string()),
            s.owner.mode_string(),
            format!("{}:{}", s.owner.uid, s.owner.gid),
            s.backing
        );
    };
    for s in &segs {
        row(s, "");
    }
    for u in &unavailable {
        row(&u.info, &format!("  UNAVAILABLE: {}", u.why));
    }
    Ok(())
}

/// `segment stat --page N`: one page's state and paging slot.
fn stat_page(client: &Client, name: &str, page: u64, json: bool) -> anyhow::Result<()> {
    let p = client.page_info(name, page)?;
    if json {
        let v = serde_json::json!({"page": p.page, "state": p.state, "pinned": p.pinned,
            "referenced": p.referenced, "slot": p.slot});
        outln!("{v}");
    } else {
        let slot = p.slot.map_or("-".to_string(), |s| s.to_string());
        outln!(
            "segment {name} page {}: {} pinned={} referenced={} slot={slot}",
            p.page,
            p.state,
            p.pinned,
            p.referenced
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
        usage!(
            "offset {offset} is past the end of segment {name} ({})",
            ByteSize(size)
        );
    }
    let len = len.unwrap_or(size - offset);
    let mut buf = vec![0u8; pagemesh::MAX_IO_CHUNK_BYTES as usize];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        client.read_at(name, offset + done, &mut buf[..n])?;
        // Stops with `StdoutClosed` when the reader went away (`| head`): main exits 0.
        crate::stdout::write_bytes(&buf[..n])?;
        done += n as u64;
    }
    crate::stdout::flush()
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
    eprintln!(
        "wrote {} to segment {name} at offset {offset}",
        ByteSize(done)
    );
    Ok(())
}
