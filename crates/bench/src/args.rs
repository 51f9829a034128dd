//! The command line: flags shared by every scenario, one subcommand per scenario, and the
//! runtime that runs it. Each scenario's defaults are the figures, so the bare
//! subcommand is the documented run.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::run;

/// live-bench: load generator for live-gateway (Socket.IO v4 over WebSocket).
#[derive(Debug, Clone, Parser)]
#[command(version, about, long_about = None)]
pub struct Args {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub scenario: Scenario,
}

/// Flags every scenario takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// Gateway public address (loopback).
    #[arg(long, global = true, default_value = "127.0.0.1:3000")]
    pub server: SocketAddr,

    /// Socket.IO request path.
    #[arg(long, global = true, default_value = "/ws")]
    pub path: String,

    /// Socket.IO namespace.
    #[arg(long, global = true, default_value = "/live")]
    pub namespace: String,

    /// HS256 secret the gateway verifies tokens with.
    #[arg(long, global = true, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Loopback source addresses to spread client sockets over (127.0.0.2 upwards), each with
    /// its own ephemeral port range.
    #[arg(long, global = true, default_value_t = 8)]
    pub source_ips: u8,

    /// The gateway's pid: enables server RSS per connection and CPU per delivery.
    #[arg(long, global = true)]
    pub server_pid: Option<u32>,

    /// Also write the JSON summary to this file.
    #[arg(long, global = true)]
    pub json_out: Option<PathBuf>,

    /// Handshakes in flight at once.
    #[arg(long, global = true, default_value_t = 256)]
    pub connect_concurrency: usize,

    /// Give up on one connection's handshake after this many seconds.
    #[arg(long, global = true, default_value_t = 10)]
    pub connect_timeout_secs: u64,

    /// Give up waiting for a phase (connect, join, drain, settle) after this many seconds.
    #[arg(long, global = true, default_value_t = 120)]
    pub phase_timeout_secs: u64,

    /// Channel names are `<prefix>-<n>`.
    #[arg(long, global = true, default_value = "bench")]
    pub channel_prefix: String,

    /// Runtime worker threads; defaults to the CPUs this process may run on (1 under
    /// `taskset -c 1`).
    #[arg(long, global = true)]
    pub threads: Option<usize>,
}

/// The scenarios of issue 6.
#[derive(Debug, Clone, Subcommand)]
pub enum Scenario {
    /// 1. Idle: many joined connections, no chat; server memory per connection.
    Idle(Idle),
    /// 2 and 3. Fan-out: senders chat at each --rate in turn; latency and CPU per delivery.
    Fanout(Fanout),
    /// 4. Saturation: step the offered rate up until p99 or the delivery ratio breaks a limit.
    Saturate(Saturate),
    /// 5. Join storm: connect, then every connection joins one channel at once; time to settle.
    JoinStorm(JoinStorm),
    /// Reconnect storm: joined viewers are cut at once (a drained gateway or a client-side
    /// abort) and reconnect; time until all rejoined, presence traffic, and the latency an
    /// unaffected channel sees meanwhile.
    ReconnectStorm(crate::reconnect_storm::ReconnectStorm),
}

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Idle {
    #[arg(long, default_value_t = 15_000)]
    pub connections: usize,
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    /// Seconds to hold the joined connections before measuring the server's RSS.
    #[arg(long, default_value_t = 5)]
    pub hold_secs: u64,
}

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Fanout {
    #[arg(long, default_value_t = 2_000)]
    pub connections: usize,
    #[arg(long, default_value_t = 10)]
    pub channels: usize,
    #[arg(long, default_value_t = 100)]
    pub senders: usize,
    /// Offered deliveries per second; repeat for several rounds on the same connections.
    #[arg(long = "rate", default_values_t = [40_000.0, 100_000.0])]
    pub rates: Vec<f64>,
    /// Seconds of sending per round.
    #[arg(long, default_value_t = 10)]
    pub duration_secs: u64,
    /// Longest wait for stragglers after each round's last send.
    #[arg(long, default_value_t = 5)]
    pub drain_secs: u64,
}

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Saturate {
    #[arg(long, default_value_t = 2_000)]
    pub connections: usize,
    #[arg(long, default_value_t = 10)]
    pub channels: usize,
    #[arg(long, default_value_t = 100)]
    pub senders: usize,
    /// First offered deliveries/s.
    #[arg(long, default_value_t = 20_000.0)]
    pub start: f64,
    /// Each step offers this factor more.
    #[arg(long, default_value_t = 1.25)]
    pub factor: f64,
    /// Never offer more than this.
    #[arg(long, default_value_t = 2_000_000.0)]
    pub max: f64,
    /// A step holds when its p99 is at most this...
    #[arg(long, default_value_t = 50.0)]
    pub p99_ms: f64,
    /// ...and at least this share of the expected deliveries arrived.
    #[arg(long, default_value_t = 0.999)]
    pub min_ratio: f64,
    /// Seconds of sending per step.
    #[arg(long, default_value_t = 5)]
    pub step_secs: u64,
    /// Longest wait for stragglers after each step.
    #[arg(long, default_value_t = 3)]
    pub drain_secs: u64,
}

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct JoinStorm {
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Presence traffic counts as quiet after this many milliseconds without any.
    #[arg(long, default_value_t = 1_000)]
    pub quiet_ms: u64,
    /// Give up on settling after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
}

impl Args {
    /// Runs the scenario on a runtime sized to this process's CPUs and prints the summary.
    pub fn run(self) -> anyhow::Result<()> {
        let threads = self
            .common
            .threads
            .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
            .unwrap_or(1);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .enable_all()
            .build()?;
        let json_out = self.common.json_out.clone();
        let report = runtime.block_on(run::run(self.common, self.scenario))?;
        let json = serde_json::to_string_pretty(&report)?;
        println!("{json}");
        if let Some(path) = json_out {
            std::fs::write(path, format!("{json}\n"))?;
        }
        // Connection tasks that did not close in time are dropped with the runtime.
        runtime.shutdown_timeout(std::time::Duration::from_secs(1));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fanout_defaults_are_scenario_two() {
        let a = Args::try_parse_from(["live-bench", "fanout"]).expect("parses");
        let Scenario::Fanout(f) = a.scenario else {
            panic!("not fanout");
        };
        assert_eq!((f.connections, f.channels, f.senders), (2_000, 10, 100));
        assert_eq!(f.rates, [40_000.0, 100_000.0]);
    }

    #[test]
    fn common_flags_may_follow_the_subcommand() {
        let a = Args::try_parse_from([
            "live-bench",
            "idle",
            "--server-pid",
            "42",
            "--jwt-secret",
            "s",
            "--connections",
            "10",
        ])
        .expect("parses");
        assert_eq!(a.common.server_pid, Some(42));
        assert_eq!(a.common.jwt_secret.as_deref(), Some("s"));
        assert!(matches!(
            a.scenario,
            Scenario::Idle(Idle {
                connections: 10,
                ..
            })
        ));
    }

    #[test]
    fn repeated_rates_replace_the_default_rounds() {
        let a = Args::try_parse_from(["live-bench", "fanout", "--rate", "200000"]).expect("parses");
        let Scenario::Fanout(f) = a.scenario else {
            panic!("not fanout");
        };
        assert_eq!(f.rates, [200_000.0]);
    }
}
