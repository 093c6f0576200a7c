//! B1 and B3 by language: the same fresh-instance invocations as B1 (identity,
//! 1 KiB) and B3 (parse and redact 1 KiB of JSON) for algorithms written in
//! Python (componentize-py) and JavaScript (componentize-js), beside the Rust
//! components and native Rust functions, in the same run. Each row also has
//! the component's size, its initial memory and the resident memory one
//! instance in flight costs.
//!
//! The Python and JavaScript algorithm is `test/bench_py` / `test/bench_js`
//! (plugins/bench_py, plugins/bench_js): identity for a payload that is not
//! JSON, redact for a JSON one, and a busy loop for `{"spin_ms": N}`.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventflow::config::{Limits, SandboxConfig};
use eventflow::message::InboundMessage;
use eventflow::sandbox::{Algorithm, Invocation, NoTopics, Sandbox};
use serde::Serialize;
use serde_json::Value;

use crate::sandbox::{fresh_ns, load, message, redact_payload, sandbox};

/// Instances held in flight at once to measure their resident memory.
const IN_FLIGHT: usize = 8;
/// How long each of them computes; the memory is read halfway.
const HOLD: Duration = Duration::from_secs(2);

/// One language's numbers.
#[derive(Debug, Serialize)]
pub struct LanguageRow {
    /// `native`, `Rust`, `Python` or `JavaScript`.
    pub language: &'static str,
    /// The algorithms measured (`owner/name`), or the native functions.
    pub algorithm: String,
    /// Size of the component(s), in bytes; `None` for native code.
    pub component_bytes: Option<u64>,
    /// Largest initial linear memory, in MiB (rounded up).
    pub initial_memory_mib: Option<u64>,
    /// Seconds to compile and validate the component(s) (release build).
    pub compile_secs: Option<f64>,
    /// B1: nanoseconds per fresh-instance identity invocation at 1 KiB.
    pub identity_ns: f64,
    /// B3: nanoseconds per fresh-instance redact invocation of 1 KiB of
    /// JSON, with epoch interruption and pooling (the router's settings).
    pub redact_ns: f64,
    /// The process's resident memory with [`IN_FLIGHT`] instances computing
    /// at once, less before, per instance, in KiB.
    pub rss_per_instance_kib: Option<f64>,
}

/// Measures native code, the Rust components and, where they were built,
/// the Python and JavaScript ones. `guests` is where `cargo xtask` installed
/// the latter.
pub async fn run(o: &crate::Options, guests: Option<&Path>) -> anyhow::Result<Vec<LanguageRow>> {
    let (sb, _dir) = sandbox(SandboxConfig::default())?;
    let sb = Arc::new(sb);
    let identity = message(vec![b'x'; 1024]);
    let redact = message(redact_payload());
    let mut rows = vec![native_row(o, &identity, &redact)];

    let n = o.pick(2_000u32, 20_000);
    let started = Instant::now();
    let echo = Arc::new(load(&sb, &o.plugins, "examples", "echo")?);
    let redactor = load(&sb, &o.plugins, "examples", "redact")?;
    let spinner = Arc::new(load(&sb, &o.plugins, "test", "loop_forever")?);
    let compile_secs = started.elapsed().as_secs_f64();
    rows.push(LanguageRow {
        language: "Rust",
        algorithm: "examples/echo, examples/redact".into(),
        component_bytes: Some(echo.size + redactor.size),
        initial_memory_mib: mib(echo.initial_memory_bytes.max(redactor.initial_memory_bytes)),
        compile_secs: Some(compile_secs),
        identity_ns: fresh_ns(&sb, &echo, &identity, 100, n).await?,
        redact_ns: fresh_ns(&sb, &redactor, &redact, 100, n).await?,
        // loop_forever computes until the timeout stops it.
        rss_per_instance_kib: rss_per_instance(&sb, &spinner, b"spin".to_vec()).await,
    });
    print(rows.last().unwrap());

    let n = o.pick(100u32, 1_000);
    for (language, name) in [("Python", "bench_py"), ("JavaScript", "bench_js")] {
        let Some(dir) = guests.filter(|d| d.join("test").join(name).exists()) else {
            eprintln!(
                "  {language}: test/{name} was not built (componentize-py or componentize-js missing; `cargo xtask bench` says why above)"
            );
            continue;
        };
        let started = Instant::now();
        let guest = Arc::new(load(&sb, dir, "test", name)?);
        let compile_secs = started.elapsed().as_secs_f64();
        let spin = serde_json::to_vec(&serde_json::json!({ "spin_ms": HOLD.as_millis() as u64 }))?;
        rows.push(LanguageRow {
            language,
            algorithm: format!("test/{name}"),
            component_bytes: Some(guest.size),
            initial_memory_mib: mib(guest.initial_memory_bytes),
            compile_secs: Some(compile_secs),
            identity_ns: fresh_ns(&sb, &guest, &identity, 10, n).await?,
            redact_ns: fresh_ns(&sb, &guest, &redact, 10, n).await?,
            rss_per_instance_kib: rss_per_instance(&sb, &guest, spin).await,
        });
        print(rows.last().unwrap());
    }
    Ok(rows)
}

fn mib(bytes: Option<u64>) -> Option<u64> {
    bytes.map(|b| b.div_ceil(1 << 20))
}

fn print(r: &LanguageRow) {
    eprintln!(
        "  {}: identity {:.1} µs, redact {:.1} µs, {} KiB, initial memory {} MiB, {:.0} KiB resident per instance in flight",
        r.language,
        r.identity_ns / 1000.0,
        r.redact_ns / 1000.0,
        r.component_bytes.unwrap_or(0) / 1024,
        r.initial_memory_mib.unwrap_or(0),
        r.rss_per_instance_kib.unwrap_or(f64::NAN)
    );
}

/// Native Rust functions doing the same: a copy of the payload, and a
/// serde_json parse, redact and serialise.
fn native_row(
    o: &crate::Options,
    identity: &InboundMessage,
    redact: &InboundMessage,
) -> LanguageRow {
    let n = o.pick(20_000u32, 200_000);
    let time = |f: &dyn Fn(&InboundMessage) -> Vec<u8>, m: &InboundMessage| {
        let started = Instant::now();
        for _ in 0..n {
            std::hint::black_box(f(std::hint::black_box(m)));
        }
        started.elapsed().as_nanos() as f64 / f64::from(n)
    };
    LanguageRow {
        language: "native",
        algorithm: "Rust functions".into(),
        component_bytes: None,
        initial_memory_mib: None,
        compile_secs: None,
        identity_ns: time(&|m| m.payload.clone(), identity),
        redact_ns: time(&native_redact, redact),
        rss_per_instance_kib: None,
    }
}

fn native_redact(m: &InboundMessage) -> Vec<u8> {
    fn redact(value: &mut Value) {
        match value {
            Value::Object(map) => {
                for (key, v) in map.iter_mut() {
                    if ["password", "ssn", "card"].contains(&key.as_str()) {
                        *v = Value::String("***".into());
                    } else {
                        redact(v);
                    }
                }
            }
            Value::Array(items) => items.iter_mut().for_each(redact),
            _ => {}
        }
    }
    let mut doc: Value = serde_json::from_slice(&m.payload).unwrap_or(Value::Null);
    redact(&mut doc);
    serde_json::to_vec(&doc).unwrap_or_default()
}

/// The process's resident memory, in KiB (Linux).
fn rss_kib() -> Option<u64> {
    std::fs::read_to_string("/proc/self/status")
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Runs [`IN_FLIGHT`] invocations of `algorithm` on `payload` at once, each
/// computing for [`HOLD`] (the epoch interrupts and yields, so they all
/// start), and reads the resident memory halfway: its growth over before,
/// per instance the pool counts in use then.
async fn rss_per_instance(
    sb: &Arc<Sandbox>,
    algorithm: &Arc<Algorithm>,
    payload: Vec<u8>,
) -> Option<f64> {
    let before = rss_kib()?;
    let mut tasks = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (sb, algorithm, payload) = (sb.clone(), algorithm.clone(), payload.clone());
        tasks.push(tokio::spawn(async move {
            let limits = Limits::default();
            let mut m = message(payload);
            // Ends at HOLD either way: the spinners return then, and
            // loop_forever is stopped by this timeout.
            sb.invoke(
                &algorithm,
                Invocation {
                    flow: "bench".into(),
                    message: &mut m,
                    timeout: HOLD,
                    limits: &limits,
                    env: &[],
                    resolver: Arc::new(NoTopics),
                },
            )
            .await;
        }));
    }
    tokio::time::sleep(HOLD / 2).await;
    let during = rss_kib();
    let in_use = sb.pool_in_use().map(|(instances, _, _)| instances);
    for t in tasks {
        let _ = t.await;
    }
    let instances = in_use.filter(|n| *n > 0)?;
    Some(during?.saturating_sub(before) as f64 / instances as f64)
}

/// The rows as a Markdown section.
pub fn markdown(s: &mut String, rows: &[LanguageRow]) {
    use std::fmt::Write as _;
    let _ = writeln!(
        s,
        "\n## B1 and B3 by language (fresh instance per message; epoch interruption, pooling)\n\nIdentity: B1's 1 KiB payload. Redact: B3's 1 KiB JSON document, parsed, redacted and serialised. Resident per instance: the process's resident memory with {IN_FLIGHT} instances computing at once, less before, per instance. Python and JavaScript run `test/bench_py` and `test/bench_js`; their SDKs try to decode every payload as JSON first, as an author's algorithm would.\n\n| language | algorithm | component | initial memory | compile | identity (B1) | redact (B3) | vs Rust (B1 / B3) | resident per instance in flight |\n|---|---|---|---|---|---|---|---|---|"
    );
    let rust = rows.iter().find(|r| r.language == "Rust");
    for r in rows {
        let ratio = rust.map_or("-".to_string(), |rust| {
            format!(
                "{:.1}× / {:.1}×",
                r.identity_ns / rust.identity_ns,
                r.redact_ns / rust.redact_ns
            )
        });
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {:.1} µs | {:.1} µs | {} | {} |",
            r.language,
            r.algorithm,
            r.component_bytes.map_or("-".to_string(), |b| format!(
                "{:.1} MiB",
                b as f64 / (1 << 20) as f64
            )),
            r.initial_memory_mib
                .map_or("-".to_string(), |m| format!("{m} MiB")),
            r.compile_secs
                .map_or("-".to_string(), |c| format!("{c:.1} s")),
            r.identity_ns / 1000.0,
            r.redact_ns / 1000.0,
            ratio,
            r.rss_per_instance_kib
                .map_or("-".to_string(), |k| format!("{k:.0} KiB")),
        );
    }
}
