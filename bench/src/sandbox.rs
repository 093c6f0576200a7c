//! Stages that drive the sandbox directly: B1, B3 and B6's pool check.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use eventflow::config::{Limits, SandboxConfig};
use eventflow::data::Collections;
use eventflow::message::InboundMessage;
use eventflow::sandbox::{Algorithm, AlgorithmId, EngineTuning, Invocation, NoTopics, Sandbox};
use serde::Serialize;

/// A sandbox with `settings`, its data in a temporary directory.
pub fn sandbox(settings: SandboxConfig) -> anyhow::Result<(Sandbox, tempfile::TempDir)> {
    sandbox_tuned(settings, EngineTuning::default())
}

/// [`sandbox`] with other engine settings than the router's.
pub fn sandbox_tuned(
    settings: SandboxConfig,
    tuning: EngineTuning,
) -> anyhow::Result<(Sandbox, tempfile::TempDir)> {
    let dir = tempfile::tempdir()?;
    let data = Arc::new(Collections::open(dir.path())?);
    Ok((Sandbox::with_tuning(&settings, None, data, tuning)?, dir))
}

/// Loads `<plugins>/<owner>/<name>/0.1.0.wasm`.
pub fn load(
    sandbox: &Sandbox,
    plugins: &Path,
    owner: &str,
    name: &str,
) -> anyhow::Result<Algorithm> {
    let bytes = std::fs::read(plugins.join(owner).join(name).join("0.1.0.wasm"))?;
    sandbox.load(
        AlgorithmId {
            owner: owner.into(),
            name: name.into(),
            version: semver::Version::new(0, 1, 0),
        },
        &bytes,
    )
}

/// A message with `payload`.
pub fn message(payload: Vec<u8>) -> InboundMessage {
    InboundMessage {
        id: "bench".into(),
        topic: "bench".into(),
        payload,
        headers: Vec::new(),
        attempt: 1,
        enqueued_at: None,
        undecodable: None,
    }
}

/// One fresh-instance invocation with the default limits and a 10 s
/// timeout; whether the algorithm succeeded. The sandbox takes the
/// message's fields for the call instead of copying them, so this copies
/// `m` once, as the sandbox did before: B1 stays comparable with earlier
/// runs.
async fn invoke(sandbox: &Sandbox, algorithm: &Algorithm, m: &InboundMessage) -> bool {
    let limits = Limits::default();
    let mut m = m.clone();
    let outcome = sandbox
        .invoke(
            algorithm,
            Invocation {
                flow: "bench".into(),
                message: &mut m,
                timeout: Duration::from_secs(10),
                limits: &limits,
                env: &[],
                resolver: Arc::new(NoTopics),
            },
        )
        .await;
    outcome.result.is_ok()
}

/// Nanoseconds per fresh-instance invocation of `algorithm` on `m`, over
/// `n` invocations after `warm_up` unmeasured ones; an error if one fails.
pub async fn fresh_ns(
    sandbox: &Sandbox,
    algorithm: &Algorithm,
    m: &InboundMessage,
    warm_up: u32,
    n: u32,
) -> anyhow::Result<f64> {
    for _ in 0..warm_up {
        invoke(sandbox, algorithm, m).await;
    }
    let started = Instant::now();
    for _ in 0..n {
        anyhow::ensure!(
            invoke(sandbox, algorithm, m).await,
            "{} failed",
            algorithm.label()
        );
    }
    Ok(started.elapsed().as_nanos() as f64 / f64::from(n))
}

/// B1's numbers for one payload size.
#[derive(Debug, Serialize)]
pub struct OverheadRow {
    /// Payload bytes.
    pub size: usize,
    /// A native Rust identity function.
    pub native_ns: f64,
    /// `apply` on one reused instance.
    pub reused_ns: f64,
    /// A fresh instance per message (InstancePre + pooling), as the router runs.
    pub fresh_ns: f64,
}

fn native_identity(m: &InboundMessage) -> Option<Vec<u8>> {
    Some(m.payload.clone())
}

/// B1: per-message overhead of an identity `apply`.
pub async fn b1(o: &crate::Options) -> anyhow::Result<Vec<OverheadRow>> {
    let (sb, _dir) = sandbox(SandboxConfig::default())?;
    let echo = load(&sb, &o.plugins, "examples", "echo")?;
    let n = o.pick(2_000u32, 20_000);
    let mut rows = Vec::new();
    for size in [64usize, 1024, 16 * 1024] {
        let m = message(vec![b'x'; size]);
        let started = Instant::now();
        for _ in 0..n * 10 {
            std::hint::black_box(native_identity(std::hint::black_box(&m)));
        }
        let native_ns = started.elapsed().as_nanos() as f64 / f64::from(n * 10);
        // Warm up, then measure.
        sb.time_reused_instance(&echo, &m, 100).await?;
        let reused_ns =
            sb.time_reused_instance(&echo, &m, n).await?.as_nanos() as f64 / f64::from(n);
        let fresh_ns = fresh_ns(&sb, &echo, &m, 100, n).await?;
        eprintln!(
            "  {size:>6} B: native {native_ns:.0} ns, reused {reused_ns:.0} ns, fresh {fresh_ns:.0} ns"
        );
        rows.push(OverheadRow {
            size,
            native_ns,
            reused_ns,
            fresh_ns,
        });
    }
    Ok(rows)
}

/// B3's numbers for one sandbox configuration.
#[derive(Debug, Serialize)]
pub struct SandboxCostRow {
    /// What was on.
    pub variant: String,
    /// Nanoseconds per fresh-instance invocation of the redact algorithm.
    pub ns_per_message: f64,
}

/// A 1 KiB JSON document with fields to redact.
pub fn redact_payload() -> Vec<u8> {
    let mut doc = serde_json::json!({
        "user": "ezra", "password": "hunter2", "ssn": "123-45-6789",
        "card": "4111111111111111", "items": [],
    });
    let mut i = 0;
    while serde_json::to_vec(&doc).unwrap().len() < 1000 {
        doc["items"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"sku": format!("sku-{i}"), "qty": i, "password": "x"}));
        i += 1;
    }
    serde_json::to_vec(&doc).unwrap()
}

/// B3: the cost of interruption, fuel and allocation strategies.
pub async fn b3(o: &crate::Options) -> anyhow::Result<Vec<SandboxCostRow>> {
    let n = o.pick(1_000u32, 10_000);
    let payload = message(redact_payload());
    let variants: [(&str, SandboxConfig); 4] = [
        (
            "no interruption (pooling)",
            SandboxConfig {
                epoch_interruption: false,
                ..SandboxConfig::default()
            },
        ),
        ("epoch interruption (pooling)", SandboxConfig::default()),
        (
            "fuel (pooling)",
            SandboxConfig {
                epoch_interruption: false,
                fuel: true,
                ..SandboxConfig::default()
            },
        ),
        (
            "epoch interruption (on-demand allocation)",
            SandboxConfig {
                pooling: false,
                ..SandboxConfig::default()
            },
        ),
    ];
    let mut rows = Vec::new();
    for (name, settings) in variants {
        let (sb, _dir) = sandbox(settings)?;
        let redact = load(&sb, &o.plugins, "examples", "redact")?;
        let ns = fresh_ns(&sb, &redact, &payload, 50, n).await?;
        eprintln!("  {name}: {ns:.0} ns");
        rows.push(SandboxCostRow {
            variant: name.into(),
            ns_per_message: ns,
        });
    }
    Ok(rows)
}

/// B6's pool check.
#[derive(Debug, Serialize)]
pub struct PoolCheck {
    /// Trapping invocations run.
    pub traps: u64,
    /// How many of them failed (all should: the algorithm panics).
    pub failed: u64,
    /// Traps per second.
    pub traps_per_sec: f64,
    /// Component instances, core instances and memories in use afterwards:
    /// leaked pool slots (must be 0).
    pub in_use_after: (u64, u64, usize),
}

/// B6: run many trapping invocations on 8 tasks, then count pool slots in use.
pub async fn b6_pool(o: &crate::Options) -> anyhow::Result<PoolCheck> {
    let traps = o.pick(10_000u64, 1_000_000);
    let (sb, _dir) = sandbox(SandboxConfig::default())?;
    let sb = Arc::new(sb);
    let panic = Arc::new(load(&sb, &o.plugins, "test", "panic")?);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let (sb, panic) = (sb.clone(), panic.clone());
        let share = traps / 8 + u64::from(t < traps % 8);
        tasks.push(tokio::spawn(async move {
            let m = message(b"trap".to_vec());
            let mut failed = 0u64;
            for _ in 0..share {
                if !invoke(&sb, &panic, &m).await {
                    failed += 1;
                }
            }
            failed
        }));
    }
    let mut failed = 0;
    for t in tasks {
        failed += t.await?;
    }
    let secs = started.elapsed().as_secs_f64();
    let in_use_after = sb.pool_in_use().unwrap_or((u64::MAX, u64::MAX, usize::MAX));
    eprintln!("  {traps} traps in {secs:.1} s; pool in use afterwards: {in_use_after:?}");
    Ok(PoolCheck {
        traps,
        failed,
        traps_per_sec: traps as f64 / secs,
        in_use_after,
    })
}
