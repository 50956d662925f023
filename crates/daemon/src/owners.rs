//! The owners of segments changed since they were loaded or created (`access`).

use std::collections::HashMap;
use std::sync::RwLock;

use pagemesh_proto::{Owner, SegmentInfo};

/// Owners changed (chmod, chown) since the segment was loaded or created: a segment's
/// `info.owner` is the owner it had then.
#[derive(Default)]
pub(crate) struct Owners(RwLock<HashMap<u64, Owner>>);

impl Owners {
    pub(crate) fn get(&self, info: &SegmentInfo) -> Owner {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&info.id)
            .copied()
            .unwrap_or(info.owner)
    }

    pub(crate) fn set(&self, id: u64, owner: Owner) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, owner);
    }
}
