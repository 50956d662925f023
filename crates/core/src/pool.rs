//! Pool policy, sans I/O: how much each partition is entitled to, and which partition gives up
//! a page when the node is over its budget (IBM Active Memory Sharing's entitlements, in pages).
//!
//! Pure functions over plain numbers, tested against their definition below; the daemon's
//! evictor (`crates/daemon/src/memory.rs`) feeds them the live counts.

/// A partition's limits, in pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Never robbed below this.
    pub min_pages: u64,
    /// Evicted first above this.
    pub max_pages: u64,
    /// Share of what the mins leave of the budget.
    pub weight: u32,
}

/// A partition's use, in pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Usage {
    /// Pages in memory.
    pub resident: u64,
    /// Of those, pinned (never evictable).
    pub pinned: u64,
}

/// What each partition may keep when memory is short: its min, plus a share of what the mins
/// leave of the budget in proportion to its weight, capped at its max.
pub fn entitlements(budget_pages: u64, limits: &[Limits]) -> Vec<u64> {
    let mins: u64 = limits.iter().map(|l| l.min_pages).sum();
    let spare = budget_pages.saturating_sub(mins);
    let weights: u64 = limits
        .iter()
        .map(|l| u64::from(l.weight.max(1)))
        .sum::<u64>()
        .max(1);
    limits
        .iter()
        .map(|l| {
            let share =
                (u128::from(spare) * u128::from(l.weight.max(1)) / u128::from(weights)) as u64;
            (l.min_pages + share).min(l.max_pages.max(l.min_pages))
        })
        .collect()
}

/// The partition to take a page from, or None if no page can be taken. In order:
/// 1. a partition above its max (the most above it);
/// 2. a partition above its entitlement (the most above it);
/// 3. a partition above its min (the most above it).
///
/// A partition at or below its min is never robbed, and pinned pages never count as
/// evictable.
pub fn victim(budget_pages: u64, parts: &[(Limits, Usage)]) -> Option<usize> {
    let limits: Vec<Limits> = parts.iter().map(|p| p.0).collect();
    let ent = entitlements(budget_pages, &limits);
    let evictable = |u: &Usage| u.resident > u.pinned;
    let pick = |excess: &dyn Fn(usize) -> u64| {
        (0..parts.len())
            .filter(|&i| evictable(&parts[i].1) && parts[i].1.resident > parts[i].0.min_pages)
            .map(|i| (excess(i), i))
            .filter(|&(e, _)| e > 0)
            .max()
            .map(|(_, i)| i)
    };
    pick(&|i| parts[i].1.resident.saturating_sub(parts[i].0.max_pages))
        .or_else(|| pick(&|i| parts[i].1.resident.saturating_sub(ent[i])))
        .or_else(|| pick(&|i| parts[i].1.resident.saturating_sub(parts[i].0.min_pages)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(min: u64, max: u64, weight: u32) -> Limits {
        Limits {
            min_pages: min,
            max_pages: max,
            weight,
        }
    }

    fn u(resident: u64) -> Usage {
        Usage {
            resident,
            pinned: 0,
        }
    }

    #[test]
    fn entitlements_split_the_spare_by_weight_and_respect_max() {
        assert_eq!(
            entitlements(100, &[l(10, 100, 1), l(10, 100, 3)]),
            vec![30, 70]
        );
        assert_eq!(
            entitlements(100, &[l(0, 20, 1), l(0, 100, 1)]),
            vec![20, 50]
        );
        assert_eq!(
            entitlements(10, &[l(30, 100, 1)]),
            vec![30],
            "min is kept even over budget"
        );
    }

    #[test]
    fn victims_follow_max_then_entitlement_then_min() {
        // Over max first, even if another is further over its entitlement.
        assert_eq!(
            victim(100, &[(l(0, 10, 1), u(12)), (l(0, 100, 1), u(88))]),
            Some(0)
        );
        // Then the one most over its entitlement.
        assert_eq!(
            victim(100, &[(l(0, 100, 1), u(40)), (l(0, 100, 1), u(70))]),
            Some(1)
        );
        // Never below min.
        assert_eq!(
            victim(100, &[(l(60, 100, 1), u(60)), (l(0, 100, 1), u(50))]),
            Some(1)
        );
        assert_eq!(victim(100, &[(l(60, 100, 1), u(60))]), None);
        // Pinned pages are not evictable.
        assert_eq!(
            victim(
                10,
                &[(
                    l(0, 100, 1),
                    Usage {
                        resident: 20,
                        pinned: 20
                    }
                )]
            ),
            None
        );
    }

    /// Against the definition, over many generated cases: the victim is never at or below its
    /// min, never fully pinned, and is chosen from the highest non-empty class.
    #[test]
    fn victim_matches_its_definition() {
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for _ in 0..20_000 {
            let n = 1 + next(4) as usize;
            let budget = next(1000);
            let parts: Vec<(Limits, Usage)> = (0..n)
                .map(|_| {
                    let min = next(300);
                    let max = min + next(600);
                    let resident = next(900);
                    (
                        l(min, max, 1 + next(4) as u32),
                        Usage {
                            resident,
                            pinned: next(resident + 1),
                        },
                    )
                })
                .collect();
            let ok = |i: usize| {
                parts[i].1.resident > parts[i].1.pinned
                    && parts[i].1.resident > parts[i].0.min_pages
            };
            match victim(budget, &parts) {
                None => assert!((0..n).all(|i| !ok(i)), "{parts:?}"),
                Some(v) => {
                    assert!(ok(v), "{parts:?} -> {v}");
                    let over_max = |i: usize| parts[i].1.resident > parts[i].0.max_pages;
                    if (0..n).any(|i| ok(i) && over_max(i)) {
                        assert!(over_max(v), "{parts:?} -> {v}");
                    }
                }
            }
        }
    }
}
