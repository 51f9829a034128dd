//! The JSON summary of a run, and the pure arithmetic behind its derived figures (ratios, rates,
//! cost per connection and per delivery).

use serde::Serialize;

use crate::stats::Percentiles;

/// Everything a run measured. Printed on stdout and optionally written to `--json-out`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub parameters: serde_json::Value,
    /// How many `--server`s the connections were placed on, and how.
    pub replicas: usize,
    pub placement: crate::replicas::Placement,
    pub connections: Connections,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server: Option<ServerMemory>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rounds: Vec<Round>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saturation: Option<Saturation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub join_storm: Option<JoinStorm>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub abuse: Option<crate::abuse::AbuseReport>,
    pub reconnect_storm: Option<crate::reconnect_storm::Summary>,
    /// CPU seconds the load generator itself used, to tell whether it, not the server, was the
    /// bottleneck.
    pub bench_cpu_seconds: f64,
    pub bench_rss_kb: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Connections {
    pub attempted: u64,
    pub established: u64,
    pub failed: u64,
    pub joined: u64,
    pub join_failed: u64,
    /// Joins sent again after no answer (see `client::JOIN_RETRY_AFTER`).
    pub join_retries: u64,
    pub lost: u64,
    /// From the first connect until every connection was established or had failed.
    pub all_connected_seconds: Option<f64>,
    /// From the first connect until every join on connect was answered.
    pub all_joined_seconds: Option<f64>,
    /// TCP connect to namespace accepted, per connection.
    pub connect_time: Percentiles,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServerMemory {
    pub pid: u32,
    pub rss_before_kb: u64,
    pub rss_after_kb: u64,
    pub rss_per_connection_bytes: f64,
}

/// One sending round at one offered rate.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub offered_deliveries_per_sec: f64,
    pub offered_messages_per_sec: f64,
    pub send_seconds: f64,
    /// Send phase plus the drain that waits for stragglers.
    pub measured_seconds: f64,
    pub messages_sent: u64,
    pub deliveries: u64,
    pub expected_deliveries: u64,
    pub delivery_ratio: f64,
    pub deliveries_per_sec: f64,
    pub latency: Percentiles,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_us_per_delivery: Option<f64>,
    pub bench_cpu_seconds: f64,
    /// CPU seconds other normal-priority work used on the host during the round (host busy time
    /// minus the server and the bench): competition for the same cores. Latency tails from
    /// rounds where this is high are noise, not the gateway.
    pub other_cpu_seconds: Option<f64>,
    /// CPU seconds of low-priority (niced) work during the round, such as background builds.
    pub niced_cpu_seconds: Option<f64>,
    /// irq + softirq seconds during the round: mostly the loopback TCP traffic of the run itself.
    pub irq_cpu_seconds: Option<f64>,
    /// The host's 1-minute load average at the end of the round (see `procfs`).
    pub loadavg_1m: Option<f64>,
    /// Redis network traffic during the round, with `--redis`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis: Option<RedisTraffic>,
}

/// What a round cost Redis on the network (over every `--redis` node).
#[derive(Debug, Clone, Serialize)]
pub struct RedisTraffic {
    pub input_bytes: u64,
    pub output_bytes: u64,
    /// Input plus output bytes per delivery.
    pub bytes_per_delivery: Option<f64>,
    /// Redis-to-gateway bytes per delivery: the fan-out Redis pays.
    pub output_bytes_per_delivery: Option<f64>,
}

impl RedisTraffic {
    pub fn new(bytes: crate::redis_stats::NetBytes, deliveries: u64) -> Self {
        let per = |b: u64| (deliveries > 0).then(|| b as f64 / deliveries as f64);
        Self {
            input_bytes: bytes.input,
            output_bytes: bytes.output,
            bytes_per_delivery: per(bytes.input + bytes.output),
            output_bytes_per_delivery: per(bytes.output),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Saturation {
    pub p99_limit_ms: f64,
    pub min_delivery_ratio: f64,
    /// The highest offered rate that met both limits, and what it achieved.
    pub best_offered_deliveries_per_sec: Option<f64>,
    pub best_deliveries_per_sec: Option<f64>,
    pub stopped_because: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct JoinStorm {
    pub joins: u64,
    /// From the join command to the last join ack.
    pub all_joined_seconds: Option<f64>,
    /// From the join command until presence traffic went quiet (the last presence or system
    /// event received, or the last join ack if later), when it did within the timeout.
    pub quiet_seconds: Option<f64>,
    /// `quiet_seconds` when the room settled: quiet with every member still connected.
    pub settle_seconds: Option<f64>,
    pub settled: bool,
    /// Connections the server dropped during the storm. A room that goes quiet because its
    /// members were dropped has not settled.
    pub lost_connections: u64,
    pub presence_events: u64,
    /// presence:update plus system:event for every join to every member then present:
    /// `2 * n(n+1)/2` for `n` joins into one channel.
    pub expected_presence_events: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_seconds: Option<f64>,
}

/// `part / whole`, or 0 when there is no whole.
pub fn ratio(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

/// Server RSS growth per connection in bytes.
pub fn rss_per_connection_bytes(before_kb: u64, after_kb: u64, connections: u64) -> f64 {
    if connections == 0 {
        return 0.0;
    }
    (after_kb as f64 - before_kb as f64) * 1024.0 / connections as f64
}

/// Server CPU microseconds per delivery; `None` without deliveries.
pub fn cpu_us_per_delivery(cpu_seconds: f64, deliveries: u64) -> Option<f64> {
    (deliveries > 0).then(|| cpu_seconds * 1e6 / deliveries as f64)
}

/// Presence and system events a storm of `joins` into one empty channel sends: the k-th join
/// reaches the k members then present, twice (presence:update and system:event).
pub fn storm_presence_events(joins: u64) -> u64 {
    joins * (joins + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ratio_of_nothing_expected_is_zero() {
        assert_eq!(ratio(5, 0), 0.0);
        assert!((ratio(99, 100) - 0.99).abs() < 1e-12);
    }

    #[test]
    fn rss_growth_is_spread_over_the_connections_in_bytes() {
        assert!((rss_per_connection_bytes(10_000, 130_000, 15_000) - 8192.0).abs() < 1e-9);
        assert_eq!(rss_per_connection_bytes(1, 2, 0), 0.0);
    }

    #[test]
    fn cpu_per_delivery_is_in_microseconds() {
        assert_eq!(cpu_us_per_delivery(2.8, 400_000), Some(7.0));
        assert_eq!(cpu_us_per_delivery(1.0, 0), None);
    }

    #[test]
    fn redis_bytes_are_spread_over_the_deliveries() {
        let t = RedisTraffic::new(
            crate::redis_stats::NetBytes {
                input: 1_000,
                output: 3_000,
            },
            100,
        );
        assert_eq!(t.bytes_per_delivery, Some(40.0));
        assert_eq!(t.output_bytes_per_delivery, Some(30.0));
        let none = RedisTraffic::new(crate::redis_stats::NetBytes::default(), 0);
        assert_eq!(none.bytes_per_delivery, None);
    }

    #[test]
    fn a_join_storm_is_quadratic_in_presence_traffic() {
        assert_eq!(storm_presence_events(1), 2);
        assert_eq!(storm_presence_events(3), 12);
        assert_eq!(storm_presence_events(10_000), 100_010_000);
    }
}
