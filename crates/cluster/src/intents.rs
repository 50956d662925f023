//! Durable write intents of the segments homed on this node (`docs/protocol.md`): "versions
//! newer than the mapper's may exist for this page". An append-only log of set/clear records
//! (one little-endian u64 each: the page number, top bit set for a clear), replayed at start
//! and rewritten as a snapshot when it has grown well past the set it describes. Appends are
//! made durable in batches: the engine appends every intent of one round of work, then calls
//! [`IntentLog::sync`] once before it reports any of them done.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

const CLEAR: u64 = 1 << 63;

pub struct IntentLog {
    path: PathBuf,
    file: File,
    set: BTreeSet<u64>,
    records: u64,
    unsynced: bool,
    /// A write or sync failed: the file may hold a torn record. Nothing is reported durable
    /// until a rewrite of the whole set (compaction) succeeds.
    broken: bool,
}

impl IntentLog {
    pub fn open(path: &Path) -> std::io::Result<IntentLog> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut set = BTreeSet::new();
        // A torn last record (a crash mid-append) was never reported durable: ignore it.
        let whole = bytes.len() / 8 * 8;
        for r in bytes[..whole].chunks_exact(8) {
            let v = u64::from_le_bytes(r.try_into().expect("8 bytes"));
            if v & CLEAR != 0 {
                set.remove(&(v & !CLEAR));
            } else {
                set.insert(v);
            }
        }
        let mut log = IntentLog {
            path: path.to_path_buf(),
            file,
            set,
            records: (whole / 8) as u64,
            unsynced: false,
            broken: false,
        };
        if whole != bytes.len() {
            log.compact()?;
        }
        Ok(log)
    }

    /// Record (`dirty`) or clear the intent of `page`; durable after the next `sync`. The
    /// set changes only once the record is written.
    pub fn append(&mut self, page: u64, dirty: bool) -> std::io::Result<()> {
        if self.broken {
            self.repair()?;
        }
        if self.set.contains(&page) == dirty {
            // Already recorded (durable once the sync that follows it succeeded: a failed sync
            // marks the log broken, and the repair rewrites the whole set).
            return Ok(());
        }
        let v = if dirty { page } else { page | CLEAR };
        if let Err(e) = self.file.write_all(&v.to_le_bytes()) {
            self.broken = true;
            return Err(e);
        }
        if dirty {
            self.set.insert(page);
        } else {
            self.set.remove(&page);
        }
        self.records += 1;
        self.unsynced = true;
        Ok(())
    }

    /// Make every append durable.
    pub fn sync(&mut self) -> std::io::Result<()> {
        if self.broken {
            return self.repair();
        }
        if self.unsynced {
            if let Err(e) = self.file.sync_data() {
                self.broken = true;
                return Err(e);
            }
            self.unsynced = false;
            if self.records > 4 * self.set.len() as u64 + 4096 {
                self.compact()?;
            }
        }
        Ok(())
    }

    /// Rewrite the file from the set (which holds exactly what was written, synced or not).
    fn repair(&mut self) -> std::io::Result<()> {
        self.compact()?;
        self.broken = false;
        self.unsynced = false;
        Ok(())
    }

    /// The pages with an intent.
    pub fn pages(&self) -> Vec<u64> {
        self.set.iter().copied().collect()
    }

    fn compact(&mut self) -> std::io::Result<()> {
        let mut bytes = Vec::with_capacity(self.set.len() * 8);
        for p in &self.set {
            bytes.extend_from_slice(&p.to_le_bytes());
        }
        pagemesh_store::durable::replace_file(&self.path, &bytes)?;
        self.file = OpenOptions::new()
            .append(true)
            .read(true)
            .open(&self.path)?;
        self.records = self.set.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents_survive_reopen_and_compaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("1.intents");
        let mut log = IntentLog::open(&p).expect("open");
        for i in 0..10_000 {
            log.append(i % 7, i % 2 == 0).expect("append");
        }
        log.append(100, true).expect("append");
        log.sync().expect("sync");
        let want = log.pages();
        drop(log);
        // A torn record at the end is ignored.
        let mut f = OpenOptions::new().append(true).open(&p).expect("open");
        f.write_all(&[1, 2, 3]).expect("write");
        drop(f);
        let log = IntentLog::open(&p).expect("reopen");
        assert_eq!(log.pages(), want);
        assert!(log.pages().contains(&100));
    }
}
