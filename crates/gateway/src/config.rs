//! The running configuration: the hot-reloadable file (`live_api::GatewayConfig`) merged with the
//! `CORS_ALLOW` environment fallback, published through a `tokio::sync::watch` channel and
//! reloaded when the file changes or on SIGHUP.
//!
//! Kubernetes updates a mounted ConfigMap by writing a new timestamped directory and atomically
//! swapping the `..data` symlink, so the file's own inode never changes. We therefore watch the
//! *directory*, treat any event in it as "maybe changed", debounce, re-read through the symlinks,
//! and compare contents. A slow poll backs the watcher up (inotify can miss events on some volume
//! types). An invalid file is refused: the last good config stays, the reason is logged and
//! `live_config_reloads_total{result="failure"}` counts it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use live_api::GatewayConfig;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// Quiet time after the last file event before reloading: a ConfigMap swap is several events.
const DEBOUNCE: Duration = Duration::from_millis(300);
/// Fallback poll interval, for volumes where inotify says nothing.
const POLL: Duration = Duration::from_secs(5);

/// Which browser origins may connect. Fails closed: with no list anywhere, no browser origin
/// may (requests without an `Origin` header, from native apps and servers, are not affected).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origins {
    /// Every origin: configured as `*`, or `--dev`. Never with credentials.
    Any,
    /// Only these exact origins, with credentials; empty means no browser origin at all.
    Only(Vec<String>),
}

impl Origins {
    /// Whether a request carrying this `Origin` header value may proceed.
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            Self::Any => true,
            Self::Only(list) => list.iter().any(|o| o.eq_ignore_ascii_case(origin)),
        }
    }

    /// Whether CORS responses may allow credentials (cookies, `Authorization`) for this
    /// origin: only for a listed origin, never under `*`.
    pub fn allows_credentials(&self, origin: &str) -> bool {
        matches!(self, Self::Only(_)) && self.allows(origin)
    }

    fn from_list(list: &[String]) -> Self {
        if list.iter().any(|o| o == live_api::ANY_ORIGIN) {
            Self::Any
        } else {
            Self::Only(list.to_vec())
        }
    }
}

/// The configuration every handler reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    pub gateway: GatewayConfig,
    pub origins: Origins,
}

impl RuntimeConfig {
    /// Merges the file with the environment. The file's `cors.allowedOrigins`, when present, wins
    /// over `CORS_ALLOW`; with neither, browser origins are refused, unless `dev` allows them all.
    /// Every other setting exists only in the file (or its default).
    pub fn merge(gateway: GatewayConfig, cors_env: Option<&[String]>, dev: bool) -> Self {
        let origins = match (&gateway.cors.allowed_origins, cors_env) {
            (Some(list), _) => Origins::from_list(list),
            (None, Some(list)) => Origins::from_list(list),
            (None, None) if dev => Origins::Any,
            (None, None) => Origins::Only(Vec::new()),
        };
        Self { gateway, origins }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self::merge(GatewayConfig::default(), None, false)
    }
}

/// Where the configuration comes from.
#[derive(Debug, Clone)]
pub struct ConfigSource {
    pub path: Option<PathBuf>,
    pub cors_env: Option<Vec<String>>,
    /// `--dev`: browser origins are allowed when no list is configured.
    pub dev: bool,
}

impl ConfigSource {
    /// Reads and validates the file (or the defaults when there is no file).
    pub fn load(&self) -> Result<RuntimeConfig> {
        let gateway = match &self.path {
            None => GatewayConfig::default(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| {
                    Error::Startup(format!("cannot read config file {}: {e}", p.display()))
                })?;
                GatewayConfig::from_yaml(&text)?
            }
        };
        Ok(RuntimeConfig::merge(
            gateway,
            self.cors_env.as_deref(),
            self.dev,
        ))
    }
}

/// Why a reload was attempted, for the logs.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    FileEvent,
    Poll,
    Signal,
}

/// Watches the config file and publishes every valid change on `tx` until `stop` is cancelled.
///
/// Returns immediately when there is no file to watch.
pub fn spawn_reloader(
    source: ConfigSource,
    tx: watch::Sender<Arc<RuntimeConfig>>,
    metrics: Metrics,
    stop: CancellationToken,
) -> Result<()> {
    let Some(path) = source.path.clone() else {
        return Ok(());
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    // The notify callback runs on notify's own thread; a bounded channel with try_send keeps a
    // burst of events from piling up (one pending wake-up is all the reloader needs).
    let (event_tx, mut events) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = event_tx.try_send(());
        }
    })
    .map_err(|e| Error::Startup(format!("cannot start file watcher: {e}")))?;
    notify::Watcher::watch(&mut watcher, &dir, notify::RecursiveMode::NonRecursive).map_err(
        |e| {
            Error::Startup(format!(
                "cannot watch config directory {}: {e}",
                dir.display()
            ))
        },
    )?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let mut last_seen = std::fs::read(&path).ok();

    tokio::spawn(async move {
        // Keep the watcher alive for as long as the task runs.
        let _watcher = watcher;
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let trigger = tokio::select! {
                () = stop.cancelled() => break,
                Some(()) = events.recv() => Trigger::FileEvent,
                _ = poll.tick() => Trigger::Poll,
                Some(()) = hangup.recv() => Trigger::Signal,
            };
            if matches!(trigger, Trigger::FileEvent) {
                // Debounce: wait until the directory has been quiet for a moment.
                loop {
                    tokio::select! {
                        Some(()) = events.recv() => continue,
                        () = tokio::time::sleep(DEBOUNCE) => break,
                    }
                }
            }
            let bytes = match tokio::fs::read(&path).await {
                Ok(b) => b,
                Err(e) => {
                    // Mid-swap the symlink can dangle for an instant; the next event or poll
                    // will see the new file.
                    if !matches!(trigger, Trigger::Poll) {
                        tracing::debug!(path = %path.display(), error = %e, "config file not readable yet");
                    }
                    continue;
                }
            };
            let changed = last_seen.as_deref() != Some(&bytes[..]);
            if !changed && !matches!(trigger, Trigger::Signal) {
                continue;
            }
            // An editor that truncates then writes exposes an empty or half-written file for an
            // instant: only act on content that stayed the same for a debounce period, and never
            // on an empty file (to reset to the defaults, write `{}`).
            tokio::time::sleep(DEBOUNCE).await;
            match tokio::fs::read(&path).await {
                Ok(again) if again == bytes && !bytes.iter().all(u8::is_ascii_whitespace) => {}
                _ => continue,
            }
            last_seen = Some(bytes.clone());
            apply(&source, &bytes, &tx, &metrics, trigger);
        }
    });
    Ok(())
}

fn apply(
    source: &ConfigSource,
    bytes: &[u8],
    tx: &watch::Sender<Arc<RuntimeConfig>>,
    metrics: &Metrics,
    trigger: Trigger,
) {
    let parsed = std::str::from_utf8(bytes)
        .map_err(|e| live_api::ConfigError::Parse(e.to_string()))
        .and_then(GatewayConfig::from_yaml);
    match parsed {
        Ok(gateway) => {
            let next = RuntimeConfig::merge(gateway, source.cors_env.as_deref(), source.dev);
            metrics.config_reloads.with_label_values(&["success"]).inc();
            metrics.config_last_reload_successful.set(1);
            let changed = tx.send_if_modified(|current| {
                if **current == next {
                    return false;
                }
                *current = Arc::new(next);
                true
            });
            tracing::info!(?trigger, changed, "config reloaded");
        }
        Err(e) => {
            metrics.config_reloads.with_label_values(&["failure"]).inc();
            metrics.config_last_reload_successful.set(0);
            tracing::warn!(?trigger, error = %e, "config reload refused; keeping the last good config");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_list_wins_over_cors_allow() {
        let env = vec!["https://env.example".to_owned()];
        let mut file = GatewayConfig::default();
        assert_eq!(
            RuntimeConfig::merge(file.clone(), Some(&env), false).origins,
            Origins::Only(env.clone())
        );
        file.cors.allowed_origins = Some(vec!["https://file.example".into()]);
        assert_eq!(
            RuntimeConfig::merge(file, Some(&env), false).origins,
            Origins::Only(vec!["https://file.example".into()])
        );
    }

    #[test]
    fn no_list_anywhere_refuses_browser_origins_except_in_dev_mode() {
        let c = RuntimeConfig::default();
        assert_eq!(c.origins, Origins::Only(vec![]));
        assert!(!c.origins.allows("https://anything.example"));
        let dev = RuntimeConfig::merge(GatewayConfig::default(), None, true);
        assert!(dev.origins.allows("https://anything.example"));
        assert!(!dev.origins.allows_credentials("https://anything.example"));
    }

    #[test]
    fn a_star_allows_every_origin_without_credentials() {
        let star = vec!["*".to_owned()];
        let c = RuntimeConfig::merge(GatewayConfig::default(), Some(&star), false);
        assert_eq!(c.origins, Origins::Any);
        assert!(c.origins.allows("https://a.example"));
        assert!(!c.origins.allows_credentials("https://a.example"));
        let listed = Origins::Only(vec!["https://a.example".into()]);
        assert!(listed.allows_credentials("https://a.example"));
        assert!(!listed.allows_credentials("https://b.example"));
    }

    #[test]
    fn an_empty_list_allows_no_browser_origin() {
        assert!(!Origins::Only(vec![]).allows("https://a.example"));
        assert!(Origins::Only(vec!["https://A.example".into()]).allows("https://a.example"));
    }

    #[test]
    fn loading_reports_the_file_and_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gateway.yaml");
        std::fs::write(&p, "rateLimits: {messagesPerMinute: 0}").unwrap();
        let src = ConfigSource {
            path: Some(p),
            cors_env: None,
            dev: false,
        };
        let err = src.load().unwrap_err().to_string();
        assert!(err.contains("rateLimits.messagesPerMinute"), "{err}");
        let missing = ConfigSource {
            path: Some(dir.path().join("nope.yaml")),
            cors_env: None,
            dev: false,
        };
        assert!(
            missing
                .load()
                .unwrap_err()
                .to_string()
                .contains("nope.yaml")
        );
    }

    #[tokio::test]
    async fn a_changed_file_is_published_and_a_broken_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("gateway.yaml");
        std::fs::write(&p, "rateLimits: {messagesPerMinute: 30}").unwrap();
        let src = ConfigSource {
            path: Some(p.clone()),
            cors_env: None,
            dev: false,
        };
        let (tx, mut rx) = watch::channel(Arc::new(src.load().unwrap()));
        let metrics = Metrics::new();
        let stop = CancellationToken::new();
        spawn_reloader(src, tx, metrics.clone(), stop.clone()).unwrap();

        std::fs::write(&p, "rateLimits: {messagesPerMinute: 2}").unwrap();
        tokio::time::timeout(Duration::from_secs(10), rx.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(rx.borrow().gateway.rate_limits.messages_per_minute, 2);

        std::fs::write(&p, "rateLimits: [oops").unwrap();
        let failures = metrics.config_reloads.with_label_values(&["failure"]);
        tokio::time::timeout(Duration::from_secs(10), async {
            while failures.get() == 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .unwrap();
        assert_eq!(rx.borrow().gateway.rate_limits.messages_per_minute, 2);
        assert_eq!(metrics.config_last_reload_successful.get(), 0);

        // An emptied file is a write in progress, not "all defaults".
        std::fs::write(&p, "").unwrap();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(rx.borrow().gateway.rate_limits.messages_per_minute, 2);
        stop.cancel();
    }
}
