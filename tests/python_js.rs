//! Algorithms written in Python and JavaScript, end to end: the real router
//! on the embedded broker with components built by componentize-py and
//! componentize-js over plugins/python and plugins/js (`cargo xtask test`
//! builds them). Each component is 10-20 MB and takes a minute to compile in a
//! debug build (the harness keeps the compiled code across runs), so: one
//! router per test, and one Python component that does what its input says
//! (plugins/py_behaviours, and plugins/js_behaviours beside the publisher
//! examples in a third router).

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Plugins, Router, one_flow, wait_for};

#[test]
fn the_quickstart_demo_runs_through_python_and_javascript() {
    let router = Router::start_with(
        r#"
[[brokers]]
name = "local"
kind = "embedded"

[[topics]]
name = "incoming-python"
consumers = ["ezra/store_file_py"]

[[topics]]
name = "incoming-js"
consumers = ["ezra/store_file_js"]

[[topics]]
name = "dlq"

[[flows]]
name = "python"
topic = "incoming-python"
algorithm = "ezra/store_file_py/0.1.0"
dead_letter_topic = "dlq"

[[flows]]
name = "js"
topic = "incoming-js"
algorithm = "ezra/store_file_js/0.1.0"
dead_letter_topic = "dlq"
"#,
        Plugins::Guest(&[("ezra", "store_file_py"), ("ezra", "store_file_js")]),
    );
    for (topic, file) in [
        ("incoming-python", "from-python.txt"),
        ("incoming-js", "from-js.txt"),
    ] {
        router.publish(
            topic,
            &[json!({"filename": file, "data": "file contents to store"}).to_string()],
        );
    }
    for file in ["from-python.txt", "from-js.txt"] {
        let stored = wait_for(file, Duration::from_secs(60), || {
            router.data_file(&format!("ezra/TestingEventFlow/{file}"))
        });
        assert_eq!(stored, b"file contents to store");
    }
    // What no retry can fix is rejected by the examples, not retried.
    router.publish(
        "incoming-js",
        &[r#"{"filename": "../escape.txt", "data": "x"}"#.into()],
    );
    router.publish("incoming-python", &[r#"{"data": "no name"}"#.into()]);
    for flow in ["js", "python"] {
        let letter = wait_for(flow, Duration::from_secs(60), || {
            router.dead_letters(flow).into_iter().next()
        });
        assert_eq!(letter["last_failure"]["reason"], "guest_reject", "{letter}");
    }
}

/// The `out` messages' payloads, parsed.
fn outputs(router: &Router) -> Vec<Value> {
    router
        .peek("local", "out")
        .iter()
        .map(|m| serde_json::from_str(m["payload"].as_str().unwrap()).unwrap())
        .collect()
}

/// The detail of the dead letter whose payload contains `needle`.
fn dead_letter_detail(router: &Router, needle: &str) -> (String, String) {
    let letter = wait_for(needle, Duration::from_secs(60), || {
        router
            .dead_letters("py")
            .into_iter()
            .find(|l| l["payload"].as_str().unwrap_or("").contains(needle))
    });
    (
        letter["last_failure"]["reason"]
            .as_str()
            .unwrap()
            .to_string(),
        letter["last_failure"]["detail"]
            .as_str()
            .unwrap()
            .to_string(),
    )
}

#[test]
fn python_exceptions_secrets_and_data_access_map_to_the_contract() {
    let router = Router::start_with(
        &one_flow(
            "py",
            "test/py_behaviours/0.1.0",
            r#"max_receives = 3

[flows.retry]
backoff = "fixed"
base_ms = 100
jitter = false"#,
        ),
        Plugins::Guest(&[("test", "py_behaviours")]),
    );
    let (status, body) = router.http(
        "PUT",
        "/v1/algorithms/test/py_behaviours/secrets/API_KEY",
        Some(json!({"value": "k-3c9e"})),
    );
    assert_eq!(status, 200, "{body}");

    let sent = Instant::now();
    router.publish(
        "in",
        &[
            json!({"do": "retry", "delay_ms": 2000}),
            json!({"do": "reject", "reason": "customer 42 does not exist"}),
            json!({"do": "keyerror"}),
            json!({"do": "env"}),
            json!({"do": "write", "uri": "data://test/py/ok.txt"}),
            json!({"do": "write", "uri": "data://ezra/TestingEventFlow/evil.txt"}),
        ]
        .map(|v| v.to_string()),
    );

    // Retry: attempted again, and not before the delay the algorithm asked for
    // (the flow's own backoff is 100 ms).
    let retried = wait_for(
        "the retried message's output",
        Duration::from_secs(60),
        || {
            outputs(&router)
                .into_iter()
                .find(|o| o.get("attempt").is_some())
        },
    );
    assert_eq!(retried["attempt"], 2, "{retried}");
    assert!(
        sent.elapsed() >= Duration::from_millis(2000),
        "{:?}",
        sent.elapsed()
    );

    // Reject: dead-lettered at once with the reason.
    let (reason, detail) = dead_letter_detail(&router, "customer 42");
    assert_eq!(reason, "guest_reject");
    assert_eq!(detail, "customer 42 does not exist");

    // An uncaught exception: dead-lettered with the traceback.
    let (reason, detail) = dead_letter_detail(&router, "keyerror");
    assert_eq!(reason, "guest_reject");
    assert!(
        detail.starts_with("uncaught KeyError: 'missing'"),
        "{detail}"
    );
    assert!(
        detail.contains("Traceback (most recent call last)"),
        "{detail}"
    );
    assert!(detail.contains("in lookup"), "{detail}");

    // The secret, and nothing else, is in os.environ.
    let env = wait_for("the environment", Duration::from_secs(60), || {
        outputs(&router)
            .into_iter()
            .find(|o| o.get("API_KEY").is_some())
    });
    assert_eq!(env, json!({"API_KEY": "k-3c9e"}));

    // Its own collection: written and read back. Another owner's: refused.
    let read = wait_for("the write's output", Duration::from_secs(60), || {
        outputs(&router)
            .into_iter()
            .find(|o| o.get("read").is_some())
    });
    assert_eq!(read["read"], "written");
    assert_eq!(router.data_file("test/py/ok.txt").unwrap(), b"written");
    let (reason, detail) = dead_letter_detail(&router, "evil.txt");
    assert_eq!(reason, "guest_reject");
    assert!(detail.contains("AccessDenied"), "{detail}");
    assert!(router.data_file("ezra/TestingEventFlow/evil.txt").is_none());
}

#[test]
fn the_publisher_examples_forward_and_javascript_retries_and_reads_its_secrets() {
    let router = Router::start_with(
        r#"
[[brokers]]
name = "local"
kind = "embedded"

[[brokers]]
name = "outbound"
kind = "embedded"

[[topics]]
name = "in-py"
broker = "local"
consumers = ["ezra/publish_py"]

[[topics]]
name = "in-js"
broker = "local"
consumers = ["ezra/publish_js"]

[[topics]]
name = "in-behave"
broker = "local"
consumers = ["test/js_behaviours"]

[[topics]]
name = "out"
broker = "local"
publishers = ["test/js_behaviours"]

[[topics]]
name = "dlq"
broker = "local"

[[topics]]
name = "forwarded"
broker = "outbound"
publishers = ["ezra/publish_py", "ezra/publish_js"]

[[flows]]
name = "py"
broker = "local"
topic = "in-py"
algorithm = "ezra/publish_py/0.1.0"
dead_letter_topic = "dlq"

[[flows]]
name = "js"
broker = "local"
topic = "in-js"
algorithm = "ezra/publish_js/0.1.0"
dead_letter_topic = "dlq"

[[flows]]
name = "behave"
broker = "local"
topic = "in-behave"
algorithm = "test/js_behaviours/0.1.0"
output_topic = "out"
dead_letter_topic = "dlq"
max_receives = 3

[flows.retry]
backoff = "fixed"
base_ms = 100
jitter = false
"#,
        Plugins::Guest(&[
            ("ezra", "publish_py"),
            ("ezra", "publish_js"),
            ("test", "js_behaviours"),
        ]),
    );
    let (status, body) = router.http(
        "PUT",
        "/v1/algorithms/test/js_behaviours/secrets/API_KEY",
        Some(json!({"value": "k-77"})),
    );
    assert_eq!(status, 200, "{body}");

    // The publishers: payload and headers forwarded to the other connection.
    for (topic, n) in [("in-py", 1), ("in-js", 2)] {
        let (status, body) = router.http(
            "POST",
            "/v1/messages",
            Some(json!({
                "topic": topic,
                "broker": "local",
                "payload": format!("{{\"n\": {n}}}"),
                "headers": [["trace-me", format!("t{n}")]],
            })),
        );
        assert_eq!(status, 200, "{body}");
    }
    let forwarded = wait_for("both forwarded", Duration::from_secs(120), || {
        let all = router.peek("outbound", "forwarded");
        (all.len() >= 2).then_some(all)
    });
    assert_eq!(forwarded.len(), 2, "{forwarded:?}");
    for (n, from) in [(1, "in-py"), (2, "in-js")] {
        let m = forwarded
            .iter()
            .find(|m| m["payload"] == format!("{{\"n\": {n}}}"))
            .unwrap_or_else(|| panic!("message {n} was not forwarded: {forwarded:?}"));
        let headers = m["headers"].as_array().unwrap();
        assert!(
            headers.contains(&json!(["trace-me", format!("t{n}")])),
            "{m}"
        );
        assert!(headers.contains(&json!(["forwarded-from", from])), "{m}");
    }

    // JavaScript: a retry waits for the delay it asks; env() has the secret
    // and nothing else; an uncaught error dead-letters with its stack.
    let sent = Instant::now();
    router.publish(
        "in-behave",
        &[
            json!({"do": "retry", "delay_ms": 2000}),
            json!({"do": "env"}),
            json!({"do": "typeerror"}),
            json!({"do": "bigint"}),
        ]
        .map(|v| v.to_string()),
    );
    let retried = wait_for("the retried output", Duration::from_secs(120), || {
        outputs(&router)
            .into_iter()
            .find(|o| o.get("attempt").is_some())
    });
    assert_eq!(retried["attempt"], 2, "{retried}");
    assert!(
        sent.elapsed() >= Duration::from_millis(2000),
        "{:?}",
        sent.elapsed()
    );
    let env = wait_for("the environment", Duration::from_secs(60), || {
        outputs(&router)
            .into_iter()
            .find(|o| o.get("API_KEY").is_some())
    });
    assert_eq!(env, json!({"API_KEY": "k-77"}));
    let letter = |what: &str| {
        wait_for(what, Duration::from_secs(60), || {
            router
                .dead_letters("behave")
                .into_iter()
                .find(|l| l["payload"].as_str().unwrap_or("").contains(what))
        })
    };
    let typeerror = letter("typeerror");
    assert_eq!(
        typeerror["last_failure"]["reason"], "guest_reject",
        "{typeerror}"
    );
    let detail = typeerror["last_failure"]["detail"].as_str().unwrap();
    assert!(detail.starts_with("uncaught TypeError"), "{detail}");
    // Regression: an output the SDK cannot encode is a failure with the
    // error, like a throw, not an exception escaping the export.
    let bigint = letter("bigint");
    assert_eq!(bigint["last_failure"]["reason"], "guest_reject", "{bigint}");
    let detail = bigint["last_failure"]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("uncaught TypeError") && detail.contains("BigInt"),
        "{detail}"
    );
}

/// Batches through the SDKs: Python's `apply_batch` and JavaScript's
/// `applyBatch` see the whole batch and fail one message by returning its
/// exception; an app without them gets each message of the batch passed to
/// its `apply` (the Python quickstart example, unchanged).
#[test]
fn python_and_javascript_take_batches_with_and_without_apply_batch() {
    let batch = "batch = { max_messages = 16, max_wait_ms = 2000 }\nmax_receives = 1";
    let router = Router::start_with(
        &format!(
            r#"
[[brokers]]
name = "local"
kind = "embedded"

[[topics]]
name = "in-py"
consumers = ["test/py_behaviours"]

[[topics]]
name = "in-js"
consumers = ["test/js_behaviours"]

[[topics]]
name = "in-store"
consumers = ["ezra/store_file_py"]

[[topics]]
name = "out"
publishers = ["test/py_behaviours", "test/js_behaviours"]

[[topics]]
name = "dlq"

[[flows]]
name = "py"
topic = "in-py"
algorithm = "test/py_behaviours/0.1.0"
output_topic = "out"
dead_letter_topic = "dlq"
{batch}

[[flows]]
name = "js"
topic = "in-js"
algorithm = "test/js_behaviours/0.1.0"
output_topic = "out"
dead_letter_topic = "dlq"
{batch}

[[flows]]
name = "store"
topic = "in-store"
algorithm = "ezra/store_file_py/0.1.0"
dead_letter_topic = "dlq"
{batch}
"#
        ),
        Plugins::Guest(&[
            ("test", "py_behaviours"),
            ("test", "js_behaviours"),
            ("ezra", "store_file_py"),
        ]),
    );
    for (topic, flow) in [("in-py", "py"), ("in-js", "js")] {
        let inputs: Vec<String> = (0..10)
            .map(|n| {
                let what = if n % 4 == 1 { "batch-reject" } else { "batch" };
                json!({"do": what, "n": n, "flow": flow}).to_string()
            })
            .collect();
        router.publish(topic, &inputs);
    }
    let files: Vec<String> = (0..5)
        .map(|i| {
            json!({"filename": format!("batched-{i}.txt"), "data": format!("file {i}")}).to_string()
        })
        .collect();
    router.publish("in-store", &files);

    for flow in ["py", "js"] {
        let report = wait_for(flow, Duration::from_secs(120), || {
            let f = router.flow(flow);
            (f["succeeded"] == 7 && f["dead_lettered"] == 3 && f["in_flight"] == 0).then_some(f)
        });
        // One call for the ten messages: the three rejected were failed
        // alone.
        assert_eq!(
            (&report["batches"], &report["batched_messages"]),
            (&json!(1), &json!(10)),
            "{report}"
        );
        let mut letters: Vec<String> = router
            .dead_letters(flow)
            .iter()
            .map(|l| {
                assert_eq!(l["last_failure"]["reason"], "guest_reject", "{l}");
                l["last_failure"]["detail"].as_str().unwrap().to_string()
            })
            .collect();
        letters.sort();
        assert_eq!(
            letters,
            (0..10)
                .filter(|n| n % 4 == 1)
                .map(|n| format!("asked to reject {n} in a batch"))
                .collect::<Vec<_>>(),
            "{flow}"
        );
    }
    let mut seen: Vec<(String, u64, u64)> = outputs(&router)
        .iter()
        .map(|o| {
            (
                o["flow"].as_str().unwrap_or("?").to_string(),
                o["n"].as_u64().unwrap(),
                o["batch"].as_u64().unwrap(),
            )
        })
        .collect();
    seen.sort();
    let expected: Vec<(String, u64, u64)> = ["js", "py"]
        .iter()
        .flat_map(|f| {
            (0..10)
                .filter(|n| n % 4 != 1)
                .map(move |n| (f.to_string(), n, 10))
        })
        .collect();
    assert_eq!(seen, expected);

    // Without apply_batch: each message of the one call went to `apply`.
    for i in 0..5 {
        let stored = wait_for("a stored file", Duration::from_secs(60), || {
            router.data_file(&format!("ezra/TestingEventFlow/batched-{i}.txt"))
        });
        assert_eq!(stored, format!("file {i}").as_bytes());
    }
    let store = router.flow("store");
    assert_eq!(
        (&store["batches"], &store["batched_messages"]),
        (&json!(1), &json!(5)),
        "{store}"
    );
}
