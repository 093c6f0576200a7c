//! B1's settings table: what each engine setting of the router buys for a
//! fresh instance (issue 16, item 5). Each row turns one more setting from
//! wasmtime's default to the router's, so the last row is the router.

use eventflow::config::SandboxConfig;
use eventflow::sandbox::EngineTuning;
use serde::Serialize;

use crate::sandbox::{fresh_ns, load, message, sandbox_tuned};

/// One row: the settings and the fresh-instance cost with them.
#[derive(Debug, Serialize)]
pub struct SettingRow {
    /// What changed from the row before.
    pub setting: &'static str,
    /// Nanoseconds per fresh-instance invocation of the identity, 1 KiB.
    pub fresh_ns: f64,
}

/// The rows, cumulative: wasmtime's defaults first, the router's last.
fn variants() -> [(&'static str, EngineTuning); 4] {
    let defaults = EngineTuning {
        concurrency_support: true,
        keep_resident: false,
        pagemap_scan: false,
    };
    let no_async = EngineTuning {
        concurrency_support: false,
        ..defaults
    };
    let resident = EngineTuning {
        keep_resident: true,
        ..no_async
    };
    [
        ("wasmtime's defaults (pooling allocator)", defaults),
        ("+ concurrency_support(false)", no_async),
        (
            "+ keep 256 KiB of memory and 8 KiB of tables resident",
            resident,
        ),
        (
            "+ pagemap_scan (the router's settings)",
            EngineTuning::default(),
        ),
    ]
}

/// Measures every row in turn, each in its own engine.
pub async fn settings(o: &crate::Options) -> anyhow::Result<Vec<SettingRow>> {
    let n = o.pick(2_000u32, 20_000);
    let m = message(vec![b'x'; 1024]);
    let mut rows = Vec::new();
    for (setting, tuning) in variants() {
        let (sb, _dir) = sandbox_tuned(SandboxConfig::default(), tuning)?;
        let echo = load(&sb, &o.plugins, "examples", "echo")?;
        let fresh_ns = fresh_ns(&sb, &echo, &m, 100, n).await?;
        eprintln!("  {setting}: fresh {fresh_ns:.0} ns");
        rows.push(SettingRow { setting, fresh_ns });
    }
    Ok(rows)
}
