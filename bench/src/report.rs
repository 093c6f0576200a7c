//! The run's report: machine facts, results, targets; JSON, Markdown and a
//! PNG plot of throughput and latency.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use plotters::prelude::*;
use serde::Serialize;

use crate::brokers::Brokers;
use crate::disk::DiskProbe;
use crate::instantiation::SettingRow;
use crate::languages::LanguageRow;
use crate::latency::LatencyRow;
use crate::pipeline::{FailurePath, HotSwap, Throughput};
use crate::sandbox::{OverheadRow, PoolCheck, SandboxCostRow};

/// What the numbers were measured on.
#[derive(Debug, Serialize)]
pub struct Machine {
    /// Logical cores.
    pub cores: usize,
    /// Memory, in MiB.
    pub memory_mib: u64,
    /// The CPU model.
    pub cpu: String,
    /// `git rev-parse --short HEAD`, with `-dirty` for a changed tree.
    pub git_revision: String,
    /// `rustc --version`.
    pub rustc: String,
}

fn command(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

impl Machine {
    fn read() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let dirty = !command("git", &["status", "--porcelain", "--untracked-files=no"]).is_empty();
        Self {
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            memory_mib: meminfo
                .lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .map(|kib| kib / 1024)
                .unwrap_or(0),
            cpu: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
                .unwrap_or_else(|| "unknown".into()),
            git_revision: format!(
                "{}{}",
                command("git", &["rev-parse", "--short", "HEAD"]),
                if dirty { "-dirty" } else { "" }
            ),
            rustc: command("rustc", &["--version"]),
        }
    }

    /// One line.
    pub fn summary(&self) -> String {
        format!(
            "{} cores, {} MiB, {}, git {}",
            self.cores, self.memory_mib, self.cpu, self.git_revision
        )
    }
}

/// A target from the issue and how this run did against it.
#[derive(Debug, Serialize)]
pub struct Target {
    /// Which benchmark.
    pub stage: &'static str,
    /// The target, in words.
    pub target: &'static str,
    /// What was measured.
    pub measured: String,
    /// Whether it was met.
    pub met: bool,
}

/// Everything one run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    /// The machine.
    pub machine: Machine,
    /// When the run started, RFC 3339.
    pub started_at: String,
    /// A short run?
    pub quick: bool,
    /// Seconds the run took.
    pub seconds: f64,
    /// B1.
    pub b1: Option<Vec<OverheadRow>>,
    /// B1, what each engine setting buys.
    pub b1_settings: Option<Vec<SettingRow>>,
    /// B2.
    pub b2: Option<Throughput>,
    /// B3.
    pub b3: Option<Vec<SandboxCostRow>>,
    /// B1 and B3 by language.
    pub languages: Option<Vec<LanguageRow>>,
    /// B4.
    pub b4: Option<Vec<LatencyRow>>,
    /// The disk's `fdatasync` latency measured with B4.
    pub b4_disk: Option<DiskProbe>,
    /// The flow concurrency B4 ran at (B2's best setting).
    pub b4_concurrency: Option<u32>,
    /// B5.
    pub b5: Option<HotSwap>,
    /// B6, pipeline part.
    pub b6: Option<FailurePath>,
    /// B6, pool check.
    pub b6_pool: Option<PoolCheck>,
    /// B7.
    pub b7: Option<Brokers>,
    /// B8.
    pub b8: Option<crate::data::DataPuts>,
    /// B9.
    pub b9: Option<crate::rollout::ShadowCost>,
    /// B9's rollback of a failing canary.
    pub b9_rollback: Option<crate::rollout::Rollback>,
    /// B10.
    pub b10: Option<crate::ordering::KeyedThroughput>,
    /// B11 batches.
    pub b11: Option<crate::batches::Batches>,
}

impl Report {
    /// An empty report for this machine.
    pub fn new(o: &crate::Options) -> Self {
        Self {
            machine: Machine::read(),
            started_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            quick: o.quick,
            seconds: 0.0,
            b1: None,
            b1_settings: None,
            b2: None,
            b3: None,
            languages: None,
            b4: None,
            b4_disk: None,
            b4_concurrency: None,
            b5: None,
            b6: None,
            b6_pool: None,
            b7: None,
            b8: None,
            b9: None,
            b9_rollback: None,
            b10: None,
            b11: None,
        }
    }

    /// The targets against this run.
    pub fn targets(&self) -> Vec<Target> {
        let mut t = Vec::new();
        if let Some(row) = self
            .b1
            .as_ref()
            .and_then(|r| r.iter().find(|r| r.size == 1024))
        {
            t.push(Target {
                stage: "B1",
                target: "fresh instance ≤ 10 µs per message at 1 KiB",
                measured: format!("{:.1} µs", row.fresh_ns / 1000.0),
                met: row.fresh_ns <= 10_000.0,
            });
            t.push(Target {
                stage: "B1",
                target: "reused instance ≤ 1 µs per message at 1 KiB",
                measured: format!("{:.2} µs", row.reused_ns / 1000.0),
                met: row.reused_ns <= 1_000.0,
            });
            t.push(Target {
                stage: "B1",
                target: "stretch: fresh instance ≤ 5 µs per message at 1 KiB",
                measured: format!("{:.1} µs", row.fresh_ns / 1000.0),
                met: row.fresh_ns <= 5_000.0,
            });
        }
        for r in self.languages.iter().flatten() {
            if matches!(r.language, "Python" | "JavaScript") {
                t.push(Target {
                    stage: "B1",
                    target: if r.language == "Python" {
                        "Python: fresh instance ≤ 1 ms per message at 1 KiB"
                    } else {
                        "JavaScript: fresh instance ≤ 1 ms per message at 1 KiB"
                    },
                    measured: format!("{:.0} µs", r.identity_ns / 1000.0),
                    met: r.identity_ns <= 1_000_000.0,
                });
            }
        }
        if let Some(b2) = &self.b2 {
            let worst = b2
                .rows
                .iter()
                .map(|r| r.wasm / r.native)
                .fold(f64::INFINITY, f64::min);
            t.push(Target {
                stage: "B2",
                target: "wasm ≥ 70 % of native (every concurrency)",
                measured: format!("{:.0} % at worst", worst * 100.0),
                met: worst >= 0.7,
            });
            let best = b2.best_row().map_or(0.0, |r| r.wasm);
            t.push(Target {
                stage: "B2",
                target: "≥ 100,000 msgs/s on 2 cores, durable",
                measured: format!("{best:.0} msgs/s"),
                met: best >= 100_000.0,
            });
        }
        if let Some(b3) = &self.b3 {
            let find = |v: &str| {
                b3.iter()
                    .find(|r| r.variant.starts_with(v))
                    .map(|r| r.ns_per_message)
            };
            if let (Some(none), Some(epoch)) = (
                find("no interruption"),
                find("epoch interruption (pooling)"),
            ) {
                let cost = epoch / none - 1.0;
                t.push(Target {
                    stage: "B3",
                    target: "epoch interruption costs ≤ 15 %",
                    measured: format!("{:+.1} %", cost * 100.0),
                    met: cost <= 0.15,
                });
            }
        }
        if let Some(row) = self
            .b4
            .as_ref()
            .and_then(|r| r.iter().find(|r| (r.load - 0.5).abs() < 0.01))
        {
            match &self.b4_disk {
                Some(disk) => t.push(Target {
                    stage: "B4",
                    target: "p99 at 50 % load ≤ 3 × the disk's fdatasync p99 (< 1 ms only on a quiet NVMe)",
                    measured: format!(
                        "{:.2} ms; 3 × fdatasync p99 = {:.2} ms (measured: {} µs)",
                        row.p99_us as f64 / 1000.0,
                        3.0 * disk.sync_p99_us as f64 / 1000.0,
                        disk.sync_p99_us
                    ),
                    met: row.p99_us <= 3 * disk.sync_p99_us,
                }),
                None => t.push(Target {
                    stage: "B4",
                    target: "p99 < 1 ms at 50 % load (no disk measurement in this run)",
                    measured: format!("{:.2} ms", row.p99_us as f64 / 1000.0),
                    met: row.p99_us < 1000,
                }),
            }
        }
        if let Some(b5) = &self.b5 {
            t.push(Target {
                stage: "B5",
                target: "zero lost messages during swaps",
                measured: format!("{} lost", b5.lost),
                met: b5.lost == 0,
            });
            t.push(Target {
                stage: "B5",
                target: "throughput dip < 5 % after a swap",
                measured: format!("{:.1} %", b5.max_dip * 100.0),
                met: b5.max_dip < 0.05,
            });
            t.push(Target {
                stage: "B5 (issue 4)",
                target: "swap p99 < 1 s for a 2 MiB component, compile included; < 10 ms from the cache",
                measured: format!(
                    "{:.0} ms compiled ({} KiB), {:.0} ms compiled ({} KiB), {:.1} ms cached",
                    b5.compile_p99_ms,
                    b5.component_bytes / 1024,
                    b5.big_p99_ms,
                    b5.big_component_bytes / 1024,
                    b5.cached_p99_ms
                ),
                met: b5.compile_p99_ms < 1000.0
                    && b5.big_p99_ms < 1000.0
                    && b5.cached_p99_ms < 10.0,
            });
        }
        if let Some(p) = &self.b6_pool {
            t.push(Target {
                stage: "B6",
                target: "0 pool slots leaked after the traps",
                measured: format!("{:?} in use after {} traps", p.in_use_after, p.traps),
                met: p.in_use_after == (0, 0, 0),
            });
        }
        if let Some(b7) = &self.b7 {
            for (name, pair) in [("Kafka", &b7.kafka), ("SQS", &b7.sqs)] {
                if let Ok(p) = pair {
                    t.push(Target {
                        stage: "B7",
                        target: if name == "Kafka" {
                            "Kafka: router ≥ 80 % of the raw rdkafka loop"
                        } else {
                            "SQS: router ≥ 80 % of the raw SDK loop"
                        },
                        measured: match p.kafka_setting {
                            Some(k) => format!(
                                "{:.0} % ({:.0}/s against {:.0}/s; {})",
                                p.ratio * 100.0,
                                p.router,
                                p.raw,
                                k.describe()
                            ),
                            None => format!("{:.0} %", p.ratio * 100.0),
                        },
                        met: p.ratio >= 0.8,
                    });
                }
            }
        }
        t
    }

    /// The report as a Markdown document.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Eventflow benchmarks\n");
        let _ = writeln!(
            s,
            "{} ({}run of {:.0} s, started {})\n",
            self.machine.summary(),
            if self.quick { "quick " } else { "" },
            self.seconds,
            self.started_at
        );
        let _ = writeln!(s, "rustc: {}\n", self.machine.rustc);
        let _ = writeln!(
            s,
            "## Targets\n\n| stage | target | measured | met |\n|---|---|---|---|"
        );
        for t in self.targets() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} |",
                t.stage,
                t.target,
                t.measured,
                if t.met { "yes" } else { "**no**" }
            );
        }
        if let Some(b1) = &self.b1 {
            let _ = writeln!(
                s,
                "\n## B1 per-message overhead (identity)\n\n| payload | native | reused instance | fresh instance | fresh / reused |\n|---|---|---|---|---|"
            );
            for r in b1 {
                let _ = writeln!(
                    s,
                    "| {} B | {:.0} ns | {:.0} ns | {:.0} ns | {:.1}× |",
                    r.size,
                    r.native_ns,
                    r.reused_ns,
                    r.fresh_ns,
                    r.fresh_ns / r.reused_ns
                );
            }
        }
        if let Some(rows) = &self.b1_settings {
            let _ = writeln!(
                s,
                "\n## B1 engine settings (fresh instance, identity, 1 KiB)\n\nEach row turns one more setting from wasmtime's default to the router's, each in its own engine, in this run.\n\n| settings | fresh instance | change |\n|---|---|---|"
            );
            let mut before: Option<f64> = None;
            for r in rows {
                let change = before
                    .map(|b| format!("{:+.0} ns", r.fresh_ns - b))
                    .unwrap_or_default();
                let _ = writeln!(s, "| {} | {:.0} ns | {change} |", r.setting, r.fresh_ns);
                before = Some(r.fresh_ns);
            }
        }
        if let Some(b2) = &self.b2 {
            let _ = writeln!(
                s,
                "\n## B2 throughput (embedded → identity → embedded, durable, {} × {} B)\n\nMessages per commit: messages settled over the embedded store's commits in that run (its writer thread's fdatasyncs, one per redb commit), for the wasm pipeline, the native one and the broker alone. CPU per message: the process's CPU time (user + system, every thread) over the messages of the run, wasm / native / broker alone; other jobs on the machine slow the rates but barely change it. The disk limit: sequential appends of 1 KiB messages with one fdatasync per batch, to a file in the same temporary directory as the broker's state, in the same run, the batch being the wasm run's messages per commit (rounded).\n\n| concurrency | wasm | native | wasm / native | broker alone | CPU per message (wasm / native / alone) | messages per commit (wasm / native / alone) | disk limit | wasm / disk limit |\n|---|---|---|---|---|---|---|---|---|",
                b2.messages, b2.payload_bytes
            );
            let per_commit = |b: crate::pipeline::StoreBatch| {
                b.per_commit()
                    .map_or("?".to_string(), |v| format!("{v:.1}"))
            };
            for r in &b2.rows {
                let _ = writeln!(
                    s,
                    "| {} | {:.0}/s | {:.0}/s | {:.0} % | {:.0}/s | {:.1} / {:.1} / {:.1} µs | {} / {} / {} | {:.0}/s at {} per fdatasync{} (fdatasync p50 {} µs, p99 {} µs) | {:.0} % |",
                    r.concurrency,
                    r.wasm,
                    r.native,
                    r.wasm / r.native * 100.0,
                    r.broker_alone,
                    r.wasm_cpu_us,
                    r.native_cpu_us,
                    r.broker_alone_cpu_us,
                    per_commit(r.wasm_batch),
                    per_commit(r.native_batch),
                    per_commit(r.broker_alone_batch),
                    r.disk_limit.msgs_per_sec,
                    r.disk_limit.batch,
                    if r.disk_batch_measured {
                        ""
                    } else {
                        " (= concurrency: no commit counted)"
                    },
                    r.disk_limit.sync_p50_us,
                    r.disk_limit.sync_p99_us,
                    r.wasm / r.disk_limit.msgs_per_sec * 100.0
                );
            }
        }
        if let Some(b3) = &self.b3 {
            let _ = writeln!(
                s,
                "\n## B3 sandbox cost (parse 1 KiB of JSON, redact)\n\n| variant | per message |\n|---|---|"
            );
            for r in b3 {
                let _ = writeln!(s, "| {} | {:.1} µs |", r.variant, r.ns_per_message / 1000.0);
            }
        }
        if let Some(rows) = &self.languages {
            crate::languages::markdown(&mut s, rows);
        }
        if let Some(b4) = &self.b4 {
            let _ = writeln!(
                s,
                "\n## B4 latency (open loop, from the intended send time)\n"
            );
            if let Some(c) = self.b4_concurrency {
                let _ = writeln!(
                    s,
                    "Loads are fractions of B2's best wasm rate; the flow runs at that rate's concurrency, {c}.\n"
                );
            }
            if let Some(disk) = &self.b4_disk {
                let _ = writeln!(
                    s,
                    "The disk in the same run, one 1 KiB append per fdatasync: p50 {} µs, p99 {} µs over {} syncs. Every message waits for several fdatasyncs in series, so the target is relative to the disk; an absolute p99 under 1 ms only holds on a quiet NVMe.\n",
                    disk.sync_p50_us, disk.sync_p99_us, disk.syncs
                );
            }
            let _ = writeln!(
                s,
                "Where the time goes, p50 / p99 of each stage: publish = intended send to the input's publish returning (durable; the sender's lag is in it), flow = that to the flow handing the output to the broker (the output's enqueue time, millisecond resolution), deliver = that to the output's consumer receiving it.\n\n| load | rate | messages | p50 | p99 | p99.9 | max | publish | flow | deliver |\n|---|---|---|---|---|---|---|---|---|---|"
            );
            let stage = |st: &crate::latency::Stage| format!("{} / {} µs", st.p50_us, st.p99_us);
            for r in b4 {
                let _ = writeln!(
                    s,
                    "| {:.0} % | {:.0}/s | {} | {} µs | {} µs | {} µs | {} µs | {} | {} | {} |",
                    r.load * 100.0,
                    r.rate,
                    r.messages,
                    r.p50_us,
                    r.p99_us,
                    r.p999_us,
                    r.max_us,
                    stage(&r.publish),
                    stage(&r.flow),
                    stage(&r.deliver),
                );
            }
        }
        if let Some(b5) = &self.b5 {
            let _ = writeln!(
                s,
                "\n## B5 hot swap under load\n\n{:.0} msgs/s for {:.0} s, {} swaps of a {} KiB component: swap latency (rename to serving) p50 {:.0} ms, p99 {:.0} ms. Outside the load: a {} KiB component (2 MiB of code) {:.0} ms, compile included; from the compiled cache {:.1} ms. Worst throughput dip in the second after a swap {:.1} % (each swap: {}; the worst second away from any swap, the noise: {:.1} %); lost {}.",
                b5.rate,
                b5.seconds,
                b5.swaps,
                b5.component_bytes / 1024,
                b5.compile_p50_ms,
                b5.compile_p99_ms,
                b5.big_component_bytes / 1024,
                b5.big_p99_ms,
                b5.cached_p99_ms,
                b5.max_dip * 100.0,
                b5.dips
                    .iter()
                    .map(|d| format!("{:.1} %", d * 100.0))
                    .collect::<Vec<_>>()
                    .join(", "),
                b5.max_dip_without_swap * 100.0,
                b5.lost
            );
        }
        if self.b6.is_some() || self.b6_pool.is_some() {
            let _ = writeln!(s, "\n## B6 failure path\n");
            if let Some(b6) = &self.b6 {
                let _ = writeln!(
                    s,
                    "{} messages (a backlog, concurrency 8): {:.0}/s without failures, {:.0}/s with 1 % traps and 0.1 % timeouts of 0.2 s ({:.0} %). Under open-loop load at half the clean rate, a trapping message's time from its intended send to its dead letter: p99 {:.0} ms over {} traps.",
                    b6.messages,
                    b6.clean_rate,
                    b6.failing_rate,
                    b6.failing_rate / b6.clean_rate * 100.0,
                    b6.trap_to_dead_letter_p99_ms,
                    b6.traps_measured
                );
            }
            if let Some(p) = &self.b6_pool {
                let _ = writeln!(
                    s,
                    "\n{} trapping invocations ({:.0}/s, {} failed as they should): pool slots in use afterwards {:?}.",
                    p.traps, p.traps_per_sec, p.failed, p.in_use_after
                );
            }
        }
        if let Some(b7) = &self.b7 {
            let _ = writeln!(
                s,
                "\n## B7 brokers (router against the raw client, same server, same run)\n\nCPU per message: user + system time of the whole benchmark process (every thread, the broker client's included) over the messages, for the router from its first message settled, for the raw loop from its first message received; the server's: the same for tansu's process over the same span. Both Kafka loops use the same setting: the producers' linger.ms and the messages in flight (the raw loop's produces awaiting acks; the router flow's concurrency).\n\n| broker | setting | router | raw loop | ratio | CPU per message: router | raw loop | server's CPU per message: router run | raw loop run |\n|---|---|---|---|---|---|---|---|---|"
            );
            let us = |c: Option<f64>| c.map_or("-".to_string(), |c| format!("{c:.0} µs"));
            for (name, pair) in [
                ("Kafka (tansu)", &b7.kafka),
                ("Kafka (tansu)", &b7.kafka_defaults),
                ("SQS (moto)", &b7.sqs),
            ] {
                match pair {
                    Ok(p) => {
                        let _ = writeln!(
                            s,
                            "| {name} | {} | {:.0}/s | {:.0}/s | {:.0} % | {} | {} | {} | {} |",
                            p.kafka_setting.map_or("-".to_string(), |k| k.describe()),
                            p.router,
                            p.raw,
                            p.ratio * 100.0,
                            us(p.router_cpu_us),
                            us(p.raw_cpu_us),
                            us(p.router_server_cpu_us),
                            us(p.raw_server_cpu_us)
                        );
                    }
                    Err(why) => {
                        let _ = writeln!(s, "| {name} | - | - | - | {why} | - | - | - | - |");
                    }
                }
            }
            if let (Ok(tuned), Ok(defaults)) = (&b7.kafka, &b7.kafka_defaults) {
                let slots = crate::brokers::DEFAULTS.in_flight as f64;
                let _ = writeln!(
                    s,
                    "\nWith librdkafka's default linger.ms (5 ms) and {slots:.0} messages in flight, the raw loop manages {:.0}/s: each in-flight slot takes {:.1} ms per message, of which 5 ms is the producer waiting for more messages before it sends a batch, the rest the round trip through tansu. That, not tansu, was the ceiling of about 1,250/s that earlier reports gave both loops (the fetch settings do not matter: the consumers drain a backlog, so no fetch waits). At {} the raw loop reaches {:.0}/s on the same server, so tansu is not what stops the router's {:.0}/s there: that is the router's own ceiling at this setting on this machine. It spends {} of CPU per message, the raw loop {}.",
                    defaults.raw,
                    slots / defaults.raw * 1000.0,
                    tuned
                        .kafka_setting
                        .map_or("-".to_string(), |k| k.describe()),
                    tuned.raw,
                    tuned.router,
                    us(tuned.router_cpu_us),
                    us(tuned.raw_cpu_us)
                );
            }
        }
        if let Some(b8) = &self.b8 {
            s.push_str(&crate::data::markdown(b8));
        }
        if let Some(b9) = &self.b9 {
            s.push_str(&crate::rollout::markdown(b9));
        }
        if let Some(r) = &self.b9_rollback {
            s.push_str(&crate::rollout::rollback_markdown(r));
        }
        if let Some(b10) = &self.b10 {
            s.push_str(&crate::ordering::markdown(b10));
        }
        if let Some(b11) = &self.b11 {
            s.push_str(&crate::batches::markdown(b11));
        }
        s
    }

    /// Writes the JSON, Markdown and PNG files; returns their paths.
    pub fn write(&self, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
        std::fs::create_dir_all(dir)?;
        let stamp = self.started_at.replace([':', '-'], "");
        let base = dir.join(format!("{stamp}-{}", self.machine.git_revision));
        let json = base.with_extension("json");
        std::fs::write(
            &json,
            serde_json::to_string_pretty(&serde_json::json!({
                "report": self,
                "targets": self.targets(),
            }))?,
        )?;
        let md = base.with_extension("md");
        std::fs::write(&md, self.markdown())?;
        let mut written = vec![json, md];
        let png = base.with_extension("png");
        match self.plot(&png) {
            Ok(()) => written.push(png),
            Err(e) => eprintln!("bench: no plot: {e:#}"),
        }
        Ok(written)
    }

    fn plot(&self, path: &Path) -> anyhow::Result<()> {
        register_font()?;
        let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
        root.fill(&WHITE)?;
        let (left, right) = root.split_horizontally(600);
        if let Some(b2) = &self.b2 {
            line_chart(
                &left,
                "B2 throughput (msgs/s)",
                "concurrency",
                0.5..8.5,
                &b2.rows,
                |r| f64::from(r.concurrency),
                &[
                    ("wasm", BLUE, |r| r.wasm),
                    ("native", RED, |r| r.native),
                    ("broker alone", GREEN, |r| r.broker_alone),
                ],
            )?;
        }
        if let Some(b4) = &self.b4 {
            line_chart(
                &right,
                "B4 latency (µs)",
                "load, % of B2's best",
                0.0..90.0,
                b4,
                |r| r.load * 100.0,
                &[
                    ("p50", GREEN, |r| r.p50_us as f64),
                    ("p99", BLUE, |r| r.p99_us as f64),
                    ("p99.9", RED, |r| r.p999_us as f64),
                ],
            )?;
        }
        root.present()?;
        Ok(())
    }
}

/// One series of a line chart: its name, colour and value of a row.
type Series<'a, R> = (&'a str, RGBColor, fn(&R) -> f64);

/// Draws `series` over `rows` on `area`, with points, a legend and a y axis
/// from 0 to a little above the largest value.
fn line_chart<R>(
    area: &DrawingArea<BitMapBackend<'_>, plotters::coord::Shift>,
    caption: &str,
    x_desc: &str,
    x_range: std::ops::Range<f64>,
    rows: &[R],
    x: fn(&R) -> f64,
    series: &[Series<'_, R>],
) -> anyhow::Result<()> {
    let top = rows
        .iter()
        .flat_map(|r| series.iter().map(move |(_, _, value)| value(r)))
        .fold(0.0, f64::max)
        * 1.1;
    let mut chart = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(70)
        .build_cartesian_2d(x_range, 0f64..top.max(1.0))?;
    chart.configure_mesh().x_desc(x_desc).draw()?;
    for &(name, color, value) in series {
        let points: Vec<(f64, f64)> = rows.iter().map(|r| (x(r), value(r))).collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .border_style(BLACK)
        .background_style(WHITE)
        .draw()?;
    Ok(())
}

/// Plotters draws text with a font it is given: the first TrueType font
/// found in the usual places.
fn register_font() -> anyhow::Result<()> {
    let candidates = [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    ];
    let bytes = candidates
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .ok_or_else(|| anyhow::anyhow!("no TrueType font found (install fonts-dejavu-core)"))?;
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
        .map_err(|_| anyhow::anyhow!("the font could not be read"))?;
    Ok(())
}
