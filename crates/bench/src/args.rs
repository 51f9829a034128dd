//! The command line: flags shared by every scenario, one subcommand per scenario, and the
//! runtime that runs it. Each scenario's defaults are the figures, so the bare
//! subcommand is the documented run.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::replicas::Placement;
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
    /// Gateway public address (loopback). Repeat for several replicas of one deployment:
    /// connections are placed on them by `--placement`.
    #[arg(long = "server", global = true, default_value = "127.0.0.1:3000")]
    pub servers: Vec<SocketAddr>,

    /// With several `--server`s: `by-channel` puts all members of a channel on one replica
    /// (sticky sessions), `spread` spreads every channel's members over all replicas.
    #[arg(long, global = true, value_enum, default_value_t = Placement::ByChannel)]
    pub placement: Placement,

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

    /// The gateway's pid: enables server RSS per connection and CPU per delivery. Repeat for
    /// every process the deployment runs (each gateway replica, redis-server): CPU is summed
    /// over all of them; RSS is the first one's.
    #[arg(long = "server-pid", global = true)]
    pub server_pids: Vec<u32>,

    /// A Redis server the gateways use (repeat for every node): each round reports the Redis
    /// network bytes it cost (`INFO stats` counters), in total and per delivery.
    #[arg(long = "redis", global = true)]
    pub redis: Vec<SocketAddr>,

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

    /// Switch the gateway's channel history on or off before the run, by rewriting
    /// `history.maxItems` in its hot-reloaded config file (`--gateway-config`); the run starts
    /// once a probe sees the gateway do it. Without it, the report still says which was measured.
    #[arg(long, global = true, value_enum, requires = "gateway_config")]
    pub history: Option<crate::history::Switch>,

    /// The config file the gateway runs with (`live-gateway --config FILE`).
    #[arg(long, global = true)]
    pub gateway_config: Option<PathBuf>,
}

impl Common {
    /// The first (or only) `--server`.
    pub fn server(&self) -> SocketAddr {
        self.servers
            .first()
            .copied()
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 3000)))
    }

    /// The first (or only) `--server-pid`: the process whose RSS is reported.
    pub fn server_pid(&self) -> Option<u32> {
        self.server_pids.first().copied()
    }
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
    /// Abuse: each attack of issue 11 for a bounded time while honest members chat; the
    /// server's RSS growth and the honest members' p99 and delivery ratio per attack.
    Abuse(crate::abuse::Abuse),
    /// Recovery: viewers of one channel drop at once, chat goes on for a gap, they reconnect
    /// and recover it; time until all recovered and items per viewer.
    Recover(Recover),
    /// Reconnect storm: joined viewers are cut at once (a drained gateway or a client-side
    /// abort) and reconnect; time until all rejoined, presence traffic, and the latency an
    /// unaffected channel sees meanwhile.
    ReconnectStorm(crate::reconnect_storm::ReconnectStorm),
}

/// How recovering viewers get what they missed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// Socket.IO Connection State Recovery (`pid` and `offset` in the reconnect's auth): what
    /// the stock client does.
    Csr,
    /// A fresh connection and `join {channelName, since}`.
    Join,
}

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Recover {
    /// Viewers of the one channel.
    #[arg(long, default_value_t = 1_000)]
    pub viewers: usize,
    /// Seconds between the drop and the reconnect.
    #[arg(long, default_value_t = 5)]
    pub gap_secs: u64,
    /// Chat messages per second into the channel, from one sender, before, during and after
    /// the gap.
    #[arg(long, default_value_t = 20.0)]
    pub rate: f64,
    #[arg(long, value_enum, default_value_t = Via::Csr)]
    pub via: Via,
    /// Reconnect to this gateway instead (another replica on the same Redis), as a load
    /// balancer may send a reconnection elsewhere.
    #[arg(long)]
    pub reconnect_server: Option<SocketAddr>,
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
        let report = runtime.block_on(async {
            let history = history_for_run(&self.common).await?;
            let mut report = match &self.scenario {
                Scenario::Recover(a) => crate::recover::run(&self.common, a).await?,
                scenario => {
                    serde_json::to_value(run::run(self.common.clone(), scenario.clone()).await?)?
                }
            };
            report["history"] = serde_json::json!(history);
            anyhow::Ok(report)
        })?;
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

/// Switches history when asked, then reports what the gateway does: `on`, `off`, or `unknown`
/// when the probe could not tell (a failed switch stops the run instead).
async fn history_for_run(common: &Common) -> anyhow::Result<&'static str> {
    let secret = common
        .jwt_secret
        .as_deref()
        .ok_or_else(|| anyhow::anyhow!("--jwt-secret (or JWT_SECRET) is required"))?;
    let exp = crate::client::unix_micros() / 1_000_000 + 3600;
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"userId": "lb-probe", "username": "lb-probe", "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?;
    let endpoint = crate::history::Endpoint {
        server: common.server(),
        url: format!(
            "ws://{}{}/?EIO=4&transport=websocket",
            common.server(),
            common.path.trim_end_matches('/')
        ),
        namespace: common.namespace.clone(),
        connect_timeout: std::time::Duration::from_secs(common.connect_timeout_secs),
    };
    let channel = format!("{}-probe", common.channel_prefix);
    if let (Some(switch), Some(config)) = (common.history, &common.gateway_config) {
        crate::history::switch(config, switch, &endpoint, &token, &channel).await?;
        eprintln!("history {switch:?}: confirmed by a probe");
    }
    Ok(
        match crate::history::probe(&endpoint, &token, &channel).await {
            Ok(true) => "on",
            Ok(false) => "off",
            Err(e) => {
                eprintln!("history probe failed: {e:#}");
                "unknown"
            }
        },
    )
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
        assert_eq!(a.common.server_pid(), Some(42));
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
    fn the_recover_defaults_are_a_thousand_viewers_and_a_five_second_gap() {
        let a = Args::try_parse_from(["live-bench", "recover"]).expect("parses");
        let Scenario::Recover(r) = a.scenario else {
            panic!("not recover");
        };
        assert_eq!((r.viewers, r.gap_secs, r.via), (1_000, 5, Via::Csr));
        let a = Args::try_parse_from(["live-bench", "recover", "--via", "join"]).expect("parses");
        assert!(matches!(
            a.scenario,
            Scenario::Recover(Recover { via: Via::Join, .. })
        ));
    }

    #[test]
    fn history_can_be_switched_for_any_scenario_given_the_gateway_config() {
        let a = Args::try_parse_from([
            "live-bench",
            "fanout",
            "--history",
            "off",
            "--gateway-config",
            "/tmp/g.yaml",
        ])
        .expect("parses");
        assert_eq!(a.common.history, Some(crate::history::Switch::Off));
        assert!(Args::try_parse_from(["live-bench", "idle", "--history", "on"]).is_err());
    }

    #[test]
    fn several_servers_pids_and_redis_nodes_make_a_multi_replica_run() {
        let a = Args::try_parse_from([
            "live-bench",
            "fanout",
            "--server",
            "127.0.0.1:3001",
            "--server",
            "127.0.0.1:3002",
            "--server-pid",
            "1",
            "--server-pid",
            "2",
            "--redis",
            "127.0.0.1:6379",
            "--placement",
            "spread",
        ])
        .expect("parses");
        assert_eq!(a.common.servers.len(), 2);
        assert_eq!(a.common.server().port(), 3001);
        assert_eq!(a.common.server_pids, [1, 2]);
        assert_eq!(a.common.redis.len(), 1);
        assert_eq!(a.common.placement, Placement::Spread);
        let one = Args::try_parse_from(["live-bench", "idle"]).expect("parses");
        assert_eq!(
            one.common.servers,
            [SocketAddr::from(([127, 0, 0, 1], 3000))]
        );
        assert_eq!(one.common.placement, Placement::ByChannel);
        assert!(one.common.redis.is_empty());
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
