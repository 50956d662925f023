//! A segment's backing file, opened with its user's rights, never the daemon's: a user's
//! client opens the file itself and passes it (`SCM_RIGHTS`) with its create; at restart the
//! daemon reopens the recorded path as the segment's owner (`process::open_as`). Root's
//! segments (and requests that pass no file, which only root may make) are opened by the
//! daemon, as before.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use pagemesh_proto::Owner;
use pagemesh_store::FileMapper;
use pagemesh_uffd::process::{open_as, Identity};

/// The mapper of a file segment over `path`: on the file the client passed (checked), else the
/// file opened as `owner` (as the daemon, for root's).
pub(crate) fn file_mapper(
    path: &Path,
    size: Option<u64>,
    owner: Owner,
    passed: Option<File>,
) -> Result<FileMapper, String> {
    let shown = path.display();
    let file = match passed {
        Some(f) => {
            check_passed(&f, path)?;
            f
        }
        None if owner.uid == 0 => {
            return FileMapper::open(path, size)
                .map_err(|e| format!("opening backing file {shown}: {e}"))
        }
        None => {
            let who = Identity {
                uid: owner.uid,
                gid: owner.gid,
                groups: vec![owner.gid],
            };
            open_as(path, &who).map_err(|e| {
                format!(
                    "opening backing file {shown} as its owner, uid {}: {e}",
                    owner.uid
                )
            })?
        }
    };
    FileMapper::from_file(file, path, size).map_err(|e| format!("backing file {shown}: {e}"))
}

/// The file a client passed must be a regular file it opened for reading and writing, and the
/// one `path` names (the path is what the catalog records and a restart reopens).
fn check_passed(f: &File, path: &Path) -> Result<(), String> {
    let shown = path.display();
    let meta = f
        .metadata()
        .map_err(|e| format!("the file passed for {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!("the file passed for {shown} is not a regular file"));
    }
    // A read and a write of nothing fail (EBADF) on a descriptor not open for them.
    if f.read_at(&mut [], 0).is_err() || f.write_at(&[], 0).is_err() {
        return Err(format!(
            "the file passed for {shown} is not open for reading and writing"
        ));
    }
    let named = std::fs::metadata(path).ok();
    if named.is_none_or(|n| (n.dev(), n.ino()) != (meta.dev(), meta.ino())) {
        return Err(format!("the file passed is not the file {shown} names"));
    }
    Ok(())
}
