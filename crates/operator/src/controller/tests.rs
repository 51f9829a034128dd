//! Controller tests on kube's mocked API client: a fake apiserver answers every request the
//! reconciler makes and records it, and each test asserts the requests (method, path, body).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use kube::Client;
use kube::client::Body;
use serde_json::{Value, json};

use super::*;
use crate::metrics::Metrics;
use crate::reconcile::secrets;
use crate::reconcile::status::{reasons, types};

const NS_PATH: &str = "/namespaces/live";
const LRT: &str = "/apis/realtime.halobuzz.com/v1alpha1/namespaces/live/liverealtimes/chat";
const DEPLOYMENT: &str = "/apis/apps/v1/namespaces/live/deployments/chat";
const REDIS_DEPLOYMENT: &str = "/apis/apps/v1/namespaces/live/deployments/chat-redis";
const CONFIG_MAP: &str = "/api/v1/namespaces/live/configmaps/chat-config";
const SERVICE: &str = "/api/v1/namespaces/live/services/chat";
const REDIS_SERVICE: &str = "/api/v1/namespaces/live/services/chat-redis";
const REDIS_NETWORK_POLICY: &str =
    "/apis/networking.k8s.io/v1/namespaces/live/networkpolicies/chat-redis";
const HPA: &str = "/apis/autoscaling/v2/namespaces/live/horizontalpodautoscalers/chat";
const PDB: &str = "/apis/policy/v1/namespaces/live/poddisruptionbudgets/chat";
const SERVICE_MONITOR: &str = "/apis/monitoring.coreos.com/v1/namespaces/live/servicemonitors/chat";
const ADMIN_SERVICE: &str = "/api/v1/namespaces/live/services/chat-admin";
const REDIS_PDB: &str = "/apis/policy/v1/namespaces/live/poddisruptionbudgets/chat-redis";
const REDIS_SECRET: &str = "/api/v1/namespaces/live/secrets/chat-redis";
const SECRETS: &str = "/api/v1/namespaces/live/secrets";
const MONITORING_DISCOVERY: &str = "/apis/monitoring.coreos.com/v1";
const EVENTS: &str = "/apis/events.k8s.io/v1/namespaces/live/events";

/// One request the reconciler made.
#[derive(Clone, Debug)]
struct Recorded {
    method: String,
    path: String,
    query: String,
    body: Value,
}

impl Recorded {
    /// A query parameter's value.
    fn param(&self, key: &str) -> Option<&str> {
        self.query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v)
    }
}

/// A tiny in-memory apiserver: applies replace the stored object, GETs read it, DELETEs remove
/// it. `statuses` are merged into apply responses (what the Deployment controller would report).
#[derive(Debug, Default)]
struct FakeApiServer {
    objects: BTreeMap<String, Value>,
    statuses: BTreeMap<String, Value>,
    service_monitor_crd: bool,
    recorded: Vec<Recorded>,
}

fn not_found() -> (StatusCode, Value) {
    (
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": "not found", "reason": "NotFound", "code": 404}),
    )
}

impl FakeApiServer {
    fn handle(&mut self, method: &str, path: &str, body: &Value) -> (StatusCode, Value) {
        match method {
            "GET" if path == MONITORING_DISCOVERY => {
                if self.service_monitor_crd {
                    (
                        StatusCode::OK,
                        json!({"kind": "APIResourceList", "apiVersion": "v1",
                               "groupVersion": "monitoring.coreos.com/v1",
                               "resources": [{"name": "servicemonitors", "singularName": "servicemonitor",
                                   "namespaced": true, "kind": "ServiceMonitor",
                                   "verbs": ["get", "list", "watch", "create", "patch", "delete"]}]}),
                    )
                } else {
                    not_found()
                }
            }
            "GET" => match self.objects.get(path) {
                Some(obj) => {
                    let mut obj = obj.clone();
                    if let Some(status) = self.statuses.get(path) {
                        obj["status"] = status.clone();
                    }
                    (StatusCode::OK, obj)
                }
                None => not_found(),
            },
            "PATCH" => {
                let mut obj = body.clone();
                if let Some(parent) = path.strip_suffix("/status") {
                    let mut parent_obj = self.objects.get(parent).cloned().unwrap_or(Value::Null);
                    parent_obj["status"] = body["status"].clone();
                    self.objects.insert(parent.to_owned(), parent_obj.clone());
                    return (StatusCode::OK, parent_obj);
                }
                if body.get("status").is_some() && body.get("kind").is_none() {
                    // A merge patch of status (an undecodable object's InvalidSpec).
                    let mut parent = self.objects.get(path).cloned().unwrap_or(Value::Null);
                    parent["status"] = body["status"].clone();
                    return (StatusCode::OK, parent);
                }
                // Server-side apply: what the apiserver would add (a uid, our managed fields).
                obj["metadata"]["uid"] = json!(format!("uid-{path}"));
                obj["metadata"]["managedFields"] = json!([{
                    "manager": "live-operator", "operation": "Apply", "apiVersion": "v1",
                    "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": {}}
                }]);
                self.objects.insert(path.to_owned(), obj.clone());
                if let Some(status) = self.statuses.get(path) {
                    obj["status"] = status.clone();
                }
                (StatusCode::OK, obj)
            }
            "POST" if path == SECRETS => {
                let mut obj = body.clone();
                let name = obj["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned();
                obj["metadata"]["uid"] = json!("redis-secret-uid");
                obj["metadata"]["resourceVersion"] = json!("1");
                self.objects
                    .insert(format!("{SECRETS}/{name}"), obj.clone());
                (StatusCode::CREATED, obj)
            }
            "DELETE" => match self.objects.remove(path) {
                Some(obj) => (StatusCode::OK, obj),
                None => not_found(),
            },
            "POST" if path == EVENTS => (StatusCode::CREATED, body.clone()),
            _ => panic!("unexpected request {method} {path}"),
        }
    }
}

/// Runs `reconcile` for `lr` against `server` with a fresh context; returns its result and the
/// server afterwards. Every Secret the spec references exists unless the test put a `Null` at
/// its path.
async fn reconcile_with(
    lr: LiveRealtime,
    server: FakeApiServer,
) -> (Result<Action>, FakeApiServer) {
    reconcile_in(None, lr, server).await
}

/// A Secret holding `keys`.
fn secret(name: &str, keys: &[&str]) -> Value {
    let data: serde_json::Map<String, Value> = keys
        .iter()
        .map(|k| ((*k).to_owned(), json!("c2VjcmV0")))
        .collect();
    json!({"apiVersion": "v1", "kind": "Secret",
           "metadata": {"name": name, "namespace": "live", "uid": format!("uid-{name}")},
           "data": data})
}

/// As [`reconcile_with`], with a given context (to reconcile twice with one memory).
async fn reconcile_in(
    ctx: Option<Arc<Context>>,
    lr: LiveRealtime,
    mut server: FakeApiServer,
) -> (Result<Action>, FakeApiServer) {
    server
        .objects
        .insert(LRT.to_owned(), serde_json::to_value(&lr).unwrap());
    for reference in secrets::references(&lr) {
        let path = format!("{SECRETS}/{}", reference.name);
        match server.objects.get(&path) {
            Some(Value::Null) => {
                server.objects.remove(&path);
            }
            Some(_) => {}
            None => {
                let keys: Vec<&str> = reference.key.as_deref().into_iter().collect();
                let keys = if keys.is_empty() { vec!["kid-1"] } else { keys };
                server.objects.insert(path, secret(&reference.name, &keys));
            }
        }
    }
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let ctx = match ctx {
        Some(ctx) => Arc::new(ctx.with_client(client)),
        None => Arc::new(Context::new(
            client,
            Some("test".into()),
            Arc::new(Metrics::new()),
        )),
    };
    let apiserver = tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let body: Value = if bytes.is_empty() {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).unwrap()
            };
            let path = parts.uri.path().to_owned();
            let (status, response) = server.handle(parts.method.as_str(), &path, &body);
            server.recorded.push(Recorded {
                method: parts.method.to_string(),
                path,
                query: parts.uri.query().unwrap_or_default().to_owned(),
                body,
            });
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&response).unwrap()))
                    .unwrap(),
            );
        }
        server
    });
    let guard = Arc::new(DeserializeGuard(Ok(lr)));
    let result = tokio::time::timeout(Duration::from_secs(10), reconcile(guard, ctx))
        .await
        .expect("reconcile finished");
    let server = tokio::time::timeout(Duration::from_secs(10), apiserver)
        .await
        .expect("the client was dropped")
        .unwrap();
    (result, server)
}

impl FakeApiServer {
    fn with_crd() -> Self {
        Self {
            service_monitor_crd: true,
            ..Self::default()
        }
    }

    /// Deployments report all pods ready.
    fn healthy(mut self) -> Self {
        let ready = |n: i32| {
            json!({"observedGeneration": 1, "replicas": n, "updatedReplicas": n,
                   "readyReplicas": n, "availableReplicas": n})
        };
        self.statuses.insert(DEPLOYMENT.to_owned(), ready(2));
        self.statuses.insert(REDIS_DEPLOYMENT.to_owned(), ready(1));
        self
    }

    fn requests(&self) -> Vec<String> {
        self.recorded
            .iter()
            .map(|r| format!("{} {}", r.method, r.path))
            .collect()
    }

    fn request(&self, method: &str, path: &str) -> &Recorded {
        self.recorded
            .iter()
            .find(|r| r.method == method && r.path == path)
            .unwrap_or_else(|| panic!("no {method} {path} in {:#?}", self.requests()))
    }

    fn status_condition(&self, type_: &str) -> Value {
        let status = &self.request("PATCH", &format!("{LRT}/status")).body["status"];
        status["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == type_)
            .cloned()
            .unwrap_or_else(|| panic!("no {type_} condition"))
    }

    fn event_reasons(&self) -> Vec<String> {
        self.recorded
            .iter()
            .filter(|r| r.path == EVENTS)
            .map(|r| r.body["reason"].as_str().unwrap_or_default().to_owned())
            .collect()
    }
}

#[tokio::test]
async fn a_new_liverealtime_applies_every_child_then_writes_status() {
    let (result, server) =
        reconcile_with(LiveRealtime::test(), FakeApiServer::with_crd().healthy()).await;
    result.unwrap();
    let patches: Vec<String> = server
        .recorded
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.path.clone())
        .collect();
    assert_eq!(
        patches,
        [
            CONFIG_MAP,
            REDIS_DEPLOYMENT,
            REDIS_SERVICE,
            REDIS_NETWORK_POLICY,
            REDIS_PDB,
            DEPLOYMENT,
            SERVICE,
            ADMIN_SERVICE,
            PDB,
            SERVICE_MONITOR,
            &format!("{LRT}/status"),
        ]
    );
    // Every apply is preceded by a read: nothing is applied over an object we do not own.
    for path in &patches[..patches.len() - 1] {
        let at = server
            .recorded
            .iter()
            .position(|r| r.method == "PATCH" && &r.path == path)
            .unwrap();
        assert!(
            server.recorded[..at]
                .iter()
                .any(|r| r.method == "GET" && &r.path == path),
            "{path} applied without a read"
        );
    }
    // The managed Redis password is generated once, by create.
    let created = server.request("POST", SECRETS);
    assert_eq!(created.body["metadata"]["name"], "chat-redis");
    assert_eq!(
        created.body["stringData"]["password"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    for r in server.recorded.iter().filter(|r| r.method == "PATCH") {
        assert!(
            r.query.contains("fieldManager=live-operator"),
            "{}",
            r.query
        );
        assert!(r.query.contains("force=true"), "{}", r.query);
        if !r.path.ends_with("/status") {
            assert_eq!(
                r.body["metadata"]["ownerReferences"][0]["uid"],
                "6b1f0c1e-1c2a-4d7e-9a59-2f1d9c3b7a10",
                "{} has no controller owner reference",
                r.path
            );
        }
    }
    let deployment = &server.request("PATCH", DEPLOYMENT).body;
    assert_eq!(deployment["spec"]["replicas"], 2);
    let template = &deployment["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(
        template["realtime.halobuzz.com/secrets-hash"]
            .as_str()
            .unwrap()
            .len(),
        64
    );
    assert_eq!(
        server.request("PATCH", SERVICE_MONITOR).body["spec"]["endpoints"][0]["port"],
        "admin"
    );
    assert_eq!(server.status_condition(types::READY)["status"], "True");
    assert_eq!(server.status_condition(types::STALLED)["status"], "False");
    assert_eq!(
        server.status_condition(types::RECONCILING)["status"],
        "False"
    );
    // A healthy first reconcile has nothing worth an event.
    assert!(
        server.event_reasons().is_empty(),
        "{:?}",
        server.event_reasons()
    );
}

#[tokio::test]
async fn the_status_patch_carries_generation_selector_hashes_and_conditions() {
    let (result, server) =
        reconcile_with(LiveRealtime::test(), FakeApiServer::with_crd().healthy()).await;
    result.unwrap();
    let patch = &server.request("PATCH", &format!("{LRT}/status")).body;
    assert_eq!(patch["apiVersion"], "realtime.halobuzz.com/v1alpha1");
    assert_eq!(patch["kind"], "LiveRealtime");
    let status = &patch["status"];
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["replicas"], 2);
    assert_eq!(status["readyReplicas"], 2);
    assert_eq!(status["readyRatio"], "2/2");
    assert_eq!(status["image"], "ghcr.io/live-realtime/live-gateway:1.2.3");
    assert_eq!(
        status["selector"],
        "app.kubernetes.io/component=gateway,app.kubernetes.io/instance=chat,app.kubernetes.io/name=live-gateway"
    );
    assert_eq!(status["configHash"].as_str().unwrap().len(), 64);
    assert_eq!(status["restartHash"].as_str().unwrap().len(), 64);
    let types: Vec<&str> = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["type"].as_str().unwrap())
        .collect();
    assert_eq!(
        types,
        [
            "Ready",
            "Reconciling",
            "Stalled",
            "Progressing",
            "Degraded",
            "RedisReady",
            "AutoscalingReady",
            "ServiceMonitorReady",
            "HTTPRouteReady",
            "ReconciliationPaused"
        ]
    );
}

#[tokio::test]
async fn an_unchanged_status_is_not_patched_again() {
    let (_, first) =
        reconcile_with(LiveRealtime::test(), FakeApiServer::with_crd().healthy()).await;
    let mut lr: LiveRealtime = serde_json::from_value(first.objects[LRT].clone()).unwrap();
    lr.metadata.generation = Some(1);
    let (result, second) = reconcile_with(lr, FakeApiServer::with_crd().healthy()).await;
    result.unwrap();
    assert!(
        !second.requests().contains(&format!("PATCH {LRT}/status")),
        "{:#?}",
        second.requests()
    );
}

#[tokio::test]
async fn a_second_reconcile_of_an_unchanged_object_applies_nothing() {
    let ctx = Arc::new(Context::new(
        Client::new(
            tower_test::mock::pair::<Request<Body>, Response<Body>>().0,
            "default",
        ),
        None,
        Arc::new(Metrics::new()),
    ));
    let (result, first) = reconcile_in(
        Some(ctx.clone()),
        LiveRealtime::test(),
        FakeApiServer::with_crd().healthy(),
    )
    .await;
    result.unwrap();
    // The same objects (as the apiserver left them), the same operator memory.
    let mut again = FakeApiServer::with_crd().healthy();
    again.objects = first.objects.clone();
    let lr: LiveRealtime = serde_json::from_value(first.objects[LRT].clone()).unwrap();
    let (result, second) = reconcile_in(Some(ctx), lr, again).await;
    result.unwrap();
    let writes: Vec<String> = second
        .requests()
        .into_iter()
        .filter(|r| !r.starts_with("GET"))
        .collect();
    assert!(writes.is_empty(), "{writes:#?}");
}

#[tokio::test]
async fn an_edited_child_is_put_back() {
    let mut server = FakeApiServer::with_crd().healthy();
    // Someone scaled the Deployment by hand and changed its image.
    let mut edited = serde_json::to_value(crate::reconcile::deployment::desired(
        &LiveRealtime::test(),
        None,
    ))
    .unwrap();
    edited["spec"]["replicas"] = json!(7);
    edited["spec"]["template"]["spec"]["containers"][0]["image"] = json!("evil:latest");
    server.objects.insert(DEPLOYMENT.to_owned(), edited);
    let (result, server) = reconcile_with(LiveRealtime::test(), server).await;
    result.unwrap();
    let applied = &server.request("PATCH", DEPLOYMENT);
    assert_eq!(applied.param("force"), Some("true"));
    let now = &server.objects[DEPLOYMENT];
    assert_eq!(now["spec"]["replicas"], 2);
    assert_eq!(
        now["spec"]["template"]["spec"]["containers"][0]["image"],
        "ghcr.io/live-realtime/live-gateway:1.2.3"
    );
}

#[tokio::test]
async fn autoscaling_scales_the_liverealtime_and_the_deployment_follows_its_replicas() {
    let mut lr = LiveRealtime::test().autoscaled();
    // What the HPA wrote through the scale subresource.
    lr.spec.replicas = 6;
    let (result, server) = reconcile_with(lr, FakeApiServer::with_crd().healthy()).await;
    result.unwrap();
    assert_eq!(
        server.request("PATCH", DEPLOYMENT).body["spec"]["replicas"],
        6
    );
    let hpa = &server.request("PATCH", HPA).body["spec"];
    assert_eq!(hpa["minReplicas"], 3);
    assert_eq!(hpa["scaleTargetRef"]["kind"], "LiveRealtime");
}

#[tokio::test]
async fn turning_autoscaling_off_deletes_the_hpa_we_own_and_keeps_the_count() {
    let mut server = FakeApiServer::with_crd().healthy();
    let hpa = crate::reconcile::hpa::desired(&LiveRealtime::test().autoscaled());
    let mut hpa = serde_json::to_value(hpa).unwrap();
    hpa["metadata"]["uid"] = json!("hpa-uid");
    server.objects.insert(HPA.to_owned(), hpa);
    let mut lr = LiveRealtime::test();
    lr.spec.replicas = 6;
    let (result, server) = reconcile_with(lr, server).await;
    result.unwrap();
    let delete = server.request("DELETE", HPA);
    assert_eq!(delete.body["preconditions"]["uid"], "hpa-uid");
    assert!(!server.objects.contains_key(HPA));
    assert_eq!(
        server.request("PATCH", DEPLOYMENT).body["spec"]["replicas"],
        6
    );
}

#[tokio::test]
async fn a_same_named_child_we_do_not_own_is_left_alone() {
    let mut server = FakeApiServer::with_crd().healthy();
    server.objects.insert(
        HPA.to_owned(),
        json!({"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
               "metadata": {"name": "chat", "namespace": "live", "uid": "theirs"},
               "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x"}, "maxReplicas": 3}}),
    );
    let (result, server) = reconcile_with(LiveRealtime::test(), server).await;
    result.unwrap();
    assert!(!server.requests().contains(&format!("DELETE {HPA}")));
    assert!(server.objects.contains_key(HPA));
}

#[tokio::test]
async fn a_foreign_object_with_a_childs_name_is_never_applied_over_and_is_a_name_conflict() {
    let mut server = FakeApiServer::with_crd().healthy();
    let theirs = json!({"apiVersion": "v1", "kind": "Service",
           "metadata": {"name": "chat", "namespace": "live", "uid": "theirs"},
           "spec": {"ports": [{"port": 5432}]}});
    server.objects.insert(SERVICE.to_owned(), theirs.clone());
    let (result, server) = reconcile_with(LiveRealtime::test(), server).await;
    assert_eq!(result.unwrap_err().code(), "name_conflict");
    assert!(!server.requests().contains(&format!("PATCH {SERVICE}")));
    assert_eq!(server.objects[SERVICE], theirs);
    // The rest of the tier is applied, and the status says why it is not Ready.
    assert!(server.requests().contains(&format!("PATCH {DEPLOYMENT}")));
    let ready = server.status_condition(types::READY);
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], reasons::NAME_CONFLICT);
    assert!(
        ready["message"].as_str().unwrap().contains("Service chat"),
        "{ready}"
    );
    assert_eq!(server.status_condition(types::STALLED)["status"], "True");
    assert_eq!(server.event_reasons(), [reasons::NAME_CONFLICT]);
}

#[tokio::test]
async fn a_missing_secret_is_in_status_within_one_reconcile() {
    let mut server = FakeApiServer::with_crd().healthy();
    server
        .objects
        .insert(format!("{SECRETS}/chat-jwt"), Value::Null);
    let (result, server) = reconcile_with(LiveRealtime::test(), server).await;
    assert_eq!(result.unwrap_err().code(), "missing_secret");
    let ready = server.status_condition(types::READY);
    assert_eq!(ready["reason"], reasons::MISSING_SECRET);
    assert!(
        ready["message"]
            .as_str()
            .unwrap()
            .contains("Secret chat-jwt (spec.jwtSecretRef) not found"),
        "{ready}"
    );
    // The children are applied anyway: the pods start as soon as the Secret exists.
    assert!(server.requests().contains(&format!("PATCH {DEPLOYMENT}")));
}

#[tokio::test]
async fn disabling_monitoring_and_the_pdb_deletes_them() {
    let mut server = FakeApiServer::with_crd().healthy();
    let owned = |obj: Value| {
        let mut obj = obj;
        obj["metadata"]["uid"] = json!("child-uid");
        obj
    };
    server.objects.insert(
        PDB.to_owned(),
        owned(serde_json::to_value(crate::reconcile::pdb::desired(&LiveRealtime::test())).unwrap()),
    );
    server.objects.insert(
        SERVICE_MONITOR.to_owned(),
        owned(
            serde_json::to_value(crate::reconcile::service_monitor::desired(
                &LiveRealtime::test(),
            ))
            .unwrap(),
        ),
    );
    let (result, server) = reconcile_with(LiveRealtime::test().minimal(), server).await;
    result.unwrap();
    assert!(server.requests().contains(&format!("DELETE {PDB}")));
    assert!(
        server
            .requests()
            .contains(&format!("DELETE {SERVICE_MONITOR}"))
    );
    assert_eq!(
        server.status_condition(types::SERVICE_MONITOR_READY)["reason"],
        reasons::DISABLED
    );
}

#[tokio::test]
async fn external_redis_deletes_the_managed_redis() {
    let mut server = FakeApiServer::with_crd().healthy();
    let lr = LiveRealtime::test();
    let redis_secret = crate::reconcile::redis::desired_secret(&lr, "pw");
    for (path, obj) in [
        (
            REDIS_DEPLOYMENT,
            serde_json::to_value(crate::reconcile::redis::desired_deployment(&lr, None)).unwrap(),
        ),
        (
            REDIS_SERVICE,
            serde_json::to_value(crate::reconcile::redis::desired_service(&lr)).unwrap(),
        ),
        (
            REDIS_NETWORK_POLICY,
            serde_json::to_value(crate::reconcile::redis::desired_network_policy(&lr)).unwrap(),
        ),
        (
            REDIS_PDB,
            serde_json::to_value(crate::reconcile::redis::desired_pdb(&lr)).unwrap(),
        ),
        (REDIS_SECRET, serde_json::to_value(redis_secret).unwrap()),
    ] {
        let mut obj = obj;
        obj["metadata"]["uid"] = json!("redis-uid");
        server.objects.insert(path.to_owned(), obj);
    }
    let (result, server) = reconcile_with(lr.external(), server).await;
    result.unwrap();
    for path in [
        REDIS_DEPLOYMENT,
        REDIS_SERVICE,
        REDIS_NETWORK_POLICY,
        REDIS_PDB,
        REDIS_SECRET,
    ] {
        assert!(
            server.requests().contains(&format!("DELETE {path}")),
            "{path} not deleted"
        );
    }
    assert_eq!(
        server.status_condition(types::REDIS_READY)["reason"],
        reasons::EXTERNAL
    );
}

#[tokio::test]
async fn a_missing_service_monitor_crd_is_a_condition_and_one_event_not_an_error() {
    let (result, server) =
        reconcile_with(LiveRealtime::test(), FakeApiServer::default().healthy()).await;
    result.unwrap();
    assert!(
        server
            .requests()
            .iter()
            .all(|r| !r.contains("servicemonitors")),
        "{:#?}",
        server.requests()
    );
    let condition = server.status_condition(types::SERVICE_MONITOR_READY);
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], reasons::CRD_NOT_INSTALLED);
    assert_eq!(server.status_condition(types::READY)["status"], "True");
    assert_eq!(server.event_reasons(), [reasons::CRD_NOT_INSTALLED]);
    let event = server.request("POST", EVENTS);
    assert_eq!(event.body["type"], "Warning");
    assert_eq!(event.body["regarding"]["kind"], "LiveRealtime");
}

#[tokio::test]
async fn a_paused_liverealtime_only_reports_that_it_is_paused() {
    let (result, server) =
        reconcile_with(LiveRealtime::test().paused(), FakeApiServer::with_crd()).await;
    result.unwrap();
    assert_eq!(
        server.requests(),
        [format!("PATCH {LRT}/status"), format!("POST {EVENTS}")]
    );
    let paused = server.status_condition(types::RECONCILIATION_PAUSED);
    assert_eq!(paused["status"], "True");
    assert_eq!(paused["reason"], reasons::PAUSED);
}

#[tokio::test]
async fn a_liverealtime_being_deleted_is_left_to_garbage_collection() {
    let mut lr = LiveRealtime::test();
    lr.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap(),
    ));
    let (result, server) = reconcile_with(lr, FakeApiServer::with_crd()).await;
    assert_eq!(result.unwrap(), Action::await_change());
    assert!(
        server.recorded.iter().all(|r| r.method == "GET"),
        "{:#?}",
        server.requests()
    );
}

#[tokio::test]
async fn an_invalid_gateway_config_applies_nothing_and_says_why() {
    let mut lr = LiveRealtime::test();
    lr.spec.cors.allowed_origins = Some(vec!["https://app.example.com/".into()]);
    let (result, server) = reconcile_with(lr, FakeApiServer::with_crd()).await;
    result.unwrap();
    assert!(
        server
            .requests()
            .iter()
            .all(|r| r.contains(NS_PATH) && (r.contains("/status") || r.contains("events")))
    );
    let degraded = server.status_condition(types::DEGRADED);
    assert_eq!(degraded["reason"], reasons::INVALID_CONFIG);
    assert_eq!(server.event_reasons(), [reasons::INVALID_CONFIG]);
}

#[tokio::test]
async fn an_object_this_operator_cannot_decode_gets_invalid_spec_and_nothing_else() {
    let mut raw = serde_json::to_value(LiveRealtime::test()).unwrap();
    raw["spec"]["rateLimits"]["newField"] = json!(3);
    let guard: Guarded = serde_json::from_value(raw.clone()).unwrap();
    assert!(guard.0.is_err(), "the fixture must not decode");
    let mut server = FakeApiServer::with_crd();
    server.objects.insert(LRT.to_owned(), raw);
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let ctx = Arc::new(Context::new(
        Client::new(service, "default"),
        None,
        Arc::new(Metrics::new()),
    ));
    let apiserver = tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let path = parts.uri.path().to_owned();
            let (status, response) = server.handle(parts.method.as_str(), &path, &body);
            server.recorded.push(Recorded {
                method: parts.method.to_string(),
                path,
                query: String::new(),
                body,
            });
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&response).unwrap()))
                    .unwrap(),
            );
        }
        server
    });
    let action = reconcile(Arc::new(guard), ctx).await.unwrap();
    assert_eq!(action, Action::requeue(DEFAULT_RESYNC));
    let server = apiserver.await.unwrap();
    assert_eq!(
        server.requests(),
        [
            format!("GET {LRT}"),
            format!("PATCH {LRT}/status"),
            format!("POST {EVENTS}")
        ]
    );
    let ready = server.status_condition(types::READY);
    assert_eq!(ready["reason"], reasons::INVALID_SPEC);
    assert!(
        ready["message"].as_str().unwrap().contains("newField"),
        "{ready}"
    );
    assert_eq!(server.status_condition(types::STALLED)["status"], "True");
}

#[tokio::test]
async fn a_refused_apply_is_in_status_with_the_apiservers_message_and_one_warning() {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(service, "default");
    let ctx = Arc::new(Context::new(client, None, Arc::new(Metrics::new())));
    let mut server = FakeApiServer::with_crd().healthy();
    server.objects.insert(
        format!("{SECRETS}/chat-jwt"),
        secret("chat-jwt", &["secret"]),
    );
    server.objects.insert(
        LRT.to_owned(),
        serde_json::to_value(LiveRealtime::test()).unwrap(),
    );
    let apiserver = tokio::spawn(async move {
        while let Some((request, send)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let bytes = body.collect_bytes().await.unwrap();
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let path = parts.uri.path().to_owned();
            let (status, response) = if parts.method == "PATCH" && path == DEPLOYMENT {
                (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                           "message": "Deployment.apps \"chat\" is invalid: spec.template.spec.containers[1].name: Invalid value: \"Bad_Name\"",
                           "reason": "Invalid", "code": 422}),
                )
            } else {
                server.handle(parts.method.as_str(), &path, &body)
            };
            server.recorded.push(Recorded {
                method: parts.method.to_string(),
                path,
                query: String::new(),
                body,
            });
            send.send_response(
                Response::builder()
                    .status(status)
                    .body(Body::from(serde_json::to_vec(&response).unwrap()))
                    .unwrap(),
            );
        }
        server
    });
    let lr = Arc::new(DeserializeGuard(Ok(LiveRealtime::test())));
    let err = reconcile(lr.clone(), ctx.clone()).await.unwrap_err();
    assert_eq!(err.code(), "apply");
    let action = error_policy(lr, &err, ctx.clone());
    assert_eq!(action, Action::requeue(Duration::from_secs(5)));
    assert!(
        ctx.metrics
            .render()
            .contains("live_operator_reconcile_errors_total{code=\"apply\"} 1")
    );
    drop(ctx);
    let server = apiserver.await.unwrap();
    let ready = server.status_condition(types::READY);
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], reasons::APPLY_FAILED);
    assert!(
        ready["message"].as_str().unwrap().contains("Bad_Name")
            && ready["message"].as_str().unwrap().contains("(422)"),
        "{ready}"
    );
    assert_eq!(server.status_condition(types::STALLED)["status"], "True");
    assert_eq!(server.event_reasons(), [reasons::APPLY_FAILED]);
    // Everything else was still applied.
    assert!(server.requests().contains(&format!("PATCH {SERVICE}")));
}

#[test]
fn backoff_doubles_from_five_seconds_and_caps_at_five_minutes() {
    assert_eq!(backoff(1), Duration::from_secs(5));
    assert_eq!(backoff(2), Duration::from_secs(10));
    assert_eq!(backoff(4), Duration::from_secs(40));
    assert_eq!(backoff(10), Duration::from_secs(300));
    assert_eq!(backoff(u32::MAX), Duration::from_secs(300));
}

#[test]
fn a_problem_the_user_fixes_elsewhere_is_retried_at_least_every_thirty_seconds() {
    let conflict = Error::Step {
        reason: reasons::NAME_CONFLICT,
        message: "Service chat is not controlled by this LiveRealtime".into(),
    };
    assert_eq!(retry_after(&conflict, 1), Duration::from_secs(5));
    assert_eq!(retry_after(&conflict, 4), Duration::from_secs(30));
    assert_eq!(retry_after(&conflict, 10), Duration::from_secs(30));
    let other = Error::MissingObjectKey("namespace");
    assert_eq!(retry_after(&other, 10), Duration::from_secs(300));
}
