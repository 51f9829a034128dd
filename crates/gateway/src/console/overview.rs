//! The console's overview: channels ranked by viewers and the replicas' health, across every
//! replica when Redis answers, for this replica alone (and said so) when it does not.

use std::collections::HashMap;

use serde::Serialize;
use socketioxide::adapter::Adapter;

use super::Console;
use super::health::{self, ReplicaHealth};
use crate::realtime;

/// Whose numbers a view shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Every live replica, from the shared store.
    Cluster,
    /// This replica only: it runs without Redis, or Redis did not answer.
    Replica,
}

/// A channel and its viewers (sockets in its room).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChannelCount {
    pub channel_name: String,
    pub viewers: u64,
}

/// The busiest channels, and totals over all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ranking {
    pub scope: Scope,
    pub channels: Vec<ChannelCount>,
    /// Channels with at least one viewer, listed or not.
    pub total_channels: usize,
    pub total_viewers: u64,
}

/// Ranks channels by viewers, most first, ties by name; keeps the first `limit`; channels with
/// no viewer are left out. Pure.
pub fn rank(counts: HashMap<String, u64>, limit: usize, scope: Scope) -> Ranking {
    let mut channels: Vec<ChannelCount> = counts
        .into_iter()
        .filter(|(_, n)| *n > 0)
        .map(|(channel_name, viewers)| ChannelCount {
            channel_name,
            viewers,
        })
        .collect();
    let total_channels = channels.len();
    let total_viewers = channels.iter().map(|c| c.viewers).sum();
    channels.sort_unstable_by(|a, b| {
        b.viewers
            .cmp(&a.viewers)
            .then_with(|| a.channel_name.cmp(&b.channel_name))
    });
    channels.truncate(limit);
    Ranking {
        scope,
        channels,
        total_channels,
        total_viewers,
    }
}

/// The ranking now: from every replica's snapshot with Redis, from local rooms otherwise.
pub async fn channels<A: Adapter>(c: &Console<A>, limit: usize, now_ms: u64) -> Ranking {
    if let Some(shared) = &c.app().shared
        && let Ok(counts) = shared.channel_viewers(now_ms).await
    {
        return rank(counts, limit, Scope::Cluster);
    }
    rank(
        realtime::local_channel_sizes(&c.admin.io),
        limit,
        Scope::Replica,
    )
}

/// Every replica's health, as this replica sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Replicas {
    pub scope: Scope,
    /// The replica answering (the one the console is connected to).
    pub this_pod: String,
    pub replicas: Vec<ReplicaHealth>,
}

pub async fn replicas<A: Adapter>(c: &Console<A>, now_ms: u64) -> Replicas {
    let own = health::current(&c.identity, c.app(), now_ms);
    let (scope, published) = match &c.app().shared {
        Some(shared) => match health::published(shared, now_ms).await {
            Ok(list) => (Scope::Cluster, list),
            Err(()) => (Scope::Replica, Vec::new()),
        },
        None => (Scope::Replica, Vec::new()),
    };
    Replicas {
        scope,
        this_pod: c.identity.pod.clone(),
        replicas: health::merge(own, published, now_ms),
    }
}

/// What the overview stream sends.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Overview {
    pub channels: Ranking,
    pub replicas: Replicas,
    pub generated_at: u64,
}

pub async fn overview<A: Adapter>(c: &Console<A>, limit: usize, now_ms: u64) -> Overview {
    Overview {
        channels: channels(c, limit, now_ms).await,
        replicas: replicas(c, now_ms).await,
        generated_at: now_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(pairs: &[(&str, u64)]) -> HashMap<String, u64> {
        pairs.iter().map(|(c, n)| ((*c).to_owned(), *n)).collect()
    }

    #[test]
    fn channels_rank_by_viewers_then_name_and_the_totals_cover_the_unlisted() {
        let r = rank(
            counts(&[("b", 5), ("a", 5), ("c", 9), ("d", 1), ("empty", 0)]),
            3,
            Scope::Cluster,
        );
        let listed: Vec<(&str, u64)> = r
            .channels
            .iter()
            .map(|c| (c.channel_name.as_str(), c.viewers))
            .collect();
        assert_eq!(listed, [("c", 9), ("a", 5), ("b", 5)]);
        assert_eq!(r.total_channels, 4);
        assert_eq!(r.total_viewers, 20);
    }

    #[test]
    fn no_channel_is_an_empty_ranking() {
        let r = rank(HashMap::new(), 10, Scope::Replica);
        assert!(r.channels.is_empty());
        assert_eq!((r.total_channels, r.total_viewers), (0, 0));
    }
}
