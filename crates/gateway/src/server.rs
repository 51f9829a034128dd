//! Wires the gateway together and runs it: the public Socket.IO listener, the admin listener, the
//! config reloader and the periodic sweeper, then the drain on shutdown.
//!
//! `run` takes its listeners and its shutdown signal as arguments, so tests and embedders choose
//! ports and decide when to stop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use socketioxide::adapter::{Adapter, Emitter, LocalAdapter};
use socketioxide::handler::ConnectHandler;
use socketioxide::{ParserConfig, SocketIo};
use socketioxide_redis::{CustomRedisAdapter, RedisAdapterConfig, RedisAdapterCtr};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowCredentials, AllowOrigin, CorsLayer};
use tower_http::timeout::RequestBodyTimeoutLayer;

use crate::args::{ConnectionLimits, Settings};
use crate::bridge::{self, AdminState};
use crate::client_ip::{PerSource, SourceKey, client_ip};
use crate::cluster::{self, ResilientDriver, SharedStore};
use crate::config::{self, ConfigSource, Origins};
use crate::drain::Connections;
use crate::error::{Error, Result};
use crate::history::History;
use crate::listener;
use crate::metrics::Metrics;
use crate::realtime::{self, NAMESPACE};
use crate::state::AppState;

/// The Socket.IO request path.
pub const SOCKET_PATH: &str = "/ws";
/// How often expired rate-limit windows and mutes are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Batches the drain window is cut into: enough to smooth the reconnect wave, few enough that
/// each batch is a meaningful share.
const DRAIN_BATCHES: usize = 20;
/// tungstenite's per-connection read buffer. 1 KiB holds a typical chat frame in one read;
/// larger frames (up to `LIVE_MAX_PAYLOAD_BYTES`) take several reads.
const WS_READ_BUFFER_BYTES: usize = 1024;
/// How long a Redis-mode gateway waits for its pub/sub subscriptions before it opens its
/// listeners anyway.
const REDIS_STARTUP_GRACE: Duration = Duration::from_secs(5);
/// The live protocol has no binary events: a binary attachment closes the session (before and
/// after authentication). socketioxide's defaults buffered up to 10,000 attachments and 10 MB
/// per socket, with a completion timeout checked only when the next attachment arrived.
const MAX_BINARY_ATTACHMENTS: usize = 0;
/// Kept short in case attachments are ever allowed: a partial binary packet is dropped (and the
/// session closed) when its next part comes later than this.
const PACKET_COMPLETION_TIMEOUT: Duration = Duration::from_secs(5);

/// Runs the gateway until `shutdown` resolves, then drains and returns.
///
/// Expected flow: load and validate the config (an invalid file refuses to start), start the
/// reloader, serve both listeners; on `shutdown`, fail readiness, stop accepting, cut
/// connections in jittered batches over the drain window, and return once every connection is
/// closed or the shutdown timeout passes, whichever is first.
pub async fn run(
    settings: Settings,
    public: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<()> {
    let metrics = Metrics::new();
    let source = ConfigSource {
        path: settings.config.clone(),
        cors_env: settings.cors_env.clone(),
        dev: settings.dev,
    };
    let initial = source.load()?;
    match &initial.origins {
        Origins::Any => tracing::warn!(
            "every browser origin may connect (CORS `*` or --dev), without credentials"
        ),
        Origins::Only(list) if list.is_empty() => tracing::info!(
            "no CORS_ALLOW and no cors.allowedOrigins: browser origins are refused (native clients are not affected)"
        ),
        Origins::Only(_) => {}
    }
    let (config_tx, config_rx) = watch::channel(Arc::new(initial));
    let background = CancellationToken::new();
    let verifier = match crate::auth::start(&settings.auth, &metrics, &background).await {
        Ok(v) => v,
        Err(e) => {
            background.cancel();
            return Err(e);
        }
    };
    let state = AppState::new(config_rx, verifier, metrics.clone());
    config::spawn_reloader(source, config_tx, metrics, background.clone())?;
    spawn_sweeper(state.clone(), background.clone());

    let limits = &settings.connection;
    let parser = ParserConfig::common()
        .max_incoming_binaries(MAX_BINARY_ATTACHMENTS)
        .max_incoming_binary_buf_size(0)
        .packet_completion_timeout(PACKET_COMPLETION_TIMEOUT);
    let builder = SocketIo::builder()
        .req_path(SOCKET_PATH)
        .with_parser(parser)
        .connect_timeout(limits.connect_timeout)
        .max_connect_failures(limits.max_connect_failures)
        // A burst of five seconds' worth: above the per-connection event budget's refusals
        // and disconnect (rateLimits), so this backstop only meets what the budget cannot see.
        .max_packets_per_second(
            limits.max_packets_per_second,
            limits.max_packets_per_second.saturating_mul(5),
        )
        .max_payload(settings.max_payload_bytes as u64)
        .ws_max_message_size(settings.max_payload_bytes)
        .ws_max_frame_size(settings.max_payload_bytes)
        .max_buffer_size(settings.socket_buffer_packets)
        .ws_write_coalesce(settings.ws_write_coalesce)
        // Chat frames are small; tungstenite reads in chunks of this size and keeps the buffer
        // for the connection's life, so it is a per-connection cost (4 KiB by default).
        .ws_read_buffer_size(WS_READ_BUFFER_BYTES);
    let result = match settings.redis.clone() {
        None => {
            let (layer, io) = builder.with_state(state.clone()).build_layer();
            io.ns(
                NAMESPACE,
                realtime::on_connect::<LocalAdapter>.with(realtime::authenticate::<LocalAdapter>),
            );
            let public_app = public_router(state.clone(), layer, &settings.connection);
            serve(
                settings,
                state,
                io,
                public_app,
                public,
                admin,
                shutdown,
                &background,
            )
            .await
        }
        Some(redis) => {
            let clients = cluster::clients(&redis)?;
            let state = state.with_shared_hosts(clients.pool.clone(), &redis.prefix);
            let metrics = state.metrics.clone();
            metrics.redis_configured.set(1);
            let driver = ResilientDriver::start(
                clients.subscriber.clone(),
                clients.mode,
                metrics.clone(),
                background.clone(),
            );
            let driver_health = driver.clone();
            let history = History::in_redis(clients.pool.clone(), &redis.prefix, metrics.clone());
            let store =
                SharedStore::start(clients.pool, &redis.prefix, &redis.pod, metrics.clone());
            let adapter = RedisAdapterCtr::new_with_driver(
                driver,
                RedisAdapterConfig::new()
                    .with_prefix(format!("{}-socket.io", redis.prefix))
                    .with_request_timeout(Duration::from_secs(2))
                    // Room traffic arrives in bursts (a hot channel): a deep buffer, and drops
                    // beyond it are counted rather than blocking other channels.
                    .with_stream_buffer(16 * 1024)
                    // Each channel's traffic on a pub/sub channel of its own, received only by
                    // the replicas with members of it.
                    .with_room_channels(cluster::room_channels()),
            );
            let rooms = adapter.room_subscriptions();
            cluster::spawn_health(
                clients.subscriber,
                store.clone(),
                rooms.clone(),
                metrics,
                background.clone(),
            );
            spawn_room_sweeper(rooms.clone(), background.clone());
            let state = state.with_shared(store, rooms).with_history(history);
            let (layer, io) = builder
                .with_state(state.clone())
                .with_adapter::<RedisAdapterT>(adapter)
                .build_layer();
            // The driver never fails a subscription (it retries on reconnection), so this only
            // fails on a programming error such as an invalid namespace.
            io.ns(
                NAMESPACE,
                realtime::on_connect::<RedisAdapterT>.with(realtime::authenticate::<RedisAdapterT>),
            )
            .await
            .map_err(|e| Error::Startup(format!("redis adapter: {e}")))?;
            // Give Redis a moment before taking traffic, so a fresh replica does not serve its
            // first clients without cross-replica delivery; but never wait for it for long.
            let waited = tokio::time::timeout(REDIS_STARTUP_GRACE, async {
                while !driver_health.is_subscribed() {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            })
            .await;
            if waited.is_err() {
                tracing::warn!(
                    "redis not reachable at startup: serving local clients, will keep retrying"
                );
            }
            tracing::info!(
                pod = %redis.pod,
                prefix = %redis.prefix,
                mode = clients.mode.label(),
                "redis mode: replicas share fan-out, limits, mutes and counts"
            );
            let public_app = public_router(state.clone(), layer, &settings.connection);
            serve(
                settings,
                state,
                io,
                public_app,
                public,
                admin,
                shutdown,
                &background,
            )
            .await
        }
    };
    background.cancel();
    result
}

/// The adapter type of a Redis-backed gateway.
type RedisAdapterT = CustomRedisAdapter<Emitter, ResilientDriver>;

/// The public router: the guard (origins, draining, sessions per source), CORS, a body timeout,
/// then Socket.IO; everything else is 404.
fn public_router<L>(state: AppState, socketio: L, limits: &ConnectionLimits) -> Router
where
    L: tower::Layer<Router>,
    L::Service:
        tower::Service<Request, Error = std::convert::Infallible> + Clone + Send + Sync + 'static,
    <L::Service as tower::Service<Request>>::Response: IntoResponse + 'static,
    <L::Service as tower::Service<Request>>::Future: Send + 'static,
{
    let cors_state = state.clone();
    let credentials_state = state.clone();
    // The origin is reflected, never `*`: under `*` (or --dev) every origin is reflected but
    // without credentials; a listed origin gets credentials.
    let cors = CorsLayer::new()
        .allow_origin(AllowOrigin::predicate(move |origin: &HeaderValue, _| {
            origin
                .to_str()
                .is_ok_and(|o| cors_state.config().origins.allows(o))
        }))
        .allow_credentials(AllowCredentials::predicate(
            move |origin: &HeaderValue, _| {
                origin
                    .to_str()
                    .is_ok_and(|o| credentials_state.config().origins.allows_credentials(o))
            },
        ))
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]);
    // The Socket.IO layer is applied exactly once: each `layer()` call builds a separate engine
    // with its own session table, and `Router::layer` may call it more than once (polling then
    // fails with "Session ID unknown" when two requests land on different engines).
    let not_found = Router::new().fallback(|| async { StatusCode::NOT_FOUND });
    let guard_state = Guard {
        app: state,
        trusted: Arc::new(limits.trusted_proxies.clone()),
        max_per_source: limits.max_connections_per_ip,
    };
    Router::new()
        .fallback_service(socketio.layer(not_found))
        .layer(RequestBodyTimeoutLayer::new(limits.request_body_timeout))
        .layer(cors)
        .layer(middleware::from_fn_with_state(guard_state, guard))
}

/// What the public guard needs.
#[derive(Debug, Clone)]
struct Guard {
    app: AppState,
    trusted: Arc<crate::client_ip::TrustedProxies>,
    max_per_source: u32,
}

/// Refuses, before Socket.IO sees them, handshakes from origins not on the list (polling and
/// WebSocket upgrades alike), new sessions while draining, and new sessions from a source that
/// holds `LIVE_MAX_CONNECTIONS_PER_IP` already. A new session holds its source's slot (in its
/// request's extensions, which the session keeps) until it closes.
async fn guard(State(guard): State<Guard>, req: Request, next: Next) -> Response {
    let state = &guard.app;
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let allowed = origin
            .to_str()
            .is_ok_and(|o| state.config().origins.allows(o));
        if !allowed {
            state.metrics.error("origin_not_allowed");
            state
                .metrics
                .connections
                .with_label_values(&["rejected"])
                .inc();
            return (StatusCode::FORBIDDEN, "origin not allowed").into_response();
        }
    }
    let is_new_session = !req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("sid=")));
    if state.is_draining() && is_new_session {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    let mut req = detach_from_read_buffer(req);
    if is_new_session && guard.max_per_source != 0 {
        let peer = req.extensions().get::<ConnectInfo<std::net::SocketAddr>>();
        if let Some(ConnectInfo(peer)) = peer {
            let source = client_ip(peer.ip(), req.headers(), &guard.trusted);
            match state
                .sessions_per_source
                .acquire(SourceKey::of(source), guard.max_per_source)
            {
                Some(slot) => {
                    req.extensions_mut().insert(Arc::new(slot));
                }
                None => {
                    state
                        .metrics
                        .connections_refused
                        .with_label_values(&["public", "per_ip_sessions"])
                        .inc();
                    if let Some(suppressed) = state.logs.admit("session_refused") {
                        tracing::info!(
                            suppressed,
                            "session refused: its source holds the maximum (sampled)"
                        );
                    }
                    return (
                        StatusCode::TOO_MANY_REQUESTS,
                        "too many connections from this address",
                    )
                        .into_response();
                }
            }
        }
    }
    next.run(req).await
}

/// Copies the request's URI and headers into allocations of their own.
///
/// hyper parses them as slices of its connection read buffer (8–16 KiB), and socketioxide keeps
/// every socket's request parts for the socket's whole life (`req_parts()`), which pinned that
/// buffer: measured 16 KiB of heap per idle connection (valgrind massif, docs/performance.md).
/// Copying a few hundred bytes of headers once per handshake frees it.
fn detach_from_read_buffer(req: Request) -> Request {
    let (mut parts, body) = req.into_parts();
    let headers = std::mem::take(&mut parts.headers);
    let mut detached = http::HeaderMap::with_capacity(headers.len());
    for (name, value) in &headers {
        let name = http::HeaderName::from_bytes(name.as_str().as_bytes()).unwrap_or(name.clone());
        let value = HeaderValue::from_bytes(value.as_bytes()).unwrap_or(value.clone());
        detached.append(name, value);
    }
    parts.headers = detached;
    if let Ok(uri) = parts.uri.to_string().parse::<http::Uri>() {
        // axum's router keeps a clone of the URI in the extensions, another slice of the buffer.
        if let Some(original) = parts.extensions.get_mut::<axum::extract::OriginalUri>() {
            original.0 = uri.clone();
        }
        parts.uri = uri;
    }
    Request::from_parts(parts, body)
}

/// Announces batched presence every `presence.batchIntervalMs` (read per tick, so a reload
/// applies), and resynchronises local room sizes every [`SWEEP_EVERY`].
fn spawn_presence_flusher<A: Adapter>(io: SocketIo<A>, state: AppState, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut last_resync = tokio::time::Instant::now();
        loop {
            let interval = Duration::from_millis(state.config().gateway.presence.batch_interval_ms);
            tokio::select! {
                () = stop.cancelled() => break,
                () = tokio::time::sleep(interval) => {}
            }
            let resync = last_resync.elapsed() >= SWEEP_EVERY;
            if resync {
                last_resync = tokio::time::Instant::now();
            }
            realtime::flush_presence(&io, &state, resync).await;
        }
    });
}

/// Every [`SWEEP_EVERY`], lets the subscriptions of channels without local members linger out:
/// a safety net for removals no handler saw (the adapter and the leave handlers report the
/// others at once).
fn spawn_room_sweeper(rooms: cluster::Rooms, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        every.tick().await;
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = every.tick() => rooms.sweep(),
            }
        }
    });
}

fn spawn_sweeper(state: AppState, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = every.tick() => state.sweep(),
            }
        }
    });
}

#[allow(clippy::too_many_arguments)]
async fn serve<A: Adapter>(
    settings: Settings,
    state: AppState,
    io: SocketIo<A>,
    public_app: Router,
    public: TcpListener,
    admin: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
    background: &CancellationToken,
) -> Result<()> {
    let metrics_io = io.clone();
    state
        .metrics
        .register_rooms(move || realtime::local_room_sizes(&metrics_io));
    let deliveries_io = io.clone();
    state
        .metrics
        .register_deliveries(move || deliveries_io.deliveries());
    let snapshots = CancellationToken::new();
    if let Some(shared) = &state.shared {
        let snapshot_io = io.clone();
        shared.spawn_snapshots(
            move || realtime::local_snapshot(&snapshot_io),
            crate::state::unix_millis,
            snapshots.clone(),
        );
    }
    spawn_presence_flusher(io.clone(), state.clone(), background.clone());
    crate::lifecycle::spawn(io.clone(), state.clone(), background.clone());
    let admin_state = AdminState {
        app: state.clone(),
        io,
    };
    let admin_app = bridge::router(admin_state.clone()).merge(crate::console::router(
        admin_state,
        &settings,
        background.clone(),
    ));

    let connections = Connections::default();
    let stop_public = CancellationToken::new();
    let stop_admin = CancellationToken::new();
    let limits = &settings.connection;
    let trusted = Arc::new(limits.trusted_proxies.clone());
    let mut public_task = tokio::spawn(listener::serve(
        public,
        public_app,
        listener::Limits {
            name: "public",
            max_connections: limits.max_connections,
            max_per_source: limits.max_connections_per_ip,
            header_read_timeout: limits.header_read_timeout,
            trusted: Arc::clone(&trusted),
        },
        listener::Shared {
            metrics: state.metrics.clone(),
            logs: Arc::clone(&state.logs),
            per_source: PerSource::default(),
            drain: Some(connections.clone()),
        },
        stop_public.clone(),
    ));
    let admin_app = admin_app.layer(RequestBodyTimeoutLayer::new(limits.request_body_timeout));
    let mut admin_task = tokio::spawn(listener::serve(
        admin,
        admin_app,
        listener::Limits {
            name: "admin",
            max_connections: limits.admin_max_connections,
            // The admin listener serves the cluster network only: backends, Prometheus, probes.
            max_per_source: 0,
            header_read_timeout: limits.header_read_timeout,
            trusted,
        },
        listener::Shared {
            metrics: state.metrics.clone(),
            logs: Arc::clone(&state.logs),
            per_source: PerSource::default(),
            drain: None,
        },
        stop_admin.clone(),
    ));
    tracing::info!(
        public = %settings.listen,
        admin = %settings.admin_listen,
        "live-gateway ready"
    );

    tokio::select! {
        () = shutdown => {}
        r = &mut public_task => return Err(Error::Startup(format!("public listener stopped: {r:?}"))),
        r = &mut admin_task => return Err(Error::Startup(format!("admin listener stopped: {r:?}"))),
    }

    // Drain. Readiness fails first so load balancers stop sending new clients here.
    let deadline = tokio::time::Instant::now() + settings.shutdown_timeout;
    state.start_draining();
    stop_public.cancel();
    tracing::info!(
        connections = connections.len(),
        window_seconds = settings.drain.as_secs(),
        "draining"
    );
    let drained = tokio::time::timeout_at(deadline, async {
        connections.drain(settings.drain, DRAIN_BATCHES).await;
        connections.closed().await;
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = connections.len(),
            "shutdown timeout reached with connections still open"
        );
    }
    // A drained pod stops counting in shared viewer numbers at once, not after the TTL.
    snapshots.cancel();
    let _ = tokio::time::timeout_at(deadline, &mut public_task).await;
    stop_admin.cancel();
    let _ = tokio::time::timeout_at(deadline, &mut admin_task).await;
    tracing::info!("live-gateway stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detaching_a_request_keeps_its_uri_headers_and_extensions() {
        let mut req = Request::builder()
            .uri("/ws/?EIO=4&transport=websocket")
            .header(header::AUTHORIZATION, "Bearer a.b.c")
            .header("x-custom", "one")
            .header("x-custom", "two")
            .body(axum::body::Body::empty())
            .unwrap();
        let uri = req.uri().clone();
        req.extensions_mut().insert(axum::extract::OriginalUri(uri));
        req.extensions_mut().insert(42u8);
        let before = (req.uri().clone(), req.headers().clone());
        let after = detach_from_read_buffer(req);
        assert_eq!(after.uri(), &before.0);
        assert_eq!(after.headers(), &before.1);
        assert_eq!(
            after
                .extensions()
                .get::<axum::extract::OriginalUri>()
                .map(|o| &o.0),
            Some(&before.0)
        );
        assert_eq!(after.extensions().get::<u8>(), Some(&42));
    }
}
