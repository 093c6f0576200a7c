//! Seeing what every flow does: metrics across a success, a retry and a dead
//! letter; trace context from input to output; structured JSON logs; the
//! status screen; health endpoints. Real binary, embedded broker.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Router, wait_for};

const CONFIG: &str = r#"
[[brokers]]
name = "local"
kind = "embedded"

[[topics]]
name = "in"
consumers = ["test/flaky", "examples/echo"]

[[topics]]
name = "out"
publishers = ["test/flaky", "examples/echo"]

[[topics]]
name = "dlq"
publishers = ["test/flaky"]

[[topics]]
name = "echo-in"
consumers = ["examples/echo"]

[[flows]]
name = "flaky"
topic = "in"
algorithm = "test/flaky"
output_topic = "out"
dead_letter_topic = "dlq"
max_receives = 2

[flows.retry]
backoff = "fixed"
base_ms = 100
jitter = false

[[flows]]
name = "echo"
topic = "echo-in"
algorithm = "examples/echo"
output_topic = "out"
"#;

/// The value of the sample `name{labels}` in Prometheus text, 0 if absent.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn metrics_move_across_a_success_a_retry_and_a_dead_letter() {
    let router = Router::start(CONFIG);
    let flow = [("flow", "flaky"), ("algorithm", "test/flaky@0.1.0")];
    let before = router.metrics();
    assert_eq!(
        sample(&before, "eventflow_messages_received_total", &flow),
        0.0
    );

    // One message fails once then succeeds; one always fails.
    router.publish(
        "in",
        &[
            r#"{"fail_times": 1}"#.into(),
            r#"{"always_fail": true}"#.into(),
        ],
    );
    wait_for("the dead letter", Duration::from_secs(30), || {
        (router.dead_letters("flaky").len() == 1).then_some(())
    });
    // An outcome is counted as the message is settled, a moment before the
    // worker lets go of it: wait until both messages are done.
    let retried = [("flow", "flaky"), ("reason", "guest_retry")];
    let m = wait_for(
        "both outcomes to be counted",
        Duration::from_secs(30),
        || {
            let m = router.metrics();
            (sample(&m, "eventflow_messages_succeeded_total", &flow) == 1.0
                && sample(&m, "eventflow_messages_dead_lettered_total", &retried) == 1.0
                && sample(&m, "eventflow_in_flight", &[("flow", "flaky")]) == 0.0)
                .then_some(m)
        },
    );
    assert_eq!(
        sample(&m, "eventflow_messages_received_total", &flow),
        4.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, "eventflow_messages_retried_total", &retried),
        2.0,
        "{m}"
    );
    assert_eq!(
        sample(&m, "eventflow_messages_dropped_total", &[("flow", "flaky")]),
        0.0
    );
    assert_eq!(
        sample(&m, "eventflow_invocation_duration_seconds_count", &flow),
        4.0,
        "{m}"
    );
    assert!(sample(&m, "eventflow_invocation_peak_memory_bytes_count", &flow) >= 4.0);
    assert!(
        sample(
            &m,
            "eventflow_end_to_end_latency_seconds_count",
            &[("flow", "flaky")]
        ) >= 4.0
    );
    assert_eq!(
        sample(
            &m,
            "eventflow_plugin_loads_total",
            &[("algorithm", "test/flaky/0.1.0")]
        ),
        1.0
    );
    assert_eq!(
        sample(&m, "eventflow_broker_up", &[("broker", "local")]),
        1.0
    );

    // The status screen shows the dead letter and the last error.
    let status = router.cli_ok(&["status"]);
    let line = status
        .lines()
        .find(|l| l.starts_with("flaky"))
        .expect(&status);
    assert!(line.contains("running"), "{line}");
    assert!(line.contains("guest_retry"), "{line}");
    let json_status: Value = serde_json::from_str(&router.cli_ok(&["status", "--json"])).unwrap();
    let flaky = json_status["flows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == "flaky")
        .unwrap();
    assert_eq!(flaky["dead_lettered"], 1);
    assert_eq!(flaky["succeeded"], 1);
    assert_eq!(flaky["in_flight"], 0);
    assert_eq!(json_status["readiness"]["ready"], true);
}

#[test]
fn traceparent_continues_from_input_to_output_and_tags_the_logs() {
    let mut router = Router::configure(CONFIG, support::Plugins::Shared);
    router.set_env("EVENTFLOW_LOG_FORMAT", "json");
    router.launch();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming = format!("00-{trace}-00f067aa0ba902b7-01");
    let (status, body) = router.http(
        "POST",
        "/v1/messages",
        Some(json!({"topic": "echo-in", "payload": "traced", "headers": [["traceparent", incoming]]})),
    );
    assert_eq!(status, 200, "{body}");
    let out = wait_for("the output", Duration::from_secs(30), || {
        router.peek("local", "out").into_iter().next()
    });
    let tp = out["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "traceparent")
        .and_then(|h| h[1].as_str())
        .expect("the output carries a traceparent")
        .to_string();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts[1], trace, "same trace");
    assert_ne!(
        parts[2], "00f067aa0ba902b7",
        "the parent is the invocation's span"
    );
    // The JSON log line of the message names the trace and both spans. It
    // is written once the message is settled, which can be just after its
    // output is visible, so wait for it.
    let line = wait_for(
        "the message's JSON log line",
        Duration::from_secs(30),
        || {
            router
                .log()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["message"] == "Message processed.")
        },
    );
    let span = &line["span"];
    assert_eq!(span["trace_id"], trace, "{line}");
    assert_eq!(span["parent_span_id"], "00f067aa0ba902b7", "{line}");
    assert_eq!(span["span_id"], parts[2], "{line}");
    assert!(
        line["algorithm"]
            .as_str()
            .unwrap()
            .starts_with("examples/echo@0.1.0#")
    );

    // A message without one starts a trace.
    router.publish("echo-in", &["untraced".into()]);
    let out = wait_for("the second output", Duration::from_secs(30), || {
        router
            .peek("local", "out")
            .into_iter()
            .find(|m| m["payload"] == "untraced")
    });
    let tp = out["headers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h[0] == "traceparent")
        .and_then(|h| h[1].as_str())
        .unwrap();
    assert_eq!(tp.len(), 55, "{tp}");
}

#[test]
fn health_and_readiness_answer_without_a_token() {
    let router = Router::start(CONFIG);
    let addr = std::fs::read_to_string(router.state_dir().join("admin.addr")).unwrap();
    let (status, body) = support::http(
        "GET",
        &format!("http://{}/healthz", addr.trim()),
        None,
        None,
    );
    assert_eq!((status, body["status"].as_str()), (200, Some("ok")));
    let (status, body) =
        support::http("GET", &format!("http://{}/readyz", addr.trim()), None, None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["brokers"][0]["state"], "connected");
    assert!(body["plugins_loaded"].as_u64().unwrap() > 0);
}

/// With the `otlp` feature, spans reach an OTLP collector: here a minimal
/// HTTP endpoint on loopback that records what it is sent.
#[cfg(feature = "otlp")]
#[test]
fn spans_are_exported_over_otlp_with_the_incoming_trace() {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received: Arc<Mutex<Vec<u8>>> = Arc::default();
    let sink = received.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut stream = stream;
            stream.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 65536];
            // Read the head, then as many body bytes as Content-Length says.
            loop {
                let n = stream.read(&mut chunk).unwrap_or(0);
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
                let text = String::from_utf8_lossy(&buf).to_lowercase();
                if let Some(end) = text.find("\r\n\r\n") {
                    let len: usize = text
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if buf.len() >= end + 4 + len {
                        break;
                    }
                }
            }
            sink.lock().unwrap().extend_from_slice(&buf);
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
        }
    });

    let mut router = Router::configure(CONFIG, support::Plugins::Shared);
    router.set_env(
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        &format!("http://127.0.0.1:{port}"),
    );
    router.set_env("OTEL_BSP_SCHEDULE_DELAY", "200");
    router.launch();
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let (status, _) = router.http(
        "POST",
        "/v1/messages",
        Some(json!({"topic": "echo-in", "payload": "exported",
                    "headers": [["traceparent", format!("00-{trace}-00f067aa0ba902b7-01")]]})),
    );
    assert_eq!(status, 200);
    let trace_bytes = hex::decode(trace).unwrap();
    wait_for("the exported span", Duration::from_secs(30), || {
        let got = received.lock().unwrap();
        got.windows(16)
            .any(|w| w == trace_bytes.as_slice())
            .then_some(())
    });
    let got = received.lock().unwrap();
    assert!(String::from_utf8_lossy(&got).contains("POST /v1/traces"));
}
