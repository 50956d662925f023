//! How fault latencies are printed. The daemon's figures are percentiles of a histogram with
//! quarter-octave buckets: each is the upper bound of the bucket the percentile falls in, not
//! a measured time, so it is printed as a bound ("p50 <= 393.3µs"), rounded up.

/// `ns` as a bound with a readable unit, rounded up: "<= 850ns", "<= 393.3µs", "<= 1.6ms".
pub fn bound(ns: u64) -> String {
    format!("<= {}", rounded_up(ns))
}

fn rounded_up(ns: u64) -> String {
    let up = |v: u64, unit: u64| (v as f64 / (unit / 10) as f64).ceil() / 10.0;
    if ns < 1_000 {
        format!("{ns}ns")
    } else if ns < 1_000_000 {
        format!("{:.1}µs", up(ns, 1_000))
    } else if ns < 1_000_000_000 {
        format!("{:.1}ms", up(ns, 1_000_000))
    } else {
        format!("{:.1}s", up(ns, 1_000_000_000))
    }
}

/// The p50 and p99 of `faults` faults for a line of text: "no faults" when there were none
/// (the histogram then holds nothing and its percentiles mean nothing).
pub fn percentiles(faults: u64, p50_ns: u64, p99_ns: u64) -> String {
    if faults == 0 {
        "no faults".to_string()
    } else {
        format!("p50 {}  p99 {}", bound(p50_ns), bound(p99_ns))
    }
}

/// A table cell in microseconds, rounded up ("-" with no faults); the column's header says
/// it is a bound.
pub fn cell_us(faults: u64, ns: u64) -> String {
    if faults == 0 {
        "-".to_string()
    } else {
        format!("{:.1}", (ns as f64 / 100.0).ceil() / 10.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_round_up() {
        assert_eq!(bound(393_215), "<= 393.3µs");
        assert_eq!(bound(850), "<= 850ns");
        assert_eq!(bound(1_500_001), "<= 1.6ms");
        assert_eq!(percentiles(0, 0, 0), "no faults");
        assert_eq!(cell_us(3, 393_215), "393.3");
        assert_eq!(cell_us(0, 0), "-");
    }
}
