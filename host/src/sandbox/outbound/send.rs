//! Sending one admitted request: resolving its host, checking every address
//! against the policy, connecting to a checked one (TLS with the system's
//! roots for `https`), and counting what goes out and comes back.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use wasmtime_wasi_http::io::TokioIo;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

use super::policy::{Target, TargetHost};
use super::{Call, IoFuture};
use crate::metrics::OutboundLabels;

trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

/// Sends `request` to `target` under the invocation's limits, and records
/// the outcome (metrics, one debug line without headers or bodies).
pub(super) async fn send(
    call: Arc<Call>,
    request: http::Request<WasiBody>,
    target: Target,
) -> Result<(http::Response<WasiBody>, IoFuture), HttpError> {
    let started = Instant::now();
    let timeout = call.request_timeout();
    let method = request.method().clone();
    let path = request.uri().path().to_string();
    let result = match tokio::time::timeout(
        timeout,
        exchange(&call, request, &target, started + timeout),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(HttpError::ConnectionTimeout),
    };
    let status = match &result {
        Ok((response, _)) => format!("{}xx", response.status().as_u16() / 100),
        Err(_) => "error".to_string(),
    };
    let labels = OutboundLabels {
        algorithm: call.algorithm.to_string(),
        host: target.host.to_string(),
        status: status.clone(),
    };
    let metrics = &call.grants.metrics;
    metrics.requests.get_or_create(&labels).inc();
    metrics
        .duration_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    tracing::debug!(
        flow = %call.flow,
        algorithm = %call.label,
        message_id = %call.message_id,
        method = %method,
        scheme = if target.https { "https" } else { "http" },
        host = %target.host,
        port = target.port,
        path = %path,
        status = %status,
        error = %result.as_ref().err().map(|e| e.to_string()).unwrap_or_default(),
        duration_ms = started.elapsed().as_millis() as u64,
        "Algorithm sent an HTTP request."
    );
    result
}

/// Connects, sends the request and waits for the response head. The
/// response body stays readable until `deadline`.
async fn exchange(
    call: &Arc<Call>,
    mut request: http::Request<WasiBody>,
    target: &Target,
    deadline: Instant,
) -> Result<(http::Response<WasiBody>, IoFuture), HttpError> {
    let addrs = checked_addresses(call, target).await?;
    let tcp = connect(&addrs).await?;
    let stream: Box<dyn Stream> = if target.https {
        let name = match &target.host {
            TargetHost::Name(n) => rustls::pki_types::ServerName::try_from(n.clone())
                .map_err(HttpError::InvalidDnsNameError)?,
            TargetHost::Ip(ip) => rustls::pki_types::ServerName::from(*ip),
        };
        let connector = tokio_rustls::TlsConnector::from(call.grants.tls());
        Box::new(connector.connect(name, tcp).await.map_err(HttpError::Tls)?)
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await?;
    // Only the path goes on the wire; the Host header names the origin.
    let path = request
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    *request.uri_mut() = http::Uri::builder()
        .path_and_query(path)
        .build()
        .map_err(|_| HttpError::HttpRequestUriInvalid)?;
    if let Ok(value) = http::HeaderValue::from_str(call.traceparent()) {
        request.headers_mut().insert("traceparent", value);
    }
    let request = request.map(|body| {
        Counted {
            inner: body,
            call: call.clone(),
            sending: true,
            deadline: None,
        }
        .boxed_unsync()
    });
    let mut conn = Box::pin(conn);
    let response = sender.send_request(request);
    tokio::pin!(response);
    let (response, conn_done) = tokio::select! {
        r = &mut response => (r, false),
        c = &mut conn => {
            c?;
            (response.await, true)
        }
    };
    let response = response?.map(|body| {
        Counted {
            inner: body.map_err(HttpError::from).boxed_unsync(),
            call: call.clone(),
            sending: false,
            deadline: Some(Box::pin(tokio::time::sleep_until(deadline.into()))),
        }
        .boxed_unsync()
    });
    let io: IoFuture = if conn_done {
        Box::new(async { Ok(()) })
    } else {
        Box::new(async move { conn.await.map_err(HttpError::from) })
    };
    Ok((response, io))
}

/// The addresses of `target` the policy allows, resolved once here: the
/// connection goes to one of them and nowhere else.
async fn checked_addresses(call: &Call, target: &Target) -> Result<Vec<SocketAddr>, HttpError> {
    let resolved: Vec<SocketAddr> = match &target.host {
        TargetHost::Ip(ip) => vec![SocketAddr::new(*ip, target.port)],
        TargetHost::Name(name) => tokio::net::lookup_host((name.as_str(), target.port))
            .await
            .map_err(|e| HttpError::DnsError {
                rcode: Some(e.to_string()),
                info_code: None,
            })?
            .collect(),
    };
    let mut allowed = Vec::new();
    let mut refused = None;
    for addr in resolved {
        match call.policy().check_address(target.https, addr) {
            Ok(()) => allowed.push(addr),
            Err(denial) => refused = refused.or(Some(denial)),
        }
    }
    match (allowed.is_empty(), refused) {
        (false, _) => Ok(allowed),
        (true, Some(denial)) => {
            let kind = match denial {
                super::Denial::Admin(_) => "admin",
                _ => "not_public",
            };
            Err(call.deny(
                Some(target),
                kind,
                denial.to_string(),
                HttpError::HttpRequestDenied,
            ))
        }
        (true, None) => Err(HttpError::DestinationNotFound),
    }
}

/// Connects to the first of `addrs` that answers.
async fn connect(addrs: &[SocketAddr]) -> Result<TcpStream, HttpError> {
    let mut last = None;
    for addr in addrs {
        match TcpStream::connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.map_or(HttpError::DestinationNotFound, HttpError::Connect))
}

/// The TLS client configuration: the system's roots, or the Mozilla roots
/// where the system has none.
pub(super) fn tls_config() -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth())
        .unwrap_or_else(|_| {
            // Unreachable: ring supports the default versions.
            rustls::ClientConfig::builder_with_protocol_versions(rustls::DEFAULT_VERSIONS)
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth()
        });
    Arc::new(config)
}

/// A request or response body, counted against the invocation's byte
/// limits; a response body also ends at the request's deadline.
struct Counted {
    inner: WasiBody,
    call: Arc<Call>,
    sending: bool,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        let this = &mut *self;
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(f) => f,
            Poll::Pending => {
                return match this.deadline.as_mut().map(|d| d.as_mut().poll(cx)) {
                    Some(Poll::Ready(())) => {
                        Poll::Ready(Some(Err(HttpError::ConnectionReadTimeout)))
                    }
                    _ => Poll::Pending,
                };
            }
        };
        if let Some(Ok(data)) = frame.as_ref().map(|f| f.as_ref().map(Frame::data_ref)) {
            let n = data.map_or(0, |d| d.len() as u64);
            let limits = &this.call.limits;
            let budget = &this.call.budget;
            let (used, limit, error): (_, _, fn(Option<u64>) -> HttpError) = if this.sending {
                (
                    &budget.sent,
                    limits.max_request_bytes,
                    HttpError::HttpRequestBodySize,
                )
            } else {
                (
                    &budget.received,
                    limits.max_response_bytes,
                    HttpError::HttpResponseBodySize,
                )
            };
            if used.fetch_add(n, Ordering::Relaxed) + n > limit {
                return Poll::Ready(Some(Err(error(Some(limit)))));
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
