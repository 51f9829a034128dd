//! The engine.io heartbeat of a WebSocket session, as a pure state machine the connection's
//! task drives (live-realtime fork).
//!
//! Upstream ran it in a task of its own per socket, fed by a channel of pongs from the reader
//! task: a third task and a second queue for every connection. Here the connection task asks
//! for the next deadline, arms its one timer for it, and reports the client's pings and pongs;
//! time is passed in, so the schedule is tested without a clock.
//!
//! The schedule is upstream's. v4: the server pings at once, then every `interval` from the
//! start (start + k·interval), and ends the session when a pong is not back within `timeout`;
//! a ping from the client counts as a pong. v3: the client pings, the server answers each with
//! a pong, and ends the session when no ping came within `interval + timeout`.

use std::time::Duration;

use engineioxide_core::{Packet, ProtocolVersion};
use tokio::time::Instant;

/// The client missed its heartbeat.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct TimedOut;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Beat {
    /// v4: the next ping is due at this time.
    PingAt(Instant),
    /// v4: a ping is out; its pong is due by the first time, the next ping at the second.
    PongBy(Instant, Instant),
    /// v3: the client's next ping is due by this time.
    ClientPingBy(Instant),
}

#[derive(Debug, Clone)]
pub(crate) struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    beat: Beat,
}

impl Heartbeat {
    pub(crate) fn new(
        protocol: ProtocolVersion,
        interval: Duration,
        timeout: Duration,
        now: Instant,
    ) -> Self {
        let beat = match protocol {
            ProtocolVersion::V4 => Beat::PingAt(now),
            ProtocolVersion::V3 => Beat::ClientPingBy(now + interval + timeout),
        };
        Self {
            interval,
            timeout,
            beat,
        }
    }

    /// When [`Heartbeat::expired`] must be called next.
    pub(crate) fn deadline(&self) -> Instant {
        match self.beat {
            Beat::PingAt(at) | Beat::PongBy(at, _) | Beat::ClientPingBy(at) => at,
        }
    }

    /// The deadline passed: the ping to send now, nothing yet (called early), or the client
    /// timed out.
    pub(crate) fn expired(&mut self, now: Instant) -> Result<Option<Packet>, TimedOut> {
        if now < self.deadline() {
            return Ok(None);
        }
        match self.beat {
            Beat::PingAt(at) => {
                self.beat = Beat::PongBy(now + self.timeout, at + self.interval);
                Ok(Some(Packet::Ping))
            }
            Beat::PongBy(..) | Beat::ClientPingBy(_) => Err(TimedOut),
        }
    }

    /// The client sent a heartbeat packet (a pong, or a v3 ping): what to answer.
    pub(crate) fn on_client_beat(&mut self, now: Instant) -> Option<Packet> {
        match self.beat {
            Beat::PongBy(_, next_ping) => {
                self.beat = Beat::PingAt(next_ping);
                None
            }
            // An early pong (some clients send one first): the client is alive, nothing is due.
            Beat::PingAt(_) => None,
            Beat::ClientPingBy(_) => {
                self.beat = Beat::ClientPingBy(now + self.interval + self.timeout);
                Some(Packet::Pong)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INTERVAL: Duration = Duration::from_secs(25);
    const TIMEOUT: Duration = Duration::from_secs(20);

    #[test]
    fn v4_pings_at_once_then_every_interval_from_the_start() {
        let start = Instant::now();
        let s = |secs: u64| start + Duration::from_secs(secs);
        let mut hb = Heartbeat::new(ProtocolVersion::V4, INTERVAL, TIMEOUT, start);
        assert_eq!(hb.deadline(), start);
        assert_eq!(hb.expired(start), Ok(Some(Packet::Ping)));
        assert_eq!(hb.deadline(), s(20), "waiting for the pong");
        assert_eq!(hb.on_client_beat(s(3)), None);
        // The next ping keeps the schedule, not the pong's time.
        assert_eq!(hb.deadline(), s(25));
        assert_eq!(hb.expired(s(24)), Ok(None), "not due yet");
        assert_eq!(hb.expired(s(25)), Ok(Some(Packet::Ping)));
        assert_eq!(hb.on_client_beat(s(26)), None);
        assert_eq!(hb.deadline(), s(50));
    }

    #[test]
    fn v4_times_out_when_the_pong_is_late_and_ignores_early_pongs() {
        let start = Instant::now();
        let mut hb = Heartbeat::new(ProtocolVersion::V4, INTERVAL, TIMEOUT, start);
        assert_eq!(
            hb.on_client_beat(start),
            None,
            "an early pong changes nothing"
        );
        assert_eq!(hb.deadline(), start);
        hb.expired(start).unwrap();
        assert_eq!(hb.expired(start + TIMEOUT), Err(TimedOut));
    }

    #[test]
    fn v3_answers_each_client_ping_and_times_out_without_one() {
        let start = Instant::now();
        let mut hb = Heartbeat::new(ProtocolVersion::V3, INTERVAL, TIMEOUT, start);
        assert_eq!(hb.deadline(), start + INTERVAL + TIMEOUT);
        let at = start + Duration::from_secs(10);
        assert_eq!(hb.on_client_beat(at), Some(Packet::Pong));
        assert_eq!(hb.deadline(), at + INTERVAL + TIMEOUT);
        assert_eq!(hb.expired(at + INTERVAL), Ok(None));
        assert_eq!(hb.expired(at + INTERVAL + TIMEOUT), Err(TimedOut));
    }
}
