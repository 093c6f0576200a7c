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

    // Owner-scoped: their own algorithms only (the full list of what an
    // owner may and may not do is in
    // an_owner_token_may_do_exactly_what_the_readme_says).
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
        // ezra's algorithms may only publish to "dlq", not consume it.
        (
            "POST",
            "/v1/messages",
            Some(json!({"topic": "dlq", "payload": "x"})),
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

/// An owner-scoped token against every endpoint: ezra's token may see, enable,
/// edit, disable and delete the flows of ezra's algorithms, read and replay
/// their dead letters, manage their secrets' names, send to a topic they may
/// consume and see their status; everything else is 403.
#[test]
fn an_owner_token_may_do_exactly_what_the_readme_says() {
    let router = empty_router();
    walkthrough_state(&router);
    let admin = |method: &str, path: &str, body: Value| {
        let (status, answer) = router.http(method, path, Some(body));
        assert_eq!(status, 200, "{method} {path}: {answer}");
        answer
    };
    admin(
        "PUT",
        "/v1/brokers/local/topics/bob-dlq",
        json!({"publishers": ["bob/echo"]}),
    );
    admin(
        "POST",
        "/v1/flows",
        json!({"algorithm": "bob/echo", "topic": "in", "name": "bob-flow",
               "dead_letter_topic": "bob-dlq"}),
    );
    admin(
        "PUT",
        "/v1/algorithms/bob/echo/secrets/BOB_KEY",
        json!({"value": "bob-secret-value"}),
    );
    let bob_token = admin("POST", "/v1/tokens", json!({"owner": "bob"}));
    let bob_token_id = bob_token["id"].as_str().unwrap().to_string();
    let ezra = admin("POST", "/v1/tokens", json!({"owner": "ezra"}))["token"]
        .as_str()
        .unwrap()
        .to_string();
    let addr = std::fs::read_to_string(router.state_dir().join("admin.addr")).unwrap();
    let as_ezra = |method: &str, path: &str, body: Option<Value>| {
        http(
            method,
            &format!("http://{}{path}", addr.trim()),
            Some(&ezra),
            body,
        )
    };

    // Allowed, in the order a member would use them.
    let allowed: Vec<(&str, &str, Option<Value>)> = vec![
        ("GET", "/v1/flows", None),
        ("GET", "/v1/flows/ezra-flow", None),
        ("GET", "/v1/algorithms/ezra/store_file/topics", None),
        ("GET", "/v1/plugins", None),
        (
            "PATCH",
            "/v1/flows/ezra-flow",
            Some(json!({"dead_letter_topic": "dlq", "version": "0.1.0"})),
        ),
        (
            "PATCH",
            "/v1/flows/ezra-flow",
            Some(json!({"enabled": false})),
        ),
        (
            "POST",
            "/v1/flows",
            Some(json!({"algorithm": "ezra/store_file", "topic": "in", "name": "ezra-second"})),
        ),
        ("DELETE", "/v1/flows/ezra-second", None),
        (
            "PUT",
            "/v1/algorithms/ezra/store_file/secrets/API_KEY",
            Some(json!({"value": "ezra-secret-value"})),
        ),
        ("GET", "/v1/algorithms/ezra/store_file/secrets", None),
        (
            "DELETE",
            "/v1/algorithms/ezra/store_file/secrets/API_KEY",
            None,
        ),
        ("GET", "/v1/flows/ezra-flow/dead-letters", None),
        (
            "POST",
            "/v1/flows/ezra-flow/dead-letters/replay",
            Some(json!({})),
        ),
        (
            "POST",
            "/v1/messages",
            Some(json!({"topic": "in", "payload": "a test message from ezra"})),
        ),
    ];
    for (method, path, body) in allowed {
        let (status, answer) = as_ezra(method, path, body);
        assert_eq!(status, 200, "{method} {path} as ezra: {answer}");
        assert!(
            !answer.to_string().contains("secret-value"),
            "{method} {path} shows a secret value: {answer}"
        );
        match path {
            "/v1/flows" if method == "GET" => {
                let names: Vec<&str> = answer["flows"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|f| f["name"].as_str().unwrap())
                    .collect();
                assert_eq!(names, vec!["ezra-flow"], "ezra sees only its flows");
            }
            "/v1/plugins" => {
                for p in answer["plugins"].as_array().unwrap() {
                    assert!(p["algorithm"].as_str().unwrap().starts_with("ezra/"), "{p}");
                }
            }
            "/v1/algorithms/ezra/store_file/secrets" => {
                assert_eq!(answer["secrets"], json!(["API_KEY"]));
            }
            _ => {}
        }
    }
    // The message ezra sent waits on "in" (ezra's flow is disabled and
    // bob/echo is not loaded).
    assert!(
        router
            .peek("local", "in")
            .iter()
            .any(|m| m["payload"] == "a test message from ezra"),
        "ezra's message is not on the topic"
    );

    // Refused: everything of the administrator, and everything of bob.
    let refused: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", "/v1/state".into(), None),
        ("PUT", "/v1/state".into(), Some(json!({}))),
        ("GET", "/v1/brokers".into(), None),
        (
            "POST",
            "/v1/brokers".into(),
            Some(json!({"name": "b2", "kind": "embedded"})),
        ),
        ("GET", "/v1/brokers/local".into(), None),
        ("DELETE", "/v1/brokers/local?force=true".into(), None),
        ("GET", "/v1/brokers/local/topics".into(), None),
        (
            "PUT",
            "/v1/brokers/local/topics/in".into(),
            Some(json!({"consumers": ["ezra/*"]})),
        ),
        (
            "PUT",
            "/v1/brokers/local/topics/new".into(),
            Some(json!({})),
        ),
        (
            "DELETE",
            "/v1/brokers/local/topics/in?force=true".into(),
            None,
        ),
        (
            "POST",
            "/v1/brokers/local/topics/dlq/grants".into(),
            Some(json!({"algorithm": "ezra/*", "consume": true})),
        ),
        (
            "POST",
            "/v1/brokers/local/topics/in/grants/revoke".into(),
            Some(json!({"algorithm": "bob/echo", "consume": true})),
        ),
        ("GET", "/v1/brokers/local/topics/in/messages".into(), None),
        (
            "POST",
            "/v1/messages".into(),
            Some(json!({"topic": "dlq", "payload": "x"})),
        ),
        (
            "POST",
            "/v1/messages".into(),
            Some(json!({"topic": "bob-dlq", "payload": "x"})),
        ),
        ("GET", "/v1/flows/bob-flow".into(), None),
        (
            "PATCH",
            "/v1/flows/bob-flow".into(),
            Some(json!({"enabled": false})),
        ),
        ("DELETE", "/v1/flows/bob-flow".into(), None),
        ("GET", "/v1/flows/bob-flow/dead-letters".into(), None),
        (
            "POST",
            "/v1/flows/bob-flow/dead-letters/replay".into(),
            Some(json!({})),
        ),
        (
            "POST",
            "/v1/flows".into(),
            Some(json!({"algorithm": "bob/echo", "topic": "in"})),
        ),
        // Taking over bob's flow by its name.
        (
            "POST",
            "/v1/flows".into(),
            Some(json!({"algorithm": "ezra/store_file", "topic": "in", "name": "bob-flow"})),
        ),
        ("GET", "/v1/algorithms/bob/echo/topics".into(), None),
        ("GET", "/v1/algorithms/bob/echo/secrets".into(), None),
        (
            "PUT",
            "/v1/algorithms/bob/echo/secrets/X".into(),
            Some(json!({"value": "x"})),
        ),
        (
            "DELETE",
            "/v1/algorithms/bob/echo/secrets/BOB_KEY".into(),
            None,
        ),
        ("GET", "/v1/tokens".into(), None),
        ("POST", "/v1/tokens".into(), Some(json!({"owner": "ezra"}))),
        ("DELETE", format!("/v1/tokens/{bob_token_id}"), None),
    ];
    for (method, path, body) in refused {
        let (status, answer) = as_ezra(method, &path, body);
        assert_eq!(status, 403, "{method} {path} as ezra: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains("\"ezra\""),
            "{method} {path}: the refusal names the token's owner: {answer}"
        );
    }
    // Nothing of bob's changed.
    let bob = router.flow("bob-flow");
    assert_eq!(bob["spec"]["enabled"], true, "{bob}");
    let (_, secrets) = router.http("GET", "/v1/algorithms/bob/echo/secrets", None);
    assert_eq!(secrets["secrets"], json!(["BOB_KEY"]));
    let (_, tokens) = router.http("GET", "/v1/tokens", None);
    assert_eq!(tokens["tokens"].as_array().unwrap().len(), 2);

    // The CLI with ezra's token: send, dead letters, delete, and a 403.
    ok(cli_with_token(
        &router,
        &ezra,
        &["send", "in", "--data", "from the cli"],
    ));
    ok(cli_with_token(
        &router,
        &ezra,
        &["dlq", "list", "ezra-flow"],
    ));
    ok(cli_with_token(&router, &ezra, &["status"]));
    // Refused through the CLI too: the admin's commands, and bob's dead
    // letters and topics.
    let refused_cli: [&[&str]; 5] = [
        &["topics", "declare", "x", "--broker", "local"],
        &["dlq", "list", "bob-flow"],
        &["dlq", "replay", "bob-flow"],
        &["send", "bob-dlq", "--data", "x"],
        &["send", "bob-dlq", "--broker", "local", "--data", "x"],
    ];
    for args in refused_cli {
        let out = cli_with_token(&router, &ezra, args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} as ezra");
        assert!(stderr.contains("403"), "{args:?} as ezra: {stderr}");
    }
    // The admin may do all of it on bob's behalf.
    ok(router.cli(&["dlq", "list", "bob-flow"]));
    ok(router.cli(&["dlq", "replay", "bob-flow"]));
    ok(router.cli(&["send", "bob-dlq", "--data", "from the admin"]));
    ok(cli_with_token(
        &router,
        &ezra,
        &["flows", "delete", "ezra-flow", "--yes"],
    ));
    let (_, state) = router.http("GET", "/v1/state", None);
    let names: Vec<&str> = state["flows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["bob-flow"]);
}

/// Regression: a `PUT` of a topic with only `address` wiped both access lists.
#[test]
fn a_put_of_a_declared_topic_keeps_the_fields_it_omits() {
    let router = empty_router();
    walkthrough_state(&router);
    let put = |body: Value| {
        let (status, answer) = router.http("PUT", "/v1/brokers/local/topics/in", Some(body));
        assert_eq!(status, 200, "{answer}");
        answer
    };
    let topic = || {
        let (_, state) = router.http("GET", "/v1/state", None);
        state["topics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == "in")
            .cloned()
            .unwrap()
    };
    let both = json!(["ezra/store_file", "bob/echo"]);
    // Only the address: both lists stay.
    let answer = put(json!({"address": "in-queue"}));
    assert_eq!(answer["consumers"], both, "{answer}");
    let t = topic();
    assert_eq!(t["address"], "in-queue");
    assert_eq!(t["consumers"], both);
    // Only the publishers: the address and the consumers stay.
    put(json!({"publishers": ["ezra/*"]}));
    let t = topic();
    assert_eq!(t["address"], "in-queue");
    assert_eq!(t["consumers"], both);
    assert_eq!(t["publishers"], json!(["ezra/*"]));
    // An empty body changes nothing.
    put(json!({}));
    assert_eq!(topic(), t);
    // Explicit values replace: null removes the address, [] empties a list.
    put(json!({"address": null, "publishers": []}));
    let t = topic();
    assert!(t.get("address").is_none_or(Value::is_null), "{t}");
    assert_eq!(t["consumers"], both);
    assert_eq!(t["publishers"], json!([]));
    // The flow on the topic still runs: its grant was never lost.
    assert_eq!(router.flow("ezra-flow")["spec"]["enabled"], true);

    // The CLI: declaring an existing topic again, with or without an
    // address, keeps its access lists and its address.
    let out = router.cli_ok(&["topics", "declare", "in", "--address", "in-2"]);
    assert!(out.contains("ezra/store_file"), "{out}");
    router.cli_ok(&["topics", "declare", "in"]);
    let t = topic();
    assert_eq!(t["address"], "in-2");
    assert_eq!(t["consumers"], both);
    // A new topic starts with what is given, the rest empty.
    let (status, answer) = router.http(
        "PUT",
        "/v1/brokers/local/topics/fresh",
        Some(json!({"consumers": ["ezra/store_file"]})),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["consumers"], json!(["ezra/store_file"]));
    assert_eq!(answer["publishers"], json!([]));
}

/// Regression: re-enabling a flow without `--version` switched it to
/// `latest` without a word.
#[test]
fn re_enabling_a_flow_keeps_its_version_unless_told_otherwise() {
    let router = empty_router();
    walkthrough_state(&router);
    let enable = |extra: &[&str]| {
        let mut args = vec![
            "flows",
            "enable",
            "--algorithm",
            "ezra/store_file",
            "--topic",
            "in",
            "--name",
            "ezra-flow",
        ];
        args.extend(extra);
        router.cli_ok(&args)
    };
    let version = || router.flow("ezra-flow")["spec"]["version"].clone();
    let out = enable(&["--version", "0.1.0"]);
    assert!(!out.contains("the version it had"), "{out}");
    assert_eq!(version(), "0.1.0");
    router.cli_ok(&["flows", "disable", "ezra-flow"]);

    // Without --version: the flow keeps 0.1.0, and the output says so.
    let out = enable(&[]);
    assert!(
        out.contains("0.1.0") && out.contains("the version it had"),
        "{out}"
    );
    assert_eq!(version(), "0.1.0");
    assert_eq!(router.flow("ezra-flow")["spec"]["enabled"], true);
    // The API too: no version keeps it, and says so.
    let (status, answer) = router.http(
        "POST",
        "/v1/flows",
        Some(json!({"algorithm": "ezra/store_file", "topic": "in", "name": "ezra-flow"})),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["version"], "0.1.0");
    assert_eq!(answer["version_kept"], true);

    // --latest switches it, and so does --version latest.
    let out = enable(&["--latest"]);
    assert!(!out.contains("the version it had"), "{out}");
    assert_eq!(version(), "latest");
    enable(&["--version", "0.1.0"]);
    enable(&["--version", "latest"]);
    assert_eq!(version(), "latest");
    // --version and --latest together are refused.
    let out = router.cli(&[
        "flows",
        "enable",
        "--algorithm",
        "ezra/store_file",
        "--topic",
        "in",
        "--version",
        "0.1.0",
        "--latest",
    ]);
    assert!(!out.status.success());
    // A new flow without a version follows latest.
    let (status, answer) = router.http(
        "POST",
        "/v1/flows",
        Some(json!({"algorithm": "ezra/store_file", "topic": "in", "name": "fresh"})),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["version"], "latest");
    assert_eq!(answer["version_kept"], false);
}

/// Regression: `flows edit --version 9.9.9` accepted a version that is not
/// loaded without a word.
#[test]
fn a_version_that_is_not_loaded_is_accepted_with_a_warning_and_the_flow_waits() {
    let router = empty_router();
    walkthrough_state(&router);
    let warning = "version 9.9.9 of ezra/store_file is not loaded; the flow waits for it";
    let out = router.cli_ok(&["flows", "edit", "ezra-flow", "--version", "9.9.9"]);
    assert!(out.contains(warning), "{out}");
    assert_eq!(router.flow("ezra-flow")["spec"]["version"], "9.9.9");
    // The status says the flow waits, and for what.
    let flow = wait_for("the flow to wait", Duration::from_secs(30), || {
        let f = router.flow("ezra-flow");
        (f["state"] == "waiting_for_plugin").then_some(f)
    });
    assert_eq!(
        flow["waiting_for"], "version 9.9.9 of ezra/store_file is not loaded",
        "{flow}"
    );
    let status = router.cli_ok(&["status"]);
    assert!(
        status.contains("waiting_for_plugin")
            && status.contains("waiting: version 9.9.9 of ezra/store_file is not loaded"),
        "{status}"
    );
    let tab = router.cli_ok(&["flows", "list", "--algorithm", "ezra/store_file"]);
    assert!(tab.contains("9.9.9") && tab.contains("waiting"), "{tab}");

    // The API answer carries the warning too, for enable as for edit.
    let (status, answer) = router.http(
        "POST",
        "/v1/flows",
        Some(
            json!({"algorithm": "ezra/store_file", "topic": "in", "name": "other",
                    "version": "9.9.9"}),
        ),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["warnings"], json!([warning]), "{answer}");
    let out = router.cli_ok(&[
        "flows",
        "enable",
        "--algorithm",
        "ezra/store_file",
        "--topic",
        "in",
        "--name",
        "other",
        "--version",
        "9.9.9",
    ]);
    assert!(out.contains(warning), "{out}");

    // A loaded version: no warning, and the flow runs again.
    let (status, answer) = router.http(
        "PATCH",
        "/v1/flows/ezra-flow",
        Some(json!({"version": "0.1.0"})),
    );
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["warnings"], json!([]), "{answer}");
    let out = router.cli_ok(&["flows", "edit", "ezra-flow", "--version", "0.1.0"]);
    assert!(!out.contains("warning"), "{out}");
    wait_for("the flow to run", Duration::from_secs(30), || {
        let f = router.flow("ezra-flow");
        (f["state"] == "running" && f.get("waiting_for").is_none()).then_some(())
    });
}

/// Regression: `flows list --algorithm` showed only the first flow of each
/// topic.
#[test]
fn flows_list_by_algorithm_shows_every_flow_of_a_topic() {
    let router = empty_router();
    walkthrough_state(&router);
    for (name, version) in [("ezra-second", "0.1.0"), ("ezra-third", "latest")] {
        let (status, answer) = router.http(
            "POST",
            "/v1/flows",
            Some(
                json!({"algorithm": "ezra/store_file", "topic": "in", "name": name,
                        "version": version}),
            ),
        );
        assert_eq!(status, 200, "{answer}");
    }
    router.cli_ok(&["flows", "disable", "ezra-third"]);
    let tab = router.cli_ok(&["flows", "list", "--algorithm", "ezra/store_file"]);
    let rows: Vec<&str> = tab.lines().filter(|l| l.starts_with("local:in ")).collect();
    assert_eq!(rows.len(), 3, "{tab}");
    for (name, enabled) in [
        ("ezra-flow", " yes "),
        ("ezra-second", " yes "),
        ("ezra-third", " no "),
    ] {
        assert!(
            rows.iter().any(|r| r.contains(name) && r.contains(enabled)),
            "{name}: {tab}"
        );
    }
    // A topic the algorithm may use without a flow still shows, once.
    let (status, _) = router.http(
        "PUT",
        "/v1/brokers/local/topics/spare",
        Some(json!({"consumers": ["ezra/*"]})),
    );
    assert_eq!(status, 200);
    let tab = router.cli_ok(&["flows", "list", "--algorithm", "ezra/store_file"]);
    let spare: Vec<&str> = tab
        .lines()
        .filter(|l| l.starts_with("local:spare "))
        .collect();
    assert_eq!(spare.len(), 1, "{tab}");
    assert!(spare[0].contains(" no "), "{tab}");
    // The API lists every flow of the topic.
    let (_, answer) = router.http("GET", "/v1/algorithms/ezra/store_file/topics", None);
    let t = answer["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["topic"] == "in")
        .unwrap();
    assert_eq!(t["flows"].as_array().unwrap().len(), 3, "{t}");
}

/// Every flow setting the API takes is a CLI flag, and `--url` with
/// `--token` reaches the router without its configuration.
#[test]
fn the_cli_sets_every_flow_setting_and_reaches_a_router_by_url() {
    let router = empty_router();
    walkthrough_state(&router);
    router.cli_ok(&[
        "flows",
        "enable",
        "--algorithm",
        "ezra/store_file",
        "--topic",
        "in",
        "--name",
        "tuned",
        "--output-topic",
        "dlq",
        "--timeout-secs",
        "7.5",
        "--max-receives",
        "3",
        "--concurrency",
        "2",
    ]);
    let flow = |name: &str| {
        let (status, flow) = router.http("GET", &format!("/v1/flows/{name}"), None);
        assert_eq!(status, 200, "{flow}");
        flow
    };
    let tuned = flow("tuned");
    assert_eq!(tuned["output_topic"], "dlq", "{tuned}");
    assert_eq!(tuned["timeout_secs"], 7.5, "{tuned}");
    assert_eq!(tuned["max_receives"], 3, "{tuned}");
    assert_eq!(tuned["concurrency"], 2, "{tuned}");
    router.cli_ok(&[
        "flows",
        "edit",
        "tuned",
        "--no-output-topic",
        "--timeout-secs",
        "2",
        "--max-receives",
        "5",
        "--concurrency",
        "1",
    ]);
    let tuned = flow("tuned");
    assert!(tuned["output_topic"].is_null(), "{tuned}");
    assert_eq!(tuned["timeout_secs"], 2.0, "{tuned}");
    assert_eq!(tuned["max_receives"], 5, "{tuned}");
    assert_eq!(tuned["concurrency"], 1, "{tuned}");
    let out = router.cli(&["flows", "edit", "tuned", "--max-receives", "0"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("max_receives"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A table by default, JSON with --json.
    let table = router.cli_ok(&["flows", "list"]);
    assert!(table.lines().any(|l| l.starts_with("tuned ")), "{table}");

    // From a directory without the configuration, by URL and token.
    let addr = std::fs::read_to_string(router.state_dir().join("admin.addr")).unwrap();
    let token = std::fs::read_to_string(router.state_dir().join("admin.token")).unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_eventflow"))
        .args(["flows", "list", "--json", "--url"])
        .arg(format!("http://{}", addr.trim()))
        .args(["--token", token.trim()])
        .current_dir(elsewhere.path())
        .env_remove("EVENTFLOW_CONFIG")
        .env_remove("EVENTFLOW_TOKEN")
        .output()
        .unwrap();
    let flows: Vec<Value> = serde_json::from_str(&ok(out)).unwrap();
    let tuned = flows.iter().find(|f| f["name"] == "tuned").unwrap();
    assert_eq!(tuned["spec"]["max_receives"], 5, "{tuned}");
}
