//! Who a connection comes from, and how many connections and sessions each source holds.
//!
//! The source of a request is the TCP peer, unless the peer is one of the trusted proxies
//! (`LIVE_TRUSTED_PROXIES`, CIDRs): then it is the address the proxies appended to
//! `X-Forwarded-For`, read from the right and skipping the trusted proxies themselves. A client
//! can write anything at the left of that header, so nothing left of the first untrusted hop is
//! believed, and a request from an untrusted peer never has its header read at all.
//!
//! Sources are counted per key: an IPv4 address, or an IPv6 /64 (one subscriber's prefix: an
//! attacker with a /64 has 2^64 addresses, so counting single IPv6 addresses would bound
//! nothing).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};

use http::HeaderMap;
use ipnet::IpNet;

use crate::state::lock;

/// The trusted proxies' networks.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parses a comma-separated list of CIDRs (`10.0.0.0/8`) or single addresses.
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<IpNet>()
                    .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| format!("{s:?} is not a CIDR or an IP address"))
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `ip` is one of the proxies.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|net| net.contains(&ip))
    }
}

/// The client address of a request from `peer` with these headers.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &TrustedProxies) -> IpAddr {
    let peer = canonical(peer);
    if !trusted.contains(peer) {
        return peer;
    }
    // Every X-Forwarded-For header, in order, as one list; read from the right.
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        let Ok(ip) = hop.parse::<IpAddr>().map(canonical) else {
            // A hop we cannot read ends what can be believed.
            break;
        };
        client = ip;
        if !trusted.contains(ip) {
            break;
        }
    }
    client
}

/// IPv4-mapped IPv6 addresses (`::ffff:1.2.3.4`) are the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// What sources are counted by: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SourceKey(IpAddr);

impl SourceKey {
    pub fn of(ip: IpAddr) -> Self {
        match canonical(ip) {
            IpAddr::V6(v6) => {
                let s = v6.segments();
                Self(IpAddr::V6(Ipv6Addr::new(
                    s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                )))
            }
            v4 => Self(v4),
        }
    }
}

/// Open connections (or sessions) per source, with a cap.
#[derive(Debug, Clone, Default)]
pub struct PerSource {
    counts: Arc<Mutex<HashMap<SourceKey, u32>>>,
}

/// One counted connection or session; dropping it uncounts it.
#[derive(Debug)]
pub struct Slot {
    key: SourceKey,
    counts: Arc<Mutex<HashMap<SourceKey, u32>>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if let Some(n) = counts.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

impl PerSource {
    /// Counts one more for `key`, unless it has `max` already (`max` 0: no cap).
    pub fn acquire(&self, key: SourceKey, max: u32) -> Option<Slot> {
        let mut counts = lock(&self.counts);
        let n = counts.entry(key).or_insert(0);
        if max != 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(Slot {
            key,
            counts: Arc::clone(&self.counts),
        })
    }

    /// How many `key` holds now.
    pub fn count(&self, key: SourceKey) -> u32 {
        lock(&self.counts).get(&key).copied().unwrap_or(0)
    }

    /// Number of sources with at least one.
    pub fn sources(&self) -> usize {
        lock(&self.counts).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in xff {
            h.append("x-forwarded-for", v.parse().unwrap());
        }
        h
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_untrusted_peer_is_the_client_whatever_it_claims() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        let h = headers(&["1.2.3.4"]);
        assert_eq!(
            client_ip(ip("203.0.113.9"), &h, &trusted),
            ip("203.0.113.9")
        );
        assert_eq!(
            client_ip(ip("203.0.113.9"), &h, &TrustedProxies::default()),
            ip("203.0.113.9")
        );
    }

    #[test]
    fn behind_trusted_proxies_the_rightmost_untrusted_hop_is_the_client() {
        let trusted = TrustedProxies::parse("10.0.0.0/8, 192.168.1.1").unwrap();
        // The client forged "6.6.6.6"; the ingress appended the real address; an inner proxy
        // appended the ingress.
        let h = headers(&["6.6.6.6, 198.51.100.7", "10.1.2.3"]);
        assert_eq!(client_ip(ip("10.9.9.9"), &h, &trusted), ip("198.51.100.7"));
        let h = headers(&["198.51.100.7"]);
        assert_eq!(
            client_ip(ip("192.168.1.1"), &h, &trusted),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn a_trusted_peer_without_a_usable_header_is_its_own_source() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers(&[]), &trusted),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers(&["garbage"]), &trusted),
            ip("10.0.0.1")
        );
        assert_eq!(
            client_ip(ip("10.0.0.1"), &headers(&["198.51.100.7, junk"]), &trusted),
            ip("10.0.0.1"),
            "nothing left of an unreadable hop is believed"
        );
    }

    #[test]
    fn mapped_ipv4_is_ipv4_and_ipv6_counts_per_64() {
        let trusted = TrustedProxies::parse("10.0.0.0/8").unwrap();
        assert!(trusted.contains(ip("::ffff:10.1.1.1")));
        assert_eq!(
            SourceKey::of(ip("::ffff:1.2.3.4")),
            SourceKey::of(ip("1.2.3.4"))
        );
        assert_eq!(
            SourceKey::of(ip("2001:db8:1:2:aaaa::1")),
            SourceKey::of(ip("2001:db8:1:2:bbbb::2"))
        );
        assert_ne!(
            SourceKey::of(ip("2001:db8:1:2::1")),
            SourceKey::of(ip("2001:db8:1:3::1"))
        );
    }

    #[test]
    fn a_source_holds_at_most_max_and_slots_give_back_on_drop() {
        let p = PerSource::default();
        let k = SourceKey::of(ip("1.2.3.4"));
        let a = p.acquire(k, 2).unwrap();
        let _b = p.acquire(k, 2).unwrap();
        assert!(p.acquire(k, 2).is_none());
        assert!(p.acquire(SourceKey::of(ip("1.2.3.5")), 2).is_some());
        drop(a);
        assert_eq!(p.count(k), 1);
        assert!(p.acquire(k, 2).is_some());
        assert!(p.acquire(k, 0).is_some(), "0: no cap");
    }

    #[test]
    fn bad_proxy_lists_are_refused() {
        assert!(TrustedProxies::parse("10.0.0.0/33").is_err());
        assert!(TrustedProxies::parse("example.com").is_err());
        assert!(TrustedProxies::parse("").unwrap().is_empty());
    }
}
