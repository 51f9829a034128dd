//! `live-bench abuse`: the attacks a public endpoint meets, each for a bounded time against a
//! running gateway while honest members chat in one channel, and what each did to the gateway's
//! memory and to the honest members (p99 latency, delivery ratio).
//!
//! Flow: the honest members connect and join (the `fanout` harness), one baseline round of
//! honest chat runs without an attack, then for each attack an honest round of `--attack-secs`
//! runs while the attack does; the server's RSS is sampled every 100 ms from before the attack
//! until `--settle-secs` after it. The attackers run on their own thread and runtime, paced to
//! `--attack-rate` frames per second in total, so they cannot starve the honest clients inside
//! the bench itself (the report's bench CPU says whether the bench kept up).
//!
//! The pure parts are the verdict against the issue's targets ([`Verdict`]) and the pacing of
//! attackers ([`attacks::per_attacker_interval`]); the attackers are in [`attacks`].

pub mod attacks;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use serde::Serialize;

use crate::args::Common;
use crate::plan::Plan;
use crate::procfs;
use crate::report::{self, Report};
use crate::run::Harness;

/// The issue's targets: each attack may grow the server's RSS by less than this...
pub const TARGET_RSS_GROWTH_KB: u64 = 20 * 1024;
/// ...while the honest members' p99 stays under this...
pub const TARGET_P99_MS: f64 = 50.0;
/// ...and every honest delivery arrives.
pub const TARGET_DELIVERY_RATIO: f64 = 1.0;

/// The flags of `live-bench abuse`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct Abuse {
    /// Honest members, all in one channel.
    #[arg(long, default_value_t = 1_000)]
    pub members: usize,
    /// Honest members that chat.
    #[arg(long, default_value_t = 20)]
    pub senders: usize,
    /// Offered honest deliveries per second (messages per second times members).
    #[arg(long, default_value_t = 20_000.0)]
    pub rate: f64,
    /// Seconds each attack runs; the honest round lasts as long.
    #[arg(long, default_value_t = 10)]
    pub attack_secs: u64,
    /// Seconds after each attack before the next; RSS is still sampled.
    #[arg(long, default_value_t = 3)]
    pub settle_secs: u64,
    /// Longest wait for honest stragglers after each round.
    #[arg(long, default_value_t = 5)]
    pub drain_secs: u64,
    /// Attacking connections (or sessions) at once.
    #[arg(long, default_value_t = 64)]
    pub attackers: usize,
    /// Frames (or connection attempts) per second, all attackers together.
    #[arg(long, default_value_t = 5_000)]
    pub attack_rate: u32,
    /// Loopback addresses the attackers use, from 127.0.1.1 up (the honest members use
    /// 127.0.0.2 up): the per-address caps apply to each.
    #[arg(long, default_value_t = 1)]
    pub attack_source_ips: u8,
    /// Attacks to run, in this order (repeat the flag); every attack by default.
    #[arg(long = "attack", value_enum)]
    pub attacks: Vec<Attack>,
}

/// The attacks of issue 11.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Attack {
    /// Authenticated sockets announcing binary attachments and sending them.
    BinaryAuthenticated,
    /// The same before authenticating.
    BinaryUnauthenticated,
    /// Authenticated sockets joining ever new channels.
    JoinFlood,
    /// Authenticated sockets joining and leaving the honest channel in a loop.
    PresenceToggle,
    /// Heartbeats and unknown events as fast as allowed.
    EventFlood,
    /// Acks for emits the server never made.
    AckFlood,
    /// Sessions sending CONNECTs with bad tokens.
    ConnectFailures,
    /// CONNECTs with 60 KB tokens.
    OversizeTokens,
    /// TCP connections trickling a request head, never finishing it.
    Slowloris,
    /// Engine.IO sessions opened and left without connecting.
    SessionFlood,
    /// Moderators (ogLevel) muting ever new users for 30 days, each in its own channel.
    MuteFlood,
    /// 60 KB chat messages (refused for their length, after parsing).
    LargeFrames,
    /// Members of the honest channel that never read: their queues fill.
    SlowReaders,
}

impl Attack {
    pub const ALL: [Attack; 13] = [
        Attack::BinaryAuthenticated,
        Attack::BinaryUnauthenticated,
        Attack::JoinFlood,
        Attack::PresenceToggle,
        Attack::EventFlood,
        Attack::AckFlood,
        Attack::ConnectFailures,
        Attack::OversizeTokens,
        Attack::Slowloris,
        Attack::SessionFlood,
        Attack::MuteFlood,
        Attack::LargeFrames,
        Attack::SlowReaders,
    ];
}

/// What the attackers did, counted by all of them.
#[derive(Debug, Default)]
pub struct AttackCounters {
    /// TCP connections (or WebSockets) opened.
    pub connections: AtomicU64,
    /// Connections the server refused before a session (HTTP 429/503, connect errors).
    pub refused: AtomicU64,
    /// Sessions or connections the server closed under the attacker.
    pub closed_by_server: AtomicU64,
    /// Frames (or request-head bytes) sent.
    pub frames: AtomicU64,
}

#[derive(Debug, Clone, Serialize)]
pub struct AttackStats {
    pub connections: u64,
    pub refused: u64,
    pub closed_by_server: u64,
    pub frames: u64,
}

impl AttackCounters {
    fn snapshot(&self) -> AttackStats {
        AttackStats {
            connections: self.connections.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            closed_by_server: self.closed_by_server.load(Ordering::Relaxed),
            frames: self.frames.load(Ordering::Relaxed),
        }
    }
}

/// One attack's figures.
#[derive(Debug, Clone, Serialize)]
pub struct AttackReport {
    pub attack: Attack,
    pub attack_seconds: f64,
    pub attacker: AttackStats,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_before_kb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_peak_kb: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_after_kb: Option<u64>,
    /// Peak minus before.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_rss_growth_kb: Option<u64>,
    pub honest: report::Round,
    pub verdict: Verdict,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct AbuseReport {
    pub baseline: report::Round,
    pub attacks: Vec<AttackReport>,
    /// True when every attack met every target.
    pub all_targets_met: bool,
}

/// Each target, met or not (`None`: not measured, e.g. without `--server-pid`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub rss_growth_under_20_mb: Option<bool>,
    pub honest_p99_under_50_ms: bool,
    pub nothing_lost: bool,
}

impl Verdict {
    /// Judges one attack's figures against the targets.
    pub fn of(rss_growth_kb: Option<u64>, p99_ms: f64, delivery_ratio: f64) -> Self {
        Self {
            rss_growth_under_20_mb: rss_growth_kb.map(|g| g < TARGET_RSS_GROWTH_KB),
            honest_p99_under_50_ms: p99_ms < TARGET_P99_MS,
            nothing_lost: delivery_ratio >= TARGET_DELIVERY_RATIO,
        }
    }

    pub fn met(self) -> bool {
        self.rss_growth_under_20_mb.unwrap_or(true)
            && self.honest_p99_under_50_ms
            && self.nothing_lost
    }
}

/// Runs the baseline and every attack.
pub async fn run(common: &Common, a: &Abuse) -> anyhow::Result<Report> {
    let plan = Plan::new(a.members, 1, a.senders)?;
    let mut h = Harness::start(common, plan, true, "abuse")?;
    h.wait_connected().await;
    let server = h.server_memory();
    let secret = common.jwt_secret.clone().unwrap_or_default();
    let target = Arc::new(attacks::Target {
        server: common.server(),
        path: common.path.trim_end_matches('/').to_owned(),
        namespace: common.namespace.clone(),
        honest_channel: crate::plan::channel_name(&common.channel_prefix, 0),
        secret,
        sources: a.attack_source_ips.max(1),
    });
    let duration = Duration::from_secs(a.attack_secs);
    let drain = Duration::from_secs(a.drain_secs);
    let mut rounds = Vec::new();
    let baseline = h.round(0, a.rate, duration, drain).await;
    eprintln!(
        "baseline: p99 {:.2} ms, ratio {:.4}",
        baseline.latency.p99_ms, baseline.delivery_ratio
    );
    rounds.push(baseline.clone());
    let list: Vec<Attack> = if a.attacks.is_empty() {
        Attack::ALL.to_vec()
    } else {
        a.attacks.clone()
    };
    let mut reports = Vec::new();
    for (i, &attack) in list.iter().enumerate() {
        let counters = Arc::new(AttackCounters::default());
        let rss = RssSampler::start(common.server_pid());
        let started = Instant::now();
        let running = attacks::spawn(
            attack,
            Arc::clone(&target),
            Arc::clone(&counters),
            a.attackers.max(1),
            a.attack_rate.max(1),
            started + duration,
        );
        let honest = h.round(i as u32 + 1, a.rate, duration, drain).await;
        let attack_seconds = started.elapsed().as_secs_f64();
        running.join();
        tokio::time::sleep(Duration::from_secs(a.settle_secs)).await;
        let (before, peak, after) = rss.stop();
        let growth = before.zip(peak).map(|(b, p)| p.saturating_sub(b));
        let verdict = Verdict::of(growth, honest.latency.p99_ms, honest.delivery_ratio);
        eprintln!(
            "{attack:?}: rss +{} kB (peak), honest p99 {:.2} ms ratio {:.4}, attacker {:?} -> {}",
            growth.map_or_else(|| "?".into(), |g| g.to_string()),
            honest.latency.p99_ms,
            honest.delivery_ratio,
            counters.snapshot(),
            if verdict.met() {
                "targets met"
            } else {
                "TARGET MISSED"
            }
        );
        rounds.push(honest.clone());
        reports.push(AttackReport {
            attack,
            attack_seconds,
            attacker: counters.snapshot(),
            server_rss_before_kb: before,
            server_rss_peak_kb: peak,
            server_rss_after_kb: after,
            server_rss_growth_kb: growth,
            honest,
            verdict,
        });
    }
    let all_targets_met = reports.iter().all(|r| r.verdict.met());
    let parameters = serde_json::to_value(a).unwrap_or_default();
    let mut report = h.finish(parameters, server, rounds).await;
    report.abuse = Some(AbuseReport {
        baseline,
        attacks: reports,
        all_targets_met,
    });
    Ok(report)
}

/// RSS in kB before an attack, at its peak, and at the last sample.
type RssFigures = (Option<u64>, Option<u64>, Option<u64>);

/// Samples the server's RSS every 100 ms on its own thread: before, peak and last.
struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<RssFigures>>,
}

impl RssSampler {
    fn start(pid: Option<u32>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let Some(pid) = pid else {
            return Self { stop, thread: None };
        };
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let before = procfs::read_rss_kb(Some(pid)).ok();
            let (mut peak, mut last) = (before, before);
            while !flag.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                if let Ok(kb) = procfs::read_rss_kb(Some(pid)) {
                    last = Some(kb);
                    peak = Some(peak.map_or(kb, |p| p.max(kb)));
                }
            }
            (before, peak, last)
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    fn stop(mut self) -> RssFigures {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or((None, None, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_verdict_follows_the_issue_targets() {
        assert!(Verdict::of(Some(19 * 1024), 49.9, 1.0).met());
        assert!(
            !Verdict::of(Some(20 * 1024), 10.0, 1.0).met(),
            "20 MB is not under 20 MB"
        );
        assert!(!Verdict::of(Some(0), 50.0, 1.0).met());
        assert!(
            !Verdict::of(Some(0), 1.0, 0.9999).met(),
            "nothing may be lost"
        );
        let unmeasured = Verdict::of(None, 1.0, 1.0);
        assert_eq!(unmeasured.rss_growth_under_20_mb, None);
        assert!(unmeasured.met());
    }

    #[test]
    fn every_attack_is_run_by_default() {
        use clap::Parser;
        let a = crate::args::Args::try_parse_from(["live-bench", "abuse"]).expect("parses");
        let crate::args::Scenario::Abuse(a) = a.scenario else {
            panic!("not abuse");
        };
        assert!(a.attacks.is_empty());
        assert_eq!(Attack::ALL.len(), Attack::value_variants().len());
        assert_eq!((a.members, a.attack_secs), (1_000, 10));
    }
}
