//! The data dir's format stamp: `DATA_DIR/FORMAT` names the format of everything in the dir
//! (the catalog, `cluster/epoch`, `cluster/fences`, the write-intent logs and the homes'
//! sparse stores), so a daemon knows before reading any of it whether it can.
//!
//! | format | written by | what |
//! |---|---|---|
//! | 1 | pagemesh up to 3291357 | no stamp; `catalog.json` with `"version": 1` |
//! | 2 | this pagemesh | format 1's files, and the stamp |
//!
//! A dir without a stamp but with format 1's files is migrated (2 only adds the stamp, so the
//! migration writes it, atomically); an empty dir is stamped 2; a dir stamped with a format
//! this pagemesh cannot read, or with an unreadable stamp, is refused with a message naming
//! both versions. A future format that changes a file adds its conversion here.

use std::fs;
use std::path::{Path, PathBuf};

/// The data dir format this pagemesh writes.
pub const DATA_DIR_FORMAT: u32 = 2;
/// The oldest format it reads (and migrates).
pub const OLDEST_DATA_DIR_FORMAT: u32 = 1;

const STAMP: &str = "FORMAT";
const STAMP_PREFIX: &str = "pagemesh data dir format ";

/// Why the data dir cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "data dir {dir} is format {found}, written by a newer pagemesh; this pagemesh reads \
         formats {OLDEST_DATA_DIR_FORMAT} to {DATA_DIR_FORMAT}: run the newer pagemesh, or start \
         this one on another --data-dir"
    )]
    Newer { dir: PathBuf, found: u32 },
    #[error(
        "data dir {dir} is format {found}, older than any this pagemesh reads (formats \
         {OLDEST_DATA_DIR_FORMAT} to {DATA_DIR_FORMAT})"
    )]
    Older { dir: PathBuf, found: u32 },
    #[error(
        "data dir {dir}: its {STAMP} file says {text:?}, not \"{STAMP_PREFIX}N\"; this pagemesh \
         writes format {DATA_DIR_FORMAT}. Restore the file or start on another --data-dir"
    )]
    BadStamp { dir: PathBuf, text: String },
    #[error("data dir {dir}: {what}: {source}")]
    Io {
        dir: PathBuf,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// What opening found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opened {
    /// A new (empty) dir, now stamped with [`DATA_DIR_FORMAT`].
    New,
    /// Already of this format.
    Current,
    /// Migrated from an older format.
    Migrated { from: u32 },
}

/// Check (and stamp, or migrate) the data dir before anything in it is read.
pub fn open(dir: &Path) -> Result<Opened, DataDirError> {
    let io = |what: &'static str| {
        move |source| DataDirError::Io {
            dir: dir.to_path_buf(),
            what,
            source,
        }
    };
    match fs::read_to_string(dir.join(STAMP)) {
        Ok(text) => {
            let found = text
                .trim_end()
                .strip_prefix(STAMP_PREFIX)
                .and_then(|n| n.parse::<u32>().ok())
                .ok_or_else(|| DataDirError::BadStamp {
                    dir: dir.to_path_buf(),
                    text: text.chars().take(80).collect(),
                })?;
            match found {
                DATA_DIR_FORMAT => Ok(Opened::Current),
                f if f > DATA_DIR_FORMAT => Err(DataDirError::Newer {
                    dir: dir.to_path_buf(),
                    found: f,
                }),
                f if f < OLDEST_DATA_DIR_FORMAT => Err(DataDirError::Older {
                    dir: dir.to_path_buf(),
                    found: f,
                }),
                f => migrate(dir, f),
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let entries = fs::read_dir(dir).map_err(io("listing it"))?;
            // Format 1 had no stamp: any content is taken for format 1 (its catalog is checked
            // for its own version when it is read).
            if entries.count() == 0 {
                stamp(dir)?;
                Ok(Opened::New)
            } else {
                migrate(dir, 1)
            }
        }
        Err(e) => Err(io("reading its FORMAT file")(e)),
    }
}

/// Bring a dir of format `from` to [`DATA_DIR_FORMAT`]. From 1 to 2 nothing changes but the
/// stamp.
fn migrate(dir: &Path, from: u32) -> Result<Opened, DataDirError> {
    assert!((OLDEST_DATA_DIR_FORMAT..DATA_DIR_FORMAT).contains(&from));
    stamp(dir)?;
    log::info!(
        "data dir {}: migrated from format {from} to format {DATA_DIR_FORMAT}",
        dir.display()
    );
    Ok(Opened::Migrated { from })
}

/// Write the stamp atomically (a temp file, fsync, rename, fsync of the dir).
fn stamp(dir: &Path) -> Result<(), DataDirError> {
    let io = |what: &'static str| {
        move |source| DataDirError::Io {
            dir: dir.to_path_buf(),
            what,
            source,
        }
    };
    let text = format!("{STAMP_PREFIX}{DATA_DIR_FORMAT}\n");
    pagemesh_store::durable::replace_file(&dir.join(STAMP), text.as_bytes())
        .map_err(io("writing its FORMAT stamp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let d =
            std::env::temp_dir().join(format!("pagemesh-datadir-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[test]
    fn new_dirs_are_stamped_and_old_ones_migrated() {
        let d = temp("new");
        assert_eq!(open(&d).unwrap(), Opened::New);
        assert_eq!(open(&d).unwrap(), Opened::Current);
        let text = fs::read_to_string(d.join(STAMP)).unwrap();
        assert_eq!(
            text,
            format!("pagemesh data dir format {DATA_DIR_FORMAT}\n")
        );
        let old = temp("old");
        fs::write(
            old.join("catalog.json"),
            b"{\"version\":1,\"next_id\":1,\"segments\":[]}",
        )
        .unwrap();
        assert_eq!(open(&old).unwrap(), Opened::Migrated { from: 1 });
        assert_eq!(open(&old).unwrap(), Opened::Current);
        let _ = fs::remove_dir_all(&d);
        let _ = fs::remove_dir_all(&old);
    }

    #[test]
    fn unreadable_formats_are_refused_naming_both_versions() {
        let d = temp("newer");
        fs::write(d.join(STAMP), "pagemesh data dir format 9\n").unwrap();
        let e = open(&d).unwrap_err().to_string();
        assert!(
            e.contains("format 9") && e.contains("formats 1 to 2"),
            "{e}"
        );
        fs::write(d.join(STAMP), "pagemesh data dir format 0\n").unwrap();
        let e = open(&d).unwrap_err().to_string();
        assert!(
            e.contains("format 0") && e.contains("formats 1 to 2"),
            "{e}"
        );
        fs::write(d.join(STAMP), "garbage").unwrap();
        let e = open(&d).unwrap_err().to_string();
        assert!(e.contains("\"garbage\"") && e.contains("format 2"), "{e}");
        let _ = fs::remove_dir_all(&d);
    }
}
