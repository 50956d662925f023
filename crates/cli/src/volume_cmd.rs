//! `pagemesh volume ...`

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use pagemesh::{Client, VolumeInfo, VolumeStat};
use pagemesh_types::ByteSize;

#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Register a raw image file as a read-only volume. Segments created with
    /// `--backing volume:NAME` share its frames; a write gives the writing process a private
    /// copy of the page (VM-style), seen by no other process and never written to the image.
    Add { name: String, path: PathBuf },
    /// List volumes.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Cache size, storage reads and sharing counters of a volume.
    Stat {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Remove a volume that no segment uses (the image file is kept).
    Rm { name: String },
}

fn info_json(v: &VolumeInfo) -> serde_json::Value {
    serde_json::json!({"name": v.name, "path": v.path, "size_bytes": v.size_bytes})
}

pub fn stat_json(s: &VolumeStat) -> serde_json::Value {
    serde_json::json!({
        "volume": info_json(&s.info), "cached_blocks": s.cached_blocks, "cached_bytes": s.cached_blocks * 4096,
        "poisoned_blocks": s.poisoned_blocks, "storage_reads": s.storage_reads,
        "storage_bytes_read": s.storage_bytes_read, "shared_maps": s.shared_maps,
        "private_copies": s.private_copies, "coalesced_waits": s.coalesced_waits, "segments": s.segments,
        "share_threshold": s.share_threshold,
    })
}

pub fn run(socket: &Path, cmd: VolumeCmd) -> anyhow::Result<ExitCode> {
    let client = Client::connect(socket)?;
    match cmd {
        VolumeCmd::Add { name, path } => {
            let abs = if path.is_absolute() {
                path
            } else {
                std::env::current_dir()?.join(path)
            };
            let v = client.add_volume(&name, &abs.display().to_string())?;
            println!(
                "added volume {} ({}, {})",
                v.name,
                ByteSize(v.size_bytes),
                v.path
            );
        }
        VolumeCmd::List { json } => {
            let vols = client.list_volumes()?;
            if json {
                println!(
                    "{}",
                    serde_json::Value::Array(vols.iter().map(info_json).collect())
                );
            } else {
                println!("{:<24} {:>12}  PATH", "NAME", "SIZE");
                for v in vols {
                    println!(
                        "{:<24} {:>12}  {}",
                        v.name,
                        ByteSize(v.size_bytes).to_string(),
                        v.path
                    );
                }
            }
        }
        VolumeCmd::Stat { name, json } => {
            let s = client.stat_volume(&name)?;
            if json {
                println!("{}", stat_json(&s));
            } else {
                println!("volume           {} ({})", s.info.name, s.info.path);
                println!("size             {}", ByteSize(s.info.size_bytes));
                println!(
                    "cached           {} blocks ({})",
                    s.cached_blocks,
                    ByteSize(s.cached_blocks * 4096)
                );
                println!(
                    "storage reads    {} ({} bytes)",
                    s.storage_reads, s.storage_bytes_read
                );
                println!("shared maps      {}", s.shared_maps);
                println!("private copies   {}", s.private_copies);
                println!("coalesced waits  {}", s.coalesced_waits);
                println!("poisoned blocks  {}", s.poisoned_blocks);
                println!("segments         {}", s.segments);
                println!("share threshold  {}", s.share_threshold);
            }
        }
        VolumeCmd::Rm { name } => {
            client.remove_volume(&name)?;
            println!("removed volume {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
