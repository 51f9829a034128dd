//! Command-line flags and environment variables, and their conversion into the settings the
//! server runs with. Flags win over environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::auth::KeyMaterial;
use crate::error::{Error, Result};

/// live-gateway: the Socket.IO gateway for live streaming.
#[derive(Debug, Clone, Parser)]
#[command(version, about, long_about = None)]
pub struct Args {
    /// Public Socket.IO listener (path /ws, namespace /live).
    #[arg(long, env = "LIVE_LISTEN", default_value = "0.0.0.0:3000")]
    pub listen: SocketAddr,

    /// Admin listener: HTTP bridge, /metrics, /healthz, /readyz. Never expose it publicly.
    #[arg(long, env = "LIVE_ADMIN_LISTEN", default_value = "0.0.0.0:9091")]
    pub admin_listen: SocketAddr,

    /// Hot-reloaded YAML config file (rate limits, CORS, moderation, limits).
    #[arg(long, env = "LIVE_CONFIG")]
    pub config: Option<PathBuf>,

    /// Run with no setup: make a JWT secret when none is set and print ready tokens.
    #[arg(long, env = "LIVE_DEV")]
    pub dev: bool,

    /// HS256 secret for JWTs.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// PEM public key (RS256 or ES256, see --jwt-algorithm).
    #[arg(long, env = "JWT_PUBLIC_KEY", hide_env_values = true)]
    pub jwt_public_key: Option<String>,

    /// Path of a PEM public key file.
    #[arg(long, env = "JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,

    /// The one algorithm tokens may use: HS256 (with JWT_SECRET), RS256 or ES256 (with a public
    /// key). Defaults to RS256 when only a public key is given, else HS256.
    #[arg(long, env = "JWT_ALGORITHM")]
    pub jwt_algorithm: Option<String>,

    /// Required `iss` claim, when set.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` claim, when set.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Allowed browser origins, comma-separated. The config file's cors.allowedOrigins wins.
    #[arg(long, env = "CORS_ALLOW")]
    pub cors_allow: Option<String>,

    /// Seconds over which connections are closed on SIGTERM, in jittered batches.
    #[arg(long, env = "LIVE_DRAIN_SECONDS", default_value_t = 20)]
    pub drain_seconds: u64,

    /// Hard deadline after SIGTERM; defaults to the drain window plus 10 s.
    #[arg(long, env = "LIVE_SHUTDOWN_TIMEOUT_SECONDS")]
    pub shutdown_timeout_seconds: Option<u64>,

    /// Largest WebSocket message or polling payload a client may send, in bytes.
    #[arg(long, env = "LIVE_MAX_PAYLOAD_BYTES", default_value_t = 64 * 1024)]
    pub max_payload_bytes: usize,

    /// Redis (>= 7) for running several replicas as one: cross-replica fan-out, shared rate
    /// limits, mutes, viewer counts and presence. Without it the gateway runs alone. The scheme
    /// picks the deployment: redis:// (one server), redis-cluster:// (Redis Cluster),
    /// redis-sentinel://host:26379?sentinelServiceName=<name> (Sentinel); rediss* for TLS.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Redis password; overrides one in REDIS_URL (so the URL can live in a ConfigMap and the
    /// password in a Secret).
    #[arg(long, env = "REDIS_PASSWORD", hide_env_values = true)]
    pub redis_password: Option<String>,

    /// PEM bundle of the CA(s) that sign the Redis servers' certificates, for rediss* URLs.
    /// Without it the system's trust store is used.
    #[arg(long, env = "REDIS_TLS_CA_FILE")]
    pub redis_tls_ca_file: Option<PathBuf>,

    /// Prefix of every Redis key and pub/sub channel, so several deployments can share a Redis.
    #[arg(long, env = "LIVE_REDIS_PREFIX", default_value = "live")]
    pub redis_prefix: String,

    /// This replica's name in shared counts (Kubernetes: the pod name). Random when unset.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,

    /// Packets that may wait in one socket's outgoing queue. A full queue drops broadcasts to that
    /// socket and, worse, its heartbeat ping, which disconnects it: size it for bursts.
    #[arg(long, env = "LIVE_SOCKET_BUFFER_PACKETS", default_value_t = 1024)]
    pub socket_buffer_packets: usize,

    /// Write-coalescing window for busy WebSockets, in milliseconds. A socket that receives
    /// several messages per window is written once per window (windows are aligned across
    /// sockets), so a hot channel costs one `send` per member per window instead of one per
    /// message, for at most this much added latency. A quiet socket, or one receiving about a
    /// message per window or less, is written at once. 0 writes on every wake-up.
    #[arg(long, env = "LIVE_WS_WRITE_COALESCE_MS", default_value_t = 20)]
    pub ws_write_coalesce_ms: u64,

    /// Log format: text or json.
    #[arg(long, env = "LIVE_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
}

/// Validated settings for one run of the server.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub config: Option<PathBuf>,
    pub key: KeyMaterial,
    pub issuer: Option<String>,
    pub audience: Option<String>,
    pub cors_env: Option<Vec<String>>,
    pub drain: Duration,
    pub shutdown_timeout: Duration,
    pub max_payload_bytes: usize,
    pub redis: Option<RedisSettings>,
    pub socket_buffer_packets: usize,
    pub ws_write_coalesce: Duration,
}

/// How to reach Redis and how to name this replica there.
#[derive(Clone)]
pub struct RedisSettings {
    pub url: String,
    pub password: Option<String>,
    pub tls_ca_file: Option<PathBuf>,
    pub prefix: String,
    pub pod: String,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RedisSettings")
            .field("tls_ca_file", &self.tls_ca_file)
            .field("prefix", &self.prefix)
            .field("pod", &self.pod)
            .finish_non_exhaustive()
    }
}

impl Args {
    /// Checks the flags and resolves the key. `dev_secret` is used only when `--dev` is set and
    /// no key is configured.
    pub fn settings(&self, dev_secret: impl FnOnce() -> String) -> Result<Settings> {
        let Self {
            listen,
            admin_listen,
            config,
            dev,
            jwt_secret,
            jwt_public_key,
            jwt_public_key_file,
            jwt_algorithm,
            jwt_issuer,
            jwt_audience,
            cors_allow,
            drain_seconds,
            shutdown_timeout_seconds,
            max_payload_bytes,
            redis_url,
            redis_password,
            redis_tls_ca_file,
            redis_prefix,
            pod_name,
            socket_buffer_packets,
            ws_write_coalesce_ms,
            log_format: _,
        } = self;
        if listen == admin_listen {
            return Err(Error::Startup(
                "--listen and --admin-listen must differ: the bridge and metrics never share the public port".into(),
            ));
        }
        let pem = match (jwt_public_key, jwt_public_key_file) {
            (Some(p), _) if !p.trim().is_empty() => Some(p.clone()),
            (_, Some(path)) => Some(std::fs::read_to_string(path).map_err(|e| {
                Error::Startup(format!(
                    "cannot read JWT_PUBLIC_KEY_FILE {}: {e}",
                    path.display()
                ))
            })?),
            _ => None,
        };
        let secret = jwt_secret.clone().filter(|s| !s.is_empty());
        let alg = jwt_algorithm.as_deref().map(str::to_ascii_uppercase);
        let key = match (alg.as_deref(), secret, pem) {
            (Some("HS256") | None, Some(s), _) => KeyMaterial::Hs256Secret(s),
            (Some("RS256") | None, None, Some(p)) | (Some("RS256"), _, Some(p)) => {
                KeyMaterial::Rs256Pem(p)
            }
            (Some("ES256"), _, Some(p)) => KeyMaterial::Es256Pem(p),
            (Some(a @ ("HS256" | "RS256" | "ES256")), _, _) => {
                return Err(Error::Startup(format!(
                    "JWT_ALGORITHM={a} needs {}",
                    if a == "HS256" {
                        "JWT_SECRET"
                    } else {
                        "JWT_PUBLIC_KEY or JWT_PUBLIC_KEY_FILE"
                    }
                )));
            }
            (Some(a), _, _) => {
                return Err(Error::Startup(format!(
                    "JWT_ALGORITHM={a} is not supported; use HS256, RS256 or ES256"
                )));
            }
            (None, None, None) if *dev => KeyMaterial::Hs256Secret(dev_secret()),
            (None, None, None) => {
                return Err(Error::Startup(
                    "no JWT key: set JWT_SECRET (HS256) or JWT_PUBLIC_KEY / JWT_PUBLIC_KEY_FILE (RS256/ES256), or run with --dev".into(),
                ));
            }
        };
        let cors_env = match cors_allow.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(list) => Some(
                live_api::parse_origin_list(list)
                    .map_err(|e| Error::Startup(format!("CORS_ALLOW: {e}")))?,
            ),
        };
        let drain = Duration::from_secs(*drain_seconds);
        let shutdown_timeout = shutdown_timeout_seconds
            .map(Duration::from_secs)
            .unwrap_or(drain + Duration::from_secs(10));
        if shutdown_timeout <= drain {
            return Err(Error::Startup(
                "LIVE_SHUTDOWN_TIMEOUT_SECONDS must exceed LIVE_DRAIN_SECONDS".into(),
            ));
        }
        if *max_payload_bytes < 1024 {
            return Err(Error::Startup(
                "LIVE_MAX_PAYLOAD_BYTES must be at least 1024".into(),
            ));
        }
        // '#' separates the adapter's channel name parts; braces would change the keys' Redis
        // Cluster hash tags.
        if redis_prefix.is_empty() || redis_prefix.contains(['#', ' ', '{', '}']) {
            return Err(Error::Startup(
                "LIVE_REDIS_PREFIX must be non-empty without '#', '{', '}' or spaces".into(),
            ));
        }
        let redis = redis_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|url| RedisSettings {
                url: url.to_owned(),
                password: redis_password.clone().filter(|p| !p.is_empty()),
                tls_ca_file: redis_tls_ca_file.clone(),
                prefix: redis_prefix.clone(),
                pod: pod_name
                    .clone()
                    .filter(|p| !p.is_empty())
                    .unwrap_or_else(|| format!("gw-{:016x}", rand::random::<u64>())),
            });
        Ok(Settings {
            listen: *listen,
            admin_listen: *admin_listen,
            config: config.clone(),
            key,
            issuer: jwt_issuer.clone().filter(|s| !s.is_empty()),
            audience: jwt_audience.clone().filter(|s| !s.is_empty()),
            cors_env,
            drain,
            shutdown_timeout,
            max_payload_bytes: *max_payload_bytes,
            redis,
            socket_buffer_packets: (*socket_buffer_packets).clamp(16, 65_536),
            // Longer than a second would make a busy socket look stalled to its client.
            ws_write_coalesce: Duration::from_millis((*ws_write_coalesce_ms).min(1_000)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> Args {
        let mut v = vec!["live-gateway"];
        v.extend_from_slice(extra);
        Args::try_parse_from(v).unwrap()
    }

    fn no_dev() -> String {
        panic!("dev secret must not be requested")
    }

    #[test]
    fn without_a_key_the_gateway_refuses_to_start() {
        let a = Args {
            jwt_secret: None,
            jwt_public_key: None,
            ..args(&[])
        };
        let err = a.settings(no_dev).unwrap_err().to_string();
        assert!(err.contains("JWT_SECRET"), "{err}");
    }

    #[test]
    fn dev_mode_makes_a_secret_only_when_none_is_set() {
        let a = Args {
            jwt_secret: None,
            jwt_public_key: None,
            ..args(&["--dev"])
        };
        let s = a.settings(|| "generated".into()).unwrap();
        assert!(matches!(s.key, KeyMaterial::Hs256Secret(k) if k == "generated"));
        let a = args(&["--dev", "--jwt-secret", "mine"]);
        let s = a.settings(no_dev).unwrap();
        assert!(matches!(s.key, KeyMaterial::Hs256Secret(k) if k == "mine"));
    }

    #[test]
    fn write_coalescing_defaults_to_20_ms_and_is_capped_at_a_second() {
        let s = args(&["--jwt-secret", "s"]).settings(no_dev).unwrap();
        assert_eq!(s.ws_write_coalesce, Duration::from_millis(20));
        let s = args(&["--jwt-secret", "s", "--ws-write-coalesce-ms", "0"])
            .settings(no_dev)
            .unwrap();
        assert_eq!(s.ws_write_coalesce, Duration::ZERO);
        let s = args(&["--jwt-secret", "s", "--ws-write-coalesce-ms", "60000"])
            .settings(no_dev)
            .unwrap();
        assert_eq!(s.ws_write_coalesce, Duration::from_secs(1));
    }

    #[test]
    fn the_algorithm_is_pinned_by_configuration() {
        let a = args(&["--jwt-public-key", "PEM", "--jwt-algorithm", "es256"]);
        assert!(matches!(
            a.settings(no_dev).unwrap().key,
            KeyMaterial::Es256Pem(_)
        ));
        let a = args(&["--jwt-public-key", "PEM"]);
        assert!(matches!(
            a.settings(no_dev).unwrap().key,
            KeyMaterial::Rs256Pem(_)
        ));
        let a = args(&["--jwt-secret", "s", "--jwt-algorithm", "RS256"]);
        assert!(a.settings(no_dev).is_err());
        let a = args(&["--jwt-secret", "s", "--jwt-algorithm", "none"]);
        assert!(
            a.settings(no_dev)
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
    }

    #[test]
    fn the_public_and_admin_listeners_must_differ() {
        let a = args(&[
            "--jwt-secret",
            "s",
            "--listen",
            "127.0.0.1:1",
            "--admin-listen",
            "127.0.0.1:1",
        ]);
        assert!(a.settings(no_dev).is_err());
    }

    #[test]
    fn cors_allow_is_validated_and_the_deadline_follows_the_drain_window() {
        let a = args(&[
            "--jwt-secret",
            "s",
            "--cors-allow",
            "https://a.example, http://b:1",
        ]);
        let s = a.settings(no_dev).unwrap();
        assert_eq!(
            s.cors_env,
            Some(vec![
                "https://a.example".to_owned(),
                "http://b:1".to_owned()
            ])
        );
        assert_eq!(s.shutdown_timeout, Duration::from_secs(30));
        let a = args(&["--jwt-secret", "s", "--cors-allow", "a.example"]);
        assert!(a.settings(no_dev).is_err());
        let a = args(&[
            "--jwt-secret",
            "s",
            "--drain-seconds",
            "5",
            "--shutdown-timeout-seconds",
            "5",
        ]);
        assert!(a.settings(no_dev).is_err());
    }
}
