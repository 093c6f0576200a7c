//! Amazon SQS: long-polled receives, deletes once effects are durable,
//! visibility changes for retries and heartbeats, batched sends.
//!
//! Semantics: the receive count is SQS's `ApproximateReceiveCount`. If the
//! queue has a redrive policy, its `maxReceiveCount` replaces the flow's
//! `max_receives` and SQS dead-letters by itself (the router still sends its
//! envelope first when the flow has a dead-letter topic).

mod config;
mod sink;
mod source;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_sqs::Client;

pub use config::SqsConfig;

use super::{ConnectContext, Connection, PublishError, Source, SourceOptions};
use crate::config::TopicSpec;
use crate::message::InboundMessage;

/// The largest body SQS takes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// A connection to SQS.
pub struct SqsConnection {
    name: String,
    client: Client,
    config: SqsConfig,
}

/// Formats an SDK error with its whole chain of causes (the SDK's own
/// `Display` says little more than "service error"), on one line. Not the
/// SDK's `DisplayErrorContext`: it appends the error's `Debug` form, raw
/// HTTP response, headers and body included, to every message.
pub(crate) fn sdk_error<E: std::error::Error>(e: E) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Wrappers often repeat their cause's text; say it once.
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}

impl SqsConnection {
    /// Builds the client. Nothing is sent until a flow opens a queue.
    pub async fn open(config: &SqsConfig, _ctx: &ConnectContext) -> anyhow::Result<Self> {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_secs(
                config.attempt_timeout_secs + u64::from(config.wait_time_secs),
            ))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(aws_config::Region::new(config.region.clone()))
            .timeout_config(timeouts);
        if let Some(url) = &config.endpoint_url {
            loader = loader.endpoint_url(url);
        }
        let mut sdk = loader.load().await;
        if let Some(role) = &config.role_arn {
            let mut provider = aws_config::sts::AssumeRoleProvider::builder(role)
                .session_name(format!("eventflow-{}", config.name))
                .configure(&sdk);
            if let Some(id) = &config.external_id {
                provider = provider.external_id(id);
            }
            let provider = provider.build().await;
            sdk = sdk
                .into_builder()
                .credentials_provider(
                    aws_credential_types::provider::SharedCredentialsProvider::new(provider),
                )
                .build();
        }
        Ok(Self {
            name: config.name.clone(),
            client: Client::new(&sdk),
            config: config.clone(),
        })
    }
}

#[async_trait]
impl Connection for SqsConnection {
    async fn source(
        &self,
        topic: &TopicSpec,
        options: &SourceOptions,
    ) -> anyhow::Result<Box<dyn Source>> {
        let source = source::SqsSource::open(
            self.client.clone(),
            &self.name,
            &self.config,
            topic,
            options,
        )
        .await?;
        Ok(Box::new(source))
    }

    async fn publish(
        &self,
        topic: &TopicSpec,
        messages: Vec<crate::message::OutboundMessage>,
    ) -> Result<(), PublishError> {
        sink::publish(&self.client, &self.name, topic, messages).await
    }

    fn max_payload_bytes(&self) -> usize {
        MAX_BODY_BYTES
    }

    async fn check(&self) -> Result<(), String> {
        let call = self.client.list_queues().max_results(1).send();
        match tokio::time::timeout(Duration::from_secs(10), call).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(sdk_error(e)),
            Err(_) => Err("SQS did not answer within 10 s".into()),
        }
    }

    async fn peek(&self, topic: &TopicSpec, max: usize) -> anyhow::Result<Vec<InboundMessage>> {
        source::peek(&self.client, topic, max).await
    }

    async fn remove(&self, topic: &TopicSpec, id: &str) -> anyhow::Result<bool> {
        source::remove(&self.client, topic, id).await
    }

    async fn list_topics(&self) -> anyhow::Result<Option<Vec<String>>> {
        let mut urls = Vec::new();
        let mut next = None;
        loop {
            let page = self
                .client
                .list_queues()
                .max_results(1000)
                .set_next_token(next)
                .send()
                .await
                .map_err(|e| anyhow::anyhow!(sdk_error(e)))
                .with_context(|| format!("cannot list the queues of {}", self.name))?;
            urls.extend(page.queue_urls().iter().cloned());
            next = page.next_token().map(str::to_string);
            if next.is_none() {
                break;
            }
        }
        Ok(Some(urls))
    }
}

/// Opens a connection, for [`super::connect`].
pub async fn open(config: &SqsConfig, ctx: &ConnectContext) -> anyhow::Result<Arc<dyn Connection>> {
    Ok(Arc::new(SqsConnection::open(config, ctx).await?))
}
