//! What `eventflow invoke` reports: the verdict, the output, what the
//! algorithm published, what it changed in data collections (found by
//! comparing the data directory before and after), its log lines (caught
//! from the host's `log` events), duration and peak memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tracing_subscriber::layer::SubscriberExt;

use crate::sandbox::{AlgorithmId, Outcome};

/// Everything one invocation did.
#[derive(Debug, Serialize)]
pub struct Report {
    /// `owner/name/version`.
    pub algorithm: String,
    /// The component file.
    pub component: PathBuf,
    /// Its SHA-256.
    pub hash: String,
    /// `ok`, or the failure's reason code (`guest_reject`, `timeout`, ...).
    pub verdict: String,
    /// Why it failed.
    pub reason: Option<String>,
    /// The delay a retry asked for.
    pub retry_after_ms: Option<u64>,
    /// What `apply` returned, for the flow's output topic.
    pub output: Option<Payload>,
    /// The messages it published; a flow sends them only on success.
    pub published: Vec<Published>,
    /// What it wrote or deleted in data collections (kept even on failure).
    pub data: Vec<DataChange>,
    /// The data directory, when it is kept (not a temporary one).
    pub data_dir: Option<PathBuf>,
    /// Its log lines, and the host's warnings about it.
    pub logs: Vec<LogLine>,
    /// Instantiation and call, in milliseconds.
    pub duration_ms: f64,
    /// Compiling (or reading the compiled code from the cache), in milliseconds.
    pub compile_ms: f64,
    /// The largest its linear memory grew, in bytes.
    pub peak_memory_bytes: u64,
}

/// Bytes, with their text when they are UTF-8.
#[derive(Debug, Serialize)]
pub struct Payload {
    /// Their length.
    pub bytes: usize,
    /// The text, when UTF-8.
    pub text: Option<String>,
}

impl Payload {
    fn of(bytes: &[u8]) -> Self {
        Self {
            bytes: bytes.len(),
            text: std::str::from_utf8(bytes).ok().map(str::to_string),
        }
    }
}

/// One published message.
#[derive(Debug, Serialize)]
pub struct Published {
    /// The topic as the algorithm named it.
    pub topic: String,
    /// Its headers.
    pub headers: Vec<(String, String)>,
    /// Its payload.
    pub payload: Payload,
}

/// A file of a data collection that the invocation changed.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct DataChange {
    /// `data://owner/collection/path`.
    pub uri: String,
    /// `written` or `deleted`.
    pub change: &'static str,
    /// Its size after a write.
    pub bytes: Option<u64>,
}

/// A log line of the invocation.
#[derive(Debug, Clone, Serialize)]
pub struct LogLine {
    /// `trace` to `error`.
    pub level: String,
    /// `algorithm` for the algorithm's own lines, `host` for the router's.
    pub source: &'static str,
    /// The line, with the host's fields appended.
    pub message: String,
}

/// The inputs of [`Report::new`].
pub(super) struct Parts<'a> {
    pub id: &'a AlgorithmId,
    pub path: &'a Path,
    pub hash: &'a str,
    pub outcome: Outcome,
    pub data: Vec<DataChange>,
    pub data_dir: Option<PathBuf>,
    pub logs: Vec<LogLine>,
    pub compile: Duration,
}

impl Report {
    pub(super) fn new(p: Parts<'_>) -> Self {
        let o = p.outcome;
        let (verdict, reason, retry_after_ms, output) = match &o.result {
            Ok(out) => (
                "ok".to_string(),
                None,
                None,
                out.as_deref().map(Payload::of),
            ),
            Err(f) => (
                f.reason.code().to_string(),
                Some(f.detail.clone()),
                f.retry_after.map(|d| d.as_millis() as u64),
                None,
            ),
        };
        Self {
            algorithm: p.id.to_string(),
            component: p.path.to_path_buf(),
            hash: p.hash.to_string(),
            verdict,
            reason,
            retry_after_ms,
            output,
            published: o
                .published
                .into_iter()
                .map(|(topic, m)| Published {
                    topic,
                    headers: m.headers,
                    payload: Payload::of(&m.payload),
                })
                .collect(),
            data: p.data,
            data_dir: p.data_dir,
            logs: p.logs,
            duration_ms: o.duration.as_secs_f64() * 1000.0,
            compile_ms: p.compile.as_secs_f64() * 1000.0,
            peak_memory_bytes: o.peak_memory_bytes,
        }
    }

    /// Whether the algorithm succeeded.
    pub fn succeeded(&self) -> bool {
        self.verdict == "ok"
    }

    /// Prints the report for people.
    pub fn print(&self) {
        println!(
            "algorithm: {} ({})",
            self.algorithm,
            self.component.display()
        );
        match (&self.reason, self.retry_after_ms) {
            (None, _) => println!("verdict:   ok"),
            (Some(r), Some(ms)) => println!("verdict:   {} after {ms} ms: {r}", self.verdict),
            (Some(r), None) => println!("verdict:   {}: {r}", self.verdict),
        }
        match &self.output {
            Some(p) => println!("output:    {}", show(p)),
            None if self.succeeded() => println!("output:    (none)"),
            None => {}
        }
        for m in &self.published {
            let headers: Vec<String> = m.headers.iter().map(|(k, v)| format!("{k}={v}")).collect();
            println!(
                "published: to {} [{}] {}",
                m.topic,
                headers.join(", "),
                show(&m.payload)
            );
        }
        for d in &self.data {
            match d.bytes {
                Some(n) => println!("data:      {} {} ({n} bytes)", d.change, d.uri),
                None => println!("data:      {} {}", d.change, d.uri),
            }
        }
        if !self.data.is_empty() {
            match &self.data_dir {
                Some(dir) => println!("           (in {})", dir.display()),
                None => println!(
                    "           (in a temporary data directory, now removed; pass --data-dir to keep it)"
                ),
            }
        }
        for l in &self.logs {
            println!("log:       {:<5} {}: {}", l.level, l.source, l.message);
        }
        println!(
            "took:      {:.1} ms (compiling {:.0} ms), peak memory {:.1} MiB",
            self.duration_ms,
            self.compile_ms,
            self.peak_memory_bytes as f64 / f64::from(1 << 20)
        );
    }
}

fn show(p: &Payload) -> String {
    match &p.text {
        Some(t) => t.clone(),
        None => format!("({} bytes, not UTF-8)", p.bytes),
    }
}

/// The files of a data directory: size and identity, enough to see a
/// write (always a new file renamed into place) or a delete.
pub(super) struct DataSnapshot(BTreeMap<String, (u64, u64, std::time::SystemTime)>);

impl DataSnapshot {
    /// Walks `root` (temporary files of writes in progress aside).
    pub(super) fn take(root: &Path) -> Self {
        let mut files = BTreeMap::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                let path = entry.path();
                if meta.is_dir() {
                    dirs.push(path);
                } else if meta.is_file()
                    && !entry
                        .file_name()
                        .to_string_lossy()
                        .starts_with(".eventflow-tmp-")
                {
                    use std::os::unix::fs::MetadataExt;
                    let rel = path
                        .strip_prefix(root)
                        .unwrap_or(&path)
                        .to_string_lossy()
                        .into_owned();
                    let modified = meta.modified().unwrap_or(std::time::UNIX_EPOCH);
                    files.insert(rel, (meta.len(), meta.ino(), modified));
                }
            }
        }
        Self(files)
    }

    /// What changed from `before` to this snapshot, as data URIs.
    pub(super) fn changes_since(&self, before: &DataSnapshot) -> Vec<DataChange> {
        let uri = |rel: &str| format!("data://{rel}");
        let mut changes: Vec<DataChange> = self
            .0
            .iter()
            .filter(|(rel, now)| before.0.get(*rel) != Some(now))
            .map(|(rel, (len, ..))| DataChange {
                uri: uri(rel),
                change: "written",
                bytes: Some(*len),
            })
            .collect();
        changes.extend(
            before
                .0
                .keys()
                .filter(|rel| !self.0.contains_key(*rel))
                .map(|rel| DataChange {
                    uri: uri(rel),
                    change: "deleted",
                    bytes: None,
                }),
        );
        changes
    }
}

/// Catches the log events of an invocation: the algorithm's (target
/// `algorithm`) and the host's warnings.
#[derive(Clone, Default)]
pub(super) struct LogCapture(Arc<Mutex<Vec<LogLine>>>);

impl LogCapture {
    /// Makes this the current thread's subscriber until the guard drops (the
    /// invocation runs on the thread that awaits it).
    pub(super) fn install(&self) -> tracing::subscriber::DefaultGuard {
        let subscriber = tracing_subscriber::registry().with(self.clone());
        tracing::subscriber::set_default(subscriber)
    }

    /// The lines caught so far.
    pub(super) fn lines(&self) -> Vec<LogLine> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogCapture {
    fn on_event(
        &self,
        event: &tracing::Event<'_>,
        _ctx: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let meta = event.metadata();
        let source = if meta.target() == "algorithm" {
            "algorithm"
        } else if *meta.level() <= tracing::Level::WARN {
            "host"
        } else {
            return;
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut message = fields.message;
        for (k, v) in fields.rest {
            message.push_str(&format!(" {k}={v}"));
        }
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(LogLine {
                level: meta.level().as_str().to_ascii_lowercase(),
                source,
                message,
            });
    }
}

/// An event's message and its fields but those every invocation shares.
#[derive(Default)]
struct Fields {
    message: String,
    rest: Vec<(String, String)>,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "flow" | "algorithm" | "message_id" => {}
            name => self.rest.push((name.to_string(), format!("{value:?}"))),
        }
    }

    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        match field.name() {
            "message" => self.message = value.to_string(),
            "flow" | "algorithm" | "message_id" => {}
            name => self.rest.push((name.to_string(), value.to_string())),
        }
    }
}
