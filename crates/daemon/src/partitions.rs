//! Partitions, pinning and page diagnostics: the daemon's requests about the memory pool.

// Errors here are the reply itself, built once per request: their size does not matter.
#![allow(clippy::result_large_err)]

use std::sync::atomic::Ordering;
use std::sync::Arc;

use pagemesh_proto::{ErrorCode, PageInfo, PartitionLimits, PartitionStat, Request, Response};
use pagemesh_types::{ByteSize, PAGE_SIZE};

use crate::pool::{limits_of, VOLUMES};
use crate::reply::{err, io_err};
use crate::state::{valid_name, Daemon};
use pagemesh_node::memory::Partition;
use pagemesh_node::pages::{PageState, PINNED, REFERENCED};

impl Daemon {
    fn partition_stat(&self, p: &Partition) -> PartitionStat {
        let l = p.limits();
        let segments = self
            .segments
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .filter(|s| {
                s.memory
                    .as_ref()
                    .is_some_and(|m| m.partition.name == p.name)
            })
            .count() as u64;
        PartitionStat {
            name: p.name.clone(),
            limits: PartitionLimits {
                min_bytes: l.min_pages * PAGE_SIZE,
                max_bytes: l.max_pages * PAGE_SIZE,
                weight: l.weight,
            },
            entitlement_bytes: self.pool.entitlements().get(&p.name).copied().unwrap_or(0)
                * PAGE_SIZE,
            resident_bytes: p.resident.load(Ordering::Relaxed) * PAGE_SIZE,
            pinned_bytes: p.pinned.load(Ordering::Relaxed) * PAGE_SIZE,
            segments,
            evictions: p.evictions.load(Ordering::Relaxed),
            page_ins: p.page_ins.load(Ordering::Relaxed),
            page_outs: p.page_outs.load(Ordering::Relaxed),
            paging_errors: p.paging_errors.load(Ordering::Relaxed),
        }
    }

    /// The partition a new local segment of `owner` counts against: for root, the one asked
    /// for ("default" if none); for another user, a partition of its own, `uid-N`, created
    /// with `--user-memory` as its maximum (so no one user fills the pool), and no other.
    pub(crate) fn partition_for(
        &self,
        owner: pagemesh_proto::Owner,
        asked: Option<String>,
    ) -> Result<String, Box<Response>> {
        if owner.uid == 0 {
            return Ok(asked.unwrap_or_else(|| "default".into()));
        }
        let mine = format!("uid-{}", owner.uid);
        if let Some(p) = asked.filter(|p| p != "default" && *p != mine) {
            return Err(Box::new(err(
                ErrorCode::PermissionDenied,
                format!(
                    "the segments of uid {} count against its own partition {mine} (at most {}, \
                     --user-memory); putting one in partition {p} is root's to do",
                    owner.uid,
                    ByteSize(self.config.user_memory_bytes)
                ),
            )));
        }
        if self.find_partition(&mine).is_err() {
            let limits = PartitionLimits {
                min_bytes: 0,
                max_bytes: self.config.user_memory_bytes.max(PAGE_SIZE),
                weight: 1,
            };
            // Another create of the same user's may have made it meanwhile: that is fine.
            if let Err(e) = self.create_partition(&mine, limits) {
                if self.find_partition(&mine).is_err() {
                    return Err(Box::new(e));
                }
            }
        }
        Ok(mine)
    }

    fn find_partition(&self, name: &str) -> Result<Arc<Partition>, Response> {
        self.pool
            .partitions()
            .into_iter()
            .find(|p| p.name == name)
            .ok_or_else(|| {
                err(
                    ErrorCode::NotFound,
                    format!("no partition named {name:?} (see `pagemesh partition list`)"),
                )
            })
    }

    fn check_limits(&self, name: &str, l: &PartitionLimits) -> Result<(), Response> {
        if l.weight == 0 {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("partition {name}: --weight must be at least 1 (the spare pool is shared in proportion to the weights)"),
            ));
        }
        if l.min_bytes > l.max_bytes {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("partition {name}: --min is larger than --max"),
            ));
        }
        let budget = self.pool.budget_bytes();
        let other_mins: u64 = self
            .pool
            .partitions()
            .iter()
            .filter(|p| p.name != name)
            .map(|p| p.limits().min_pages * PAGE_SIZE)
            .sum();
        if other_mins + l.min_bytes > budget {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!(
                    "partition {name}: the mins would add up to {}, more than the pool's budget of {}; lower --min or raise the daemon's --memory",
                    ByteSize(other_mins + l.min_bytes),
                    ByteSize(budget)
                ),
            ));
        }
        Ok(())
    }

    pub(crate) fn handle_memory(&self, req: Request) -> Response {
        let r = || -> Result<Response, Response> {
            Ok(match req {
                Request::CreatePartition { name, limits } => {
                    self.create_partition(&name, limits)?
                }
                Request::ListPartitions => {
                    let mut v: Vec<PartitionStat> = self
                        .pool
                        .partitions()
                        .iter()
                        .map(|p| self.partition_stat(p))
                        .collect();
                    v.sort_by(|a, b| a.name.cmp(&b.name));
                    Response::Partitions(v)
                }
                Request::StatPartition { name } => {
                    Response::Partition(self.partition_stat(&*self.find_partition(&name)?))
                }
                Request::SetPartition {
                    name,
                    min_bytes,
                    max_bytes,
                    weight,
                } => self.set_partition(&name, min_bytes, max_bytes, weight)?,
                Request::RemovePartition { name } => self.remove_partition(&name)?,
                Request::Pin { name, offset, len } => {
                    let seg = self.segment(&name)?;
                    let (first, n) = page_range(&name, offset, len, seg.info.size_bytes)?;
                    Response::Pinned {
                        pages: seg.pin(first, n).map_err(io_err)?,
                    }
                }
                Request::Unpin { name, offset, len } => {
                    let seg = self.segment(&name)?;
                    let (first, n) = page_range(&name, offset, len, seg.info.size_bytes)?;
                    Response::Unpinned {
                        pages: seg.unpin(first, n),
                    }
                }
                Request::PageInfo { name, page } => self.page_info(&name, page)?,
                other => unreachable!("not a memory request: {other:?}"),
            })
        };
        r().unwrap_or_else(|e| e)
    }

    fn create_partition(
        &self,
        name: &str,
        mut limits: PartitionLimits,
    ) -> Result<Response, Response> {
        if !valid_name(name) {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("invalid partition name {name:?}: use 1-64 of A-Z a-z 0-9 . _ -"),
            ));
        }
        if self.find_partition(name).is_ok() {
            return Err(err(
                ErrorCode::AlreadyExists,
                format!("partition {name:?} already exists"),
            ));
        }
        limits.max_bytes = limits.max_bytes.min(self.pool.budget_bytes());
        self.check_limits(name, &limits)?;
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        catalog
            .put_partition(name, limits)
            .map_err(|e| err(ErrorCode::Io, e.to_string()))?;
        let p = Partition::new(name, limits_of(limits));
        self.pool.add_partition(Arc::clone(&p));
        log::info!(
            "created partition {name}: min {} max {} weight {}",
            ByteSize(limits.min_bytes),
            ByteSize(limits.max_bytes),
            limits.weight
        );
        Ok(Response::Partition(self.partition_stat(&p)))
    }

    fn set_partition(
        &self,
        name: &str,
        min_bytes: Option<u64>,
        max_bytes: Option<u64>,
        weight: Option<u32>,
    ) -> Result<Response, Response> {
        let p = self.find_partition(name)?;
        let old = p.limits();
        let limits = PartitionLimits {
            min_bytes: min_bytes.unwrap_or(old.min_pages * PAGE_SIZE),
            max_bytes: max_bytes
                .unwrap_or(old.max_pages * PAGE_SIZE)
                .min(self.pool.budget_bytes()),
            weight: weight.unwrap_or(old.weight),
        };
        self.check_limits(name, &limits)?;
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        catalog
            .put_partition(name, limits)
            .map_err(|e| err(ErrorCode::Io, e.to_string()))?;
        p.set_limits(limits_of(limits));
        Ok(Response::Partition(self.partition_stat(&p)))
    }

    fn remove_partition(&self, name: &str) -> Result<Response, Response> {
        if name == "default" || name == VOLUMES {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!("the built-in partition {name} cannot be removed"),
            ));
        }
        let p = self.find_partition(name)?;
        // Counted under the catalog lock, which segment creation also holds: a segment cannot
        // land in the partition between the check and the removal.
        let mut catalog = self.catalog.lock().unwrap_or_else(|e| e.into_inner());
        let st = self.partition_stat(&p);
        if st.segments > 0 {
            return Err(err(
                ErrorCode::InvalidArgument,
                format!(
                    "partition {name} still holds {} segment(s); remove them first",
                    st.segments
                ),
            ));
        }
        catalog
            .remove_partition(name)
            .map_err(|e| err(ErrorCode::Io, e.to_string()))?;
        self.pool.remove_partition(name);
        Ok(Response::Removed)
    }

    fn page_info(&self, name: &str, page: u64) -> Result<Response, Response> {
        let seg = self.segment(name)?;
        let (state, flags, slot) = seg.page_info(page).ok_or_else(|| {
            err(
                ErrorCode::InvalidArgument,
                format!("segment {name} has no page {page}"),
            )
        })?;
        Ok(Response::Page(PageInfo {
            page,
            state: state_name(state).into(),
            pinned: flags & PINNED != 0,
            referenced: flags & REFERENCED != 0,
            slot: slot.map(|s| s.0),
        }))
    }
}

fn state_name(s: PageState) -> &'static str {
    match s {
        PageState::Absent => "absent",
        PageState::Clean => "clean",
        PageState::Dirty => "dirty",
        PageState::Poisoned => "poisoned",
        PageState::Paged => "paged",
    }
}

fn page_range(name: &str, offset: u64, len: u64, size: u64) -> Result<(u64, u64), Response> {
    match offset.checked_add(len) {
        Some(end) if end <= size && len > 0 => {
            let first = offset / PAGE_SIZE;
            Ok((first, end.div_ceil(PAGE_SIZE) - first))
        }
        _ => Err(err(
            ErrorCode::InvalidArgument,
            format!("range {offset}+{len} is not inside segment {name} ({size} bytes)"),
        )),
    }
}
