//! The adapter's transport over fred: publishes and subscriptions that never fail a broadcast
//! because Redis is away, and resubscription after every reconnection.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use fred::clients::SubscriberClient;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::Message;
use socketioxide_redis::drivers::{ChanItem, Driver, MessageStream};
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use super::COMMAND_TIMEOUT;
use crate::metrics::Metrics;

type Handlers = Arc<RwLock<HashMap<String, mpsc::Sender<ChanItem>>>>;

/// The adapter's transport: fred sharded pub/sub that never fails a broadcast because Redis is
/// away, and resubscribes after every reconnection.
#[derive(Clone)]
pub struct ResilientDriver {
    conn: SubscriberClient,
    handlers: Handlers,
    /// Channels we want, kept by us rather than by fred, because fred only remembers a
    /// subscription that succeeded and we must also subscribe to those asked for while down.
    wanted: Arc<RwLock<HashSet<String>>>,
    /// Channels subscribed on the current connection; cleared on every reconnection.
    confirmed: Arc<RwLock<HashSet<String>>>,
    metrics: Metrics,
}

impl std::fmt::Debug for ResilientDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResilientDriver").finish_non_exhaustive()
    }
}

/// Why a driver call failed; the adapter only logs it.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct DriverError(String);

impl ResilientDriver {
    /// Starts connecting in the background and returns at once.
    pub fn start(conn: SubscriberClient, metrics: Metrics, stop: CancellationToken) -> Self {
        let driver = Self {
            conn,
            handlers: Arc::default(),
            wanted: Arc::default(),
            confirmed: Arc::default(),
            metrics,
        };
        tokio::spawn(pipe_messages(
            driver.conn.message_rx(),
            driver.handlers.clone(),
            driver.metrics.clone(),
        ));
        let resubscriber = driver.clone();
        let mut reconnects = driver.conn.reconnect_rx();
        tokio::spawn(async move {
            // A subscription asked for while the connection was still being set up can be missed
            // by the reconnect notification; the periodic check closes that gap.
            let mut check = tokio::time::interval(Duration::from_secs(1));
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    r = reconnects.recv() => match r {
                        Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            write(&resubscriber.confirmed).clear();
                            resubscriber.subscribe_wanted().await;
                            tracing::info!("redis connected; cross-replica delivery active");
                        }
                        Err(broadcast::error::RecvError::Closed) => break,
                    },
                    _ = check.tick() => resubscriber.subscribe_wanted().await,
                }
            }
        });
        // Drives the connection and its reconnections for the life of the process.
        let _connection = driver.conn.connect();
        driver
    }

    /// Subscribes to every wanted channel not yet subscribed on the current connection.
    async fn subscribe_wanted(&self) {
        if !self.conn.is_connected() {
            return;
        }
        let missing: Vec<String> = {
            let confirmed = read(&self.confirmed);
            read(&self.wanted)
                .iter()
                .filter(|c| !confirmed.contains(*c))
                .cloned()
                .collect()
        };
        for chan in missing {
            self.try_subscribe(chan).await;
        }
    }

    async fn try_subscribe(&self, chan: String) {
        match tokio::time::timeout(COMMAND_TIMEOUT, self.conn.ssubscribe(chan.as_str())).await {
            Ok(Ok(())) => {
                write(&self.confirmed).insert(chan);
            }
            Ok(Err(e)) => {
                self.metrics.redis_error("subscribe");
                tracing::warn!(chan, error = %e, "subscribe failed; will retry");
            }
            Err(_) => {
                self.metrics.redis_error("subscribe");
                tracing::warn!(chan, "subscribe timed out; will retry");
            }
        }
    }

    /// Whether every wanted channel is subscribed on a live connection.
    pub fn is_subscribed(&self) -> bool {
        self.conn.is_connected() && read(&self.wanted).is_subset(&read(&self.confirmed))
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Forwards each pub/sub message to the adapter stream of its channel. A full stream drops the
/// message (counted) instead of blocking every other channel behind it.
async fn pipe_messages(mut rx: broadcast::Receiver<Message>, handlers: Handlers, metrics: Metrics) {
    loop {
        match rx.recv().await {
            Ok(msg) => {
                let chan = msg.channel.to_string();
                let Some(data) = msg.value.into_owned_bytes() else {
                    continue;
                };
                let tx = read(&handlers).get(&chan).cloned();
                if let Some(tx) = tx
                    && tx.try_send((chan, data)).is_err()
                {
                    metrics.redis_adapter_dropped.inc();
                }
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                metrics.redis_adapter_dropped.inc_by(n);
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

impl Driver for ResilientDriver {
    type Error = DriverError;

    async fn publish(&self, chan: String, val: Vec<u8>) -> std::result::Result<(), DriverError> {
        if !self.conn.is_connected() {
            self.metrics.redis_publish_skipped.inc();
            return Ok(());
        }
        match tokio::time::timeout(COMMAND_TIMEOUT, self.conn.spublish::<u64, _, _>(chan, val))
            .await
        {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                self.metrics.redis_error("publish");
                tracing::debug!(error = %e, "publish failed; delivering locally only");
            }
            Err(_) => {
                self.metrics.redis_error("publish");
                tracing::debug!("publish timed out; delivering locally only");
            }
        }
        // Never fail: the adapter would otherwise skip the local delivery too.
        Ok(())
    }

    async fn subscribe(
        &self,
        chan: String,
        size: usize,
    ) -> std::result::Result<MessageStream<ChanItem>, DriverError> {
        let (tx, rx) = mpsc::channel(size);
        write(&self.handlers).insert(chan.clone(), tx);
        write(&self.wanted).insert(chan.clone());
        if self.conn.is_connected() {
            self.try_subscribe(chan).await;
        }
        Ok(MessageStream::new(rx))
    }

    async fn unsubscribe(&self, chan: String) -> std::result::Result<(), DriverError> {
        write(&self.handlers).remove(&chan);
        write(&self.wanted).remove(&chan);
        write(&self.confirmed).remove(&chan);
        if self.conn.is_connected() {
            self.conn
                .sunsubscribe(chan)
                .await
                .map_err(|e| DriverError(e.to_string()))?;
        }
        Ok(())
    }

    async fn num_serv(&self, chan: &str) -> std::result::Result<u16, DriverError> {
        let (_, n): (String, u16) = self
            .conn
            .pubsub_shardnumsub(chan)
            .await
            .map_err(|e| DriverError(e.to_string()))?;
        Ok(n)
    }
}
