//! Channel history in load runs: `--history on|off` switches it in the gateway's hot-reloaded
//! config file (`--gateway-config`) before a scenario, and a probe confirms what the running
//! gateway does (a history item carries `offset` and `epoch`), so every report says which was
//! measured. Also the small Socket.IO client the probe and the `recover` scenario share: connect
//! with an auth object, read the CONNECT reply's recovery `pid`, and the positions of history
//! items.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use futures::{SinkExt, StreamExt};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::engineio::{self, Packet};

/// History on or off for a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    On,
    Off,
}

/// `history.maxItems` written for `on` when the file does not set a non-zero value: the
/// gateway's default.
const DEFAULT_MAX_ITEMS: u64 = 200;
/// How long the gateway may take to reload its config (its debounce is well under a second).
const RELOAD_TIMEOUT: Duration = Duration::from_secs(20);

pub type Ws = WebSocketStream<TcpStream>;

/// Sets `history.maxItems` in a gateway config file (YAML) for `switch`, keeping every other
/// setting: 0 for off; for on, the file's own non-zero value or the default.
pub fn rewrite_config(text: &str, switch: Switch) -> anyhow::Result<String> {
    let mut doc: serde_yaml::Value = if text.trim().is_empty() {
        serde_yaml::Value::Mapping(Default::default())
    } else {
        serde_yaml::from_str(text).context("the gateway config is not YAML")?
    };
    let root = doc
        .as_mapping_mut()
        .context("the gateway config is not a YAML mapping")?;
    let history = root
        .entry("history".into())
        .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
    let history = history
        .as_mapping_mut()
        .context("`history` in the gateway config is not a mapping")?;
    let current = history
        .get("maxItems")
        .and_then(serde_yaml::Value::as_u64)
        .unwrap_or(0);
    let items = match switch {
        Switch::Off => 0,
        Switch::On if current > 0 => current,
        Switch::On => DEFAULT_MAX_ITEMS,
    };
    history.insert("maxItems".into(), items.into());
    Ok(serde_yaml::to_string(&doc)?)
}

/// Where and as whom the probe and the recovering viewers connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub server: SocketAddr,
    /// `ws://host:port/ws/?EIO=4&transport=websocket`
    pub url: String,
    pub namespace: String,
    pub connect_timeout: Duration,
}

/// TCP from `source`, the WebSocket upgrade, the Engine.IO open packet, then CONNECT with `auth`.
/// Returns the socket and the CONNECT reply's JSON.
pub async fn connect(
    endpoint: &Endpoint,
    source: Ipv4Addr,
    auth: &serde_json::Value,
) -> anyhow::Result<(Ws, String)> {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_tcp_nodelay(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&SockAddr::from(SocketAddr::from((source, 0))))?;
    let stream = TcpSocket::from_std_stream(std::net::TcpStream::from(socket))
        .connect(endpoint.server)
        .await?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(16 << 20))
        .max_frame_size(Some(16 << 20));
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(endpoint.url.as_str(), stream, Some(config))
            .await?;
    let connect = format!("40{},{auth}", endpoint.namespace);
    loop {
        let Some(msg) = ws.next().await else {
            anyhow::bail!("closed during the handshake");
        };
        let Message::Text(text) = msg? else {
            continue;
        };
        match engineio::decode(text.as_str()) {
            Packet::Open { .. } => ws.send(Message::text(connect.clone())).await?,
            Packet::Ping => ws.send(Message::text(engineio::PONG)).await?,
            Packet::Connected { namespace } if namespace == endpoint.namespace => {
                let reply = connect_reply(text.as_str()).unwrap_or("{}").to_owned();
                return Ok((ws, reply));
            }
            Packet::ConnectError { payload, .. } => anyhow::bail!("refused: {payload}"),
            Packet::Close => anyhow::bail!("closed during the handshake"),
            _ => {}
        }
    }
}

/// The JSON of a namespace CONNECT reply frame `40/ns,{...}`.
pub fn connect_reply(frame: &str) -> Option<&str> {
    let start = frame.find('{')?;
    Some(&frame[start..])
}

/// The recovery session id in a CONNECT reply, when the gateway gave one.
pub fn pid(reply: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(reply).ok()?;
    v.get("pid")?.as_str().map(str::to_owned)
}

/// A history item's `offset` and `epoch`, from an event's payload text (which, with connection
/// state recovery, is followed by its position as a last argument).
pub fn position(payload: &str) -> Option<(u64, String)> {
    let v: serde_json::Value = serde_json::from_str(&format!("[{payload}]")).ok()?;
    let p = v.get(0)?;
    Some((
        p.get("offset")?.as_u64()?,
        p.get("epoch")?.as_str()?.to_owned(),
    ))
}

/// The Socket.IO connection state recovery offset: the last argument of a history item event,
/// when it is a string.
pub fn recovery_offset(payload: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(&format!("[{payload}]")).ok()?;
    let args = v.as_array()?;
    if args.len() < 2 {
        return None;
    }
    args.last()?.as_str().map(str::to_owned)
}

/// Writes `switch` into the gateway config file, then waits until a probe sees the gateway do it.
pub async fn switch(
    config: &Path,
    switch: Switch,
    endpoint: &Endpoint,
    token: &str,
    channel: &str,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let next = rewrite_config(&text, switch)?;
    if next != text {
        std::fs::write(config, &next).with_context(|| format!("writing {}", config.display()))?;
    }
    let deadline = tokio::time::Instant::now() + RELOAD_TIMEOUT;
    loop {
        let on = probe(endpoint, token, channel).await?;
        if on == (switch == Switch::On) {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!(
                "the gateway did not switch history {switch:?} within {RELOAD_TIMEOUT:?}: is it running with --config {}?",
                config.display()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Whether the running gateway records history: one chat in `channel`, and whether its
/// `chat:new` carries a position.
pub async fn probe(endpoint: &Endpoint, token: &str, channel: &str) -> anyhow::Result<bool> {
    let auth = serde_json::json!({ "token": token });
    let (mut ws, _) = tokio::time::timeout(
        endpoint.connect_timeout,
        connect(endpoint, Ipv4Addr::LOCALHOST, &auth),
    )
    .await
    .context("probe: connect timed out")??;
    let ns = &endpoint.namespace;
    let join = format!(r#"{{"channelName":"{channel}"}}"#);
    ws.send(Message::text(engineio::encode_event(
        ns,
        Some(1),
        "join",
        &join,
    )))
    .await?;
    let chat = format!(r#"{{"channelName":"{channel}","message":"probe"}}"#);
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        let mut sent = false;
        while let Some(msg) = ws.next().await {
            let Message::Text(text) = msg? else {
                continue;
            };
            match engineio::decode(text.as_str()) {
                Packet::Ack { id: 1, .. } if !sent => {
                    sent = true;
                    ws.send(Message::text(engineio::encode_event(
                        ns,
                        None,
                        "chat:send",
                        &chat,
                    )))
                    .await?;
                }
                Packet::Event {
                    name: "chat:new",
                    payload,
                    ..
                } => return Ok(position(payload).is_some()),
                Packet::Event {
                    name: "error",
                    payload,
                    ..
                } => {
                    anyhow::bail!("probe refused: {payload} (rate limit? see docs/performance.md)")
                }
                Packet::Ping => ws.send(Message::text(engineio::PONG)).await?,
                _ => {}
            }
        }
        anyhow::bail!("probe: the gateway closed the connection")
    })
    .await
    .context("probe: no chat:new within 10 s")?;
    let _ = ws.close(None).await;
    answer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switching_history_keeps_every_other_setting() {
        let text =
            "rateLimits: {messagesPerMinute: 100000}\nhistory: {maxItems: 50, maxAgeSeconds: 60}\n";
        let off = rewrite_config(text, Switch::Off).unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&off).unwrap();
        assert_eq!(v["history"]["maxItems"], 0);
        assert_eq!(v["history"]["maxAgeSeconds"], 60);
        assert_eq!(v["rateLimits"]["messagesPerMinute"], 100_000);
        let on = rewrite_config(&off, Switch::On).unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&on).unwrap();
        assert_eq!(v["history"]["maxItems"], 200);
        let kept = rewrite_config(text, Switch::On).unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&kept).unwrap();
        assert_eq!(v["history"]["maxItems"], 50);
        let empty = rewrite_config("", Switch::Off).unwrap();
        let v: serde_yaml::Value = serde_yaml::from_str(&empty).unwrap();
        assert_eq!(v["history"]["maxItems"], 0);
        assert!(rewrite_config("- a list", Switch::On).is_err());
    }

    #[test]
    fn the_connect_reply_yields_the_recovery_pid() {
        let frame = r#"40/live,{"sid":"abc","pid":"0123456789abcdef0123456789abcdef"}"#;
        let reply = connect_reply(frame).unwrap();
        assert_eq!(
            pid(reply).as_deref(),
            Some("0123456789abcdef0123456789abcdef")
        );
        assert_eq!(pid(r#"{"sid":"abc"}"#), None);
    }

    #[test]
    fn positions_come_from_the_payload_and_the_last_argument() {
        let payload = r#"{"message":"x","offset":7,"epoch":"ab12"},"ab12:7""#;
        assert_eq!(position(payload), Some((7, "ab12".to_owned())));
        assert_eq!(recovery_offset(payload).as_deref(), Some("ab12:7"));
        let plain = r#"{"message":"x"}"#;
        assert_eq!(position(plain), None);
        assert_eq!(recovery_offset(plain), None);
    }
}
