//! Identical history reads that arrive together share one Redis call.
//!
//! When a replica restarts, its viewers come back together and all ask the same question at
//! once ("channel c, everything after offset 21"). Answered one by one, 1,000 viewers of a channel
//! sent 1,000 scripts of ~100 items each down one connection; most missed the read timeout and
//! were answered `recovered: false` (measured with two replicas: 860 of 1,000). Coalesced,
//! they cost a handful of reads.
//!
//! Exactness: a recovery read must start after the reader began receiving the channel's live
//! traffic, or an item published in between would be in neither. So a request never joins a
//! read already under way: it waits for the next one, which starts once the current one has
//! finished and serves every request that arrived meanwhile.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::state::lock;

type Waiters<K, V> = Arc<Mutex<HashMap<K, Vec<oneshot::Sender<V>>>>>;

/// Per key, at most one read under way; requests arriving during it share the next one.
#[derive(Debug)]
pub struct Coalescer<K, V> {
    /// A key is present while its driver runs; the list holds the requests for its next read.
    waiting: Waiters<K, V>,
}

impl<K, V> Clone for Coalescer<K, V> {
    fn clone(&self) -> Self {
        Self {
            waiting: Arc::clone(&self.waiting),
        }
    }
}

impl<K, V> Default for Coalescer<K, V> {
    fn default() -> Self {
        Self {
            waiting: Arc::default(),
        }
    }
}

impl<K, V> Coalescer<K, V>
where
    K: Hash + Eq + Clone + Send + Sync + 'static,
    V: Clone + Send + 'static,
{
    /// The result of a `read` for `key` that started after this call. `None` if the read never
    /// answered (its task panicked).
    pub async fn get<F, Fut>(&self, key: K, read: F) -> Option<V>
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = V> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut waiting = lock(&self.waiting);
            match waiting.get_mut(&key) {
                Some(next) => {
                    next.push(tx);
                    false
                }
                None => {
                    waiting.insert(key.clone(), vec![tx]);
                    true
                }
            }
        };
        if start {
            tokio::spawn(drive(Arc::clone(&self.waiting), key, read));
        }
        rx.await.ok()
    }
}

/// Reads for `key` until no request is waiting: each read serves the requests registered
/// before it started.
async fn drive<K, V, F, Fut>(waiting: Waiters<K, V>, key: K, read: F)
where
    K: Hash + Eq + Clone + Send + Sync,
    V: Clone + Send,
    F: Fn() -> Fut + Send,
    Fut: Future<Output = V> + Send,
{
    let mut guard = Unlist {
        waiting: &waiting,
        key: &key,
        armed: true,
    };
    loop {
        let batch = {
            let mut w = lock(&waiting);
            let batch = w.get_mut(&key).map(std::mem::take).unwrap_or_default();
            if batch.is_empty() {
                w.remove(&key);
                guard.armed = false;
                return;
            }
            batch
        };
        let v = read().await;
        for tx in batch {
            // The requester may have gone (its join was cancelled).
            let _ = tx.send(v.clone());
        }
    }
}

/// Removes the key if the driver ends without doing so (a panic in `read`), so its waiters are
/// answered (with `None`) and later requests start a new driver instead of waiting forever.
struct Unlist<'a, K: Hash + Eq, V> {
    waiting: &'a Mutex<HashMap<K, Vec<oneshot::Sender<V>>>>,
    key: &'a K,
    armed: bool,
}

impl<K: Hash + Eq, V> Drop for Unlist<'_, K, V> {
    fn drop(&mut self) {
        if self.armed {
            lock(self.waiting).remove(self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use tokio::sync::Notify;

    use super::*;

    #[tokio::test]
    async fn requests_that_arrive_during_a_read_share_the_next_one_not_the_current_one() {
        let c: Coalescer<&str, usize> = Coalescer::default();
        let reads = Arc::new(AtomicUsize::new(0));
        let release = Arc::new(Notify::new());
        let read = {
            let (reads, release) = (Arc::clone(&reads), Arc::clone(&release));
            move || {
                let (reads, release) = (Arc::clone(&reads), Arc::clone(&release));
                async move {
                    let n = reads.fetch_add(1, Ordering::SeqCst) + 1;
                    release.notified().await;
                    n
                }
            }
        };
        let first = tokio::spawn({
            let (c, read) = (c.clone(), read.clone());
            async move { c.get("ch", read).await }
        });
        // The first read is under way before the others ask.
        while reads.load(Ordering::SeqCst) == 0 {
            tokio::task::yield_now().await;
        }
        let later: Vec<_> = (0..50)
            .map(|_| {
                let (c, read) = (c.clone(), read.clone());
                tokio::spawn(async move { c.get("ch", read).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        release.notify_one();
        assert_eq!(first.await.unwrap(), Some(1));
        while reads.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        release.notify_one();
        for l in later {
            assert_eq!(
                l.await.unwrap(),
                Some(2),
                "served by the read after theirs began"
            );
        }
        assert_eq!(reads.load(Ordering::SeqCst), 2, "51 requests, 2 reads");
        assert!(lock(&c.waiting).is_empty(), "the key is gone once idle");
    }

    #[tokio::test]
    async fn different_keys_do_not_share_reads() {
        let c: Coalescer<u32, u32> = Coalescer::default();
        let a = c.get(1, || async { 10 });
        let b = c.get(2, || async { 20 });
        assert_eq!(tokio::join!(a, b), (Some(10), Some(20)));
    }

    #[tokio::test]
    async fn a_read_that_panics_answers_none_and_the_next_request_reads_again() {
        let c: Coalescer<u32, u32> = Coalescer::default();
        let crashed = c.get(1, || async { panic!("store bug") }).await;
        assert_eq!(crashed, None);
        assert_eq!(c.get(1, || async { 7 }).await, Some(7));
    }
}
