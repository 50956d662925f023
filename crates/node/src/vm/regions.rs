//! A VM's guest memory as its VMM laid it out: regions of the VMM's address space, each backed
//! by a range of the snapshot image, and the ranges the guest gave back (a balloon's
//! `MADV_DONTNEED`, reported as `UFFD_EVENT_REMOVE`), which read as zeros from then on. Pure:
//! the serving thread applies the uffd's layout events to it and asks it where a fault lands.

use std::collections::BTreeMap;

use pagemesh_proto::VmRegion;
use pagemesh_uffd::Layout;

use super::VmError;
use crate::volume::PS;

/// Most regions a VM may have (Firecracker has a few).
pub const MAX_REGIONS: usize = 64;

/// One region: `len` bytes at `base` in the VMM, from byte `offset` of the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Region {
    base: u64,
    len: u64,
    offset: u64,
}

/// Where a fault lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Landing {
    /// On image block `block`; a run from it may reach block `limit` (exclusive: the region's
    /// end or the next removed block).
    Image { block: u64, limit: u64 },
    /// On a page the guest gave back: it reads as zeros.
    Removed,
    /// Outside every region.
    Outside,
}

/// Where an image page is in the VMM, for the replay.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placement {
    /// At `addr`; a run from it may reach image page `limit` (exclusive: the region's end or
    /// the next removed page).
    At { addr: u64, limit: u64 },
    /// The guest gave it back: never pushed (it reads as zeros).
    Removed,
    /// In no region (cut by an unmap, or never mapped).
    Nowhere,
}

/// The regions and the removed blocks of one VM.
#[derive(Debug)]
pub struct Regions {
    list: Vec<Region>,
    /// Removed image blocks, as disjoint, non-adjacent intervals `start -> end` (exclusive).
    removed: BTreeMap<u64, u64>,
}

impl Regions {
    /// Check a VMM's regions against an image of `image_bytes` bytes.
    pub fn new(regions: &[VmRegion], image_bytes: u64) -> Result<Regions, VmError> {
        if regions.is_empty() || regions.len() > MAX_REGIONS {
            return Err(VmError::Regions(format!(
                "{} regions (1 to {MAX_REGIONS} expected)",
                regions.len()
            )));
        }
        let mut list: Vec<Region> = Vec::with_capacity(regions.len());
        for r in regions {
            let end = r.offset.checked_add(r.size_bytes);
            let aligned = [r.base, r.size_bytes, r.offset].iter().all(|v| v % PS == 0);
            if !aligned
                || r.size_bytes == 0
                || end.is_none_or(|e| e > image_bytes.div_ceil(PS) * PS)
            {
                return Err(VmError::Regions(format!(
                    "region {:#x}+{:#x} at image offset {:#x}: not page-aligned, empty, or past \
                     the image's {image_bytes} bytes",
                    r.base, r.size_bytes, r.offset
                )));
            }
            let new = Region {
                base: r.base,
                len: r.size_bytes,
                offset: r.offset,
            };
            if r.base.checked_add(r.size_bytes).is_none()
                || list
                    .iter()
                    .any(|o| o.base < new.base + new.len && new.base < o.base + o.len)
            {
                return Err(VmError::Regions(format!(
                    "region {:#x}+{:#x} overlaps another or wraps",
                    r.base, r.size_bytes
                )));
            }
            list.push(new);
        }
        Ok(Regions {
            list,
            removed: BTreeMap::new(),
        })
    }

    /// Where a fault at `addr` lands.
    pub fn land(&self, addr: u64) -> Landing {
        let Some(r) = self
            .list
            .iter()
            .find(|r| addr >= r.base && addr - r.base < r.len)
        else {
            return Landing::Outside;
        };
        let block = (r.offset + (addr - r.base)) / PS;
        if self.is_removed(block) {
            return Landing::Removed;
        }
        let region_end = (r.offset + r.len) / PS;
        let next_removed = self
            .removed
            .range(block..)
            .next()
            .map_or(u64::MAX, |(&s, _)| s);
        Landing::Image {
            block,
            limit: region_end.min(next_removed),
        }
    }

    /// Where image page `block` is in the VMM's address space, for a push no fault asked for
    /// (the replay).
    pub fn place(&self, block: u64) -> Placement {
        let at = block.saturating_mul(PS);
        let Some(r) = self
            .list
            .iter()
            .find(|r| at >= r.offset && at - r.offset < r.len)
        else {
            return Placement::Nowhere;
        };
        if self.is_removed(block) {
            return Placement::Removed;
        }
        let next_removed = self
            .removed
            .range(block..)
            .next()
            .map_or(u64::MAX, |(&s, _)| s);
        Placement::At {
            addr: r.base + (at - r.offset),
            limit: ((r.offset + r.len) / PS).min(next_removed),
        }
    }

    fn is_removed(&self, block: u64) -> bool {
        self.removed
            .range(..=block)
            .next_back()
            .is_some_and(|(_, &e)| block < e)
    }

    /// Apply a layout event of the VMM's address space.
    pub fn apply(&mut self, event: Layout) {
        match event {
            Layout::Remove { start, end } => {
                for (lo, hi) in self.image_ranges(start, end) {
                    self.mark_removed(lo / PS, hi.div_ceil(PS));
                }
            }
            Layout::Unmap { start, end } => {
                self.cut(start, end);
            }
            Layout::Remap { from, to, len } => {
                let moved = self.cut(from, from.saturating_add(len));
                for mut r in moved {
                    r.base = r.base - from + to;
                    self.list.push(r);
                }
            }
        }
    }

    /// The image byte ranges behind `[start, end)` of the VMM's address space.
    fn image_ranges(&self, start: u64, end: u64) -> Vec<(u64, u64)> {
        self.list
            .iter()
            .filter_map(|r| {
                let lo = start.max(r.base);
                let hi = end.min(r.base + r.len);
                (lo < hi).then(|| (r.offset + lo - r.base, r.offset + hi - r.base))
            })
            .collect()
    }

    fn mark_removed(&mut self, mut lo: u64, mut hi: u64) {
        // Merge with every interval that overlaps or touches [lo, hi).
        let touching: Vec<(u64, u64)> = self
            .removed
            .range(..=hi)
            .filter(|(_, &e)| e >= lo)
            .map(|(&s, &e)| (s, e))
            .collect();
        for (s, e) in touching {
            self.removed.remove(&s);
            lo = lo.min(s);
            hi = hi.max(e);
        }
        self.removed.insert(lo, hi);
    }

    /// Take `[start, end)` out of the regions (splitting a region it falls inside); the parts
    /// taken out, with their image offsets.
    fn cut(&mut self, start: u64, end: u64) -> Vec<Region> {
        let mut kept = Vec::with_capacity(self.list.len() + 1);
        let mut taken = Vec::new();
        for r in self.list.drain(..) {
            let (lo, hi) = (start.max(r.base), end.min(r.base + r.len));
            if lo >= hi {
                kept.push(r);
                continue;
            }
            let piece = |a: u64, b: u64| Region {
                base: a,
                len: b - a,
                offset: r.offset + (a - r.base),
            };
            if r.base < lo {
                kept.push(piece(r.base, lo));
            }
            if hi < r.base + r.len {
                kept.push(piece(hi, r.base + r.len));
            }
            taken.push(piece(lo, hi));
        }
        self.list = kept;
        taken
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1 << 20;

    fn two() -> Regions {
        // Not sorted by address, as Firecracker may send them.
        let r = [
            VmRegion {
                base: 0x7000_0000,
                size_bytes: 4 * M,
                offset: 4 * M,
            },
            VmRegion {
                base: 0x1000_0000,
                size_bytes: 4 * M,
                offset: 0,
            },
        ];
        Regions::new(&r, 8 * M).unwrap()
    }

    #[test]
    fn faults_land_on_their_image_block() {
        let g = two();
        let bpm = M / PS; // blocks per MiB
        assert_eq!(
            g.land(0x1000_0000 + 5 * PS + 7),
            Landing::Image {
                block: 5,
                limit: 4 * bpm
            }
        );
        assert_eq!(
            g.land(0x7000_0000),
            Landing::Image {
                block: 4 * bpm,
                limit: 8 * bpm
            }
        );
        assert_eq!(g.land(0x7000_0000 + 4 * M), Landing::Outside);
        assert_eq!(g.land(0), Landing::Outside);
    }

    #[test]
    fn removed_ranges_read_as_zero_and_bound_runs() {
        let mut g = two();
        g.apply(Layout::Remove {
            start: 0x1000_0000 + 8 * PS,
            end: 0x1000_0000 + 10 * PS,
        });
        assert_eq!(g.land(0x1000_0000 + 8 * PS), Landing::Removed);
        assert_eq!(g.land(0x1000_0000 + 9 * PS), Landing::Removed);
        assert_eq!(
            g.land(0x1000_0000 + 2 * PS),
            Landing::Image { block: 2, limit: 8 }
        );
        // Adjacent removals merge; a removal spanning two regions marks both.
        g.apply(Layout::Remove {
            start: 0x1000_0000 + 10 * PS,
            end: 0x1000_0000 + 12 * PS,
        });
        assert_eq!(g.removed.len(), 1);
        assert_eq!(g.removed.get(&8), Some(&12));
        assert!(g.land(0x1000_0000 + 12 * PS) != Landing::Removed);
    }

    #[test]
    fn unmap_and_remap_move_the_regions() {
        let mut g = two();
        g.apply(Layout::Unmap {
            start: 0x1000_0000 + M,
            end: 0x1000_0000 + 2 * M,
        });
        assert_eq!(g.land(0x1000_0000 + M), Landing::Outside);
        assert!(matches!(
            g.land(0x1000_0000 + 2 * M),
            Landing::Image { block, .. } if block == 2 * M / PS
        ));
        g.apply(Layout::Remap {
            from: 0x7000_0000,
            to: 0x9000_0000,
            len: 4 * M,
        });
        assert_eq!(g.land(0x7000_0000), Landing::Outside);
        assert_eq!(
            g.land(0x9000_0000 + PS),
            Landing::Image {
                block: 4 * M / PS + 1,
                limit: 8 * M / PS
            }
        );
    }

    #[test]
    fn image_pages_are_placed_back_where_the_vmm_maps_them() {
        let mut g = two();
        let bpm = M / PS;
        assert_eq!(
            g.place(4 * bpm + 3),
            Placement::At {
                addr: 0x7000_0000 + 3 * PS,
                limit: 8 * bpm
            }
        );
        assert_eq!(g.place(8 * bpm), Placement::Nowhere);
        g.apply(Layout::Remove {
            start: 0x1000_0000 + 8 * PS,
            end: 0x1000_0000 + 10 * PS,
        });
        assert_eq!(g.place(9), Placement::Removed);
        assert_eq!(
            g.place(2),
            Placement::At {
                addr: 0x1000_0000 + 2 * PS,
                limit: 8
            }
        );
        g.apply(Layout::Unmap {
            start: 0x1000_0000,
            end: 0x1000_0000 + M,
        });
        assert_eq!(g.place(2), Placement::Nowhere);
    }

    #[test]
    fn bad_regions_are_refused() {
        let r = |base, size_bytes, offset| VmRegion {
            base,
            size_bytes,
            offset,
        };
        assert!(Regions::new(&[], M).is_err());
        assert!(Regions::new(&[r(0x1000, M, 0)], M).is_ok());
        assert!(Regions::new(&[r(0x1001, M, 0)], M).is_err());
        assert!(Regions::new(&[r(0x1000, 2 * M, 0)], M).is_err());
        assert!(Regions::new(&[r(0x1000, M, 0), r(0x2000, M, 0)], 2 * M).is_err());
        assert!(Regions::new(&[r(u64::MAX - PS + 1, M, 0)], M).is_err());
    }
}
