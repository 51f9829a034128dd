//! The scenarios: start the connections, walk them through their phases with one `watch`
//! channel of commands, print progress on stderr once a second, and collect the report.
//!
//! Every wait is bounded by `--phase-timeout-secs` (or the scenario's own timeout), so a run
//! always ends, and the connections are closed before returning.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::args::{self, Common, Scenario};
use crate::client::{self, Command, Counters, Shared, Spec, Target};
use crate::plan::{self, Plan};
use crate::procfs;
use crate::redis_stats;
use crate::replicas;
use crate::report::{self, Report};
use crate::search::{Limits, Next, StepUp};
use crate::stats;

/// How often waits look at the counters.
const POLL: Duration = Duration::from_millis(50);
/// How long a bench token stays valid.
const TOKEN_LIFETIME_SECS: u64 = 24 * 3600;

/// Runs one scenario to its report.
pub async fn run(common: Common, scenario: Scenario) -> anyhow::Result<Report> {
    let cpu_start = procfs::read_cpu_ticks(None).unwrap_or(0);
    let replicas = common.servers.len();
    let placement = common.placement;
    let mut report = match &scenario {
        Scenario::Idle(a) => idle(&common, a).await?,
        Scenario::Fanout(a) => fanout(&common, a).await?,
        Scenario::Saturate(a) => saturate(&common, a).await?,
        Scenario::JoinStorm(a) => join_storm(&common, a).await?,
        Scenario::Abuse(a) => crate::abuse::run(&common, a).await?,
        Scenario::Recover(_) => anyhow::bail!("the recover scenario runs in recover::run"),
        Scenario::ReconnectStorm(a) => crate::reconnect_storm::run(&common, a).await?,
    };
    report.replicas = replicas;
    report.placement = placement;
    report.bench_cpu_seconds = procfs::ticks_to_secs(
        procfs::read_cpu_ticks(None)
            .unwrap_or(0)
            .saturating_sub(cpu_start),
    );
    Ok(report)
}

async fn idle(common: &Common, a: &args::Idle) -> anyhow::Result<Report> {
    let plan = Plan::new(a.connections, a.channels, 0)?;
    let mut h = Harness::start(common, plan, true, "idle")?;
    h.wait_connected().await;
    h.wait(
        &format!("hold {}s", a.hold_secs),
        Duration::from_secs(a.hold_secs),
        |_| false,
    )
    .await;
    let server = h.server_memory();
    Ok(h.finish(params(a), server, Vec::new()).await)
}

async fn fanout(common: &Common, a: &args::Fanout) -> anyhow::Result<Report> {
    let plan = Plan::new(a.connections, a.channels, a.senders)?;
    let mut h = Harness::start(common, plan, true, "fanout")?;
    h.wait_connected().await;
    let server = h.server_memory();
    let mut rounds = Vec::new();
    for (i, &rate) in a.rates.iter().enumerate() {
        let round = h
            .round(
                i as u32,
                rate,
                Duration::from_secs(a.duration_secs),
                Duration::from_secs(a.drain_secs),
            )
            .await;
        eprintln!("{}", round_line(&round));
        rounds.push(round);
    }
    Ok(h.finish(params(a), server, rounds).await)
}

async fn saturate(common: &Common, a: &args::Saturate) -> anyhow::Result<Report> {
    let plan = Plan::new(a.connections, a.channels, a.senders)?;
    let mut h = Harness::start(common, plan, true, "saturate")?;
    h.wait_connected().await;
    let server = h.server_memory();
    let limits = Limits {
        p99_ms: a.p99_ms,
        min_delivery_ratio: a.min_ratio,
    };
    let mut search = StepUp::new(a.factor, a.max, limits);
    let mut rounds = Vec::new();
    let mut rate = a.start;
    let stopped_because = loop {
        let round = h
            .round(
                rounds.len() as u32,
                rate,
                Duration::from_secs(a.step_secs),
                Duration::from_secs(a.drain_secs),
            )
            .await;
        eprintln!("{}", round_line(&round));
        let next = search.after(
            rate,
            round.deliveries_per_sec,
            round.latency.p99_ms,
            round.delivery_ratio,
        );
        rounds.push(round);
        match next {
            Next::Step(r) => rate = r,
            Next::Stop(why) => break why,
        }
    };
    let mut report = h.finish(params(a), server, rounds).await;
    report.saturation = Some(report::Saturation {
        p99_limit_ms: a.p99_ms,
        min_delivery_ratio: a.min_ratio,
        best_offered_deliveries_per_sec: search.best.map(|b| b.0),
        best_deliveries_per_sec: search.best.map(|b| b.1),
        stopped_because,
    });
    Ok(report)
}

async fn join_storm(common: &Common, a: &args::JoinStorm) -> anyhow::Result<Report> {
    let plan = Plan::new(a.connections, 1, 0)?;
    let mut h = Harness::start(common, plan, false, "join-storm")?;
    h.wait_connected().await;
    let server = h.server_memory();
    let cpu_before = h.server_cpu_ticks();
    let start = h.shared.origin.elapsed();
    h.command(Command::Join);
    let timeout = Duration::from_secs(a.timeout_secs);
    let connected = h.counters().connected.load(Ordering::Relaxed);
    let lost_before = h.counters().disconnected.load(Ordering::Relaxed);
    let all_joined = h
        .wait("storm: joining", timeout, |c| {
            c.joined.load(Ordering::Relaxed)
                + c.join_failed.load(Ordering::Relaxed)
                + c.lost_before_join.load(Ordering::Relaxed)
                >= connected
        })
        .await
        .then(|| h.shared.origin.elapsed().saturating_sub(start));
    let quiet = Duration::from_millis(a.quiet_ms);
    let remaining = timeout.saturating_sub(h.shared.origin.elapsed().saturating_sub(start));
    let origin = h.shared.origin;
    let quieted = all_joined.is_some()
        && h.wait("storm: settling", remaining, |c| {
            let last = Duration::from_micros(c.last_presence_micros.load(Ordering::Relaxed));
            origin.elapsed().saturating_sub(last) >= quiet
        })
        .await;
    let last_presence =
        Duration::from_micros(h.counters().last_presence_micros.load(Ordering::Relaxed));
    let quiet_seconds = quieted.then(|| {
        last_presence
            .saturating_sub(start)
            .max(all_joined.unwrap_or_default())
            .as_secs_f64()
    });
    let lost_connections = h.counters().disconnected.load(Ordering::Relaxed) - lost_before;
    // A room that went quiet because the server dropped its members has not settled.
    let settled = quieted && lost_connections == 0;
    let server_cpu_seconds = h.server_cpu_seconds_since(cpu_before);
    let joins = h.counters().joined.load(Ordering::Relaxed);
    let storm = report::JoinStorm {
        joins,
        all_joined_seconds: all_joined.map(|d| d.as_secs_f64()),
        quiet_seconds,
        settle_seconds: quiet_seconds.filter(|_| settled),
        settled,
        lost_connections,
        presence_events: h.counters().presence_events.load(Ordering::Relaxed),
        expected_presence_events: report::storm_presence_events(joins),
        server_cpu_seconds,
    };
    let mut report = h.finish(params(a), server, Vec::new()).await;
    report.join_storm = Some(storm);
    Ok(report)
}

fn params<T: Serialize>(a: &T) -> serde_json::Value {
    serde_json::to_value(a).unwrap_or_default()
}

fn round_line(r: &report::Round) -> String {
    format!(
        "round: offered {:.0}/s -> {:.0} deliveries/s, ratio {:.4}, p50 {:.2} ms p99 {:.2} ms p99.9 {:.2} ms max {:.2} ms, server {} us/delivery, other cpu {:.2}s (niced {:.2}s), load {:.2}",
        r.offered_deliveries_per_sec,
        r.deliveries_per_sec,
        r.delivery_ratio,
        r.latency.p50_ms,
        r.latency.p99_ms,
        r.latency.p999_ms,
        r.latency.max_ms,
        r.server_cpu_us_per_delivery
            .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.2}")),
        r.other_cpu_seconds.unwrap_or(f64::NAN),
        r.niced_cpu_seconds.unwrap_or(f64::NAN),
        r.loadavg_1m.unwrap_or(f64::NAN),
    ) + &r.redis.as_ref().map_or_else(String::new, |t| {
        format!(
            ", redis {} B/delivery ({} B out)",
            t.bytes_per_delivery
                .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1}")),
            t.output_bytes_per_delivery
                .map_or_else(|| "n/a".to_owned(), |v| format!("{v:.1}")),
        )
    })
}

#[derive(Serialize)]
struct TokenClaims<'a> {
    #[serde(rename = "userId")]
    user_id: &'a str,
    username: &'a str,
    exp: u64,
}

/// The running connections of one scenario.
pub(crate) struct Harness {
    scenario: &'static str,
    shared: Arc<Shared>,
    /// One channel to every connection: a `watch` because a connection only ever needs the
    /// latest phase, and one that was busy connecting catches up when it looks.
    commands: watch::Sender<Command>,
    /// The connection tasks. Shared with the spawner task, which fills it while the
    /// orchestrator prints progress; an async mutex because `finish` holds it across the
    /// awaits that collect the closing tasks.
    tasks: Arc<tokio::sync::Mutex<JoinSet<()>>>,
    plan: Plan,
    join_on_connect: bool,
    /// The first `--server-pid`, whose RSS is reported.
    server_pid: Option<u32>,
    /// Every `--server-pid`: CPU is summed over them.
    server_pids: Vec<u32>,
    /// Every `--redis` node, for the network byte counters.
    redis: Vec<std::net::SocketAddr>,
    rss_before_kb: Option<u64>,
    phase_timeout: Duration,
    connect_started: Instant,
    all_connected: Option<Duration>,
    all_joined: Option<Duration>,
    progress: Progress,
}

impl Harness {
    /// Reads the server's RSS, then spawns every connection; handshakes are limited to
    /// `--connect-concurrency` in flight.
    pub(crate) fn start(
        common: &Common,
        plan: Plan,
        join_on_connect: bool,
        scenario: &'static str,
    ) -> anyhow::Result<Self> {
        let secret = common
            .jwt_secret
            .as_deref()
            .context("--jwt-secret (or JWT_SECRET) is required")?;
        let rss_before_kb = match common.server_pid() {
            Some(pid) => Some(
                procfs::read_rss_kb(Some(pid))
                    .with_context(|| format!("reading /proc/{pid}/status"))?,
            ),
            None => None,
        };
        let shared = Arc::new(Shared::new(plan.channels)?);
        let targets: Vec<Arc<Target>> = common
            .servers
            .iter()
            .map(|&server| {
                Arc::new(Target {
                    server,
                    url: format!(
                        "ws://{}{}/?EIO=4&transport=websocket",
                        server,
                        common.path.trim_end_matches('/')
                    ),
                    namespace: common.namespace.clone(),
                    connect_timeout: Duration::from_secs(common.connect_timeout_secs),
                })
            })
            .collect();
        anyhow::ensure!(!targets.is_empty(), "at least one --server is needed");
        let key = EncodingKey::from_secret(secret.as_bytes());
        let header = Header::new(Algorithm::HS256);
        let exp = client::unix_micros() / 1_000_000 + TOKEN_LIFETIME_SECS;
        let mut specs = Vec::with_capacity(plan.connections);
        for conn in 0..plan.connections {
            let user = plan::user_id(conn);
            let claims = TokenClaims {
                user_id: &user,
                username: &user,
                exp,
            };
            let channel_index = plan.channel_of(conn);
            let replica =
                replicas::replica_of(conn, plan.channels, targets.len(), common.placement);
            specs.push((
                replica,
                Spec {
                    token: jsonwebtoken::encode(&header, &claims, &key)?,
                    source: plan::source_addr(conn, common.source_ips),
                    channel: plan::channel_name(&common.channel_prefix, channel_index),
                    channel_index,
                    sender: plan.sender_of(conn).map(|s| (s, plan.senders)),
                    join_on_connect,
                },
            ));
        }
        let (commands, rx) = watch::channel(Command::Hold);
        let tasks = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
        let limit = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
        let spawner_tasks = Arc::clone(&tasks);
        let spawner_shared = Arc::clone(&shared);
        // The spawner runs beside the orchestrator so progress prints while connecting.
        tokio::spawn(async move {
            for (replica, spec) in specs {
                let Ok(permit) = Arc::clone(&limit).acquire_owned().await else {
                    return;
                };
                let fut = client::run(
                    spec,
                    Arc::clone(&targets[replica]),
                    Arc::clone(&spawner_shared),
                    rx.clone(),
                    permit,
                );
                spawner_tasks.lock().await.spawn(fut);
            }
        });
        Ok(Self {
            scenario,
            shared,
            commands,
            tasks,
            plan,
            join_on_connect,
            server_pid: common.server_pid(),
            server_pids: common.server_pids.clone(),
            redis: common.redis.clone(),
            rss_before_kb,
            phase_timeout: Duration::from_secs(common.phase_timeout_secs),
            connect_started: Instant::now(),
            all_connected: None,
            all_joined: None,
            progress: Progress::new(),
        })
    }

    fn counters(&self) -> &Counters {
        &self.shared.counters
    }

    fn command(&self, cmd: Command) {
        // Only fails when every connection has ended, and then there is no one to tell.
        let _ = self.commands.send(cmd);
    }

    /// Waits until every connection is connected or failed and, when joining on connect, has
    /// its join answered (or was lost).
    pub(crate) async fn wait_connected(&mut self) {
        let n = self.plan.connections as u64;
        if self
            .wait("connecting", self.phase_timeout, |c| {
                c.connected.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed) >= n
            })
            .await
        {
            self.all_connected = Some(self.connect_started.elapsed());
        }
        if self.join_on_connect
            && self
                .wait("joining", self.phase_timeout, |c| {
                    c.joined.load(Ordering::Relaxed)
                        + c.join_failed.load(Ordering::Relaxed)
                        + c.lost_before_join.load(Ordering::Relaxed)
                        >= c.connected.load(Ordering::Relaxed)
                })
                .await
        {
            self.all_joined = Some(self.connect_started.elapsed());
        }
    }

    /// Waits until `done` or `timeout`, printing progress once a second. True when `done`.
    async fn wait(
        &mut self,
        phase: &str,
        timeout: Duration,
        done: impl Fn(&Counters) -> bool,
    ) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if done(&self.shared.counters) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            self.progress
                .maybe_print(self.scenario, phase, &self.shared);
            tokio::time::sleep(POLL).await;
        }
    }

    /// CPU ticks summed over every `--server-pid`; `None` without any, or when one cannot be
    /// read (a sum missing a process would understate the cost).
    fn server_cpu_ticks(&self) -> Option<u64> {
        if self.server_pids.is_empty() {
            return None;
        }
        self.server_pids
            .iter()
            .map(|&pid| procfs::read_cpu_ticks(Some(pid)).ok())
            .sum()
    }

    /// Redis's network byte counters, with `--redis`; a failed read is reported once per round
    /// and leaves the round without Redis figures.
    async fn redis_bytes(&self) -> Option<redis_stats::NetBytes> {
        if self.redis.is_empty() {
            return None;
        }
        match redis_stats::read(&self.redis).await {
            Ok(b) => Some(b),
            Err(e) => {
                eprintln!("redis INFO stats: {e:#}");
                None
            }
        }
    }

    fn server_cpu_seconds_since(&self, before: Option<u64>) -> Option<f64> {
        let (before, after) = (before?, self.server_cpu_ticks()?);
        Some(procfs::ticks_to_secs(after.saturating_sub(before)))
    }

    pub(crate) fn server_memory(&self) -> Option<report::ServerMemory> {
        let pid = self.server_pid?;
        let before = self.rss_before_kb?;
        let after = procfs::read_rss_kb(Some(pid)).ok()?;
        let established = self.counters().connected.load(Ordering::Relaxed);
        Some(report::ServerMemory {
            pid,
            rss_before_kb: before,
            rss_after_kb: after,
            rss_per_connection_bytes: report::rss_per_connection_bytes(before, after, established),
        })
    }

    /// One sending round at `rate` offered deliveries/s: send for `duration`, then wait up to
    /// `drain` for the expected deliveries. Server CPU is measured over both.
    pub(crate) async fn round(
        &mut self,
        round: u32,
        rate: f64,
        duration: Duration,
        drain: Duration,
    ) -> report::Round {
        let fanouts: Vec<usize> = (0..self.plan.senders)
            .map(|s| self.shared.members[self.plan.channel_of(s)].load(Ordering::Relaxed) as usize)
            .collect();
        let messages_per_sec = plan::message_rate(rate, &fanouts);
        let per_sender = messages_per_sec / self.plan.senders.max(1) as f64;
        let c = self.counters();
        let (sent0, exp0, del0) = (
            c.sent.load(Ordering::Relaxed),
            c.expected.load(Ordering::Relaxed),
            c.deliveries.load(Ordering::Relaxed),
        );
        if let Ok(mut h) = self.shared.latency.lock() {
            h.reset();
        }
        let cpu0 = self.server_cpu_ticks();
        let redis0 = self.redis_bytes().await;
        let bench0 = procfs::read_cpu_ticks(None).unwrap_or(0);
        let host0 = procfs::read_host_cpu().ok();
        let started = Instant::now();
        self.command(Command::Send {
            round,
            per_sender_rate: per_sender,
            start: started + Duration::from_millis(10),
        });
        let phase = format!("round {round}: {rate:.0}/s");
        self.wait(&phase, duration, |_| false).await;
        self.command(Command::Quiet);
        let send_seconds = started.elapsed().as_secs_f64();
        self.wait(&format!("{phase} drain"), drain, |c| {
            c.deliveries.load(Ordering::Relaxed) - del0 >= c.expected.load(Ordering::Relaxed) - exp0
        })
        .await;
        let measured = started.elapsed().as_secs_f64();
        let server_cpu_seconds = self.server_cpu_seconds_since(cpu0);
        let redis1 = self.redis_bytes().await;
        let bench_ticks = procfs::read_cpu_ticks(None)
            .unwrap_or(0)
            .saturating_sub(bench0);
        let bench_cpu = procfs::ticks_to_secs(bench_ticks);
        let host = host0
            .zip(procfs::read_host_cpu().ok())
            .map(|(before, after)| after.since(before));
        let other_cpu_seconds = host.map(|h| {
            let others = procfs::ticks_to_secs(h.busy) - bench_cpu;
            (others - server_cpu_seconds.unwrap_or(0.0)).max(0.0)
        });
        let c = self.counters();
        let sent = c.sent.load(Ordering::Relaxed) - sent0;
        let expected = c.expected.load(Ordering::Relaxed) - exp0;
        let deliveries = c.deliveries.load(Ordering::Relaxed) - del0;
        let latency = self
            .shared
            .latency
            .lock()
            .map(|h| stats::summarize(&h))
            .unwrap_or_default();
        report::Round {
            offered_deliveries_per_sec: rate,
            offered_messages_per_sec: messages_per_sec,
            send_seconds,
            measured_seconds: measured,
            messages_sent: sent,
            deliveries,
            expected_deliveries: expected,
            delivery_ratio: report::ratio(deliveries, expected),
            deliveries_per_sec: deliveries as f64 / send_seconds.max(1e-9),
            latency,
            server_cpu_seconds,
            server_cpu_us_per_delivery: server_cpu_seconds
                .and_then(|s| report::cpu_us_per_delivery(s, deliveries)),
            bench_cpu_seconds: bench_cpu,
            other_cpu_seconds,
            niced_cpu_seconds: host.map(|h| procfs::ticks_to_secs(h.niced)),
            irq_cpu_seconds: host.map(|h| procfs::ticks_to_secs(h.irq)),
            loadavg_1m: procfs::read_loadavg_1m().ok(),
            redis: redis0
                .zip(redis1)
                .map(|(before, after)| report::RedisTraffic::new(after.since(before), deliveries)),
        }
    }

    /// Closes every connection (bounded wait) and assembles the report.
    pub(crate) async fn finish(
        self,
        parameters: serde_json::Value,
        server: Option<report::ServerMemory>,
        rounds: Vec<report::Round>,
    ) -> Report {
        let c = &self.shared.counters;
        let connect_time = self
            .shared
            .connect_time
            .lock()
            .map(|h| stats::summarize(&h))
            .unwrap_or_default();
        let connections = report::Connections {
            attempted: self.plan.connections as u64,
            established: c.connected.load(Ordering::Relaxed),
            failed: c.failed.load(Ordering::Relaxed),
            joined: c.joined.load(Ordering::Relaxed),
            join_failed: c.join_failed.load(Ordering::Relaxed),
            join_retries: c.join_retries.load(Ordering::Relaxed),
            lost: c.disconnected.load(Ordering::Relaxed),
            all_connected_seconds: self.all_connected.map(|d| d.as_secs_f64()),
            all_joined_seconds: self.all_joined.map(|d| d.as_secs_f64()),
            connect_time,
        };
        let bench_rss_kb = procfs::read_rss_kb(None).unwrap_or(0);
        self.command(Command::Close);
        let mut tasks = self.tasks.lock().await;
        let closing = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(10), closing)
            .await
            .is_err()
        {
            tasks.abort_all();
        }
        Report {
            scenario: self.scenario,
            parameters,
            connections,
            server,
            rounds,
            saturation: None,
            join_storm: None,
            abuse: None,
            replicas: 0,
            placement: replicas::Placement::default(),
            reconnect_storm: None,
            bench_cpu_seconds: 0.0,
            bench_rss_kb,
        }
    }
}

/// The once-a-second progress line on stderr.
struct Progress {
    started: Instant,
    last: Instant,
    last_deliveries: u64,
    last_presence: u64,
}

impl Progress {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: now,
            last_deliveries: 0,
            last_presence: 0,
        }
    }

    fn maybe_print(&mut self, scenario: &str, phase: &str, shared: &Shared) {
        let elapsed = self.last.elapsed();
        if elapsed < Duration::from_secs(1) {
            return;
        }
        let c = &shared.counters;
        let deliveries = c.deliveries.load(Ordering::Relaxed);
        let presence = c.presence_events.load(Ordering::Relaxed);
        let secs = elapsed.as_secs_f64();
        eprintln!(
            "[{:>5.1}s] {scenario} {phase} | conns {} failed {} joined {} (retries {}) lost {} | sent {} | deliveries {} ({:.0}/s) | presence {} ({:.0}/s)",
            self.started.elapsed().as_secs_f64(),
            c.connected.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
            c.joined.load(Ordering::Relaxed),
            c.join_retries.load(Ordering::Relaxed),
            c.disconnected.load(Ordering::Relaxed),
            c.sent.load(Ordering::Relaxed),
            deliveries,
            (deliveries - self.last_deliveries) as f64 / secs,
            presence,
            (presence - self.last_presence) as f64 / secs,
        );
        self.last = Instant::now();
        self.last_deliveries = deliveries;
        self.last_presence = presence;
    }
}
