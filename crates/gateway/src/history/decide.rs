//! The pure decisions of channel history: what a `join {since}` recovers, which recent items a
//! late joiner gets, which channels a Connection State Recovery can restore exactly, and which
//! held-back broadcasts a socket still needs after a replay. No IO and no clock: the stores and
//! the socket flows call these with the time and the data they read.

use std::sync::Arc;

use super::{Item, Position};

/// The most a recovery or history reply may carry, in payload bytes. A reply bigger than this
/// would be one huge packet for a phone on a weak network; past it, the client reloads instead.
pub const MAX_REPLY_BYTES: usize = 1024 * 1024;

/// What a store holds for one channel, as read at one instant.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// The channel's stream and its newest offset; `None` when nothing is known about the
    /// channel (never written, expired, evicted, or history unavailable).
    pub head: Option<Position>,
    /// Items in offset order, possibly with gaps at the front (trimmed) and possibly older than
    /// the age limit (trimmed lazily): [`recover`] and [`latest`] check both.
    pub items: Vec<Arc<Item>>,
}

/// The age and size limits in force when a window is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub max_items: usize,
    pub max_age_ms: u64,
    pub max_bytes: usize,
}

/// The answer to "what did I miss since `since`?".
#[derive(Debug, Clone, PartialEq)]
pub enum Recovery {
    /// Every item after `since` up to the head, in order (possibly none).
    Recovered(Vec<Arc<Item>>),
    /// The gap cannot be filled exactly: the client must reload.
    NotRecovered(Why),
}

/// Why a recovery failed; a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// No history for the channel (never written, expired, or history off).
    NoHistory,
    /// The store did not answer in time (Redis down or overloaded): nothing can be vouched for.
    Unavailable,
    /// The stream was replaced (Redis flushed, history expired, a gap in recording).
    EpochChanged,
    /// The position is ahead of the stream: not one this server handed out.
    Unknown,
    /// The gap is older or longer than the history keeps.
    TooOld,
    /// The missed items exceed the reply size bound.
    TooLarge,
}

impl Why {
    pub fn label(self) -> &'static str {
        match self {
            Self::NoHistory => "no_history",
            Self::Unavailable => "store_unavailable",
            Self::EpochChanged => "epoch_changed",
            Self::Unknown => "unknown_position",
            Self::TooOld => "too_old",
            Self::TooLarge => "too_large",
        }
    }
}

/// Whether `item` is still within the age limit at `now_ms`.
pub fn fresh(item: &Item, now_ms: u64, max_age_ms: u64) -> bool {
    item.time_ms.saturating_add(max_age_ms) >= now_ms
}

/// Decides a recovery from `since`: exact or not at all. The window must have been read after
/// the socket started receiving the channel's live traffic, so nothing falls between the two.
pub fn recover(since: &Position, window: &Window, now_ms: u64, bounds: Bounds) -> Recovery {
    let Some(head) = &window.head else {
        return Recovery::NotRecovered(Why::NoHistory);
    };
    if head.epoch != since.epoch {
        return Recovery::NotRecovered(Why::EpochChanged);
    }
    if since.offset > head.offset {
        return Recovery::NotRecovered(Why::Unknown);
    }
    let missed = head.offset - since.offset;
    if missed == 0 {
        return Recovery::Recovered(Vec::new());
    }
    if missed > bounds.max_items as u64 {
        return Recovery::NotRecovered(Why::TooOld);
    }
    let items: Vec<Arc<Item>> = window
        .items
        .iter()
        .filter(|i| i.offset > since.offset && i.offset <= head.offset)
        .cloned()
        .collect();
    // Contiguous from since + 1 to the head, and none expired.
    let contiguous = items.len() as u64 == missed
        && items
            .iter()
            .zip(since.offset + 1..)
            .all(|(i, expected)| i.offset == expected);
    if !contiguous || !items.iter().all(|i| fresh(i, now_ms, bounds.max_age_ms)) {
        return Recovery::NotRecovered(Why::TooOld);
    }
    if items.iter().map(|i| i.payload.get().len()).sum::<usize>() > bounds.max_bytes {
        return Recovery::NotRecovered(Why::TooLarge);
    }
    Recovery::Recovered(items)
}

/// The newest `n` items still within the age limit, oldest first, capped at `max_items` and at
/// `max_bytes` (the newest that fit).
pub fn latest(window: &Window, n: usize, now_ms: u64, bounds: Bounds) -> Vec<Arc<Item>> {
    let n = n.min(bounds.max_items);
    let mut bytes = 0usize;
    let mut out: Vec<Arc<Item>> = Vec::new();
    for item in window.items.iter().rev() {
        if out.len() == n || !fresh(item, now_ms, bounds.max_age_ms) {
            break;
        }
        bytes += item.payload.get().len();
        if bytes > bounds.max_bytes {
            break;
        }
        out.push(item.clone());
    }
    out.reverse();
    out
}

/// A channel of a recoverable session: where its stream stood when the socket joined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub channel: String,
    /// The head before the socket entered the room (`None`: no history then).
    pub at_join: Option<Position>,
}

/// Where to replay each channel of a session from, when every one of them can be restored
/// exactly; `None` otherwise.
///
/// The client reports only the *last* position it received, over all its channels (that is
/// socket.io's protocol). Its channel is found by epoch (epochs are random per stream). For every
/// other channel the client's position is known only when no item was written to it since the
/// socket joined, or when the client received no item at all since it connected (`last` is
/// `None`) and the stream is still the one it joined. Anything else would be a guess, so it is
/// not recovered.
pub fn plan_session(
    channels: &[Joined],
    heads: &[Option<Position>],
    last: Option<&Position>,
) -> Option<Vec<(String, Option<Position>)>> {
    let mut plan = Vec::with_capacity(channels.len());
    for (joined, head) in channels.iter().zip(heads) {
        let since = match (head, &joined.at_join) {
            // Nothing written since the socket joined (no history then, none now).
            (None, None) => None,
            (None, Some(_)) => return None,
            (Some(head), at_join) => {
                let joined_same = at_join.as_ref().filter(|j| j.epoch == head.epoch);
                let from = if let Some(last) = last.filter(|l| l.epoch == head.epoch) {
                    if last.offset > head.offset {
                        return None;
                    }
                    // A stale position from before this session joined counts from the join.
                    joined_same.map_or(last.offset, |j| j.offset.max(last.offset))
                } else if let (None, Some(j)) = (last, joined_same) {
                    // No item received since connecting: everything after the join is missed.
                    // (A stream that began after the join may have replaced one with items the
                    // client lost, or follow items delivered unrecorded: not exact.)
                    j.offset
                } else {
                    match joined_same {
                        Some(j) if j.offset == head.offset => j.offset,
                        _ => return None,
                    }
                };
                Some(Position::new(head.epoch.clone(), from))
            }
        };
        plan.push((joined.channel.clone(), since));
    }
    Some(plan)
}

/// A broadcast held back during a replay, and where the replay ended for each replayed stream:
/// keep it unless it is a history item the replay already delivered.
pub fn keep_held(packet: &str, replayed: &[Position]) -> bool {
    match position_in_packet(packet) {
        Some(p) => !replayed
            .iter()
            .any(|r| r.epoch == p.epoch && p.offset <= r.offset),
        None => true,
    }
}

/// The `offset` and `epoch` of the payload of a Socket.IO event packet such as
/// `2/live,["chat:new",{...,"offset":7,"epoch":"ab12"}]`. Held packets are few, so parsing one
/// fully is fine.
fn position_in_packet(packet: &str) -> Option<Position> {
    let start = packet.find('[')?;
    let args: Vec<serde_json::Value> = serde_json::from_str(&packet[start..]).ok()?;
    let payload = args.get(1)?;
    let offset = payload.get("offset")?.as_u64()?;
    let epoch = payload.get("epoch")?.as_str()?;
    Some(Position::new(epoch.into(), offset))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn item(offset: u64, time_ms: u64) -> Arc<Item> {
        let json = format!("{{\"n\":{offset},\"offset\":{offset},\"epoch\":\"e1\"}}");
        Arc::new(Item {
            offset,
            time_ms,
            event: "chat:new".into(),
            payload: Arc::from(RawValue::from_string(json).unwrap()),
        })
    }

    fn pos(epoch: &str, offset: u64) -> Position {
        Position::new(epoch.into(), offset)
    }

    fn window(epoch: &str, head: u64, offsets: impl IntoIterator<Item = u64>) -> Window {
        Window {
            head: Some(pos(epoch, head)),
            items: offsets.into_iter().map(|o| item(o, 1_000)).collect(),
        }
    }

    const BOUNDS: Bounds = Bounds {
        max_items: 200,
        max_age_ms: 600_000,
        max_bytes: MAX_REPLY_BYTES,
    };

    fn offsets(r: &Recovery) -> Vec<u64> {
        match r {
            Recovery::Recovered(items) => items.iter().map(|i| i.offset).collect(),
            Recovery::NotRecovered(why) => panic!("not recovered: {why:?}"),
        }
    }

    #[test]
    fn a_gap_inside_the_history_is_recovered_in_order() {
        let w = window("e1", 10, 1..=10);
        assert_eq!(
            offsets(&recover(&pos("e1", 6), &w, 2_000, BOUNDS)),
            [7, 8, 9, 10]
        );
        assert_eq!(
            offsets(&recover(&pos("e1", 10), &w, 2_000, BOUNDS)),
            Vec::<u64>::new()
        );
        assert_eq!(
            offsets(&recover(&pos("e1", 0), &w, 2_000, BOUNDS)),
            (1..=10).collect::<Vec<_>>()
        );
    }

    #[test]
    fn nothing_missed_is_recovered_even_when_the_items_expired() {
        let w = Window {
            head: Some(pos("e1", 10)),
            items: Vec::new(),
        };
        assert_eq!(
            recover(&pos("e1", 10), &w, 1, BOUNDS),
            Recovery::Recovered(vec![])
        );
    }

    #[test]
    fn a_gap_older_than_the_history_is_not_recovered() {
        // Trimmed by count: 1..=4 are gone.
        let w = window("e1", 10, 5..=10);
        assert_eq!(
            recover(&pos("e1", 3), &w, 2_000, BOUNDS),
            Recovery::NotRecovered(Why::TooOld)
        );
        assert_eq!(
            offsets(&recover(&pos("e1", 4), &w, 2_000, BOUNDS)),
            [5, 6, 7, 8, 9, 10]
        );
        // Too long for max_items even if the store kept more.
        let small = Bounds {
            max_items: 3,
            ..BOUNDS
        };
        assert_eq!(
            recover(&pos("e1", 6), &w, 2_000, small),
            Recovery::NotRecovered(Why::TooOld)
        );
        // Expired by age.
        assert_eq!(
            recover(&pos("e1", 6), &w, 1_000 + 600_001, BOUNDS),
            Recovery::NotRecovered(Why::TooOld)
        );
    }

    #[test]
    fn another_epoch_or_a_future_offset_is_never_replayed() {
        let w = window("e2", 10, 1..=10);
        assert_eq!(
            recover(&pos("e1", 6), &w, 2_000, BOUNDS),
            Recovery::NotRecovered(Why::EpochChanged)
        );
        assert_eq!(
            recover(&pos("e2", 11), &w, 2_000, BOUNDS),
            Recovery::NotRecovered(Why::Unknown)
        );
        assert_eq!(
            recover(&pos("e2", 1), &Window::default(), 2_000, BOUNDS),
            Recovery::NotRecovered(Why::NoHistory)
        );
    }

    #[test]
    fn a_hole_in_the_middle_is_not_recovered() {
        let w = window("e1", 10, [7, 8, 10]);
        assert_eq!(
            recover(&pos("e1", 6), &w, 2_000, BOUNDS),
            Recovery::NotRecovered(Why::TooOld)
        );
    }

    #[test]
    fn a_reply_over_the_byte_bound_is_not_recovered() {
        let w = window("e1", 10, 1..=10);
        let tiny = Bounds {
            max_bytes: 100,
            ..BOUNDS
        };
        assert_eq!(
            recover(&pos("e1", 0), &w, 2_000, tiny),
            Recovery::NotRecovered(Why::TooLarge)
        );
    }

    #[test]
    fn the_latest_items_are_capped_by_count_age_and_bytes() {
        let mut w = window("e1", 10, 1..=10);
        assert_eq!(
            latest(&w, 3, 2_000, BOUNDS)
                .iter()
                .map(|i| i.offset)
                .collect::<Vec<_>>(),
            [8, 9, 10]
        );
        let capped = Bounds {
            max_items: 2,
            ..BOUNDS
        };
        assert_eq!(latest(&w, 50, 2_000, capped).len(), 2);
        w.items[9] = item(10, 700_000);
        // Only item 10 is young enough at 700 s.
        assert_eq!(
            latest(&w, 5, 700_000, BOUNDS)
                .iter()
                .map(|i| i.offset)
                .collect::<Vec<_>>(),
            [10]
        );
        let last_two: usize = w.items[8..].iter().map(|i| i.payload.get().len()).sum();
        let bytes = Bounds {
            max_bytes: last_two,
            ..BOUNDS
        };
        assert_eq!(latest(&w, 5, 2_000, bytes).len(), 2);
        assert!(latest(&w, 0, 2_000, BOUNDS).is_empty());
    }

    fn joined(channel: &str, at: Option<Position>) -> Joined {
        Joined {
            channel: channel.into(),
            at_join: at,
        }
    }

    #[test]
    fn a_single_channel_session_resumes_from_the_last_position() {
        let chans = [joined("a", Some(pos("ea", 3)))];
        let plan = plan_session(&chans, &[Some(pos("ea", 9))], Some(&pos("ea", 7))).unwrap();
        assert_eq!(plan, [("a".to_owned(), Some(pos("ea", 7)))]);
        // Nothing received since connecting: from the join.
        let plan = plan_session(&chans, &[Some(pos("ea", 9))], None).unwrap();
        assert_eq!(plan, [("a".to_owned(), Some(pos("ea", 3)))]);
        // A stale position from an earlier session counts from this session's join.
        let plan = plan_session(&chans, &[Some(pos("ea", 9))], Some(&pos("ea", 1))).unwrap();
        assert_eq!(plan, [("a".to_owned(), Some(pos("ea", 3)))]);
    }

    #[test]
    fn a_session_whose_stream_was_replaced_is_not_recovered() {
        let chans = [joined("a", Some(pos("ea", 3)))];
        assert_eq!(
            plan_session(&chans, &[Some(pos("new", 2))], Some(&pos("ea", 7))),
            None
        );
        assert_eq!(plan_session(&chans, &[None], Some(&pos("ea", 7))), None);
        // A position ahead of the stream is not ours.
        assert_eq!(
            plan_session(&chans, &[Some(pos("ea", 5))], Some(&pos("ea", 7))),
            None
        );
    }

    #[test]
    fn a_session_in_several_channels_is_recovered_only_when_every_position_is_known() {
        let chans = [
            joined("a", Some(pos("ea", 3))),
            joined("b", Some(pos("eb", 10))),
        ];
        // b had no item since the join: exact.
        let plan = plan_session(
            &chans,
            &[Some(pos("ea", 9)), Some(pos("eb", 10))],
            Some(&pos("ea", 8)),
        )
        .unwrap();
        assert_eq!(
            plan,
            [
                ("a".to_owned(), Some(pos("ea", 8))),
                ("b".to_owned(), Some(pos("eb", 10)))
            ]
        );
        // b moved and the client's last position is in a: b's position is unknown.
        assert_eq!(
            plan_session(
                &chans,
                &[Some(pos("ea", 9)), Some(pos("eb", 12))],
                Some(&pos("ea", 8)),
            ),
            None
        );
        // No item received at all since connecting: both from their joins.
        let plan = plan_session(&chans, &[Some(pos("ea", 9)), Some(pos("eb", 12))], None).unwrap();
        assert_eq!(plan[1], ("b".to_owned(), Some(pos("eb", 10))));
        // ...unless a stream was replaced since the join.
        assert_eq!(
            plan_session(&chans, &[Some(pos("ea", 9)), Some(pos("new", 2))], None),
            None
        );
    }

    #[test]
    fn a_channel_without_history_at_join_resumes_only_from_a_position_in_its_new_stream() {
        let chans = [joined("a", None)];
        assert_eq!(
            plan_session(&chans, &[None], None).unwrap(),
            [("a".to_owned(), None)]
        );
        assert_eq!(
            plan_session(&chans, &[Some(pos("ea", 2))], Some(&pos("ea", 1))).unwrap(),
            [("a".to_owned(), Some(pos("ea", 1)))]
        );
        // The stream began after the join and the client has no position in it: it may follow
        // a stream or items the client never saw.
        assert_eq!(plan_session(&chans, &[Some(pos("ea", 2))], None), None);
        assert_eq!(
            plan_session(&chans, &[Some(pos("ea", 2))], Some(&pos("other", 1))),
            None
        );
    }

    #[test]
    fn held_packets_already_replayed_are_dropped_and_the_rest_kept() {
        let replayed = [pos("ea", 7)];
        let p = |e: &str, o: u64| {
            format!(
                "2/live,[\"chat:new\",{{\"m\":\"x\",\"offset\":{o},\"epoch\":\"{e}\"}},\"{e}:{o}\"]"
            )
        };
        assert!(!keep_held(&p("ea", 6), &replayed));
        assert!(!keep_held(&p("ea", 7), &replayed));
        assert!(keep_held(&p("ea", 8), &replayed));
        assert!(keep_held(&p("eb", 3), &replayed));
        assert!(keep_held(
            "2/live,[\"presence:update\",{\"delta\":1}]",
            &replayed
        ));
        assert!(keep_held("not a packet", &replayed));
    }
}
