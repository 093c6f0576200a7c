//! Parked keys (`on_key_failure = "park"`): when a message of a key fails
//! for good (after its retries), it is dead-lettered and its key is parked;
//! the key's later messages are then held in the router's state
//! ([`crate::state::StateStore::hold`]) and acknowledged on the broker, in
//! the order the flow received them, until an operator releases the key
//! (the flow handles them in that order, then unparks it) or drops it
//! (their held copies are deleted: they were acknowledged when held).
//!
//! Order: a message is held, or a released message handled, only in its
//! key's turn ([`super::keys`]), so a key's messages never overtake each
//! other whichever way they go. Parking survives restarts: the state store
//! is the truth, and [`Parking`] a copy that tells the flow's tasks which
//! keys to look up.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::keys::KeyChain;
use super::worker::Worker;
use crate::connector::{Delivery, Settle};
use crate::message::InboundMessage;
use crate::state::StateStore;

/// How often a flow looks for keys an operator released or dropped.
const POLL: Duration = Duration::from_millis(500);

/// The parked keys of one flow, as far as its tasks know.
#[derive(Default)]
pub(super) struct Parking {
    /// Keys parked in the state store. Kept under this lock together with
    /// the store's writes and reads, so a key parked by a worker is never
    /// forgotten by a refresh that read the store just before.
    parked: Mutex<HashSet<String>>,
    /// Keys whose release runs now.
    releasing: Mutex<HashSet<String>>,
}

impl Parking {
    fn is_parked(&self, key: &str) -> bool {
        self.parked
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(key)
    }
}

/// Runs `op` on the blocking pool.
async fn blocking<T: Send + 'static>(
    state: &StateStore,
    op: impl FnOnce(&StateStore) -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || op(&state)).await?
}

impl Worker {
    /// The key `message` is ordered by, when its key can be parked.
    fn parkable_key<'a>(&self, message: &'a InboundMessage) -> Option<&'a str> {
        self.parking.as_ref()?;
        message.header(self.key_header)
    }

    /// Holds `delivery` if its key is parked, in its key's turn: stored in
    /// the state, then acknowledged. `Some(delivery)` back when its key is
    /// not parked.
    pub(super) async fn hold_if_parked(&self, mut delivery: Delivery) -> Option<Delivery> {
        let (Some(key), Some(parking)) = (self.parkable_key(&delivery.message), &self.parking)
        else {
            return Some(delivery);
        };
        if !parking.is_parked(key) {
            return Some(delivery);
        }
        let (key, parking) = (key.to_string(), parking.clone());
        let (flow, message) = (self.flow.clone(), delivery.message.clone());
        let k = key.clone();
        let held = blocking(&self.services.state, move |s| {
            let mut parked = parking.parked.lock().unwrap_or_else(|p| p.into_inner());
            let held = s.hold(&flow, &k, &message)?;
            if !held {
                // Dropped or released meanwhile.
                parked.remove(&k);
            }
            Ok(held)
        })
        .await;
        match held {
            Ok(false) => return Some(delivery),
            Ok(true) => {
                tracing::info!(flow = %self.flow, key = %key, message_id = %delivery.message.id, "The message's key is parked; the message is held.");
                self.ack(&mut delivery.settle, &delivery.message).await;
            }
            Err(e) => {
                // Not held: the broker redelivers it, behind the key's
                // order, rather than the router lose it.
                tracing::error!(flow = %self.flow, key = %key, error = %format!("{e:#}"), "Could not hold a message of a parked key.");
                self.retry(&mut delivery.settle, &delivery.message, POLL)
                    .await;
            }
        }
        self.refresh_parked().await;
        None
    }

    /// `message` failed for good: with `on_key_failure = "park"`, parks its
    /// key before it is dead-lettered, so a crash in between holds it rather
    /// than lets its key's next message overtake it.
    pub(super) async fn park_key_of(&self, message: &InboundMessage) {
        let (Some(key), Some(parking)) = (self.parkable_key(message), self.parking.clone()) else {
            return;
        };
        let (flow, k) = (self.flow.clone(), key.to_string());
        let parked = blocking(&self.services.state, move |s| {
            let mut parked = parking.parked.lock().unwrap_or_else(|p| p.into_inner());
            s.park_key(&flow, &k)?;
            parked.insert(k);
            Ok(())
        })
        .await;
        match parked {
            Ok(()) => {
                tracing::warn!(flow = %self.flow, key = %key, message_id = %message.id, "A message failed for good; its key is parked and its later messages are held until an operator releases or drops them.");
            }
            Err(e) => {
                tracing::error!(flow = %self.flow, key = %key, error = %format!("{e:#}"), "Could not park a key; its later messages proceed.");
            }
        }
        self.refresh_parked().await;
    }

    /// Reads the flow's parked keys from the state store into its status,
    /// its metrics and [`Parking`]; the keys released and not being
    /// released yet.
    async fn refresh_parked(&self) -> Vec<String> {
        let Some(parking) = self.parking.clone() else {
            return Vec::new();
        };
        let flow = self.flow.clone();
        let read = blocking(&self.services.state, move |s| {
            let mut parked = parking.parked.lock().unwrap_or_else(|p| p.into_inner());
            let keys = s.parked_keys(&flow)?;
            *parked = keys.iter().map(|k| k.key.clone()).collect();
            Ok(keys)
        })
        .await;
        let keys = match read {
            Ok(keys) => keys,
            Err(e) => {
                tracing::warn!(flow = %self.flow, error = %format!("{e:#}"), "Could not read the parked keys.");
                return Vec::new();
            }
        };
        let only = crate::metrics::FlowOnly {
            flow: self.flow.to_string(),
        };
        let messages: u64 = keys.iter().map(|k| k.messages).sum();
        let metrics = &self.services.metrics;
        metrics
            .parked_keys
            .get_or_create(&only)
            .set(keys.len() as i64);
        metrics
            .parked_messages
            .get_or_create(&only)
            .set(messages as i64);
        let released = keys
            .iter()
            .filter(|k| k.released)
            .map(|k| k.key.clone())
            .collect();
        self.status.set_parked(keys);
        released
    }

    /// Handles the held messages of released `key` in order, in the key's
    /// turn, then unparks it. Stops early when one of them fails for good
    /// (the key is parked again), is not settled (it is tried again on the
    /// next look), or the key was dropped.
    async fn release(&self, key: String, chain: Arc<Mutex<KeyChain>>) {
        let mut turn = chain.lock().unwrap_or_else(|p| p.into_inner()).turn(&key);
        turn.wait().await;
        let state = &self.services.state;
        let (flow, k) = (self.flow.clone(), key.clone());
        let held = blocking(state, move |s| s.held_messages(&flow, &k)).await;
        for held in held.unwrap_or_default() {
            let still_released = self.key_released(&key).await;
            let Some(algorithm) = self.services.registry.resolve(&self.spec.algorithm) else {
                break;
            };
            if !still_released {
                break;
            }
            let settle = Box::new(HeldSettle {
                state: state.clone(),
                flow: self.flow.to_string(),
                key: key.clone(),
                seq: held.seq,
            });
            self.process(
                Delivery {
                    message: held.message,
                    settle,
                },
                algorithm,
            )
            .await;
            let (flow, k, seq) = (self.flow.clone(), key.clone(), held.seq);
            if blocking(state, move |s| s.is_held(&flow, &k, seq))
                .await
                .unwrap_or(true)
            {
                break;
            }
        }
        let (flow, k) = (self.flow.clone(), key.clone());
        if let Ok(true) = blocking(state, move |s| s.finish_release(&flow, &k)).await {
            tracing::info!(flow = %self.flow, key = %key, "A released key's held messages are handled; the key is unparked.");
        }
        self.refresh_parked().await;
        if let Some(parking) = &self.parking {
            parking
                .releasing
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
        }
        drop(turn);
    }

    /// Whether `key` is still parked and released.
    async fn key_released(&self, key: &str) -> bool {
        let (flow, k) = (self.flow.clone(), key.to_string());
        blocking(&self.services.state, move |s| {
            Ok(s.parked_keys(&flow)?
                .into_iter()
                .any(|p| p.key == k && p.released))
        })
        .await
        .unwrap_or(false)
    }
}

/// Reads the flow's parked keys (before it receives: a key parked before a
/// restart stays parked), then looks for released and dropped keys until
/// `stop`, starting the release of each released key in its own task
/// (aborted at `stop`: what it did not settle stays held, and is handled
/// after a restart).
pub(super) async fn start_releaser(
    worker: Worker,
    chain: Arc<Mutex<KeyChain>>,
    stop: CancellationToken,
) -> Option<tokio::task::JoinHandle<()>> {
    let parking = worker.parking.clone()?;
    worker.refresh_parked().await;
    Some(tokio::spawn(async move {
        let mut releases = tokio::task::JoinSet::new();
        loop {
            for key in worker.refresh_parked().await {
                let mut releasing = parking.releasing.lock().unwrap_or_else(|p| p.into_inner());
                if releasing.insert(key.clone()) {
                    let (worker, chain) = (worker.clone(), chain.clone());
                    releases.spawn(async move { worker.release(key, chain).await });
                }
            }
            while releases.try_join_next().is_some() {}
            if super::sleep_or_stop(POLL, &stop).await {
                releases.abort_all();
                return;
            }
        }
    }))
}

/// Settles a held message of a released key: acknowledging it forgets it;
/// anything else leaves it held.
struct HeldSettle {
    state: StateStore,
    flow: String,
    key: String,
    seq: u64,
}

#[async_trait::async_trait]
impl Settle for HeldSettle {
    async fn ack(&mut self) -> anyhow::Result<()> {
        let (flow, key, seq) = (self.flow.clone(), self.key.clone(), self.seq);
        blocking(&self.state, move |s| s.unhold(&flow, &key, seq)).await
    }

    async fn retry(&mut self, _delay: Duration) -> anyhow::Result<()> {
        Ok(())
    }
}
