//! Rollout decisions the router takes on its own survive a restart: a
//! version a latest-following flow's `rollout` rolled back stays skipped
//! (the flow's `skip_versions`), a shadow its gate stopped stays stopped
//! (it left the declaration). Real binary, embedded broker, `kill -9`.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{EMBEDDED_BROKER, Plugins, Router, header, named_flow, wait_for};

fn payloads(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// Waits until every message published to `<flow>-in` (`total`) has an
/// output or a dead letter and the flow holds none in flight; returns the
/// numbers of outputs and dead letters.
fn wait_settled(router: &Router, flow: &str, total: usize) -> (usize, usize) {
    wait_for("every message settled", Duration::from_secs(300), || {
        let outputs = router.peek("local", &format!("{flow}-out")).len();
        let dead = router.peek("local", &format!("{flow}-dlq")).len();
        (outputs + dead >= total && router.flow(flow)["in_flight"] == 0).then_some((outputs, dead))
    })
}

/// Regression: the rollback of a `rollout` lived in the router's memory,
/// so after a `kill -9` the flow served the broken version (the latest) to
/// every message.
#[test]
fn a_version_the_rollout_rolled_back_gets_no_message_after_a_kill_9() {
    let config = format!(
        "{EMBEDDED_BROKER}{}",
        named_flow(
            "drop",
            "test/drop",
            "rollout = \"canary 50% then promote after 100\""
        )
    );
    let mut router = Router::configure(&config, Plugins::Copy(&[]));
    router.deploy("drop", "0.1.0", "examples", "echo");
    router.launch();
    router.publish("drop-in", &["first".to_string()]);
    wait_settled(&router, "drop", 1);

    // A broken version: a canary at 50 %, rolled back after 100 failures;
    // the rollback is saved into the flow's declaration.
    router.deploy("drop", "0.2.0", "test", "always_reject");
    let mut total = 1;
    wait_for("the new version's canary", Duration::from_secs(60), || {
        router.publish("drop-in", &payloads(&format!("probe{total}-"), 10));
        total += 10;
        std::thread::sleep(Duration::from_millis(200));
        (router.flow("drop")["rollout"]["canary_version"] == "0.2.0").then_some(())
    });
    router.publish("drop-in", &payloads("d", 400));
    total += 400;
    let detail = wait_for("the rollback saved", Duration::from_secs(120), || {
        let (_, detail) = router.http("GET", "/v1/flows/drop", None);
        (detail["status"]["rollout"]["state"] == "rolled_back"
            && detail["skip_versions"] == json!(["0.2.0"]))
        .then_some(detail)
    });
    assert_eq!(detail["status"]["rollout"]["percent"], 0.0, "{detail}");
    let (outputs, dead) = wait_settled(&router, "drop", total);
    assert!(
        dead >= 100,
        "{dead} dead letters: the canary was not judged"
    );
    let shown = router.cli_ok(&["flows", "show", "drop"]);
    assert!(shown.contains("skip_versions"), "{shown}");
    // The declaration the API shows changes before it is written to disk;
    // the log line comes after.
    wait_for("the rollback on disk", Duration::from_secs(60), || {
        router.log().contains("Rollback saved").then_some(())
    });

    router.kill9();
    router.launch();
    router.publish("drop-in", &payloads("after", 200));
    let (after, dead_after) = wait_settled(&router, "drop", outputs + dead + 200);
    assert_eq!(
        dead_after, dead,
        "the rolled-back version got messages after the restart"
    );
    let out = router.peek("local", "drop-out");
    assert!(after >= outputs + 200);
    assert!(
        out[outputs..]
            .iter()
            .all(|m| header(m, "eventflow-algorithm") == Some("test/drop@0.1.0")),
        "the old version serves every message after the restart"
    );
    // The status still shows the rollback, and says why (from the first
    // message that skipped the version).
    let report = wait_for("the rollback shown", Duration::from_secs(30), || {
        let r = router.flow("drop")["rollout"].clone();
        (r["state"] == "rolled_back").then_some(r)
    });
    assert_eq!(
        (
            &report["canary_version"],
            &report["state"],
            &report["percent"]
        ),
        (&json!("0.2.0"), &json!("rolled_back"), &json!(0.0)),
        "{report}"
    );
    let why = report["decided"][1].as_str().unwrap_or_default();
    assert!(why.contains("skip_versions"), "{report}");
    let status = router.cli_ok(&["status", "drop"]);
    assert!(status.contains("rolled_back"), "{status}");

    // An operator who fixed what broke removes the version from
    // `skip_versions` (PATCH): the flow rolls it out again as a canary.
    let (code, patched) = router.http(
        "PATCH",
        "/v1/flows/drop",
        Some(json!({"skip_versions": []})),
    );
    assert_eq!(code, 200, "{patched}");
    assert!(patched.get("skip_versions").is_none(), "{patched}");
    let mut probes = 0;
    let report = wait_for(
        "the version rolled out again",
        Duration::from_secs(60),
        || {
            router.publish("drop-in", &payloads(&format!("again{probes}-"), 5));
            probes += 1;
            std::thread::sleep(Duration::from_millis(200));
            let r = router.flow("drop")["rollout"].clone();
            (r["state"] == "canary" && r["canary_version"] == "0.2.0").then_some(r)
        },
    );
    assert_eq!(report["percent"], 50.0, "{report}");
}

/// The shadow report of a flow's status, `Null` without one.
fn shadow(router: &Router, flow: &str) -> Value {
    router.flow(flow)["shadow"].clone()
}

/// Regression: a shadow's stop by its gate lived in the router's memory,
/// so after a restart the shadow ran every message again.
#[test]
fn a_shadow_its_gate_stopped_stays_stopped_after_a_kill_9() {
    // The shadow (chaos) rejects the REJECT messages, which the serving
    // version (echo) passes: it agrees on 70 %, below its gate's 90 %.
    let config = format!(
        "{EMBEDDED_BROKER}{}",
        named_flow(
            "gated",
            "test/gated/0.1.0",
            "shadow = { version = \"0.2.0\", min_output_agreement = 0.9, window_messages = 50, concurrency = 16 }",
        )
    );
    let mut router = Router::configure(&config, Plugins::Copy(&[]));
    router.deploy("gated", "0.1.0", "examples", "echo");
    router.deploy("gated", "0.2.0", "test", "chaos");
    router.launch();
    let mixed = |n: usize| -> Vec<String> {
        (0..n)
            .map(|i| {
                if i % 10 < 3 {
                    format!("REJECT-{i}")
                } else {
                    format!("ok-{i}")
                }
            })
            .collect()
    };
    router.publish("gated-in", &mixed(300));

    // Stopped, and the stop saved: the declaration has no shadow any more
    // while the status still shows why it stopped.
    let detail = wait_for("the stop saved", Duration::from_secs(120), || {
        let (_, detail) = router.http("GET", "/v1/flows/gated", None);
        (detail["shadow"].is_null() && detail["status"]["shadow"]["state"] == "stopped")
            .then_some(detail)
    });
    let why = detail["status"]["shadow"]["stopped"][1]
        .as_str()
        .unwrap_or_default();
    assert!(why.contains("min_output_agreement"), "{detail}");
    wait_settled(&router, "gated", 300);
    // The declaration the API shows changes before it is written to disk;
    // the log line comes after.
    wait_for("the stop on disk", Duration::from_secs(60), || {
        router.log().contains("Shadow stop saved").then_some(())
    });

    router.kill9();
    router.launch();
    router.publish("gated-in", &mixed(100));
    let (outputs, _) = wait_settled(&router, "gated", 400);
    assert!(outputs >= 400, "the serving version handles every message");
    assert!(
        shadow(&router, "gated").is_null(),
        "the shadow runs again after the restart: {}",
        shadow(&router, "gated")
    );
    let runs = router.metrics();
    let runs: Vec<&str> = runs
        .lines()
        .filter(|l| l.starts_with("eventflow_shadow_runs_total{flow=\"gated\""))
        .collect();
    assert!(runs.is_empty(), "{runs:?}");
}

/// Regression: a flow whose `skip_versions` lists the only loaded version
/// (a restart loads plugins in any order, or the good version's plugin
/// was removed) ran it for every message; it waits instead, its messages
/// in the broker, until a version it may run is loaded.
#[test]
fn a_flow_waits_rather_than_run_a_skipped_version_when_no_other_is_loaded() {
    let config = format!(
        "{EMBEDDED_BROKER}{}",
        named_flow(
            "skip",
            "test/skip",
            "rollout = \"canary 50% then promote after 100\"\nskip_versions = [\"0.2.0\"]"
        )
    );
    let mut router = Router::configure(&config, Plugins::Copy(&[]));
    router.deploy("skip", "0.2.0", "test", "always_reject");
    router.launch();
    router.publish("skip-in", &payloads("m", 50));
    std::thread::sleep(Duration::from_secs(2));
    assert!(
        router.peek("local", "skip-dlq").is_empty(),
        "the skipped version ran"
    );
    // The flow says why it waits (a version is loaded, but only a skipped
    // one).
    let flow = router.flow("skip");
    assert_eq!(flow["state"], "waiting_for_plugin", "{flow}");
    let why = flow["waiting_for"].as_str().unwrap_or_default();
    assert!(why.contains("skip_versions"), "{flow}");
    assert!(
        router
            .log()
            .contains("The flow's rollout has no version to run yet"),
        "{}",
        router.log()
    );

    router.deploy("skip", "0.1.0", "examples", "echo");
    let (outputs, dead) = wait_settled(&router, "skip", 50);
    assert_eq!((outputs, dead), (50, 0));
    assert!(
        router
            .peek("local", "skip-out")
            .iter()
            .all(|m| header(m, "eventflow-algorithm") == Some("test/skip@0.1.0"))
    );
}

/// Regression: the version a `rollout` served lived in the router's memory
/// only, so after a `kill -9` the newest loaded version, a canary not yet
/// decided on, served every message. It is saved; the restarted flow
/// serves the old version again and the new one gets its share only.
#[test]
fn an_undecided_canary_keeps_its_share_after_a_kill_9() {
    let config = format!(
        "{EMBEDDED_BROKER}{}",
        named_flow(
            "undecided",
            "test/undecided",
            "rollout = \"canary 10% then promote after 100000\""
        )
    );
    let mut router = Router::configure(&config, Plugins::Copy(&[]));
    router.deploy("undecided", "0.1.0", "examples", "echo");
    router.launch();
    router.publish("undecided-in", &["first".to_string()]);
    wait_settled(&router, "undecided", 1);
    wait_for("the serving version saved", Duration::from_secs(60), || {
        router
            .log()
            .contains("Rollout's serving version saved")
            .then_some(())
    });
    // A healthy new version (the same code): a canary at 10 %, far from
    // its promotion.
    router.deploy("undecided", "0.2.0", "examples", "echo");
    let mut total = 1;
    wait_for("the new version's canary", Duration::from_secs(60), || {
        router.publish("undecided-in", &payloads(&format!("probe{total}-"), 10));
        total += 10;
        std::thread::sleep(Duration::from_millis(200));
        (router.flow("undecided")["rollout"]["canary_version"] == "0.2.0").then_some(())
    });
    let (before, _) = wait_settled(&router, "undecided", total);

    router.kill9();
    router.launch();
    // Both versions loaded before any message: the flow then chooses
    // between them as it would in the steady state.
    wait_for("both versions loaded", Duration::from_secs(120), || {
        let (_, body) = router.http("GET", "/v1/plugins", None);
        let ok = |v: &str| {
            body["plugins"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["algorithm"] == format!("test/undecided/{v}") && p["status"] == "ok")
        };
        (ok("0.1.0") && ok("0.2.0")).then_some(())
    });
    router.publish("undecided-in", &payloads("after", 500));
    let (after, dead) = wait_settled(&router, "undecided", before + 500);
    assert_eq!((after, dead), (before + 500, 0));
    let by = |version: &str| {
        router.peek("local", "undecided-out")[before..]
            .iter()
            .filter(|m| header(m, "eventflow-algorithm") == Some(version))
            .count()
    };
    let (old, new) = (by("test/undecided@0.1.0"), by("test/undecided@0.2.0"));
    assert_eq!(old + new, 500);
    assert!(
        (1..=100).contains(&new),
        "the undecided canary got {new} of 500 messages after the restart (its share is 10 %)"
    );
    let report = router.flow("undecided")["rollout"].clone();
    assert_eq!(
        (&report["canary_version"], &report["state"]),
        (&json!("0.2.0"), &json!("canary")),
        "{report}"
    );
}
