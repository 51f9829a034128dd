//! The attackers of `live-bench abuse`: raw Engine.IO clients (and raw TCP for slowloris) that
//! do what the official client never does. They run on their own thread and single-threaded
//! runtime until a deadline; each attacker is paced to its share of `--attack-rate`, and opens a
//! new connection whenever the server closes its current one, so an attack lasts its whole
//! time whatever the server does.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::{SinkExt, StreamExt};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::{Attack, AttackCounters};
use crate::engineio::{self, Packet};

/// Where the attackers aim.
#[derive(Debug)]
pub struct Target {
    pub server: SocketAddr,
    /// The Socket.IO path without a trailing slash (`/ws`).
    pub path: String,
    pub namespace: String,
    /// The channel the honest members are in.
    pub honest_channel: String,
    /// HS256 secret for the attackers' (valid) tokens.
    pub secret: String,
    /// Source addresses 127.0.1.1 ..= 127.0.1.`sources`.
    pub sources: u8,
}

/// The running attack: a thread that ends at the deadline.
#[derive(Debug)]
pub struct Running {
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Waits for the attack to end (it ends by itself at its deadline).
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// How long one attacker waits between frames so that `attackers` of them together send
/// `rate` per second.
pub fn per_attacker_interval(attackers: usize, rate: u32) -> Duration {
    Duration::from_secs_f64(attackers.max(1) as f64 / f64::from(rate.max(1)))
}

/// Starts `attackers` attackers of `kind` until `deadline`, on a thread of their own.
pub fn spawn(
    kind: Attack,
    target: Arc<Target>,
    counters: Arc<AttackCounters>,
    attackers: usize,
    rate: u32,
    deadline: Instant,
) -> Running {
    let every = per_attacker_interval(attackers, rate);
    let thread = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            eprintln!("attack runtime could not start");
            return;
        };
        rt.block_on(async move {
            let mut tasks = tokio::task::JoinSet::new();
            for id in 0..attackers {
                tasks.spawn(attacker(
                    kind,
                    Arc::clone(&target),
                    Arc::clone(&counters),
                    id,
                    every,
                    deadline,
                ));
            }
            // Every attacker returns at the deadline; past it plus a grace, stop waiting.
            let grace = deadline + Duration::from_secs(3);
            let all = async { while tasks.join_next().await.is_some() {} };
            let _ = tokio::time::timeout_at(grace.into(), all).await;
            tasks.abort_all();
        });
        rt.shutdown_timeout(Duration::from_secs(1));
    });
    Running {
        thread: Some(thread),
    }
}

type Ws = WebSocketStream<TcpStream>;

fn source(target: &Target, id: usize) -> Ipv4Addr {
    Ipv4Addr::new(
        127,
        0,
        1,
        1 + (id % usize::from(target.sources.max(1))) as u8,
    )
}

async fn tcp_from(source: Ipv4Addr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(SocketAddr::from((source, 0))))?;
    TcpSocket::from_std_stream(std::net::TcpStream::from(socket))
        .connect(server)
        .await
}

/// Opens a WebSocket session and reads its Engine.IO open packet.
async fn open(t: &Target, source: Ipv4Addr, c: &AttackCounters) -> Option<Ws> {
    let stream = tcp_from(source, t.server).await.ok()?;
    c.connections.fetch_add(1, Ordering::Relaxed);
    let url = format!("ws://{}{}/?EIO=4&transport=websocket", t.server, t.path);
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let handshake = tokio_tungstenite::client_async_with_config(url, stream, Some(config));
    let Ok(Ok((mut ws, _))) = tokio::time::timeout(Duration::from_secs(5), handshake).await else {
        c.refused.fetch_add(1, Ordering::Relaxed);
        return None;
    };
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) if text.starts_with('0') => return Some(ws),
            Ok(Some(Ok(_))) => {}
            _ => {
                c.closed_by_server.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
    }
}

/// Opens a session and connects to the namespace with `token`.
async fn open_connected(
    t: &Target,
    source: Ipv4Addr,
    token: &str,
    c: &AttackCounters,
) -> Option<Ws> {
    let mut ws = open(t, source, c).await?;
    ws.send(Message::text(engineio::encode_connect(&t.namespace, token)))
        .await
        .ok()?;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
            Ok(Some(Ok(Message::Text(text)))) => match engineio::decode(text.as_str()) {
                Packet::Connected { .. } => return Some(ws),
                Packet::ConnectError { .. } => {
                    c.refused.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                Packet::Ping => ws.send(Message::text(engineio::PONG)).await.ok()?,
                _ => {}
            },
            Ok(Some(Ok(_))) => {}
            _ => {
                c.closed_by_server.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
    }
}

fn token(secret: &str, claims: serde_json::Value) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        + 3600;
    let mut claims = claims;
    claims["exp"] = serde_json::json!(exp);
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap_or_default()
}

/// Sends `frames(n)` every `every` on `ws` until the deadline or until the server closes it,
/// reading (and answering pings) meanwhile. True when the server closed it.
async fn flood(
    ws: Ws,
    every: Duration,
    deadline: Instant,
    c: &AttackCounters,
    mut frames: impl FnMut(u64) -> Vec<Message>,
) -> bool {
    let (mut sink, mut stream) = ws.split();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut n = 0;
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) if t.as_str() == "2" => {
                    let _ = sink.send(Message::text(engineio::PONG)).await;
                }
                Some(Ok(Message::Close(_)) | Err(_)) | None => {
                    c.closed_by_server.fetch_add(1, Ordering::Relaxed);
                    return true;
                }
                Some(Ok(_)) => {}
            },
            _ = tick.tick() => {
                if Instant::now() >= deadline {
                    let _ = sink.close().await;
                    return false;
                }
                for f in frames(n) {
                    if sink.send(f).await.is_err() {
                        c.closed_by_server.fetch_add(1, Ordering::Relaxed);
                        return true;
                    }
                    c.frames.fetch_add(1, Ordering::Relaxed);
                }
                n += 1;
            }
        }
    }
}

/// One attacker until `deadline`.
async fn attacker(
    kind: Attack,
    t: Arc<Target>,
    c: Arc<AttackCounters>,
    id: usize,
    every: Duration,
    deadline: Instant,
) {
    let src = source(&t, id);
    let ns = t.namespace.clone();
    let user = token(
        &t.secret,
        serde_json::json!({"userId": format!("abuse-{id}")}),
    );
    let event = |ack: Option<u64>, name: &str, payload: String| {
        Message::text(engineio::encode_event(&ns, ack, name, &payload))
    };
    while Instant::now() < deadline {
        let ended = match kind {
            Attack::Slowloris => {
                slowloris(&t, src, every, deadline, &c).await;
                continue;
            }
            Attack::SessionFlood => {
                session_flood(&t, src, every, deadline, &c).await;
                continue;
            }
            Attack::SlowReaders => {
                slow_reader(&t, src, &user, deadline, &c).await;
                continue;
            }
            Attack::BinaryUnauthenticated => {
                let Some(ws) = open(&t, src, &c).await else {
                    continue;
                };
                flood(ws, every, deadline, &c, |_| {
                    vec![
                        Message::text(r#"451-["x",{"_placeholder":true,"num":0}]"#),
                        Message::binary(vec![0u8; 32 * 1024]),
                    ]
                })
                .await
            }
            Attack::ConnectFailures | Attack::OversizeTokens => {
                let Some(ws) = open(&t, src, &c).await else {
                    continue;
                };
                let bad = if kind == Attack::OversizeTokens {
                    "x".repeat(60 * 1024)
                } else {
                    "not-a-jwt".to_owned()
                };
                flood(ws, every, deadline, &c, |_| {
                    vec![Message::text(engineio::encode_connect(&ns, &bad))]
                })
                .await
            }
            Attack::MuteFlood => {
                let moderator = token(
                    &t.secret,
                    serde_json::json!({"userId": format!("abuse-mod-{id}"), "ogLevel": 9}),
                );
                let Some(mut ws) = open_connected(&t, src, &moderator, &c).await else {
                    continue;
                };
                let own = format!(r#"{{"channelName":"abuse-mod-{id}"}}"#);
                if ws.send(event(None, "join", own)).await.is_err() {
                    continue;
                }
                flood(ws, every, deadline, &c, |n| {
                    let mute = format!(
                        r#"{{"channelName":"abuse-mod-{id}","action":"mute","targetUserId":"victim-{id}-{n}","durationSeconds":2592000}}"#
                    );
                    vec![event(None, "mod:decision", mute)]
                })
                .await
            }
            _ => {
                let Some(ws) = open_connected(&t, src, &user, &c).await else {
                    continue;
                };
                let honest = t.honest_channel.clone();
                let big = format!(
                    r#"{{"channelName":"abuse-big-{id}","message":"{}"}}"#,
                    "x".repeat(60 * 1024)
                );
                flood(ws, every, deadline, &c, |n| match kind {
                    Attack::BinaryAuthenticated => vec![
                        Message::text(format!(
                            r#"451-{ns},["chat:send",{{"_placeholder":true,"num":0}}]"#
                        )),
                        Message::binary(vec![0u8; 32 * 1024]),
                    ],
                    Attack::JoinFlood => vec![event(
                        Some(n),
                        "join",
                        format!(r#"{{"channelName":"flood-{id}-{n}"}}"#),
                    )],
                    Attack::PresenceToggle => {
                        let what = if n % 2 == 0 { "join" } else { "leave" };
                        vec![event(
                            None,
                            what,
                            format!(r#"{{"channelName":"{honest}"}}"#),
                        )]
                    }
                    Attack::EventFlood => {
                        if n % 2 == 0 {
                            vec![event(Some(n), "heartbeat", "{}".into())]
                        } else {
                            vec![event(None, "no:such:event", format!(r#"{{"n":{n}}}"#))]
                        }
                    }
                    Attack::AckFlood => vec![Message::text(format!("43{ns},{n}[]"))],
                    Attack::LargeFrames => vec![Message::text(engineio::encode_event(
                        &ns,
                        None,
                        "chat:send",
                        &big,
                    ))],
                    _ => Vec::new(),
                })
                .await
            }
        };
        if !ended {
            return;
        }
    }
}

/// Trickles a request head that never ends, one header per tick, on one connection after
/// another.
async fn slowloris(
    t: &Target,
    src: Ipv4Addr,
    every: Duration,
    deadline: Instant,
    c: &AttackCounters,
) {
    let Ok(mut s) = tcp_from(src, t.server).await else {
        tokio::time::sleep(every).await;
        return;
    };
    c.connections.fetch_add(1, Ordering::Relaxed);
    let head = format!(
        "GET {}/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n",
        t.path
    );
    if s.write_all(head.as_bytes()).await.is_err() {
        c.refused.fetch_add(1, Ordering::Relaxed);
        return;
    }
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(100)));
    let mut buf = [0u8; 64];
    loop {
        tick.tick().await;
        if Instant::now() >= deadline {
            return;
        }
        match s.try_read(&mut buf) {
            Ok(0) => {
                c.closed_by_server.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(_) => {
                // A 429/503 answer: refused at the door.
                c.refused.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => {
                c.closed_by_server.fetch_add(1, Ordering::Relaxed);
                return;
            }
        }
        if s.write_all(b"X-Slow: 1\r\n").await.is_err() {
            c.closed_by_server.fetch_add(1, Ordering::Relaxed);
            return;
        }
        c.frames.fetch_add(1, Ordering::Relaxed);
    }
}

/// Opens Engine.IO sessions and leaves them unconnected, holding up to 256 per attacker.
async fn session_flood(
    t: &Target,
    src: Ipv4Addr,
    every: Duration,
    deadline: Instant,
    c: &AttackCounters,
) {
    let mut held = std::collections::VecDeque::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while Instant::now() < deadline {
        tick.tick().await;
        if let Some(ws) = open(t, src, c).await {
            c.frames.fetch_add(1, Ordering::Relaxed);
            held.push_back(ws);
            if held.len() > 256 {
                held.pop_front();
            }
        }
    }
}

/// Joins the honest channel and never reads again: the server's queue for it fills.
async fn slow_reader(
    t: &Target,
    src: Ipv4Addr,
    token: &str,
    deadline: Instant,
    c: &AttackCounters,
) {
    let Some(mut ws) = open_connected(t, src, token, c).await else {
        tokio::time::sleep(Duration::from_millis(100)).await;
        return;
    };
    let join = engineio::encode_event(
        &t.namespace,
        None,
        "join",
        &format!(r#"{{"channelName":"{}"}}"#, t.honest_channel),
    );
    if ws.send(Message::text(join)).await.is_ok() {
        c.frames.fetch_add(1, Ordering::Relaxed);
    }
    tokio::time::sleep_until(deadline.into()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attackers_share_the_rate() {
        assert_eq!(per_attacker_interval(64, 6_400), Duration::from_millis(10));
        assert_eq!(per_attacker_interval(1, 1), Duration::from_secs(1));
        assert_eq!(per_attacker_interval(0, 0), Duration::from_secs(1));
    }

    #[test]
    fn attackers_spread_over_their_own_source_addresses() {
        let t = Target {
            server: "127.0.0.1:1".parse().unwrap_or_else(|_| unreachable!()),
            path: "/ws".into(),
            namespace: "/live".into(),
            honest_channel: "bench-0".into(),
            secret: String::new(),
            sources: 3,
        };
        assert_eq!(source(&t, 0), Ipv4Addr::new(127, 0, 1, 1));
        assert_eq!(source(&t, 4), Ipv4Addr::new(127, 0, 1, 2));
    }
}
