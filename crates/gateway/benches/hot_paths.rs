//! Microbenchmarks of the gateway's hot pure functions, so a regression shows up in review:
//! `cargo bench -p live-gateway`. Figures are machine-dependent and never asserted.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use live_gateway::protocol;
use live_gateway::ratelimit::{Kind, RateLimiter};
use live_gateway::sanitize::Sanitizer;
use serde_json::json;

fn sanitize(c: &mut Criterion) {
    let s = Sanitizer::default();
    c.bench_function("sanitize/plain_text", |b| {
        b.iter(|| s.clean(black_box("what a great stream, hello from Lisbon!")))
    });
    c.bench_function("sanitize/markup", |b| {
        b.iter(|| {
            s.clean(black_box(
                r#"<script>alert("xss")</script>Hello <b>there</b> & you"#,
            ))
        })
    });
}

fn validate(c: &mut Criterion) {
    let chat = json!({"channelName": "stream-42", "message": "hello everyone"});
    let gift = json!({"channelName": "stream-42", "giftId": "rose", "qty": 3});
    c.bench_function("validate/chat", |b| {
        b.iter(|| {
            let ch = protocol::channel(black_box(&chat)).ok();
            let m = protocol::chat_message(black_box(&chat), 500).ok();
            (ch, m)
        })
    });
    c.bench_function("validate/gift", |b| {
        b.iter(|| protocol::parse_gift(black_box(&gift), 100).ok())
    });
    c.bench_function("validate/channel_name", |b| {
        b.iter(|| protocol::valid_channel_name(black_box("live_stream.2026-11")))
    });
}

fn rate_limit(c: &mut Criterion) {
    let mut rl = RateLimiter::default();
    let users: Vec<String> = (0..10_000).map(|i| format!("user-{i}")).collect();
    let t0 = Instant::now();
    let mut i = 0usize;
    c.bench_function("rate_limit/check_10k_users", |b| {
        b.iter(|| {
            i = (i + 1) % users.len();
            // Advance time slowly so windows roll over as in production.
            let now = t0 + Duration::from_micros(i as u64);
            rl.check(Kind::Messages, black_box(&users[i]), 1_000_000, now)
        })
    });
}

fn encode(c: &mut Criterion) {
    c.bench_function("encode/chat_new", |b| {
        b.iter(|| {
            serde_json::to_string(&protocol::ChatNew {
                user_id: black_box("user-123"),
                username: Some("Ann"),
                message: black_box("hello everyone"),
                timestamp: 1_795_000_000_000,
            })
        })
    });
}

criterion_group!(benches, sanitize, validate, rate_limit, encode);
criterion_main!(benches);
