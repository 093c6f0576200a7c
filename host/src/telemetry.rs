//! Log output: human-readable lines by default, JSON with `--log-format json`.
//! `RUST_LOG` overrides the default filter.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// The default filter: our own info lines, only warnings from the engine.
const DEFAULT_FILTER: &str = "info,wasmtime=warn,cranelift=warn,wasmtime_cranelift=warn";

/// Installs the global subscriber. Idempotent enough for tests: a second
/// call is ignored.
pub fn init(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    // Colours only on a terminal: log files and collectors get plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
