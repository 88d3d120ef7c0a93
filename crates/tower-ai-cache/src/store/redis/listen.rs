//! Invalidation across replicas: each replica's subscriber evicts its L1
//! copies as messages arrive, and flushes its whole L1 when its subscription
//! reconnects (it may have missed messages).

use std::time::Duration;

use fred::clients::Client;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use tokio::sync::watch;

use crate::key::CacheKey;
use crate::store::memory::L1;
use crate::tag::TagId;

/// Evicts L1 entries as invalidations arrive; flushes L1 when the
/// subscription (re)connects or falls behind. Ends when the layer is gone.
pub(super) async fn listen(
    subscriber: Client,
    channel: String,
    l1: L1,
    subscribed: watch::Sender<bool>,
    mut stopped: watch::Receiver<()>,
) {
    let mut messages = subscriber.message_rx();
    let mut reconnects = subscriber.reconnect_rx();
    subscriber.connect();
    let subscribe = || async {
        loop {
            let attempt = tokio::time::timeout(
                Duration::from_secs(1),
                subscriber.subscribe(channel.clone()),
            );
            match attempt.await {
                Ok(Ok(())) => return,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "cache: subscribing to invalidations failed; retrying");
                }
                Err(_) => {
                    tracing::debug!("cache: subscribing to invalidations timed out; retrying")
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    tokio::select! {
        () = subscribe() => {}
        _ = stopped.changed() => {
            let _ = subscriber.quit().await;
            return;
        }
    }
    subscribed.send_replace(true);
    loop {
        tokio::select! {
            message = messages.recv() => match message {
                Ok(message) => {
                    let text = message.value.as_string().unwrap_or_default();
                    apply(&l1, &text);
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                    tracing::info!("cache: invalidations fell behind; flushing L1");
                    l1.clear();
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            reconnect = reconnects.recv() => {
                if reconnect.is_err() {
                    continue;
                }
                // Invalidations may have been missed while disconnected.
                subscribed.send_replace(false);
                tracing::info!("cache: invalidation subscriber reconnected; flushing L1");
                metrics::counter!("tower_ai_cache_l1_flushes_total", "reason" => "reconnect").increment(1);
                l1.clear();
                subscribe().await;
                subscribed.send_replace(true);
            }
            _ = stopped.changed() => break,
        }
    }
    let _ = subscriber.quit().await;
}

/// Applies one invalidation message to L1.
fn apply(l1: &L1, message: &str) {
    if let Some(hex) = message.strip_prefix("k:") {
        if let Some(key) = CacheKey::from_hex(hex) {
            l1.remove(&key);
        }
    } else if let Some(hex) = message.strip_prefix("t:") {
        if let Some(tag) = TagId::from_hex(hex) {
            l1.remove_tag(tag);
        }
    } else if message == "all" {
        l1.clear();
    }
}
