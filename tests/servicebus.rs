//! Azure Service Bus end to end against the REST-protocol test double in
//! tests/support/servicebus_server.rs (no emulator can be installed
//! offline): lock renewal, abandon and redelivery, the queue's own
//! dead-lettering, a wrong key, and redacted credentials. What every broker
//! does (the demo flow, router-side dead-lettering, `kill -9`, ...) is in
//! tests/conformance.rs.

#[path = "support/servicebus_server.rs"]
mod servicebus_server;
mod support;

use std::time::Duration;

use serde_json::Value;
use servicebus_server::{QueueSpec, ServiceBusServer};
use support::{Plugins, Router, wait_for};

const KEY: &str = "c2VjcmV0LWtleS1mb3ItdGVzdHM=";

fn server(queues: &[QueueSpec]) -> ServiceBusServer {
    ServiceBusServer::start("eventflow-test", "RootManageSharedAccessKey", KEY, queues)
}

fn quick_lock(name: &str, lock_secs: u64, max_deliveries: u32) -> QueueSpec {
    QueueSpec {
        name: name.into(),
        lock_duration: Duration::from_secs(lock_secs),
        max_delivery_count: max_deliveries,
    }
}

/// A router with a Service Bus connection `sb` whose connection string
/// (with `key`) is in the environment.
fn start(sb: &ServiceBusServer, key: &str, body: &str) -> Router {
    let config = format!(
        "[[brokers]]\nname = \"sb\"\nkind = \"servicebus\"\nconnection_string = {{ env = \"SB_CONNECTION\" }}\nendpoint = \"{}\"\nreceive_wait_secs = 1\n\n{body}",
        sb.url
    );
    let mut router = Router::configure(&config, Plugins::Shared);
    router.set_env("SB_CONNECTION", &sb.connection_string(key));
    router.launch();
    router
}

fn topics(list: &[(&str, &str, &str)]) -> String {
    list.iter()
        .map(|(name, consumers, publishers)| {
            format!("[[topics]]\nname = \"{name}\"\nconsumers = [{consumers}]\npublishers = [{publishers}]\n")
        })
        .collect()
}

#[test]
fn the_lock_is_renewed_during_a_long_invocation() {
    let sb = server(&[quick_lock("slow-in", 2, 10), QueueSpec::new("slow-out")]);
    let router = start(
        &sb,
        KEY,
        &format!(
            "{}[[flows]]\nname = \"slow\"\ntopic = \"slow-in\"\nalgorithm = \"test/slow\"\noutput_topic = \"slow-out\"\ntimeout_secs = 20\n",
            topics(&[
                ("slow-in", "\"test/slow\"", ""),
                ("slow-out", "", "\"test/slow\"")
            ])
        ),
    );
    sb.send("slow-in", r#"{"id": "long", "sleep_ms": 7000}"#);
    wait_for("the output", Duration::from_secs(30), || {
        (sb.messages("slow-out").len() == 1).then_some(())
    });
    std::thread::sleep(Duration::from_secs(3));
    assert!(
        sb.messages("slow-in").is_empty(),
        "the message was completed"
    );
    assert_eq!(
        sb.messages("slow-out").len(),
        1,
        "one output: no redelivery under a 2 s lock"
    );
    let processed = router
        .log()
        .lines()
        .filter(|l| l.contains("Message processed."))
        .count();
    assert_eq!(processed, 1);
}

#[test]
fn an_abandoned_message_comes_back_with_one_more_delivery() {
    let sb = server(&[QueueSpec::new("flaky-in"), QueueSpec::new("flaky-out")]);
    let _router = start(
        &sb,
        KEY,
        &format!(
            "{}[[flows]]\nname = \"flaky\"\ntopic = \"flaky-in\"\nalgorithm = \"test/flaky\"\noutput_topic = \"flaky-out\"\n[flows.retry]\nbackoff = \"fixed\"\nbase_ms = 1500\njitter = false\n",
            topics(&[
                ("flaky-in", "\"test/flaky\"", ""),
                ("flaky-out", "", "\"test/flaky\"")
            ])
        ),
    );
    sb.send("flaky-in", r#"{"fail_times": 1}"#);
    let out = wait_for("the output", Duration::from_secs(30), || {
        sb.messages("flaky-out").into_iter().next()
    });
    let doc: Value = serde_json::from_slice(&out.body).unwrap();
    assert_eq!(doc["attempt"], 2, "DeliveryCount went from 1 to 2");
    // Custom properties carried the output's headers.
    assert!(
        out.properties
            .iter()
            .any(|(k, v)| k == "eventflow-algorithm" && v.contains("test/flaky@0.1.0")),
        "{:?}",
        out.properties
    );
}

/// The queue's own limit moves a message to `$deadletterqueue` when it is
/// lower than the flow's `max_receives` (the router's own dead-lettering is
/// in tests/conformance.rs).
#[test]
fn the_queues_max_delivery_count_dead_letters_natively() {
    let sb = server(&[quick_lock("native", 30, 3)]);
    let _router = start(
        &sb,
        KEY,
        &format!(
            "{}[[flows]]\nname = \"native\"\ntopic = \"native\"\nalgorithm = \"test/flaky\"\nmax_receives = 10\n[flows.retry]\nbackoff = \"fixed\"\nbase_ms = 100\njitter = false\n",
            topics(&[("native", "\"test/flaky\"", "")])
        ),
    );
    // The queue's own limit (3 deliveries) moves it to $deadletterqueue.
    sb.send("native", r#"{"always_fail": true}"#);
    wait_for("the broker's dead letter", Duration::from_secs(30), || {
        (sb.messages("native/$deadletterqueue").len() == 1).then_some(())
    });
}

#[test]
fn a_wrong_key_is_a_clear_authentication_error() {
    let sb = server(&[QueueSpec::new("guarded")]);
    let router = start(
        &sb,
        "d3Jvbmcta2V5",
        &format!(
            "{}[[flows]]\nname = \"guarded\"\ntopic = \"guarded\"\nalgorithm = \"examples/echo\"\n",
            topics(&[("guarded", "\"examples/echo\"", "")])
        ),
    );
    let error = wait_for("the flow's error", Duration::from_secs(30), || {
        router.flow("guarded")["last_error"][1]
            .as_str()
            .map(str::to_string)
    });
    assert!(
        error.contains("broker connection \"sb\" (servicebus)"),
        "{error}"
    );
    assert!(
        error.contains("guarded") && error.contains("authentication failed"),
        "{error}"
    );
    // The key is never printed, right or wrong.
    assert!(!router.log().contains("d3Jvbmcta2V5"));
    let (_, shown) = router.http("GET", "/v1/brokers/sb", None);
    assert!(!shown.to_string().contains("d3Jvbmcta2V5"), "{shown}");
    assert!(shown.to_string().contains("SharedAccessKey=***"), "{shown}");
}

#[test]
fn a_connection_created_through_the_api_stores_its_string_as_a_secret() {
    let sb = server(&[QueueSpec::new("api-in")]);
    let router = Router::start("");
    let (status, body) = router.http(
        "POST",
        "/v1/brokers",
        Some(serde_json::json!({
            "name": "made",
            "kind": "servicebus",
            "connection_string": {"value": sb.connection_string(KEY)},
            "endpoint": sb.url,
        })),
    );
    assert_eq!(status, 200, "{body}");
    let shown = body.to_string();
    assert!(!shown.contains(KEY), "{shown}");
    assert!(shown.contains("SharedAccessKey=***"), "{shown}");
    let (_, state) = router.http("GET", "/v1/state", None);
    assert!(!state.to_string().contains(KEY));
    assert!(!router.log().contains(KEY));
}
