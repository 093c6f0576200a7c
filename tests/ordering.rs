//! Order by key on the embedded broker (`ordering = "key"`), with the real
//! router: the messages of one key are handled one at a time in the order
//! received while different keys overlap; the key comes from the publish
//! API's `key` or `eventflow send --key`.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Router, wait_for};

const KEYED: &str = r#"
[[brokers]]
name = "local"
kind = "embedded"

[[topics]]
name = "in"
consumers = ["test/slow"]

[[topics]]
name = "out"
publishers = ["test/slow"]

[[flows]]
name = "keyed"
topic = "in"
algorithm = "test/slow"
output_topic = "out"
ordering = "key"
concurrency = 8
timeout_secs = 10
"#;

const KEYS: [&str; 4] = ["a", "b", "c", "d"];
const ROUNDS: usize = 4;

/// `(start, end)` in nanoseconds of each invocation, by id.
fn intervals(router: &Router) -> BTreeMap<String, (u128, u128)> {
    router
        .data_files("test/intervals")
        .into_iter()
        .map(|id| {
            let text = router
                .data_file(&format!("test/intervals/{id}"))
                .map(|b| String::from_utf8(b).unwrap())
                .unwrap();
            let (a, b) = text.split_once(' ').unwrap();
            (id, (a.parse().unwrap(), b.parse().unwrap()))
        })
        .collect()
}

#[test]
fn one_key_is_handled_in_order_while_keys_overlap() {
    let router = Router::start(KEYED);
    // Interleaved keys; within a key, earlier messages sleep longer, so
    // without the per-key wait later ones would finish first.
    let mut messages = Vec::new();
    for round in 0..ROUNDS {
        for key in KEYS {
            let sleep_ms = (ROUNDS - round) * 150;
            let payload = json!({ "id": format!("{key}{round}"), "sleep_ms": sleep_ms });
            messages.push(json!({ "payload": payload.to_string(), "key": key }));
        }
    }
    router.send("in", messages);
    let total = KEYS.len() * ROUNDS;
    let outputs = wait_for("every output", Duration::from_secs(90), || {
        let out = router.peek("local", "out");
        (out.len() == total).then_some(out)
    });

    // Each key's outputs come out in input order.
    let mut by_key: BTreeMap<char, Vec<String>> = BTreeMap::new();
    for m in &outputs {
        let payload: Value = serde_json::from_str(m["payload"].as_str().unwrap()).unwrap();
        let id = payload["id"].as_str().unwrap().to_string();
        by_key
            .entry(id.chars().next().unwrap())
            .or_default()
            .push(id);
    }
    for key in KEYS {
        let expected: Vec<String> = (0..ROUNDS).map(|r| format!("{key}{r}")).collect();
        let k = key.chars().next().unwrap();
        assert_eq!(by_key[&k], expected, "outputs of key {key}: {outputs:?}");
    }

    // One key's invocations never overlap; different keys' do.
    let spans = intervals(&router);
    assert_eq!(spans.len(), total, "{spans:?}");
    for key in KEYS {
        for round in 1..ROUNDS {
            let before = spans[&format!("{key}{}", round - 1)];
            let this = spans[&format!("{key}{round}")];
            assert!(
                before.1 <= this.0,
                "{key}{round} started before {key}{} ended",
                round - 1
            );
        }
    }
    let mut events: Vec<(u128, i32)> = spans
        .values()
        .flat_map(|&(s, e)| [(s, 1), (e, -1)])
        .collect();
    events.sort();
    let (mut now, mut overlap) = (0, 0);
    for (_, d) in events {
        now += d;
        overlap = overlap.max(now);
    }
    assert!(overlap >= 2, "different keys never overlapped: {spans:?}");
}

#[test]
fn the_cli_sends_a_key_and_the_api_sets_the_ordering() {
    let router =
        Router::start(&KEYED.replace("name = \"keyed\"", "name = \"keyed\"\nenabled = false"));
    router.cli_ok(&["send", "in", "--data", "{}", "--key", "customer-7"]);
    let peeked = router.peek("local", "in");
    assert_eq!(peeked.len(), 1, "{peeked:?}");
    assert_eq!(
        peeked[0]["headers"],
        json!([["message-key", "customer-7"]]),
        "{peeked:?}"
    );
    // The API takes `ordering` too, and shows it.
    let (status, body) = router.http(
        "PATCH",
        "/v1/flows/keyed",
        Some(json!({ "ordering": "none" })),
    );
    assert_eq!((status, &body["ordering"]), (200, &json!("none")), "{body}");
    // The embedded broker has no partitions to keep the order of.
    let (status, body) = router.http(
        "PATCH",
        "/v1/flows/keyed",
        Some(json!({ "ordering": "partition" })),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body.to_string().contains("needs a broker with partitions"),
        "{body}"
    );
}
