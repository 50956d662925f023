//! The cluster side's files in the data dir (`DATA_DIR/cluster/`): this node's epoch, the fences
//! it set, each homed segment's write-intent log and a zero segment's page store. The data dir's
//! format version (`pagemesh_daemon::datadir`) covers them.

use std::path::{Path, PathBuf};

use pagemesh_core::Epoch;
use pagemesh_store::durable::replace_file;
use pagemesh_types::{NodeId, SegmentId};

use crate::intents::IntentLog;

fn cluster_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("cluster")
}

fn intents_path(data_dir: &Path, seg: SegmentId) -> PathBuf {
    cluster_dir(data_dir).join(format!("seg-{}.intents", seg.0))
}

/// Open (creating it if need be) the write-intent log of a segment homed here.
pub(crate) fn open_intents(data_dir: &Path, seg: SegmentId) -> std::io::Result<IntentLog> {
    std::fs::create_dir_all(cluster_dir(data_dir))?;
    IntentLog::open(&intents_path(data_dir, seg))
}

/// The file that backs a zero segment homed here (sparse: dormant pages take no space). Synced
/// and evicted pages of the segment are written to it.
pub fn zero_store(data_dir: &Path, seg: SegmentId) -> PathBuf {
    cluster_dir(data_dir).join(format!("seg-{}.pages", seg.0))
}

/// Remove what a segment homed here kept in the data dir once the cluster removed it: its
/// write-intent log, and the page store of a zero segment (a file segment keeps its file).
pub fn remove_segment_files(data_dir: &Path, seg: SegmentId, zero: bool) {
    if zero {
        let _ = std::fs::remove_file(zero_store(data_dir, seg));
    }
    let _ = std::fs::remove_file(intents_path(data_dir, seg));
}

/// The fences this node set (peer -> lowest epoch it accepts), kept in `DATA_DIR/cluster/fences`
/// so that a restart of this node does not let a fenced incarnation back in.
pub(crate) fn load_fences(data_dir: &Path) -> Result<Vec<(NodeId, Epoch)>, String> {
    let path = cluster_dir(data_dir).join("fences");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut it = l.split_whitespace().map(str::parse::<u64>);
            match (it.next(), it.next()) {
                (Some(Ok(n)), Some(Ok(e))) if n <= u64::from(u32::MAX) => {
                    Ok((NodeId(n as u32), Epoch(e)))
                }
                _ => Err(format!(
                    "{} has a bad line {l:?}: restore or remove it",
                    path.display()
                )),
            }
        })
        .collect()
}

/// Record durably that `peer` is fenced below `epoch` (a fence only ever rises).
pub(crate) fn store_fence(data_dir: &Path, peer: NodeId, epoch: Epoch) -> std::io::Result<()> {
    let mut fences = load_fences(data_dir).map_err(std::io::Error::other)?;
    let old = fences
        .iter()
        .filter(|(n, _)| *n == peer)
        .map(|(_, e)| *e)
        .max()
        .unwrap_or_default();
    if epoch <= old {
        return Ok(());
    }
    fences.retain(|(n, _)| *n != peer);
    fences.push((peer, epoch));
    let text: String = fences
        .iter()
        .map(|(n, e)| format!("{} {}\n", n.0, e.0))
        .collect();
    replace_file(&cluster_dir(data_dir).join("fences"), text.as_bytes())
}

/// Read, bump and durably store this node's epoch: every start is a new incarnation.
pub(crate) fn next_epoch(data_dir: &Path) -> Result<Epoch, String> {
    let dir = cluster_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join("epoch");
    let old = match std::fs::read_to_string(&path) {
        Ok(s) => s
            .trim()
            .parse::<u64>()
            .map_err(|e| format!("{} is corrupt ({e}): the node cannot know its incarnation; restore it or remove the data directory", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    let epoch = old + 1;
    replace_file(&path, format!("{epoch}\n").as_bytes())
        .map_err(|e| format!("storing the epoch in {}: {e}", path.display()))?;
    Ok(Epoch(epoch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fences_only_rise_and_survive_a_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(cluster_dir(dir.path())).expect("dir");
        store_fence(dir.path(), NodeId(2), Epoch(6)).expect("store");
        store_fence(dir.path(), NodeId(3), Epoch(2)).expect("store");
        // A lower (or unknown, 0) fence never replaces a higher one.
        store_fence(dir.path(), NodeId(2), Epoch(0)).expect("store");
        store_fence(dir.path(), NodeId(2), Epoch(4)).expect("store");
        let mut f = load_fences(dir.path()).expect("load");
        f.sort();
        assert_eq!(f, vec![(NodeId(2), Epoch(6)), (NodeId(3), Epoch(2))]);
        store_fence(dir.path(), NodeId(2), Epoch(7)).expect("store");
        assert!(load_fences(dir.path())
            .expect("load")
            .contains(&(NodeId(2), Epoch(7))));
        // A corrupt file is an error, not an empty set of fences.
        std::fs::write(cluster_dir(dir.path()).join("fences"), "2 x\n").expect("write");
        assert!(load_fences(dir.path()).is_err());
        assert!(store_fence(dir.path(), NodeId(4), Epoch(1)).is_err());
    }

    #[test]
    fn every_start_is_a_new_epoch() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(next_epoch(dir.path()).expect("first"), Epoch(1));
        assert_eq!(next_epoch(dir.path()).expect("second"), Epoch(2));
        std::fs::write(cluster_dir(dir.path()).join("epoch"), "x\n").expect("write");
        assert!(
            next_epoch(dir.path()).is_err(),
            "a corrupt epoch is refused"
        );
    }
}
