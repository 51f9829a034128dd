//! Who is who in a load run: each connection's user, channel and source address, which
//! connections send, and the message rate that offers a given deliveries/s.
//!
//! Connections are dealt to channels round-robin and the first `senders` connections send, so
//! senders spread evenly over the channels and every channel's size differs by at most one.

use std::net::Ipv4Addr;

/// The shape of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    pub connections: usize,
    pub channels: usize,
    pub senders: usize,
}

/// A plan that cannot run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPlan(pub &'static str);

impl std::fmt::Display for InvalidPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::error::Error for InvalidPlan {}

impl Plan {
    pub fn new(connections: usize, channels: usize, senders: usize) -> Result<Self, InvalidPlan> {
        if connections == 0 {
            return Err(InvalidPlan("at least one connection is needed"));
        }
        if channels == 0 || channels > connections {
            return Err(InvalidPlan(
                "channels must be between 1 and the connection count",
            ));
        }
        if senders > connections {
            return Err(InvalidPlan("senders cannot outnumber connections"));
        }
        Ok(Self {
            connections,
            channels,
            senders,
        })
    }

    /// The channel index of connection `conn`.
    pub fn channel_of(&self, conn: usize) -> usize {
        conn % self.channels
    }

    /// The sender index of connection `conn`, when it sends.
    pub fn sender_of(&self, conn: usize) -> Option<usize> {
        (conn < self.senders).then_some(conn)
    }

    /// Planned members of each channel.
    pub fn members(&self) -> Vec<usize> {
        (0..self.channels)
            .map(|c| {
                self.connections / self.channels + usize::from(c < self.connections % self.channels)
            })
            .collect()
    }
}

/// The user id of connection `conn`; distinct per connection so per-user rate limits spread.
pub fn user_id(conn: usize) -> String {
    format!("lb-{conn}")
}

/// The name of channel `index` (valid under the gateway's channel-name rule).
pub fn channel_name(prefix: &str, index: usize) -> String {
    format!("{prefix}-{index}")
}

/// The loopback source address of connection `conn` among `sources` addresses from 127.0.0.2
/// up: each source address has its own ~28,000 ephemeral ports.
pub fn source_addr(conn: usize, sources: u8) -> Ipv4Addr {
    let k = (conn % usize::from(sources.max(1))) as u8;
    Ipv4Addr::new(127, 0, 0, 2u8.saturating_add(k))
}

/// Messages per second, over all senders together, that offer `deliveries_per_sec` when each
/// sender sends at the same rate and a message to a channel reaches all its members (the sender
/// included). `sender_fanouts` holds each sender's channel size.
pub fn message_rate(deliveries_per_sec: f64, sender_fanouts: &[usize]) -> f64 {
    let fanout_sum: usize = sender_fanouts.iter().sum();
    if fanout_sum == 0 {
        return 0.0;
    }
    deliveries_per_sec * sender_fanouts.len() as f64 / fanout_sum as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_dealt_to_channels_round_robin() {
        let p = Plan::new(10, 3, 0).expect("valid");
        let channels: Vec<_> = (0..10).map(|c| p.channel_of(c)).collect();
        assert_eq!(channels, [0, 1, 2, 0, 1, 2, 0, 1, 2, 0]);
        assert_eq!(p.members(), [4, 3, 3]);
    }

    #[test]
    fn senders_are_the_first_connections_and_cover_every_channel() {
        let p = Plan::new(2000, 10, 100).expect("valid");
        assert_eq!(p.sender_of(0), Some(0));
        assert_eq!(p.sender_of(99), Some(99));
        assert_eq!(p.sender_of(100), None);
        let mut per_channel = [0; 10];
        for s in 0..100 {
            per_channel[p.channel_of(s)] += 1;
        }
        assert_eq!(per_channel, [10; 10]);
    }

    #[test]
    fn impossible_plans_are_refused() {
        assert!(Plan::new(0, 1, 0).is_err());
        assert!(Plan::new(5, 0, 0).is_err());
        assert!(Plan::new(5, 6, 0).is_err());
        assert!(Plan::new(5, 1, 6).is_err());
    }

    #[test]
    fn source_addresses_rotate_over_the_loopback_range() {
        assert_eq!(source_addr(0, 4), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(3, 4), Ipv4Addr::new(127, 0, 0, 5));
        assert_eq!(source_addr(4, 4), Ipv4Addr::new(127, 0, 0, 2));
        assert_eq!(source_addr(7, 0), Ipv4Addr::new(127, 0, 0, 2));
    }

    #[test]
    fn the_message_rate_divides_deliveries_by_the_average_fanout() {
        // 2,000 connections in 10 channels: 200 members each; 40,000 deliveries/s = 200 msgs/s.
        let fanouts = vec![200; 100];
        assert!((message_rate(40_000.0, &fanouts) - 200.0).abs() < 1e-9);
        // Uneven channels weight by where the senders are.
        assert!((message_rate(300.0, &[100, 200]) - 2.0).abs() < 1e-9);
        assert_eq!(message_rate(1000.0, &[]), 0.0);
    }

    #[test]
    fn names_are_valid_gateway_identifiers() {
        assert_eq!(user_id(7), "lb-7");
        assert_eq!(channel_name("bench", 3), "bench-3");
    }
}
