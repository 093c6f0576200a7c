//! Flow filters on the embedded broker with the real router: matching
//! messages invoke the algorithm; the others are acknowledged, counted as
//! `filtered` and never invoked; a bad pattern is a configuration error that
//! names the flow and the pattern, in a file as through the control plane.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Router, wait_for};

/// Orders above 100 from a shop, echoed to `out`.
const ORDERS: &str = r#"
[[brokers]]
name = "local"
kind = "embedded"

[[topics]]
name = "incoming"
consumers = ["examples/echo"]

[[topics]]
name = "out"
publishers = ["examples/echo"]

[[flows]]
name = "orders"
topic = "incoming"
algorithm = "examples/echo"
output_topic = "out"

[flows.filter]
payload = { kind = ["order"], amount = [{ numeric = [">", 100] }] }
headers = { source = [{ prefix = "shop-" }] }
"#;

/// A message for the publish API.
fn message(payload: &str, source: Option<&str>) -> Value {
    match source {
        Some(s) => json!({ "payload": payload, "headers": [["source", s]] }),
        None => json!({ "payload": payload }),
    }
}

/// The payloads on `out`, sorted.
fn outputs(router: &Router) -> Vec<String> {
    let mut out: Vec<String> = router
        .peek("local", "out")
        .iter()
        .map(|m| m["payload"].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}

#[test]
fn messages_that_do_not_match_are_acknowledged_and_counted_never_invoked() {
    let router = Router::start(ORDERS);
    let matching = [
        r#"{"kind": "order", "amount": 150, "id": 1}"#,
        r#"{"kind": "order", "amount": 100.5, "id": 2}"#,
        r#"{"kind": ["gift", "order"], "amount": 1000, "id": 3}"#,
    ];
    let not_matching = [
        (r#"{"kind": "refund", "amount": 150}"#, Some("shop-eu")),
        (r#"{"kind": "order", "amount": 100}"#, Some("shop-eu")),
        (r#"{"kind": "order", "amount": "150"}"#, Some("shop-eu")),
        (r#"{"kind": "order"}"#, Some("shop-eu")),
        (r#"{"kind": "order", "amount": 150}"#, Some("web")),
        (r#"{"kind": "order", "amount": 150}"#, None),
        (r#"{"kind": "order", "amount": 150"#, Some("shop-eu")),
        ("not json at all", Some("shop-eu")),
    ];
    let mut messages: Vec<Value> = not_matching.iter().map(|(p, s)| message(p, *s)).collect();
    messages.extend(matching.iter().map(|p| message(p, Some("shop-us"))));
    router.send("incoming", messages);

    let total = (matching.len() + not_matching.len()) as u64;
    let flow = wait_for("every message settled", Duration::from_secs(60), || {
        let f = router.flow("orders");
        let done = f["received"] == total
            && f["in_flight"] == 0
            && router.peek("local", "incoming").is_empty();
        done.then_some(f)
    });
    assert_eq!(flow["filtered"], not_matching.len() as u64, "{flow}");
    assert_eq!(flow["succeeded"], matching.len() as u64, "{flow}");
    assert_eq!(
        (&flow["retried"], &flow["dead_lettered"], &flow["dropped"]),
        (&json!(0), &json!(0), &json!(0)),
        "{flow}"
    );
    let mut expected: Vec<String> = matching.iter().map(|p| p.to_string()).collect();
    expected.sort();
    assert_eq!(outputs(&router), expected);
    let metrics = router.metrics();
    assert!(
        metrics.contains(&format!(
            "eventflow_messages_filtered_total{{flow=\"orders\"}} {}",
            not_matching.len()
        )),
        "{metrics}"
    );
    // The algorithm ran for the matching messages only.
    let invocations: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("eventflow_invocation_duration_seconds_count{flow=\"orders\""))
        .collect();
    assert!(
        invocations.len() == 1 && invocations[0].ends_with(&format!(" {}", matching.len())),
        "{invocations:?}"
    );
    let status = router.cli_ok(&["status"]);
    assert!(status.contains("FILTERED"), "{status}");
}

#[test]
fn the_filter_is_set_and_removed_through_the_cli_and_the_api() {
    let router = Router::start(ORDERS);
    let shown = router.cli_ok(&["flows", "show", "orders"]);
    let shown: Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(
        shown["filter"]["headers"]["source"],
        json!([{ "prefix": "shop-" }]),
        "{shown}"
    );
    // Refunds instead of orders, from anywhere.
    router.cli_ok(&[
        "flows",
        "edit",
        "orders",
        "--filter",
        r#"{"payload": {"kind": ["refund"]}}"#,
    ]);
    router.send(
        "incoming",
        vec![
            message(r#"{"kind": "order", "amount": 500}"#, Some("shop-eu")),
            message(r#"{"kind": "refund", "n": 1}"#, None),
        ],
    );
    wait_for("the refund echoed", Duration::from_secs(60), || {
        (outputs(&router) == [r#"{"kind": "refund", "n": 1}"#]).then_some(())
    });
    wait_for("the order filtered", Duration::from_secs(60), || {
        (router.flow("orders")["filtered"] == 1).then_some(())
    });

    // A bad pattern is refused, naming the flow and the pattern; the flow
    // keeps its filter.
    let (status, body) = router.http(
        "PATCH",
        "/v1/flows/orders",
        Some(json!({ "filter": { "payload": { "amount": [{ "numeric": ["~", 1] }] } } })),
    );
    assert_eq!(status, 400, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("\"orders\"")
            && error.contains("payload.amount[0]")
            && error.contains(r#"{"numeric":["~",1]}"#)
            && error.contains("not an operator"),
        "{error}"
    );
    let (_, shown) = router.http("GET", "/v1/flows/orders", None);
    assert_eq!(
        shown["filter"],
        json!({ "payload": { "kind": ["refund"] } })
    );

    // Without a filter every message is processed.
    let (status, body) = router.http("PATCH", "/v1/flows/orders", Some(json!({ "filter": null })));
    assert_eq!(status, 200, "{body}");
    assert!(body.get("filter").is_none(), "{body}");
    router.send("incoming", vec![message("plain text", None)]);
    wait_for("the plain message echoed", Duration::from_secs(60), || {
        outputs(&router)
            .contains(&"plain text".to_string())
            .then_some(())
    });
}

#[test]
fn a_bad_pattern_is_a_configuration_error_naming_file_flow_and_pattern() {
    let bad = ORDERS.replace(r#"[">", 100]"#, r#"[">"]"#);
    let router = Router::configure(&bad, support::Plugins::Shared);
    let out = router.cli(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    for part in [
        "eventflow.toml",
        "flows[0].filter.payload.amount[0]",
        "flow \"orders\"",
        r#"{"numeric":[">"]}"#,
        "pairs of an operator",
    ] {
        assert!(stderr.contains(part), "{part:?} missing in: {stderr}");
    }
    // An unknown part of a filter is refused by the parser, with its line.
    let unknown = ORDERS.replace("headers = {", "body = {");
    router.rewrite(&unknown);
    let out = router.cli(&["check"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("flows[0].filter") && stderr.contains("body"),
        "{stderr}"
    );
}
