//! Every metric the gateway exports, in one place, with the names existing dashboards use.
//!
//! Label values come only from small fixed sets (event types, refusal codes, disconnect reasons,
//! bridge routes): never a channel name, user id or error text, so cardinality stays bounded no
//! matter what clients send.

use std::sync::Arc;

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Handles to every metric; cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    pub registry: Registry,
    pub connections: IntCounterVec,
    pub disconnects: IntCounterVec,
    pub active_connections: IntGauge,
    pub messages: IntCounterVec,
    pub message_duration: HistogramVec,
    pub presence_delta: IntCounterVec,
    pub rate_limit_hits: IntCounterVec,
    pub errors: IntCounterVec,
    pub auth_failures: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub config_last_reload_successful: IntGauge,
    pub bridge_requests: IntCounterVec,
    pub emit_failures: IntCounter,
    pub draining: IntGauge,
    pub redis_up: IntGauge,
    pub redis_configured: IntGauge,
    pub redis_errors: IntCounterVec,
    pub redis_adapter_dropped: IntCounter,
    pub redis_publish_skipped: IntCounter,
    pub connections_refused: IntCounterVec,
    pub open_connections: IntGaugeVec,
    pub log_lines_suppressed: IntCounterVec,
    pub mutes_evicted: IntCounter,
    pub jwt_keys: IntGaugeVec,
    pub jwt_key_reloads: IntCounterVec,
    pub token_events: IntCounterVec,
    pub history_records: IntCounterVec,
    pub history_recoveries: IntCounterVec,
    pub history_replayed: IntCounter,
    pub history_channels: IntGauge,
    pub redis_room_subscriptions: IntGauge,
    pub redis_snapshot_writes: IntCounter,
    pub console_requests: IntCounterVec,
    pub console_streams: IntGauge,
}

/// Buckets for `ws_room_size`: members per room, from a private stream to a stadium.
const ROOM_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0,
    50000.0,
];

/// Buckets for handler durations: sub-millisecond work, with room to see a stall.
const DURATION_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let connections = IntCounterVec::new(
            Opts::new("ws_connections_total", "Socket.IO handshakes, by outcome"),
            &["status"],
        )
        .expect("static metric definition");
        let disconnects = IntCounterVec::new(
            Opts::new("ws_disconnects_total", "Disconnections, by reason"),
            &["reason"],
        )
        .expect("static metric definition");
        let active_connections = IntGauge::new(
            "ws_active_connections",
            "Sockets connected to /live right now (the autoscaling signal)",
        )
        .expect("static metric definition");
        let messages = IntCounterVec::new(
            Opts::new(
                "ws_messages_total",
                "Events received (direction=in) and emitted (direction=out, one per emit, not per recipient), by type",
            ),
            &["type", "direction"],
        )
        .expect("static metric definition");
        let message_duration = HistogramVec::new(
            HistogramOpts::new(
                "ws_message_duration_seconds",
                "Time to handle one client event, by type",
            )
            .buckets(DURATION_BUCKETS.to_vec()),
            &["type"],
        )
        .expect("static metric definition");
        let presence_delta = IntCounterVec::new(
            Opts::new("ws_presence_delta_total", "Channel joins and leaves"),
            &["delta"],
        )
        .expect("static metric definition");
        let rate_limit_hits = IntCounterVec::new(
            Opts::new(
                "ws_rate_limit_hits_total",
                "Events refused by the rate limiter",
            ),
            &["kind"],
        )
        .expect("static metric definition");
        let errors = IntCounterVec::new(
            Opts::new("ws_errors_total", "Refusals and errors, by stable code"),
            &["code"],
        )
        .expect("static metric definition");
        let auth_failures = IntCounterVec::new(
            Opts::new("ws_auth_failures_total", "Refused tokens, by reason"),
            &["reason"],
        )
        .expect("static metric definition");
        let config_reloads = IntCounterVec::new(
            Opts::new(
                "live_config_reloads_total",
                "Config file reloads, by result",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let config_last_reload_successful = IntGauge::new(
            "live_config_last_reload_successful",
            "1 unless the last config reload was refused (the last good config is still in force)",
        )
        .expect("static metric definition");
        config_last_reload_successful.set(1);
        let bridge_requests = IntCounterVec::new(
            Opts::new(
                "live_bridge_requests_total",
                "HTTP bridge requests, by route and status code",
            ),
            &["route", "status"],
        )
        .expect("static metric definition");
        let emit_failures = IntCounter::new(
            "live_emit_failures_total",
            "Emits to a single socket that failed (outgoing buffer full or socket closing)",
        )
        .expect("static metric definition");
        let draining = IntGauge::new("live_draining", "1 while the gateway drains connections")
            .expect("static metric definition");
        let redis_up = IntGauge::new(
            "live_redis_up",
            "Whether Redis is reachable: 1 while both Redis connections answered a PING in the last 3 s, else 0 (also 0 without REDIS_URL)",
        )
        .expect("static metric definition");
        let redis_configured = IntGauge::new(
            "live_redis_configured",
            "1 when REDIS_URL is set (so live_redis_up 0 means Redis is unreachable, not unused)",
        )
        .expect("static metric definition");
        let redis_errors = IntCounterVec::new(
            Opts::new(
                "live_redis_errors_total",
                "Redis calls that failed or timed out (the gateway fell back to local state), by operation",
            ),
            &["op"],
        )
        .expect("static metric definition");
        let redis_adapter_dropped = IntCounter::new(
            "live_redis_adapter_dropped_total",
            "Cross-replica messages dropped because the adapter's stream buffer was full",
        )
        .expect("static metric definition");
        let redis_publish_skipped = IntCounter::new(
            "live_redis_publish_skipped_total",
            "Broadcasts delivered locally only because Redis was unreachable",
        )
        .expect("static metric definition");
        let connections_refused = IntCounterVec::new(
            Opts::new(
                "live_connections_refused_total",
                "TCP connections and Engine.IO sessions refused by a connection cap, by listener and reason",
            ),
            &["listener", "reason"],
        )
        .expect("static metric definition");
        let open_connections = IntGaugeVec::new(
            Opts::new(
                "live_open_connections",
                "TCP connections open on each listener (WebSockets included)",
            ),
            &["listener"],
        )
        .expect("static metric definition");
        let log_lines_suppressed = IntCounterVec::new(
            Opts::new(
                "live_log_lines_suppressed_total",
                "Log lines of repeatable client failures not written (sampled), by event",
            ),
            &["event"],
        )
        .expect("static metric definition");
        let jwt_keys = IntGaugeVec::new(
            Opts::new(
                "live_jwt_keys",
                "Verification keys in force, by source (env, dir, jwks)",
            ),
            &["source"],
        )
        .expect("static metric definition");
        let jwt_key_reloads = IntCounterVec::new(
            Opts::new(
                "live_jwt_key_reloads_total",
                "Key source reloads (dir, jwks_file, jwks_url), by result (success, failure)",
            ),
            &["source", "result"],
        )
        .expect("static metric definition");
        let token_events = IntCounterVec::new(
            Opts::new(
                "live_token_events_total",
                "Token lifecycle on live connections: expiring notices, expiries, key retirements, refreshes",
            ),
            &["event"],
        )
        .expect("static metric definition");
        let mutes_evicted = IntCounter::new(
            "live_mutes_evicted_total",
            "Mutes evicted because their channel held moderation.maxMutesPerChannel",
        )
        .expect("static metric definition");
        let history_records = IntCounterVec::new(
            Opts::new(
                "live_history_records_total",
                "History items delivered to channels, by result: recorded, unrecorded (the store was unavailable; the channel's stream is renewed), disabled (history.maxItems 0)",
            ),
            &["result"],
        )
        .expect("static metric definition");
        let history_recoveries = IntCounterVec::new(
            Opts::new(
                "live_history_recoveries_total",
                "Recovery attempts, by way (join, connection_state) and result (recovered, or why not)",
            ),
            &["via", "result"],
        )
        .expect("static metric definition");
        let history_replayed = IntCounter::new(
            "live_history_replayed_items_total",
            "History items sent to recovering clients",
        )
        .expect("static metric definition");
        let history_channels = IntGauge::new(
            "live_history_channels",
            "Channels whose history this gateway keeps in memory (0 with Redis)",
        )
        .expect("static metric definition");
        let redis_room_subscriptions = IntGauge::new(
            "live_redis_room_subscriptions",
            "Channels whose Redis pub/sub channel this replica is subscribed to (its channels with local members, plus those lingering after their last member left)",
        )
        .expect("static metric definition");
        let redis_snapshot_writes = IntCounter::new(
            "live_redis_snapshot_writes_total",
            "Rewrites of this replica's viewer and presence snapshot in Redis",
        )
        .expect("static metric definition");
        let console_requests = IntCounterVec::new(
            Opts::new(
                "live_console_requests_total",
                "Web console API requests, by route and status code",
            ),
            &["route", "status"],
        )
        .expect("static metric definition");
        let console_streams = IntGauge::new(
            "live_console_streams",
            "Web console event streams open on this gateway",
        )
        .expect("static metric definition");
        let build_info = IntGaugeVec::new(
            Opts::new("live_build_info", "Build information; always 1"),
            &["version"],
        )
        .expect("static metric definition");
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);

        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(connections.clone()),
            Box::new(disconnects.clone()),
            Box::new(active_connections.clone()),
            Box::new(messages.clone()),
            Box::new(message_duration.clone()),
            Box::new(presence_delta.clone()),
            Box::new(rate_limit_hits.clone()),
            Box::new(errors.clone()),
            Box::new(auth_failures.clone()),
            Box::new(config_reloads.clone()),
            Box::new(config_last_reload_successful.clone()),
            Box::new(bridge_requests.clone()),
            Box::new(emit_failures.clone()),
            Box::new(draining.clone()),
            Box::new(redis_up.clone()),
            Box::new(redis_configured.clone()),
            Box::new(redis_errors.clone()),
            Box::new(redis_adapter_dropped.clone()),
            Box::new(redis_publish_skipped.clone()),
            Box::new(connections_refused.clone()),
            Box::new(open_connections.clone()),
            Box::new(log_lines_suppressed.clone()),
            Box::new(mutes_evicted.clone()),
            Box::new(jwt_keys.clone()),
            Box::new(jwt_key_reloads.clone()),
            Box::new(token_events.clone()),
            Box::new(history_records.clone()),
            Box::new(history_recoveries.clone()),
            Box::new(history_replayed.clone()),
            Box::new(history_channels.clone()),
            Box::new(redis_room_subscriptions.clone()),
            Box::new(redis_snapshot_writes.clone()),
            Box::new(console_requests.clone()),
            Box::new(console_streams.clone()),
            Box::new(build_info),
        ];
        for c in collectors {
            registry
                .register(c)
                .expect("metric names are unique by construction");
        }
        Self {
            registry,
            connections,
            disconnects,
            active_connections,
            messages,
            message_duration,
            presence_delta,
            rate_limit_hits,
            errors,
            auth_failures,
            config_reloads,
            config_last_reload_successful,
            bridge_requests,
            emit_failures,
            draining,
            redis_up,
            redis_configured,
            redis_errors,
            redis_adapter_dropped,
            redis_publish_skipped,
            connections_refused,
            open_connections,
            log_lines_suppressed,
            mutes_evicted,
            jwt_keys,
            jwt_key_reloads,
            token_events,
            history_records,
            history_recoveries,
            history_replayed,
            history_channels,
            redis_room_subscriptions,
            redis_snapshot_writes,
            console_requests,
            console_streams,
        }
    }

    /// Registers the room gauges, computed at scrape time from the live room membership that
    /// `room_sizes` reports, so they can never drift from the adapter's state.
    pub fn register_rooms(&self, room_sizes: impl Fn() -> Vec<usize> + Send + Sync + 'static) {
        let collector = RoomCollector {
            room_sizes: Arc::new(room_sizes),
            descs: Self::room_descs(),
        };
        if let Err(e) = self.registry.register(Box::new(collector)) {
            tracing::error!(error = %e, "room metrics could not be registered");
        }
    }

    /// Registers `ws_deliveries_total`, read at scrape time from `deliveries`: the transport's
    /// count of packets broadcasts handed to sockets, one per recipient (every room broadcast,
    /// local or from another replica through Redis). Keeping the count in the transport costs
    /// one atomic add per broadcast instead of a metric update per recipient.
    pub fn register_deliveries(&self, deliveries: impl Fn() -> u64 + Send + Sync + 'static) {
        let collector = DeliveriesCollector {
            deliveries: Box::new(deliveries),
            desc: Self::deliveries_counter().desc()[0].clone(),
        };
        if let Err(e) = self.registry.register(Box::new(collector)) {
            tracing::error!(error = %e, "delivery metrics could not be registered");
        }
    }

    fn deliveries_counter() -> IntCounter {
        IntCounter::new(
            "ws_deliveries_total",
            "Messages broadcasts handed to sockets, one per recipient (local members only on each replica)",
        )
        .expect("static metric definition")
    }

    fn room_descs() -> Vec<prometheus::core::Desc> {
        let mut descs = Vec::new();
        descs.extend(Self::rooms_active_gauge().desc().into_iter().cloned());
        descs.extend(Self::room_size_histogram().desc().into_iter().cloned());
        descs
    }

    fn rooms_active_gauge() -> IntGauge {
        IntGauge::new(
            "ws_rooms_active",
            "Channel rooms with at least one local member",
        )
        .expect("static metric definition")
    }

    fn room_size_histogram() -> Histogram {
        Histogram::with_opts(
            HistogramOpts::new(
                "ws_room_size",
                "Members per channel room on this gateway, sampled at scrape time",
            )
            .buckets(ROOM_SIZE_BUCKETS.to_vec()),
        )
        .expect("static metric definition")
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Counts a failed Redis call by operation (a fixed set of names).
    pub fn redis_error(&self, op: &'static str) {
        self.redis_errors.with_label_values(&[op]).inc();
    }

    /// Counts a key source reload: `source` and `result` are from fixed sets.
    pub fn key_reload(&self, source: &'static str, result: &'static str) {
        self.jwt_key_reloads
            .with_label_values(&[source, result])
            .inc();
    }

    /// Counts a token lifecycle event (a fixed set of names).
    pub fn token_event(&self, event: &'static str) {
        self.token_events.with_label_values(&[event]).inc();
    }

    /// Counts a recovery attempt; both labels come from fixed sets.
    pub fn history_recovery(&self, via: &'static str, result: &'static str) {
        self.history_recoveries
            .with_label_values(&[via, result])
            .inc();
    }

    /// Counts a refusal or error by its stable code.
    pub fn error(&self, code: &'static str) {
        self.errors.with_label_values(&[code]).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Builds `ws_deliveries_total` from the transport's count on every scrape.
struct DeliveriesCollector {
    deliveries: Box<dyn Fn() -> u64 + Send + Sync>,
    desc: prometheus::core::Desc,
}

impl Collector for DeliveriesCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let counter = Metrics::deliveries_counter();
        counter.inc_by((self.deliveries)());
        counter.collect()
    }
}

type RoomSizes = Arc<dyn Fn() -> Vec<usize> + Send + Sync>;

/// Builds `ws_rooms_active` and `ws_room_size` afresh on every scrape.
struct RoomCollector {
    room_sizes: RoomSizes,
    descs: Vec<prometheus::core::Desc>,
}

impl Collector for RoomCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let sizes = (self.room_sizes)();
        let gauge = Metrics::rooms_active_gauge();
        gauge.set(i64::try_from(sizes.len()).unwrap_or(i64::MAX));
        let histogram = Metrics::room_size_histogram();
        for s in sizes {
            histogram.observe(s as f64);
        }
        let mut families = gauge.collect();
        families.extend(histogram.collect());
        families
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_metric_name_is_exported() {
        let m = Metrics::new();
        m.register_rooms(|| vec![3, 1]);
        m.register_deliveries(|| 42);
        // Vector metrics only appear once a label set is used.
        m.connections.with_label_values(&["accepted"]).inc();
        m.disconnects.with_label_values(&["transport_close"]).inc();
        m.messages.with_label_values(&["chat", "in"]).inc();
        m.message_duration
            .with_label_values(&["chat"])
            .observe(0.001);
        m.presence_delta.with_label_values(&["join"]).inc();
        m.rate_limit_hits.with_label_values(&["messages"]).inc();
        m.error("invalid_gift");
        let text = m.render();
        for name in [
            "ws_connections_total",
            "ws_disconnects_total",
            "ws_active_connections",
            "ws_messages_total",
            "ws_message_duration_seconds",
            "ws_presence_delta_total",
            "ws_rate_limit_hits_total",
            "ws_errors_total",
            "ws_rooms_active",
            "ws_room_size",
            "ws_deliveries_total",
            "live_build_info",
            "live_history_replayed_items_total",
            "live_history_channels",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
        assert!(text.contains("ws_rooms_active 2"));
        assert!(text.contains("ws_deliveries_total 42"));
        assert!(text.contains("ws_room_size_sum 4"));
    }
}
