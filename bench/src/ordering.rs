//! B10 order by key: the embedded broker → a native identity → the embedded
//! broker, durable, 1 KiB, at concurrency 8, with `ordering = "none"` and
//! with `ordering = "key"` over 1, 10 and 1,000 distinct keys (the
//! `message-key` header, keys taken round robin). A key's next message
//! starts only once the one before it is settled (its output and ack
//! durable), so one key runs at the rate of the store's commits and many
//! keys at the rate of `none`.

use serde::Serialize;

use crate::pipeline::{Drained, bed, install_native_identity, kib, pipeline_config};
use eventflow::message::{KEY_HEADER, OutboundMessage};

/// The flows' concurrency.
const CONCURRENCY: u32 = 8;

/// One run.
#[derive(Debug, Serialize)]
pub struct KeyedRow {
    /// Distinct keys; `None`: `ordering = "none"`, no keys.
    pub keys: Option<usize>,
    /// Messages per second, enabling to the last one settled.
    pub rate: f64,
    /// Process CPU time per message, in microseconds.
    pub cpu_us: f64,
}

/// B10's result.
#[derive(Debug, Serialize)]
pub struct KeyedThroughput {
    /// Messages per run.
    pub messages: usize,
    /// The flows' concurrency.
    pub concurrency: u32,
    /// `none` first, then 1, 10 and 1,000 keys.
    pub rows: Vec<KeyedRow>,
}

/// B10.
pub async fn b10(o: &crate::Options) -> anyhow::Result<KeyedThroughput> {
    let n = o.messages.unwrap_or(o.pick(2_000usize, 20_000));
    let mut rows = Vec::new();
    for keys in [None, Some(1), Some(10), Some(1_000)] {
        let extra = if keys.is_some() {
            "ordering = \"key\""
        } else {
            ""
        };
        let bed = bed(
            None,
            &pipeline_config("bench/native/1.0.0", CONCURRENCY, extra),
        )
        .await?;
        install_native_identity(&bed);
        let messages = (0..n)
            .map(|i| OutboundMessage {
                payload: kib(i),
                headers: keys
                    .map(|k| vec![(KEY_HEADER.to_string(), format!("k{}", i % k))])
                    .unwrap_or_default(),
            })
            .collect();
        let Drained { rate, cpu_us, .. } = bed.drain(messages).await?;
        eprintln!("  keys {keys:?}: {rate:.0} msgs/s, {cpu_us:.1} µs CPU/msg");
        rows.push(KeyedRow { keys, rate, cpu_us });
    }
    Ok(KeyedThroughput {
        messages: n,
        concurrency: CONCURRENCY,
        rows,
    })
}

/// The report's section.
pub fn markdown(b10: &KeyedThroughput) -> String {
    let mut s = format!(
        "\n## B10 order by key (embedded → native identity → embedded, durable, 1 KiB, {} messages, concurrency {})\n\n| ordering | msgs/s | CPU/msg | of `none` |\n|---|---|---|---|\n",
        b10.messages, b10.concurrency
    );
    let none = b10
        .rows
        .iter()
        .find(|r| r.keys.is_none())
        .map_or(0.0, |r| r.rate);
    for r in &b10.rows {
        let name = match r.keys {
            None => "none".to_string(),
            Some(k) => format!("key, {k} key{}", if k == 1 { "" } else { "s" }),
        };
        let share = if none > 0.0 {
            format!("{:.0} %", r.rate / none * 100.0)
        } else {
            "-".into()
        };
        s.push_str(&format!(
            "| {name} | {:.0} | {:.1} µs | {share} |\n",
            r.rate, r.cpu_us
        ));
    }
    s
}
