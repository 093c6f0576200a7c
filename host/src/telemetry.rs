//! Log output: human-readable lines by default, JSON with `--log-format json`.
//! `RUST_LOG` overrides the default filter. With the `otlp` Cargo feature
//! and `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! set, the message spans are also exported over OTLP (HTTP/protobuf).
//!
//! One event is one line, whatever its fields hold: algorithms and messages
//! put text of their own into log fields (a `log` call, a failure reason, a
//! header), so control characters are escaped in both formats. In text, by
//! [`EscapingFields`]: `\n`, `\r`, `\t` and `\u{..}` for every other control
//! character (ESC included) and the Unicode line and paragraph separators. In
//! JSON, serde escapes the C0 controls and [`JsonEscapingWriter`] the rest
//! (DEL, C1, U+2028, U+2029) as `\u00..`, so a value still reads back as
//! written.

use std::fmt::{self, Write as _};
use std::io;

use tracing::field::{Field, Visit};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::field::{MakeVisitor, VisitFmt, VisitOutput};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;

pub mod trace;

/// How log lines look.
#[derive(Clone, Copy, Debug, clap::ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The default filter: our own info lines, only warnings from the engine.
const DEFAULT_FILTER: &str = "info,wasmtime=warn,cranelift=warn,wasmtime_cranelift=warn";

/// Installs the global subscriber. A second call is ignored.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (text, json) = match format {
        LogFormat::Text => (Some(text_layer(std::io::stderr, ansi)), None),
        LogFormat::Json => (None, Some(json_layer(std::io::stderr))),
    };
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(text)
        .with(json);
    #[cfg(feature = "otlp")]
    let registry = registry.with(otlp::layer());
    let _ = registry.try_init();
}

/// The text format: the default line layout with [`EscapingFields`].
fn text_layer<S, W>(writer: W, ansi: bool) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .fmt_fields(EscapingFields)
        .with_ansi(ansi)
        .with_writer(writer)
}

/// The JSON format: one flattened object a line, through
/// [`JsonEscapingWriter`].
fn json_layer<S, W>(writer: W) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    tracing_subscriber::fmt::layer()
        .json()
        .flatten_event(true)
        .with_writer(JsonEscaping(writer))
}

/// Formats the fields of events and spans like the default text format
/// (`message` first, then `name=value`), with control characters escaped in
/// every name and value, so no field can start a line of its own or send
/// terminal escape sequences.
#[derive(Debug, Clone, Copy, Default)]
pub struct EscapingFields;

impl<'a> MakeVisitor<Writer<'a>> for EscapingFields {
    type Visitor = EscapingVisitor<'a>;

    fn make_visitor(&self, target: Writer<'a>) -> Self::Visitor {
        EscapingVisitor {
            writer: target,
            is_empty: true,
            result: Ok(()),
        }
    }
}

/// The visitor of [`EscapingFields`].
pub struct EscapingVisitor<'a> {
    writer: Writer<'a>,
    is_empty: bool,
    result: fmt::Result,
}

impl Visit for EscapingVisitor<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.record_debug(field, &format_args!("{value}"))
        } else {
            self.record_debug(field, &value)
        }
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let mut chain = value.to_string();
        let mut source = value.source();
        while let Some(s) = source {
            let _ = write!(chain, ": {s}");
            source = s.source();
        }
        self.record_debug(field, &format_args!("{chain}"))
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if self.result.is_err() {
            return;
        }
        let name = field.name();
        // Metadata of events converted from the `log` crate, already shown.
        if name.starts_with("log.") {
            return;
        }
        if self.is_empty {
            self.is_empty = false;
        } else if let Err(e) = self.writer.write_char(' ') {
            self.result = Err(e);
            return;
        }
        let ansi = self.writer.has_ansi_escapes();
        let mut out = ControlEscaper(&mut self.writer);
        self.result = if name == "message" {
            write!(out, "{value:?}")
        } else {
            let name = name.strip_prefix("r#").unwrap_or(name);
            let named = if ansi {
                // Italic name, dimmed `=`, as the default format shows them;
                // written past the escaper, which would escape ESC.
                write!(out.0, "\x1b[3m")
                    .and_then(|_| write!(out, "{name}"))
                    .and_then(|_| write!(out.0, "\x1b[0m\x1b[2m=\x1b[0m"))
            } else {
                write!(out, "{name}=")
            };
            named.and_then(|_| write!(out, "{value:?}"))
        };
    }
}

impl VisitOutput<fmt::Result> for EscapingVisitor<'_> {
    fn finish(self) -> fmt::Result {
        self.result
    }
}

impl VisitFmt for EscapingVisitor<'_> {
    fn writer(&mut self) -> &mut dyn fmt::Write {
        &mut self.writer
    }
}

/// Whether a character must not reach a log line as it is: control
/// characters (C0, DEL, C1: newlines, ESC, ...) and the Unicode line and
/// paragraph separators, which some viewers break lines at.
fn must_escape(c: char) -> bool {
    c.is_control() || c == '\u{2028}' || c == '\u{2029}'
}

/// A `fmt::Write` that passes text on with [`must_escape`] characters
/// written as `\n`, `\r`, `\t` or `\u{..}`.
struct ControlEscaper<'w, W: fmt::Write>(&'w mut W);

impl<W: fmt::Write> fmt::Write for ControlEscaper<'_, W> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let mut rest = s;
        while let Some(at) = rest.find(must_escape) {
            self.0.write_str(&rest[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            match c {
                '\n' => self.0.write_str("\\n")?,
                '\r' => self.0.write_str("\\r")?,
                '\t' => self.0.write_str("\\t")?,
                c => write!(self.0, "\\u{{{:x}}}", c as u32)?,
            }
            rest = &rest[at + c.len_utf8()..];
        }
        self.0.write_str(rest)
    }
}

/// Makes [`JsonEscapingWriter`]s around the writers of `W`.
struct JsonEscaping<W>(W);

impl<'a, W: MakeWriter<'a>> MakeWriter<'a> for JsonEscaping<W> {
    type Writer = JsonEscapingWriter<W::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        JsonEscapingWriter(self.0.make_writer())
    }
}

/// Writes serialized JSON lines with the control characters serde leaves
/// as they are (DEL, C1) and U+2028/U+2029 escaped as `\u....`. Those
/// characters only occur inside JSON strings, where the escape means the same
/// character, so a reader decodes exactly what was logged.
pub struct JsonEscapingWriter<W>(W);

impl<W: io::Write> io::Write for JsonEscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // The formatter writes each event whole (`write_all` of one line).
        let text = match std::str::from_utf8(buf) {
            Ok(t) if t.contains(must_escape_in_json) => t,
            _ => return self.0.write(buf),
        };
        let mut out = String::with_capacity(text.len() + 16);
        for c in text.chars() {
            if must_escape_in_json(c) {
                let _ = write!(out, "\\u{:04x}", c as u32);
            } else {
                out.push(c);
            }
        }
        self.0.write_all(out.as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

fn must_escape_in_json(c: char) -> bool {
    // The C0 controls (newlines, ESC) are escaped by serde already, and the
    // line break that ends each event must stay.
    must_escape(c) && (c as u32) >= 0x7f
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

    use super::trace::TraceContext;

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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    /// Every control character class an algorithm could put in a field.
    const HOSTILE: &str = "x\n2026-01-01T00:00:00Z ERROR eventflow::run: FORGED\r\tend\x1b[31mred\x07\x7f\u{9b}2J\u{2028}sep\u{85}";

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Self::Writer {
            self.clone()
        }
    }

    impl Captured {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[derive(Debug)]
    struct Chain(&'static str, Option<Box<Chain>>);
    impl fmt::Display for Chain {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Chain {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|c| c as _)
        }
    }

    /// One event and one span carrying [`HOSTILE`] in every kind of field.
    fn emit() {
        let error = Chain(HOSTILE, Some(Box::new(Chain(HOSTILE, None))));
        let span = tracing::info_span!("message", message_id = %HOSTILE);
        let _entered = span.enter();
        tracing::error!(
            flow = %HOSTILE,
            reason = HOSTILE,
            detail = ?HOSTILE,
            error = &error as &(dyn std::error::Error + 'static),
            "{}",
            HOSTILE
        );
    }

    /// `line` without the formatter's colour sequences (`ESC [ digits m`).
    fn strip_sgr(line: &str) -> String {
        let mut out = String::new();
        let mut rest = line;
        while let Some(at) = rest.find("\x1b[") {
            out.push_str(&rest[..at]);
            let tail = &rest[at + 2..];
            let digits = tail.find(|c: char| !c.is_ascii_digit() && c != ';');
            match digits {
                Some(n) if tail[n..].starts_with('m') => rest = &tail[n + 1..],
                _ => {
                    out.push('\x1b');
                    rest = &rest[at + 1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    fn assert_clean(line: &str) {
        assert!(
            !line.chars().any(must_escape),
            "a control character reached the log line: {line:?}"
        );
    }

    #[test]
    fn text_log_escapes_control_characters_in_every_field() {
        for ansi in [false, true] {
            let out = Captured::default();
            let subscriber = tracing_subscriber::registry().with(text_layer(out.clone(), ansi));
            tracing::subscriber::with_default(subscriber, emit);
            let text = out.text();
            let lines: Vec<&str> = text.lines().collect();
            assert_eq!(lines.len(), 1, "one event must be one line: {text:?}");
            let line = lines[0];
            if ansi {
                // The formatter's own colours stay; none come from a field.
                assert!(!line.contains("\x1b[31mred"), "{line:?}");
                assert_clean(&strip_sgr(line));
            } else {
                assert_clean(line);
            }
            assert!(
                line.contains(
                    r"x\n2026-01-01T00:00:00Z ERROR eventflow::run: FORGED\r\tend\u{1b}[31mred\u{7}\u{7f}\u{9b}2J\u{2028}sep\u{85}"
                ),
                "{line:?}"
            );
            let plain = strip_sgr(line);
            for field in ["flow=", "reason=", "detail=", "error=", "message_id="] {
                assert!(plain.contains(field), "{field} missing: {line:?}");
            }
        }
    }

    #[test]
    fn json_log_escapes_control_characters_and_keeps_values() {
        let out = Captured::default();
        let subscriber = tracing_subscriber::registry().with(json_layer(out.clone()));
        tracing::subscriber::with_default(subscriber, emit);
        let text = out.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 1, "one event must be one line: {text:?}");
        assert_clean(lines[0]);
        let event: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(event["message"], HOSTILE);
        assert_eq!(event["flow"], HOSTILE);
        assert_eq!(event["reason"], HOSTILE);
        assert_eq!(event["span"]["message_id"], HOSTILE);
    }
}
