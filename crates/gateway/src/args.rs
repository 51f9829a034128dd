//! Command-line flags and environment variables, and their conversion into the settings the
//! server runs with. Flags win over environment variables.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

use crate::auth::jwks::UrlSettings;
use crate::auth::keys::MIN_HS256_SECRET_BYTES;
use crate::auth::{AuthSettings, KeyMaterial, TokenPolicy};
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

    /// Required `aud` claim of user tokens, when set.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// A directory of verification keys, reloaded on change: each file whose name does not start
    /// with '.' is one key and its name is the key's `kid`; a PEM public key (RSA: RS256, EC
    /// P-256: ES256) or else an HS256 secret of at least 32 bytes.
    #[arg(long, env = "JWT_KEYS_DIR")]
    pub jwt_keys_dir: Option<PathBuf>,

    /// A JWKS document file, reloaded on change.
    #[arg(long, env = "JWT_JWKS_FILE", conflicts_with = "jwt_jwks_url")]
    pub jwt_jwks_file: Option<PathBuf>,

    /// An HTTPS URL serving a JWKS document, cached per its Cache-Control.
    #[arg(long, env = "JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,

    /// PEM bundle of the CAs trusted for JWT_JWKS_URL instead of the system's.
    #[arg(long, env = "JWT_JWKS_CA_FILE")]
    pub jwt_jwks_ca_file: Option<PathBuf>,

    /// Shortest time between two fetches of JWT_JWKS_URL, also the rate limit of fetches caused
    /// by unknown `kid`s.
    #[arg(long, env = "JWT_JWKS_MIN_REFRESH_SECONDS", default_value_t = 60)]
    pub jwt_jwks_min_refresh_seconds: u64,

    /// Longest time a fetched JWKS document is used without fetching it again.
    #[arg(long, env = "JWT_JWKS_MAX_REFRESH_SECONDS", default_value_t = 3600)]
    pub jwt_jwks_max_refresh_seconds: u64,

    /// Whether user tokens must carry `exp` (service tokens always must).
    #[arg(long, env = "JWT_REQUIRE_EXP", default_value_t = true, action = clap::ArgAction::Set)]
    pub jwt_require_exp: bool,

    /// Largest `exp - now` of a user token, in seconds.
    #[arg(long, env = "JWT_MAX_LIFETIME_SECONDS", default_value_t = crate::auth::policy::DEFAULT_MAX_LIFETIME_SECONDS)]
    pub jwt_max_lifetime_seconds: u64,

    /// The `aud` a service token (role `service`) must hold to call the bridge.
    #[arg(long, env = "JWT_SERVICE_AUDIENCE", default_value = crate::auth::policy::DEFAULT_SERVICE_AUDIENCE)]
    pub jwt_service_audience: String,

    /// Largest `exp - now` of a service token, in seconds.
    #[arg(long, env = "JWT_SERVICE_MAX_LIFETIME_SECONDS", default_value_t = crate::auth::policy::DEFAULT_SERVICE_MAX_LIFETIME_SECONDS)]
    pub jwt_service_max_lifetime_seconds: u64,

    /// Let `admin`-role user tokens call the bridge too (by default only service tokens may).
    #[arg(long, env = "LIVE_BRIDGE_ALLOW_ADMIN")]
    pub bridge_allow_admin: bool,

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

    /// Seconds an Engine.IO session may stay without a successful CONNECT to /live before it
    /// is closed (socketioxide's default is 45).
    #[arg(long, env = "LIVE_CONNECT_TIMEOUT_SECONDS", default_value_t = 10)]
    pub connect_timeout_seconds: u64,

    /// Failed CONNECTs after which a session is closed (0: unlimited).
    #[arg(long, env = "LIVE_MAX_CONNECT_FAILURES", default_value_t = 3)]
    pub max_connect_failures: u32,

    /// Socket.IO packets one session may send per second, in bursts of five times that,
    /// before it is closed: events, acks and CONNECTs alike, counted before they are decoded. A
    /// backstop above the per-connection event budget (rateLimits.eventsPerSecond); 0:
    /// unlimited.
    #[arg(long, env = "LIVE_MAX_PACKETS_PER_SECOND", default_value_t = 100)]
    pub max_packets_per_second: u32,

    /// Seconds a client has to send a complete request head, from connecting or from the end of
    /// its previous response (so also the idle timeout of keep-alive connections); both
    /// listeners.
    #[arg(long, env = "LIVE_HEADER_READ_TIMEOUT_SECONDS", default_value_t = 10)]
    pub header_read_timeout_seconds: u64,

    /// Seconds a client has to send a request body (polling POSTs, bridge calls); both
    /// listeners.
    #[arg(long, env = "LIVE_REQUEST_BODY_TIMEOUT_SECONDS", default_value_t = 10)]
    pub request_body_timeout_seconds: u64,

    /// Open TCP connections on the public listener (WebSockets included); beyond it new ones
    /// get 503.
    #[arg(long, env = "LIVE_MAX_CONNECTIONS", default_value_t = 20_000)]
    pub max_connections: usize,

    /// Open connections, and Engine.IO sessions, per client source (an IPv4 address or IPv6
    /// /64); beyond it 429. 0: no per-source cap.
    #[arg(long, env = "LIVE_MAX_CONNECTIONS_PER_IP", default_value_t = 256)]
    pub max_connections_per_ip: u32,

    /// Proxies (comma-separated CIDRs or addresses) whose `X-Forwarded-For` names the client:
    /// set it to the ingress's addresses behind a load balancer or ingress controller.
    #[arg(long, env = "LIVE_TRUSTED_PROXIES")]
    pub trusted_proxies: Option<String>,

    /// Open TCP connections on the admin listener.
    #[arg(long, env = "LIVE_ADMIN_MAX_CONNECTIONS", default_value_t = 1024)]
    pub admin_max_connections: usize,

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
    pub auth: AuthSettings,
    pub cors_env: Option<Vec<String>>,
    pub drain: Duration,
    pub shutdown_timeout: Duration,
    pub max_payload_bytes: usize,
    pub redis: Option<RedisSettings>,
    pub socket_buffer_packets: usize,
    pub ws_write_coalesce: Duration,
    pub dev: bool,
    pub connection: ConnectionLimits,
}

/// Limits on connections and sessions, before any event is handled (listener-level settings;
/// the per-event ones are hot-reloaded, in the config file).
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    pub connect_timeout: Duration,
    pub max_connect_failures: u32,
    pub max_packets_per_second: u32,
    pub header_read_timeout: Duration,
    pub request_body_timeout: Duration,
    pub max_connections: usize,
    pub max_connections_per_ip: u32,
    pub trusted_proxies: crate::client_ip::TrustedProxies,
    pub admin_max_connections: usize,
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
            jwt_keys_dir,
            jwt_jwks_file,
            jwt_jwks_url,
            jwt_jwks_ca_file,
            jwt_jwks_min_refresh_seconds,
            jwt_jwks_max_refresh_seconds,
            jwt_require_exp,
            jwt_max_lifetime_seconds,
            jwt_service_audience,
            jwt_service_max_lifetime_seconds,
            bridge_allow_admin,
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
            connect_timeout_seconds,
            max_connect_failures,
            max_packets_per_second,
            header_read_timeout_seconds,
            request_body_timeout_seconds,
            max_connections,
            max_connections_per_ip,
            trusted_proxies,
            admin_max_connections,
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
        let other_sources =
            jwt_keys_dir.is_some() || jwt_jwks_file.is_some() || jwt_jwks_url.is_some();
        let key = match (alg.as_deref(), secret, pem) {
            (Some("HS256") | None, Some(s), _) => Some(KeyMaterial::Hs256Secret(s)),
            (Some("RS256") | None, None, Some(p)) | (Some("RS256"), _, Some(p)) => {
                Some(KeyMaterial::Rs256Pem(p))
            }
            (Some("ES256"), _, Some(p)) => Some(KeyMaterial::Es256Pem(p)),
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
            (None, None, None) if other_sources => None,
            (None, None, None) if *dev => Some(KeyMaterial::Hs256Secret(dev_secret())),
            (None, None, None) => {
                return Err(Error::Startup(
                    "no JWT key: set JWT_SECRET (HS256), JWT_PUBLIC_KEY / JWT_PUBLIC_KEY_FILE (RS256/ES256), JWT_KEYS_DIR or a JWKS (JWT_JWKS_FILE / JWT_JWKS_URL), or run with --dev".into(),
                ));
            }
        };
        if let Some(KeyMaterial::Hs256Secret(s)) = &key
            && s.len() < MIN_HS256_SECRET_BYTES
        {
            if *dev {
                tracing::warn!(
                    "JWT_SECRET is {} bytes; accepted in --dev only (at least {MIN_HS256_SECRET_BYTES} are required otherwise)",
                    s.len()
                );
            } else {
                return Err(Error::Startup(format!(
                    "JWT_SECRET is {} bytes; HS256 secrets need at least {MIN_HS256_SECRET_BYTES} (e.g. `openssl rand -hex 32`)",
                    s.len()
                )));
            }
        }
        if *jwt_max_lifetime_seconds < 60 || *jwt_service_max_lifetime_seconds < 60 {
            return Err(Error::Startup(
                "JWT_MAX_LIFETIME_SECONDS and JWT_SERVICE_MAX_LIFETIME_SECONDS must be at least 60"
                    .into(),
            ));
        }
        let service_audience = jwt_service_audience.trim();
        if service_audience.is_empty() {
            return Err(Error::Startup(
                "JWT_SERVICE_AUDIENCE must not be empty".into(),
            ));
        }
        if jwt_audience.as_deref() == Some(service_audience) {
            return Err(Error::Startup(
                "JWT_AUDIENCE and JWT_SERVICE_AUDIENCE must differ: a user token must not pass for a service token".into(),
            ));
        }
        let min_refresh = Duration::from_secs((*jwt_jwks_min_refresh_seconds).max(1));
        let max_refresh = Duration::from_secs(*jwt_jwks_max_refresh_seconds);
        if max_refresh < min_refresh {
            return Err(Error::Startup(
                "JWT_JWKS_MAX_REFRESH_SECONDS must be at least JWT_JWKS_MIN_REFRESH_SECONDS".into(),
            ));
        }
        let jwks_url = jwt_jwks_url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|url| UrlSettings {
                url: url.to_owned(),
                ca_file: jwt_jwks_ca_file.clone(),
                min_refresh,
                max_refresh,
                allow_http: *dev,
            });
        if let Some(u) = &jwks_url {
            crate::auth::jwks::check_url(u).map_err(Error::Startup)?;
        }
        let auth = AuthSettings {
            key,
            keys_dir: jwt_keys_dir.clone(),
            jwks_file: jwt_jwks_file.clone(),
            jwks_url,
            policy: TokenPolicy {
                issuer: jwt_issuer.clone().filter(|s| !s.is_empty()),
                audience: jwt_audience.clone().filter(|s| !s.is_empty()),
                require_exp: *jwt_require_exp,
                max_lifetime: *jwt_max_lifetime_seconds,
                service_audience: service_audience.to_owned(),
                service_max_lifetime: *jwt_service_max_lifetime_seconds,
                bridge_allows_admin: *bridge_allow_admin,
            },
            allow_weak_secrets: *dev,
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
        let seconds = |name: &str, value: u64| {
            if (1..=3600).contains(&value) {
                Ok(Duration::from_secs(value))
            } else {
                Err(Error::Startup(format!("{name} must be in 1..=3600")))
            }
        };
        if *max_connections == 0 || *admin_max_connections == 0 {
            return Err(Error::Startup(
                "LIVE_MAX_CONNECTIONS and LIVE_ADMIN_MAX_CONNECTIONS must be at least 1".into(),
            ));
        }
        let connection = ConnectionLimits {
            connect_timeout: seconds("LIVE_CONNECT_TIMEOUT_SECONDS", *connect_timeout_seconds)?,
            max_connect_failures: *max_connect_failures,
            max_packets_per_second: *max_packets_per_second,
            header_read_timeout: seconds(
                "LIVE_HEADER_READ_TIMEOUT_SECONDS",
                *header_read_timeout_seconds,
            )?,
            request_body_timeout: seconds(
                "LIVE_REQUEST_BODY_TIMEOUT_SECONDS",
                *request_body_timeout_seconds,
            )?,
            max_connections: *max_connections,
            max_connections_per_ip: *max_connections_per_ip,
            trusted_proxies: crate::client_ip::TrustedProxies::parse(
                trusted_proxies.as_deref().unwrap_or_default(),
            )
            .map_err(|e| Error::Startup(format!("LIVE_TRUSTED_PROXIES: {e}")))?,
            admin_max_connections: *admin_max_connections,
        };
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
            auth,
            cors_env,
            drain,
            shutdown_timeout,
            max_payload_bytes: *max_payload_bytes,
            redis,
            socket_buffer_packets: (*socket_buffer_packets).clamp(16, 65_536),
            // Longer than a second would make a busy socket look stalled to its client.
            ws_write_coalesce: Duration::from_millis((*ws_write_coalesce_ms).min(1_000)),
            dev: *dev,
            connection,
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

    /// A 32-byte HS256 secret, the shortest accepted outside --dev.
    const S: &str = "0123456789abcdef0123456789abcdef";

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
        assert!(matches!(s.auth.key, Some(KeyMaterial::Hs256Secret(k)) if k == "generated"));
        let a = args(&["--dev", "--jwt-secret", "mine"]);
        let s = a.settings(no_dev).unwrap();
        assert!(matches!(s.auth.key, Some(KeyMaterial::Hs256Secret(k)) if k == "mine"));
    }

    #[test]
    fn write_coalescing_defaults_to_20_ms_and_is_capped_at_a_second() {
        let s = args(&["--jwt-secret", S]).settings(no_dev).unwrap();
        assert_eq!(s.ws_write_coalesce, Duration::from_millis(20));
        let s = args(&["--jwt-secret", S, "--ws-write-coalesce-ms", "0"])
            .settings(no_dev)
            .unwrap();
        assert_eq!(s.ws_write_coalesce, Duration::ZERO);
        let s = args(&["--jwt-secret", S, "--ws-write-coalesce-ms", "60000"])
            .settings(no_dev)
            .unwrap();
        assert_eq!(s.ws_write_coalesce, Duration::from_secs(1));
    }

    #[test]
    fn the_algorithm_is_pinned_by_configuration() {
        let a = args(&["--jwt-public-key", "PEM", "--jwt-algorithm", "es256"]);
        assert!(matches!(
            a.settings(no_dev).unwrap().auth.key,
            Some(KeyMaterial::Es256Pem(_))
        ));
        let a = args(&["--jwt-public-key", "PEM"]);
        assert!(matches!(
            a.settings(no_dev).unwrap().auth.key,
            Some(KeyMaterial::Rs256Pem(_))
        ));
        let a = args(&["--jwt-secret", S, "--jwt-algorithm", "RS256"]);
        assert!(a.settings(no_dev).is_err());
        let a = args(&["--jwt-secret", S, "--jwt-algorithm", "none"]);
        assert!(
            a.settings(no_dev)
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
    }

    /// A secret long enough for any key rule.
    const LONG: &str = "a-test-secret-of-at-least-32-bytes!";

    #[test]
    fn connection_limits_have_safe_defaults() {
        let s = args(&["--jwt-secret", LONG]).settings(no_dev).unwrap();
        let c = s.connection;
        assert_eq!(c.connect_timeout, Duration::from_secs(10));
        assert_eq!(c.max_connect_failures, 3);
        assert_eq!(c.max_packets_per_second, 100);
        assert_eq!(c.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.request_body_timeout, Duration::from_secs(10));
        assert_eq!(c.max_connections, 20_000);
        assert_eq!(c.max_connections_per_ip, 256);
        assert!(c.trusted_proxies.is_empty());
        assert_eq!(c.admin_max_connections, 1024);
    }

    #[test]
    fn connection_limits_are_validated() {
        let bad = [
            ["--connect-timeout-seconds", "0"],
            ["--header-read-timeout-seconds", "0"],
            ["--request-body-timeout-seconds", "99999"],
            ["--max-connections", "0"],
            ["--trusted-proxies", "10.0.0.0/99"],
        ];
        for flags in bad {
            let mut argv = vec!["--jwt-secret", LONG];
            argv.extend(flags);
            assert!(args(&argv).settings(no_dev).is_err(), "{flags:?}");
        }
        let s = args(&["--jwt-secret", LONG, "--trusted-proxies", "10.0.0.0/8, ::1"])
            .settings(no_dev)
            .unwrap();
        assert!(
            s.connection
                .trusted_proxies
                .contains("10.2.3.4".parse().unwrap())
        );
    }

    #[test]
    fn the_public_and_admin_listeners_must_differ() {
        let a = args(&[
            "--jwt-secret",
            S,
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
            S,
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
        let a = args(&["--jwt-secret", S, "--cors-allow", "a.example"]);
        assert!(a.settings(no_dev).is_err());
        let a = args(&[
            "--jwt-secret",
            S,
            "--drain-seconds",
            "5",
            "--shutdown-timeout-seconds",
            "5",
        ]);
        assert!(a.settings(no_dev).is_err());
    }

    #[test]
    fn an_hs256_secret_shorter_than_32_bytes_is_refused_outside_dev() {
        let err = args(&["--jwt-secret", &S[..31]])
            .settings(no_dev)
            .unwrap_err()
            .to_string();
        assert!(err.contains("31 bytes") && err.contains("32"), "{err}");
        assert!(args(&["--jwt-secret", S]).settings(no_dev).is_ok());
        assert!(
            args(&["--dev", "--jwt-secret", "short"])
                .settings(no_dev)
                .is_ok()
        );
    }

    #[test]
    fn token_rules_default_to_required_exp_a_day_for_users_and_an_hour_for_services() {
        let p = args(&["--jwt-secret", S])
            .settings(no_dev)
            .unwrap()
            .auth
            .policy;
        assert_eq!(p, TokenPolicy::default());
        assert!(p.require_exp && !p.bridge_allows_admin);
        assert_eq!((p.max_lifetime, p.service_max_lifetime), (86_400, 3_600));
        assert_eq!(p.service_audience, "live-bridge");
        let p = args(&[
            "--jwt-secret",
            S,
            "--jwt-require-exp",
            "false",
            "--bridge-allow-admin",
            "--jwt-service-audience",
            "backend",
        ])
        .settings(no_dev)
        .unwrap()
        .auth
        .policy;
        assert!(!p.require_exp && p.bridge_allows_admin);
        assert_eq!(p.service_audience, "backend");
        let same = args(&["--jwt-secret", S, "--jwt-audience", "live-bridge"]);
        assert!(
            same.settings(no_dev).is_err(),
            "user and service audiences must differ"
        );
    }

    #[test]
    fn a_keys_dir_or_a_jwks_is_a_key_source_of_its_own() {
        let a = Args {
            jwt_secret: None,
            jwt_public_key: None,
            ..args(&["--jwt-keys-dir", "/keys"])
        };
        let s = a.settings(no_dev).unwrap();
        assert!(s.auth.key.is_none());
        assert_eq!(
            s.auth.keys_dir.as_deref(),
            Some(std::path::Path::new("/keys"))
        );
        let a = Args {
            jwt_secret: None,
            jwt_public_key: None,
            ..args(&["--jwt-jwks-url", "https://idp.example/jwks.json"])
        };
        let u = a.settings(no_dev).unwrap().auth.jwks_url.unwrap();
        assert_eq!(u.min_refresh, Duration::from_secs(60));
        assert_eq!(u.max_refresh, Duration::from_secs(3600));
        let plain = args(&["--jwt-jwks-url", "http://idp.example/jwks.json"]);
        assert!(plain.settings(no_dev).is_err(), "https only outside --dev");
        assert!(
            Args::try_parse_from([
                "live-gateway",
                "--jwt-jwks-url",
                "https://a/",
                "--jwt-jwks-file",
                "/f"
            ])
            .is_err(),
            "one JWKS source at a time"
        );
    }
}
