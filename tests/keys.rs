//! A poisoned key (`ordering = "key"`, `on_key_failure`), with the real
//! router on the embedded broker: retries keep the key's order, a message
//! that fails for good is dead-lettered and then either its key's next
//! message proceeds (`continue`) or the key's later messages are held,
//! across a `kill -9`, until an operator releases (handled in order) or
//! drops (deleted) them.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Router, one_flow, wait_for};

/// `test/flaky` fails a message's first `fail_times` attempts (with a
/// retry request), or every attempt with `always_fail`.
fn config(on_key_failure: &str) -> String {
    one_flow(
        "keyed",
        "test/flaky",
        &format!(
            r#"ordering = "key"
on_key_failure = "{on_key_failure}"
concurrency = 8
max_receives = 3
retry = {{ backoff = "fixed", base_ms = 300, jitter = false }}"#
        ),
    )
}

/// Publishes `(key, id, behaviour)` messages in one request, in order.
fn send(router: &Router, messages: &[(&str, &str, Value)]) {
    let messages = messages
        .iter()
        .map(|(key, id, how)| {
            let mut payload = how.clone();
            payload["id"] = json!(id);
            json!({ "payload": payload.to_string(), "key": key })
        })
        .collect();
    router.send("in", messages);
}

/// The ids on `out`, in the order they were published, by key (the
/// first letter of the id).
fn outputs(router: &Router) -> BTreeMap<char, Vec<String>> {
    let mut by_key: BTreeMap<char, Vec<String>> = BTreeMap::new();
    for m in router.peek("local", "out") {
        let out: Value = serde_json::from_str(m["payload"].as_str().unwrap()).unwrap();
        let id = out["payload"]["id"].as_str().unwrap().to_string();
        by_key
            .entry(id.chars().next().unwrap())
            .or_default()
            .push(id);
    }
    by_key
}

fn ids(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

fn ok() -> Value {
    json!({ "fail_times": 0 })
}

fn poison() -> Value {
    json!({ "always_fail": true })
}

/// The parked keys of the flow: key → messages held.
fn parked(router: &Router) -> BTreeMap<String, u64> {
    let (status, body) = router.http("GET", "/v1/flows/keyed/keys", None);
    assert_eq!(status, 200, "{body}");
    body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| {
            (
                k["key"].as_str().unwrap().to_string(),
                k["messages"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Regression (a retry lost its key's order): a message retried twice
/// still comes out before its key's later messages; with `continue`, a
/// poisoned message is dead-lettered after its retries and its key's next
/// message proceeds.
#[test]
fn a_retry_keeps_its_keys_order_and_continue_moves_past_a_poisoned_message() {
    let router = Router::start(&config("continue"));
    send(
        &router,
        &[
            ("a", "a0", json!({ "fail_times": 2 })),
            ("b", "b0", poison()),
            ("a", "a1", ok()),
            ("b", "b1", ok()),
            ("a", "a2", ok()),
            ("b", "b2", ok()),
        ],
    );
    let out = wait_for("every good output", Duration::from_secs(60), || {
        let out = outputs(&router);
        (out.values().map(Vec::len).sum::<usize>() >= 5).then_some(out)
    });
    assert_eq!(out[&'a'], ids(&["a0", "a1", "a2"]), "{out:?}");
    assert_eq!(out[&'b'], ids(&["b1", "b2"]), "{out:?}");
    let dead = wait_for("the dead letter", Duration::from_secs(30), || {
        let d = router.dead_letters("keyed");
        (!d.is_empty()).then_some(d)
    });
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0]["payload"].as_str().unwrap().contains("b0"),
        "{dead:?}"
    );
    assert!(parked(&router).is_empty());
}

/// With `park`, a poisoned key's later messages are held (other keys go
/// on), survive `kill -9`, show in the status and the metrics, and come out
/// in order once released; a dropped key's held messages are deleted.
#[test]
fn a_parked_key_holds_its_messages_across_kill_9_until_released_or_dropped() {
    let mut router = Router::start(&config("park"));
    send(
        &router,
        &[
            ("p", "p0", poison()),
            ("q", "q0", ok()),
            ("p", "p1", ok()),
            ("q", "q1", ok()),
            ("p", "p2", ok()),
        ],
    );
    // q's outputs, p0's dead letter, and the status and metrics (read from
    // the state store after the hold) each come at their own moment: wait
    // for all of them.
    let (out, report) = wait_for("p's later messages held", Duration::from_secs(60), || {
        let out = outputs(&router);
        let report = router.flow("keyed");
        let metrics = router.metrics();
        (parked(&router).get("p") == Some(&2)
            && out.get(&'q').is_some_and(|q| q.len() >= 2)
            && !router.dead_letters("keyed").is_empty()
            && report["parked_messages"] == 2
            && metrics.contains(r#"eventflow_parked_messages{flow="keyed"} 2"#))
        .then_some((out, report))
    });
    assert_eq!(out[&'q'], ids(&["q0", "q1"]));
    assert!(!out.contains_key(&'p'));
    assert_eq!(router.dead_letters("keyed").len(), 1);
    assert_eq!(
        (&report["parked_keys"], &report["parked_messages"]),
        (&json!(1), &json!(2)),
        "{report}"
    );

    router.kill9();
    router.launch();
    assert_eq!(parked(&router), BTreeMap::from([("p".to_string(), 2)]));
    // Still parked after the restart: a new message of p is held too.
    send(&router, &[("p", "p3", ok()), ("q", "q2", ok())]);
    wait_for("p3 held", Duration::from_secs(30), || {
        (parked(&router).get("p") == Some(&3)).then_some(())
    });
    let listed = router.cli_ok(&["keys", "list", "keyed"]);
    assert!(listed.contains('p') && listed.contains('3'), "{listed}");

    router.cli_ok(&["keys", "release", "keyed", "p"]);
    let out = wait_for("p's held messages handled", Duration::from_secs(60), || {
        let out = outputs(&router);
        (out.get(&'p').map(Vec::len) == Some(3)).then_some(out)
    });
    assert_eq!(out[&'p'], ids(&["p1", "p2", "p3"]), "{out:?}");
    wait_for("p unparked", Duration::from_secs(30), || {
        parked(&router).is_empty().then_some(())
    });
    // Unparked: its next message goes straight through.
    send(&router, &[("p", "p4", ok())]);
    wait_for("p4", Duration::from_secs(30), || {
        (outputs(&router)[&'p'].len() == 4).then_some(())
    });

    // Drop: the held messages are deleted, never handled.
    send(&router, &[("r", "r0", poison()), ("r", "r1", ok())]);
    wait_for("r1 held", Duration::from_secs(60), || {
        (parked(&router).get("r") == Some(&1)).then_some(())
    });
    let dropped = router.cli_ok(&["keys", "drop", "keyed", "r", "--yes"]);
    assert!(dropped.contains("1 messages"), "{dropped}");
    assert!(parked(&router).is_empty());
    send(&router, &[("r", "r2", ok())]);
    let out = wait_for("r2", Duration::from_secs(30), || {
        let out = outputs(&router);
        out.contains_key(&'r').then_some(out)
    });
    assert_eq!(out[&'r'], ids(&["r2"]), "{out:?}");
    let (status, body) = router.http(
        "POST",
        "/v1/flows/keyed/keys/release",
        Some(json!({ "key": "nope" })),
    );
    assert_eq!(status, 404, "{body}");
}

#[test]
fn park_without_key_order_is_a_config_error() {
    let text = config("park").replace("ordering = \"key\"\n", "");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("eventflow.toml");
    std::fs::write(&path, text).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_eventflow"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("on_key_failure") && err.contains("ordering = \"key\""),
        "{err}"
    );
}

/// `on_key_failure` is set through the CLI and the API as through the
/// configuration: `flows edit --on-key-failure park` parks the next
/// poisoned key of the running flow, the API shows and changes the choice,
/// and `park` without key order is refused with the reason.
#[test]
fn on_key_failure_is_set_through_the_cli_and_the_api() {
    let router = Router::start(&config("continue"));
    let edited = router.cli_ok(&["flows", "edit", "keyed", "--on-key-failure", "park"]);
    assert!(edited.contains("keyed"), "{edited}");
    let (status, flow) = router.http("GET", "/v1/flows/keyed", None);
    assert_eq!(status, 200, "{flow}");
    assert_eq!(flow["on_key_failure"], "park", "{flow}");

    // The restarted flow parks: a poisoned message holds its key's next.
    send(&router, &[("a", "a1", poison()), ("a", "a2", ok())]);
    wait_for("key a to park", Duration::from_secs(60), || {
        (parked(&router).get("a") == Some(&1)).then_some(())
    });
    assert!(
        !outputs(&router).contains_key(&'a'),
        "{:?}",
        outputs(&router)
    );

    // Key order cannot be dropped while parking needs it.
    let (status, body) = router.http(
        "PATCH",
        "/v1/flows/keyed",
        Some(json!({ "ordering": "none" })),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("on_key_failure"), "{body}");

    let (status, body) = router.http(
        "PATCH",
        "/v1/flows/keyed",
        Some(json!({ "on_key_failure": "continue" })),
    );
    assert_eq!(status, 200, "{body}");
    let (_, flow) = router.http("GET", "/v1/flows/keyed", None);
    assert_eq!(flow["on_key_failure"], "continue", "{flow}");
}
