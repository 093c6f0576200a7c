//! The admin API's bounds and its refusals of bad input: names that are not
//! valid names (in paths, bodies and configuration files), bodies and
//! messages over their limits, unbounded peeks and batches, malformed
//! Service Bus connection strings, and edits of broker connections. Real
//! binary, embedded broker.

mod support;

use std::process::Command;

use serde_json::{Value, json};
use support::{Router, http_raw};

const BASE: &str = r#"
[[brokers]]
name = "local"
kind = "embedded"

[[topics]]
name = "in"
consumers = ["ezra/store_file"]

[[topics]]
name = "dlq"
publishers = ["ezra/store_file"]
"#;

/// Names no API call may take: dot segments, a slash (sent encoded), an
/// encoded dot segment, NUL, a control character, and a name too long.
fn bad_path_names() -> Vec<String> {
    vec![
        "..".into(),
        ".".into(),
        "a%2Fb".into(),
        "%2e%2e".into(),
        "..%2F..%2Ftest".into(),
        "a%00b".into(),
        "a%0Ab".into(),
        "a%20b".into(),
        "x".repeat(129),
    ]
}

/// The same names as they appear in a JSON body, plus the empty name.
fn bad_body_names() -> Vec<String> {
    vec![
        "..".into(),
        ".".into(),
        "a/b".into(),
        "../../test/always_reject".into(),
        "a\0b".into(),
        "a\nb".into(),
        "a:b:c".into(),
        String::new(),
        "x".repeat(129),
    ]
}

fn error_of(answer: &Value) -> &str {
    answer["error"].as_str().unwrap_or("(no error message)")
}

#[test]
fn names_that_are_not_valid_names_are_refused_with_400_naming_the_field() {
    let router = Router::start(BASE);
    for bad in bad_path_names() {
        for (method, path, body) in [
            ("PUT", format!("/v1/brokers/local/topics/{bad}"), json!({})),
            (
                "DELETE",
                format!("/v1/brokers/local/topics/{bad}"),
                json!(null),
            ),
            (
                "GET",
                format!("/v1/brokers/local/topics/{bad}/messages"),
                json!(null),
            ),
            (
                "POST",
                format!("/v1/brokers/local/topics/{bad}/grants"),
                json!({"algorithm": "ezra/store_file", "consume": true}),
            ),
            ("GET", format!("/v1/brokers/{bad}"), json!(null)),
            ("PUT", format!("/v1/brokers/{bad}/topics/in"), json!({})),
            (
                "PUT",
                format!("/v1/algorithms/ezra/{bad}/secrets/KEY"),
                json!({"value": "x"}),
            ),
            (
                "PUT",
                format!("/v1/algorithms/{bad}/store_file/secrets/KEY"),
                json!({"value": "x"}),
            ),
            (
                "GET",
                format!("/v1/algorithms/ezra/{bad}/secrets"),
                json!(null),
            ),
            (
                "GET",
                format!("/v1/algorithms/ezra/{bad}/topics"),
                json!(null),
            ),
            ("GET", format!("/v1/flows/{bad}"), json!(null)),
            (
                "PATCH",
                format!("/v1/flows/{bad}"),
                json!({"enabled": false}),
            ),
            ("DELETE", format!("/v1/flows/{bad}"), json!(null)),
            ("GET", format!("/v1/flows/{bad}/dead-letters"), json!(null)),
            ("DELETE", format!("/v1/tokens/{bad}"), json!(null)),
        ] {
            let body = (!body.is_null()).then_some(body);
            let (status, answer) = router.http(method, &path, body);
            assert_eq!(status, 400, "{method} {path}: {answer}");
            assert!(
                error_of(&answer).contains("not a valid"),
                "{method} {path}: {answer}"
            );
        }
    }
    // The algorithm part of a secret: the one the issue found stored.
    let (status, answer) = router.http(
        "PUT",
        "/v1/algorithms/ezra/..%2F..%2Ftest%2Falways_reject/secrets/KEY",
        Some(json!({"value": "x"})),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(error_of(&answer).starts_with("name: "), "{answer}");
    // A secret's own name must be an environment variable name.
    for key in ["1KEY", "A-B", "A.B", "%2e%2e", "A%00"] {
        let path = format!("/v1/algorithms/ezra/store_file/secrets/{key}");
        let (status, answer) = router.http("PUT", &path, Some(json!({"value": "x"})));
        assert_eq!(status, 400, "{path}: {answer}");
        assert!(error_of(&answer).starts_with("key: "), "{path}: {answer}");
    }

    for bad in bad_body_names() {
        let shown = format!("{bad:?}");
        // Broker connections.
        let (status, answer) = router.http(
            "POST",
            "/v1/brokers",
            Some(json!({"name": bad, "kind": "embedded"})),
        );
        assert_eq!(status, 400, "broker {shown}: {answer}");
        assert!(error_of(&answer).contains("name"), "{answer}");
        // Flows, by their name and by the topics they name.
        for (field, request) in [
            (
                "name",
                json!({"name": bad, "algorithm": "ezra/store_file", "topic": "in"}),
            ),
            (
                "topic",
                json!({"name": "f", "algorithm": "ezra/store_file", "topic": bad}),
            ),
            (
                "dead_letter_topic",
                json!({"name": "f", "algorithm": "ezra/store_file", "topic": "in", "dead_letter_topic": bad}),
            ),
            (
                "broker",
                json!({"name": "f", "algorithm": "ezra/store_file", "topic": "in", "broker": bad}),
            ),
        ] {
            if field == "broker" && bad.is_empty() {
                // Left empty, the broker is the only connection.
                continue;
            }
            let (status, answer) = router.http("POST", "/v1/flows", Some(request));
            assert_eq!(status, 400, "flow {field} {shown}: {answer}");
        }
        // Tokens, messages, grants.
        let (status, answer) = router.http("POST", "/v1/tokens", Some(json!({"owner": bad})));
        assert_eq!(status, 400, "token owner {shown}: {answer}");
        let (status, answer) = router.http(
            "POST",
            "/v1/messages",
            Some(json!({"topic": bad, "payload": "x"})),
        );
        assert_eq!(status, 400, "message topic {shown}: {answer}");
        assert!(error_of(&answer).starts_with("topic: "), "{answer}");
        let (status, answer) = router.http(
            "POST",
            "/v1/brokers/local/topics/in/grants",
            Some(json!({"algorithm": format!("ezra/{bad}"), "consume": true})),
        );
        assert_eq!(status, 400, "grant {shown}: {answer}");
        // The whole state: a topic and a flow with such names.
        let (status, answer) = router.http(
            "PUT",
            "/v1/state",
            Some(json!({
                "brokers": [{"name": "local", "kind": "embedded"}],
                "topics": [{"name": bad}],
            })),
        );
        assert_eq!(status, 400, "state topic {shown}: {answer}");
        assert!(error_of(&answer).contains("name"), "{answer}");
        let (status, answer) = router.http(
            "PUT",
            "/v1/state",
            Some(json!({
                "brokers": [{"name": "local", "kind": "embedded"}],
                "topics": [{"name": "in", "consumers": ["ezra/store_file"]}],
                "flows": [{"name": bad, "topic": "in", "algorithm": "ezra/store_file", "enabled": false}],
            })),
        );
        assert_eq!(status, 400, "state flow {shown}: {answer}");
    }
    // A broker connection that references a router secret by a bad name.
    let (status, answer) = router.http(
        "PUT",
        "/v1/state",
        Some(json!({
            "brokers": [
                {"name": "local", "kind": "embedded"},
                {"name": "sb", "kind": "servicebus", "connection_string": {"secret": "../x"}},
            ],
        })),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(error_of(&answer).contains("secret"), "{answer}");

    // Nothing of that was stored.
    let (_, state) = router.http("GET", "/v1/state", None);
    assert_eq!(state["topics"].as_array().unwrap().len(), 2, "{state}");
    assert_eq!(state["brokers"].as_array().unwrap().len(), 1, "{state}");
    assert!(state["flows"].as_array().unwrap().is_empty(), "{state}");
    let (_, tokens) = router.http("GET", "/v1/tokens", None);
    assert!(tokens["tokens"].as_array().unwrap().is_empty(), "{tokens}");
    // Good names still work.
    let (status, answer) = router.http(
        "PUT",
        "/v1/brokers/local/topics/orders.v2_x-1",
        Some(json!({})),
    );
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = router.http(
        "PUT",
        "/v1/algorithms/ezra/store_file/secrets/API_KEY",
        Some(json!({"value": "x"})),
    );
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn the_cli_refuses_a_name_that_would_change_the_path() {
    let router = Router::start(BASE);
    let out = Command::new(env!("CARGO_BIN_EXE_eventflow"))
        .args(["secrets", "set", "ezra/../../test/always_reject", "KEY"])
        .args(["--from-env", "PATH", "--config"])
        .arg(&router.config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"..\" is not a valid name"), "{err}");
    for topic in ["a?b", "a#b", "..", "%2e%2e"] {
        let out = router.cli(&["topics", "peek", topic, "--broker", "local"]);
        assert!(!out.status.success(), "peek {topic} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("not a valid"), "{topic}: {err}");
    }
    let (_, secrets) = router.http("GET", "/v1/algorithms/test/always_reject/secrets", None);
    assert!(
        secrets["secrets"].as_array().unwrap().is_empty(),
        "{secrets}"
    );
}

#[test]
fn a_configuration_file_with_a_bad_name_fails_check_naming_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    for (body, field) in [
        (
            "[[brokers]]\nname = \"local\"\nkind = \"embedded\"\n[[topics]]\nname = \"..\"\n",
            "topics[0].name",
        ),
        (
            "[[brokers]]\nname = \"local\"\nkind = \"embedded\"\n[[topics]]\nname = \"a/b\"\n",
            "topics[0].name",
        ),
        (
            "[[brokers]]\nname = \"local\"\nkind = \"embedded\"\n[[topics]]\nname = \"in\"\n[[topics]]\nname = \"a\\u0000b\"\n",
            "topics[1].name",
        ),
        (
            "[[brokers]]\nname = \"..\"\nkind = \"embedded\"\n",
            "brokers[0].name",
        ),
        (
            "[[brokers]]\nname = \"local\"\nkind = \"embedded\"\n[[topics]]\nname = \"in\"\nconsumers = [\"ezra/x\"]\n[[flows]]\nname = \"f\"\ntopic = \"in\"\nalgorithm = \"ezra/x\"\nenabled = false\ndead_letter_topic = \"../dlq\"\n",
            "flows[0].dead_letter_topic",
        ),
    ] {
        let file = dir.path().join("bad-names.toml");
        std::fs::write(&file, body).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_eventflow"))
            .args(["check", "--config"])
            .arg(&file)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{body}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("bad-names.toml") && err.contains(field) && err.contains("not a valid"),
            "{field}: {err}"
        );
    }
}

#[test]
fn a_3_mib_message_goes_through_send_and_bodies_over_the_limit_get_413() {
    let router = Router::start(
        r#"
[[brokers]]
name = "local"
kind = "embedded"

[[brokers]]
name = "small"
kind = "embedded"
max_payload_bytes = 1048576

[[topics]]
name = "in"
broker = "local"

[[topics]]
name = "tiny"
broker = "small"
"#,
    );
    // 3 MiB of binary: sent as base64, 4 MiB of JSON.
    let payload: Vec<u8> = (0..3u32 << 20).map(|i| (i % 251) as u8).collect();
    let file = router.dir.path().join("big.bin");
    std::fs::write(&file, &payload).unwrap();
    let out = router.cli(&[
        "send",
        "in",
        "--broker",
        "local",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "send of 3 MiB failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, peeked) = router.http("GET", "/v1/brokers/local/topics/in/messages?limit=1", None);
    assert_eq!(status, 200);
    assert_eq!(peeked["messages"][0]["payload_encoding"], "base64");
    use base64::Engine as _;
    let back = base64::engine::general_purpose::STANDARD
        .decode(peeked["messages"][0]["payload"].as_str().unwrap())
        .unwrap();
    assert!(back == payload, "the 3 MiB message came back changed");

    // A body over the API's limit: 413 with a message naming the limit.
    let (base, token) = api(&router);
    let huge = json!({"topic": "in", "payload": "x".repeat(25 << 20)}).to_string();
    let (status, text) = http_raw(
        "POST",
        &format!("{base}/v1/messages"),
        Some(&token),
        Some(huge),
    );
    assert_eq!(status, 413, "{text}");
    assert!(text.contains("24 MiB"), "{text}");

    // A message over its broker's limit: 413 naming the limit.
    let (status, answer) = router.http(
        "POST",
        "/v1/messages",
        Some(json!({"topic": "tiny", "payload": "y".repeat(2 << 20)})),
    );
    assert_eq!(status, 413, "{answer}");
    assert!(error_of(&answer).contains("1048576"), "{answer}");
    let file = router.dir.path().join("two-mib.txt");
    std::fs::write(&file, "z".repeat(2 << 20)).unwrap();
    let out = router.cli(&[
        "send",
        "tiny",
        "--broker",
        "small",
        "--file",
        file.to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("1048576") && err.contains("413"), "{err}");
    assert!(router.peek("small", "tiny").is_empty());
}

#[test]
fn batches_and_peeks_are_bounded() {
    let router = Router::start(BASE);
    // At most 1,000 messages per request.
    let messages: Vec<Value> = (0..1001)
        .map(|i| json!({"payload": i.to_string()}))
        .collect();
    let (status, answer) = router.http(
        "POST",
        "/v1/messages",
        Some(json!({"topic": "in", "messages": messages})),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(error_of(&answer).contains("1000"), "{answer}");
    assert!(router.peek("local", "in").is_empty());
    let messages: Vec<Value> = (0..1000)
        .map(|i| json!({"payload": i.to_string()}))
        .collect();
    let (status, answer) = router.http(
        "POST",
        "/v1/messages",
        Some(json!({"topic": "in", "messages": messages})),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["published"], 1000);
    let (status, answer) = router.http(
        "POST",
        "/v1/messages",
        Some(json!({"topic": "in", "payload": "one more"})),
    );
    assert_eq!(status, 200, "{answer}");

    // Peek: 10 by default, at most 1,000, 400 above naming the maximum.
    let peek = |query: &str| {
        router.http(
            "GET",
            &format!("/v1/brokers/local/topics/in/messages{query}"),
            None,
        )
    };
    let (status, answer) = peek("");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["messages"].as_array().unwrap().len(), 10);
    let (status, answer) = peek("?limit=1000");
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["messages"].as_array().unwrap().len(), 1000);
    assert_eq!(answer["truncated"], false);
    for limit in ["1001", "303000", "18446744073709551615"] {
        let (status, answer) = peek(&format!("?limit={limit}"));
        assert_eq!(status, 400, "limit {limit}: {answer}");
        assert!(error_of(&answer).contains("1000"), "{answer}");
    }
    let out = router.cli(&["topics", "peek", "in", "--limit", "5000"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("1000"));

    // Peek: at most 16 MiB of payload in one answer.
    let big = "b".repeat(7 << 20);
    for _ in 0..3 {
        let (status, answer) = router.http(
            "POST",
            "/v1/messages",
            Some(json!({"topic": "dlq", "payload": big})),
        );
        assert_eq!(status, 200, "{answer}");
    }
    let (status, answer) =
        router.http("GET", "/v1/brokers/local/topics/dlq/messages?limit=3", None);
    assert_eq!(status, 200);
    assert_eq!(answer["messages"].as_array().unwrap().len(), 2);
    assert_eq!(answer["truncated"], true);
}

#[test]
fn a_malformed_service_bus_connection_string_is_a_400_naming_the_part() {
    let router = Router::start(BASE);
    for (connection_string, part) in [
        (
            "SharedAccessKeyName=Root;SharedAccessKey=c2VjcmV0",
            "no Endpoint",
        ),
        (
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKey=c2VjcmV0",
            "no SharedAccessKeyName",
        ),
        (
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root",
            "no SharedAccessKey",
        ),
        (
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey=",
            "no SharedAccessKey",
        ),
        (
            "Endpoint=amqps://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey=c2VjcmV0",
            "sb://",
        ),
        ("c2VjcmV0", "Key=Value"),
    ] {
        let (status, answer) = router.http(
            "POST",
            "/v1/brokers",
            Some(json!({
                "name": "sb",
                "kind": "servicebus",
                "connection_string": {"value": connection_string},
            })),
        );
        assert_eq!(status, 400, "{connection_string}: {answer}");
        let error = error_of(&answer);
        assert!(
            error.contains("connection_string") && error.contains(part),
            "{connection_string}: {error}"
        );
        assert!(!error.contains("c2VjcmV0"), "the key leaks: {error}");
    }
    // A reference that does not resolve is named too.
    let (status, answer) = router.http(
        "POST",
        "/v1/brokers",
        Some(json!({
            "name": "sb",
            "kind": "servicebus",
            "connection_string": {"env": "EVENTFLOW_TEST_NOT_SET"},
        })),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        error_of(&answer).contains("EVENTFLOW_TEST_NOT_SET"),
        "{answer}"
    );
    // Through apply as well.
    let (status, answer) = router.http(
        "PUT",
        "/v1/state",
        Some(json!({
            "brokers": [
                {"name": "local", "kind": "embedded"},
                {"name": "sb", "kind": "servicebus", "connection_string": {"env": "EVENTFLOW_TEST_NOT_SET"}},
            ],
        })),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(error_of(&answer).contains("connection_string"), "{answer}");
    // Nothing was created, no secret was kept.
    let (_, brokers) = router.http("GET", "/v1/brokers", None);
    assert_eq!(brokers["brokers"].as_array().unwrap().len(), 1, "{brokers}");
}

#[test]
fn apply_that_edits_a_broker_connection_is_a_409_saying_to_create_a_new_one() {
    let router = Router::start(BASE);
    let file = router.dir.path().join("edited.toml");
    for changed in [
        "kind = \"embedded\"\nmax_payload_bytes = 1024\n",
        "kind = \"embedded\"\npath = \"other.redb\"\n",
    ] {
        std::fs::write(
            &file,
            format!("[[brokers]]\nname = \"local\"\n{changed}\n[[topics]]\nname = \"in\"\n"),
        )
        .unwrap();
        let out = router.cli(&["apply", "-f", file.to_str().unwrap()]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("connection \"local\" cannot be edited: create a new one")
                && err.contains("409"),
            "{err}"
        );
        assert!(!err.contains("in use"), "{err}");
    }
    // Unchanged, it applies; the router kept its topics meanwhile.
    std::fs::write(
        &file,
        "[[brokers]]\nname = \"local\"\nkind = \"embedded\"\n[[topics]]\nname = \"in\"\n",
    )
    .unwrap();
    router.cli_ok(&["apply", "-f", file.to_str().unwrap()]);
    let (_, state) = router.http("GET", "/v1/state", None);
    assert_eq!(state["topics"].as_array().unwrap().len(), 1, "{state}");
}

fn api(router: &Router) -> (String, String) {
    let addr = std::fs::read_to_string(router.state_dir().join("admin.addr")).unwrap();
    let token = std::fs::read_to_string(router.state_dir().join("admin.token")).unwrap();
    (format!("http://{}", addr.trim()), token.trim().to_string())
}
