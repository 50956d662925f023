//! `pagemesh volume ...`

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use pagemesh::{Client, VolumeInfo, VolumeStat};
use pagemesh_store::sums::BlockSums;
use pagemesh_types::ByteSize;

#[derive(Subcommand)]
pub enum VolumeCmd {
    /// Register a raw image file as a read-only volume. Segments created with
    /// `--backing volume:NAME` share its frames; a write gives the writing process a private
    /// copy of the page (VM-style), seen by no other process and never written to the image.
    Add {
        /// Volume name (1-64 of A-Z a-z 0-9 . _ -).
        name: String,
        /// The raw image file (never written).
        path: PathBuf,
    },
    /// List volumes.
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Cache size, storage reads and sharing counters of a volume.
    Stat {
        /// Volume name.
        name: String,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the block checksums of an image to IMAGE.pmsums, beside it, while the image is
    /// known to be good (e.g. right after a VM snapshot). A volume on an image with such a
    /// file checks every block it reads from storage: a block that does not match is poisoned
    /// (SIGBUS for whoever faults on it; a VM is stopped), never served.
    Checksum {
        /// The raw image file (only read).
        path: PathBuf,
    },
    /// Remove a volume that no segment uses (the image file is kept).
    Rm {
        /// Volume name.
        name: String,
    },
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
    if let VolumeCmd::Checksum { path } = &cmd {
        let sums = BlockSums::compute(path)?;
        let side = BlockSums::sidecar(path);
        sums.write(&side)?;
        outln!(
            "wrote {} block checksums to {}",
            sums.blocks(),
            side.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let client = Client::connect(socket)?;
    match cmd {
        VolumeCmd::Add { name, path } => {
            let abs = if path.is_absolute() {
                path
            } else {
                std::env::current_dir()?.join(path)
            };
            let v = client.add_volume(&name, &abs.display().to_string())?;
            outln!(
                "added volume {} ({}, {})",
                v.name,
                ByteSize(v.size_bytes),
                v.path
            );
        }
        VolumeCmd::List { json } => {
            let vols = client.list_volumes()?;
            if json {
                outln!(
                    "{}",
                    serde_json::Value::Array(vols.iter().map(info_json).collect())
                );
            } else {
                outln!("{:<24} {:>12}  PATH", "NAME", "SIZE");
                for v in vols {
                    outln!(
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
                outln!("{}", stat_json(&s));
            } else {
                outln!("volume           {} ({})", s.info.name, s.info.path);
                outln!("size             {}", ByteSize(s.info.size_bytes));
                outln!(
                    "cached           {} blocks ({})",
                    s.cached_blocks,
                    ByteSize(s.cached_blocks * 4096)
                );
                outln!(
                    "storage reads    {} ({})",
                    s.storage_reads,
                    ByteSize(s.storage_bytes_read)
                );
                outln!("shared maps      {}", s.shared_maps);
                outln!("private copies   {}", s.private_copies);
                outln!("coalesced waits  {}", s.coalesced_waits);
                outln!("poisoned blocks  {}", s.poisoned_blocks);
                outln!("segments         {}", s.segments);
                outln!("share threshold  {}", s.share_threshold);
            }
        }
        VolumeCmd::Rm { name } => {
            client.remove_volume(&name)?;
            outln!("removed volume {name}");
        }
        VolumeCmd::Checksum { .. } => unreachable!("needs no daemon: handled above"),
    }
    Ok(ExitCode::SUCCESS)
}
