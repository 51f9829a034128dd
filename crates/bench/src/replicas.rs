//! Several gateway replicas in one run: which replica each connection connects to, so that a
//! channel's members sit on one replica (sticky sessions, the common case) or are spread over
//! all of them (a hot channel watched through every replica). Pure.

use clap::ValueEnum;
use serde::Serialize;

/// Where a channel's members connect when several `--server`s are given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Placement {
    /// Every member of channel `k` on replica `k mod replicas`.
    #[default]
    ByChannel,
    /// The `m`-th member of every channel on replica `m mod replicas`: each channel spans every
    /// replica (as evenly as its size allows).
    Spread,
}

/// The replica (index into the `--server` list) connection `conn` connects to, when connections
/// are dealt to `channels` round-robin (see `plan`).
pub fn replica_of(conn: usize, channels: usize, replicas: usize, placement: Placement) -> usize {
    let replicas = replicas.max(1);
    let channels = channels.max(1);
    match placement {
        Placement::ByChannel => (conn % channels) % replicas,
        Placement::Spread => (conn / channels) % replicas,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Plan;

    fn replicas_of_channel(
        plan: Plan,
        replicas: usize,
        placement: Placement,
        channel: usize,
    ) -> Vec<usize> {
        let mut r: Vec<usize> = (0..plan.connections)
            .filter(|&c| plan.channel_of(c) == channel)
            .map(|c| replica_of(c, plan.channels, replicas, placement))
            .collect();
        r.sort_unstable();
        r.dedup();
        r
    }

    #[test]
    fn by_channel_puts_every_member_of_a_channel_on_one_replica_and_spreads_channels() {
        let plan = Plan::new(2_000, 200, 200).expect("valid");
        for channel in 0..200 {
            assert_eq!(
                replicas_of_channel(plan, 4, Placement::ByChannel, channel),
                [channel % 4]
            );
        }
        let per_replica = (0..4)
            .map(|r| {
                (0..plan.connections)
                    .filter(|&c| replica_of(c, 200, 4, Placement::ByChannel) == r)
                    .count()
            })
            .collect::<Vec<_>>();
        assert_eq!(per_replica, [500; 4]);
    }

    #[test]
    fn spread_puts_every_channel_on_every_replica_even_when_channels_divide_evenly() {
        // 200 channels over 4 replicas: dealing connections round-robin to replicas would put
        // each channel's members all on one replica (conn ≡ channel mod 4).
        let plan = Plan::new(2_000, 200, 0).expect("valid");
        for channel in [0, 1, 199] {
            assert_eq!(
                replicas_of_channel(plan, 4, Placement::Spread, channel),
                [0, 1, 2, 3]
            );
        }
        let on_first = (0..1_000)
            .filter(|&c| replica_of(c, 1, 2, Placement::Spread) == 0)
            .count();
        assert_eq!(on_first, 500);
    }

    #[test]
    fn one_replica_takes_everything() {
        assert_eq!(replica_of(17, 5, 1, Placement::Spread), 0);
        assert_eq!(replica_of(17, 5, 0, Placement::ByChannel), 0);
    }
}
