//! A lock-free latency histogram with quarter-octave buckets (about 19% resolution).

use std::sync::atomic::{AtomicU64, Ordering};

const BUCKETS: usize = 64 * 4;

pub struct Histogram {
    counts: [AtomicU64; BUCKETS],
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
        }
    }
}

fn bucket(v: u64) -> usize {
    if v < 4 {
        return v as usize;
    }
    let lz = 63 - v.leading_zeros() as usize;
    let frac = ((v >> (lz - 2)) & 3) as usize;
    lz * 4 + frac
}

fn upper_bound(b: usize) -> u64 {
    if b < 4 {
        return b as u64;
    }
    let lz = b / 4;
    let frac = (b % 4) as u64;
    ((4 + frac + 1) << (lz - 2)) - 1
}

impl Histogram {
    pub fn record(&self, v: u64) {
        self.counts[bucket(v)].fetch_add(1, Ordering::Relaxed);
    }

    /// The upper bound of the bucket holding quantile `q` (0 when empty).
    pub fn quantile(&self, q: f64) -> u64 {
        let counts: Vec<u64> = self
            .counts
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return 0;
        }
        let rank = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (b, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return upper_bound(b);
            }
        }
        upper_bound(BUCKETS - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_bounding() {
        for v in [0u64, 1, 3, 4, 5, 7, 8, 100, 1000, 12_345, 1 << 40] {
            assert!(upper_bound(bucket(v)) >= v, "{v}");
            assert!(bucket(v) <= bucket(v + 1));
        }
        let h = Histogram::default();
        for v in 1..=100 {
            h.record(v * 1000);
        }
        let p50 = h.quantile(0.5);
        assert!((50_000..=62_000).contains(&p50), "{p50}");
        assert!(h.quantile(0.99) >= 99_000);
    }
}
