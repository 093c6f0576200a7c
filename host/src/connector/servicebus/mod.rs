//! Azure Service Bus queues over the REST API (`azure_messaging_servicebus`,
//! the REST-based crate).
//!
//! Peek-lock receives, complete (delete) once effects are durable, abandon
//! (unlock) for retries, lock renewal while an invocation runs. The receive
//! count is the broker's `DeliveryCount`. The crate talks to
//! `https://NS.servicebus.windows.net`; an `endpoint` sends the same requests
//! elsewhere through its pluggable HTTP client.

mod config;
mod sink;
mod source;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::{HttpClient, Request, Response, Url};
use azure_messaging_servicebus::service_bus::QueueClient;

pub use config::{ConnectionString, ServiceBusConfig};

use super::{ConnectContext, Connection, PublishError, Source, SourceOptions};
use crate::connector::TopicSpec;
use crate::message::InboundMessage;
use crate::secret::Secret;

/// The largest message body the Standard tier takes.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Sends the crate's requests to another endpoint and bounds their time.
#[derive(Debug)]
struct Transport {
    inner: Arc<dyn HttpClient>,
    endpoint: Option<Url>,
    timeout: Duration,
}

#[async_trait]
impl HttpClient for Transport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<Response> {
        let mut request = request.clone();
        if let Some(endpoint) = &self.endpoint {
            let url = request.url_mut();
            // The scheme, host and port change; the path (what the request
            // is about) and the signature (over the original URL) stay.
            let _ = url.set_scheme(endpoint.scheme());
            let _ = url.set_host(endpoint.host_str());
            let _ = url.set_port(endpoint.port_or_known_default());
        }
        match tokio::time::timeout(self.timeout, self.inner.execute_request(&request)).await {
            Ok(r) => r,
            Err(_) => Err(azure_core::Error::message(
                azure_core::error::ErrorKind::Io,
                format!("no answer within {:?}", self.timeout),
            )),
        }
    }
}

/// What an HTTP status from Service Bus means, in words an operator can
/// act on.
pub(crate) fn status_meaning(code: u16) -> String {
    match code {
        401 => "authentication failed (401 Unauthorized): check SharedAccessKeyName and SharedAccessKey".into(),
        403 => "not authorized (403): the shared access policy lacks Listen or Send rights".into(),
        404 => "the queue does not exist (404)".into(),
        410 => "the message lock was lost (410): it expired and the message was redelivered".into(),
        code => format!("the service answered {code}"),
    }
}

/// What a failed REST call means, in words an operator can act on.
pub(crate) fn describe(e: &azure_core::Error) -> String {
    if let azure_core::error::ErrorKind::HttpResponse { status, .. } = e.kind() {
        return status_meaning(u16::from(*status));
    }
    format!("{e}")
}

/// A connection to one Service Bus namespace.
pub struct ServiceBusConnection {
    name: String,
    namespace: String,
    key_name: String,
    key: Secret,
    http: Arc<dyn HttpClient>,
    config: ServiceBusConfig,
}

impl ServiceBusConnection {
    /// Resolves and parses the connection string; nothing is sent yet.
    pub async fn open(config: &ServiceBusConfig, ctx: &ConnectContext) -> anyhow::Result<Self> {
        let raw = config.connection_string.resolve(ctx.state.as_ref())?;
        let parsed = ConnectionString::parse(raw.expose())
            .map_err(|why| anyhow::anyhow!("connection_string: {why}"))?;
        let endpoint = config
            .endpoint
            .as_deref()
            .map(Url::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("endpoint: {e}"))?;
        let http: Arc<dyn HttpClient> = Arc::new(Transport {
            inner: azure_core::new_http_client(),
            endpoint,
            timeout: Duration::from_secs(config.request_timeout_secs + config.receive_wait_secs),
        });
        Ok(Self {
            name: config.name.clone(),
            namespace: parsed.namespace,
            key_name: parsed.key_name,
            key: parsed.key,
            http,
            config: config.clone(),
        })
    }

    fn queue(&self, queue: &str) -> anyhow::Result<QueueClient> {
        QueueClient::new(
            self.http.clone(),
            self.namespace.clone(),
            queue.to_string(),
            self.key_name.clone(),
            self.key.expose().to_string(),
        )
        .map_err(|e| anyhow::anyhow!("cannot build a client for queue {queue}: {e}"))
    }
}

#[async_trait]
impl Connection for ServiceBusConnection {
    async fn source(
        &self,
        topic: &TopicSpec,
        options: &SourceOptions,
    ) -> anyhow::Result<Box<dyn Source>> {
        let client = self.queue(topic.address())?;
        Ok(Box::new(
            source::ServiceBusSource::open(client, &self.name, &self.config, topic, options)
                .await?,
        ))
    }

    async fn publish(
        &self,
        topic: &TopicSpec,
        messages: Vec<crate::message::OutboundMessage>,
    ) -> Result<(), PublishError> {
        let client = self.queue(topic.address())?;
        sink::publish(&client, &self.name, topic, messages).await
    }

    fn max_payload_bytes(&self) -> usize {
        MAX_BODY_BYTES
    }

    async fn check(&self) -> Result<(), String> {
        // Reaching the endpoint is what readiness needs; credentials are
        // checked when a flow opens its queue.
        let (host, port) = match &self.config.endpoint {
            Some(e) => {
                let url = Url::parse(e).map_err(|e| e.to_string())?;
                (
                    url.host_str().unwrap_or_default().to_string(),
                    url.port_or_known_default().unwrap_or(443),
                )
            }
            None => (format!("{}.servicebus.windows.net", self.namespace), 443),
        };
        crate::connector::tcp_reachable(&host, port).await
    }

    async fn peek(&self, topic: &TopicSpec, max: usize) -> anyhow::Result<Vec<InboundMessage>> {
        source::peek(&self.queue(topic.address())?, topic, max).await
    }

    async fn remove(&self, topic: &TopicSpec, id: &str) -> anyhow::Result<bool> {
        source::remove(&self.queue(topic.address())?, id).await
    }
}

/// Opens a connection, for [`super::connect`].
pub async fn open(
    config: &ServiceBusConfig,
    ctx: &ConnectContext,
) -> anyhow::Result<Arc<dyn Connection>> {
    Ok(Arc::new(ServiceBusConnection::open(config, ctx).await?))
}
