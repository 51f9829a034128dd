//! The room side of history: [`prepare`] is called for every delivery to a channel (from
//! `realtime::emit_to_room`) and turns a history item into its recorded, stamped form, which
//! the caller keeps until its broadcast is queued.

use std::sync::Arc;

use serde::Serialize;
use serde_json::value::RawValue;

use super::{Limits, Retention};
use crate::state::{AppState, unix_millis};

/// A recorded item, ready to broadcast.
#[derive(Debug)]
pub struct Delivery {
    /// The payload with `offset` and `epoch`.
    pub payload: Arc<RawValue>,
    /// With Connection State Recovery on: the item's position, sent as the last argument (the
    /// stock client keeps the last string argument as its recovery offset).
    pub recovery_arg: Option<String>,
    /// Held until the broadcast is queued: see `History::order`.
    _order: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// Records a history item and returns how to deliver it; `None` for a live-only event, or when
/// the item goes out unrecorded (history off, or its store unavailable: see `History::record`).
pub async fn prepare<T: Serialize + ?Sized>(
    st: &AppState,
    channel: &str,
    retention: Retention,
    event: &'static str,
    payload: &T,
) -> Option<Delivery> {
    if retention == Retention::LiveOnly {
        return None;
    }
    let config = st.config();
    let limits = Limits::from_config(&config.gateway.history);
    let json = if limits.enabled() {
        match serde_json::to_string(payload) {
            Ok(j) => j,
            Err(e) => {
                tracing::error!(event, error = %e, "payload not serializable; delivered unrecorded");
                return None;
            }
        }
    } else {
        // Only noted as unrecorded; nothing is stored.
        String::new()
    };
    let order = st.history.order(channel).await;
    let stamped = st
        .history
        .record(channel, event, &json, &limits, unix_millis())
        .await?;
    let recovery_arg = config
        .gateway
        .history
        .connection_state_recovery
        .then(|| stamped.position.to_recovery_offset());
    Some(Delivery {
        payload: stamped.payload,
        recovery_arg,
        _order: order,
    })
}
