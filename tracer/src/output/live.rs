//! The live table: one row per interval, with each cause's share of that interval's
//! requests' time.

use std::fmt::Write as _;

use super::console::{human_ns, percent};
use crate::{collector::Collector, engine::Cause};

pub fn header() -> String {
    let mut s = format!(
        "{:>8} {:>8} {:>9} {:>9} {:>9} |",
        "time", "reqs", "req/s", "p50", "p99"
    );
    for c in Cause::ALL {
        let _ = write!(s, " {:>w$}", c.name(), w = column_width(c));
    }
    s + " | events   lost"
}

/// One row: this interval's requests, and each cause's share of their total time.
/// `interval_s` is the interval's length (shorter for the last one, cut by the stop).
pub fn row(c: &Collector, interval_s: f64) -> String {
    let (requests, breakdown) = c.interval();
    let h = &requests.latency;
    let reqs = h.len();
    let mut s = format!(
        "{:>7.0}s {:>8} {:>9.1} {:>9} {:>9} |",
        c.elapsed().as_secs_f64(),
        reqs,
        reqs as f64 / interval_s.max(1e-3),
        human_ns(h.value_at_quantile(0.5)),
        human_ns(h.value_at_quantile(0.99)),
    );
    let total: u64 = breakdown.iter().sum();
    for cause in Cause::ALL {
        let share = percent(breakdown[cause.index()], total);
        let _ = write!(s, " {:>w$.1}%", share, w = column_width(cause) - 1);
    }
    let _ = write!(s, " | {:>6} {:>6}", c.interval_events(), c.interval_lost());
    s
}

/// A live-table column: wide enough for the cause's name and a percentage.
fn column_width(cause: Cause) -> usize {
    cause.name().len().max(8)
}
