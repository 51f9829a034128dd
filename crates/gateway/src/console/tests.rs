//! The console's router driven with `oneshot`, no socket: auth, headers, config, moderation
//! through the shared code path, and the stream bound. The browser suite
//! (`tests/console/`) covers the app itself against a real gateway.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use clap::Parser;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::adapter::LocalAdapter;
use socketioxide::handler::ConnectHandler;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::*;
use crate::args::Args;
use crate::auth::{KeyMaterial, Verifier};
use crate::config::RuntimeConfig;
use crate::metrics::Metrics;
use crate::ratelimit::Kind;

const SECRET: &str = "console-test-secret-0123456789abcdef";

/// Signs `claims`, with an `exp` ten minutes away unless they carry one (tokens must).
fn token(mut claims: Value) -> String {
    if claims.get("exp").is_none() {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        claims["exp"] = json!(now + 600);
    }
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn admin() -> String {
    token(json!({"userId": "ops-1", "username": "Ops", "role": "admin"}))
}

struct Fixture {
    app: Router,
    state: AppState,
    _stop: tokio_util::sync::DropGuard,
}

fn fixture() -> Fixture {
    let settings = Args::parse_from(["live-gateway", "--jwt-secret", SECRET])
        .settings(String::new)
        .unwrap();
    let (_tx, rx) = watch::channel(Arc::new(RuntimeConfig::default()));
    let verifier = Verifier::new(&KeyMaterial::Hs256Secret(SECRET.into()), None, None).unwrap();
    let state = AppState::new(rx, verifier, Metrics::new());
    let (_layer, io) = SocketIo::builder().with_state(state.clone()).build_layer();
    io.ns(
        NAMESPACE,
        realtime::on_connect::<LocalAdapter>.with(realtime::authenticate::<LocalAdapter>),
    );
    let stop = CancellationToken::new();
    let app = router(
        AdminState {
            app: state.clone(),
            io,
        },
        &settings,
        stop.clone(),
    );
    Fixture {
        app,
        state,
        _stop: stop.drop_guard(),
    }
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    tok: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, axum::http::HeaderMap, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = tok {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    let req = req
        .body(body.map_or_else(Body::empty, |b| Body::from(b.to_string())))
        .unwrap();
    let res = app.clone().oneshot(req).await.unwrap();
    let (parts, body) = res.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    (parts.status, parts.headers, json)
}

#[tokio::test]
async fn the_app_is_served_with_the_strict_policy_and_console_redirects_to_it() {
    let f = fixture();
    let (status, headers, _) = call(&f.app, "GET", "/console/", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CONTENT_SECURITY_POLICY], assets::CSP);
    assert_eq!(headers[header::X_FRAME_OPTIONS], "DENY");
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let (status, headers, _) = call(&f.app, "GET", "/console", None, None).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(headers[header::LOCATION], "/console/");
    let (status, headers, _) = call(&f.app, "GET", "/console/app.js", None, None).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let (status, _, _) = call(&f.app, "GET", "/console/nope.js", None, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn only_admin_and_service_tokens_sign_in() {
    let f = fixture();
    let (status, headers, body) = call(&f.app, "GET", "/console/api/session", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(
        headers[header::CONTENT_SECURITY_POLICY],
        assets::CSP,
        "API answers carry it too"
    );
    let forged = encode(
        &Header::default(),
        &json!({"userId": "x", "role": "admin"}),
        &EncodingKey::from_secret(b"another-secret"),
    )
    .unwrap();
    let (status, _, _) = call(&f.app, "GET", "/console/api/session", Some(&forged), None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let viewer = token(json!({"userId": "v", "role": "viewer", "ogLevel": 9}));
    let (status, _, body) = call(&f.app, "GET", "/console/api/session", Some(&viewer), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body["error"]["code"], "forbidden");
    let (status, _, body) = call(&f.app, "GET", "/console/api/session", Some(&admin()), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["userId"], "ops-1");
    assert_eq!(body["pod"], "local");
    let service = token(json!({"userId": "backend", "role": "service", "aud": "live-bridge"}));
    let (status, _, _) = call(&f.app, "GET", "/console/api/session", Some(&service), None).await;
    assert_eq!(status, StatusCode::OK);
    let failures = f
        .state
        .metrics
        .auth_failures
        .with_label_values(&["bad_signature"])
        .get();
    assert_eq!(failures, 1, "a refused token is counted by reason");
}

#[tokio::test]
async fn the_config_view_shows_the_running_settings_and_no_secret() {
    let f = fixture();
    let (status, _, body) = call(&f.app, "GET", "/console/api/config", Some(&admin()), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["gateway"]["rateLimits"]["messagesPerMinute"], 30);
    // CORS fails closed: without a configured list no browser origin is allowed.
    assert_eq!(body["origins"], json!([]));
    assert_eq!(body["process"]["jwtAlgorithm"], "HS256");
    assert_eq!(
        body["configHash"],
        health::config_hash(&live_api::GatewayConfig::default())
    );
    assert!(!body.to_string().contains(SECRET));
}

#[tokio::test]
async fn a_mute_from_the_console_refuses_the_users_next_line() {
    let f = fixture();
    assert!(
        f.state
            .check_send(Kind::Messages, "show", "u7", 30)
            .await
            .is_ok()
    );
    let (status, _, body) = call(
        &f.app,
        "POST",
        "/console/api/channels/show/moderation",
        Some(&admin()),
        Some(json!({"action": "mute", "targetUserId": "u7", "durationSeconds": 120})),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["action"], "mute");
    assert_eq!(body["durationSeconds"], 120);
    assert_eq!(body["by"], "ops-1");
    assert!(matches!(
        f.state.check_send(Kind::Messages, "show", "u7", 30).await,
        Err(Error::Muted)
    ));
    assert!(
        f.state
            .check_send(Kind::Messages, "other", "u7", 30)
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn a_bad_moderation_request_is_refused_with_its_code() {
    let f = fixture();
    for (body, status, code) in [
        (
            json!({"action": "ban", "targetUserId": "u"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_action",
        ),
        (
            json!({"action": "mute"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_target",
        ),
        (json!([1]), StatusCode::BAD_REQUEST, "invalid_json"),
    ] {
        let (got, _, answer) = call(
            &f.app,
            "POST",
            "/console/api/channels/show/moderation",
            Some(&admin()),
            Some(body),
        )
        .await;
        assert_eq!(
            (got, answer["error"]["code"].as_str()),
            (status, Some(code))
        );
    }
    let (got, _, answer) = call(
        &f.app,
        "POST",
        "/console/api/channels/bad%20name/moderation",
        Some(&admin()),
        Some(json!({"action": "warn"})),
    )
    .await;
    assert_eq!(
        (got, answer["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_channel"))
    );
}

#[tokio::test]
async fn a_gateway_alone_ranks_its_own_channels_and_lists_itself() {
    let f = fixture();
    let (status, _, body) = call(
        &f.app,
        "GET",
        "/console/api/channels?limit=5",
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["scope"], "replica");
    assert_eq!(body["channels"], json!([]));
    let (status, _, body) = call(
        &f.app,
        "GET",
        "/console/api/channels?limit=0",
        Some(&admin()),
        None,
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("invalid_field"))
    );
    let (_, _, body) = call(&f.app, "GET", "/console/api/replicas", Some(&admin()), None).await;
    assert_eq!(body["replicas"][0]["pod"], "local");
    assert_eq!(body["replicas"][0]["redis"], "off");
    assert_eq!(body["replicas"][0]["draining"], false);
}

#[tokio::test]
async fn open_streams_are_bounded() {
    let f = fixture();
    let open = |uri: &'static str| {
        let app = f.app.clone();
        async move {
            let req = Request::builder()
                .uri(uri)
                .header(header::AUTHORIZATION, format!("Bearer {}", admin()))
                .body(Body::empty())
                .unwrap();
            app.oneshot(req).await.unwrap()
        }
    };
    let mut held = Vec::new();
    for _ in 0..MAX_STREAMS {
        let r = open("/console/api/stream").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(
            r.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        held.push(r);
    }
    let refused = open("/console/api/channels/show/feed").await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(f.state.metrics.console_streams.get(), MAX_STREAMS as i64);
    drop(held);
    // The producers notice the closed bodies and give their slots back.
    tokio::time::timeout(std::time::Duration::from_secs(5), async {
        while f.state.metrics.console_streams.get() != 0 {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(open("/console/api/stream").await.status(), StatusCode::OK);
}
