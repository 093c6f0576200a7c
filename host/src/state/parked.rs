//! Parked keys (`on_key_failure = "park"`): a key whose message failed for
//! good is parked, and its later messages are held here, in the order the
//! flow received them, until an operator releases them (the flow handles
//! them, in order) or drops them. Writes are durable: a held message was
//! acknowledged on its broker, so this table is its only copy.

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::{PARKED, PARKED_KEYS, StateStore};
pub use crate::api::ParkedKey;
use crate::message::{Header, InboundMessage};

/// The stored part of a parked key (its messages are counted).
#[derive(Serialize, Deserialize)]
struct KeyEntry {
    since: String,
    released: bool,
}

/// A held message without its payload.
#[derive(Serialize, Deserialize)]
struct HeldMeta {
    id: String,
    topic: String,
    headers: Vec<Header>,
}

/// A held message and its place in its key's order.
pub struct HeldMessage {
    /// Its place: the messages of a key are handled by increasing `seq`.
    pub seq: u64,
    /// The message, as received (its attempt count starts again at 1).
    pub message: InboundMessage,
}

type Held<'a> = (&'a str, &'a [u8]);

impl StateStore {
    /// Parks `key` of `flow` (again): its later messages are held. A key
    /// being released stops being released.
    pub fn park_key(&self, flow: &str, key: &str) -> anyhow::Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut keys = tx.open_table(PARKED_KEYS)?;
            let since = match keys.get((flow, key))? {
                Some(v) => serde_json::from_str::<KeyEntry>(v.value())?.since,
                None => crate::util::rfc3339_now(),
            };
            let entry = KeyEntry {
                since,
                released: false,
            };
            keys.insert((flow, key), serde_json::to_string(&entry)?.as_str())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Holds `message` after the messages of its key already held, unless
    /// one with its id is held already (a redelivery after a crash between
    /// holding and acknowledging it). `Ok(false)` when `key` is not parked
    /// (any more): the message is not held.
    pub fn hold(&self, flow: &str, key: &str, message: &InboundMessage) -> anyhow::Result<bool> {
        let tx = self.db.begin_write()?;
        {
            if tx.open_table(PARKED_KEYS)?.get((flow, key))?.is_none() {
                return Ok(false);
            }
            let mut held = tx.open_table(PARKED)?;
            let mut last = 0;
            for entry in held.range((flow, key, 0)..=(flow, key, u64::MAX))? {
                let (k, v) = entry?;
                let meta: HeldMeta = serde_json::from_str(v.value().0)?;
                if meta.id == message.id {
                    return Ok(true);
                }
                last = k.value().2;
            }
            let meta = HeldMeta {
                id: message.id.clone(),
                topic: message.topic.clone(),
                headers: message.headers.clone(),
            };
            let meta = serde_json::to_string(&meta)?;
            let value: Held = (meta.as_str(), message.payload.as_slice());
            held.insert((flow, key, last + 1), value)?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// The parked keys of `flow`, with their message counts.
    pub fn parked_keys(&self, flow: &str) -> anyhow::Result<Vec<ParkedKey>> {
        let tx = self.db.begin_read()?;
        let keys = tx.open_table(PARKED_KEYS)?;
        let held = tx.open_table(PARKED)?;
        let mut out = Vec::new();
        for entry in keys.range((flow, "")..)? {
            let (k, v) = entry?;
            let (f, key) = k.value();
            if f != flow {
                break;
            }
            let entry: KeyEntry = serde_json::from_str(v.value())?;
            let messages = held.range((flow, key, 0)..=(flow, key, u64::MAX))?.count() as u64;
            out.push(ParkedKey {
                key: key.to_string(),
                since: entry.since,
                released: entry.released,
                messages,
            });
        }
        Ok(out)
    }

    /// The messages held for `key`, in order.
    pub fn held_messages(&self, flow: &str, key: &str) -> anyhow::Result<Vec<HeldMessage>> {
        let tx = self.db.begin_read()?;
        let held = tx.open_table(PARKED)?;
        let mut out = Vec::new();
        for entry in held.range((flow, key, 0)..=(flow, key, u64::MAX))? {
            let (k, v) = entry?;
            let (meta, payload) = v.value();
            let meta: HeldMeta = serde_json::from_str(meta)?;
            out.push(HeldMessage {
                seq: k.value().2,
                message: InboundMessage {
                    id: meta.id,
                    topic: meta.topic,
                    payload: payload.to_vec(),
                    headers: meta.headers,
                    attempt: 1,
                    enqueued_at: None,
                    undecodable: None,
                },
            });
        }
        Ok(out)
    }

    /// Whether message `seq` of `key` is still held.
    pub fn is_held(&self, flow: &str, key: &str, seq: u64) -> anyhow::Result<bool> {
        let tx = self.db.begin_read()?;
        Ok(tx.open_table(PARKED)?.get((flow, key, seq))?.is_some())
    }

    /// Forgets held message `seq` of `key`: it was handled.
    pub fn unhold(&self, flow: &str, key: &str, seq: u64) -> anyhow::Result<()> {
        let tx = self.db.begin_write()?;
        tx.open_table(PARKED)?.remove((flow, key, seq))?;
        tx.commit()?;
        Ok(())
    }

    /// Marks `keys` of `flow` (every parked key when `None`) released; the
    /// keys that were parked and not released yet.
    pub fn release_keys(&self, flow: &str, key: Option<&str>) -> anyhow::Result<Vec<ParkedKey>> {
        let chosen: Vec<ParkedKey> = self
            .parked_keys(flow)?
            .into_iter()
            .filter(|k| !k.released && key.is_none_or(|key| k.key == key))
            .collect();
        let tx = self.db.begin_write()?;
        {
            let mut keys = tx.open_table(PARKED_KEYS)?;
            for k in &chosen {
                let entry = KeyEntry {
                    since: k.since.clone(),
                    released: true,
                };
                keys.insert(
                    (flow, k.key.as_str()),
                    serde_json::to_string(&entry)?.as_str(),
                )?;
            }
        }
        tx.commit()?;
        Ok(chosen)
    }

    /// Ends the release of `key` once none of its messages is held: the
    /// key is not parked any more. `Ok(false)` if messages are still held
    /// or it was parked again.
    pub fn finish_release(&self, flow: &str, key: &str) -> anyhow::Result<bool> {
        let tx = self.db.begin_write()?;
        {
            let mut keys = tx.open_table(PARKED_KEYS)?;
            let released = match keys.get((flow, key))? {
                Some(v) => serde_json::from_str::<KeyEntry>(v.value())?.released,
                None => return Ok(true),
            };
            let held = tx.open_table(PARKED)?;
            if !released
                || held
                    .range((flow, key, 0)..=(flow, key, u64::MAX))?
                    .next()
                    .is_some()
            {
                return Ok(false);
            }
            keys.remove((flow, key))?;
        }
        tx.commit()?;
        Ok(true)
    }

    /// Unparks `key` of `flow` (every parked key when `None`) and deletes
    /// its held messages; the keys dropped, with the messages deleted.
    pub fn drop_keys(&self, flow: &str, key: Option<&str>) -> anyhow::Result<Vec<ParkedKey>> {
        let chosen: Vec<ParkedKey> = self
            .parked_keys(flow)?
            .into_iter()
            .filter(|k| key.is_none_or(|key| k.key == key))
            .collect();
        let tx = self.db.begin_write()?;
        {
            let mut keys = tx.open_table(PARKED_KEYS)?;
            let mut held = tx.open_table(PARKED)?;
            for k in &chosen {
                let key = k.key.as_str();
                keys.remove((flow, key))?;
                held.retain_in((flow, key, 0)..=(flow, key, u64::MAX), |_, _| false)?;
            }
        }
        tx.commit()?;
        Ok(chosen)
    }
}
