//! Outgoing HTTP (`wasi:http/outgoing-handler`) for algorithms, denied
//! unless granted.
//!
//! Every request goes through [`Hooks`], wasmtime-wasi-http's send-request
//! hook, which is the boundary: it checks the request against the
//! algorithm's granted origins (`policy`), resolves the name itself, checks
//! every address it will connect to, and connects to a checked address
//! (`send`), so DNS rebinding cannot swap it. Redirects are returned to the
//! algorithm, never followed here: a follow-up request is a new request and
//! is checked again. Limits per invocation: requests, bytes sent and
//! received, a per-request timeout within the invocation's. A refusal
//! reaches the algorithm as `HTTP-request-denied`, is counted per algorithm
//! and logged.

mod policy;
mod send;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::{Duration, Instant};

use wasmtime_wasi_http::{Error as HttpError, WasiBody, WasiHttpHooks};

pub use policy::{Denial, Origin, OriginError, Policy, Target, TargetHost, canonical, is_public};

use crate::metrics::{OutboundDenialLabels, OutboundMetrics};
use crate::telemetry::trace::TraceContext;

/// The granted origins of every algorithm (`owner/name`), and the admin
/// listener's address; shared by the sandbox and the router, which
/// replaces them when the configuration changes.
#[derive(Default)]
pub struct OutboundGrants {
    origins: RwLock<HashMap<String, Arc<[Origin]>>>,
    admin: RwLock<Option<SocketAddr>>,
    metrics: OutboundMetrics,
    tls: OnceLock<Arc<rustls::ClientConfig>>,
}

impl OutboundGrants {
    /// Replaces every grant: `owner/name` and its origins.
    pub fn replace(&self, grants: impl IntoIterator<Item = (String, Vec<Origin>)>) {
        let table = grants
            .into_iter()
            .map(|(alg, origins)| (alg, origins.into()))
            .collect();
        *self.origins.write().unwrap_or_else(|p| p.into_inner()) = table;
    }

    /// Closes the admin listener's address to algorithms.
    pub fn protect(&self, admin: SocketAddr) {
        *self.admin.write().unwrap_or_else(|p| p.into_inner()) = Some(admin);
    }

    /// The counters and histograms of outgoing requests, to register with
    /// the router's metrics.
    pub fn metrics(&self) -> &OutboundMetrics {
        &self.metrics
    }

    /// The policy of `owner/name` now: its own grant and its owner's
    /// (`owner/*`).
    fn policy(&self, algorithm: &str) -> Policy {
        let table = self.origins.read().unwrap_or_else(|p| p.into_inner());
        let owner_wide = algorithm
            .split_once('/')
            .map(|(owner, _)| format!("{owner}/*"))
            .unwrap_or_default();
        let origins = [algorithm, owner_wide.as_str()]
            .iter()
            .filter_map(|k| table.get(*k))
            .flat_map(|o| o.iter().cloned())
            .collect();
        Policy {
            origins,
            admin: *self.admin.read().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// The TLS client configuration: the system's root certificates (the
    /// Mozilla roots where the system has none), loaded once.
    fn tls(&self) -> Arc<rustls::ClientConfig> {
        self.tls.get_or_init(send::tls_config).clone()
    }
}

/// The limits of one invocation's outgoing requests.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// Requests it may send.
    pub max_requests: u32,
    /// Request body bytes it may send, over all its requests.
    pub max_request_bytes: u64,
    /// Response body bytes it may receive, over all its requests.
    pub max_response_bytes: u64,
    /// How long one request may take, from connecting to the last byte of
    /// the response; never past the invocation's own timeout.
    pub timeout: Duration,
}

/// What one invocation has used of its [`HttpLimits`].
#[derive(Default)]
struct Budget {
    requests: AtomicU32,
    sent: AtomicU64,
    received: AtomicU64,
}

/// The context of one invocation's requests, shared with their futures.
struct Call {
    grants: Arc<OutboundGrants>,
    /// The algorithm's grants, read at its first request: most
    /// invocations send none, and the lookup is not free.
    policy: OnceLock<Policy>,
    /// `owner/name`, the metrics' label.
    algorithm: Arc<str>,
    /// `owner/name@version#hash`, for log lines.
    label: Arc<str>,
    flow: Arc<str>,
    message_id: String,
    /// The message's `traceparent` header, if it had one.
    incoming_traceparent: Option<String>,
    /// Sent with every request so the trace continues; made at the first.
    traceparent: OnceLock<String>,
    limits: HttpLimits,
    /// When the invocation times out.
    deadline: Instant,
    budget: Budget,
    /// A shadow invocation: every request is refused, since its effects on
    /// the world could not be taken back.
    shadow: bool,
}

/// The send-request hook of one invocation: the store data's
/// [`WasiHttpHooks`].
pub struct Hooks {
    call: Arc<Call>,
}

/// Who sends one invocation's requests, and under which limits.
pub struct HooksFor<'a> {
    /// `owner/name`.
    pub algorithm: Arc<str>,
    /// The version's label, for log lines.
    pub label: Arc<str>,
    /// The flow, for log lines.
    pub flow: Arc<str>,
    /// The message, for log lines.
    pub message_id: &'a str,
    /// The message's `traceparent` header: requests continue its trace
    /// (or start one without it).
    pub traceparent: Option<&'a str>,
    /// The limits.
    pub limits: HttpLimits,
    /// When the invocation times out.
    pub deadline: Instant,
}

impl Hooks {
    /// The hooks of one invocation, under the grants in force at its
    /// first request.
    pub fn new(grants: &Arc<OutboundGrants>, who: HooksFor<'_>) -> Self {
        Self {
            call: Arc::new(Call {
                grants: grants.clone(),
                policy: OnceLock::new(),
                algorithm: who.algorithm,
                label: who.label,
                flow: who.flow,
                message_id: who.message_id.to_string(),
                incoming_traceparent: who.traceparent.map(str::to_string),
                traceparent: OnceLock::new(),
                limits: who.limits,
                deadline: who.deadline,
                budget: Budget::default(),
                shadow: false,
            }),
        }
    }

    /// The hooks of a shadow invocation: like [`Hooks::new`], but every
    /// request is refused (counted and logged as `shadow`), whatever the
    /// grants: a request may change something outside the router, and a
    /// shadow's effects are never to be applied.
    pub fn for_shadow(grants: &Arc<OutboundGrants>, who: HooksFor<'_>) -> Self {
        let mut hooks = Self::new(grants, who);
        if let Some(call) = Arc::get_mut(&mut hooks.call) {
            call.shadow = true;
        }
        hooks
    }
}

impl Call {
    /// Counts and logs a refused request; the algorithm sees `error`.
    fn deny(
        &self,
        target: Option<&Target>,
        denial: &str,
        why: String,
        error: HttpError,
    ) -> HttpError {
        self.grants
            .metrics
            .denied
            .get_or_create(&OutboundDenialLabels {
                algorithm: self.algorithm.to_string(),
                reason: denial.to_string(),
            })
            .inc();
        tracing::warn!(
            flow = %self.flow,
            algorithm = %self.label,
            message_id = %self.message_id,
            host = %target.map(|t| t.host.to_string()).unwrap_or_default(),
            port = target.map(|t| t.port).unwrap_or_default(),
            reason = denial,
            why = %why,
            "Algorithm's HTTP request was refused."
        );
        error
    }

    /// The checks that need no I/O: the request count and the origin.
    fn admit(&self, uri: &http::Uri) -> Result<Target, HttpError> {
        if self.shadow {
            let why = "a shadow invocation sends no HTTP requests".to_string();
            return Err(self.deny(None, "shadow", why, HttpError::HttpRequestDenied));
        }
        let n = self.budget.requests.fetch_add(1, Ordering::Relaxed) + 1;
        if n > self.limits.max_requests {
            let why = format!(
                "the invocation may send {} requests",
                self.limits.max_requests
            );
            return Err(self.deny(None, "limit", why, HttpError::ConnectionLimitReached));
        }
        let Some(target) = Target::of(uri) else {
            let why = "the request has no http(s) scheme and host".to_string();
            return Err(self.deny(None, "invalid", why, HttpError::HttpRequestUriInvalid));
        };
        if let Err(denial) = self.policy().check_origin(&target) {
            let error = HttpError::HttpRequestDenied;
            return Err(self.deny(Some(&target), "not_granted", denial.to_string(), error));
        }
        Ok(target)
    }

    /// The algorithm's grants, read at its first request.
    fn policy(&self) -> &Policy {
        self.policy
            .get_or_init(|| self.grants.policy(&self.algorithm))
    }

    /// The `traceparent` its requests carry: the message's trace continued,
    /// the same for every request of the invocation.
    fn traceparent(&self) -> &str {
        self.traceparent.get_or_init(|| {
            TraceContext::for_message(self.incoming_traceparent.as_deref()).traceparent()
        })
    }

    /// How long a request started now may take.
    fn request_timeout(&self) -> Duration {
        self.limits
            .timeout
            .min(self.deadline.saturating_duration_since(Instant::now()))
    }
}

type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;
type SendFuture =
    Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), HttpError>> + Send>;

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: IoFuture,
    ) -> SendFuture {
        let call = self.call.clone();
        let admitted = call.admit(request.uri());
        Box::new(async move {
            let target = admitted?;
            send::send(call, request, target).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hooks(grants: &Arc<OutboundGrants>, shadow: bool) -> Hooks {
        let who = HooksFor {
            algorithm: "ezra/enrich".into(),
            label: "ezra/enrich@0.2.0#0".into(),
            flow: "f".into(),
            message_id: "m-1",
            traceparent: None,
            limits: HttpLimits {
                max_requests: 4,
                max_request_bytes: 1 << 20,
                max_response_bytes: 1 << 20,
                timeout: Duration::from_secs(5),
            },
            deadline: Instant::now() + Duration::from_secs(5),
        };
        if shadow {
            Hooks::for_shadow(grants, who)
        } else {
            Hooks::new(grants, who)
        }
    }

    #[test]
    fn a_shadow_invocation_sends_nothing_even_to_a_granted_origin() {
        let grants = Arc::new(OutboundGrants::default());
        let origin: Origin = "https://api.example.com".parse().unwrap();
        grants.replace([("ezra/enrich".to_string(), vec![origin])]);
        let uri: http::Uri = "https://api.example.com/v1".parse().unwrap();
        assert!(hooks(&grants, false).call.admit(&uri).is_ok());
        assert!(matches!(
            hooks(&grants, true).call.admit(&uri),
            Err(HttpError::HttpRequestDenied)
        ));
    }
}
