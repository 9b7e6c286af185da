//! Latency histograms: HdrHistogram over microseconds, from 1 µs to one
//! hour at 3 significant digits (every recorded value is kept to within
//! 0.1 %), so percentiles come from every sample, not a sample of them.
//! Each load task records into its own and the totals are merged.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Largest value recorded (larger ones are clamped): one hour, in µs.
const MAX_US: u64 = 3_600_000_000;

/// A latency histogram.
#[derive(Clone)]
pub(crate) struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds"))
    }
}

/// Percentiles of a histogram.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Summary {
    pub(crate) count: u64,
    pub(crate) p50: Duration,
    pub(crate) p99: Duration,
    pub(crate) max: Duration,
}

impl Latency {
    /// Records one value.
    pub(crate) fn record(&mut self, d: Duration) {
        let us = u64::try_from(d.as_micros())
            .unwrap_or(MAX_US)
            .clamp(1, MAX_US);
        self.0.saturating_record(us);
    }

    /// Records a value given in milliseconds (negative counts as zero).
    pub(crate) fn record_ms(&mut self, ms: i64) {
        self.record(Duration::from_millis(ms.max(0) as u64));
    }

    /// Adds every value of `other`.
    pub(crate) fn merge(&mut self, other: &Self) {
        self.0
            .add(&other.0)
            .expect("histograms of the same bounds merge");
    }

    /// Values recorded.
    pub(crate) fn count(&self) -> u64 {
        self.0.len()
    }

    /// p50, p99 and max (zeros when empty).
    pub(crate) fn summary(&self) -> Summary {
        let q = |q: f64| Duration::from_micros(self.0.value_at_quantile(q));
        Summary {
            count: self.count(),
            p50: q(0.50),
            p99: q(0.99),
            max: Duration::from_micros(self.0.max()),
        }
    }
}

impl Latency {
    /// The value at quantile `q` of a population of `count() + missing`
    /// values where the `missing` ones are known to be above every recorded
    /// one (alerts that never came): `None` when `q` falls among them.
    pub(crate) fn quantile_with_missing(&self, q: f64, missing: u64) -> Option<Duration> {
        let recorded = self.count();
        let total = recorded + missing;
        let rank = (q * total as f64).ceil().max(1.0) as u64;
        if rank > recorded {
            return None;
        }
        let q_recorded = rank as f64 / recorded as f64;
        Some(Duration::from_micros(self.0.value_at_quantile(q_recorded)))
    }
}

/// A duration for a table: `0.42 ms`, `12.3 ms`, `1.25 s`.
pub(crate) fn fmt_duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else if ms < 1000.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{:.2} s", ms / 1000.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_every_value() {
        let mut h = Latency::default();
        for ms in 1..=1000 {
            h.record(Duration::from_millis(ms));
        }
        let s = h.summary();
        assert_eq!(s.count, 1000);
        let within =
            |d: Duration, ms: f64| (d.as_secs_f64() * 1000.0 - ms).abs() <= ms * 0.001 + 0.001;
        assert!(within(s.p50, 500.0), "{:?}", s.p50);
        assert!(within(s.p99, 990.0), "{:?}", s.p99);
        assert!(within(s.max, 1000.0), "{:?}", s.max);
    }

    #[test]
    fn merging_adds_counts_and_keeps_the_max() {
        let mut a = Latency::default();
        let mut b = Latency::default();
        a.record(Duration::from_micros(100));
        b.record(Duration::from_secs(2));
        b.record_ms(-5);
        a.merge(&b);
        let s = a.summary();
        assert_eq!(s.count, 3);
        assert!(s.max >= Duration::from_millis(1999));
        // Out-of-range values are clamped, not lost.
        a.record(Duration::from_secs(10_000));
        assert_eq!(a.count(), 4);
    }

    #[test]
    fn missing_values_count_as_the_slowest() {
        let mut h = Latency::default();
        for ms in 1..=98 {
            h.record(Duration::from_millis(ms));
        }
        let ms = |d: Option<Duration>| d.map(|d| (d.as_secs_f64() * 1000.0).round() as u64);
        // 98 recorded, 2 missing: p50 is the 50th value, p99 is missing.
        assert_eq!(ms(h.quantile_with_missing(0.50, 2)), Some(50));
        assert_eq!(h.quantile_with_missing(0.99, 2), None);
        assert_eq!(ms(h.quantile_with_missing(0.99, 0)), Some(98));
        assert_eq!(Latency::default().quantile_with_missing(0.5, 3), None);
    }

    #[test]
    fn empty_histograms_summarise_to_zero() {
        let s = Latency::default().summary();
        assert_eq!((s.count, s.p99, s.max), (0, Duration::ZERO, Duration::ZERO));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(fmt_duration(Duration::from_micros(420)), "0.42 ms");
        assert_eq!(fmt_duration(Duration::from_micros(12_345)), "12.3 ms");
        assert_eq!(fmt_duration(Duration::from_millis(1250)), "1.25 s");
    }
}
