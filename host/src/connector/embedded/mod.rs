//! The embedded broker: topics in a log of segment files (a directory)
//! owned by the router process.
//!
//! Every publish, retry and ack is committed durably before it returns, many
//! at a time (group commit), so `kill -9` loses nothing that was
//! acknowledged to a publisher and drops nothing unacknowledged. Leases are
//! kept in memory; receive counts survive crashes through a per-topic
//! receive mark (see `store`). A flow whose outputs go to the same store
//! settles each message in one transaction ([`Settle::ack_with`]).
//!
//! [`Settle::ack_with`]: super::Settle::ack_with
//!
//! A damaged segment stops the start with an error naming it (or, with
//! `eventflow run --move-damaged-aside`, the directory is moved aside); a store that cannot
//! write (full disk) makes the connection not ready until it recovers by
//! itself.

mod config;
mod legacy;
mod log;
mod sink;
mod source;
mod store;

use std::sync::Arc;

use async_trait::async_trait;

pub use config::EmbeddedConfig;
pub use store::{Store, StoreError, StoreOptions};

use super::{ConnectContext, Connection, LocalStore, PublishError, Source, SourceOptions};
use crate::connector::TopicSpec;
use crate::message::{InboundMessage, OutboundMessage};

/// A connection to the embedded broker.
pub struct EmbeddedConnection {
    store: Arc<Store>,
    max_payload_bytes: usize,
}

impl EmbeddedConnection {
    /// Opens (or creates) the store, migrating a previous version's file.
    pub async fn open(config: &EmbeddedConfig, ctx: &ConnectContext) -> anyhow::Result<Self> {
        // The previous version kept the default store in one redb file
        // beside where the log directory goes now; it is migrated.
        let (path, legacy) = match &config.path {
            Some(path) => (path.clone(), None),
            None => (
                ctx.state_dir.join(format!("broker-{}", config.name)),
                Some(ctx.state_dir.join(format!("broker-{}.redb", config.name))),
            ),
        };
        let options = StoreOptions {
            damaged: ctx.damaged,
            legacy,
            ..StoreOptions::default()
        };
        let store =
            tokio::task::spawn_blocking(move || Store::open_with(&path, &options)).await??;
        Ok(Self {
            store: Arc::new(store),
            max_payload_bytes: config.max_payload_bytes,
        })
    }

    /// The store, for benchmarks and tests that drive it directly.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }
}

#[async_trait]
impl Connection for EmbeddedConnection {
    async fn source(
        &self,
        topic: &TopicSpec,
        options: &SourceOptions,
    ) -> anyhow::Result<Box<dyn Source>> {
        Ok(Box::new(source::EmbeddedSource::new(
            self.store.clone(),
            topic,
            options,
            self.max_payload_bytes,
        )))
    }

    async fn publish(
        &self,
        topic: &TopicSpec,
        messages: Vec<OutboundMessage>,
    ) -> Result<(), PublishError> {
        sink::publish(&self.store, topic, messages, self.max_payload_bytes).await
    }

    fn max_payload_bytes(&self) -> usize {
        self.max_payload_bytes
    }

    async fn check(&self) -> Result<(), String> {
        self.store.health()
    }

    async fn peek(&self, topic: &TopicSpec, max: usize) -> anyhow::Result<Vec<InboundMessage>> {
        let store = self.store.clone();
        let address = topic.address().to_string();
        let name = topic.name.clone();
        let mut messages = tokio::task::spawn_blocking(move || store.peek(&address, max)).await??;
        for m in &mut messages {
            m.topic = name.clone();
        }
        Ok(messages)
    }

    async fn remove(&self, topic: &TopicSpec, id: &str) -> anyhow::Result<bool> {
        Ok(self.store.remove_by_id(topic.address(), id).await?)
    }

    async fn list_topics(&self) -> anyhow::Result<Option<Vec<String>>> {
        let mut names: Vec<String> = self.store.depth().into_keys().collect();
        names.sort();
        Ok(Some(names))
    }

    fn local_store(&self) -> Option<LocalStore> {
        Some(LocalStore::of(&self.store))
    }

    async fn close(&self) {
        if let Err(e) = self.store.close().await {
            tracing::warn!(
                error = %e,
                "Could not write the embedded broker's receive counts at shutdown; the next start counts one more receive for the messages that were in flight."
            );
        }
    }
}
