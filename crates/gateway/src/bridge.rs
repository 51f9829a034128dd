//! The authenticated HTTP → WebSocket bridge that backends call to publish into live channels
//! (the Node layer's `emitters.ts`), and the admin endpoints beside it: health, readiness and
//! Prometheus metrics. Served only on the admin listener.
//!
//! Handlers are infallible shells: every outcome goes through [`respond`], the one place that
//! maps an [`Error`] to a status code and a JSON body and counts the request.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Map, Value, json};
use socketioxide::SocketIo;
use socketioxide::adapter::Adapter;
use socketioxide::operators::BroadcastOperators;

use crate::auth::{AuthError, Claims, Purpose, bearer};
use crate::error::{Error, Result};
use crate::history::Retention::{History, LiveOnly};
use crate::protocol::{self, outbound};
use crate::realtime::{self, NAMESPACE};
use crate::sanitize::{self, escape};
use crate::state::{AppState, unix_millis};

/// Every bridge route: method, path (axum syntax) and its bounded metric label. The OpenAPI
/// description in `docs/bridge-openapi.yaml` is checked against this table by a test.
pub const ROUTES: &[(&str, &str, &str)] = &[
    ("post", "/v1/channels/{channel}/gift", "gift"),
    ("post", "/v1/channels/{channel}/presence", "presence"),
    ("post", "/v1/channels/{channel}/system", "system"),
    ("post", "/v1/channels/{channel}/chat", "chat"),
    ("post", "/v1/channels/{channel}/moderation", "moderation"),
    ("post", "/v1/channels/{channel}/metrics", "metrics"),
    ("get", "/v1/channels/{channel}/viewers", "viewers"),
    ("get", "/v1/channels/{channel}/users/{userId}", "user"),
    ("put", "/v1/channels/{channel}/hosts/{userId}", "host_put"),
    (
        "delete",
        "/v1/channels/{channel}/hosts/{userId}",
        "host_delete",
    ),
    ("post", "/v1/users/{userId}/disconnect", "user_disconnect"),
];

/// What the admin router's handlers share.
#[derive(Debug)]
pub struct AdminState<A: Adapter> {
    pub app: AppState,
    pub io: SocketIo<A>,
}

impl<A: Adapter> Clone for AdminState<A> {
    fn clone(&self) -> Self {
        Self {
            app: self.app.clone(),
            io: self.io.clone(),
        }
    }
}

/// The admin listener's router: bridge, health, readiness, metrics.
pub fn router<A: Adapter>(state: AdminState<A>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz::<A>))
        .route("/metrics", get(metrics::<A>))
        .route(
            "/v1/channels/{channel}/gift",
            post(
                async |s: State<AdminState<A>>, p: Path<String>, h: HeaderMap, b: Bytes| {
                    publish(s, p, h, b, "gift").await
                },
            ),
        )
        .route(
            "/v1/channels/{channel}/presence",
            post(
                async |s: State<AdminState<A>>, p: Path<String>, h: HeaderMap, b: Bytes| {
                    publish(s, p, h, b, "presence").await
                },
            ),
        )
        .route(
            "/v1/channels/{channel}/system",
            post(
                async |s: State<AdminState<A>>, p: Path<String>, h: HeaderMap, b: Bytes| {
                    publish(s, p, h, b, "system").await
                },
            ),
        )
        .route(
            "/v1/channels/{channel}/chat",
            post(
                async |s: State<AdminState<A>>, p: Path<String>, h: HeaderMap, b: Bytes| {
                    publish(s, p, h, b, "chat").await
                },
            ),
        )
        .route(
            "/v1/channels/{channel}/moderation",
            post(
                async |s: State<AdminState<A>>, p: Path<String>, h: HeaderMap, b: Bytes| {
                    publish(s, p, h, b, "moderation").await
                },
            ),
        )
        .route(
            "/v1/channels/{channel}/metrics",
            post(
                async |s: State<AdminState<A>>, p: Path<String>, h: HeaderMap, b: Bytes| {
                    publish(s, p, h, b, "metrics").await
                },
            ),
        )
        .route("/v1/channels/{channel}/viewers", get(viewers::<A>))
        .route("/v1/channels/{channel}/users/{userId}", get(user::<A>))
        .route(
            "/v1/channels/{channel}/hosts/{userId}",
            axum::routing::put(crate::trust::put_host::<A>).delete(crate::trust::delete_host::<A>),
        )
        .route("/v1/users/{userId}/disconnect", post(disconnect_user::<A>))
        .with_state(state)
}

/// Ready unless draining. A Redis outage does not fail readiness: every replica would be taken
/// out of service at once, while each can still serve its own clients. The body says so, and
/// `live_redis_up` is what to alert on.
async fn readyz<A: Adapter>(State(s): State<AdminState<A>>) -> Response {
    if s.app.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response()
    } else if s.app.shared.is_some() && s.app.metrics.redis_up.get() == 0 {
        (
            StatusCode::OK,
            "ready; redis unreachable: serving local clients only",
        )
            .into_response()
    } else {
        (StatusCode::OK, "ready").into_response()
    }
}

async fn metrics<A: Adapter>(State(s): State<AdminState<A>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.app.metrics.render(),
    )
        .into_response()
}

/// Authenticates a bridge caller: a service token (role `service`, the service audience, a
/// short `exp`), or an `admin` user token when `LIVE_BRIDGE_ALLOW_ADMIN` is set
/// ([`crate::auth::policy`]).
pub(crate) async fn caller(st: &AppState, headers: &HeaderMap) -> Result<Claims> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer)
        .ok_or(AuthError::MissingToken)?;
    Ok(st.verify(token, Purpose::Bridge).await?)
}

/// The request body as a JSON object.
pub(crate) fn body_object(body: &[u8]) -> Result<Map<String, Value>> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(o)) => Ok(o),
        Ok(_) => Err(Error::InvalidJson("the body must be a JSON object".into())),
        Err(e) => Err(Error::InvalidJson(e.to_string())),
    }
}

pub(crate) fn checked_channel(channel: &str) -> Result<&str> {
    if protocol::valid_channel_name(channel) {
        Ok(channel)
    } else {
        Err(Error::InvalidChannel)
    }
}

fn required_str<'a>(o: &'a Map<String, Value>, field: &'static str) -> Result<&'a str> {
    match o.get(field) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= protocol::MAX_USER_ID_LEN => Ok(s),
        _ => Err(Error::InvalidField {
            field,
            reason: "must be a non-empty string of at most 128 bytes".into(),
        }),
    }
}

fn optional_str<'a>(o: &'a Map<String, Value>, field: &'static str) -> Result<Option<&'a str>> {
    match o.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(Error::InvalidField {
            field,
            reason: "must be a string or null".into(),
        }),
    }
}

fn timestamp(o: &Map<String, Value>) -> Result<u64> {
    match o.get("timestamp") {
        None | Some(Value::Null) => Ok(unix_millis()),
        Some(t) => t.as_u64().ok_or(Error::InvalidField {
            field: "timestamp",
            reason: "must be a non-negative integer (milliseconds since the epoch)".into(),
        }),
    }
}

fn room_ops<A: Adapter>(io: &SocketIo<A>, channel: &str) -> Result<BroadcastOperators<A>> {
    io.of(NAMESPACE)
        .map(|ns| ns.to(protocol::room(channel)))
        .ok_or_else(|| Error::Startup("the /live namespace is not registered".into()))
}

async fn publish<A: Adapter>(
    State(s): State<AdminState<A>>,
    Path(channel): Path<String>,
    headers: HeaderMap,
    body: Bytes,
    route: &'static str,
) -> Response {
    let result = async {
        caller(&s.app, &headers).await?;
        let channel = checked_channel(&channel)?;
        let o = body_object(&body)?;
        let ops = room_ops(&s.io, channel)?;
        let st = &s.app;
        match route {
            "gift" => {
                let from = required_str(&o, "from")?;
                let from_username = optional_str(&o, "fromUsername")?;
                let config = st.config();
                let body = Value::Object(o.clone());
                let g = protocol::parse_gift(&body, config.gateway.limits.max_gift_qty)?;
                let from_username = from_username.map(escape);
                let out = protocol::GiftNew {
                    from: &escape(from),
                    from_username: from_username.as_deref(),
                    gift_id: g.gift_id,
                    qty: g.qty,
                    timestamp: timestamp(&o)?,
                };
                realtime::emit_to_room(ops, st, channel, History, outbound::GIFT, "gift", &out)
                    .await;
            }
            "presence" => {
                let delta = match o.get("delta").and_then(Value::as_i64) {
                    Some(d @ (1 | -1)) => d as i8,
                    _ => {
                        return Err(Error::InvalidField {
                            field: "delta",
                            reason: "must be 1 or -1".into(),
                        });
                    }
                };
                let username = optional_str(&o, "username")?.map(escape);
                let out = protocol::PresenceUpdate {
                    channel_name: channel,
                    delta,
                    user_id: &escape(required_str(&o, "userId")?),
                    username: Some(username.as_deref()),
                    timestamp: unix_millis(),
                };
                realtime::emit_to_room(
                    ops,
                    st,
                    channel,
                    LiveOnly,
                    outbound::PRESENCE,
                    "presence",
                    &out,
                )
                .await;
            }
            "system" => {
                match o.get("type") {
                    Some(Value::String(t)) if !t.is_empty() && t.len() <= 64 => {}
                    _ => {
                        return Err(Error::InvalidField {
                            field: "type",
                            reason: "must be a non-empty string of at most 64 bytes".into(),
                        });
                    }
                }
                let ts = timestamp(&o)?;
                let mut out = Value::Object(o.clone());
                sanitize::escape_json_strings(&mut out);
                out["timestamp"] = json!(ts);
                // The history position is the gateway's to set.
                if let Some(o) = out.as_object_mut() {
                    o.remove("offset");
                    o.remove("epoch");
                }
                realtime::emit_to_room(ops, st, channel, History, outbound::SYSTEM, "system", &out)
                    .await;
            }
            "chat" => {
                let user_id = required_str(&o, "userId")?;
                let username = optional_str(&o, "username")?;
                let config = st.config();
                let body = Value::Object(o.clone());
                let raw = protocol::chat_message(&body, config.gateway.limits.max_message_length)
                    .map_err(|e| match e {
                    Error::InvalidPayload => Error::InvalidField {
                        field: "message",
                        reason: "must be a string".into(),
                    },
                    e => e,
                })?;
                let message = st.sanitizer.clean(raw);
                if message.is_empty() {
                    return Err(Error::EmptyMessage);
                }
                let username = username.map(escape);
                let out = protocol::ChatNew {
                    user_id: &escape(user_id),
                    username: username.as_deref(),
                    message: &message,
                    timestamp: timestamp(&o)?,
                };
                realtime::emit_to_room(ops, st, channel, History, outbound::CHAT, "chat", &out)
                    .await;
            }
            "moderation" => {
                let by = required_str(&o, "by")?;
                let by_username = optional_str(&o, "byUsername")?;
                let body = Value::Object(o.clone());
                let config = st.config();
                let m = protocol::parse_moderation(&body, config.gateway.limits.max_reason_length)?;
                let mute_seconds = config.gateway.moderation.mute_seconds;
                realtime::apply_moderation(ops, st, channel, &m, by, by_username, mute_seconds)
                    .await;
            }
            "metrics" => {
                let Some(metrics @ Value::Object(_)) = o.get("metrics") else {
                    return Err(Error::InvalidField {
                        field: "metrics",
                        reason: "must be a JSON object".into(),
                    });
                };
                let mut metrics = metrics.clone();
                sanitize::escape_json_strings(&mut metrics);
                let out = protocol::MetricsUpdate {
                    channel_name: channel,
                    metrics: &metrics,
                    timestamp: unix_millis(),
                };
                realtime::emit_to_room(
                    ops,
                    st,
                    channel,
                    LiveOnly,
                    outbound::METRICS_UPDATE,
                    "metrics_update",
                    &out,
                )
                .await;
            }
            _ => return Err(Error::Startup(format!("unknown bridge route {route}"))),
        }
        Ok(json!({ "ok": true }))
    }
    .await;
    respond(&s.app, route, StatusCode::ACCEPTED, result)
}

async fn viewers<A: Adapter>(
    State(s): State<AdminState<A>>,
    Path(channel): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        caller(&s.app, &headers).await?;
        let channel = checked_channel(&channel)?;
        // This replica's members counted live, so a join is counted as soon as it is
        // acknowledged; the other replicas' from their snapshots (this one alone if Redis
        // cannot answer).
        let local = room_ops(&s.io, channel)?.sockets().len() as u64;
        let elsewhere = match &s.app.shared {
            Some(shared) => shared
                .viewers_elsewhere(channel, unix_millis())
                .await
                .unwrap_or(0),
            None => 0,
        };
        let count = local + elsewhere;
        Ok(json!({ "channelName": channel, "viewers": count }))
    }
    .await;
    respond(&s.app, "viewers", StatusCode::OK, result)
}

async fn user<A: Adapter>(
    State(s): State<AdminState<A>>,
    Path((channel, user_id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        caller(&s.app, &headers).await?;
        let channel = checked_channel(&channel)?;
        // Live on this replica first (a join is seen as soon as it is acknowledged), then the
        // other replicas' snapshots.
        let here = room_ops(&s.io, channel)?.sockets().iter().any(|sock| {
            crate::session::claims_of(&sock.extensions).is_some_and(|c| c.user_id == user_id)
        });
        let present = here
            || match &s.app.shared {
                Some(shared) => shared
                    .present_elsewhere(channel, &user_id, unix_millis())
                    .await
                    .unwrap_or(false),
                None => false,
            };
        Ok(json!({ "channelName": channel, "userId": user_id, "present": present }))
    }
    .await;
    respond(&s.app, "user", StatusCode::OK, result)
}

/// Disconnects every socket of a user on every replica; each first gets `auth:revoked`.
async fn disconnect_user<A: Adapter>(
    State(s): State<AdminState<A>>,
    Path(user_id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let result = async {
        caller(&s.app, &headers).await?;
        if user_id.is_empty() || user_id.len() > protocol::MAX_USER_ID_LEN {
            return Err(Error::InvalidField {
                field: "userId",
                reason: "must be a non-empty string of at most 128 bytes".into(),
            });
        }
        crate::lifecycle::disconnect_user(&s.io, &s.app, &user_id).await?;
        Ok(json!({ "ok": true }))
    }
    .await;
    respond(&s.app, "user_disconnect", StatusCode::ACCEPTED, result)
}

/// The one conversion from a bridge outcome to an HTTP response, and its metric.
pub(crate) fn respond(
    st: &AppState,
    route: &'static str,
    success: StatusCode,
    result: Result<Value>,
) -> Response {
    let (status, body) = match result {
        Ok(body) => (success, body),
        Err(e) => {
            let (status, code, message) = match &e {
                Error::Unauthorized(AuthError::RoleNotAllowed) => (
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "the token's role may not use the bridge".to_owned(),
                ),
                Error::Unauthorized(reason) => {
                    tracing::info!(reason = reason.reason(), "bridge call refused: {reason}");
                    st.metrics
                        .auth_failures
                        .with_label_values(&[reason.reason()])
                        .inc();
                    (StatusCode::UNAUTHORIZED, e.code(), e.client_message())
                }
                Error::InvalidJson(_) => (StatusCode::BAD_REQUEST, e.code(), e.client_message()),
                Error::Config(_) | Error::Startup(_) | Error::Keys(_) | Error::Io(_) => {
                    tracing::error!(route, error = %e, "bridge call failed");
                    (
                        StatusCode::INTERNAL_SERVER_ERROR,
                        e.code(),
                        e.client_message(),
                    )
                }
                _ => (
                    StatusCode::UNPROCESSABLE_ENTITY,
                    e.code(),
                    e.client_message(),
                ),
            };
            st.metrics.error(code);
            (
                status,
                json!({ "ok": false, "error": { "code": code, "message": message } }),
            )
        }
    };
    st.metrics
        .bridge_requests
        .with_label_values(&[route, status.as_str()])
        .inc();
    (status, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_openapi_description_lists_exactly_the_routes() {
        let doc: serde_yaml::Value =
            serde_yaml::from_str(include_str!("../../../docs/bridge-openapi.yaml")).unwrap();
        let paths = doc["paths"].as_mapping().unwrap();
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, ops) in paths {
            for (method, _) in ops.as_mapping().unwrap() {
                let method = method.as_str().unwrap();
                if ["get", "post", "put", "delete", "patch"].contains(&method) {
                    documented.push((method.to_owned(), path.as_str().unwrap().to_owned()));
                }
            }
        }
        let mut expected: Vec<(String, String)> = ROUTES
            .iter()
            .filter(|(_, p, _)| p.starts_with("/v1/"))
            .map(|(m, p, _)| ((*m).to_owned(), (*p).to_owned()))
            .collect();
        expected.extend([
            ("get".to_owned(), "/healthz".to_owned()),
            ("get".to_owned(), "/readyz".to_owned()),
            ("get".to_owned(), "/metrics".to_owned()),
        ]);
        documented.sort();
        expected.sort();
        assert_eq!(documented, expected);
    }

    #[test]
    fn bodies_must_be_json_objects() {
        assert!(matches!(body_object(b"{"), Err(Error::InvalidJson(_))));
        assert!(matches!(body_object(b"[1]"), Err(Error::InvalidJson(_))));
        assert!(body_object(b"{\"a\":1}").is_ok());
    }
}
