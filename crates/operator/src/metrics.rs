//! The operator's own Prometheus metrics, served on the admin port. Labels come from small
//! fixed sets (a result, an [`crate::Error::code`]), never from object names or error text.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric the operator exports.
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Registry,
    /// Reconciles by `result` (`ok`, `error`, `paused`, `invalid`).
    pub reconciles: IntCounterVec,
    /// Failed reconciles by error `code`.
    pub errors: IntCounterVec,
    /// Reconcile latency.
    pub duration: Histogram,
    /// Events that could not be published.
    pub event_failures: IntCounter,
    /// 1 while this replica holds the leader lease.
    pub leader: IntGauge,
    /// 1 when the ServiceMonitor CRD was found at the last discovery.
    pub service_monitor_crd: IntGauge,
}

impl Metrics {
    /// Creates and registers the metrics in a fresh registry.
    pub fn new() -> Self {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new("live_operator_reconciles_total", "Reconciles by result."),
            &["result"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let errors = IntCounterVec::new(
            Opts::new(
                "live_operator_reconcile_errors_total",
                "Failed reconciles by error code.",
            ),
            &["code"],
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let duration = Histogram::with_opts(
            HistogramOpts::new(
                "live_operator_reconcile_duration_seconds",
                "Reconcile latency.",
            )
            .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let event_failures = IntCounter::new(
            "live_operator_event_publish_failures_total",
            "Kubernetes events that could not be published.",
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let leader = IntGauge::new(
            "live_operator_leader",
            "1 while this replica is the leader.",
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        let service_monitor_crd = IntGauge::new(
            "live_operator_service_monitor_crd_present",
            "1 when the ServiceMonitor CRD was found at the last discovery.",
        )
        .unwrap_or_else(|e| unreachable!("static metric definition: {e}"));
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(duration.clone()),
            Box::new(event_failures.clone()),
            Box::new(leader.clone()),
            Box::new(service_monitor_crd.clone()),
        ] {
            // Names are unique constants, so registration cannot collide.
            let _ = registry.register(c);
        }
        Self {
            registry,
            reconciles,
            errors,
            duration,
            event_failures,
            leader,
            service_monitor_crd,
        }
    }

    /// Registers a collector computed at scrape time (see [`crate::readiness`]). A second
    /// registration of the same metrics is refused and logged.
    pub fn register(&self, collector: Box<dyn prometheus::core::Collector>) {
        if let Err(e) = self.registry.register(collector) {
            tracing::warn!(error = %e, "metrics collector not registered");
        }
    }

    /// The text exposition format of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_render_with_bounded_labels() {
        let m = Metrics::new();
        m.reconciles.with_label_values(&["ok"]).inc();
        m.errors.with_label_values(&["apply"]).inc();
        let text = m.render();
        assert!(text.contains("live_operator_reconciles_total{result=\"ok\"} 1"));
        assert!(text.contains("live_operator_reconcile_errors_total{code=\"apply\"} 1"));
    }
}
