//! The `recover` scenario: many viewers of one channel lose their connections at once, chat goes
//! on for a gap of some seconds, then they all reconnect and recover what they missed, through
//! Socket.IO Connection State Recovery (`--via csr`, what the stock client does with no app code)
//! or through `join {since}` (`--via join`). Reports the time from the reconnect until every
//! viewer had every missed item, and the items recovered per viewer.
//!
//! A viewer counts as recovered once it holds every offset from the last one it saw before the
//! drop up to the channel's head at the moment of the reconnect (`target`), with no gap: replayed
//! or live, it does not matter which. A server that answers `recovered: false` (or a new `pid`)
//! makes the viewer `not_recovered`; a hole in what arrives makes it `incomplete`.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::args::{Common, Recover, Via};
use crate::engineio::{self, Packet};
use crate::history::{self, Endpoint, Ws};
use crate::{plan, procfs};

/// Ack id of the viewers' joins.
const JOIN_ACK: u64 = 1;

/// What the orchestrator tells the viewers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Watch,
    /// Lose the connection now (no close handshake: as a phone changing networks).
    Drop,
    /// Reconnect and recover up to `target`.
    Reconnect {
        target: u64,
    },
    /// Stop.
    Done,
}

/// How one viewer ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Recovered {
        seconds: f64,
        items: u64,
    },
    NotRecovered,
    /// Some offsets up to the target never arrived.
    Incomplete {
        missing: u64,
    },
    Failed(String),
}

/// The figures of a run.
#[derive(Debug, Clone, Serialize, Default, PartialEq)]
pub struct Summary {
    pub viewers: u64,
    pub recovered: u64,
    pub not_recovered: u64,
    pub incomplete: u64,
    pub failed: u64,
    /// From the reconnect until the last viewer had every missed item.
    pub all_recovered_seconds: Option<f64>,
    pub recovery_seconds_p50: f64,
    pub recovery_seconds_p99: f64,
    pub recovery_seconds_max: f64,
    pub items_per_viewer_min: u64,
    pub items_per_viewer_mean: f64,
    pub items_per_viewer_max: u64,
}

/// Summarizes the viewers' outcomes.
pub fn summarize(outcomes: &[Outcome]) -> Summary {
    let mut s = Summary {
        viewers: outcomes.len() as u64,
        ..Summary::default()
    };
    let mut seconds = Vec::new();
    let mut items = Vec::new();
    for o in outcomes {
        match o {
            Outcome::Recovered {
                seconds: t,
                items: n,
            } => {
                s.recovered += 1;
                seconds.push(*t);
                items.push(*n);
            }
            Outcome::NotRecovered => s.not_recovered += 1,
            Outcome::Incomplete { .. } => s.incomplete += 1,
            Outcome::Failed(_) => s.failed += 1,
        }
    }
    seconds.sort_by(f64::total_cmp);
    let at = |q: f64| {
        seconds
            .get(((seconds.len() as f64 * q).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(0.0)
    };
    s.recovery_seconds_p50 = at(0.50);
    s.recovery_seconds_p99 = at(0.99);
    s.recovery_seconds_max = seconds.last().copied().unwrap_or(0.0);
    if s.recovered == s.viewers && s.viewers > 0 {
        s.all_recovered_seconds = Some(s.recovery_seconds_max);
    }
    s.items_per_viewer_min = items.iter().copied().min().unwrap_or(0);
    s.items_per_viewer_max = items.iter().copied().max().unwrap_or(0);
    s.items_per_viewer_mean = if items.is_empty() {
        0.0
    } else {
        items.iter().sum::<u64>() as f64 / items.len() as f64
    };
    s
}

/// Offsets a viewer holds after its last position before the drop.
#[derive(Debug, Default)]
struct Received {
    after: u64,
    offsets: BTreeSet<u64>,
}

impl Received {
    fn new(after: u64) -> Self {
        Self {
            after,
            offsets: BTreeSet::new(),
        }
    }

    fn add(&mut self, offset: u64) {
        if offset > self.after {
            self.offsets.insert(offset);
        }
    }

    /// Offsets in `(after, target]` not received.
    fn missing(&self, target: u64) -> u64 {
        let have = self.offsets.range(self.after + 1..=target).count() as u64;
        target.saturating_sub(self.after) - have
    }
}

#[derive(Serialize)]
struct TokenClaims<'a> {
    #[serde(rename = "userId")]
    user_id: &'a str,
    username: &'a str,
    exp: u64,
}

/// Runs the scenario; the JSON report.
pub async fn run(common: &Common, a: &Recover) -> anyhow::Result<serde_json::Value> {
    let secret = common
        .jwt_secret
        .as_deref()
        .context("--jwt-secret (or JWT_SECRET) is required")?;
    let key = EncodingKey::from_secret(secret.as_bytes());
    let exp = crate::client::unix_micros() / 1_000_000 + 24 * 3600;
    let token = |user: &str| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &TokenClaims {
                user_id: user,
                username: user,
                exp,
            },
            &key,
        )
    };
    let endpoint = Arc::new(Endpoint {
        server: common.server(),
        url: format!(
            "ws://{}{}/?EIO=4&transport=websocket",
            common.server(),
            common.path.trim_end_matches('/')
        ),
        namespace: common.namespace.clone(),
        connect_timeout: Duration::from_secs(common.connect_timeout_secs),
    });
    let reconnect_endpoint = Arc::new(match a.reconnect_server {
        Some(server) => Endpoint {
            server,
            url: format!(
                "ws://{server}{}/?EIO=4&transport=websocket",
                common.path.trim_end_matches('/')
            ),
            ..(*endpoint).clone()
        },
        None => (*endpoint).clone(),
    });
    let channel = format!("{}-recover", common.channel_prefix);
    let phase_timeout = Duration::from_secs(common.phase_timeout_secs);
    let (phase_tx, phase_rx) = watch::channel(Phase::Watch);
    let limit = Arc::new(Semaphore::new(common.connect_concurrency.max(1)));
    let joined = Arc::new(AtomicU64::new(0));
    let positioned = Arc::new(AtomicU64::new(0));

    // The viewers.
    let mut viewers = JoinSet::new();
    let (report, mut results) = mpsc::unbounded_channel();
    for n in 0..a.viewers {
        let user = format!("lr-{n}");
        let v = Viewer {
            token: token(&user)?,
            source: plan::source_addr(n, common.source_ips),
            endpoint: Arc::clone(&endpoint),
            reconnect_endpoint: Arc::clone(&reconnect_endpoint),
            channel: channel.clone(),
            via: a.via,
            limit: Arc::clone(&limit),
            joined: Arc::clone(&joined),
            positioned: Arc::clone(&positioned),
        };
        viewers.spawn(v.run(phase_rx.clone(), report.clone()));
    }
    wait_until(phase_timeout, || {
        joined.load(Ordering::Relaxed) >= a.viewers as u64 || viewers.len() < a.viewers
    })
    .await;
    let connected = joined.load(Ordering::Relaxed);
    eprintln!(
        "recover: {connected}/{} viewers joined {channel}",
        a.viewers
    );

    // The sender chats at --rate from now until the end; it follows its own chat:new for the head.
    let head = Arc::new(AtomicU64::new(0));
    let stop_sender = CancellationToken::new();
    let sender = tokio::spawn(send(
        Arc::clone(&endpoint),
        token("lr-sender")?,
        channel.clone(),
        a.rate,
        Arc::clone(&head),
        stop_sender.clone(),
    ));
    // Every viewer must have a position before the drop.
    wait_until(phase_timeout, || {
        positioned.load(Ordering::Relaxed) >= connected || sender.is_finished()
    })
    .await;
    if sender.is_finished() {
        let why = match sender.await {
            Ok(Err(e)) => format!("{e:#}"),
            other => format!("{other:?}"),
        };
        let _ = phase_tx.send(Phase::Done);
        anyhow::bail!("the sender stopped: {why}");
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    let head_at_drop = head.load(Ordering::Relaxed);
    let _ = phase_tx.send(Phase::Drop);
    eprintln!(
        "recover: {} viewers dropped at offset {head_at_drop}; gap {} s",
        connected, a.gap_secs
    );
    tokio::time::sleep(Duration::from_secs(a.gap_secs)).await;
    let target = head.load(Ordering::Relaxed);
    let cpu_before = common
        .server_pid()
        .and_then(|pid| procfs::read_cpu_ticks(Some(pid)).ok());
    let reconnect_at = Instant::now();
    let _ = phase_tx.send(Phase::Reconnect { target });
    eprintln!("recover: reconnecting to recover up to offset {target}");

    // Viewers report as soon as they know, and stay connected until the end.
    let mut outcomes = Vec::with_capacity(a.viewers);
    let deadline = tokio::time::Instant::now() + phase_timeout;
    while outcomes.len() < a.viewers {
        match tokio::time::timeout_at(deadline, results.recv()).await {
            Ok(Some(o)) => outcomes.push(o),
            Ok(None) | Err(_) => break,
        }
    }
    while outcomes.len() < a.viewers {
        outcomes.push(Outcome::Failed(
            "did not finish in the phase timeout".into(),
        ));
    }
    let wall = reconnect_at.elapsed().as_secs_f64();
    let server_cpu_seconds = cpu_before.and_then(|before| {
        let after = procfs::read_cpu_ticks(Some(common.server_pid()?)).ok()?;
        Some(procfs::ticks_to_secs(after.saturating_sub(before)))
    });
    let _ = phase_tx.send(Phase::Done);
    stop_sender.cancel();
    let sent = sender.await.unwrap_or(Ok(0)).unwrap_or(0);
    let closing = async { while viewers.join_next().await.is_some() {} };
    if tokio::time::timeout(Duration::from_secs(10), closing)
        .await
        .is_err()
    {
        viewers.abort_all();
    }
    if let Some(first) = outcomes.iter().find_map(|o| match o {
        Outcome::Failed(why) => Some(why),
        _ => None,
    }) {
        eprintln!("first failed viewer: {first}");
    }
    let summary = summarize(&outcomes);
    eprintln!(
        "recover: {}/{} recovered, all within {:?} s (p50 {:.3} s, p99 {:.3} s), {:.1} items per viewer",
        summary.recovered,
        summary.viewers,
        summary.all_recovered_seconds,
        summary.recovery_seconds_p50,
        summary.recovery_seconds_p99,
        summary.items_per_viewer_mean
    );
    Ok(serde_json::json!({
        "scenario": "recover",
        "parameters": a,
        "channel": channel,
        "head_at_drop": head_at_drop,
        "target_offset": target,
        "messages_sent": sent,
        "summary": summary,
        "server_cpu_seconds": server_cpu_seconds,
        "measured_seconds": wall,
    }))
}

/// Polls `done` every 50 ms until it holds or `timeout` passes.
async fn wait_until(timeout: Duration, done: impl Fn() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The sender: chats at `rate` messages/s and keeps `head` at the newest offset it saw.
async fn send(
    endpoint: Arc<Endpoint>,
    token: String,
    channel: String,
    rate: f64,
    head: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<u64> {
    let auth = serde_json::json!({ "token": token });
    let (mut ws, _) = history::connect(&endpoint, Ipv4Addr::LOCALHOST, &auth).await?;
    let ns = endpoint.namespace.clone();
    let join = format!(r#"{{"channelName":"{channel}"}}"#);
    ws.send(Message::text(engineio::encode_event(
        &ns,
        Some(JOIN_ACK),
        "join",
        &join,
    )))
    .await?;
    // Chat only once the join is acknowledged: before it, chat is refused (not a member).
    loop {
        let Some(msg) = ws.next().await else {
            anyhow::bail!("sender: connection closed before its join was answered");
        };
        let Message::Text(text) = msg? else { continue };
        match engineio::decode(text.as_str()) {
            Packet::Ack { id: JOIN_ACK, .. } => break,
            Packet::Ping => ws.send(Message::text(engineio::PONG)).await?,
            _ => {}
        }
    }
    let every = Duration::from_secs_f64(1.0 / rate.max(0.1));
    let mut tick = tokio::time::interval(every);
    let mut sent = 0u64;
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {
                let chat = format!(r#"{{"channelName":"{channel}","message":"r{sent}"}}"#);
                ws.send(Message::text(engineio::encode_event(&ns, None, "chat:send", &chat))).await?;
                sent += 1;
            }
            msg = ws.next() => {
                let Some(msg) = msg else { anyhow::bail!("sender: connection closed") };
                let Message::Text(text) = msg? else { continue };
                match engineio::decode(text.as_str()) {
                    Packet::Event { name: "chat:new", payload, .. } => {
                        if let Some((offset, _)) = history::position(payload) {
                            head.fetch_max(offset, Ordering::Relaxed);
                        }
                    }
                    Packet::Event { name: "error", payload, .. } => {
                        anyhow::bail!("sender refused: {payload} (raise rateLimits.messagesPerMinute)")
                    }
                    Packet::Ping => ws.send(Message::text(engineio::PONG)).await?,
                    _ => {}
                }
            }
        }
    }
    let _ = ws.close(None).await;
    Ok(sent)
}

/// One viewer.
struct Viewer {
    token: String,
    source: Ipv4Addr,
    endpoint: Arc<Endpoint>,
    reconnect_endpoint: Arc<Endpoint>,
    channel: String,
    via: Via,
    limit: Arc<Semaphore>,
    joined: Arc<AtomicU64>,
    positioned: Arc<AtomicU64>,
}

impl Viewer {
    /// Sends its outcome on `report` once, as soon as it is known.
    async fn run(self, mut phase: watch::Receiver<Phase>, report: mpsc::UnboundedSender<Outcome>) {
        let mut reported = false;
        let r = self
            .watch_then_recover(&mut phase, &report, &mut reported)
            .await;
        if !reported {
            let _ = report.send(match r {
                Ok(o) => o,
                Err(e) => Outcome::Failed(format!("{e:#}")),
            });
        }
    }

    async fn connect(
        &self,
        endpoint: &Endpoint,
        auth: serde_json::Value,
    ) -> anyhow::Result<(Ws, String)> {
        let _permit = self.limit.acquire().await?;
        tokio::time::timeout(
            endpoint.connect_timeout,
            history::connect(endpoint, self.source, &auth),
        )
        .await
        .context("connect timed out")?
    }

    async fn watch_then_recover(
        &self,
        phase: &mut watch::Receiver<Phase>,
        report: &mpsc::UnboundedSender<Outcome>,
        reported: &mut bool,
    ) -> anyhow::Result<Outcome> {
        let ns = self.endpoint.namespace.clone();
        let (mut ws, reply) = self
            .connect(&self.endpoint, serde_json::json!({ "token": self.token }))
            .await?;
        let pid = history::pid(&reply);
        let join = format!(r#"{{"channelName":"{}"}}"#, self.channel);
        ws.send(Message::text(engineio::encode_event(
            &ns,
            Some(JOIN_ACK),
            "join",
            &join,
        )))
        .await?;
        // Watch until told to drop, keeping the last position seen.
        let mut last: Option<(u64, String)> = None;
        let mut recovery_offset: Option<String> = None;
        loop {
            tokio::select! {
                changed = phase.changed() => {
                    changed?;
                    match *phase.borrow_and_update() {
                        Phase::Watch => {}
                        Phase::Drop => break,
                        Phase::Reconnect { .. } | Phase::Done => anyhow::bail!("not joined in time"),
                    }
                }
                msg = ws.next() => {
                    let Some(msg) = msg else { anyhow::bail!("connection closed before the drop") };
                    let Message::Text(text) = msg? else { continue };
                    match engineio::decode(text.as_str()) {
                        Packet::Ack { id: JOIN_ACK, .. } => {
                            self.joined.fetch_add(1, Ordering::Relaxed);
                        }
                        Packet::Event { name: "chat:new", payload, .. } => {
                            if last.is_none() {
                                self.positioned.fetch_add(1, Ordering::Relaxed);
                            }
                            last = history::position(payload);
                            recovery_offset = history::recovery_offset(payload);
                        }
                        Packet::Ping => ws.send(Message::text(engineio::PONG)).await?,
                        _ => {}
                    }
                }
            }
        }
        // The drop: the TCP connection goes away without a close handshake.
        drop(ws);
        let Some((after, epoch)) = last else {
            anyhow::bail!("no history item before the drop (is history on?)");
        };
        let target = loop {
            phase.changed().await?;
            match *phase.borrow_and_update() {
                Phase::Reconnect { target } => break target,
                Phase::Done => anyhow::bail!("stopped before the reconnect"),
                _ => {}
            }
        };
        let started = Instant::now();
        let mut received = Received::new(after);
        let auth = match self.via {
            Via::Csr => {
                let (Some(pid), Some(offset)) = (&pid, &recovery_offset) else {
                    anyhow::bail!("no recovery session (is connectionStateRecovery on?)");
                };
                serde_json::json!({ "token": self.token, "pid": pid, "offset": offset })
            }
            Via::Join => serde_json::json!({ "token": self.token }),
        };
        let (mut ws, reply) = self.connect(&self.reconnect_endpoint, auth).await?;
        match self.via {
            Via::Csr => {
                if history::pid(&reply) != pid {
                    let _ = ws.close(None).await;
                    return Ok(Outcome::NotRecovered);
                }
            }
            Via::Join => {
                let join = serde_json::json!({
                    "channelName": self.channel,
                    "since": {"offset": after, "epoch": epoch},
                });
                ws.send(Message::text(engineio::encode_event(
                    &ns,
                    Some(JOIN_ACK),
                    "join",
                    &join.to_string(),
                )))
                .await?;
            }
        }
        let outcome = loop {
            if received.missing(target) == 0 {
                break Outcome::Recovered {
                    seconds: started.elapsed().as_secs_f64(),
                    items: target - after,
                };
            }
            tokio::select! {
                changed = phase.changed() => {
                    if changed.is_err() || *phase.borrow_and_update() == Phase::Done {
                        break Outcome::Incomplete { missing: received.missing(target) };
                    }
                }
                msg = ws.next() => {
                    let Some(msg) = msg else { anyhow::bail!("connection closed while recovering") };
                    let Message::Text(text) = msg? else { continue };
                    match engineio::decode(text.as_str()) {
                        Packet::Event { name: "chat:new", payload, .. } => {
                            if let Some((offset, e)) = history::position(payload) && e == epoch {
                                received.add(offset);
                            }
                        }
                        Packet::Ack { id: JOIN_ACK, payload, .. } => {
                            let ack: serde_json::Value = serde_json::from_str(payload)
                                .ok()
                                .and_then(|v: serde_json::Value| v.get(0).cloned())
                                .unwrap_or_default();
                            if ack["recovered"] != true {
                                break Outcome::NotRecovered;
                            }
                            for item in ack["items"].as_array().into_iter().flatten() {
                                if let Some(o) = item["data"]["offset"].as_u64() {
                                    received.add(o);
                                }
                            }
                        }
                        Packet::Ping => ws.send(Message::text(engineio::PONG)).await?,
                        _ => {}
                    }
                }
            }
        };
        let _ = report.send(outcome.clone());
        *reported = true;
        // Stay connected until the run ends, as a viewer would.
        while !matches!(*phase.borrow_and_update(), Phase::Done) {
            tokio::select! {
                changed = phase.changed() => { if changed.is_err() { break } }
                msg = ws.next() => {
                    match msg {
                        Some(Ok(Message::Text(text))) => {
                            if engineio::decode(text.as_str()) == Packet::Ping {
                                ws.send(Message::text(engineio::PONG)).await?;
                            }
                        }
                        Some(Ok(_)) => {}
                        _ => break,
                    }
                }
            }
        }
        let _ = ws.close(None).await;
        Ok(outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_viewer_is_complete_once_it_holds_every_offset_up_to_the_target() {
        let mut r = Received::new(10);
        assert_eq!(r.missing(15), 5);
        for o in [9, 10, 12, 11, 14] {
            r.add(o);
        }
        assert_eq!(r.missing(15), 2);
        r.add(15);
        r.add(16);
        assert_eq!(r.missing(15), 1);
        r.add(13);
        assert_eq!(r.missing(15), 0);
        assert_eq!(Received::new(20).missing(20), 0);
    }

    #[test]
    fn the_summary_counts_outcomes_and_takes_percentiles_of_the_recovered() {
        let mut outcomes: Vec<Outcome> = (1..=100)
            .map(|i| Outcome::Recovered {
                seconds: f64::from(i) / 100.0,
                items: 50,
            })
            .collect();
        let s = summarize(&outcomes);
        assert_eq!(s.recovered, 100);
        assert_eq!(s.all_recovered_seconds, Some(1.0));
        assert!((s.recovery_seconds_p50 - 0.5).abs() < 1e-9);
        assert!((s.recovery_seconds_p99 - 0.99).abs() < 1e-9);
        assert_eq!((s.items_per_viewer_min, s.items_per_viewer_max), (50, 50));
        outcomes.push(Outcome::NotRecovered);
        outcomes.push(Outcome::Incomplete { missing: 2 });
        outcomes.push(Outcome::Failed("x".into()));
        let s = summarize(&outcomes);
        assert_eq!((s.not_recovered, s.incomplete, s.failed), (1, 1, 1));
        assert_eq!(s.all_recovered_seconds, None);
    }
}
