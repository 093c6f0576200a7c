//! The control plane: the platform's walkthrough through the CLI, roles and
//! tokens, refusals, secrets that never leak, state that survives restarts,
//! and a schema-driven fuzz of the admin API. Real binary, embedded broker.

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Router, http, wait_for};

/// A router that starts with nothing declared: the admin builds it up.
fn empty_router() -> Router {
    Router::start("")
}

fn cli_with_token(router: &Router, token: &str, args: &[&str]) -> std::process::Output {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(["--token", token]);
    router.cli(&all)
}

fn ok(out: std::process::Output) -> String {
    assert!(
        out.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn stored(router: &Router) -> bool {
    router
        .data_file("ezra/TestingEventFlow/walkthrough.txt")
        .is_some()
}

#[test]
fn the_platform_walkthrough_through_the_cli() {
    let mut router = empty_router();

    // 1. The admin connects a broker and grants ezra/store_file a topic.
    router.cli_ok(&["brokers", "create", "local", "--kind", "embedded"]);
    router.cli_ok(&["topics", "declare", "incoming"]);
    router.cli_ok(&["topics", "declare", "incoming-dlq"]);
    router.cli_ok(&[
        "topics",
        "grant",
        "incoming",
        "ezra/store_file",
        "--consume",
    ]);
    router.cli_ok(&[
        "topics",
        "grant",
        "incoming-dlq",
        "ezra/store_file",
        "--publish",
    ]);
    let member = router.cli_ok(&["tokens", "create", "--owner", "ezra"]);
    let member = member.trim().to_string();
    assert_eq!(member.len(), 64);

    // The member sees the topic on the algorithm's "queues" tab, disabled.
    let tab = ok(cli_with_token(
        &router,
        &member,
        &["flows", "list", "--algorithm", "ezra/store_file"],
    ));
    assert!(
        tab.lines()
            .any(|l| l.starts_with("local:incoming") && l.contains(" no ")),
        "{tab}"
    );

    // 2. The member enables it with version 0.1.0 and a dead-letter topic.
    ok(cli_with_token(
        &router,
        &member,
        &[
            "flows",
            "enable",
            "--algorithm",
            "ezra/store_file",
            "--topic",
            "incoming",
            "--version",
            "0.1.0",
            "--dead-letter-topic",
            "incoming-dlq",
        ],
    ));
    let message = r#"{"filename": "walkthrough.txt", "data": "hello"}"#;
    router.cli_ok(&["send", "incoming", "--data", message]);
    wait_for("the stored file", Duration::from_secs(30), || {
        stored(&router).then_some(())
    });
    let tab = ok(cli_with_token(
        &router,
        &member,
        &["flows", "list", "--algorithm", "ezra/store_file"],
    ));
    assert!(
        tab.lines().any(|l| l.starts_with("local:incoming")
            && l.contains(" yes ")
            && l.contains("0.1.0")
            && l.contains("incoming-dlq")),
        "{tab}"
    );

    // 3. The member disables it: messages wait in the broker.
    let flow = "ezra-store_file-incoming";
    ok(cli_with_token(
        &router,
        &member,
        &["flows", "disable", flow],
    ));
    std::fs::remove_file(
        router
            .data_dir()
            .join("ezra/TestingEventFlow/walkthrough.txt"),
    )
    .unwrap();
    router.cli_ok(&["send", "incoming", "--data", message]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(!stored(&router), "a disabled flow processed a message");
    assert_eq!(
        router.peek("local", "incoming").len(),
        1,
        "the message waits in the broker"
    );

    // The change survives a restart (the configuration file is unchanged).
    assert!(router.stop().success());
    router.launch();
    std::thread::sleep(Duration::from_secs(1));
    assert!(!stored(&router));

    // 4. The member re-enables it, and the waiting message flows.
    ok(cli_with_token(
        &router,
        &member,
        &[
            "flows",
            "enable",
            "--algorithm",
            "ezra/store_file",
            "--topic",
            "incoming",
            "--version",
            "0.1.0",
        ],
    ));
    wait_for("the waiting message", Duration::from_secs(30), || {
        stored(&router).then_some(())
    });
    assert_eq!(
        router.flow(flow)["spec"]["dead_letter_topic"],
        "incoming-dlq"
    );
}

fn walkthrough_state(router: &Router) {
    let admin = |method: &str, path: &str, body: Value| {
        let (status, answer) = router.http(method, path, Some(body));
        assert_eq!(status, 200, "{method} {path}: {answer}");
        answer
    };
    admin(
        "POST",
        "/v1/brokers",
        json!({"name": "local", "kind": "embedded"}),
    );
    admin(
        "PUT",
        "/v1/brokers/local/topics/in",
        json!({"consumers": ["ezra/store_file", "bob/echo"]}),
    );
    admin(
        "PUT",
        "/v1/brokers/local/topics/dlq",
        json!({"publishers": ["ezra/store_file"]}),
    );
    admin(
        "POST",
        "/v1/flows",
        json!({"algorithm": "ezra/store_file", "topic": "in", "name": "ezra-flow"}),
    );
}

#[test]
fn calls_without_a_valid_token_get_401_and_owners_get_403_outside_their_scope() {
    let router = empty_router();
    walkthrough_state(&router);
    let (status, _) = router.http("POST", "/v1/tokens", Some(json!({"owner": "ezra"})));
    assert_eq!(status, 200);
    let (_, ezra) = router.http("POST", "/v1/tokens", Some(json!({"owner": "ezra"})));
    let ezra = ezra["token"].as_str().unwrap().to_string();
    let addr = std::fs::read_to_string(router.state_dir().join("admin.addr")).unwrap();
    let url = |p: &str| format!("http://{}{p}", addr.trim());

    let (status, body) = http("GET", &url("/v1/flows"), None, None);
    assert_eq!(status, 401, "{body}");
    let (status, _) = http("GET", &url("/v1/flows"), Some("not-a-token"), None);
    assert_eq!(status, 401);

    // Owner-scoped: their own flows and secrets only.
    let as_ezra =
        |method: &str, path: &str, body: Option<Value>| http(method, &url(path), Some(&ezra), body);
    assert_eq!(as_ezra("GET", "/v1/flows", None).0, 200);
    assert_eq!(
        as_ezra(
            "PATCH",
            "/v1/flows/ezra-flow",
            Some(json!({"enabled": false}))
        )
        .0,
        200
    );
    assert_eq!(
        as_ezra(
            "PUT",
            "/v1/algorithms/ezra/store_file/secrets/TOKEN",
            Some(json!({"value": "x"}))
        )
        .0,
        200
    );
    for (method, path, body) in [
        (
            "POST",
            "/v1/brokers",
            Some(json!({"name": "b2", "kind": "embedded"})),
        ),
        ("DELETE", "/v1/brokers/local", None),
        ("PUT", "/v1/brokers/local/topics/x", Some(json!({}))),
        (
            "POST",
            "/v1/brokers/local/topics/in/grants",
            Some(json!({"algorithm": "ezra/*", "consume": true})),
        ),
        (
            "POST",
            "/v1/flows",
            Some(json!({"algorithm": "bob/echo", "topic": "in"})),
        ),
        (
            "PUT",
            "/v1/algorithms/bob/echo/secrets/X",
            Some(json!({"value": "x"})),
        ),
        ("GET", "/v1/algorithms/bob/echo/topics", None),
        (
            "POST",
            "/v1/messages",
            Some(json!({"topic": "in", "payload": "x"})),
        ),
        ("GET", "/v1/tokens", None),
        ("PUT", "/v1/state", Some(json!({}))),
    ] {
        let (status, answer) = as_ezra(method, path, body);
        assert_eq!(status, 403, "{method} {path} as ezra: {answer}");
    }
    // Bad input is a 400 that says what is wrong.
    let (status, answer) = router.http(
        "POST",
        "/v1/flows",
        Some(json!({"algorithm": "ezra", "topic": "in"})),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("algorithm"),
        "{answer}"
    );
    let (status, answer) = router.http(
        "POST",
        "/v1/flows",
        Some(json!({"algorithm": "ezra/store_file", "topic": "nope"})),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().contains("nope"),
        "{answer}"
    );
}

#[test]
fn a_flow_without_a_grant_is_refused_naming_the_grant() {
    let router = empty_router();
    walkthrough_state(&router);
    let (status, answer) = router.http(
        "POST",
        "/v1/flows",
        Some(json!({"algorithm": "ezra/transform", "topic": "in"})),
    );
    assert_eq!(status, 400, "{answer}");
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("ezra/transform has no grant to consume from topic \"in\""),
        "{error}"
    );
    // An output topic the algorithm may not publish to is refused too.
    let (status, answer) = router.http(
        "POST",
        "/v1/flows",
        Some(json!({"algorithm": "bob/echo", "topic": "in", "output_topic": "dlq"})),
    );
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("no grant to publish"),
        "{answer}"
    );
    // A dead-letter topic needs none: the router writes dead letters.
    let (status, answer) = router.http(
        "POST",
        "/v1/flows",
        Some(json!({"algorithm": "bob/echo", "topic": "in", "dead_letter_topic": "dlq"})),
    );
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn deleting_a_broker_in_use_is_refused_unless_forced() {
    let router = empty_router();
    walkthrough_state(&router);
    let out = router.cli(&["brokers", "delete", "local", "--yes"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("used by flows") && err.contains("ezra-flow"),
        "{err}"
    );
    assert!(err.contains("409"), "{err}");
    // Without --yes and without a terminal, nothing happens.
    let out = router.cli(&["brokers", "delete", "local", "--force"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--yes"));

    let done = router.cli_ok(&["brokers", "delete", "local", "--force", "--yes"]);
    assert!(done.contains("disabled flows: ezra-flow"), "{done}");
    let (_, state) = router.http("GET", "/v1/state", None);
    assert!(state["brokers"].as_array().unwrap().is_empty());
    assert_eq!(state["flows"][0]["enabled"], false);
}

#[test]
fn a_canary_secret_reaches_the_algorithm_and_nothing_else() {
    let router = empty_router();
    let canary = "canary-7f3c1e9b2d4a";
    let admin = |method: &str, path: &str, body: Value| {
        let (status, answer) = router.http(method, path, Some(body));
        assert_eq!(status, 200, "{method} {path}: {answer}");
    };
    admin(
        "POST",
        "/v1/brokers",
        json!({"name": "local", "kind": "embedded"}),
    );
    admin(
        "PUT",
        "/v1/brokers/local/topics/in",
        json!({"consumers": ["ezra/transform"]}),
    );
    // The topic's name is the secret: the algorithm publishes to the topic its
    // TRANSFORM_TOPIC variable names.
    admin(
        "PUT",
        &format!("/v1/brokers/local/topics/{canary}"),
        json!({"publishers": ["ezra/transform"]}),
    );
    admin(
        "PUT",
        "/v1/algorithms/ezra/transform/secrets/TRANSFORM_TOPIC",
        json!({"value": canary}),
    );
    admin(
        "PUT",
        "/v1/algorithms/ezra/transform/secrets/API_KEY",
        json!({"value": format!("{canary}-key")}),
    );
    admin(
        "POST",
        "/v1/flows",
        json!({"algorithm": "ezra/transform", "topic": "in", "name": "t"}),
    );
    router.publish("in", &[r#"{"text": "hi"}"#.to_string()]);
    let out = wait_for("the transformed message", Duration::from_secs(30), || {
        router.peek("local", canary).into_iter().next()
    });
    assert!(out["payload"].as_str().unwrap().contains("HI"));

    let names = router.cli_ok(&["secrets", "list", "ezra/transform"]);
    assert_eq!(
        names.lines().collect::<Vec<_>>(),
        vec!["API_KEY", "TRANSFORM_TOPIC"]
    );
    // The key's value appears in no response and no log line. (The topic
    // named after the canary legitimately shows its name, so check the key.)
    let key = format!("{canary}-key");
    for path in [
        "/v1/state",
        "/v1/brokers",
        "/v1/brokers/local",
        "/v1/brokers/local/topics",
        "/v1/flows",
        "/v1/flows/t",
        "/v1/plugins",
        "/v1/tokens",
        "/v1/algorithms/ezra/transform/secrets",
        "/v1/algorithms/ezra/transform/topics",
    ] {
        let (status, body) = router.http("GET", path, None);
        assert_eq!(status, 200, "{path}: {body}");
        assert!(!body.to_string().contains(&key), "{path} leaks the secret");
    }
    assert!(!router.metrics().contains(&key));
    assert!(!router.log().contains(&key), "the log leaks the secret");
}

#[test]
fn apply_converges_the_state_and_the_file_seeds_it() {
    let mut router = Router::start(
        r#"
[[brokers]]
name = "local"
kind = "embedded"

[[topics]]
name = "in"
consumers = ["examples/echo"]

[[topics]]
name = "out"
publishers = ["examples/echo"]
"#,
    );
    let file = router.dir.path().join("more.toml");
    std::fs::write(
        &file,
        r#"
[[brokers]]
name = "local"
kind = "embedded"

[[topics]]
name = "in"
consumers = ["examples/echo"]

[[topics]]
name = "out"
publishers = ["examples/echo"]

[[flows]]
name = "echo"
topic = "in"
algorithm = "examples/echo"
output_topic = "out"
"#,
    )
    .unwrap();
    let applied = router.cli_ok(&["apply", "-f", file.to_str().unwrap()]);
    assert!(applied.contains("1 flows"), "{applied}");
    router.publish("in", &["x".into()]);
    wait_for("the echo", Duration::from_secs(30), || {
        (router.peek("local", "out").len() == 1).then_some(())
    });
    // A restart with the same configuration file keeps the applied flow.
    assert!(router.stop().success());
    router.launch();
    router.publish("in", &["y".into()]);
    wait_for("the second echo", Duration::from_secs(30), || {
        (router.peek("local", "out").len() == 2).then_some(())
    });
    // A bad file is refused with its name and field, and changes nothing.
    std::fs::write(
        &file,
        "[[flows]]\nname = \"x\"\ntopic = \"in\"\nalgorithm = \"nope\"\n",
    )
    .unwrap();
    let out = router.cli(&["apply", "-f", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("more.toml") && err.contains("flows[0].algorithm"),
        "{err}"
    );
    assert_eq!(router.flow("echo")["state"], "running");
}

#[test]
fn a_schema_driven_fuzz_of_the_api_finds_no_server_error() {
    let Some(venv) = std::env::var_os("EVENTFLOW_VENV") else {
        panic!("EVENTFLOW_VENV is not set: run the tests with `cargo xtask test`");
    };
    let router = empty_router();
    walkthrough_state(&router);
    let addr = std::fs::read_to_string(router.state_dir().join("admin.addr")).unwrap();
    let token = std::fs::read_to_string(router.state_dir().join("admin.token")).unwrap();
    let out = Command::new(std::path::Path::new(&venv).join("bin/schemathesis"))
        .args(["run", &format!("http://{}/v1/openapi.json", addr.trim())])
        .args(["--checks", "not_a_server_error"])
        .args([
            "--header",
            &format!("Authorization: Bearer {}", token.trim()),
        ])
        .args(["--max-examples", "25", "--seed", "1", "--workers", "1"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .env("NO_COLOR", "1")
        .output()
        .expect("cannot run schemathesis");
    let report = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found failures:\n{report}"
    );
    assert!(
        report.contains("passed") || report.contains("PASSED"),
        "{report}"
    );
    assert!(router.is_running_check());
}
