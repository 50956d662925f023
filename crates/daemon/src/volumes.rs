//! Requests about volumes: add, list users of, remove.

use std::path::Path;
use std::sync::Arc;

use pagemesh_node::volume::Volume;
use pagemesh_proto::{Backing, ErrorCode, Response, VolumeInfo};
use pagemesh_types::ByteSize;

use crate::reply::err;
use crate::state::{named, valid_name, Daemon};

impl Daemon {
    #[allow(clippy::result_large_err)]
    pub(crate) fn volume(&self, name: &str) -> Result<Arc<Volume>, Response> {
        named(&self.volumes, name, "volume")
    }

    /// Segments backed by a volume.
    pub(crate) fn volume_users(&self, volume: &str) -> Vec<String> {
        self.segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| matches!(&s.info.backing, Backing::Volume { name } if name == volume))
            .map(|s| s.info.name.clone())
            .collect()
    }

    pub(crate) fn add_volume(&self, name: String, path: String) -> Response {
        if !valid_name(&name) {
            return err(
                ErrorCode::InvalidArgument,
                format!("invalid volume name {name:?}: use 1-64 of A-Z a-z 0-9 . _ -"),
            );
        }
        if !Path::new(&path).is_absolute() {
            return err(
                ErrorCode::InvalidArgument,
                format!("volume image path {path:?} must be absolute"),
            );
        }
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        if self
            .volumes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&name)
        {
            return err(
                ErrorCode::AlreadyExists,
                format!("volume {name:?} already exists (`pagemesh volume rm {name}` first)"),
            );
        }
        let size = match std::fs::metadata(&path) {
            Ok(m) if m.is_file() && m.len() > 0 => m.len(),
            Ok(_) => {
                return err(
                    ErrorCode::InvalidArgument,
                    format!("volume image {path} is not a non-empty regular file"),
                )
            }
            Err(e) => {
                return err(
                    ErrorCode::InvalidArgument,
                    format!("volume image {path}: {e}"),
                )
            }
        };
        let info = VolumeInfo {
            name: name.clone(),
            path: path.clone(),
            size_bytes: size,
        };
        let (memory, id) = crate::pool::volume_memory(&self.pool);
        let vol = match Volume::open(info.clone(), self.config.share_threshold, memory) {
            Ok(v) => Arc::new(v),
            Err(e) => {
                return err(
                    ErrorCode::Io,
                    format!("volume {name}: opening {path} read-only: {e}"),
                )
            }
        };
        if let Err(e) = catalog.add_volume(&info) {
            return err(ErrorCode::Io, e.to_string());
        }
        self.pool.register_volume(id, &vol);
        self.volumes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name.clone(), vol);
        log::info!("added volume {name}: {path} ({})", ByteSize(size));
        Response::Volume(info)
    }

    pub(crate) fn remove_volume(&self, name: &str) -> Response {
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = self.volume(name) {
            return e;
        }
        let users = self.volume_users(name);
        if !users.is_empty() {
            return err(
                ErrorCode::InUse,
                format!(
                    "volume {name} backs segment(s) {}; remove them first",
                    users.join(", ")
                ),
            );
        }
        if let Err(e) = catalog.remove_volume(name) {
            return err(ErrorCode::Io, e.to_string());
        }
        if let Some(v) = self
            .volumes
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
        {
            v.release();
        }
        log::info!("removed volume {name}");
        Response::Removed
    }

    pub(crate) fn list_volumes(&self) -> Response {
        let mut v: Vec<VolumeInfo> = self
            .volumes
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .map(|v| v.info.clone())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        Response::Volumes(v)
    }

    pub(crate) fn stat_volume(&self, name: &str) -> Response {
        match self.volume(name) {
            Ok(v) => Response::VolumeStat(v.stat(self.volume_users(name).len() as u64)),
            Err(e) => e,
        }
    }
}
