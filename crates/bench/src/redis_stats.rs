//! Redis's own traffic counters, read with `INFO stats` over a plain RESP connection: the network
//! bytes a scenario costs Redis (`total_net_input_bytes`, `total_net_output_bytes`), to report
//! Redis bytes per delivery. The parsers are pure; [`read`] is the IO shell.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Network byte counters of one or more Redis servers (summed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct NetBytes {
    pub input: u64,
    pub output: u64,
}

impl NetBytes {
    /// Bytes between `earlier` and `self`.
    pub fn since(self, earlier: Self) -> Self {
        Self {
            input: self.input.saturating_sub(earlier.input),
            output: self.output.saturating_sub(earlier.output),
        }
    }

    fn add(self, other: Self) -> Self {
        Self {
            input: self.input + other.input,
            output: self.output + other.output,
        }
    }
}

/// The counters from the text of an `INFO stats` reply.
pub fn parse_info(text: &str) -> Option<NetBytes> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
    };
    Some(NetBytes {
        input: field("total_net_input_bytes")?,
        output: field("total_net_output_bytes")?,
    })
}

/// The payload of one RESP bulk string reply (`$<len>\r\n<payload>\r\n`), once `buf` holds all
/// of it; `Ok(None)` while more is needed.
pub fn parse_bulk(buf: &[u8]) -> anyhow::Result<Option<&[u8]>> {
    let Some(eol) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let header = std::str::from_utf8(&buf[..eol])?;
    let len: usize = header
        .strip_prefix('$')
        .with_context(|| format!("not a bulk reply: {header}"))?
        .parse()?;
    let start = eol + 2;
    Ok((buf.len() >= start + len).then(|| &buf[start..start + len]))
}

/// Reads the counters of every server in `servers`, summed.
pub async fn read(servers: &[SocketAddr]) -> anyhow::Result<NetBytes> {
    let mut total = NetBytes::default();
    for &server in servers {
        let one = tokio::time::timeout(Duration::from_secs(2), read_one(server))
            .await
            .with_context(|| format!("INFO stats from {server} timed out"))??;
        total = total.add(one);
    }
    Ok(total)
}

async fn read_one(server: SocketAddr) -> anyhow::Result<NetBytes> {
    let mut conn = TcpStream::connect(server).await?;
    conn.write_all(b"*2\r\n$4\r\nINFO\r\n$5\r\nstats\r\n")
        .await?;
    let mut buf = Vec::with_capacity(4096);
    loop {
        if let Some(body) = parse_bulk(&buf)? {
            let text = std::str::from_utf8(body)?;
            return parse_info(text).context("INFO stats without the net byte counters");
        }
        if conn.read_buf(&mut buf).await? == 0 {
            anyhow::bail!("{server} closed the connection");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_counters_come_from_info_stats() {
        let text = "# Stats\r\ntotal_connections_received:3\r\ntotal_net_input_bytes:1234\r\ntotal_net_output_bytes:99\r\ninstantaneous_ops_per_sec:0\r\n";
        assert_eq!(
            parse_info(text),
            Some(NetBytes {
                input: 1234,
                output: 99
            })
        );
        assert_eq!(parse_info("# Stats\r\n"), None);
    }

    #[test]
    fn a_bulk_reply_is_read_once_complete() {
        assert_eq!(parse_bulk(b"$5\r\nhel").unwrap(), None);
        assert_eq!(parse_bulk(b"$5\r\nhello\r\n").unwrap(), Some(&b"hello"[..]));
        assert_eq!(parse_bulk(b"$5").unwrap(), None);
        assert!(parse_bulk(b"-ERR no\r\n").is_err());
    }

    #[test]
    fn counters_are_differenced_per_round() {
        let a = NetBytes {
            input: 10,
            output: 100,
        };
        let b = NetBytes {
            input: 15,
            output: 160,
        };
        assert_eq!(
            b.since(a),
            NetBytes {
                input: 5,
                output: 60
            }
        );
        assert_eq!(a.since(b), NetBytes::default());
    }
}
