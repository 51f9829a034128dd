//! `reconnect-storm`: many joined viewers lose their connections at once and come back.
//!
//! N clients connect and join C channels. Then every connection is cut at once, either by the
//! gateway's drain path (`--cut drain`: SIGTERM to `--drain-pid`, a gateway started with
//! `--drain-seconds 0`, while the clients reconnect to a second gateway, `--reconnect-server`:
//! a pod drained behind a Service) or by the clients themselves (`--cut abort`: each drops its
//! TCP connection without a WebSocket or Engine.IO close, as a network blip or a killed app
//! does). Each client then waits a randomized delay, as socket.io-client does before its first
//! reconnection attempt (`--reconnect-delay-ms` ± `--reconnect-jitter`), reconnects with at most
//! `--reconnect-concurrency` handshakes in flight and joins its channel again.
//!
//! Meanwhile an unaffected channel on the reconnect server (`--unaffected-members` clients, of
//! which `--unaffected-senders` chat at `--unaffected-rate` deliveries/s) measures the latency
//! other viewers see: before the cut (the baseline) and from the cut until the storm settles.
//!
//! Reported: the time from the cut until every client had rejoined, each client's time from
//! losing its connection to rejoining, the presence and system events delivered while the
//! storm settled, the unaffected channel's latency and delivery ratio in both windows, and the
//! reconnect server's CPU over the storm (`--server-pid`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{SinkExt, StreamExt};
use hdrhistogram::Histogram;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::args::Common;
use crate::client::{self, Command, Shared, Spec, Target, Ws};
use crate::engineio::{self, Packet};
use crate::plan;
use crate::procfs;
use crate::report::{self, Report};
use crate::stats::{self, Percentiles};

/// socket.io-client never waits longer than this between reconnection attempts
/// (`reconnectionDelayMax`).
const MAX_RECONNECT_DELAY: Duration = Duration::from_secs(5);
/// Ack id of a storm client's join.
const JOIN_ACK_ID: u64 = 7;
/// How often the orchestrator looks at the counters.
const POLL: Duration = Duration::from_millis(20);
/// How long a bench token stays valid.
const TOKEN_LIFETIME_SECS: u64 = 24 * 3600;

/// How the connections are cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Cut {
    /// SIGTERM to `--drain-pid`: the gateway's drain closes every connection.
    Drain,
    /// The clients drop their TCP connections.
    Abort,
}

#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ReconnectStorm {
    /// Clients that are cut and reconnect.
    #[arg(long, default_value_t = 15_000)]
    pub connections: usize,
    #[arg(long, default_value_t = 100)]
    pub channels: usize,
    #[arg(long, value_enum, default_value_t = Cut::Abort)]
    pub cut: Cut,
    /// The gateway to drain with SIGTERM (`--cut drain`); the clients start on `--server`.
    #[arg(long)]
    pub drain_pid: Option<u32>,
    /// Where the clients reconnect, and where the unaffected channel lives. Defaults to
    /// `--server`; with `--cut drain` it is the gateway that stays up.
    #[arg(long)]
    pub reconnect_server: Option<SocketAddr>,
    /// Reconnection handshakes (connect and join) in flight at once.
    #[arg(long, default_value_t = 256)]
    pub reconnect_concurrency: usize,
    /// Delay before a client's first reconnection attempt, doubled for each further attempt
    /// up to 5 s (socket.io-client's `reconnectionDelay`).
    #[arg(long, default_value_t = 1_000)]
    pub reconnect_delay_ms: u64,
    /// Randomization of each delay, ± this fraction (socket.io-client's `randomizationFactor`).
    #[arg(long, default_value_t = 0.5)]
    pub reconnect_jitter: f64,
    /// Members of the unaffected channel.
    #[arg(long, default_value_t = 100)]
    pub unaffected_members: usize,
    /// Of which this many chat.
    #[arg(long, default_value_t = 10)]
    pub unaffected_senders: usize,
    /// Deliveries per second offered in the unaffected channel.
    #[arg(long, default_value_t = 2_000.0)]
    pub unaffected_rate: f64,
    /// Seconds of unaffected traffic measured before the cut.
    #[arg(long, default_value_t = 5)]
    pub baseline_secs: u64,
    /// The storm has settled once every client rejoined and no presence or system event
    /// arrived for this long.
    #[arg(long, default_value_t = 1_000)]
    pub quiet_ms: u64,
    /// Give up on the storm settling after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
}

/// What the storm measured.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub cut: Cut,
    /// Clients joined before the cut.
    pub joined: u64,
    /// Clients whose connection ended after the cut.
    pub cut_connections: u64,
    /// Clients lost before the cut (not part of the storm).
    pub lost_before_cut: u64,
    pub rejoined: u64,
    /// From the cut until the last client saw its connection end.
    pub all_cut_seconds: Option<f64>,
    /// From the cut until the last client had rejoined its channel.
    pub all_rejoined_seconds: Option<f64>,
    /// Per client: from losing its connection to having rejoined (its delay included).
    pub rejoin_after_loss: Percentiles,
    /// Per client: from its first reconnection attempt to having rejoined (the server's share).
    pub rejoin_after_attempt: Percentiles,
    pub reconnect_attempts: u64,
    pub reconnect_failures: u64,
    /// From the cut until every client had rejoined and presence traffic was quiet.
    pub settled_seconds: Option<f64>,
    /// presence:update and system:event frames the storm clients received from the cut until
    /// settled.
    pub presence_events: u64,
    /// The same, received by the unaffected channel's members (their channel does not change,
    /// so this should be zero).
    pub unaffected_presence_events: u64,
    /// What announcing every leave and join to every member would have sent: for each channel
    /// of m members, 2·m(m−1)/2 on the way out (with `--cut abort`) and 2·m(m+1)/2 on the way in.
    pub unbatched_presence_events: u64,
    pub unaffected_baseline: Window,
    pub unaffected_storm: Window,
    /// The reconnect server's CPU from the cut until settled (`--server-pid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu_seconds: Option<f64>,
}

/// The unaffected channel over one window.
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub seconds: f64,
    pub latency: Percentiles,
    pub deliveries: u64,
    pub expected_deliveries: u64,
    pub delivery_ratio: f64,
    /// Unaffected members that lost their connection by the end of the window.
    pub lost: u64,
}

/// Delay before reconnection attempt `attempt` (0 for the first): `base · 2^attempt` spread
/// uniformly over ± `jitter` by `r` ∈ [0, 1), at most [`MAX_RECONNECT_DELAY`]. Pure.
pub fn reconnect_delay(base: Duration, jitter: f64, r: f64, attempt: u32) -> Duration {
    let scaled = base.saturating_mul(1u32.checked_shl(attempt.min(16)).unwrap_or(u32::MAX));
    let factor = 1.0 + jitter.clamp(0.0, 1.0) * (2.0 * r.clamp(0.0, 1.0) - 1.0);
    scaled.mul_f64(factor).min(MAX_RECONNECT_DELAY)
}

/// Presence and system events a storm would send with every change announced to every member
/// present: leaves (when the clients' own departures are seen) and rejoins. Pure.
pub fn unbatched_presence_events(members: &[usize], with_leaves: bool) -> u64 {
    members
        .iter()
        .map(|&m| {
            let m = m as u64;
            let joins = m * (m + 1); // 2 · Σ k for k = 1..m
            let leaves = if with_leaves {
                m * m.saturating_sub(1)
            } else {
                0
            };
            joins + leaves
        })
        .sum()
}

/// Counters of the storm clients.
#[derive(Debug, Default)]
struct Counters {
    connected: AtomicU64,
    failed: AtomicU64,
    joined: AtomicU64,
    lost_before_cut: AtomicU64,
    cut: AtomicU64,
    rejoined: AtomicU64,
    attempts: AtomicU64,
    failures: AtomicU64,
    presence_events: AtomicU64,
    /// Microseconds after `origin` of the latest presence event, the latest loss and the latest
    /// rejoin.
    last_presence_micros: AtomicU64,
    last_cut_micros: AtomicU64,
    last_rejoin_micros: AtomicU64,
}

struct StormShared {
    counters: Counters,
    origin: Instant,
    /// Set when the cut is made: a connection that ends before it was lost for another reason.
    cut_started: AtomicBool,
    rejoin_after_loss: Mutex<Histogram<u64>>,
    rejoin_after_attempt: Mutex<Histogram<u64>>,
    reconnect_limit: Semaphore,
    delay: Duration,
    jitter: f64,
}

impl StormShared {
    fn micros_now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn record(&self, h: &Mutex<Histogram<u64>>, d: Duration) {
        if let Ok(mut h) = h.lock() {
            stats::record(&mut h, u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
        }
    }
}

/// Runs the scenario.
pub async fn run(common: &Common, a: &ReconnectStorm) -> anyhow::Result<Report> {
    let secret = common
        .jwt_secret
        .as_deref()
        .context("--jwt-secret (or JWT_SECRET) is required")?;
    if a.cut == Cut::Drain && a.drain_pid.is_none() {
        anyhow::bail!("--cut drain needs --drain-pid");
    }
    let storm_plan = plan::Plan::new(a.connections, a.channels, 0)?;
    let reconnect_server = a.reconnect_server.unwrap_or(common.server());
    let target = |server: SocketAddr| {
        Arc::new(Target {
            server,
            url: format!(
                "ws://{server}{}/?EIO=4&transport=websocket",
                common.path.trim_end_matches('/')
            ),
            namespace: common.namespace.clone(),
            connect_timeout: Duration::from_secs(common.connect_timeout_secs),
        })
    };
    let first = target(common.server());
    let second = target(reconnect_server);
    let tokens = Tokens::new(secret);
    let phase_timeout = Duration::from_secs(common.phase_timeout_secs);
    let connect_limit = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let mut progress = Progress::new();

    // The unaffected channel, on the reconnect server.
    let unaffected = Arc::new(Shared::new(1)?);
    let (unaffected_tx, unaffected_rx) = watch::channel(Command::Hold);
    let mut unaffected_tasks = JoinSet::new();
    let channel = format!("{}-unaffected", common.channel_prefix);
    for i in 0..a.unaffected_members {
        let conn = a.connections + i;
        let spec = Spec {
            token: tokens.token(&plan::user_id(conn))?,
            source: plan::source_addr(conn, common.source_ips),
            channel: channel.clone(),
            channel_index: 0,
            sender: (i < a.unaffected_senders).then_some((i, a.unaffected_senders)),
            join_on_connect: true,
        };
        let permit = Arc::clone(&connect_limit).acquire_owned().await?;
        unaffected_tasks.spawn(client::run(
            spec,
            Arc::clone(&second),
            Arc::clone(&unaffected),
            unaffected_rx.clone(),
            permit,
        ));
    }
    let members = a.unaffected_members as u64;
    wait(phase_timeout, || {
        let c = &unaffected.counters;
        c.joined.load(Ordering::Relaxed)
            + c.join_failed.load(Ordering::Relaxed)
            + c.failed.load(Ordering::Relaxed)
            + c.lost_before_join.load(Ordering::Relaxed)
            >= members
    })
    .await;

    // The storm clients, on the first server.
    let shared = Arc::new(StormShared {
        counters: Counters::default(),
        origin: Instant::now(),
        cut_started: AtomicBool::new(false),
        rejoin_after_loss: Mutex::new(stats::micros_histogram()?),
        rejoin_after_attempt: Mutex::new(stats::micros_histogram()?),
        reconnect_limit: Semaphore::new(a.reconnect_concurrency.max(1)),
        delay: Duration::from_millis(a.reconnect_delay_ms),
        jitter: a.reconnect_jitter,
    });
    let (storm_tx, storm_rx) = watch::channel(Command::Hold);
    let mut storm_tasks = JoinSet::new();
    let connect_started = Instant::now();
    for conn in 0..a.connections {
        let channel_index = storm_plan.channel_of(conn);
        let spec = Spec {
            token: tokens.token(&plan::user_id(conn))?,
            source: plan::source_addr(conn, common.source_ips),
            channel: plan::channel_name(&common.channel_prefix, channel_index),
            channel_index,
            sender: None,
            join_on_connect: true,
        };
        let permit = Arc::clone(&connect_limit).acquire_owned().await?;
        storm_tasks.spawn(storm_client(
            spec,
            Arc::clone(&first),
            Arc::clone(&second),
            Arc::clone(&shared),
            storm_rx.clone(),
            permit,
        ));
        progress.maybe_print("connecting", &shared, &unaffected);
    }
    let n = a.connections as u64;
    let all_settled_in = wait(phase_timeout, || {
        let c = &shared.counters;
        c.joined.load(Ordering::Relaxed) + c.failed.load(Ordering::Relaxed) >= n
    })
    .await;
    let connect_seconds = all_settled_in.then(|| connect_started.elapsed().as_secs_f64());
    // Let the presence of the joins die down before measuring anything.
    let quiet = Duration::from_millis(a.quiet_ms);
    wait(phase_timeout, || quiet_for(&shared, quiet)).await;

    // Baseline: the unaffected channel chats with nothing else going on.
    let messages_per_sec = a.unaffected_rate / (a.unaffected_members.max(1) as f64);
    let per_sender = messages_per_sec / (a.unaffected_senders.max(1) as f64);
    let send_start = Instant::now() + Duration::from_millis(10);
    unaffected_tx.send_replace(Command::Send {
        round: 0,
        per_sender_rate: per_sender,
        start: send_start,
    });
    // One second to settle into the pace, then the baseline window.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline_start = Snapshot::take(&unaffected);
    tokio::time::sleep(Duration::from_secs(a.baseline_secs)).await;
    let baseline = Snapshot::take(&unaffected).window_since(&baseline_start, &unaffected);
    eprintln!(
        "baseline: unaffected p50 {:.2} ms p99 {:.2} ms, ratio {:.4}",
        baseline.latency.p50_ms, baseline.latency.p99_ms, baseline.delivery_ratio
    );

    // The cut.
    let joined = shared.counters.joined.load(Ordering::Relaxed);
    let presence_before = shared.counters.presence_events.load(Ordering::Relaxed);
    let unaffected_presence_before = unaffected.counters.presence_events.load(Ordering::Relaxed);
    let storm_start = Snapshot::take(&unaffected);
    let cpu_before = common
        .server_pid()
        .and_then(|pid| procfs::read_cpu_ticks(Some(pid)).ok());
    let cut_micros = shared.micros_now();
    shared.cut_started.store(true, Ordering::SeqCst);
    match a.cut {
        Cut::Abort => {
            storm_tx.send_replace(Command::Close);
        }
        Cut::Drain => {
            let pid = a.drain_pid.unwrap_or_default();
            let status = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status()
                .context("running kill")?;
            anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
        }
    }
    let cut_at = Instant::now();
    let timeout = Duration::from_secs(a.timeout_secs);
    let rejoined_all = wait_printing(
        timeout,
        &mut progress,
        "storm",
        &shared,
        &unaffected,
        || {
            let c = &shared.counters;
            c.rejoined.load(Ordering::Relaxed) >= joined - c.lost_before_cut.load(Ordering::Relaxed)
        },
    )
    .await;
    let settled = rejoined_all
        && wait_printing(
            timeout.saturating_sub(cut_at.elapsed()),
            &mut progress,
            "settling",
            &shared,
            &unaffected,
            || quiet_for(&shared, quiet),
        )
        .await;
    let storm_end = Snapshot::take(&unaffected);
    let server_cpu_seconds = cpu_before.and_then(|before| {
        let after = procfs::read_cpu_ticks(common.server_pid()).ok()?;
        Some(procfs::ticks_to_secs(after.saturating_sub(before)))
    });
    let since_cut = |micros: u64| {
        (micros >= cut_micros).then(|| Duration::from_micros(micros - cut_micros).as_secs_f64())
    };
    let c = &shared.counters;
    let summary = Summary {
        cut: a.cut,
        joined,
        cut_connections: c.cut.load(Ordering::Relaxed),
        lost_before_cut: c.lost_before_cut.load(Ordering::Relaxed),
        rejoined: c.rejoined.load(Ordering::Relaxed),
        all_cut_seconds: since_cut(c.last_cut_micros.load(Ordering::Relaxed)),
        all_rejoined_seconds: if rejoined_all {
            since_cut(c.last_rejoin_micros.load(Ordering::Relaxed))
        } else {
            None
        },
        rejoin_after_loss: summarize(&shared.rejoin_after_loss),
        rejoin_after_attempt: summarize(&shared.rejoin_after_attempt),
        reconnect_attempts: c.attempts.load(Ordering::Relaxed),
        reconnect_failures: c.failures.load(Ordering::Relaxed),
        settled_seconds: settled.then(|| {
            let last = c
                .last_presence_micros
                .load(Ordering::Relaxed)
                .max(c.last_rejoin_micros.load(Ordering::Relaxed));
            since_cut(last).unwrap_or(0.0)
        }),
        presence_events: c.presence_events.load(Ordering::Relaxed) - presence_before,
        unaffected_presence_events: unaffected.counters.presence_events.load(Ordering::Relaxed)
            - unaffected_presence_before,
        unbatched_presence_events: unbatched_presence_events(
            &storm_plan.members(),
            a.cut == Cut::Abort,
        ),
        unaffected_baseline: baseline,
        unaffected_storm: storm_end.window_since(&storm_start, &unaffected),
        server_cpu_seconds,
    };
    eprintln!(
        "storm: {} of {} rejoined in {:?} s; unaffected p99 {:.2} ms (baseline {:.2} ms); presence events {}",
        summary.rejoined,
        summary.joined,
        summary.all_rejoined_seconds,
        summary.unaffected_storm.latency.p99_ms,
        summary.unaffected_baseline.latency.p99_ms,
        summary.presence_events,
    );

    // Close everything.
    unaffected_tx.send_replace(Command::Close);
    storm_tx.send_replace(Command::Close);
    let bench_rss_kb = procfs::read_rss_kb(None).unwrap_or(0);
    let closing = async {
        while storm_tasks.join_next().await.is_some() {}
        while unaffected_tasks.join_next().await.is_some() {}
    };
    if tokio::time::timeout(Duration::from_secs(10), closing)
        .await
        .is_err()
    {
        storm_tasks.abort_all();
        unaffected_tasks.abort_all();
    }
    let connections = report::Connections {
        attempted: a.connections as u64,
        established: c.connected.load(Ordering::Relaxed),
        failed: c.failed.load(Ordering::Relaxed),
        joined,
        join_failed: 0,
        join_retries: 0,
        lost: c.lost_before_cut.load(Ordering::Relaxed),
        all_connected_seconds: connect_seconds,
        all_joined_seconds: connect_seconds,
        connect_time: Percentiles::default(),
    };
    Ok(Report {
        scenario: "reconnect-storm",
        parameters: serde_json::to_value(a).unwrap_or_default(),
        connections,
        server: None,
        rounds: Vec::new(),
        saturation: None,
        join_storm: None,
        abuse: None,
        replicas: common.servers.len(),
        placement: common.placement,
        reconnect_storm: Some(summary),
        bench_cpu_seconds: 0.0,
        bench_rss_kb,
    })
}

fn summarize(h: &Mutex<Histogram<u64>>) -> Percentiles {
    h.lock().map(|h| stats::summarize(&h)).unwrap_or_default()
}

/// True once no presence event and no rejoin came for `quiet`.
fn quiet_for(shared: &StormShared, quiet: Duration) -> bool {
    let c = &shared.counters;
    let last = c
        .last_presence_micros
        .load(Ordering::Relaxed)
        .max(c.last_rejoin_micros.load(Ordering::Relaxed));
    shared.micros_now().saturating_sub(last) >= u64::try_from(quiet.as_micros()).unwrap_or(0)
}

/// Waits until `done` or `timeout`; true when `done`.
async fn wait(timeout: Duration, done: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
    true
}

async fn wait_printing(
    timeout: Duration,
    progress: &mut Progress,
    phase: &str,
    shared: &StormShared,
    unaffected: &Shared,
    done: impl Fn() -> bool,
) -> bool {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() >= deadline {
            return false;
        }
        progress.maybe_print(phase, shared, unaffected);
        tokio::time::sleep(POLL).await;
    }
    true
}

/// The unaffected channel's counters at one moment.
struct Snapshot {
    at: Instant,
    deliveries: u64,
    expected: u64,
    lost: u64,
}

impl Snapshot {
    /// Reads the counters and starts a new latency window.
    fn take(s: &Shared) -> Self {
        let c = &s.counters;
        Self {
            at: Instant::now(),
            deliveries: c.deliveries.load(Ordering::Relaxed),
            expected: c.expected.load(Ordering::Relaxed),
            lost: c.disconnected.load(Ordering::Relaxed),
        }
    }

    /// The window from `start` to this snapshot; the latency histogram is read and reset.
    fn window_since(&self, start: &Snapshot, s: &Shared) -> Window {
        let latency = s
            .latency
            .lock()
            .map(|mut h| {
                let summary = stats::summarize(&h);
                h.reset();
                summary
            })
            .unwrap_or_default();
        let deliveries = self.deliveries - start.deliveries;
        let expected = self.expected - start.expected;
        Window {
            seconds: (self.at - start.at).as_secs_f64(),
            latency,
            deliveries,
            expected_deliveries: expected,
            delivery_ratio: report::ratio(deliveries, expected),
            lost: self.lost,
        }
    }
}

#[derive(Serialize)]
struct TokenClaims<'a> {
    #[serde(rename = "userId")]
    user_id: &'a str,
    username: &'a str,
    exp: u64,
}

struct Tokens {
    key: EncodingKey,
    header: Header,
    exp: u64,
}

impl Tokens {
    fn new(secret: &str) -> Self {
        Self {
            key: EncodingKey::from_secret(secret.as_bytes()),
            header: Header::new(Algorithm::HS256),
            exp: client::unix_micros() / 1_000_000 + TOKEN_LIFETIME_SECS,
        }
    }

    fn token(&self, user: &str) -> anyhow::Result<String> {
        let claims = TokenClaims {
            user_id: user,
            username: user,
            exp: self.exp,
        };
        Ok(jsonwebtoken::encode(&self.header, &claims, &self.key)?)
    }
}

/// One storm client: connect and join, hold until the connection ends, then reconnect (to the
/// reconnect server), rejoin and hold until the end of the run.
async fn storm_client(
    spec: Spec,
    first: Arc<Target>,
    second: Arc<Target>,
    shared: Arc<StormShared>,
    mut commands: watch::Receiver<Command>,
    permit: tokio::sync::OwnedSemaphorePermit,
) {
    let c = &shared.counters;
    let joined = tokio::time::timeout(
        first.connect_timeout,
        connect_and_join(&spec, &first, &shared),
    )
    .await;
    drop(permit);
    let ws = match joined {
        Ok(Ok(ws)) => ws,
        _ => {
            c.failed.fetch_add(1, Ordering::Relaxed);
            return;
        }
    };
    c.connected.fetch_add(1, Ordering::Relaxed);
    c.joined.fetch_add(1, Ordering::Relaxed);
    // With `--cut abort` the `Close` that ends this hold is the cut; the next one, seen by the
    // loops below, is the end of the run.
    hold(ws, &shared, &mut commands).await;
    let lost_at = Instant::now();
    if !shared.cut_started.load(Ordering::SeqCst) {
        c.lost_before_cut.fetch_add(1, Ordering::Relaxed);
        return;
    }
    c.cut.fetch_add(1, Ordering::Relaxed);
    c.last_cut_micros
        .fetch_max(shared.micros_now(), Ordering::Relaxed);

    let mut first_attempt = None;
    let mut attempt = 0;
    let ws = loop {
        let delay = reconnect_delay(shared.delay, shared.jitter, rand::random(), attempt);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = commands.changed() => return,
        }
        let Ok(permit) = shared.reconnect_limit.acquire().await else {
            return;
        };
        let started = *first_attempt.get_or_insert_with(Instant::now);
        c.attempts.fetch_add(1, Ordering::Relaxed);
        let result = tokio::time::timeout(
            second.connect_timeout,
            connect_and_join(&spec, &second, &shared),
        )
        .await;
        drop(permit);
        match result {
            Ok(Ok(ws)) => {
                shared.record(&shared.rejoin_after_loss, lost_at.elapsed());
                shared.record(&shared.rejoin_after_attempt, started.elapsed());
                break ws;
            }
            _ => {
                c.failures.fetch_add(1, Ordering::Relaxed);
                attempt += 1;
            }
        }
    };
    c.rejoined.fetch_add(1, Ordering::Relaxed);
    c.last_rejoin_micros
        .fetch_max(shared.micros_now(), Ordering::Relaxed);
    hold(ws, &shared, &mut commands).await;
}

/// Answers pings and counts presence until the connection ends or `Close` comes (the
/// connection is then dropped without a close handshake: the abort).
async fn hold(mut ws: Ws, shared: &StormShared, commands: &mut watch::Receiver<Command>) {
    loop {
        tokio::select! {
            msg = ws.next() => {
                let alive = match msg {
                    Some(Ok(Message::Text(text))) => match engineio::decode(text.as_str()) {
                        Packet::Ping => ws.send(Message::text(engineio::PONG)).await.is_ok(),
                        Packet::Event { name: "presence:update" | "system:event", .. } => {
                            count_presence(shared);
                            true
                        }
                        Packet::Close | Packet::Disconnected { .. } => false,
                        _ => true,
                    },
                    Some(Ok(Message::Close(_)) | Err(_)) | None => false,
                    Some(Ok(_)) => true,
                };
                if !alive {
                    return;
                }
            }
            changed = commands.changed() => {
                if changed.is_err() || *commands.borrow_and_update() == Command::Close {
                    return;
                }
            }
        }
    }
}

fn count_presence(shared: &StormShared) {
    let c = &shared.counters;
    c.presence_events.fetch_add(1, Ordering::Relaxed);
    c.last_presence_micros
        .fetch_max(shared.micros_now(), Ordering::Relaxed);
}

/// Connects, joins the spec's channel and waits for the join's ack.
async fn connect_and_join(
    spec: &Spec,
    target: &Target,
    shared: &StormShared,
) -> anyhow::Result<Ws> {
    let mut ws = client::connect(spec, target).await?;
    let payload = format!(r#"{{"channelName":"{}"}}"#, spec.channel);
    let join = engineio::encode_event(&target.namespace, Some(JOIN_ACK_ID), "join", &payload);
    ws.send(Message::text(join)).await?;
    loop {
        let Some(msg) = ws.next().await else {
            anyhow::bail!("closed before the join was answered");
        };
        let Message::Text(text) = msg? else {
            continue;
        };
        match engineio::decode(text.as_str()) {
            Packet::Ack { id, payload, .. } if id == JOIN_ACK_ID => {
                anyhow::ensure!(payload.contains(r#""ok":true"#), "join refused: {payload}");
                return Ok(ws);
            }
            Packet::Ping => ws.send(Message::text(engineio::PONG)).await?,
            Packet::Event {
                name: "presence:update" | "system:event",
                ..
            } => count_presence(shared),
            Packet::Close | Packet::Disconnected { .. } => anyhow::bail!("closed by the server"),
            _ => {}
        }
    }
}

/// The once-a-second progress line on stderr.
struct Progress {
    started: Instant,
    last: Instant,
}

impl Progress {
    fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: now,
        }
    }

    fn maybe_print(&mut self, phase: &str, shared: &StormShared, unaffected: &Shared) {
        if self.last.elapsed() < Duration::from_secs(1) {
            return;
        }
        self.last = Instant::now();
        let c = &shared.counters;
        eprintln!(
            "[{:>5.1}s] reconnect-storm {phase} | joined {} failed {} | cut {} rejoined {} (attempts {}, failures {}) | presence {} | unaffected deliveries {} lost {}",
            self.started.elapsed().as_secs_f64(),
            c.joined.load(Ordering::Relaxed),
            c.failed.load(Ordering::Relaxed),
            c.cut.load(Ordering::Relaxed),
            c.rejoined.load(Ordering::Relaxed),
            c.attempts.load(Ordering::Relaxed),
            c.failures.load(Ordering::Relaxed),
            c.presence_events.load(Ordering::Relaxed),
            unaffected.counters.deliveries.load(Ordering::Relaxed),
            unaffected.counters.disconnected.load(Ordering::Relaxed),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_reconnect_delay_spreads_around_the_base_like_socket_io_client() {
        let base = Duration::from_millis(1000);
        assert_eq!(
            reconnect_delay(base, 0.5, 0.0, 0),
            Duration::from_millis(500)
        );
        assert_eq!(
            reconnect_delay(base, 0.5, 0.5, 0),
            Duration::from_millis(1000)
        );
        assert!(reconnect_delay(base, 0.5, 0.999_999, 0) <= Duration::from_millis(1500));
        assert_eq!(reconnect_delay(base, 0.0, 0.9, 0), base, "no jitter");
        assert_eq!(reconnect_delay(Duration::ZERO, 0.5, 0.9, 0), Duration::ZERO);
    }

    #[test]
    fn later_attempts_back_off_exponentially_up_to_five_seconds() {
        let base = Duration::from_millis(1000);
        assert_eq!(
            reconnect_delay(base, 0.0, 0.0, 1),
            Duration::from_millis(2000)
        );
        assert_eq!(
            reconnect_delay(base, 0.0, 0.0, 2),
            Duration::from_millis(4000)
        );
        assert_eq!(reconnect_delay(base, 0.0, 0.0, 3), MAX_RECONNECT_DELAY);
        assert_eq!(reconnect_delay(base, 0.5, 0.9, 40), MAX_RECONNECT_DELAY);
    }

    #[test]
    fn unbatched_presence_is_quadratic_in_each_channels_size() {
        // One channel of 3: joins 1 + 2 + 3 members reached, twice each = 12; leaves 2 + 1 + 0,
        // twice each = 6.
        assert_eq!(unbatched_presence_events(&[3], false), 12);
        assert_eq!(unbatched_presence_events(&[3], true), 18);
        // 15,000 viewers in 100 channels of 150.
        assert_eq!(
            unbatched_presence_events(&[150; 100], true),
            100 * (150 * 151 + 150 * 149)
        );
    }
}
