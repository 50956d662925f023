//! A 2D Jacobi heat stencil over a shared grid: the distributed-shared-memory demo job.
//!
//! Worker processes each own a contiguous block of rows and meet at a barrier once per
//! iteration. The grid lives in shared memory given as `&[AtomicU64]`, each `f64` stored as its
//! bit pattern. Two `n x n` row-major grids: A at word offset 0, B at word offset `n * n`.
//! Iteration `i` reads A and writes B when `i` is even, the reverse when odd. Relaxed atomics
//! suffice because a barrier separates every write of a cell from every read of it.
//!
//! Boundary condition (fixed, present in both grids): the top row is 100.0; the left and right
//! columns fall linearly from 100.0 at the top to 0.0 at the bottom; the bottom row is 0.0. The
//! interior starts at 0.0. The problem is symmetric left-to-right (up to rounding).

use std::fmt;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Size and length of a Jacobi run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// Grid side: each grid is `n x n` cells.
    pub n: usize,
    /// Number of Jacobi iterations.
    pub iters: usize,
}

/// Words (`u64`) of shared memory needed for the two grids: `2 * n * n`.
pub fn words(n: usize) -> usize {
    2 * n * n
}

/// The initial value of cell `(r, c)`: the fixed boundary, or 0.0 inside.
fn initial(n: usize, r: usize, c: usize) -> f64 {
    if r == 0 {
        100.0
    } else if c == 0 || c == n - 1 {
        // r >= 1 here, so n >= 2 and the ramp is well defined; it reaches 0.0 at r = n - 1.
        100.0 * (n - 1 - r) as f64 / (n - 1) as f64
    } else {
        0.0
    }
}

/// The stencil, with its additions in a fixed order so that every run is bit-identical.
fn cell(up: f64, down: f64, left: f64, right: f64) -> f64 {
    0.25 * (up + down + left + right)
}

/// Panics unless `grid` holds both grids and `rows` lies within `0..n`.
fn check(p: &Params, grid: &[AtomicU64], rows: &Range<usize>) {
    let (n, len) = (p.n, grid.len());
    assert!(len >= words(n), "grid of {len} words too small for n = {n}");
    assert!(rows.end <= n, "rows {rows:?} outside 0..{n}");
}

/// Writes the initial values of rows `rows` into both grids A and B.
pub fn init(p: &Params, grid: &[AtomicU64], rows: Range<usize>) {
    check(p, grid, &rows);
    let n = p.n;
    for r in rows {
        for c in 0..n {
            let bits = initial(n, r, c).to_bits();
            grid[r * n + c].store(bits, Relaxed);
            grid[n * n + r * n + c].store(bits, Relaxed);
        }
    }
}

/// Splits rows `0..n` into `workers` contiguous blocks whose sizes differ by at most one.
/// Always returns exactly `workers` ranges (trailing ones may be empty when `n < workers`).
pub fn row_blocks(n: usize, workers: usize) -> Vec<Range<usize>> {
    row_blocks_aligned(n, workers, 1)
}

/// Like [`row_blocks`], but every block starts at a multiple of `align_rows` rows (so blocks
/// start on page boundaries when `align_rows` rows make a page), splitting the
/// `ceil(n / align_rows)` units of `align_rows` rows as evenly as possible; the last block ends
/// at `n`. `align_rows` 0 counts as 1. If there are fewer units than workers, falls back to the
/// unaligned split so that no worker is left idle.
pub fn row_blocks_aligned(n: usize, workers: usize, align_rows: usize) -> Vec<Range<usize>> {
    assert!(workers > 0, "row_blocks needs at least one worker");
    let mut align = align_rows.max(1);
    let mut units = n.div_ceil(align);
    if units < workers {
        align = 1;
        units = n;
    }
    let bound = |i: usize| (i * units / workers * align).min(n);
    (0..workers).map(|i| bound(i)..bound(i + 1)).collect()
}

/// One Jacobi iteration (`iter` counts from 0) for the rows `rows`: reads the source grid (A
/// when `iter` is even, else B) and writes the interior cells of those rows into the other
/// grid. Border cells are skipped: [`init`] wrote them into both grids.
pub fn step(p: &Params, grid: &[AtomicU64], iter: usize, rows: Range<usize>) {
    check(p, grid, &rows);
    let n = p.n;
    let (src, dst) = grids(n, iter);
    let get = |r: usize, c: usize| f64::from_bits(grid[src + r * n + c].load(Relaxed));
    for r in rows.start.max(1)..rows.end.min(n.saturating_sub(1)) {
        for c in 1..n - 1 {
            let v = cell(get(r - 1, c), get(r + 1, c), get(r, c - 1), get(r, c + 1));
            grid[dst + r * n + c].store(v.to_bits(), Relaxed);
        }
    }
}

/// A worker's whole run: initialise its own rows, wait at the barrier, then for each iteration
/// compute its rows and wait at the barrier. Returns the first error of `barrier`.
pub fn run_worker<E>(
    p: &Params,
    grid: &[AtomicU64],
    rows: Range<usize>,
    mut barrier: impl FnMut() -> Result<(), E>,
) -> Result<(), E> {
    init(p, grid, rows.clone());
    barrier()?;
    for iter in 0..p.iters {
        step(p, grid, iter, rows.clone());
        barrier()?;
    }
    Ok(())
}

/// Word offsets of the (source, destination) grids of iteration `iter`.
fn grids(n: usize, iter: usize) -> (usize, usize) {
    if iter.is_multiple_of(2) {
        (0, n * n)
    } else {
        (n * n, 0)
    }
}

/// Word offset of the grid that holds the result after `p.iters` iterations (A = 0, B = `n*n`).
pub fn result_grid(p: &Params) -> usize {
    grids(p.n, p.iters).0
}

/// The `n * n` result values in the shared grid, row-major (e.g. to feed [`checksum`]).
pub fn result_values<'a>(p: &Params, grid: &'a [AtomicU64]) -> impl Iterator<Item = f64> + 'a {
    check(p, grid, &(0..p.n));
    let start = result_grid(p);
    grid[start..start + p.n * p.n]
        .iter()
        .map(|w| f64::from_bits(w.load(Relaxed)))
}

/// The same computation in one process on a plain `Vec<f64>`: the final `n * n` grid.
pub fn reference(p: &Params) -> Vec<f64> {
    let n = p.n;
    let mut src: Vec<f64> = (0..n * n).map(|i| initial(n, i / n, i % n)).collect();
    let mut dst = src.clone();
    for _ in 0..p.iters {
        for r in 1..n.saturating_sub(1) {
            for c in 1..n - 1 {
                let at = |r: usize, c: usize| src[r * n + c];
                dst[r * n + c] = cell(at(r - 1, c), at(r + 1, c), at(r, c - 1), at(r, c + 1));
            }
        }
        std::mem::swap(&mut src, &mut dst);
    }
    src
}

/// FNV-1a (64-bit) over the little-endian bytes of each value's bit pattern.
pub fn checksum(values: impl Iterator<Item = f64>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for v in values {
        for b in v.to_bits().to_le_bytes() {
            h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The first cell where the shared result differs from [`reference()`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Mismatch {
    /// Row of the first differing cell.
    pub row: usize,
    /// Column of the first differing cell.
    pub col: usize,
    /// The value [`reference()`] computed.
    pub expected: f64,
    /// The value found in the shared grid.
    pub actual: f64,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (row, col, e, a) = (self.row, self.col, self.expected, self.actual);
        let (eb, ab) = (e.to_bits(), a.to_bits());
        write!(
            f,
            "jacobi cell ({row}, {col}): expected {e} ({eb:#x}), found {a} ({ab:#x})"
        )
    }
}

impl std::error::Error for Mismatch {}

/// Compares the final shared grid with [`reference()`] bit for bit.
pub fn verify(p: &Params, grid: &[AtomicU64]) -> Result<(), Mismatch> {
    let expected = reference(p);
    for (i, (e, a)) in expected.iter().zip(result_values(p, grid)).enumerate() {
        if e.to_bits() != a.to_bits() {
            let (row, col) = (i / p.n, i % p.n);
            return Err(Mismatch {
                row,
                col,
                expected: *e,
                actual: a,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use std::sync::Barrier;

    #[test]
    fn reference_is_sane_and_symmetric() {
        let n = 24;
        let g = reference(&Params { n, iters: 60 });
        assert!(g.iter().all(|v| (0.0..=100.0).contains(v)));
        assert!((0..n).all(|c| g[c] == 100.0 && g[(n - 1) * n + c] == 0.0));
        assert_eq!(
            g[(n / 2) * n],
            100.0 * (n - 1 - n / 2) as f64 / (n - 1) as f64
        );
        assert!(g[n + n / 2] > 10.0, "heat flows in from the top");
        assert!(g[n + n / 2] > g[(n - 2) * n + n / 2], "hotter near the top");
        let mirror = |i: usize| i - i % n + (n - 1 - i % n);
        assert!(
            (0..n * n).all(|i| (g[i] - g[mirror(i)]).abs() < 1e-9),
            "left-right symmetric"
        );
        let start = reference(&Params { n, iters: 0 });
        assert!(start[n + 1..2 * n - 1].iter().all(|&v| v == 0.0));
    }

    fn run_threads(p: Params, blocks: Vec<Range<usize>>) -> Vec<AtomicU64> {
        let grid: Vec<AtomicU64> = (0..words(p.n)).map(|_| AtomicU64::new(u64::MAX)).collect();
        let barrier = Barrier::new(blocks.len());
        std::thread::scope(|s| {
            for rows in blocks {
                let (grid, barrier) = (&grid, &barrier);
                s.spawn(move || {
                    let wait = || {
                        barrier.wait();
                        Ok::<(), Infallible>(())
                    };
                    run_worker(&p, grid, rows, wait).unwrap();
                });
            }
        });
        grid
    }

    #[test]
    fn threads_match_reference_bit_for_bit() {
        for (n, iters, workers, align) in [
            (16, 10, 4, 1),
            (17, 7, 4, 1),
            (33, 20, 3, 1),
            (5, 3, 4, 1),
            (3, 2, 4, 1),
            (64, 25, 4, 8),
            (10, 9, 4, 4),
        ] {
            let p = Params { n, iters };
            let grid = run_threads(p, row_blocks_aligned(n, workers, align));
            assert_eq!(
                verify(&p, &grid),
                Ok(()),
                "n {n} iters {iters} workers {workers}"
            );
            let sum = checksum(reference(&p).into_iter());
            assert_eq!(checksum(result_values(&p, &grid)), sum);
        }
    }

    #[test]
    fn verify_reports_first_mismatch_and_barrier_errors_propagate() {
        let p = Params { n: 8, iters: 3 };
        let grid = run_threads(p, row_blocks(8, 2));
        grid[result_grid(&p) + 2 * 8 + 5].store(7.5f64.to_bits(), Relaxed);
        let m = verify(&p, &grid).unwrap_err();
        assert_eq!((m.row, m.col, m.actual), (2, 5, 7.5));
        assert!(m.to_string().contains("(2, 5)"));
        let mut calls = 0;
        let r = run_worker(&p, &grid, 0..8, || {
            calls += 1;
            if calls == 2 {
                Err("down")
            } else {
                Ok(())
            }
        });
        assert_eq!((r, calls), (Err("down"), 2));
    }

    #[test]
    fn row_blocks_cover_without_overlap() {
        for n in 0..70 {
            for workers in 1..7 {
                for align in 0..10 {
                    let b = row_blocks_aligned(n, workers, align);
                    assert_eq!(b.len(), workers);
                    assert_eq!((b[0].start, b[workers - 1].end), (0, n));
                    assert!(b.windows(2).all(|w| w[0].end == w[1].start));
                    assert!(b.iter().all(|r| r.start <= r.end));
                    let a = align.max(1);
                    if n.div_ceil(a) >= workers {
                        assert!(
                            b.iter().all(|r| r.start.is_multiple_of(a)),
                            "{n} {workers} {align}"
                        );
                        assert!(b.iter().all(|r| !r.is_empty()));
                    }
                    let sizes: Vec<usize> =
                        row_blocks(n, workers).iter().map(|r| r.len()).collect();
                    assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
                }
            }
        }
    }
}
