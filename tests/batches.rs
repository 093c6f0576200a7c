//! Batches (`batch = { ... }`) with the real router on the embedded broker:
//! a 0.2.0 component's `apply-batch` sees many messages in one call; a
//! failed message of a batch is retried or dead-lettered alone; a trap fails
//! every message of its batch once; a 0.1.0 component in a flow with
//! `batch` keeps one message per call; what a batch publishes is sent.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Router, wait_for};

/// `examples/batch_echo` (0.2.0) and `examples/echo` (0.1.0), each in a flow
/// with batches of up to 64 that wait up to 2 s for their messages, one
/// call at a time, and (`batch_echo`) four attempts 200 ms apart.
const CONFIG: &str = r#"
[[brokers]]
name = "local"
kind = "embedded"

[[topics]]
name = "in"
consumers = ["examples/batch_echo"]

[[topics]]
name = "in-v1"
consumers = ["examples/echo"]

[[topics]]
name = "out"
publishers = ["examples/batch_echo", "examples/echo"]

[[topics]]
name = "side"
publishers = ["examples/batch_echo"]

[[topics]]
name = "dlq"

[[flows]]
name = "batched"
topic = "in"
algorithm = "examples/batch_echo"
output_topic = "out"
dead_letter_topic = "dlq"
concurrency = 1
max_receives = 4
batch = { max_messages = 64, max_wait_ms = 2000 }

[flows.retry]
backoff = "fixed"
base_ms = 200
jitter = false

[[flows]]
name = "single"
topic = "in-v1"
algorithm = "examples/echo"
output_topic = "out"
dead_letter_topic = "dlq"
batch = { max_messages = 64, max_wait_ms = 2000 }
"#;

/// The outputs on `out`, as text.
fn outputs(router: &Router) -> Vec<String> {
    router
        .peek("local", "out")
        .iter()
        .map(|m| m["payload"].as_str().unwrap().to_string())
        .collect()
}

/// The outputs of `batch_echo`'s annotated messages, `"<payload> batch=N
/// attempt=A"`, by payload: (N, A) of each time it was output.
fn annotated(router: &Router) -> BTreeMap<String, Vec<(u32, u32)>> {
    let mut by_payload: BTreeMap<String, Vec<(u32, u32)>> = BTreeMap::new();
    for out in outputs(router) {
        let Some((payload, rest)) = out.split_once(" batch=") else {
            continue;
        };
        let (batch, attempt) = rest.split_once(" attempt=").unwrap();
        by_payload
            .entry(payload.to_string())
            .or_default()
            .push((batch.parse().unwrap(), attempt.parse().unwrap()));
    }
    by_payload
}

/// Waits until flow `name` has settled `total` messages, none in flight.
fn settled(router: &Router, name: &str, total: u64) -> Value {
    wait_for("every message settled", Duration::from_secs(90), || {
        let f = router.flow(name);
        let done = f["succeeded"].as_u64().unwrap() + f["dead_lettered"].as_u64().unwrap() == total
            && f["in_flight"] == 0;
        done.then_some(f)
    })
}

#[test]
fn a_batch_retries_and_dead_letters_only_its_failed_messages() {
    let router = Router::start(CONFIG);
    // 64 messages in one publish: one receive, so one batch of 64. Three of
    // them ask for a retry on their first attempt and two to be rejected.
    let payloads: Vec<String> = (0..64)
        .map(|i| match i {
            10 | 30 | 50 => format!("retry-once:{i}"),
            20 | 40 => format!("reject:{i}"),
            _ => format!("size:{i}"),
        })
        .collect();
    router.publish("in", &payloads);
    let flow = settled(&router, "batched", 64);
    assert_eq!(flow["succeeded"], 62, "{flow}");
    assert_eq!(flow["dead_lettered"], 2, "{flow}");
    // Exactly the three were retried, each once.
    assert_eq!(flow["retried"], 3, "{flow}");

    let outputs = annotated(&router);
    assert_eq!(outputs.len(), 62, "{outputs:?}");
    for (payload, seen) in &outputs {
        // Every message was output once: no message of the batch ran again
        // because another one failed.
        assert_eq!(seen.len(), 1, "{payload}: {seen:?}");
        let (batch, attempt) = seen[0];
        if payload.starts_with("retry-once:") {
            assert_eq!((batch, attempt), (1, 2), "{payload}");
        } else {
            // The first call held all 64.
            assert_eq!((batch, attempt), (64, 1), "{payload}");
        }
    }
    // The first call, then each retry alone.
    let batches = flow["batches"].as_u64().unwrap();
    assert_eq!(batches, 4, "{flow}");
    assert_eq!(flow["batched_messages"], 67, "{flow}");

    let letters = router.dead_letters("batched");
    let mut rejected: Vec<&str> = letters
        .iter()
        .map(|l| {
            assert_eq!(l["last_failure"]["reason"], "guest_reject", "{l}");
            l["payload"].as_str().unwrap()
        })
        .collect();
    rejected.sort();
    assert_eq!(rejected, ["reject:20", "reject:40"]);

    let status = router.cli_ok(&["status"]);
    assert!(
        status.contains("batches: 4 calls of apply-batch, 67 messages"),
        "{status}"
    );
    let metrics = router.metrics();
    assert!(
        metrics.contains(&format!(
            "eventflow_batches_total{{flow=\"batched\"}} {batches}"
        )),
        "{metrics}"
    );
}

#[test]
fn a_trap_fails_every_message_of_its_batch_once_and_then_each_runs_alone() {
    let router = Router::start(CONFIG);
    // One message traps every call it is in, another only its first.
    let mut payloads: Vec<String> = (0..62).map(|i| format!("size:{i}")).collect();
    payloads.insert(17, "trap-once:17".into());
    payloads.insert(40, "trap:40".into());
    router.publish("in", &payloads);
    let flow = settled(&router, "batched", 64);
    assert_eq!(
        (&flow["succeeded"], &flow["dead_lettered"]),
        (&json!(63), &json!(1)),
        "{flow}"
    );
    // The first call trapped: all 64 were retried. Then each ran alone:
    // the 63 others succeeded at their second attempt, and only `trap:40`
    // went on to its fourth and last (retried twice more).
    assert_eq!(flow["retried"], 66, "{flow}");
    assert_eq!(flow["batches"], 1 + 63 + 3, "{flow}");
    assert_eq!(flow["batched_messages"], 64 + 63 + 3, "{flow}");
    let outputs = annotated(&router);
    assert_eq!(outputs.len(), 63);
    for (payload, seen) in &outputs {
        assert_eq!(
            seen,
            &[(1, 2)],
            "{payload} was not failed by the trap, or did not run alone"
        );
    }
    let letters = router.dead_letters("batched");
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0]["payload"], "trap:40");
    assert_eq!(
        letters[0]["last_failure"]["reason"], "trap",
        "{}",
        letters[0]
    );
    let metrics = router.metrics();
    assert!(
        metrics.contains("eventflow_messages_retried_total{flow=\"batched\",algorithm=\"examples/batch_echo@0.1.0\",reason=\"trap\"} 66"),
        "{}",
        metrics
            .lines()
            .filter(|l| l.contains("retried"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn a_0_1_0_component_keeps_one_message_per_call_beside_a_0_2_0_one_whose_publishes_are_sent() {
    let router = Router::start(CONFIG);
    // Both versions of the world load side by side.
    let (status, body) = router.http("GET", "/v1/plugins", None);
    assert_eq!(status, 200, "{body}");
    let world = |algorithm: &str| {
        body["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["algorithm"] == algorithm)
            .map(|p| p["world"].clone())
    };
    assert_eq!(
        world("examples/echo/0.1.0"),
        Some(json!("eventflow:algorithm@0.1.0"))
    );
    assert_eq!(
        world("examples/batch_echo/0.1.0"),
        Some(json!("eventflow:algorithm@0.2.0"))
    );
    router.publish(
        "in-v1",
        &(0..10).map(|i| format!("v1:{i}")).collect::<Vec<_>>(),
    );
    let mut batched: Vec<String> = (0..9).map(|i| format!("size:{i}")).collect();
    batched.push("publish:to the side".into());
    router.publish("in", &batched);

    let single = settled(&router, "single", 10);
    assert_eq!(single["succeeded"], 10, "{single}");
    // The 0.1.0 component has no apply-batch: no call was a batch.
    assert_eq!(
        (&single["batches"], &single["batched_messages"]),
        (&json!(0), &json!(0)),
        "{single}"
    );
    let batched = settled(&router, "batched", 10);
    assert_eq!(batched["succeeded"], 10, "{batched}");
    assert_eq!(
        (&batched["batches"], &batched["batched_messages"]),
        (&json!(1), &json!(10)),
        "{batched}"
    );

    let all = outputs(&router);
    for i in 0..10 {
        assert!(all.contains(&format!("v1:{i}")), "{all:?}");
    }
    for (payload, seen) in annotated(&router) {
        assert_eq!(seen, [(10, 1)], "{payload}");
    }
    // What the batch published went to `side`, stamped with its flow.
    let side = wait_for("the publish", Duration::from_secs(30), || {
        let side = router.peek("local", "side");
        (!side.is_empty()).then_some(side)
    });
    assert_eq!(side.len(), 1, "{side:?}");
    assert_eq!(side[0]["payload"], "to the side");
    assert_eq!(support::header(&side[0], "eventflow-flow"), Some("batched"));
}

#[test]
fn batch_settings_are_checked_naming_the_file_and_field() {
    let bad = CONFIG.replace(
        "max_messages = 64, max_wait_ms = 2000 }\n\n[flows.retry]",
        "max_messages = 5000, max_wait_ms = 2000 }\n\n[flows.retry]",
    );
    let router = Router::configure(&bad, support::Plugins::Shared);
    let out = router.cli(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for part in [
        "eventflow.toml",
        "flows[0].batch.max_messages",
        "5000 must be between 1 and 1024",
    ] {
        assert!(stderr.contains(part), "{part:?} missing in: {stderr}");
    }
}

#[test]
fn a_stopping_flow_runs_its_open_batch_at_once() {
    // A batch that would wait a minute for more messages.
    let config = CONFIG.replace(
        "max_receives = 4\nbatch = { max_messages = 64, max_wait_ms = 2000 }",
        "max_receives = 4\nbatch = { max_messages = 64, max_wait_ms = 60000 }",
    );
    let router = Router::start(&config);
    router.publish("in", &["size:a".into(), "size:b".into(), "size:c".into()]);
    wait_for(
        "the three waiting in their batch",
        Duration::from_secs(30),
        || {
            let f = router.flow("batched");
            (f["received"] == 3 && f["in_flight"] == 3).then_some(())
        },
    );
    let (status, body) = router.http(
        "PATCH",
        "/v1/flows/batched",
        Some(json!({ "enabled": false })),
    );
    assert_eq!(status, 200, "{body}");
    // The stop runs the batch instead of waiting out max_wait_ms (or the
    // shutdown grace, after which the messages would be given back).
    let outputs = wait_for("the batch run by the stop", Duration::from_secs(15), || {
        let outputs = annotated(&router);
        (outputs.len() == 3).then_some(outputs)
    });
    for (payload, seen) in outputs {
        assert_eq!(seen, [(3, 1)], "{payload}");
    }
}
