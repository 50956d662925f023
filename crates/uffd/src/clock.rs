//! The machine-wide monotonic clock (`CLOCK_MONOTONIC`), shared by the daemon and its clients:
//! a deadline one process publishes is read against the same clock by another.

/// Nanoseconds of `CLOCK_MONOTONIC` (the same in every process of the machine).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(r, 0, "clock_gettime(CLOCK_MONOTONIC) cannot fail on Linux");
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_monotonic_clock_moves_forward_with_std_s_instant() {
        let (a, t) = (super::monotonic_ns(), std::time::Instant::now());
        std::thread::sleep(std::time::Duration::from_millis(5));
        let (b, e) = (super::monotonic_ns(), t.elapsed().as_nanos() as u64);
        assert!(b > a && (b - a).abs_diff(e) < 2_000_000, "{a} {b} {e}");
    }
}
