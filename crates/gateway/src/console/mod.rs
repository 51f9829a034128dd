//! The operator's web console on the admin listener (`/console`): a small web app compiled into
//! the binary, and the JSON and event-stream API it calls.
//!
//! Layout: [`assets`] serves the app's files under a strict Content-Security-Policy; [`auth`]
//! decides which tokens may sign in; [`overview`] ranks channels by viewers and lists the
//! replicas (cluster-wide with Redis); [`health`] is this replica's health record, published for
//! the other replicas; [`feed`] streams one channel live. The handlers below are thin shells:
//! every outcome goes through [`respond`], the one place that maps an [`Error`] to a status and
//! a JSON body and counts the request.
//!
//! The console holds no session: the browser keeps the token (in `sessionStorage`) and sends it
//! as `Authorization: Bearer` on every call, including the event streams, which are read with
//! `fetch` so the token never appears in a URL.

pub mod assets;
pub mod auth;
pub mod feed;
pub mod health;
pub mod overview;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use socketioxide::adapter::Adapter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::args::Settings;
use crate::auth::AuthError;
use crate::bridge::AdminState;
use crate::error::{Error, Result};
use crate::protocol;
use crate::realtime::{self, NAMESPACE};
use crate::state::{AppState, unix_millis};

use self::auth::{Operator, Refused};
use self::health::Identity;

/// Event streams (overview and feeds) open at once on one gateway. A console is a handful of
/// people; the bound keeps a leaked token from opening thousands of Redis-reading loops.
pub const MAX_STREAMS: usize = 16;
/// How often a stream refreshes what it derives from the shared store (counts, replicas):
/// the pods' snapshots themselves refresh every [`crate::cluster::SNAPSHOT_EVERY`].
pub const REFRESH: Duration = Duration::from_secs(2);
/// How often an open stream re-verifies its token, so an expired token or a retired key ends
/// the stream rather than leaving it open forever.
pub const REVERIFY: Duration = Duration::from_secs(30);
/// Channels a ranking returns by default, and at most.
pub const DEFAULT_CHANNELS: usize = 100;
pub const MAX_CHANNELS: usize = 1000;
/// Users a channel's presence lists at most.
pub const MAX_USERS: usize = 500;
/// Largest moderation request body.
const MAX_BODY_BYTES: usize = 16 * 1024;

/// What the console's handlers share: the admin state, this replica's identity and the bound
/// on open streams.
#[derive(Debug)]
pub struct Console<A: Adapter> {
    pub admin: AdminState<A>,
    pub identity: Arc<Identity>,
    streams: Arc<Semaphore>,
}

impl<A: Adapter> Clone for Console<A> {
    fn clone(&self) -> Self {
        Self {
            admin: self.admin.clone(),
            identity: self.identity.clone(),
            streams: self.streams.clone(),
        }
    }
}

impl<A: Adapter> Console<A> {
    pub fn app(&self) -> &AppState {
        &self.admin.app
    }

    /// A stream slot, or `TooManyStreams`. The permit is held for the stream's life.
    fn stream_slot(&self) -> Result<StreamSlot> {
        let permit = self
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::TooManyStreams)?;
        let gauge = self.app().metrics.console_streams.clone();
        gauge.inc();
        Ok(StreamSlot {
            _permit: permit,
            gauge,
        })
    }
}

/// An open stream's place in [`MAX_STREAMS`] and the `live_console_streams` gauge.
struct StreamSlot {
    _permit: OwnedSemaphorePermit,
    gauge: prometheus::IntGauge,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The console's router, to merge into the admin router. Starts this replica's health
/// publisher, which runs until `stop`.
pub fn router<A: Adapter>(
    admin: AdminState<A>,
    settings: &Settings,
    stop: CancellationToken,
) -> Router {
    let console = Console {
        identity: Arc::new(Identity::new(settings, unix_millis())),
        admin,
        streams: Arc::new(Semaphore::new(MAX_STREAMS)),
    };
    health::spawn_publisher(console.app().clone(), console.identity.clone(), stop);
    assets::routes()
        .route("/console/api/session", get(session::<A>))
        .route("/console/api/config", get(config::<A>))
        .route("/console/api/replicas", get(replicas::<A>))
        .route("/console/api/channels", get(channels::<A>))
        .route("/console/api/channels/{channel}", get(channel::<A>))
        .route("/console/api/stream", get(overview_stream::<A>))
        .route(
            "/console/api/channels/{channel}/feed",
            get(feed_stream::<A>),
        )
        .route(
            "/console/api/channels/{channel}/moderation",
            post(moderate::<A>),
        )
        .with_state(console)
}

/// Who is signed in, and where.
async fn session<A: Adapter>(
    State(c): State<Console<A>>,
    op: Result<Operator, Refused>,
) -> Response {
    let result = op.map_err(Error::from).map(|op| {
        json!({
            "userId": op.claims.user_id,
            "username": op.claims.username,
            "role": op.claims.role,
            "pod": c.identity.pod,
            "version": c.identity.version,
        })
    });
    respond(c.app(), "session", StatusCode::OK, result)
}

/// The running configuration: the hot-reloaded settings in force now, the origins they resolve
/// to, and the process settings fixed at startup (never a secret).
async fn config<A: Adapter>(
    State(c): State<Console<A>>,
    op: Result<Operator, Refused>,
) -> Response {
    let result = op.map_err(Error::from).map(|_| {
        let running = c.app().config();
        json!({
            "gateway": running.gateway,
            "origins": match &running.origins {
                crate::config::Origins::Any => Value::String("*".into()),
                crate::config::Origins::Only(list) => json!(list),
            },
            "configHash": health::config_hash(&running.gateway),
            "process": c.identity.settings,
        })
    });
    respond(c.app(), "config", StatusCode::OK, result)
}

async fn replicas<A: Adapter>(
    State(c): State<Console<A>>,
    op: Result<Operator, Refused>,
) -> Response {
    let result = match op {
        Ok(_) => Ok(json!(overview::replicas(&c, unix_millis()).await)),
        Err(e) => Err(e.into()),
    };
    respond(c.app(), "replicas", StatusCode::OK, result)
}

#[derive(Debug, Deserialize)]
struct ListParams {
    limit: Option<usize>,
}

fn limit(params: Result<Query<ListParams>, impl std::fmt::Display>) -> Result<usize> {
    let Query(p) = params.map_err(|e| Error::InvalidField {
        field: "limit",
        reason: e.to_string(),
    })?;
    match p.limit {
        None => Ok(DEFAULT_CHANNELS),
        Some(n @ 1..=MAX_CHANNELS) => Ok(n),
        Some(_) => Err(Error::InvalidField {
            field: "limit",
            reason: format!("must be 1..={MAX_CHANNELS}"),
        }),
    }
}

async fn channels<A: Adapter>(
    State(c): State<Console<A>>,
    op: Result<Operator, Refused>,
    params: Result<Query<ListParams>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let result = async {
        op?;
        let limit = limit(params)?;
        Ok(json!(overview::channels(&c, limit, unix_millis()).await))
    }
    .await;
    respond(c.app(), "channels", StatusCode::OK, result)
}

/// One channel's viewers and the users present, cluster-wide.
async fn channel<A: Adapter>(
    State(c): State<Console<A>>,
    op: Result<Operator, Refused>,
    Path(channel): Path<String>,
) -> Response {
    let result = async {
        op?;
        let channel = checked_channel(&channel)?;
        Ok(json!(feed::presence(&c, channel, unix_millis()).await?))
    }
    .await;
    respond(c.app(), "channel", StatusCode::OK, result)
}

/// The overview as an event stream: an `overview` event now and every [`REFRESH`].
async fn overview_stream<A: Adapter>(
    State(c): State<Console<A>>,
    op: Result<Operator, Refused>,
) -> Response {
    let opened = op
        .map_err(Error::from)
        .and_then(|op| Ok((op, c.stream_slot()?)));
    let (op, slot) = match opened {
        Ok(v) => v,
        Err(e) => return respond(c.app(), "stream", StatusCode::OK, Err(e)),
    };
    count(c.app(), "stream", StatusCode::OK);
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        let _slot = slot;
        let mut reverify = tokio::time::interval(REVERIFY);
        reverify.tick().await;
        loop {
            let ov = overview::overview(&c, DEFAULT_CHANNELS, unix_millis()).await;
            if tx.send(json_event("overview", &ov)).await.is_err() {
                break;
            }
            tokio::select! {
                () = tx.closed() => break,
                () = tokio::time::sleep(REFRESH) => {}
                _ = reverify.tick() => {
                    if let Err(e) = op.reverify(c.app()).await {
                        let _ = tx.send(signed_out(&e)).await;
                        break;
                    }
                }
            }
        }
    });
    event_stream(rx)
}

/// One channel's live feed as an event stream: see [`feed::run`].
async fn feed_stream<A: Adapter>(
    State(c): State<Console<A>>,
    op: Result<Operator, Refused>,
    Path(channel): Path<String>,
) -> Response {
    let opened = op.map_err(Error::from).and_then(|op| {
        let channel = checked_channel(&channel)?.to_owned();
        Ok((op, channel, c.stream_slot()?))
    });
    let (op, channel, slot) = match opened {
        Ok(v) => v,
        Err(e) => return respond(c.app(), "feed", StatusCode::OK, Err(e)),
    };
    count(c.app(), "feed", StatusCode::OK);
    let (tx, rx) = mpsc::channel(feed::BUFFER);
    tokio::spawn(async move {
        let _slot = slot;
        feed::run(c, op, channel, tx).await;
    });
    event_stream(rx)
}

/// Warn, mute or end from the console: parsed and carried out exactly as the bridge's
/// moderation route does ([`realtime::apply_moderation`]), in the operator's name.
async fn moderate<A: Adapter>(
    State(c): State<Console<A>>,
    op: Result<Operator, Refused>,
    Path(channel): Path<String>,
    body: Bytes,
) -> Response {
    let result = async {
        let op = op?;
        let channel = checked_channel(&channel)?;
        if body.len() > MAX_BODY_BYTES {
            return Err(Error::InvalidJson(format!(
                "the body exceeds {MAX_BODY_BYTES} bytes"
            )));
        }
        let v: Value =
            serde_json::from_slice(&body).map_err(|e| Error::InvalidJson(e.to_string()))?;
        if !v.is_object() {
            return Err(Error::InvalidJson("the body must be a JSON object".into()));
        }
        let st = c.app();
        let m = protocol::parse_moderation(&v, st.config().gateway.limits.max_reason_length)?;
        let default_mute = st.config().gateway.moderation.mute_seconds;
        let ops = c
            .admin
            .io
            .of(NAMESPACE)
            .map(|ns| ns.to(protocol::room(channel)))
            .ok_or_else(|| Error::Startup("the /live namespace is not registered".into()))?;
        realtime::apply_moderation(
            ops,
            st,
            channel,
            &m,
            &op.claims.user_id,
            op.claims.username.as_deref(),
            default_mute,
        )
        .await;
        let duration = (m.action == protocol::Action::Mute)
            .then(|| m.duration_seconds.unwrap_or(default_mute));
        tracing::info!(
            by = %op.claims.user_id,
            channel,
            action = ?m.action,
            "moderation from the console"
        );
        Ok(json!({
            "ok": true,
            "channelName": channel,
            "action": m.action,
            "targetUserId": m.target_user_id,
            "durationSeconds": duration,
            "reason": m.reason,
            "by": op.claims.user_id,
            "timestamp": unix_millis(),
        }))
    }
    .await;
    respond(c.app(), "moderation", StatusCode::OK, result)
}

fn checked_channel(channel: &str) -> Result<&str> {
    if protocol::valid_channel_name(channel) {
        Ok(channel)
    } else {
        Err(Error::InvalidChannel)
    }
}

/// An SSE event carrying `data` as JSON.
pub(crate) fn json_event(name: &'static str, data: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .json_data(data)
        .unwrap_or_else(|_| Event::default().event(name).data("null"))
}

/// The last event of a stream whose token no longer verifies.
pub(crate) fn signed_out(e: &Error) -> Event {
    json_event(
        "signed_out",
        &json!({ "code": e.code(), "message": e.client_message() }),
    )
}

/// The response of an event stream fed by `rx`. A comment every 15 s keeps proxies from timing
/// the connection out.
fn event_stream(rx: mpsc::Receiver<Event>) -> Response {
    let events = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    assets::secure(response.headers_mut());
    response
}

fn count(st: &AppState, route: &'static str, status: StatusCode) {
    st.metrics
        .console_requests
        .with_label_values(&[route, status.as_str()])
        .inc();
}

/// The one conversion from a console outcome to an HTTP response, and its metric.
fn respond(
    st: &AppState,
    route: &'static str,
    success: StatusCode,
    result: Result<Value>,
) -> Response {
    let (status, body) = match result {
        Ok(body) => (success, body),
        Err(e) => {
            let status = match &e {
                Error::Unauthorized(AuthError::RoleNotAllowed) => StatusCode::FORBIDDEN,
                Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
                Error::InvalidJson(_) => StatusCode::BAD_REQUEST,
                Error::TooManyStreams => StatusCode::SERVICE_UNAVAILABLE,
                Error::Config(_) | Error::Startup(_) | Error::Io(_) => {
                    tracing::error!(route, error = %e, "console call failed");
                    StatusCode::INTERNAL_SERVER_ERROR
                }
                _ => StatusCode::UNPROCESSABLE_ENTITY,
            };
            let (code, message) = match &e {
                Error::Unauthorized(AuthError::RoleNotAllowed) => (
                    "forbidden",
                    "this token's role may not use the console".to_owned(),
                ),
                _ => (e.code(), e.client_message()),
            };
            if let Error::Unauthorized(reason) = &e
                && *reason != AuthError::RoleNotAllowed
            {
                tracing::info!(reason = reason.reason(), "console call refused: {reason}");
                st.metrics
                    .auth_failures
                    .with_label_values(&[reason.reason()])
                    .inc();
            }
            st.metrics.error(code);
            (
                status,
                json!({ "ok": false, "error": { "code": code, "message": message } }),
            )
        }
    };
    count(st, route, status);
    let mut response = (status, axum::Json(body)).into_response();
    assets::secure(response.headers_mut());
    response
}

#[cfg(test)]
mod tests;
