//! Consuming from the embedded broker.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::config::TopicSpec;
use crate::connector::{Delivery, Settle, Source, SourceOptions};

use super::Store;
use super::store::Lease;

/// How long one `receive` waits for a message before it returns empty.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

/// A consumer of one embedded topic.
pub struct EmbeddedSource {
    store: Arc<Store>,
    address: String,
    name: String,
    lease: Duration,
}

impl EmbeddedSource {
    pub fn new(store: Arc<Store>, topic: &TopicSpec, options: &SourceOptions) -> Self {
        Self {
            store,
            address: topic.address().to_string(),
            name: topic.name.clone(),
            lease: options.lease,
        }
    }
}

#[async_trait]
impl Source for EmbeddedSource {
    async fn receive(&mut self, max: usize) -> anyhow::Result<Vec<Delivery>> {
        let leased = self
            .store
            .receive(&self.address, max, self.lease, POLL_INTERVAL)
            .await?;
        Ok(leased
            .into_iter()
            .map(|(mut message, lease)| {
                message.topic = self.name.clone();
                Delivery {
                    message,
                    settle: Box::new(EmbeddedSettle {
                        store: self.store.clone(),
                        lease,
                    }),
                }
            })
            .collect())
    }
}

struct EmbeddedSettle {
    store: Arc<Store>,
    lease: Lease,
}

#[async_trait]
impl Settle for EmbeddedSettle {
    async fn ack(&mut self) -> anyhow::Result<()> {
        Ok(self.store.ack(&self.lease).await?)
    }

    async fn retry(&mut self, delay: Duration) -> anyhow::Result<()> {
        Ok(self.store.release(&self.lease, delay).await?)
    }

    async fn extend(&mut self, lease: Duration) -> anyhow::Result<()> {
        Ok(self.store.extend(&self.lease, lease).await?)
    }

    fn heartbeat(&self) -> Option<Duration> {
        Some(self.lease.duration / 3)
    }
}
