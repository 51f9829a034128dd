//! Tells a key source when to look at its files again: after file events in the watched
//! directory (debounced), on a slow poll, and on SIGHUP. The same approach as the config reloader
//! (`config.rs`): Kubernetes updates a mounted Secret by swapping a `..data` symlink, so the
//! directory is watched, not the files, and the poll backs up volumes where inotify says nothing.
//! Whether anything changed is for the consumer to decide, by comparing contents.

use std::path::Path;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Quiet time after the last file event before looking: a Secret swap is several events.
pub(crate) const DEBOUNCE: Duration = Duration::from_millis(300);
/// Fallback poll interval.
pub(crate) const POLL: Duration = Duration::from_secs(5);

/// Why a source is asked to look again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    FileEvent,
    Poll,
    Signal,
}

/// Watches `dir` until `stop`; the receiver gets a trigger per debounced burst of file events,
/// per poll tick and per SIGHUP. At most one trigger waits: a consumer that is busy misses
/// nothing it would not see on its next look.
pub(crate) fn watch_dir(
    dir: &Path,
    stop: CancellationToken,
) -> Result<mpsc::Receiver<Trigger>, String> {
    let (event_tx, mut events) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            let _ = event_tx.try_send(());
        }
    })
    .map_err(|e| format!("cannot start a file watcher: {e}"))?;
    notify::Watcher::watch(&mut watcher, dir, notify::RecursiveMode::NonRecursive)
        .map_err(|e| format!("cannot watch {}: {e}", dir.display()))?;
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot listen for SIGHUP: {e}"))?;
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        // The watcher lives as long as this task.
        let _watcher = watcher;
        let mut poll = tokio::time::interval(POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        poll.tick().await;
        loop {
            let trigger = tokio::select! {
                () = stop.cancelled() => break,
                Some(()) = events.recv() => {
                    loop {
                        tokio::select! {
                            Some(()) = events.recv() => continue,
                            () = tokio::time::sleep(DEBOUNCE) => break,
                        }
                    }
                    Trigger::FileEvent
                }
                _ = poll.tick() => Trigger::Poll,
                Some(()) = hangup.recv() => Trigger::Signal,
            };
            if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(trigger) {
                break;
            }
        }
    });
    Ok(rx)
}

/// Reads the source again (`read` follows symlinks) and returns the new content when it differs
/// from `last` (or always, when `force`, for SIGHUP), once two reads a debounce apart agree: a
/// file caught mid-write is never acted on. `None` when nothing changed or the content is still
/// moving; the next trigger looks again.
pub(crate) async fn changed<T, F>(read: F, last: Option<&T>, force: bool) -> Option<T>
where
    T: PartialEq + Send + 'static,
    F: Fn() -> T + Clone + Send + 'static,
{
    let first = tokio::task::spawn_blocking(read.clone()).await.ok()?;
    if !force && last == Some(&first) {
        return None;
    }
    tokio::time::sleep(DEBOUNCE).await;
    let second = tokio::task::spawn_blocking(read).await.ok()?;
    (first == second).then_some(second)
}
