//! The segment catalog, persisted in `DATA_DIR/catalog.json` (written atomically: temp file,
//! fsync, rename, fsync of the directory), so segments survive a daemon restart.

use std::fs;
use std::path::{Path, PathBuf};

use pagemesh_proto::{Backing, Owner, PartitionLimits, SegmentInfo, VolumeInfo};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("reading the catalog {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the catalog {path} is corrupt ({source}); move it away to start with an empty catalog"
    )]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error(
        "the catalog {path} is version {found}, and this pagemesh reads version {CATALOG_VERSION}: \
         run the pagemesh that wrote it"
    )]
    Version { path: PathBuf, found: u32 },
    #[error("writing the catalog {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The version of `catalog.json` this pagemesh reads and writes (the data dir's format,
/// `datadir`, covers the file as a whole; this is the file's own field). Version 2 gave
/// segments owners; a version 1 catalog is migrated when opened (its segments become root's,
/// mode 0600: who created them was not recorded).
pub const CATALOG_VERSION: u32 = 2;

fn default_partition() -> String {
    "default".into()
}

fn default_mode() -> u32 {
    Owner::DEFAULT_MODE
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Entry {
    name: String,
    id: u64,
    size_bytes: u64,
    backing: String,
    #[serde(default = "default_partition")]
    partition: String,
    /// The home node of a cluster segment.
    #[serde(default)]
    home: Option<u32>,
    /// Owner and mode (version 2; a version 1 entry is root's, 0600).
    #[serde(default)]
    uid: u32,
    #[serde(default)]
    gid: u32,
    #[serde(default = "default_mode")]
    mode: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct PartitionEntry {
    name: String,
    min_bytes: u64,
    max_bytes: u64,
    weight: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct VolumeEntry {
    name: String,
    path: String,
    size_bytes: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Stored {
    version: u32,
    next_id: u64,
    segments: Vec<Entry>,
    #[serde(default)]
    volumes: Vec<VolumeEntry>,
    #[serde(default)]
    partitions: Vec<PartitionEntry>,
    /// Ids of cluster segments removed from the cluster: a peer that was away and still lists
    /// one must not bring it back.
    #[serde(default)]
    removed: Vec<u64>,
}

pub struct Catalog {
    path: PathBuf,
    stored: Stored,
}

impl Catalog {
    /// Load the catalog in `dir`, or start an empty one.
    pub fn open(dir: &Path) -> Result<Catalog, CatalogError> {
        let path = dir.join("catalog.json");
        let stored: Stored = match fs::read(&path) {
            Ok(bytes) => {
                serde_json::from_slice(&bytes).map_err(|source| CatalogError::Corrupt {
                    path: path.clone(),
                    source,
                })?
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored {
                version: CATALOG_VERSION,
                next_id: 1,
                segments: Vec::new(),
                volumes: Vec::new(),
                partitions: Vec::new(),
                removed: Vec::new(),
            },
            Err(source) => return Err(CatalogError::Read { path, source }),
        };
        let migrate = stored.version == 1;
        if stored.version != CATALOG_VERSION && !migrate {
            let found = stored.version;
            return Err(CatalogError::Version { path, found });
        }
        let mut catalog = Catalog { path, stored };
        if migrate {
            let n = catalog.stored.segments.len();
            catalog.update(|st| st.version = CATALOG_VERSION)?;
            log::warn!(
                "catalog {}: migrated from version 1 to {CATALOG_VERSION}: its {n} segment(s) are now owned by root with mode 0600 \
                 (their creators were not recorded); give them back with `pagemesh segment chown` and `segment chmod`",
                catalog.path.display()
            );
        }
        Ok(catalog)
    }

    /// Every segment with the name of its partition.
    pub fn segments(&self) -> Vec<(SegmentInfo, String)> {
        self.stored
            .segments
            .iter()
            .map(|e| {
                // An unreadable backing (a newer catalog?) must not turn into memory: keep it
                // as a file backing that cannot open, so the segment is reported unavailable.
                let backing = e.backing.parse().unwrap_or_else(|_| Backing::File {
                    path: format!("<unknown backing {:?} in the catalog>", e.backing),
                });
                let info = SegmentInfo {
                    name: e.name.clone(),
                    id: e.id,
                    size_bytes: e.size_bytes,
                    backing,
                    home: e.home,
                    owner: Owner {
                        uid: e.uid,
                        gid: e.gid,
                        mode: e.mode,
                    },
                };
                (info, e.partition.clone())
            })
            .collect()
    }

    pub fn partitions(&self) -> Vec<(String, PartitionLimits)> {
        self.stored
            .partitions
            .iter()
            .map(|p| {
                let l = PartitionLimits {
                    min_bytes: p.min_bytes,
                    max_bytes: p.max_bytes,
                    weight: p.weight,
                };
                (p.name.clone(), l)
            })
            .collect()
    }

    /// Add or replace a partition.
    pub fn put_partition(&mut self, name: &str, l: PartitionLimits) -> Result<(), CatalogError> {
        self.update(|st| {
            st.partitions.retain(|p| p.name != name);
            st.partitions.push(PartitionEntry {
                name: name.to_string(),
                min_bytes: l.min_bytes,
                max_bytes: l.max_bytes,
                weight: l.weight,
            });
        })
    }

    pub fn remove_partition(&mut self, name: &str) -> Result<(), CatalogError> {
        self.update(|st| st.partitions.retain(|p| p.name != name))
    }

    /// Allocate an id for a new segment (persisted with the next `add`).
    pub fn next_id(&mut self) -> u64 {
        let id = self.stored.next_id.max(1);
        self.stored.next_id = id + 1;
        id
    }

    pub fn add(&mut self, info: &SegmentInfo, partition: &str) -> Result<(), CatalogError> {
        self.update(|st| {
            st.segments.push(Entry {
                name: info.name.clone(),
                id: info.id,
                size_bytes: info.size_bytes,
                backing: info.backing.to_string(),
                partition: partition.to_string(),
                home: info.home,
                uid: info.owner.uid,
                gid: info.owner.gid,
                mode: info.owner.mode,
            })
        })
    }

    /// Change the owner and mode of segment `id`.
    pub fn set_owner(&mut self, id: u64, owner: Owner) -> Result<(), CatalogError> {
        self.update(|st| {
            for e in st.segments.iter_mut().filter(|e| e.id == id) {
                (e.uid, e.gid, e.mode) = (owner.uid, owner.gid, owner.mode);
            }
        })
    }

    pub fn volumes(&self) -> Vec<VolumeInfo> {
        self.stored
            .volumes
            .iter()
            .map(|v| VolumeInfo {
                name: v.name.clone(),
                path: v.path.clone(),
                size_bytes: v.size_bytes,
            })
            .collect()
    }

    pub fn add_volume(&mut self, v: &VolumeInfo) -> Result<(), CatalogError> {
        self.update(|st| {
            st.volumes.push(VolumeEntry {
                name: v.name.clone(),
                path: v.path.clone(),
                size_bytes: v.size_bytes,
            })
        })
    }

    pub fn remove_volume(&mut self, name: &str) -> Result<(), CatalogError> {
        self.update(|st| st.volumes.retain(|v| v.name != name))
    }

    pub fn remove(&mut self, name: &str) -> Result<(), CatalogError> {
        self.update(|st| st.segments.retain(|e| e.name != name))
    }

    /// Remove a cluster segment and remember its id as removed (one atomic update).
    pub fn remove_cluster(&mut self, id: u64) -> Result<(), CatalogError> {
        self.update(|st| {
            st.segments.retain(|e| e.id != id);
            if !st.removed.contains(&id) {
                st.removed.push(id);
            }
        })
    }

    /// Ids of cluster segments removed from the cluster.
    pub fn removed(&self) -> Vec<u64> {
        self.stored.removed.clone()
    }

    /// Apply a change to a copy, persist the copy, and only then adopt it: a failed write
    /// leaves the catalog in memory as it is on disk.
    fn update(&mut self, change: impl FnOnce(&mut Stored)) -> Result<(), CatalogError> {
        let mut next = self.stored.clone();
        change(&mut next);
        self.save(&next)?;
        self.stored = next;
        Ok(())
    }

    fn save(&self, stored: &Stored) -> Result<(), CatalogError> {
        let err = |source| CatalogError::Write {
            path: self.path.clone(),
            source,
        };
        let bytes = serde_json::to_vec_pretty(stored).expect("catalog serialises");
        pagemesh_store::durable::replace_file(&self.path, &bytes).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = Catalog::open(dir.path()).unwrap();
        let id = c.next_id();
        let info = SegmentInfo {
            name: "a".into(),
            id,
            size_bytes: 4096,
            backing: Backing::File { path: "/x".into() },
            home: Some(3),
            owner: Owner {
                uid: 1000,
                gid: 100,
                mode: 0o640,
            },
        };
        c.add(&info, "default").unwrap();
        let mut c2 = Catalog::open(dir.path()).unwrap();
        assert_eq!(c2.segments(), vec![(info, "default".to_string())]);
        assert!(c2.next_id() > id);
        let root = Owner {
            uid: 0,
            gid: 0,
            mode: 0o600,
        };
        c2.set_owner(id, root).unwrap();
        assert_eq!(
            Catalog::open(dir.path()).unwrap().segments()[0].0.owner,
            root
        );
        c2.remove("a").unwrap();
        assert!(Catalog::open(dir.path()).unwrap().segments().is_empty());
        fs::write(dir.path().join("catalog.json"), b"{not json").unwrap();
        assert!(matches!(
            Catalog::open(dir.path()),
            Err(CatalogError::Corrupt { .. })
        ));
    }

    #[test]
    fn a_version_1_catalog_is_migrated_and_its_segments_are_roots() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = r#"{"version":1,"next_id":3,"segments":[{"name":"old","id":2,"size_bytes":8192,"backing":"zero"}]}"#;
        fs::write(dir.path().join("catalog.json"), v1).unwrap();
        let c = Catalog::open(dir.path()).unwrap();
        let (info, partition) = &c.segments()[0];
        assert_eq!((info.name.as_str(), partition.as_str()), ("old", "default"));
        assert_eq!(
            info.owner,
            Owner {
                uid: 0,
                gid: 0,
                mode: 0o600
            }
        );
        let on_disk: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.path().join("catalog.json")).unwrap()).unwrap();
        assert_eq!(on_disk["version"], CATALOG_VERSION);
        // A catalog newer than this pagemesh is refused, naming both versions.
        fs::write(
            dir.path().join("catalog.json"),
            r#"{"version":9,"next_id":1,"segments":[]}"#,
        )
        .unwrap();
        let e = Catalog::open(dir.path())
            .err()
            .expect("refused")
            .to_string();
        assert!(
            e.contains("version 9") && e.contains(&format!("version {CATALOG_VERSION}")),
            "{e}"
        );
    }
}
