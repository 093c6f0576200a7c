//! The flow's Kafka consumer: creating it in the flow's group, following
//! its assignments through rebalances, and the background task that polls
//! it into the partition buffers, pausing at the high-water mark and
//! reporting lag.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::message::Message;
use rdkafka::{ClientContext, Offset};
use tokio_util::sync::CancellationToken;

use super::client_config;
use super::offsets::{Partition, Pending, Shared};
use crate::connector::{SourceOptions, TopicSpec};
use crate::metrics::PartitionLabels;

/// Tracks assignments for the flow's consumer.
pub(super) struct FlowContext {
    shared: Arc<Shared>,
    flow: String,
}

impl ClientContext for FlowContext {}

impl ConsumerContext for FlowContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            // Commit what is settled before the partitions go.
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(())
                | Err(rdkafka::error::KafkaError::ConsumerCommit(
                    rdkafka::types::RDKafkaErrorCode::NoOffset,
                )) => {}
                Err(e) => {
                    tracing::warn!(flow = %self.flow, error = %e, "Could not commit on revoke.")
                }
            }
            let mut state = self.shared.lock();
            for elem in tpl.elements() {
                if let Some(p) = state.partitions.remove(&elem.partition()) {
                    for pending in &p.buffer {
                        state.unbuffer(pending);
                    }
                }
            }
            if state.partitions.is_empty() {
                state.unassigned_since = Some(std::time::Instant::now());
            }
            let left = state.partitions.len();
            drop(state);
            tracing::info!(flow = %self.flow, partitions = tpl.count(), left, "Kafka partitions revoked.");
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut state = self.shared.lock();
            state.generation += 1;
            state.paused = false;
            state.unassigned_since = None;
            let generation = state.generation;
            for elem in tpl.elements() {
                state
                    .partitions
                    .insert(elem.partition(), Partition::new(generation));
            }
            tracing::info!(flow = %self.flow, partitions = tpl.count(), "Kafka partitions assigned.");
        }
        self.shared.notify.notify_waiters();
    }
}

pub(super) type FlowConsumer = StreamConsumer<FlowContext>;

/// How often the consumer refreshes the topic's metadata, unless the
/// broker's `properties` say otherwise: 30 s instead of librdkafka's 5 min.
/// A topic deleted and created again (or a broker that came back empty)
/// has a new topic id, and librdkafka 2.12 fetches by id: by its code
/// (`rdkafka_fetcher.c`, "UNKTOPIC ... ignoring") it drops the replies to
/// its old id without an error until a metadata refresh tells it the new
/// one, so the flow would stall silently that long. Read in the code, not
/// seen in a trace: the stall of `tests/kafka.rs` that this explains did
/// not reproduce outside CI.
const METADATA_REFRESH_MS: u32 = 30_000;

/// Creates the flow's consumer in its group (offsets stored only when
/// settled, committed every second) and subscribes it to the topic.
pub(super) fn subscribe(
    connection: &str,
    properties: &[(String, String)],
    shared: &Arc<Shared>,
    topic: &TopicSpec,
    options: &SourceOptions,
) -> anyhow::Result<FlowConsumer> {
    let mut config = client_config(properties);
    config
        .set("group.id", &options.group_id)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    if !properties.iter().any(|(k, _)| k == "auto.offset.reset") {
        config.set("auto.offset.reset", "earliest");
    }
    if !properties
        .iter()
        .any(|(k, _)| k == "topic.metadata.refresh.interval.ms")
    {
        config.set(
            "topic.metadata.refresh.interval.ms",
            METADATA_REFRESH_MS.to_string(),
        );
    }
    let consumer: FlowConsumer = config
        .create_with_context(FlowContext {
            shared: shared.clone(),
            flow: options.flow.clone(),
        })
        .map_err(|e| {
            anyhow::anyhow!(
                "broker connection {connection:?} (kafka): cannot create a consumer: {e}"
            )
        })?;
    consumer.subscribe(&[topic.address()]).map_err(|e| {
        anyhow::anyhow!(
            "broker connection {connection:?} (kafka): cannot subscribe to {}: {e}",
            topic.address()
        )
    })?;
    Ok(consumer)
}

/// Polls the consumer into the partition buffers until `stop`: pauses the
/// partitions at the high-water mark, reports lag every ten seconds, and
/// rides out consumer errors (librdkafka reconnects by itself).
pub(super) async fn poll(
    consumer: Arc<FlowConsumer>,
    shared: Arc<Shared>,
    flow: String,
    topic: String,
    metrics: Option<Arc<crate::metrics::Metrics>>,
    stop: CancellationToken,
) {
    let mut lag = tokio::time::interval(Duration::from_secs(10));
    let mut failures = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = lag.tick() => {
                if let Some(m) = &metrics {
                    report_lag(&consumer, &flow, &topic, m).await;
                }
            }
            received = consumer.recv() => match received {
                Ok(m) => {
                    failures = 0;
                    let owned = m.detach();
                    let pause = {
                        let mut state = shared.lock();
                        let partition = owned.partition();
                        let pending = Pending { message: owned, attempt: None, placed: false };
                        let bytes = pending.bytes();
                        match state.partitions.get_mut(&partition) {
                            Some(p) => {
                                p.buffer.push_back(pending);
                                state.buffered += 1;
                                state.buffered_bytes += bytes;
                            }
                            None => {
                                // Not (or no longer) ours: the owner reads it.
                            }
                        }
                        let pause = !state.paused && state.over_high_water();
                        if pause {
                            state.paused = true;
                        }
                        pause
                    };
                    shared.notify.notify_waiters();
                    if pause {
                        set_paused(&consumer, true, &flow);
                    }
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 || failures.is_power_of_two() {
                        tracing::warn!(flow = %flow, topic = %topic, error = %e, "Kafka consumer error; it retries by itself.");
                    }
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }
}

pub(super) fn set_paused(consumer: &FlowConsumer, pause: bool, flow: &str) {
    let Ok(assignment) = consumer.assignment() else {
        return;
    };
    let result = if pause {
        consumer.pause(&assignment)
    } else {
        consumer.resume(&assignment)
    };
    match result {
        Ok(()) => {
            tracing::debug!(flow = %flow, paused = pause, "Kafka partitions paused or resumed.")
        }
        Err(e) => {
            tracing::warn!(flow = %flow, error = %e, "Could not pause or resume Kafka partitions.")
        }
    }
}

/// Sets `eventflow_consumer_lag` for each assigned partition: the high
/// watermark minus the consumer's position.
async fn report_lag(
    consumer: &Arc<FlowConsumer>,
    flow: &str,
    topic: &str,
    metrics: &crate::metrics::Metrics,
) {
    let c = consumer.clone();
    let t = topic.to_string();
    let lags = tokio::task::spawn_blocking(move || {
        let Ok(position) = c.position() else {
            return Vec::new();
        };
        position
            .elements()
            .iter()
            .filter(|e| e.topic() == t)
            .filter_map(|e| {
                let (_, high) = c
                    .fetch_watermarks(&t, e.partition(), Duration::from_secs(2))
                    .ok()?;
                let lag = match e.offset() {
                    Offset::Offset(o) => (high - o).max(0),
                    _ => high,
                };
                Some((e.partition(), lag))
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap_or_default();
    for (partition, lag) in lags {
        metrics
            .consumer_lag
            .get_or_create(&PartitionLabels {
                flow: flow.to_string(),
                topic: topic.to_string(),
                partition: partition.to_string(),
            })
            .set(lag);
    }
}
