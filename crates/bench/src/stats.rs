//! Latency and connect-time distributions: an HDR histogram in microseconds and its percentile
//! summary in milliseconds for the report.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest recordable value: one minute in microseconds; anything slower is clamped to it.
const MAX_MICROS: u64 = 60_000_000;

/// A fresh histogram of microseconds, 3 significant digits (about 190 KB; there are two per run,
/// never one per connection).
pub fn micros_histogram() -> Result<Histogram<u64>, hdrhistogram::CreationError> {
    Histogram::new_with_bounds(1, MAX_MICROS, 3)
}

/// Records `micros`, clamped into the histogram's range.
pub fn record(h: &mut Histogram<u64>, micros: u64) {
    h.saturating_record(micros.clamp(1, MAX_MICROS));
}

/// Percentiles in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// The summary of a histogram of microseconds; all zero when it is empty.
pub fn summarize(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    let ms = |micros: u64| micros as f64 / 1000.0;
    Percentiles {
        count: h.len(),
        p50_ms: ms(h.value_at_quantile(0.50)),
        p99_ms: ms(h.value_at_quantile(0.99)),
        p999_ms: ms(h.value_at_quantile(0.999)),
        max_ms: ms(h.max()),
        mean_ms: h.mean() / 1000.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_histogram_summarizes_to_zeros() {
        assert_eq!(
            summarize(&micros_histogram().expect("histogram")),
            Percentiles::default()
        );
    }

    #[test]
    fn percentiles_come_out_in_milliseconds() {
        let mut h = micros_histogram().expect("histogram");
        for v in 1..=1000u64 {
            record(&mut h, v * 100); // 0.1 ms .. 100 ms
        }
        let s = summarize(&h);
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{s:?}");
        assert!((s.p99_ms - 99.0).abs() < 0.1, "{s:?}");
        assert!((s.p999_ms - 99.9).abs() < 0.1, "{s:?}");
        assert!((s.max_ms - 100.0).abs() < 0.1, "{s:?}");
    }

    #[test]
    fn out_of_range_values_are_clamped_not_lost() {
        let mut h = micros_histogram().expect("histogram");
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        let s = summarize(&h);
        assert_eq!(s.count, 2);
        assert!(s.max_ms >= 59_000.0);
    }
}
