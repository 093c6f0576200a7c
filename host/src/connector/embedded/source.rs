//! Consuming from the embedded broker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::connector::TopicSpec;
use crate::connector::{Delivery, LocalStore, PublishError, Settle, Source, SourceOptions};
use crate::message::OutboundMessage;

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
    max_payload_bytes: usize,
}

impl EmbeddedSource {
    pub fn new(
        store: Arc<Store>,
        topic: &TopicSpec,
        options: &SourceOptions,
        max_payload_bytes: usize,
    ) -> Self {
        Self {
            store,
            address: topic.address().to_string(),
            name: topic.name.clone(),
            lease: options.lease,
            max_payload_bytes,
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
        // The store granted these leases just now (at the latest).
        let leased_at = Instant::now();
        Ok(leased
            .into_iter()
            .map(|(mut message, lease)| {
                message.topic = self.name.clone();
                Delivery {
                    message,
                    settle: Box::new(EmbeddedSettle {
                        store: self.store.clone(),
                        lease,
                        leased_at,
                        max_payload_bytes: self.max_payload_bytes,
                    }),
                }
            })
            .collect())
    }
}

struct EmbeddedSettle {
    store: Arc<Store>,
    lease: Lease,
    /// When the lease was granted or last extended.
    leased_at: Instant,
    max_payload_bytes: usize,
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
        let asked = Instant::now();
        self.store.extend(&self.lease, lease).await?;
        self.leased_at = asked;
        Ok(())
    }

    fn heartbeat(&self) -> Option<Duration> {
        Some(self.lease.duration / 3)
    }

    fn leased_since(&self) -> Option<Instant> {
        Some(self.leased_at)
    }

    fn local_store(&self) -> Option<LocalStore> {
        Some(LocalStore::of(&self.store))
    }

    async fn ack_with(
        &mut self,
        outputs: Vec<(TopicSpec, Vec<OutboundMessage>)>,
    ) -> Result<(), PublishError> {
        super::sink::check_sizes(outputs.iter().flat_map(|(_, m)| m), self.max_payload_bytes)?;
        let outputs = outputs
            .into_iter()
            .map(|(topic, messages)| (topic.address().to_string(), messages))
            .collect();
        self.store
            .settle(&self.lease, outputs)
            .await
            .map_err(|e| PublishError::Broker(e.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::OutboundMessage;

    /// A delivery says when its lease began and when it was last extended,
    /// so the worker's first heartbeat counts from the receive, not from
    /// when the message found a free slot.
    #[tokio::test]
    async fn a_delivery_knows_when_its_lease_began_and_was_renewed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("s.redb")).unwrap());
        let message = OutboundMessage {
            payload: b"m".to_vec(),
            headers: Vec::new(),
        };
        store.publish("t", vec![message]).await.unwrap();
        let mut source = EmbeddedSource {
            store: store.clone(),
            address: "t".into(),
            name: "t".into(),
            lease: Duration::from_secs(30),
            max_payload_bytes: 1 << 20,
        };
        let before = Instant::now();
        let mut delivery = source.receive(1).await.unwrap().pop().unwrap();
        let received = delivery.settle.leased_since().expect("a lease start");
        assert!(received >= before && received <= Instant::now());

        tokio::time::sleep(Duration::from_millis(20)).await;
        let asked = Instant::now();
        delivery
            .settle
            .extend(Duration::from_secs(30))
            .await
            .unwrap();
        let renewed = delivery.settle.leased_since().unwrap();
        assert!(renewed >= asked && renewed > received, "{renewed:?}");
        delivery.settle.ack().await.unwrap();
    }
}
