//! Log output: human-readable lines by default, JSON with `--log-format json`.
//! `RUST_LOG` overrides the default filter. With the `otlp` Cargo feature
//! and `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! set, the message spans are also exported over OTLP (HTTP/protobuf).

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::cli::LogFormat;

/// The default filter: our own info lines, only warnings from the engine.
const DEFAULT_FILTER: &str = "info,wasmtime=warn,cranelift=warn,wasmtime_cranelift=warn";

/// Installs the global subscriber. A second call is ignored.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (text, json) = match format {
        LogFormat::Text => (
            Some(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_writer(std::io::stderr),
            ),
            None,
        ),
        LogFormat::Json => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            ),
        ),
    };
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json);
    #[cfg(feature = "otlp")]
    let registry = registry.with(otlp::layer());
    let _ = registry.try_init();
}

/// Flushes exporters before the process exits.
pub fn shutdown() {
    #[cfg(feature = "otlp")]
    otlp::shutdown();
}

#[cfg(feature = "otlp")]
pub mod otlp {
    //! The OTLP exporter and the link between W3C trace context and spans.

    use std::sync::OnceLock;

    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
    };
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use crate::flow::trace::TraceContext;

    static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

    fn configured() -> bool {
        [
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some())
    }

    /// The layer that exports spans, when an endpoint is configured.
    pub fn layer<S>() -> Option<impl tracing_subscriber::Layer<S>>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        if !configured() {
            return None;
        }
        let exporter = match opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .build()
        {
            Ok(e) => e,
            Err(e) => {
                eprintln!("warning: OTLP export disabled: {e}");
                return None;
            }
        };
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name("eventflow")
                    .build(),
            )
            .build();
        let tracer = provider.tracer("eventflow");
        let _ = PROVIDER.set(provider);
        Some(tracing_opentelemetry::layer().with_tracer(tracer))
    }

    /// Flushes and stops the exporter.
    pub fn shutdown() {
        if let Some(p) = PROVIDER.get() {
            let _ = p.shutdown();
        }
    }

    /// Makes the message's incoming trace the parent of `span` and, when
    /// spans are exported, adopts the exported span's ids so that published
    /// `traceparent`s name the span the collector received.
    pub fn link(span: &tracing::Span, trace: &mut TraceContext) {
        if PROVIDER.get().is_none() {
            return;
        }
        if let Some(parent) = &trace.parent_id {
            let (Ok(trace_id), Ok(parent_id)) =
                (TraceId::from_hex(&trace.trace_id), SpanId::from_hex(parent))
            else {
                return;
            };
            let flags = u8::from_str_radix(&trace.flags, 16).unwrap_or(1);
            let remote = SpanContext::new(
                trace_id,
                parent_id,
                TraceFlags::new(flags),
                true,
                TraceState::default(),
            );
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
        }
        let cx = span.context();
        let own = cx.span().span_context().clone();
        if own.is_valid() {
            trace.trace_id = own.trace_id().to_string();
            trace.span_id = own.span_id().to_string();
        }
    }
}
