//! Status and conditions, computed purely from what the last apply observed, with the time
//! passed in. Transition times move only when a condition's status flips, and reasons are stable
//! identifiers (documented in docs/liverealtime.md), so `kubectl wait --for=condition=Ready`
//! and alerting can rely on them. Events are derived from the same comparison: one per state
//! change, never one per reconcile (so a failure repeated on every retry is one Warning).
//!
//! Every failure of a reconcile step is a [`Problem`] and lands in `Ready` (reason and the
//! apiserver's message). `Reconciling` and `Stalled` follow the kstatus convention, so Flux,
//! Argo CD (with kstatus health) and `kubectl wait` read health without a custom check:
//! `Stalled=True` when a human must act, `Reconciling=True` while the operator is still
//! getting there.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::{Facts, gateway_selector_string};
use crate::crd::{LiveRealtime, LiveRealtimeStatus, RedisMode};

/// Condition types.
pub mod types {
    pub const READY: &str = "Ready";
    pub const RECONCILING: &str = "Reconciling";
    pub const STALLED: &str = "Stalled";
    pub const PROGRESSING: &str = "Progressing";
    pub const DEGRADED: &str = "Degraded";
    pub const REDIS_READY: &str = "RedisReady";
    pub const AUTOSCALING_READY: &str = "AutoscalingReady";
    pub const SERVICE_MONITOR_READY: &str = "ServiceMonitorReady";
    pub const HTTP_ROUTE_READY: &str = "HTTPRouteReady";
    pub const RECONCILIATION_PAUSED: &str = "ReconciliationPaused";
}

/// Condition reasons (stable: users alert on them).
pub mod reasons {
    pub const AVAILABLE: &str = "Available";
    pub const GATEWAY_UNAVAILABLE: &str = "GatewayUnavailable";
    pub const REDIS_NOT_READY: &str = "RedisNotReady";
    pub const INVALID_CONFIG: &str = "InvalidConfig";
    pub const ROLLING_OUT: &str = "RollingOut";
    pub const ROLLOUT_COMPLETE: &str = "RolloutComplete";
    pub const PROGRESS_DEADLINE_EXCEEDED: &str = "ProgressDeadlineExceeded";
    pub const AUTOSCALING_UNAVAILABLE: &str = "AutoscalingUnavailable";
    pub const AS_EXPECTED: &str = "AsExpected";
    pub const EXTERNAL: &str = "External";
    pub const STARTING: &str = "Starting";
    pub const DISABLED: &str = "Disabled";
    pub const ACTIVE: &str = "Active";
    pub const PENDING: &str = "Pending";
    pub const METRIC_UNAVAILABLE: &str = "MetricUnavailable";
    pub const CANNOT_SCALE: &str = "CannotScale";
    pub const APPLIED: &str = "Applied";
    pub const CRD_NOT_INSTALLED: &str = "CRDNotInstalled";
    pub const PAUSED: &str = "Paused";
    pub const RECONCILING: &str = "Reconciling";
    pub const CONFIG_UPDATED: &str = "ConfigUpdated";
    pub const RESTART_SETTINGS_CHANGED: &str = "RestartSettingsChanged";
    pub const SCALED_TO_ZERO: &str = "ScaledToZero";
    pub const APPLY_FAILED: &str = "ApplyFailed";
    pub const NAME_CONFLICT: &str = "NameConflict";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const MISSING_SECRET: &str = "MissingSecret";
    pub const RECONCILED: &str = "Reconciled";
}

/// Longest condition message: the apiserver allows 32 KiB, `kubectl describe` readers less.
const MAX_MESSAGE: usize = 1024;

/// One failed step of a reconcile.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// A stable reason: `ApplyFailed`, `NameConflict`, `MissingSecret`.
    pub reason: &'static str,
    /// What failed, with the apiserver's message.
    pub message: String,
    /// A human must act (a 4xx, a conflict, a missing Secret); otherwise it is retried.
    pub stalled: bool,
}

impl Problem {
    /// A failed request on `kind`/`name` (apply, delete or read).
    pub fn request(verb: &str, kind: &str, name: &str, error: &kube::Error) -> Self {
        let (stalled, detail) = match error {
            // 4xx but conflicts and throttling are the spec's or RBAC's fault: retrying the
            // same request gives the same answer.
            kube::Error::Api(s) => (
                (400..500).contains(&s.code) && s.code != 409 && s.code != 429,
                format!("{} ({})", s.message, s.code),
            ),
            other => (false, other.to_string()),
        };
        Self {
            reason: reasons::APPLY_FAILED,
            message: format!("{verb} {kind} {name}: {detail}"),
            stalled,
        }
    }
}

fn truncate(mut message: String) -> String {
    if message.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        message.truncate(end);
        message.push('…');
    }
    message
}

/// What one reconcile observed: the apply responses (which carry live status) and the facts.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub gateway: Option<Deployment>,
    pub redis: Option<Deployment>,
    pub hpa: Option<HorizontalPodAutoscaler>,
    pub service_monitor_crd: bool,
    pub http_route_crd: bool,
    /// The gateway config failed `GatewayConfig::validate` (nothing was applied).
    pub invalid_config: Option<String>,
    pub config_hash: Option<String>,
    pub restart_hash: Option<String>,
    /// The gateway image of the pod template.
    pub image: Option<String>,
    /// Every step that failed, in order.
    pub problems: Vec<Problem>,
}

impl Observed {
    /// What the reconcile learnt before applying anything.
    pub fn new(facts: Facts) -> Self {
        Self {
            service_monitor_crd: facts.service_monitor_crd,
            http_route_crd: facts.http_route_crd,
            ..Self::default()
        }
    }
}

/// A condition as computed, before transition-time bookkeeping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

fn cond(
    type_: &'static str,
    status: bool,
    reason: &'static str,
    message: impl Into<String>,
) -> Cond {
    Cond {
        type_,
        status,
        reason,
        message: message.into(),
    }
}

/// Rollout facts of a Deployment apply response.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Rollout {
    desired: i32,
    replicas: i32,
    updated: i32,
    ready: i32,
    available: i32,
    current_generation: bool,
    deadline_exceeded: bool,
}

impl Rollout {
    fn of(d: &Deployment) -> Self {
        let status = d.status.clone().unwrap_or_default();
        let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        Self {
            desired,
            replicas: status.replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            ready: status.ready_replicas.unwrap_or(0),
            available: status.available_replicas.unwrap_or(0),
            current_generation: status.observed_generation >= d.metadata.generation,
            deadline_exceeded: status.conditions.iter().flatten().any(|c| {
                c.type_ == "Progressing"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
            }),
        }
    }

    fn complete(&self) -> bool {
        self.current_generation
            && self.updated >= self.desired
            && self.replicas == self.updated
            && self.available >= self.desired
    }
}

/// The conditions for an observation. Pure.
pub fn conditions(lr: &LiveRealtime, observed: &Observed) -> Vec<Cond> {
    use reasons as r;
    use types as t;

    let paused = cond(
        t::RECONCILIATION_PAUSED,
        false,
        r::RECONCILING,
        "the operator reconciles this resource",
    );
    if let Some(problem) = &observed.invalid_config {
        let message = format!("gateway config is invalid, nothing was applied: {problem}");
        return vec![
            cond(t::READY, false, r::INVALID_CONFIG, message.clone()),
            cond(t::RECONCILING, false, r::INVALID_CONFIG, message.clone()),
            cond(t::STALLED, true, r::INVALID_CONFIG, message.clone()),
            cond(t::PROGRESSING, false, r::INVALID_CONFIG, message.clone()),
            cond(t::DEGRADED, true, r::INVALID_CONFIG, message),
            paused,
        ];
    }

    let gateway = observed
        .gateway
        .as_ref()
        .map(Rollout::of)
        .unwrap_or_default();

    let redis = match (lr.spec.redis.mode, observed.redis.as_ref()) {
        (RedisMode::External, _) => cond(
            t::REDIS_READY,
            true,
            r::EXTERNAL,
            "external Redis is not managed; the gateway's readiness reports Redis errors",
        ),
        (RedisMode::Managed, Some(d)) if Rollout::of(d).ready >= 1 => {
            cond(t::REDIS_READY, true, r::AVAILABLE, "managed Redis is ready")
        }
        (RedisMode::Managed, _) => cond(
            t::REDIS_READY,
            false,
            r::STARTING,
            "waiting for the managed Redis pod to become ready",
        ),
    };

    let autoscaling = if !lr.spec.autoscaling_enabled() {
        cond(
            t::AUTOSCALING_READY,
            true,
            r::DISABLED,
            "autoscaling is off; spec.replicas sets the pod count",
        )
    } else {
        hpa_condition(observed.hpa.as_ref())
    };

    let service_monitor = if !lr.spec.monitoring.service_monitor.enabled {
        cond(
            t::SERVICE_MONITOR_READY,
            true,
            r::DISABLED,
            "ServiceMonitor is disabled",
        )
    } else if !observed.service_monitor_crd {
        cond(
            t::SERVICE_MONITOR_READY,
            false,
            r::CRD_NOT_INSTALLED,
            "the monitoring.coreos.com/v1 ServiceMonitor CRD is not installed; install \
             prometheus-operator or set spec.monitoring.serviceMonitor.enabled=false",
        )
    } else {
        cond(
            t::SERVICE_MONITOR_READY,
            true,
            r::APPLIED,
            "ServiceMonitor applied",
        )
    };

    let http_route = if !lr.spec.http_route.as_ref().is_some_and(|r| r.enabled) {
        cond(
            t::HTTP_ROUTE_READY,
            true,
            r::DISABLED,
            "no HTTPRoute is requested",
        )
    } else if !observed.http_route_crd {
        cond(
            t::HTTP_ROUTE_READY,
            false,
            r::CRD_NOT_INSTALLED,
            "the gateway.networking.k8s.io/v1 HTTPRoute CRD is not installed; install the \
             Gateway API CRDs or set spec.httpRoute.enabled=false",
        )
    } else {
        cond(t::HTTP_ROUTE_READY, true, r::APPLIED, "HTTPRoute applied")
    };

    let counts = format!(
        "{} of {} gateway pods updated, {} ready, {} available",
        gateway.updated, gateway.desired, gateway.ready, gateway.available
    );
    let progressing = if gateway.deadline_exceeded {
        cond(
            t::PROGRESSING,
            false,
            r::PROGRESS_DEADLINE_EXCEEDED,
            format!("rollout is stuck: {counts}"),
        )
    } else if gateway.complete() {
        cond(t::PROGRESSING, false, r::ROLLOUT_COMPLETE, counts.clone())
    } else {
        cond(t::PROGRESSING, true, r::ROLLING_OUT, counts.clone())
    };

    // The first problem of the most pressing reason speaks for the tier: a conflict or a
    // refused apply explains everything after it.
    let problem = [r::NAME_CONFLICT, r::APPLY_FAILED, r::MISSING_SECRET]
        .iter()
        .find_map(|reason| {
            let same: Vec<&Problem> = observed
                .problems
                .iter()
                .filter(|p| p.reason == *reason)
                .collect();
            (!same.is_empty()).then(|| {
                let message = same
                    .iter()
                    .map(|p| p.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; ");
                (*reason, truncate(message), same.iter().any(|p| p.stalled))
            })
        });

    let degraded = if let Some((reason, message, true)) = &problem {
        cond(t::DEGRADED, true, reason, message.clone())
    } else if gateway.deadline_exceeded {
        cond(
            t::DEGRADED,
            true,
            r::PROGRESS_DEADLINE_EXCEEDED,
            format!("rollout is stuck: {counts}"),
        )
    } else if !autoscaling.status && autoscaling.reason != r::PENDING {
        cond(
            t::DEGRADED,
            true,
            r::AUTOSCALING_UNAVAILABLE,
            autoscaling.message.clone(),
        )
    } else {
        cond(t::DEGRADED, false, r::AS_EXPECTED, "all parts are working")
    };

    let ready = if let Some((reason, message, _)) = &problem {
        cond(t::READY, false, reason, message.clone())
    } else if observed.gateway.is_some() && gateway.desired == 0 {
        cond(
            t::READY,
            true,
            r::SCALED_TO_ZERO,
            "spec.replicas is 0: no gateway pod runs until it is scaled up",
        )
    } else if gateway.available < gateway.desired.max(1) {
        cond(t::READY, false, r::GATEWAY_UNAVAILABLE, counts)
    } else if !redis.status {
        cond(t::READY, false, r::REDIS_NOT_READY, redis.message.clone())
    } else {
        cond(t::READY, true, r::AVAILABLE, counts)
    };

    let stalled = match &problem {
        Some((reason, message, true)) => cond(t::STALLED, true, reason, message.clone()),
        _ if gateway.deadline_exceeded => cond(
            t::STALLED,
            true,
            r::PROGRESS_DEADLINE_EXCEEDED,
            progressing.message.clone(),
        ),
        _ => cond(t::STALLED, false, r::AS_EXPECTED, "nothing needs a human"),
    };
    let reconciling = if !stalled.status && (!ready.status || progressing.status) {
        let (reason, message) = if ready.status {
            (progressing.reason, progressing.message.clone())
        } else {
            (ready.reason, ready.message.clone())
        };
        cond(t::RECONCILING, true, reason, message)
    } else {
        cond(
            t::RECONCILING,
            false,
            if stalled.status {
                stalled.reason
            } else {
                r::RECONCILED
            },
            "the children match the spec",
        )
    };

    vec![
        ready,
        reconciling,
        stalled,
        progressing,
        degraded,
        redis,
        autoscaling,
        service_monitor,
        http_route,
        paused,
    ]
}

fn hpa_condition(hpa: Option<&HorizontalPodAutoscaler>) -> Cond {
    use reasons as r;
    use types as t;
    let hpa_conditions = hpa
        .and_then(|h| h.status.as_ref())
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    let find = |type_: &str| hpa_conditions.iter().find(|c| c.type_ == type_);
    match (find("AbleToScale"), find("ScalingActive")) {
        (Some(c), _) if c.status == "False" => cond(
            t::AUTOSCALING_READY,
            false,
            r::CANNOT_SCALE,
            format!(
                "HPA cannot scale: {}",
                c.message.clone().unwrap_or_default()
            ),
        ),
        (_, Some(c)) if c.status == "False" => cond(
            t::AUTOSCALING_READY,
            false,
            r::METRIC_UNAVAILABLE,
            format!(
                "HPA cannot read ws_active_connections (is a custom-metrics adapter such as \
                 prometheus-adapter installed?): {}",
                c.message.clone().unwrap_or_default()
            ),
        ),
        (_, Some(_)) => cond(
            t::AUTOSCALING_READY,
            true,
            r::ACTIVE,
            "HPA is scaling on ws_active_connections",
        ),
        _ => cond(
            t::AUTOSCALING_READY,
            false,
            r::PENDING,
            "waiting for the HPA's first evaluation",
        ),
    }
}

/// Merges computed conditions into the previous ones: `lastTransitionTime` moves only when the
/// status flips; every condition carries the observed generation. Pure.
pub fn merge_conditions(
    previous: &[Condition],
    computed: &[Cond],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    computed
        .iter()
        .map(|c| {
            let status = if c.status { "True" } else { "False" }.to_owned();
            let last_transition_time = previous
                .iter()
                .find(|p| p.type_ == c.type_ && p.status == status)
                .map(|p| p.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: c.type_.to_owned(),
                status,
                reason: c.reason.to_owned(),
                message: c.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// The status after a reconcile. Pure.
pub fn compute(lr: &LiveRealtime, observed: &Observed, now: Timestamp) -> LiveRealtimeStatus {
    let previous = lr.status.clone().unwrap_or_default();
    let generation = lr.metadata.generation;
    let gateway_status = observed.gateway.as_ref().and_then(|d| d.status.clone());
    // With the Deployment in hand an absent count is 0 (the apiserver omits zeros): falling
    // back to the previous value would leave the scale subresource stale at 0 replicas.
    let (replicas, ready_replicas) = match (&observed.gateway, &gateway_status) {
        (Some(_), status) => (
            status.as_ref().and_then(|s| s.replicas).unwrap_or(0),
            status.as_ref().and_then(|s| s.ready_replicas).unwrap_or(0),
        ),
        (None, _) => (previous.replicas, previous.ready_replicas),
    };
    let desired = observed
        .gateway
        .as_ref()
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas)
        .unwrap_or(lr.spec.replicas);
    LiveRealtimeStatus {
        observed_generation: generation,
        replicas,
        ready_replicas,
        ready_ratio: Some(format!("{ready_replicas}/{desired}")),
        image: observed.image.clone().or(previous.image.clone()),
        selector: Some(gateway_selector_string(lr)),
        config_hash: observed
            .config_hash
            .clone()
            .or(previous.config_hash.clone()),
        restart_hash: observed
            .restart_hash
            .clone()
            .or(previous.restart_hash.clone()),
        conditions: merge_conditions(
            &previous.conditions,
            &conditions(lr, observed),
            generation,
            now,
        ),
    }
}

/// The status while paused: everything as last observed, plus `ReconciliationPaused=True`.
/// Pure.
pub fn paused(lr: &LiveRealtime, now: Timestamp) -> LiveRealtimeStatus {
    let previous = lr.status.clone().unwrap_or_default();
    let pause = cond(
        types::RECONCILIATION_PAUSED,
        true,
        reasons::PAUSED,
        format!(
            "the {} annotation is \"true\": children are left as they are",
            crate::crd::PAUSE_ANNOTATION
        ),
    );
    let mut conditions: Vec<Condition> = previous
        .conditions
        .iter()
        .filter(|c| c.type_ != types::RECONCILIATION_PAUSED)
        .cloned()
        .collect();
    conditions.extend(merge_conditions(
        &previous.conditions,
        &[pause],
        lr.metadata.generation,
        now,
    ));
    LiveRealtimeStatus {
        selector: Some(gateway_selector_string(lr)),
        conditions,
        ..previous
    }
}

/// The conditions of an object the operator cannot decode (a field this version does not
/// know, from a newer CRD): `Ready=False`/`Stalled=True` with reason `InvalidSpec`; the other
/// conditions keep their last value. Pure.
pub fn invalid_spec(
    previous: &[Condition],
    generation: Option<i64>,
    problem: &str,
    now: Timestamp,
) -> Vec<Condition> {
    use reasons as r;
    use types as t;
    let message = truncate(format!(
        "this operator cannot read the spec, nothing was applied (an older operator than the \
         CRD?): {problem}"
    ));
    let computed = [
        cond(t::READY, false, r::INVALID_SPEC, message.clone()),
        cond(t::RECONCILING, false, r::INVALID_SPEC, message.clone()),
        cond(t::STALLED, true, r::INVALID_SPEC, message),
    ];
    let mut out = merge_conditions(previous, &computed, generation, now);
    out.extend(
        previous
            .iter()
            .filter(|p| !computed.iter().any(|c| c.type_ == p.type_))
            .cloned(),
    );
    out
}

/// An event to publish about a state change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notice {
    pub warning: bool,
    pub reason: String,
    pub note: String,
}

/// Reasons a user can act on: worth an event even when a condition first appears in that
/// state. Transitional reasons (`Starting`, `Pending`, ...) on a new object are not.
fn user_fixable(reason: &str) -> bool {
    [
        reasons::INVALID_CONFIG,
        reasons::INVALID_SPEC,
        reasons::APPLY_FAILED,
        reasons::NAME_CONFLICT,
        reasons::MISSING_SECRET,
        reasons::CRD_NOT_INSTALLED,
        reasons::METRIC_UNAVAILABLE,
        reasons::CANNOT_SCALE,
        reasons::PROGRESS_DEADLINE_EXCEEDED,
        reasons::AUTOSCALING_UNAVAILABLE,
    ]
    .contains(&reason)
}

/// True when a condition in this state needs a human.
fn is_bad(type_: &str, status: &str) -> bool {
    match type_ {
        types::DEGRADED | types::STALLED => status == "True",
        types::PROGRESSING | types::RECONCILING | types::RECONCILIATION_PAUSED => false,
        _ => status == "False",
    }
}

/// The events a status change deserves: one per condition that flipped (or first appeared in
/// a bad state), and one for each new config or restart hash. Pure.
pub fn notices(previous: Option<&LiveRealtimeStatus>, next: &LiveRealtimeStatus) -> Vec<Notice> {
    let empty = LiveRealtimeStatus::default();
    let previous = previous.unwrap_or(&empty);
    let mut out: Vec<Notice> = Vec::new();
    for c in &next.conditions {
        let before = previous.conditions.iter().find(|p| p.type_ == c.type_);
        let bad = is_bad(&c.type_, &c.status);
        let changed = match before {
            Some(p) => p.status != c.status || (bad && p.reason != c.reason),
            None => {
                (bad && user_fixable(&c.reason))
                    || (c.type_ == types::RECONCILIATION_PAUSED && c.status == "True")
            }
        };
        if changed {
            let note = format!("{} is {}: {}", c.type_, c.status, c.message);
            // One event per reason: the recorder would fold repeats into a series anyway.
            match out
                .iter_mut()
                .find(|n| n.reason == c.reason && n.warning == bad)
            {
                // Ready, Stalled and Degraded often carry the same message: say it once.
                Some(n) if n.note.contains(&c.message) => {}
                Some(n) => n.note = format!("{}; {note}", n.note),
                None => out.push(Notice {
                    warning: bad,
                    reason: c.reason.clone(),
                    note,
                }),
            }
        }
    }
    if let (Some(old), Some(new)) = (&previous.config_hash, &next.config_hash)
        && old != new
    {
        out.push(Notice {
            warning: false,
            reason: reasons::CONFIG_UPDATED.to_owned(),
            note: format!(
                "gateway config updated to {}; pods reload it without restarting",
                short(new)
            ),
        });
    }
    if let (Some(old), Some(new)) = (&previous.restart_hash, &next.restart_hash)
        && old != new
    {
        out.push(Notice {
            warning: false,
            reason: reasons::RESTART_SETTINGS_CHANGED.to_owned(),
            note: format!("restart-only settings changed ({}); pods roll", short(new)),
        });
    }
    for n in &mut out {
        if n.note.len() > MAX_NOTE {
            let mut end = MAX_NOTE - 3;
            while !n.note.is_char_boundary(end) {
                end -= 1;
            }
            n.note.truncate(end);
            n.note.push('…');
        }
    }
    out
}

/// Longest event note the apiserver accepts (events.k8s.io/v1: 1 KiB).
const MAX_NOTE: usize = 1000;

fn short(hash: &str) -> &str {
    hash.get(..12).unwrap_or(hash)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::apps::v1::{DeploymentSpec, DeploymentStatus};
    use k8s_openapi::api::autoscaling::v2::{
        HorizontalPodAutoscalerCondition, HorizontalPodAutoscalerStatus,
    };
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn deployment(desired: i32, ready: i32) -> Deployment {
        Deployment {
            metadata: ObjectMeta {
                generation: Some(2),
                ..ObjectMeta::default()
            },
            spec: Some(DeploymentSpec {
                replicas: Some(desired),
                ..DeploymentSpec::default()
            }),
            status: Some(DeploymentStatus {
                observed_generation: Some(2),
                replicas: Some(desired),
                updated_replicas: Some(desired),
                ready_replicas: Some(ready),
                available_replicas: Some(ready),
                ..DeploymentStatus::default()
            }),
        }
    }

    fn healthy() -> Observed {
        Observed {
            gateway: Some(deployment(2, 2)),
            redis: Some(deployment(1, 1)),
            service_monitor_crd: true,
            ..Observed::default()
        }
    }

    fn get<'a>(conds: &'a [Cond], type_: &str) -> &'a Cond {
        conds.iter().find(|c| c.type_ == type_).unwrap()
    }

    fn t(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).unwrap()
    }

    #[test]
    fn a_fully_available_tier_is_ready_and_not_degraded() {
        let conds = conditions(&LiveRealtime::test(), &healthy());
        assert!(get(&conds, types::READY).status);
        assert_eq!(get(&conds, types::READY).reason, reasons::AVAILABLE);
        assert!(!get(&conds, types::DEGRADED).status);
        assert!(!get(&conds, types::PROGRESSING).status);
        assert_eq!(
            get(&conds, types::SERVICE_MONITOR_READY).reason,
            reasons::APPLIED
        );
    }

    #[test]
    fn missing_pods_make_ready_false_and_progressing_true() {
        let mut observed = healthy();
        observed.gateway = Some(deployment(2, 1));
        let conds = conditions(&LiveRealtime::test(), &observed);
        assert_eq!(
            get(&conds, types::READY).reason,
            reasons::GATEWAY_UNAVAILABLE
        );
        assert!(get(&conds, types::PROGRESSING).status);
    }

    #[test]
    fn an_unready_managed_redis_blocks_ready() {
        let mut observed = healthy();
        observed.redis = Some(deployment(1, 0));
        let conds = conditions(&LiveRealtime::test(), &observed);
        assert_eq!(get(&conds, types::READY).reason, reasons::REDIS_NOT_READY);
        assert_eq!(get(&conds, types::REDIS_READY).reason, reasons::STARTING);
    }

    #[test]
    fn a_missing_service_monitor_crd_is_a_condition_not_unreadiness() {
        let mut observed = healthy();
        observed.service_monitor_crd = false;
        let conds = conditions(&LiveRealtime::test(), &observed);
        let sm = get(&conds, types::SERVICE_MONITOR_READY);
        assert!(!sm.status);
        assert_eq!(sm.reason, reasons::CRD_NOT_INSTALLED);
        assert!(get(&conds, types::READY).status);
        assert!(!get(&conds, types::DEGRADED).status);
    }

    #[test]
    fn an_hpa_without_its_metric_degrades_the_tier() {
        let mut observed = healthy();
        observed.gateway = Some(deployment(3, 3));
        observed.hpa = Some(HorizontalPodAutoscaler {
            status: Some(HorizontalPodAutoscalerStatus {
                conditions: Some(vec![HorizontalPodAutoscalerCondition {
                    type_: "ScalingActive".into(),
                    status: "False".into(),
                    reason: Some("FailedGetPodsMetric".into()),
                    message: Some("no metrics returned".into()),
                    ..HorizontalPodAutoscalerCondition::default()
                }]),
                ..HorizontalPodAutoscalerStatus::default()
            }),
            ..HorizontalPodAutoscaler::default()
        });
        let conds = conditions(&LiveRealtime::test().autoscaled(), &observed);
        assert_eq!(
            get(&conds, types::AUTOSCALING_READY).reason,
            reasons::METRIC_UNAVAILABLE
        );
        assert_eq!(
            get(&conds, types::DEGRADED).reason,
            reasons::AUTOSCALING_UNAVAILABLE
        );
    }

    #[test]
    fn a_new_hpa_without_status_is_pending_not_degraded() {
        let mut observed = healthy();
        observed.hpa = Some(HorizontalPodAutoscaler::default());
        let conds = conditions(&LiveRealtime::test().autoscaled(), &observed);
        assert_eq!(
            get(&conds, types::AUTOSCALING_READY).reason,
            reasons::PENDING
        );
        assert!(!get(&conds, types::DEGRADED).status);
    }

    #[test]
    fn transition_times_move_only_when_status_flips() {
        let lr = LiveRealtime::test();
        let first = merge_conditions(&[], &conditions(&lr, &healthy()), Some(1), t(0));
        let again = merge_conditions(&first, &conditions(&lr, &healthy()), Some(2), t(60));
        assert_eq!(first[0].last_transition_time, again[0].last_transition_time);
        assert_eq!(again[0].observed_generation, Some(2));
        let mut broken = healthy();
        broken.gateway = Some(deployment(2, 0));
        let flipped = merge_conditions(&again, &conditions(&lr, &broken), Some(2), t(120));
        assert_eq!(flipped[0].type_, types::READY);
        assert_eq!(flipped[0].last_transition_time, Time(t(120)));
    }

    #[test]
    fn events_fire_on_changes_only() {
        let mut lr = LiveRealtime::test();
        lr.metadata.generation = Some(2);
        let mut observed = healthy();
        observed.service_monitor_crd = false;
        observed.config_hash = Some("a".repeat(64));
        let first = compute(&lr, &observed, t(0));
        let notes = notices(None, &first);
        assert_eq!(notes.len(), 1, "{notes:?}");
        let crd = notes
            .iter()
            .find(|n| n.reason == reasons::CRD_NOT_INSTALLED)
            .unwrap();
        assert!(crd.warning);

        lr.status = Some(first.clone());
        let second = compute(&lr, &observed, t(30));
        assert!(notices(Some(&first), &second).is_empty());

        observed.config_hash = Some("b".repeat(64));
        let third = compute(&lr, &observed, t(60));
        let notes = notices(Some(&second), &third);
        assert_eq!(notes.len(), 1);
        assert_eq!(notes[0].reason, reasons::CONFIG_UPDATED);
        assert!(!notes[0].warning);
    }

    #[test]
    fn pausing_keeps_the_last_conditions_and_adds_paused() {
        let mut lr = LiveRealtime::test();
        lr.status = Some(compute(&lr, &healthy(), t(0)));
        let status = paused(&lr.paused(), t(10));
        let p = status
            .conditions
            .iter()
            .find(|c| c.type_ == types::RECONCILIATION_PAUSED)
            .unwrap();
        assert_eq!(p.status, "True");
        assert!(
            status
                .conditions
                .iter()
                .any(|c| c.type_ == types::READY && c.status == "True")
        );
    }

    #[test]
    fn zero_replicas_are_reported_as_zero_not_the_last_count() {
        let mut lr = LiveRealtime::test();
        lr.status = Some(compute(&lr, &healthy(), t(0)));
        lr.spec.replicas = 0;
        // The apiserver omits zero counts: a scaled-to-zero Deployment has no replicas at all.
        let mut zero = deployment(0, 0);
        zero.status = Some(DeploymentStatus {
            observed_generation: Some(2),
            ..DeploymentStatus::default()
        });
        let observed = Observed {
            gateway: Some(zero),
            ..healthy()
        };
        let status = compute(&lr, &observed, t(10));
        assert_eq!(status.replicas, 0);
        assert_eq!(status.ready_replicas, 0);
        assert_eq!(status.ready_ratio.as_deref(), Some("0/0"));
        let ready = status
            .conditions
            .iter()
            .find(|c| c.type_ == types::READY)
            .unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_str()),
            ("True", reasons::SCALED_TO_ZERO)
        );
    }

    #[test]
    fn a_failed_step_is_ready_false_stalled_with_the_apiservers_message() {
        let mut observed = healthy();
        observed.problems.push(Problem {
            reason: reasons::APPLY_FAILED,
            message: "applying Service chat: invalid annotation (422)".into(),
            stalled: true,
        });
        let conds = conditions(&LiveRealtime::test(), &observed);
        let ready = get(&conds, types::READY);
        assert!(!ready.status);
        assert_eq!(ready.reason, reasons::APPLY_FAILED);
        assert!(ready.message.contains("(422)"));
        assert!(get(&conds, types::STALLED).status);
        assert!(!get(&conds, types::RECONCILING).status);
    }

    #[test]
    fn an_invalid_config_is_degraded_with_a_stable_reason() {
        let observed = Observed {
            invalid_config: Some("bad origin".into()),
            ..Observed::default()
        };
        let conds = conditions(&LiveRealtime::test(), &observed);
        assert_eq!(get(&conds, types::DEGRADED).reason, reasons::INVALID_CONFIG);
        assert!(!get(&conds, types::READY).status);
    }
}
