//! How many `LiveRealtime`s are Ready, and for how long the longest-waiting one has not been:
//! computed at every scrape from the controller's cache, so the numbers follow creations,
//! deletions and status changes without any bookkeeping. The `LiveRealtimeNotReady` alert
//! (deploy/monitoring) fires on the second.
//!
//! The labels are bounded (`ready` is `true` or `false`): which object is not Ready is in
//! `kubectl get lrt -A`, not in a metric label. An object this operator cannot decode (it
//! writes `InvalidSpec` into its status) counts as not Ready; its wait is unknown, so it does
//! not move the longest wait.

use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::Store;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Gauge, IntGaugeVec, Opts};

use crate::controller::Guarded;
use crate::crd::LiveRealtime;
use crate::reconcile::status::types::READY;

/// Counts and the longest wait, over a set of objects.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Readiness {
    pub ready: u64,
    pub not_ready: u64,
    /// Seconds since the longest-waiting not-Ready object was last Ready (or was created, if
    /// it never was); 0 when every object is Ready.
    pub longest_not_ready_seconds: f64,
}

/// Since when `lr` has not been Ready, or `None` when it is. An object with no Ready condition
/// yet (never reconciled) has waited since its creation. Pure.
pub fn not_ready_since(lr: &LiveRealtime) -> Option<Timestamp> {
    let ready = lr
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == READY));
    match ready {
        Some(c) if c.status == "True" => None,
        Some(c) => Some(c.last_transition_time.0),
        None => Some(
            lr.metadata
                .creation_timestamp
                .as_ref()
                .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
        ),
    }
}

/// Readiness over `objects` (`None`: an object that could not be decoded) at `now`. Objects
/// being deleted are left out. Pure.
pub fn summarize<'a>(
    objects: impl IntoIterator<Item = Option<&'a LiveRealtime>>,
    now: Timestamp,
) -> Readiness {
    let mut r = Readiness::default();
    for object in objects {
        let Some(lr) = object else {
            r.not_ready += 1;
            continue;
        };
        if lr.metadata.deletion_timestamp.is_some() {
            continue;
        }
        match not_ready_since(lr) {
            None => r.ready += 1,
            Some(since) => {
                r.not_ready += 1;
                let waited = now.duration_since(since).as_secs_f64().max(0.0);
                r.longest_not_ready_seconds = r.longest_not_ready_seconds.max(waited);
            }
        }
    }
    r
}

/// The Prometheus collector over the controller's cache.
pub struct ReadinessCollector {
    store: Store<Guarded>,
    descs: Vec<Desc>,
}

impl std::fmt::Debug for ReadinessCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadinessCollector").finish_non_exhaustive()
    }
}

fn counts() -> IntGaugeVec {
    IntGaugeVec::new(
        Opts::new(
            "live_operator_liverealtimes",
            "LiveRealtimes this operator reconciles, by whether their Ready condition is True.",
        ),
        &["ready"],
    )
    .unwrap_or_else(|e| unreachable!("static metric definition: {e}"))
}

fn longest() -> Gauge {
    Gauge::with_opts(Opts::new(
        "live_operator_not_ready_longest_seconds",
        "Seconds the longest-waiting LiveRealtime has not been Ready; 0 when all are.",
    ))
    .unwrap_or_else(|e| unreachable!("static metric definition: {e}"))
}

impl ReadinessCollector {
    pub fn new(store: Store<Guarded>) -> Self {
        let mut descs: Vec<Desc> = counts().desc().into_iter().cloned().collect();
        descs.extend(longest().desc().into_iter().cloned());
        Self { store, descs }
    }
}

impl Collector for ReadinessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let objects = self.store.state();
        let r = summarize(objects.iter().map(|g| g.0.as_ref().ok()), Timestamp::now());
        let c = counts();
        c.with_label_values(&["true"])
            .set(i64::try_from(r.ready).unwrap_or(i64::MAX));
        c.with_label_values(&["false"])
            .set(i64::try_from(r.not_ready).unwrap_or(i64::MAX));
        let l = longest();
        l.set(r.longest_not_ready_seconds);
        let mut families = c.collect();
        families.extend(l.collect());
        families
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    use super::*;
    use crate::crd::LiveRealtimeStatus;

    fn at(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    fn with_ready(status: &str, since: i64) -> LiveRealtime {
        let mut lr = LiveRealtime::test();
        lr.status = Some(LiveRealtimeStatus {
            conditions: vec![Condition {
                type_: READY.into(),
                status: status.into(),
                reason: "R".into(),
                message: String::new(),
                observed_generation: Some(1),
                last_transition_time: Time(at(since)),
            }],
            ..LiveRealtimeStatus::default()
        });
        lr
    }

    #[test]
    fn the_longest_not_ready_object_sets_the_wait_and_ready_ones_do_not_count() {
        let objects = [
            with_ready("True", 0),
            with_ready("False", 100),
            with_ready("False", 400),
        ];
        let r = summarize(objects.iter().map(Some), at(700));
        assert_eq!((r.ready, r.not_ready), (1, 2));
        assert_eq!(r.longest_not_ready_seconds, 600.0);
    }

    #[test]
    fn a_never_reconciled_object_has_waited_since_its_creation() {
        let mut lr = LiveRealtime::test();
        lr.metadata.creation_timestamp = Some(Time(at(50)));
        let r = summarize([Some(&lr)], at(110));
        assert_eq!(
            (r.ready, r.not_ready, r.longest_not_ready_seconds),
            (0, 1, 60.0)
        );
    }

    #[test]
    fn everything_ready_or_being_deleted_is_no_wait() {
        let mut deleted = with_ready("False", 0);
        deleted.metadata.deletion_timestamp = Some(Time(at(1)));
        let r = summarize([Some(&with_ready("True", 0)), Some(&deleted)], at(10_000));
        assert_eq!(
            r,
            Readiness {
                ready: 1,
                not_ready: 0,
                longest_not_ready_seconds: 0.0
            }
        );
    }

    #[test]
    fn an_undecodable_object_is_not_ready_with_an_unknown_wait() {
        let r = summarize([None, Some(&with_ready("True", 0))], at(10_000));
        assert_eq!(
            (r.ready, r.not_ready, r.longest_not_ready_seconds),
            (1, 1, 0.0)
        );
    }

    #[test]
    fn the_collector_reads_the_cache_at_scrape_time() {
        let (store, mut writer) = kube::runtime::reflector::store::<Guarded>();
        let collector = ReadinessCollector::new(store);
        let registry = prometheus::Registry::new();
        registry.register(Box::new(collector)).unwrap();
        let guard = kube::core::DeserializeGuard(Ok(with_ready("False", 0)));
        writer.apply_watcher_event(&kube::runtime::watcher::Event::Apply(guard));
        let text = {
            let mut buf = Vec::new();
            prometheus::Encoder::encode(
                &prometheus::TextEncoder::new(),
                &registry.gather(),
                &mut buf,
            )
            .unwrap();
            String::from_utf8(buf).unwrap()
        };
        assert!(
            text.contains("live_operator_liverealtimes{ready=\"false\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("live_operator_liverealtimes{ready=\"true\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("live_operator_not_ready_longest_seconds "),
            "{text}"
        );
    }
}
