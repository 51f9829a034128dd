//! One socket's events are handled one after another, in the order the client sent them.
//!
//! socketioxide spawns a task per event, and tokio starts tasks in no particular order (the
//! newest spawn often runs first), while the handlers themselves await (Redis, the history
//! store). Without an order, a user's chat messages reached the room shuffled and a `chat:send`
//! emitted right after a `join` could be refused as `not_member`: socket.io on Node runs a
//! socket's handlers in arrival order, and clients rely on it.
//!
//! Each admitted event takes a [`Turn`] on the socket's read path (synchronously, so in arrival
//! order); the turn waits for the one before it to finish. The chain is a oneshot channel per
//! event: nothing is queued beyond the tasks socketioxide already spawned, and those are bounded
//! by the event budget.

use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::state::lock;

/// The end of one socket's chain of turns.
#[derive(Debug, Default)]
pub struct Turns {
    /// Resolves when the most recently taken turn has finished.
    last: Mutex<Option<oneshot::Receiver<()>>>,
}

impl Turns {
    /// The next turn: it runs after every turn taken before it has finished.
    pub fn take(&self) -> Turn {
        let (done, finished) = oneshot::channel();
        let prev = lock(&self.last).replace(finished);
        Turn {
            prev,
            done: Some(done),
        }
    }
}

/// A place in a socket's order. A turn dropped without beginning (its handler never ran) passes
/// its place on: the next turn still waits for the one before it.
#[derive(Debug)]
pub struct Turn {
    prev: Option<oneshot::Receiver<()>>,
    done: Option<oneshot::Sender<()>>,
}

impl Turn {
    /// Waits for the turn before this one to finish. This turn lasts until the returned guard is
    /// dropped (also when its handler panics).
    pub async fn begin(mut self) -> Running {
        if let Some(prev) = self.prev.take() {
            // An error means the earlier turn's guard was dropped: finished either way.
            let _ = prev.await;
        }
        Running {
            _done: self.done.take(),
        }
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        if let (Some(prev), Some(done)) = (self.prev.take(), self.done.take()) {
            // Outside a runtime nothing is running any more, so there is no order to keep.
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = prev.await;
                    drop(done);
                });
            }
        }
    }
}

/// A turn in progress; dropping it lets the next turn begin.
#[derive(Debug)]
pub struct Running {
    _done: Option<oneshot::Sender<()>>,
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn turns_run_in_the_order_they_were_taken_whatever_order_their_tasks_start_in() {
        let turns = Turns::default();
        let log = Arc::new(Mutex::new(Vec::new()));
        let taken: Vec<Turn> = (0..5).map(|_| turns.take()).collect();
        let mut tasks = Vec::new();
        // Started last to first, and the earlier ones take longer.
        for (i, turn) in taken.into_iter().enumerate().rev() {
            let log = Arc::clone(&log);
            tasks.push(tokio::spawn(async move {
                let _running = turn.begin().await;
                tokio::time::sleep(Duration::from_millis(10 * (5 - i as u64))).await;
                lock(&log).push(i);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*lock(&log), vec![0, 1, 2, 3, 4]);
    }

    #[tokio::test]
    async fn a_turn_whose_handler_panicked_lets_the_next_one_run() {
        let turns = Turns::default();
        let first = turns.take();
        let second = turns.take();
        let crashed = tokio::spawn(async move {
            let _running = first.begin().await;
            panic!("handler bug");
        });
        assert!(crashed.await.is_err());
        tokio::time::timeout(Duration::from_secs(1), second.begin())
            .await
            .expect("the second turn begins after the first one's task panicked");
    }

    #[tokio::test]
    async fn a_turn_dropped_without_beginning_keeps_the_next_one_waiting_for_the_one_before() {
        let turns = Turns::default();
        let first = turns.take().begin().await;
        drop(turns.take());
        let mut third = tokio::spawn(turns.take().begin());
        assert!(
            still_waiting(&mut third).await,
            "the third turn must wait for the first, which still runs"
        );
        drop(first);
        finishes(third).await;
    }

    #[tokio::test]
    async fn a_later_turn_waits_while_an_earlier_one_runs() {
        let turns = Turns::default();
        let first = turns.take().begin().await;
        let second = turns.take();
        let mut waiting = tokio::spawn(second.begin());
        assert!(
            still_waiting(&mut waiting).await,
            "the second turn must not begin while the first runs"
        );
        drop(first);
        finishes(waiting).await;
    }

    /// Whether `task` has still not finished after a moment.
    async fn still_waiting<T>(task: &mut tokio::task::JoinHandle<T>) -> bool {
        tokio::time::timeout(Duration::from_millis(50), task)
            .await
            .is_err()
    }

    /// Waits for `task`, which must finish soon and without panicking.
    async fn finishes<T>(task: tokio::task::JoinHandle<T>) {
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("finishes once the turn before has ended")
            .expect("does not panic");
    }
}
