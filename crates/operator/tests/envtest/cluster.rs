//! The test cluster: a real control plane from `KUBEBUILDER_ASSETS` (started by
//! `controlplane.sh`), the chart's RBAC applied from `helm template`, and `live-operator`
//! processes running as the chart's ServiceAccount with a TokenRequest token.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{
    Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::{Value, json};

/// Field manager of everything the tests write (never the operator's).
pub const TEST_MANAGER: &str = "envtest";

/// A running control plane; the supervisor script stops it when this process ends.
pub struct ControlPlane {
    pub dir: PathBuf,
    pub admin: Client,
    pub server: String,
    _supervisor: tokio::process::Child,
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

impl ControlPlane {
    /// Starts etcd, kube-apiserver and kube-controller-manager; audits every request of
    /// `audited_users`.
    pub async fn start(dir: &Path, audited_users: &[String]) -> Result<Self> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/envtest/controlplane.sh");
        let supervisor = tokio::process::Command::new("bash")
            .arg(&script)
            .arg(dir)
            .arg(std::process::id().to_string())
            .arg(audited_users.join(","))
            .stdin(std::process::Stdio::null())
            .spawn()
            .context("starting controlplane.sh")?;
        let kubeconfig = dir.join("kubeconfig");
        let started = Instant::now();
        while !kubeconfig.exists() {
            if started.elapsed() > Duration::from_secs(120) {
                bail!("no kubeconfig after 120 s; see {}", dir.display());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let kc = Kubeconfig::read_from(&kubeconfig)?;
        let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
        let server = config.cluster_url.to_string();
        let admin = Client::try_from(config)?;
        // Ready when it answers and the default namespace exists (bootstrap done).
        loop {
            let ready = Api::<Namespace>::all(admin.clone())
                .get_opt("default")
                .await
                .ok()
                .flatten()
                .is_some();
            if ready {
                break;
            }
            if started.elapsed() > Duration::from_secs(180) {
                bail!(
                    "kube-apiserver not ready after 180 s; log: {}",
                    dir.join("kube-apiserver.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        eprintln!(
            "envtest: control plane ready in {:.1} s ({})",
            started.elapsed().as_secs_f64(),
            dir.display()
        );
        Ok(Self {
            dir: dir.to_owned(),
            admin,
            server,
            _supervisor: supervisor,
        })
    }

    /// Server-side applies an arbitrary object (typed by its apiVersion/kind) as admin.
    pub async fn apply_value(&self, obj: &Value) -> Result<DynamicObject> {
        let api_version = obj["apiVersion"].as_str().context("apiVersion")?;
        let kind = obj["kind"].as_str().context("kind")?;
        let (group, version) = api_version.split_once('/').unwrap_or(("", api_version));
        let gvk = GroupVersionKind::gvk(group, version, kind);
        let (ar, caps) = kube::discovery::pinned_kind(&self.admin, &gvk).await?;
        let name = obj["metadata"]["name"].as_str().context("name")?;
        let api: Api<DynamicObject> = match (caps.scope, obj["metadata"]["namespace"].as_str()) {
            (kube::discovery::Scope::Namespaced, Some(ns)) => {
                Api::namespaced_with(self.admin.clone(), ns, &ar)
            }
            (kube::discovery::Scope::Namespaced, None) => {
                Api::default_namespaced_with(self.admin.clone(), &ar)
            }
            (kube::discovery::Scope::Cluster, _) => Api::all_with(self.admin.clone(), &ar),
        };
        api.patch(
            name,
            &PatchParams::apply(TEST_MANAGER).force(),
            &Patch::Apply(obj),
        )
        .await
        .with_context(|| format!("applying {kind} {name}"))
    }

    pub async fn namespace(&self, name: &str) -> Result<()> {
        self.apply_value(
            &json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}),
        )
        .await?;
        Ok(())
    }

    /// Installs a CRD and waits until it is established.
    pub async fn install_crd(&self, crd: &Value) -> Result<()> {
        self.apply_value(crd).await?;
        let name = crd["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let api: Api<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition> =
            Api::all(self.admin.clone());
        crate::wait(
            &format!("CRD {name} established"),
            Duration::from_secs(60),
            || {
                let api = api.clone();
                let name = name.clone();
                async move {
                    let crd = api.get(&name).await.ok()?;
                    crd.status?
                        .conditions?
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                        .then_some(())
                }
            },
        )
        .await?;
        Ok(())
    }

    /// A kubeconfig authenticating as ServiceAccount `ns/name` with a TokenRequest token.
    pub async fn service_account_kubeconfig(&self, ns: &str, name: &str) -> Result<PathBuf> {
        let api: Api<ServiceAccount> = Api::namespaced(self.admin.clone(), ns);
        let request = TokenRequest {
            spec: TokenRequestSpec {
                audiences: vec![],
                expiration_seconds: Some(7200),
                ..TokenRequestSpec::default()
            },
            ..TokenRequest::default()
        };
        let token: TokenRequest = api
            .create_subresource("token", name, &PostParams::default(), &request)
            .await
            .with_context(|| format!("TokenRequest for {ns}/{name}"))?;
        let token = token.status.context("token status")?.token;
        let path = self.dir.join(format!("{ns}-{name}.kubeconfig"));
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\nclusters: [{{name: envtest, cluster: {{server: \"{}\", certificate-authority: {}}}}}]\n\
                 users: [{{name: sa, user: {{token: {token}}}}}]\n\
                 contexts: [{{name: envtest, context: {{cluster: envtest, user: sa, namespace: {ns}}}}}]\ncurrent-context: envtest\n",
                self.server.trim_end_matches('/'),
                self.dir.join("pki/ca.crt").display()
            ),
        )?;
        Ok(path)
    }

    /// Write requests (and every 403) of `user` in the audit log since `since`, as
    /// entries.
    pub fn audited(&self, user: &str, since: k8s_openapi::jiff::Timestamp) -> Vec<AuditEntry> {
        let text = std::fs::read_to_string(self.dir.join("audit.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["user"]["username"] == user)
            .filter_map(|e| {
                let at: k8s_openapi::jiff::Timestamp =
                    e["requestReceivedTimestamp"].as_str()?.parse().ok()?;
                (at >= since).then(|| AuditEntry {
                    verb: e["verb"].as_str().unwrap_or_default().to_owned(),
                    namespace: e["objectRef"]["namespace"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    code: e["responseStatus"]["code"].as_u64().unwrap_or_default(),
                    uri: e["requestURI"].as_str().unwrap_or_default().to_owned(),
                })
            })
            .collect()
    }
}

impl Drop for ControlPlane {
    /// SIGTERM, not SIGKILL: the supervisor's trap stops exactly the processes it started
    /// (killed outright, it would orphan them). Should this process die before dropping, the
    /// supervisor notices within a second and does the same.
    fn drop(&mut self) {
        if let Some(pid) = self._supervisor.id() {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
        }
    }
}

/// One audited request.
#[derive(Clone, Debug)]
pub struct AuditEntry {
    pub verb: String,
    pub namespace: String,
    pub code: u64,
    pub uri: String,
}

impl AuditEntry {
    pub fn is_write(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "create" | "update" | "patch" | "delete" | "deletecollection"
        )
    }
}

/// The chart rendered by `helm template` with `values` (as `--set` pairs) for release
/// `live-operator` in `namespace`.
pub fn helm_template(namespace: &str, sets: &[&str]) -> Result<Vec<Value>> {
    let helm = std::env::var("LIVE_ENVTEST_HELM").unwrap_or_else(|_| "helm".to_owned());
    let mut cmd = std::process::Command::new(&helm);
    cmd.args(["template", "live-operator"])
        .arg(repo_root().join("charts/live-realtime-operator"))
        .args(["--namespace", namespace, "--kube-version", "1.33.0"]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().with_context(|| {
        format!("running {helm} (set LIVE_ENVTEST_HELM, or scripts/fetch-tools.sh)")
    })?;
    if !out.status.success() {
        bail!(
            "helm template failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let text = String::from_utf8(out.stdout)?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&text) {
        let value = serde_yaml::Value::deserialize(doc)?;
        if !value.is_null() {
            docs.push(serde_json::to_value(value)?);
        }
    }
    Ok(docs)
}

use serde::Deserialize;

/// The chart's ServiceAccount, roles and bindings: exactly what the operator is granted.
pub fn rbac_objects(docs: &[Value]) -> Vec<Value> {
    docs.iter()
        .filter(|d| {
            matches!(
                d["kind"].as_str(),
                Some(
                    "ServiceAccount"
                        | "ClusterRole"
                        | "ClusterRoleBinding"
                        | "Role"
                        | "RoleBinding"
                )
            )
        })
        .cloned()
        .collect()
}

/// The operator container's plain env from the chart's Deployment (fieldRefs are filled in by
/// the caller, as the kubelet would).
pub fn chart_env(docs: &[Value]) -> Vec<(String, String)> {
    docs.iter()
        .filter(|d| d["kind"] == "Deployment")
        .flat_map(|d| {
            d["spec"]["template"]["spec"]["containers"][0]["env"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|e| {
            Some((
                e["name"].as_str()?.to_owned(),
                e["value"].as_str()?.to_owned(),
            ))
        })
        .collect()
}

/// A `live-operator run` process, as a pod of the chart would run it.
pub struct Operator {
    pub identity: String,
    pub admin_port: u16,
    pub child: tokio::process::Child,
}

impl Operator {
    /// Starts the debug binary with the chart's env, as `identity`, authenticated by
    /// `kubeconfig`, its lease in `lease_ns`.
    pub fn start(
        dir: &Path,
        identity: &str,
        kubeconfig: &Path,
        lease_ns: &str,
        env: &[(String, String)],
    ) -> Result<Self> {
        let admin_port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let log = std::fs::File::create(dir.join(format!("{identity}.log")))?;
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_live-operator"));
        cmd.arg("run");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.env("KUBECONFIG", kubeconfig)
            .env("POD_NAMESPACE", lease_ns)
            .env("POD_NAME", identity)
            .env(
                "LIVE_OPERATOR_ADMIN_LISTEN",
                format!("127.0.0.1:{admin_port}"),
            )
            .env("LIVE_OPERATOR_LOG_FORMAT", "text")
            // Tests wait seconds, not minutes: resync often (and prove it writes nothing).
            .env("LIVE_OPERATOR_RESYNC_SECONDS", "5")
            .env("RUST_LOG", "info,live_operator=debug")
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true);
        let child = cmd.spawn()?;
        // If this test process dies without dropping `child`, nothing else would stop it.
        if let Some(pid) = child.id() {
            std::process::Command::new("bash")
                .arg("-c")
                .arg(format!(
                    "while kill -0 {parent} 2>/dev/null && kill -0 {pid} 2>/dev/null; do sleep 1; done; kill -9 {pid} 2>/dev/null",
                    parent = std::process::id()
                ))
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()?;
        }
        Ok(Self {
            identity: identity.to_owned(),
            admin_port,
            child,
        })
    }

    /// `/metrics` of the operator's admin port.
    pub async fn metrics(&self) -> Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.admin_port)).await?;
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await?;
        let mut text = String::new();
        stream.read_to_string(&mut text).await?;
        Ok(text)
    }

    /// SIGKILL: no lease release, the follower must wait for the lease to expire.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

/// The LiveRealtime API resource, for raw (undecodable) objects.
pub fn lrt_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("realtime.halobuzz.com", "v1alpha1", "LiveRealtime"),
        "liverealtimes",
    )
}
