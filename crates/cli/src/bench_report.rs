//! What every bench shares: its repetition arguments, the statistics over the repetitions, and
//! the lines it prints (a table, or one JSON object per figure; see `bench.rs`).

use clap::Args;

/// Repetitions, faults per repetition and output form, as most benches take them.
#[derive(Args)]
pub struct RunsArgs {
    /// Repetitions.
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Faults timed per repetition (local-fault, scaling).
    #[arg(long, default_value_t = 2000)]
    pub faults: u64,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// Median, min and max of a sample.
pub struct Stats {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    pub runs: usize,
}

pub fn stats(v: &[f64]) -> Stats {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    Stats {
        min: s[0],
        median,
        max: s[n - 1],
        runs: n,
    }
}

/// The `q` quantile of a sample (nearest rank); sorts it.
pub fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

pub fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len() as f64
}

/// Unless `json`: what the bench measures, then the table's column heads.
pub fn header(json: bool, what: &str) {
    if !json {
        outln!("{what}");
        outln!(
            "{:<8} {:<34} {:>5} {:>10} {:>10} {:>7}",
            "bench",
            "metric",
            "unit",
            "pagemesh",
            "baseline",
            "ratio"
        );
    }
}

/// Print one result line (JSON or a table row).
#[allow(clippy::too_many_arguments)]
pub fn report(
    json: bool,
    bench: &str,
    metric: &str,
    unit: &str,
    pm: &[f64],
    base: &[f64],
    better: &str,
) {
    let (p, b) = (stats(pm), stats(base));
    let ratio = if b.median == 0.0 {
        f64::NAN
    } else {
        p.median / b.median
    };
    let line = Line {
        bench,
        metric,
        unit,
        better,
    };
    print_line(json, &line, &p, &b, ratio, false);
}

/// Print one result line for a bench whose runs are pairs (the baseline and pagemesh measured
/// back to back, A B A B ...): `ratio` is the median of the pairs' own ratios, which the
/// machine's drift between pairs does not move; `pagemesh` and `baseline` are medians as in
/// [`report`].
#[allow(clippy::too_many_arguments)]
pub fn report_pairs(
    json: bool,
    bench: &str,
    metric: &str,
    unit: &str,
    pm: &[f64],
    base: &[f64],
    better: &str,
) {
    assert_eq!(pm.len(), base.len(), "{bench} {metric}: unpaired runs");
    let ratios: Vec<f64> = pm
        .iter()
        .zip(base)
        .map(|(p, b)| if *b == 0.0 { f64::NAN } else { p / b })
        .collect();
    let line = Line {
        bench,
        metric,
        unit,
        better,
    };
    print_line(
        json,
        &line,
        &stats(pm),
        &stats(base),
        stats(&ratios).median,
        true,
    );
}

/// What names a result line.
struct Line<'a> {
    bench: &'a str,
    metric: &'a str,
    unit: &'a str,
    better: &'a str,
}

fn print_line(json: bool, l: &Line<'_>, p: &Stats, b: &Stats, ratio: f64, paired: bool) {
    let Line {
        bench,
        metric,
        unit,
        better,
    } = *l;
    if json {
        let mut v = serde_json::json!({"bench": bench, "metric": metric, "unit": unit,
            "pagemesh": p.median, "baseline": b.median, "ratio": ratio, "better": better,
            "runs": p.runs, "min": p.min, "median": p.median, "max": p.max});
        if paired {
            v["paired"] = serde_json::Value::Bool(true);
        }
        outln!("{v}");
    } else {
        let how = if paired {
            format!("median of {} pairs' ratios; ", p.runs)
        } else {
            String::new()
        };
        outln!(
            "{bench:<8} {metric:<34} {unit:>5} {:>10.3} {:>10.3} {:>7.3}  ({better} is better; {how}pagemesh min {:.3} max {:.3}, n={})",
            p.median, b.median, ratio, p.min, p.max, p.runs
        );
    }
}
