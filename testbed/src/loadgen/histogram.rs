//! Latency recording: an HdrHistogram of nanoseconds with 3 significant digits (a
//! recorded value and every percentile read back are within 0.1% of the truth), from
//! 1 ns to 100 s (longer values are kept as 100 s). About 230 KB each; every client
//! worker has its own, merged at the end.
use std::time::Duration;

use hdrhistogram::Histogram;

use super::report::LatencySummary;

const HIGHEST_NS: u64 = 100_000_000_000;

#[derive(Debug, Clone)]
pub struct Latency {
    histogram: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Self {
        Self {
            // Bounds are constants that satisfy hdrhistogram's rules (low >= 1,
            // high >= 2 * low, sigfig <= 5): this cannot fail.
            histogram: Histogram::new_with_bounds(1, HIGHEST_NS, 3)
                .expect("valid histogram bounds"),
        }
    }

    pub fn record(&mut self, latency: Duration) {
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.histogram.saturating_record(ns.clamp(1, HIGHEST_NS));
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides: adding cannot fail but by overflowing a u64 count.
        let _ = self.histogram.add(&other.histogram);
    }

    pub fn count(&self) -> u64 {
        self.histogram.len()
    }

    /// Percentiles, maximum and mean in microseconds; `None` when nothing was recorded.
    pub fn summary(&self) -> Option<LatencySummary> {
        if self.histogram.is_empty() {
            return None;
        }
        let us = |ns: u64| ns as f64 / 1_000.0;
        let q = |quantile: f64| us(self.histogram.value_at_quantile(quantile));
        Some(LatencySummary {
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p999: q(0.999),
            max: us(self.histogram.max()),
            mean: self.histogram.mean() / 1_000.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exact_percentile(sorted: &[u64], quantile: f64) -> f64 {
        // The smallest value with at least `quantile` of the values at or below it.
        let rank = ((quantile * sorted.len() as f64).ceil() as usize).max(1);
        sorted[rank - 1] as f64 / 1_000.0
    }

    fn assert_within_1_percent(what: &str, got: f64, want: f64) {
        let error = (got - want).abs() / want;
        assert!(
            error <= 0.01,
            "{what}: got {got} µs, want {want} µs ({:.3}% off)",
            error * 100.0
        );
    }

    #[test]
    fn percentiles_are_within_one_percent_on_a_known_distribution() {
        // A long-tailed, deterministic distribution over five orders of magnitude:
        // 20 µs plus a geometric tail, as latencies look.
        let mut values: Vec<u64> = (0..200_000u64)
            .map(|i| {
                let x = (i * 7919) % 200_000; // a permutation of 0..200000
                let tail = (x as f64 / 200_000.0 * 11.0).exp(); // 1 .. ~60000
                20_000 + (tail * 1_000.0) as u64 + x % 997
            })
            .collect();
        let mut latency = Latency::new();
        for &ns in &values {
            latency.record(Duration::from_nanos(ns));
        }
        values.sort_unstable();
        let s = latency.summary().expect("values were recorded");
        assert_eq!(latency.count(), 200_000);
        assert_within_1_percent("p50", s.p50, exact_percentile(&values, 0.50));
        assert_within_1_percent("p90", s.p90, exact_percentile(&values, 0.90));
        assert_within_1_percent("p99", s.p99, exact_percentile(&values, 0.99));
        assert_within_1_percent("p999", s.p999, exact_percentile(&values, 0.999));
        assert_within_1_percent("max", s.max, *values.last().unwrap() as f64 / 1_000.0);
        let mean = values.iter().sum::<u64>() as f64 / values.len() as f64 / 1_000.0;
        assert_within_1_percent("mean", s.mean, mean);
        assert!(s.p50 < s.p90 && s.p90 < s.p99 && s.p99 < s.p999 && s.p999 <= s.max);
    }

    #[test]
    fn merging_adds_counts_and_empty_has_no_summary() {
        let mut a = Latency::new();
        assert!(a.summary().is_none());
        let mut b = Latency::new();
        for us in 1..=100u64 {
            a.record(Duration::from_micros(us));
            b.record(Duration::from_micros(us + 100));
        }
        a.merge(&b);
        assert_eq!(a.count(), 200);
        let s = a.summary().unwrap();
        assert_within_1_percent("p50", s.p50, 100.0);
        assert_within_1_percent("max", s.max, 200.0);
        // Out of range values are kept, clamped.
        a.record(Duration::from_secs(1_000));
        assert_within_1_percent("max", a.summary().unwrap().max, 100e6);
    }
}
