//! JWKS documents (RFC 7517) as a key source, for identity providers that publish their keys:
//! from a file (`JWT_JWKS_FILE`, reloaded on change like `JWT_KEYS_DIR`) or from an HTTPS URL
//! (`JWT_JWKS_URL`, cached).
//!
//! Which members become keys (the key type decides the one algorithm, as for every key):
//! `kty: RSA` → RS256, `kty: EC` with `crv: P-256` → ES256, `kty: oct` → HS256 (at least 32 bytes
//! outside `--dev`). A member whose `alg` is present and not that algorithm, whose `use` is not
//! `sig`, or whose type or curve the gateway does not verify (OKP, P-384, …) is skipped and logged.
//! A member of a supported type that is broken (a weak `oct` key, bad RSA or EC numbers) refuses
//! the whole document, as does a document with no usable key: the last good keys stay.
//!
//! The URL is fetched at startup (the gateway waits up to [`STARTUP_WAIT`] for it, then serves
//! anyway and keeps trying), then again after the response's `Cache-Control: max-age`, clamped to
//! `JWT_JWKS_MIN_REFRESH_SECONDS..=JWT_JWKS_MAX_REFRESH_SECONDS` (`no-cache`/`no-store` → the
//! minimum, no header → the maximum), with `If-None-Match` when the server sent an `ETag`. A
//! token whose `kid` is unknown triggers an early fetch, at most one per minimum refresh interval,
//! and its handshake waits for that fetch. A failed fetch keeps the last good keys and is retried
//! with backoff (1 s doubling, up to the minimum refresh interval).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use super::keys::{Key, KeyRing, KeySource};
use super::watch::{Trigger, changed, watch_dir};
use crate::metrics::Metrics;
use crate::state::lock;

/// Largest JWKS document accepted, file or URL. Providers publish a few keys (a few KiB).
pub const MAX_JWKS_BYTES: usize = 256 * 1024;
/// Most members a document may have.
pub const MAX_JWKS_KEYS: usize = 64;
/// Time limit of one fetch, connection included.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// How long startup waits for the first fetch before serving without the URL's keys.
pub const STARTUP_WAIT: Duration = Duration::from_secs(10);
/// First retry delay after a failed fetch; doubles up to the minimum refresh interval.
const RETRY_FIRST: Duration = Duration::from_secs(1);

/// The keys of a document and the members left out (with why), for the log.
#[derive(Debug)]
pub struct Parsed {
    pub keys: Vec<Key>,
    pub skipped: Vec<String>,
}

/// Parses a JWKS document.
pub fn parse(bytes: &[u8], allow_weak: bool) -> Result<Parsed, String> {
    if bytes.len() > MAX_JWKS_BYTES {
        return Err(format!("{} bytes, more than {MAX_JWKS_BYTES}", bytes.len()));
    }
    let doc: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let members = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("not a JWKS document: no \"keys\" array")?;
    if members.len() > MAX_JWKS_KEYS {
        return Err(format!("{} keys, more than {MAX_JWKS_KEYS}", members.len()));
    }
    let mut parsed = Parsed {
        keys: Vec::new(),
        skipped: Vec::new(),
    };
    for (i, m) in members.iter().enumerate() {
        let kid = match m.get("kid") {
            None | Some(Value::Null) => None,
            Some(Value::String(k)) => Some(k.as_str()),
            Some(_) => return Err(format!("keys[{i}]: kid is not a string")),
        };
        let name = kid.map_or_else(
            || format!("keys[{i}]"),
            |k| format!("keys[{i}] (kid {k:?})"),
        );
        match member(m, kid, allow_weak) {
            Ok(Some(key)) => parsed.keys.push(key),
            Ok(None) => parsed.skipped.push(format!(
                "{name}: {} {} {} not verified by the gateway",
                str_field(m, "kty").unwrap_or("?"),
                str_field(m, "crv").or(str_field(m, "alg")).unwrap_or(""),
                str_field(m, "use").map_or(String::new(), |u| format!("use={u}")),
            )),
            Err(e) => return Err(format!("{name}: {e}")),
        }
    }
    if parsed.keys.is_empty() {
        return Err("no usable key (RSA, EC P-256 or oct for signatures)".into());
    }
    Ok(parsed)
}

fn str_field<'a>(m: &'a Value, field: &str) -> Option<&'a str> {
    m.get(field).and_then(Value::as_str)
}

/// One member: `Ok(None)` when it is not for us, `Err` when it is but cannot be used.
fn member(m: &Value, kid: Option<&str>, allow_weak: bool) -> Result<Option<Key>, String> {
    if str_field(m, "use").is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    let alg = str_field(m, "alg");
    let required = |field: &str| {
        str_field(m, field).ok_or_else(|| format!("missing or non-string \"{field}\""))
    };
    match str_field(m, "kty") {
        Some("RSA") if alg.is_none_or(|a| a == "RS256") => {
            Key::rsa_components(kid, required("n")?, required("e")?).map(Some)
        }
        Some("EC") if str_field(m, "crv") == Some("P-256") && alg.is_none_or(|a| a == "ES256") => {
            Key::ec_components(kid, required("x")?, required("y")?).map(Some)
        }
        Some("oct") if alg.is_none_or(|a| a == "HS256") => {
            Key::oct(kid, required("k")?, allow_weak).map(Some)
        }
        _ => Ok(None),
    }
}

/// When to fetch again after a response with this `Cache-Control`.
pub fn refresh_after(cache_control: Option<&str>, min: Duration, max: Duration) -> Duration {
    let mut max_age = None;
    for directive in cache_control.unwrap_or_default().split(',') {
        let d = directive.trim().to_ascii_lowercase();
        if d == "no-cache" || d == "no-store" {
            return min;
        }
        if let Some(v) = d.strip_prefix("max-age=") {
            max_age = v.trim_matches('"').parse::<u64>().ok();
        }
    }
    max_age.map_or(max, Duration::from_secs).clamp(min, max)
}

/// Whether an unknown `kid` may trigger a fetch now: at most one per `min` interval, so a flood
/// of made-up `kid`s costs the identity provider one request per interval.
pub fn may_refetch(last_attempt: Option<Instant>, now: Instant, min: Duration) -> bool {
    last_attempt.is_none_or(|t| now.saturating_duration_since(t) >= min)
}

/// The next retry delay after a failure: doubling, capped at `cap`.
fn backoff(previous: Option<Duration>, cap: Duration) -> Duration {
    previous
        .map_or(RETRY_FIRST, |d| d.saturating_mul(2))
        .min(cap.max(RETRY_FIRST))
}

/// `JWT_JWKS_FILE` at startup: its keys and the content they came from.
pub fn load_file(path: &Path, allow_weak: bool) -> Result<(Parsed, Vec<u8>), String> {
    let bytes = read_file(path)?;
    let parsed = parse(&bytes, allow_weak).map_err(|e| format!("JWT_JWKS_FILE: {e}"))?;
    Ok((parsed, bytes))
}

fn read_file(path: &Path) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.len() > MAX_JWKS_BYTES as u64 {
        return Err(format!(
            "{}: {} bytes, more than {MAX_JWKS_BYTES}",
            path.display(),
            meta.len()
        ));
    }
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn log_skipped(source: &str, skipped: &[String]) {
    for s in skipped {
        tracing::info!(source, "JWKS member skipped: {s}");
    }
}

/// Reloads `JWT_JWKS_FILE` into `ring` on every change until `stop` (the file's directory is
/// watched, as for `JWT_KEYS_DIR`).
pub fn spawn_file_reloader(
    path: PathBuf,
    loaded: Vec<u8>,
    allow_weak: bool,
    ring: Arc<KeyRing>,
    metrics: Metrics,
    stop: CancellationToken,
) -> Result<(), String> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let mut triggers = watch_dir(&dir, stop)?;
    tokio::spawn(async move {
        let mut last: Result<Vec<u8>, String> = Ok(loaded);
        while let Some(trigger) = triggers.recv().await {
            let read_again = {
                let path = path.clone();
                move || read_file(&path)
            };
            let Some(content) = changed(read_again, Some(&last), trigger == Trigger::Signal).await
            else {
                continue;
            };
            match content
                .as_deref()
                .map_err(Clone::clone)
                .and_then(|b| parse(b, allow_weak))
            {
                Ok(parsed) => {
                    log_skipped("jwks_file", &parsed.skipped);
                    let changed = ring.replace(KeySource::Jwks, parsed.keys);
                    metrics.key_reload("jwks_file", "success");
                    tracing::info!(?trigger, changed, "JWT_JWKS_FILE reloaded");
                }
                Err(e) => {
                    metrics.key_reload("jwks_file", "failure");
                    tracing::warn!(
                        ?trigger,
                        "JWT_JWKS_FILE reload refused, keeping the last good keys: {e}"
                    );
                }
            }
            last = content;
        }
    });
    Ok(())
}

/// `JWT_JWKS_URL` and how it is fetched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlSettings {
    pub url: String,
    /// PEM bundle of the CAs to trust instead of the system's (`JWT_JWKS_CA_FILE`), for identity
    /// providers behind a private CA.
    pub ca_file: Option<PathBuf>,
    /// `JWT_JWKS_MIN_REFRESH_SECONDS`: the shortest time between two fetches.
    pub min_refresh: Duration,
    /// `JWT_JWKS_MAX_REFRESH_SECONDS`: the longest time a fetched document is used unrefreshed.
    pub max_refresh: Duration,
    /// `--dev` only: plain `http://` URLs are accepted.
    pub allow_http: bool,
}

/// The handle the verifier uses to ask for an early fetch, and startup to wait for the first.
#[derive(Clone, Debug)]
pub struct JwksRefresh {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    wake: Notify,
    state: Mutex<FetchState>,
    /// Counts finished fetch attempts; waiters watch it.
    attempts: watch::Sender<u64>,
    min_refresh: Duration,
}

#[derive(Debug, Default)]
struct FetchState {
    last_attempt: Option<Instant>,
    in_flight: bool,
}

impl JwksRefresh {
    /// Asks for a fetch because a token named an unknown `kid`, and waits for it. Returns whether
    /// a fetch finished (the caller then verifies again); `false` at once when a fetch is not
    /// allowed yet ([`may_refetch`]).
    pub async fn refetch_for_unknown_kid(&self) -> bool {
        let mut attempts = self.shared.attempts.subscribe();
        {
            let mut st = lock(&self.shared.state);
            if !st.in_flight {
                let now = Instant::now();
                if !may_refetch(st.last_attempt, now, self.shared.min_refresh) {
                    return false;
                }
                st.in_flight = true;
                st.last_attempt = Some(now);
                self.shared.wake.notify_one();
            }
        }
        matches!(
            tokio::time::timeout(FETCH_TIMEOUT, attempts.changed()).await,
            Ok(Ok(()))
        )
    }

    /// Waits until the first fetch attempt finished, at most `limit`; whether it did.
    pub async fn first_attempt(&self, limit: Duration) -> bool {
        let mut attempts = self.shared.attempts.subscribe();
        matches!(
            tokio::time::timeout(limit, attempts.wait_for(|n| *n >= 1)).await,
            Ok(Ok(_))
        )
    }
}

/// The HTTPS client for the URL: rustls with the system's roots, or only `ca_file`'s.
fn client(settings: &UrlSettings) -> Result<reqwest::Client, String> {
    let mut builder = reqwest::Client::builder()
        .https_only(!settings.allow_http)
        .timeout(FETCH_TIMEOUT)
        .connect_timeout(FETCH_TIMEOUT)
        .redirect(reqwest::redirect::Policy::limited(3))
        .user_agent(concat!("live-gateway/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = &settings.ca_file {
        let pem =
            std::fs::read(path).map_err(|e| format!("JWT_JWKS_CA_FILE {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("JWT_JWKS_CA_FILE {}: {e}", path.display()))?;
        if certs.is_empty() {
            return Err(format!(
                "JWT_JWKS_CA_FILE {}: no certificate in it",
                path.display()
            ));
        }
        builder = builder.tls_built_in_root_certs(false);
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder
        .build()
        .map_err(|e| format!("JWT_JWKS_URL client: {e}"))
}

/// Checks the URL's form (startup errors, not fetch errors).
pub fn check_url(settings: &UrlSettings) -> Result<(), String> {
    let url = reqwest::Url::parse(&settings.url).map_err(|e| format!("JWT_JWKS_URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(()),
        "http" if settings.allow_http => Ok(()),
        s => Err(format!(
            "JWT_JWKS_URL must be https:// (got {s}://; plain http only with --dev)"
        )),
    }
}

enum Fetched {
    NotModified {
        cache_control: Option<String>,
    },
    Document {
        body: Vec<u8>,
        etag: Option<String>,
        cache_control: Option<String>,
    },
}

async fn fetch(client: &reqwest::Client, url: &str, etag: Option<&str>) -> Result<Fetched, String> {
    let mut request = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json");
    if let Some(etag) = etag {
        request = request.header(reqwest::header::IF_NONE_MATCH, etag);
    }
    let mut response = request.send().await.map_err(|e| error_chain(&e))?;
    let header = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let cache_control = header(reqwest::header::CACHE_CONTROL);
    if response.status() == reqwest::StatusCode::NOT_MODIFIED {
        return Ok(Fetched::NotModified { cache_control });
    }
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let etag = header(reqwest::header::ETAG);
    if response
        .content_length()
        .is_some_and(|n| n > MAX_JWKS_BYTES as u64)
    {
        return Err(format!(
            "the document is larger than {MAX_JWKS_BYTES} bytes"
        ));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(|e| error_chain(&e))? {
        if body.len() + chunk.len() > MAX_JWKS_BYTES {
            return Err(format!(
                "the document is larger than {MAX_JWKS_BYTES} bytes"
            ));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Fetched::Document {
        body,
        etag,
        cache_control,
    })
}

/// reqwest's top-level message hides the cause (a TLS or DNS error); the log needs it.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// Starts fetching `settings.url` into `ring`, at once and then on schedule, until `stop`.
pub fn spawn_url(
    settings: UrlSettings,
    allow_weak: bool,
    ring: Arc<KeyRing>,
    metrics: Metrics,
    stop: CancellationToken,
) -> Result<JwksRefresh, String> {
    check_url(&settings)?;
    let client = client(&settings)?;
    let (attempts, _) = watch::channel(0u64);
    let shared = Arc::new(Shared {
        wake: Notify::new(),
        state: Mutex::new(FetchState {
            last_attempt: None,
            in_flight: true,
        }),
        attempts,
        min_refresh: settings.min_refresh,
    });
    let task = shared.clone();
    tokio::spawn(async move {
        let mut etag: Option<String> = None;
        let mut retry: Option<Duration> = None;
        loop {
            {
                let mut st = lock(&task.state);
                st.in_flight = true;
                st.last_attempt = Some(Instant::now());
            }
            let outcome = fetch(&client, &settings.url, etag.as_deref())
                .await
                .and_then(|fetched| match fetched {
                    Fetched::NotModified { cache_control } => Ok(cache_control),
                    Fetched::Document {
                        body,
                        etag: new_etag,
                        cache_control,
                    } => {
                        let parsed = parse(&body, allow_weak)?;
                        log_skipped("jwks_url", &parsed.skipped);
                        let changed = ring.replace(KeySource::Jwks, parsed.keys);
                        if changed {
                            tracing::info!(url = %settings.url, "JWT_JWKS_URL keys updated");
                        }
                        etag = new_etag;
                        Ok(cache_control)
                    }
                });
            let delay = match outcome {
                Ok(cache_control) => {
                    metrics.key_reload("jwks_url", "success");
                    retry = None;
                    refresh_after(
                        cache_control.as_deref(),
                        settings.min_refresh,
                        settings.max_refresh,
                    )
                }
                Err(e) => {
                    metrics.key_reload("jwks_url", "failure");
                    let d = backoff(retry, settings.min_refresh);
                    retry = Some(d);
                    tracing::warn!(url = %settings.url, retry_in_ms = d.as_millis() as u64, "JWT_JWKS_URL fetch failed, keeping the last good keys: {e}");
                    d
                }
            };
            lock(&task.state).in_flight = false;
            task.attempts.send_modify(|n| *n += 1);
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(delay) => {}
                () = task.wake.notified() => {}
            }
        }
    });
    Ok(JwksRefresh { shared })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    // base64url of a P-256 public point and of a 32-byte secret, from the keys in keys::tests.
    const EC_X: &str = "spe9Vws5apjPFEP0lXbUeWvPoRo1rvCHorEIRHciaSc";
    const EC_Y: &str = "IiyQIn8SeuFiT4Iq_cnxqKFPJecvL8a8L48ruBpZejQ";
    const OCT_32: &str = "a2V5LWotMDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODk";

    fn doc(keys: serde_json::Value) -> Vec<u8> {
        serde_json::to_vec(&json!({ "keys": keys })).unwrap()
    }

    #[test]
    fn supported_members_become_keys_and_the_rest_are_skipped() {
        let d = doc(json!([
            {"kty": "EC", "crv": "P-256", "x": EC_X, "y": EC_Y, "kid": "ec1", "use": "sig", "alg": "ES256"},
            {"kty": "oct", "k": OCT_32, "kid": "hs1"},
            {"kty": "EC", "crv": "P-384", "x": "AA", "y": "AA", "kid": "p384"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "enc", "use": "enc"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB", "kid": "ps", "alg": "PS256"},
            {"kty": "OKP", "crv": "Ed25519", "x": "AA", "kid": "ed"},
        ]));
        let p = parse(&d, false).unwrap();
        let kids: Vec<_> = p.keys.iter().map(|k| k.kid().unwrap()).collect();
        assert_eq!(kids, ["ec1", "hs1"]);
        assert_eq!(p.skipped.len(), 4, "{:?}", p.skipped);
    }

    #[test]
    fn a_weak_oct_key_or_a_broken_member_refuses_the_document() {
        let weak = doc(json!([{"kty": "oct", "k": "c2hvcnQ", "kid": "weak"}]));
        let err = parse(&weak, false).unwrap_err();
        assert!(err.contains("\"weak\"") && err.contains("32"), "{err}");
        assert!(parse(&weak, true).is_ok(), "--dev allows it");
        let broken = doc(json!([{"kty": "EC", "crv": "P-256", "x": EC_X, "kid": "noy"}]));
        assert!(parse(&broken, false).unwrap_err().contains("\"y\""));
        let bad_point = doc(json!([{"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}]));
        assert!(parse(&bad_point, false).is_err());
    }

    #[test]
    fn a_document_without_usable_keys_is_refused() {
        assert!(parse(b"{}", false).is_err());
        assert!(parse(b"not json", false).is_err());
        assert!(parse(&doc(json!([])), false).is_err());
        let only_ed = doc(json!([{"kty": "OKP", "crv": "Ed25519", "x": "AA"}]));
        assert!(
            parse(&only_ed, false)
                .unwrap_err()
                .contains("no usable key")
        );
        let too_many = doc(json!(vec![
            json!({"kty": "oct", "k": OCT_32});
            MAX_JWKS_KEYS + 1
        ]));
        assert!(parse(&too_many, false).is_err());
    }

    #[test]
    fn cache_control_sets_the_refresh_within_the_bounds() {
        let (min, max) = (Duration::from_secs(60), Duration::from_secs(3600));
        let r = |cc| refresh_after(cc, min, max);
        assert_eq!(r(Some("public, max-age=600")), Duration::from_secs(600));
        assert_eq!(r(Some("max-age=5")), min);
        assert_eq!(r(Some("max-age=86400, must-revalidate")), max);
        assert_eq!(r(Some("no-cache")), min);
        assert_eq!(r(Some("private, no-store")), min);
        assert_eq!(r(Some("max-age=oops")), max);
        assert_eq!(r(None), max);
    }

    #[test]
    fn an_unknown_kid_refetches_at_most_once_per_minimum_interval() {
        let t0 = Instant::now();
        let min = Duration::from_secs(30);
        assert!(may_refetch(None, t0, min));
        assert!(!may_refetch(Some(t0), t0 + Duration::from_secs(29), min));
        assert!(may_refetch(Some(t0), t0 + min, min));
    }

    #[test]
    fn failed_fetches_back_off_up_to_the_minimum_interval() {
        let cap = Duration::from_secs(10);
        let mut d = None;
        let mut seen = Vec::new();
        for _ in 0..6 {
            let next = backoff(d, cap);
            seen.push(next.as_secs());
            d = Some(next);
        }
        assert_eq!(seen, [1, 2, 4, 8, 10, 10]);
    }

    #[test]
    fn only_https_urls_are_accepted_outside_dev() {
        let mut s = UrlSettings {
            url: "http://idp.example/jwks".into(),
            ca_file: None,
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(3600),
            allow_http: false,
        };
        assert!(check_url(&s).unwrap_err().contains("https"));
        s.allow_http = true;
        assert!(check_url(&s).is_ok());
        s.url = "not a url".into();
        assert!(check_url(&s).is_err());
    }
}
