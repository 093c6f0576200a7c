//! What an algorithm can reach: the store data of one invocation and the
//! host side of the `data`, `publish` and `log` imports (`wasi:http` is in
//! [`super::outbound`]).
//!
//! Every import counts against `max_host_calls`; going over traps with
//! [`LimitTrap::HostCalls`]. Data calls (on the blocking pool, or to a
//! bucket) run under their own timeout, because an epoch deadline cannot
//! interrupt the host. What `publish` may queue is bounded per invocation
//! (`max_publish_bytes`, headers included) and per message (header count and
//! sizes), so an algorithm cannot make the router hold more than a few
//! outputs' worth.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::ResourceTable;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::PublishRefusal;
use super::TopicResolver;
use super::bindings::imports::{data, log, publish};
use super::bindings::{WitDataError, WitLevel, WitPublishError};
use crate::data::{Collections, DataError, DataUri};
use crate::message::{Header, OutboundMessage};

/// Most bytes one `wasi:random` `get-random-bytes` or
/// `get-insecure-random-bytes` call may ask for; a larger request traps.
/// The host fills the buffer on an async worker without yielding, so the
/// limit bounds how long one call holds that worker (wasmtime's own default,
/// 64 MiB, held it for most of a second).
pub(super) const MAX_RANDOM_BYTES: u64 = 1 << 20;

/// A limit whose breach ends the invocation with a trap. Returned as the
/// trap's error so the failure can be classified precisely.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LimitTrap {
    /// The memory limit.
    #[error("tried to grow memory to {desired} bytes; the limit is {limit} bytes")]
    Memory {
        /// The size asked for.
        desired: usize,
        /// The limit.
        limit: usize,
    },
    /// The host-call limit.
    #[error("made more than {0} host calls")]
    HostCalls(u32),
}

/// Tracks and limits memory and table growth of one store.
pub struct Limiter {
    pub(super) memory_limit: usize,
    /// The largest memory size reached, in bytes.
    pub(super) peak_memory: usize,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.memory_limit {
            return Err(LimitTrap::Memory {
                desired,
                limit: self.memory_limit,
            }
            .into());
        }
        self.peak_memory = self.peak_memory.max(desired);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// The store data of one invocation.
pub struct HostState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) http: WasiHttpCtx,
    /// Where outgoing HTTP requests go, checked (`wasi:http`).
    pub(super) outbound: super::outbound::Hooks,
    pub(super) limiter: Limiter,
    pub(super) owner: String,
    pub(super) label: Arc<str>,
    pub(super) flow: Arc<str>,
    pub(super) message_id: String,
    pub(super) data: Arc<Collections>,
    pub(super) resolver: Arc<dyn TopicResolver>,
    pub(super) published: Vec<(String, OutboundMessage)>,
    /// Bytes queued by `publish` so far (payloads and headers).
    pub(super) published_bytes: u64,
    pub(super) max_publish_bytes: u64,
    /// One bit per [`PublishRefusal`] kind already logged.
    pub(super) publish_refusals_logged: u8,
    pub(super) host_calls: u32,
    pub(super) max_host_calls: u32,
    pub(super) data_written: u64,
    pub(super) max_data_write_bytes: u64,
    pub(super) host_call_timeout: Duration,
    /// A shadow invocation's data writes (`None` for a delete), by URI:
    /// kept here and read back by its own `get`s, never written to the
    /// store. `None` for a serving invocation.
    pub(super) captured_writes: Option<HashMap<String, Option<Vec<u8>>>>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for HostState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

impl HostState {
    fn count_call(&mut self) -> wasmtime::Result<()> {
        self.host_calls += 1;
        if self.host_calls > self.max_host_calls {
            return Err(LimitTrap::HostCalls(self.max_host_calls).into());
        }
        Ok(())
    }

    /// Parses `uri` and checks it belongs to the algorithm's owner.
    fn own_uri(&self, uri: &str) -> Result<DataUri, DataError> {
        let uri = DataUri::parse(uri)?;
        if uri.owner != self.owner {
            return Err(DataError::AccessDenied);
        }
        Ok(uri)
    }

    /// Runs a data operation under the host-call timeout. Takes no `&self`
    /// across the await: the store data is not `Sync`.
    fn data_call<T, F>(
        &self,
        op: impl FnOnce(Arc<Collections>) -> F,
    ) -> impl std::future::Future<Output = Result<T, DataError>> + Send + 'static
    where
        F: std::future::Future<Output = Result<T, DataError>> + Send + 'static,
    {
        let call = op(self.data.clone());
        let timeout = self.host_call_timeout;
        async move {
            tokio::time::timeout(timeout, call)
                .await
                .unwrap_or_else(|_| {
                    Err(DataError::Io(format!(
                        "host call timed out after {timeout:?}"
                    )))
                })
        }
    }
}

impl data::Host for HostState {
    async fn get(&mut self, uri: String) -> wasmtime::Result<Result<Vec<u8>, WitDataError>> {
        self.count_call()?;
        let uri = match self.own_uri(&uri) {
            Ok(u) => u,
            Err(e) => return Ok(Err(e.into())),
        };
        if let Some(captured) = self
            .captured_writes
            .as_ref()
            .and_then(|c| c.get(&uri.to_string()))
        {
            return Ok(captured.clone().ok_or_else(|| DataError::NotFound.into()));
        }
        Ok(self
            .data_call(|d| async move { d.get(&uri).await })
            .await
            .map_err(Into::into))
    }

    async fn put(
        &mut self,
        uri: String,
        contents: Vec<u8>,
    ) -> wasmtime::Result<Result<(), WitDataError>> {
        self.count_call()?;
        let uri = match self.own_uri(&uri) {
            Ok(u) => u,
            Err(e) => return Ok(Err(e.into())),
        };
        let size = contents.len() as u64;
        if self.data_written + size > self.max_data_write_bytes {
            return Ok(Err(DataError::QuotaExceeded.into()));
        }
        self.data_written += size;
        if let Some(captured) = &mut self.captured_writes {
            captured.insert(uri.to_string(), Some(contents));
            return Ok(Ok(()));
        }
        Ok(self
            .data_call(|d| async move { d.put(&uri, contents).await })
            .await
            .map_err(Into::into))
    }

    async fn list(&mut self, uri: String) -> wasmtime::Result<Result<Vec<String>, WitDataError>> {
        self.count_call()?;
        let uri = match self.own_uri(&uri) {
            Ok(u) => u,
            Err(e) => return Ok(Err(e.into())),
        };
        Ok(self
            .data_call(|d| async move { d.list(&uri).await })
            .await
            .map_err(Into::into))
    }

    async fn delete(&mut self, uri: String) -> wasmtime::Result<Result<(), WitDataError>> {
        self.count_call()?;
        let uri = match self.own_uri(&uri) {
            Ok(u) => u,
            Err(e) => return Ok(Err(e.into())),
        };
        if let Some(captured) = &mut self.captured_writes {
            captured.insert(uri.to_string(), None);
            return Ok(Ok(()));
        }
        Ok(self
            .data_call(|d| async move { d.delete(&uri).await })
            .await
            .map_err(Into::into))
    }
}

/// Headers one published message may carry.
pub const MAX_PUBLISH_HEADERS: usize = 64;
/// Longest header name of a published message, in bytes.
pub const MAX_HEADER_NAME_BYTES: usize = 256;
/// Longest header value of a published message, in bytes.
pub const MAX_HEADER_VALUE_BYTES: usize = 8 << 10;
/// Header names that only the router writes (dead-letter envelopes, trace
/// context it adds): an algorithm may not publish them.
pub const RESERVED_HEADER_PREFIX: &str = "eventflow-";

/// Why the host refused a publish before asking the flow's resolver.
#[derive(Debug, thiserror::Error)]
enum HeaderRefusal {
    #[error("{0} headers; at most {MAX_PUBLISH_HEADERS} are allowed")]
    TooMany(usize),
    #[error("a header name of {0} bytes; at most {MAX_HEADER_NAME_BYTES} are allowed")]
    NameTooLong(usize),
    #[error("header {0:?} has a value of {1} bytes; at most {MAX_HEADER_VALUE_BYTES} are allowed")]
    ValueTooLong(String, usize),
    #[error(
        "header {0:?} is reserved for the router (names starting with {RESERVED_HEADER_PREFIX:?})"
    )]
    Reserved(String),
}

impl HeaderRefusal {
    fn refusal(&self) -> PublishRefusal {
        match self {
            HeaderRefusal::Reserved(_) => PublishRefusal::AccessDenied,
            _ => PublishRefusal::TooLarge,
        }
    }
}

/// Checks the headers of one publish against the header limits.
fn check_headers(headers: &[Header]) -> Result<(), HeaderRefusal> {
    if headers.len() > MAX_PUBLISH_HEADERS {
        return Err(HeaderRefusal::TooMany(headers.len()));
    }
    for (name, value) in headers {
        if name.len() > MAX_HEADER_NAME_BYTES {
            return Err(HeaderRefusal::NameTooLong(name.len()));
        }
        if value.len() > MAX_HEADER_VALUE_BYTES {
            return Err(HeaderRefusal::ValueTooLong(name.clone(), value.len()));
        }
        let prefix = name.get(..RESERVED_HEADER_PREFIX.len());
        if prefix.is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_HEADER_PREFIX)) {
            return Err(HeaderRefusal::Reserved(name.clone()));
        }
    }
    Ok(())
}

impl HostState {
    /// Logs a refused publish at WARN, once per invocation and kind of
    /// refusal, so a loop of refused calls cannot flood the log.
    fn warn_refused(&mut self, refusal: PublishRefusal, topic: &str, why: &str) {
        let bit = 1u8 << (refusal as u8);
        if self.publish_refusals_logged & bit != 0 {
            return;
        }
        self.publish_refusals_logged |= bit;
        tracing::warn!(
            flow = %self.flow,
            algorithm = %self.label,
            message_id = %self.message_id,
            topic = %topic,
            refusal = ?refusal,
            why,
            "Algorithm's publish was refused (further refusals of this kind in this invocation are not logged)."
        );
    }
}

impl publish::Host for HostState {
    async fn send(
        &mut self,
        topic: String,
        payload: Vec<u8>,
        headers: Vec<Header>,
    ) -> wasmtime::Result<Result<(), WitPublishError>> {
        self.count_call()?;
        if let Err(why) = check_headers(&headers) {
            let refusal = why.refusal();
            self.warn_refused(refusal, &topic, &why.to_string());
            return Ok(Err(refusal.into()));
        }
        let size = payload.len()
            + headers
                .iter()
                .map(|(n, v)| n.len() + v.len())
                .sum::<usize>();
        if self.published_bytes.saturating_add(size as u64) > self.max_publish_bytes {
            let why = format!(
                "{size} more bytes would take the invocation's publishes past max_publish_bytes ({}; {} queued)",
                self.max_publish_bytes, self.published_bytes
            );
            self.warn_refused(PublishRefusal::LimitExceeded, &topic, &why);
            return Ok(Err(PublishRefusal::LimitExceeded.into()));
        }
        match self.resolver.resolve(&topic, size) {
            Ok(key) => {
                self.published_bytes += size as u64;
                self.published
                    .push((key, OutboundMessage { payload, headers }));
                Ok(Ok(()))
            }
            Err(refusal) => {
                let why = match refusal {
                    PublishRefusal::AccessDenied => "it has no grant for the topic",
                    PublishRefusal::UnknownTopic => "no such topic",
                    PublishRefusal::TooLarge => "the message is larger than the broker accepts",
                    PublishRefusal::LimitExceeded => "the invocation's publish count is used up",
                };
                self.warn_refused(refusal, &topic, why);
                Ok(Err(refusal.into()))
            }
        }
    }
}

impl log::Host for HostState {
    async fn log(&mut self, level: WitLevel, message: String) -> wasmtime::Result<()> {
        self.count_call()?;
        let message: String = message.chars().take(4096).collect();
        macro_rules! emit {
            ($lvl:expr) => {
                tracing::event!(
                    target: "algorithm",
                    $lvl,
                    flow = %self.flow,
                    algorithm = %self.label,
                    message_id = %self.message_id,
                    "{}",
                    message
                )
            };
        }
        match level {
            WitLevel::Trace => emit!(tracing::Level::TRACE),
            WitLevel::Debug => emit!(tracing::Level::DEBUG),
            WitLevel::Info => emit!(tracing::Level::INFO),
            WitLevel::Warn => emit!(tracing::Level::WARN),
            WitLevel::Error => emit!(tracing::Level::ERROR),
        }
        Ok(())
    }
}

impl super::bindings::imports::types::Host for HostState {}

impl super::bindings::batch::eventflow::algorithm0_2_0::batch::Host for HostState {}
