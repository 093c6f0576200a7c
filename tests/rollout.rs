//! Canary rollouts: a share of a flow's messages goes to another version of
//! its algorithm, chosen by a stable hash; a canary whose gate fails is
//! rolled back at once, a healthy one promoted; operators promote and roll
//! back by hand. Real binary, embedded broker, private plugin directories
//! holding two versions of each algorithm.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};
use support::{EMBEDDED_BROKER, Plugins, Router, header, named_flow, variant, wait_for};

/// Starts a router on `flows` (on the embedded broker) with a private
/// plugin directory holding each `(alg, version, owner, name)` of
/// `versions` (see [`deploy`]).
fn start(flows: &str, versions: &[(&str, &str, &str, &str)]) -> Router {
    let mut router = Router::configure(&format!("{EMBEDDED_BROKER}{flows}"), Plugins::Copy(&[]));
    for (alg, version, owner, name) in versions {
        router.deploy(alg, version, owner, name);
    }
    router.launch();
    router
}

/// Topics `<flow>-in` and `<flow>-out`, a dead-letter topic `<flow>-dlq`,
/// and a flow of `test/<flow>` pinned to 0.1.0 with `extra` lines.
fn flow(name: &str, extra: &str) -> String {
    named_flow(name, &format!("test/{name}/0.1.0"), extra)
}

/// Outputs of a topic by the version that produced them.
fn outputs_by_version(router: &Router, topic: &str) -> BTreeMap<String, Vec<Value>> {
    let mut by = BTreeMap::<String, Vec<Value>>::new();
    for m in router.peek("local", topic) {
        let version = header(&m, "eventflow-algorithm")
            .unwrap_or("none")
            .to_string();
        by.entry(version).or_default().push(m);
    }
    by
}

/// The value of a metric line that starts with `prefix`, 0 without one.
fn metric(router: &Router, prefix: &str) -> u64 {
    router
        .metrics()
        .lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

fn rollout(router: &Router, flow: &str) -> Value {
    router.flow(flow)["rollout"].clone()
}

/// Waits until the restarted flow runs its new canary `version`.
fn wait_for_canary(router: &Router, flow: &str, version: &str) {
    wait_for("the new canary", Duration::from_secs(30), || {
        let r = rollout(router, flow);
        (r["canary_version"] == version && r["state"] == "canary").then_some(())
    });
}

#[test]
fn a_ten_percent_canary_gets_its_share_and_a_redelivered_message_keeps_its_version() {
    let share = flow("share", "canary = { version = \"0.2.0\", percent = 10 }");
    // Flaky fails the first two attempts of every message: each message is
    // delivered three times, and each delivery must go to the same version.
    let redo = flow(
        "redo",
        "max_receives = 5\ncanary = { version = \"0.2.0\", percent = 30 }\n[flows.retry]\nbackoff = \"fixed\"\nbase_ms = 10\njitter = false",
    );
    let router = start(
        &format!("{share}{redo}"),
        &[
            ("share", "0.1.0", "examples", "echo"),
            ("share", "0.2.0", "examples", "echo"),
            ("redo", "0.1.0", "test", "flaky"),
            ("redo", "0.2.0", "test", "flaky"),
        ],
    );

    let total = 5_000;
    router.publish(
        "share-in",
        &(0..total).map(|i| format!("m{i:05}")).collect::<Vec<_>>(),
    );
    router.publish(
        "redo-in",
        &(0..300).map(|i| format!("r{i:03}")).collect::<Vec<_>>(),
    );
    let by = wait_for("5,000 outputs", Duration::from_secs(300), || {
        let by = outputs_by_version(&router, "share-out");
        (by.values().map(Vec::len).sum::<usize>() >= total).then_some(by)
    });
    let canary = by.get("test/share@0.2.0").map_or(0, Vec::len);
    let serving = by.get("test/share@0.1.0").map_or(0, Vec::len);
    assert_eq!(canary + serving, total, "{:?}", by.keys());
    let percent = canary as f64 * 100.0 / total as f64;
    assert!(
        (7.0..=13.0).contains(&percent),
        "the canary got {percent:.1}%"
    );
    let report = rollout(&router, "share");
    assert_eq!(report["state"], "canary", "{report}");
    assert_eq!(report["canary"]["messages"], canary as u64, "{report}");

    let by = wait_for(
        "300 outputs of the retried flow",
        Duration::from_secs(300),
        || {
            let by = outputs_by_version(&router, "redo-out");
            (by.values().map(Vec::len).sum::<usize>() >= 300).then_some(by)
        },
    );
    for version in ["0.1.0", "0.2.0"] {
        let outputs = by.get(&format!("test/redo@{version}")).map_or(0, Vec::len) as u64;
        assert!(outputs > 0, "no output of {version}: {:?}", by.keys());
        // Every message took its three deliveries on one version.
        let received = metric(
            &router,
            &format!(
                "eventflow_messages_received_total{{flow=\"redo\",algorithm=\"test/redo@{version}\"}}"
            ),
        );
        assert_eq!(received, 3 * outputs, "deliveries of {version}");
    }
}

#[test]
fn a_canary_failing_half_its_messages_is_rolled_back_within_its_window() {
    // The canary (chaos) rejects the REJECT messages, which the serving
    // version (echo) passes.
    let config = flow(
        "roll",
        "canary = { version = \"0.2.0\", percent = 50, max_failure_rate = 0.2, window_messages = 40 }",
    );
    let router = start(
        &config,
        &[
            ("roll", "0.1.0", "examples", "echo"),
            ("roll", "0.2.0", "test", "chaos"),
        ],
    );

    let total = 1_000;
    let payloads: Vec<String> = (0..total)
        .map(|i| {
            if i % 2 == 0 {
                format!("REJECT-{i}")
            } else {
                format!("ok-{i}")
            }
        })
        .collect();
    router.publish("roll-in", &payloads);
    let report = wait_for("the rollback", Duration::from_secs(120), || {
        let r = rollout(&router, "roll");
        (r["state"] == "rolled_back").then_some(r)
    });
    assert_eq!(report["percent"], 0.0, "{report}");
    let why = report["decided"][1].as_str().unwrap();
    assert!(why.contains("max_failure_rate"), "{why}");
    // Judged at 40 canary messages; what was in flight then (64 on the
    // embedded broker, half of it the canary's) still finishes.
    let canary_messages = report["canary"]["messages"].as_u64().unwrap();
    assert!((40..=40 + 64).contains(&canary_messages), "{report}");

    // Every message settles; the rest are the serving version's.
    let settled = wait_for("every message settled", Duration::from_secs(120), || {
        let outputs = router.peek("local", "roll-out");
        let dead = router.peek("local", "roll-dlq");
        (outputs.len() + dead.len() == total).then_some((outputs, dead))
    });
    let canary_outputs = settled
        .0
        .iter()
        .filter(|m| header(m, "eventflow-algorithm") == Some("test/roll@0.2.0"))
        .count() as u64;
    // Counted as each attempt ends, before its output or dead letter is
    // written: once all are written, the count is final (the report taken at
    // the rollback may miss the in-flight ones still finishing).
    let after = rollout(&router, "roll");
    let final_count = after["canary"]["messages"].as_u64().unwrap();
    assert!(final_count <= 40 + 64, "{after}");
    assert_eq!(
        canary_outputs + settled.1.len() as u64,
        final_count,
        "only the canary's messages fail, and no canary message after the rollback"
    );

    // Saved: the flow has no canary, runs its version, and still shows the
    // rollback; logged and counted.
    wait_for("the saved rollback", Duration::from_secs(30), || {
        let (_, detail) = router.http("GET", "/v1/flows/roll", None);
        detail["canary"].is_null().then_some(())
    });
    let (_, detail) = router.http("GET", "/v1/flows/roll", None);
    assert_eq!(detail["version"], "0.1.0", "{detail}");
    assert_eq!(
        detail["status"]["rollout"]["state"], "rolled_back",
        "{detail}"
    );
    assert!(router.log().contains("Canary rolled back"));
    assert_eq!(
        metric(
            &router,
            "eventflow_rollout_decisions_total{flow=\"roll\",version=\"0.2.0\",decision=\"rolled_back\"}"
        ),
        1
    );
    let status = router.cli_ok(&["status"]);
    assert!(
        status.contains("canary 0.2.0 rolled_back at 0.0%"),
        "{status}"
    );
    assert!(status.contains("max_failure_rate"), "{status}");
}

#[test]
fn a_healthy_canary_is_promoted_after_its_messages_and_operators_decide_by_hand() {
    let config = flow(
        "promo",
        "canary = { version = \"0.2.0\", percent = 50, max_failure_rate = 0.1, window_messages = 20, promote_after = 50 }",
    );
    let router = start(
        &config,
        &[
            ("promo", "0.1.0", "examples", "echo"),
            ("promo", "0.2.0", "examples", "echo"),
        ],
    );

    router.publish(
        "promo-in",
        &(0..400).map(|i| format!("p{i}")).collect::<Vec<_>>(),
    );
    wait_for("the saved promotion", Duration::from_secs(120), || {
        let (_, detail) = router.http("GET", "/v1/flows/promo", None);
        (detail["version"] == "0.2.0" && detail["canary"].is_null()).then_some(())
    });
    let report = rollout(&router, "promo");
    assert_eq!(report["state"], "promoted", "{report}");
    let messages = report["canary"]["messages"].as_u64().unwrap();
    assert!(messages >= 50, "{report}");
    wait_for("400 outputs", Duration::from_secs(120), || {
        (router.peek("local", "promo-out").len() >= 400).then_some(())
    });
    router.publish(
        "promo-in",
        &(0..50).map(|i| format!("after{i}")).collect::<Vec<_>>(),
    );
    let after = wait_for(
        "the outputs after the promotion",
        Duration::from_secs(60),
        || {
            let after: Vec<Value> = router
                .peek("local", "promo-out")
                .into_iter()
                .filter(|m| {
                    m["payload"]
                        .as_str()
                        .is_some_and(|p| p.starts_with("after"))
                })
                .collect();
            (after.len() >= 50).then_some(after)
        },
    );
    assert!(
        after
            .iter()
            .all(|m| header(m, "eventflow-algorithm") == Some("test/promo@0.2.0"))
    );

    // By hand: a canary of 0.1.0 on the promoted flow, rolled back; another,
    // promoted.
    let out = router.cli(&["flows", "promote", "promo"]);
    assert!(!out.status.success(), "no canary to promote");
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no canary"));
    router.cli_ok(&[
        "flows",
        "canary",
        "promo",
        "--version",
        "0.1.0",
        "--percent",
        "20",
    ]);
    wait_for_canary(&router, "promo", "0.1.0");
    let rolled = router.cli_ok(&["flows", "rollback", "promo"]);
    assert!(rolled.contains("it runs test/promo/0.2.0"), "{rolled}");
    let report = rollout(&router, "promo");
    assert_eq!(report["canary_version"], "0.1.0", "{report}");
    assert_eq!(report["state"], "rolled_back", "{report}");
    assert_eq!(
        report["decided"][1], "rolled back by an operator",
        "{report}"
    );
    router.cli_ok(&[
        "flows",
        "canary",
        "promo",
        "--version",
        "0.1.0",
        "--percent",
        "20",
    ]);
    wait_for_canary(&router, "promo", "0.1.0");
    let (status, body) = router.http("POST", "/v1/flows/promo/promote", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["algorithm"], "test/promo/0.1.0", "{body}");
    assert_eq!(body["state"], "promoted", "{body}");
    let (_, detail) = router.http("GET", "/v1/flows/promo", None);
    assert_eq!(detail["version"], "0.1.0", "{detail}");
    assert_eq!(
        metric(
            &router,
            "eventflow_rollout_decisions_total{flow=\"promo\",version=\"0.1.0\",decision=\"promoted\"}"
        ),
        1
    );
}

/// The shadow report of a flow's status, `Null` without one.
fn shadow(router: &Router, flow: &str) -> Value {
    router.flow(flow)["shadow"].clone()
}

/// Waits until `flow` produced `outputs` outputs (and nothing else), every
/// message settled, and its shadow accounted for each of the `total`
/// messages (run or skipped); returns the shadow report.
fn wait_for_shadowed(router: &Router, flow: &str, outputs: usize, total: u64) -> Value {
    wait_for(
        &format!("every message of {flow} settled and shadowed"),
        Duration::from_secs(180),
        || {
            let status = router.flow(flow);
            let s = &status["shadow"];
            let accounted = s["runs"].as_u64()? + s["skipped"].as_u64()?;
            (router.peek("local", &format!("{flow}-out")).len() == outputs
                && status["succeeded"] == total
                && status["in_flight"] == 0
                && accounted == total)
                .then(|| s.clone())
        },
    )
}

#[test]
fn a_shadow_failing_every_message_changes_nothing_on_the_serving_path_and_its_effects_never_land() {
    // quiet: the shadow rejects everything. forge: the shadow publishes to
    // the flow's output topic. store: the shadow (owner ezra, so the data
    // collection is its own) writes a data file.
    let quiet = flow("quiet", "shadow = { version = \"0.2.0\", concurrency = 8 }");
    let forge = flow("forge", "shadow = { version = \"0.2.0\", concurrency = 8 }");
    let store = flow("store", "shadow = { version = \"0.2.0\", concurrency = 8 }")
        .replace("test/store", "ezra/store");
    let mut router = Router::configure(
        &format!("{EMBEDDED_BROKER}{quiet}{forge}{store}"),
        Plugins::Copy(&[]),
    );
    router.deploy("quiet", "0.1.0", "examples", "echo");
    router.deploy("quiet", "0.2.0", "test", "always_reject");
    router.deploy("forge", "0.1.0", "examples", "echo");
    router.deploy("forge", "0.2.0", "mallory", "forger");
    for (version, owner, name) in [
        ("0.1.0", "examples", "echo"),
        ("0.2.0", "ezra", "store_file"),
    ] {
        let bytes = std::fs::read(support::plugin_file(owner, name)).unwrap();
        let dir = router.plugins_dir().join("ezra").join("store");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("{version}.wasm")),
            variant(&bytes, version),
        )
        .unwrap();
    }
    router.launch();

    let total = 200;
    let quiet_in: Vec<String> = (0..total).map(|i| format!("q{i}")).collect();
    router.publish("quiet-in", &quiet_in);
    router.publish(
        "forge-in",
        &(0..total)
            .map(|i| format!("FORGE forge-out\nforged-{i}"))
            .collect::<Vec<_>>(),
    );
    router.publish(
        "store-in",
        &(0..total)
            .map(|i| format!(r#"{{"filename": "shadow-{i}.txt", "data": "x"}}"#))
            .collect::<Vec<_>>(),
    );

    let report = wait_for_shadowed(&router, "quiet", total, total as u64);
    // The serving path: every message acknowledged once, with the serving
    // version's output, nothing dead-lettered or retried.
    let outputs = router.peek("local", "quiet-out");
    let mut payloads: Vec<&str> = outputs
        .iter()
        .map(|m| m["payload"].as_str().unwrap())
        .collect();
    payloads.sort_unstable();
    let mut expected: Vec<&str> = quiet_in.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(payloads, expected);
    assert!(
        outputs
            .iter()
            .all(|m| header(m, "eventflow-algorithm") == Some("test/quiet@0.1.0"))
    );
    assert!(router.peek("local", "quiet-dlq").is_empty());
    let status = router.flow("quiet");
    assert_eq!(status["retried"], 0, "{status}");
    assert_eq!(status["dead_lettered"], 0, "{status}");
    // The shadow's side: every run failed, and is counted.
    let runs = report["runs"].as_u64().unwrap();
    assert!(runs > 0, "{report}");
    assert_eq!(report["failures"], runs, "{report}");
    assert_eq!(report["compared"], runs, "{report}");
    assert_eq!(report["agreed"], 0, "{report}");
    let by_reason: u64 = report["failure_reasons"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(by_reason, runs, "{report}");
    assert_eq!(report["state"], "running", "{report}");
    let counted: u64 = router
        .metrics()
        .lines()
        .filter(|l| l.starts_with("eventflow_shadow_runs_total{flow=\"quiet\",version=\"0.2.0\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum();
    assert_eq!(counted, runs);
    assert_eq!(
        metric(
            &router,
            "eventflow_shadow_skipped_total{flow=\"quiet\",version=\"0.2.0\"}"
        ),
        report["skipped"].as_u64().unwrap()
    );
    let status = router.cli_ok(&["status", "quiet"]);
    assert!(status.contains("shadow 0.2.0 running"), "{status}");

    // The shadow's publishes are dropped: the output topic holds the
    // serving version's outputs only.
    let report = wait_for_shadowed(&router, "forge", total, total as u64);
    assert!(report["runs"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(
        report["failures"], 0,
        "the publishes were accepted: {report}"
    );
    assert!(
        router
            .peek("local", "forge-out")
            .iter()
            .all(|m| header(m, "eventflow-algorithm") == Some("test/forge@0.1.0"))
    );

    // The shadow's data writes succeed for it and land nowhere.
    let report = wait_for_shadowed(&router, "store", total, total as u64);
    assert!(report["runs"].as_u64().unwrap() > 0, "{report}");
    assert_eq!(report["failures"], 0, "the writes were accepted: {report}");
    assert_eq!(
        router.data_files("ezra/TestingEventFlow"),
        Vec::<String>::new()
    );
}

#[test]
fn a_shadow_disagreeing_on_thirty_percent_shows_seventy_percent_agreement_and_its_gate_stops_it() {
    // The shadow (chaos) rejects the REJECT messages, which the serving
    // version (echo) passes: it agrees on the other 70 %.
    let agree = flow(
        "agree",
        "shadow = { version = \"0.2.0\", concurrency = 16 }",
    );
    let gated = flow(
        "gated",
        "shadow = { version = \"0.2.0\", min_output_agreement = 0.9, window_messages = 50, concurrency = 16 }",
    );
    let mut router = Router::configure(
        &format!("{EMBEDDED_BROKER}{agree}{gated}"),
        Plugins::Copy(&[]),
    );
    for alg in ["agree", "gated"] {
        router.deploy(alg, "0.1.0", "examples", "echo");
        router.deploy(alg, "0.2.0", "test", "chaos");
    }
    router.launch();

    let total = 1_000;
    let payloads: Vec<String> = (0..total)
        .map(|i| {
            if i % 10 < 3 {
                format!("REJECT-{i}")
            } else {
                format!("ok-{i}")
            }
        })
        .collect();
    router.publish("agree-in", &payloads);
    router.publish("gated-in", &payloads);

    let report = wait_for_shadowed(&router, "agree", total, total as u64);
    let runs = report["runs"].as_u64().unwrap();
    assert!(runs >= 200, "too few runs to measure: {report}");
    assert_eq!(report["compared"], runs, "{report}");
    let agreement = report["agreement"].as_f64().unwrap();
    assert!((0.6..=0.8).contains(&agreement), "{report}");
    assert_eq!(
        report["agreed"].as_u64().unwrap() + report["failures"].as_u64().unwrap(),
        runs,
        "every disagreement is a rejected REJECT message: {report}"
    );
    assert_eq!(report["state"], "running", "{report}");
    // The declaration and the status in GET /v1/flows/{flow}.
    let (_, detail) = router.http("GET", "/v1/flows/agree", None);
    assert_eq!(detail["shadow"]["version"], "0.2.0", "{detail}");
    assert_eq!(detail["status"]["shadow"]["runs"], runs, "{detail}");
    let status = router.cli_ok(&["status", "agree"]);
    assert!(status.contains("agreement"), "{status}");

    // Below min_output_agreement over its window: stopped, logged, counted,
    // shown; the serving path still handles every message.
    let report = wait_for("the shadow stopped", Duration::from_secs(120), || {
        let s = shadow(&router, "gated");
        (s["state"] == "stopped").then_some(s)
    });
    let why = report["stopped"][1].as_str().unwrap();
    assert!(why.contains("min_output_agreement"), "{why}");
    wait_for(
        "every gated message settled",
        Duration::from_secs(120),
        || {
            let status = router.flow("gated");
            (router.peek("local", "gated-out").len() == total && status["in_flight"] == 0)
                .then_some(())
        },
    );
    assert!(router.log().contains("Shadow stopped"));
    assert_eq!(
        metric(
            &router,
            "eventflow_shadow_stopped_total{flow=\"gated\",version=\"0.2.0\"}"
        ),
        1
    );

    // By hand: off, then on again (through the API).
    let off = router.cli_ok(&["flows", "shadow", "agree", "--off"]);
    assert!(off.contains("no shadow"), "{off}");
    wait_for("the shadow removed", Duration::from_secs(30), || {
        let (_, detail) = router.http("GET", "/v1/flows/agree", None);
        (detail["shadow"].is_null() && detail["status"]["shadow"].is_null()).then_some(())
    });
    let (code, body) = router.http(
        "PATCH",
        "/v1/flows/agree",
        Some(serde_json::json!({ "shadow": { "version": "0.2.0" } })),
    );
    assert_eq!(code, 200, "{body}");
    wait_for("the shadow back", Duration::from_secs(30), || {
        (shadow(&router, "agree")["runs"] == 0).then_some(())
    });
}

/// Waits until `topic` has at least `n` outputs (a redelivery may add a
/// copy); returns how many it has.
fn outputs_at_least(router: &Router, topic: &str, n: usize) -> usize {
    wait_for(
        &format!("{n} outputs on {topic}"),
        Duration::from_secs(120),
        || {
            let len = router.peek("local", topic).len();
            (len >= n).then_some(len)
        },
    )
}

/// Publishes probes to `<flow>-in` until the flow's rollout makes a canary
/// of the newly dropped-in `version`; returns how many were published.
fn wait_for_rollout_canary(router: &Router, flow: &str, version: &str) -> usize {
    let mut sent = 0;
    wait_for("the new version's canary", Duration::from_secs(60), || {
        router.publish(
            &format!("{flow}-in"),
            &(0..10)
                .map(|i| format!("probe-{sent}-{i}"))
                .collect::<Vec<_>>(),
        );
        sent += 10;
        std::thread::sleep(Duration::from_millis(200));
        (rollout(router, flow)["canary_version"] == version).then_some(())
    });
    sent
}

#[test]
fn a_broken_version_dropped_into_a_rolled_out_flow_never_gets_more_than_its_share() {
    let latest = |name: &str, policy: &str| {
        flow(name, &format!("rollout = \"{policy}\""))
            .replace(&format!("test/{name}/0.1.0"), &format!("test/{name}"))
    };
    let config = format!(
        "{EMBEDDED_BROKER}{}{}",
        latest("drop", "canary 10% then promote after 1000"),
        latest("good", "canary 50% then promote after 100"),
    );
    let mut router = Router::configure(&config, Plugins::Copy(&[]));
    router.deploy("drop", "0.1.0", "examples", "echo");
    router.deploy("good", "0.1.0", "examples", "echo");
    router.launch();
    router.publish("drop-in", &["first".to_string()]);
    wait_for("the first output", Duration::from_secs(60), || {
        (router.peek("local", "drop-out").len() == 1).then_some(())
    });
    assert!(rollout(&router, "drop").is_null(), "no new version yet");

    // A broken version dropped in: a canary at 10 %, rolled back once its
    // window of 100 attempts fails; the old version serves the rest.
    router.deploy("drop", "0.2.0", "test", "always_reject");
    let probes = wait_for_rollout_canary(&router, "drop", "0.2.0");
    let total = 1 + probes + 2_000;
    router.publish(
        "drop-in",
        &(0..2_000).map(|i| format!("d{i}")).collect::<Vec<_>>(),
    );
    let (outputs, dead) = wait_for("every message settled", Duration::from_secs(300), || {
        let outputs = router.peek("local", "drop-out");
        let dead = router.peek("local", "drop-dlq");
        (outputs.len() + dead.len() == total).then_some((outputs, dead))
    });
    let report = rollout(&router, "drop");
    assert_eq!(report["state"], "rolled_back", "{report}");
    assert_eq!(report["percent"], 0.0, "{report}");
    assert!(
        report["decided"][1]
            .as_str()
            .unwrap()
            .contains("max_failure_rate"),
        "{report}"
    );
    assert_eq!(report["canary"]["messages"], dead.len() as u64, "{report}");
    assert!(
        outputs
            .iter()
            .all(|m| header(m, "eventflow-algorithm") == Some("test/drop@0.1.0"))
    );
    let share = dead.len() as f64 / total as f64;
    assert!(
        dead.len() >= 100 && share <= 0.13,
        "{} of {total} messages went to the broken version",
        dead.len()
    );
    assert!(router.log().contains("Rollout rolled the new version back"));
    // After the rollback every message goes to the old version.
    router.publish(
        "drop-in",
        &(0..100).map(|i| format!("after{i}")).collect::<Vec<_>>(),
    );
    wait_for(
        "the outputs after the rollback",
        Duration::from_secs(60),
        || (router.peek("local", "drop-out").len() == outputs.len() + 100).then_some(()),
    );
    assert_eq!(router.peek("local", "drop-dlq").len(), dead.len());

    // A healthy version: promoted after 100 of its messages, then it serves
    // every message.
    router.deploy("good", "0.2.0", "examples", "echo");
    let probes = wait_for_rollout_canary(&router, "good", "0.2.0");
    router.publish(
        "good-in",
        &(0..400).map(|i| format!("g{i}")).collect::<Vec<_>>(),
    );
    let report = wait_for("the promotion", Duration::from_secs(120), || {
        let r = rollout(&router, "good");
        (r["state"] == "promoted").then_some(r)
    });
    assert!(
        report["canary"]["messages"].as_u64().unwrap() >= 100,
        "{report}"
    );
    // Every earlier message's output first (a status with nothing in
    // flight can come between two receives, with messages still queued).
    let before = outputs_at_least(&router, "good-out", probes + 400);
    router.publish(
        "good-in",
        &(0..50).map(|i| format!("late{i}")).collect::<Vec<_>>(),
    );
    outputs_at_least(&router, "good-out", before + 50);
    let late = router.peek("local", "good-out")[before..].to_vec();
    assert!(
        late.iter()
            .all(|m| header(m, "eventflow-algorithm") == Some("test/good@0.2.0"))
    );
}

/// `eventflow flows promote|rollback FLOW` decide a `rollout`'s canary too:
/// a promoted version serves every message (the flow still follows the
/// latest), a rolled-back one joins the flow's `skip_versions`.
#[test]
fn an_operator_promotes_or_rolls_back_the_canary_of_a_rollout() {
    let config = flow("hand", "rollout = \"canary 50% then promote after 100000\"")
        .replace("test/hand/0.1.0", "test/hand");
    let router = start(&config, &[("hand", "0.1.0", "examples", "echo")]);
    router.publish("hand-in", &["first".to_string()]);
    wait_for("the first output", Duration::from_secs(60), || {
        (router.peek("local", "hand-out").len() == 1).then_some(())
    });
    let out = router.cli(&["flows", "promote", "hand"]);
    assert!(!out.status.success(), "no canary yet");

    router.deploy("hand", "0.2.0", "examples", "echo");
    let sent = 1 + wait_for_rollout_canary(&router, "hand", "0.2.0");
    let promoted = router.cli_ok(&["flows", "promote", "hand"]);
    assert!(promoted.contains("promoted"), "{promoted}");
    let report = rollout(&router, "hand");
    assert_eq!(
        (&report["canary_version"], &report["state"]),
        (&json!("0.2.0"), &json!("promoted")),
        "{report}"
    );
    let (after, sent) = fifty_more(&router, "hand", sent, "p");
    assert!(
        after
            .iter()
            .all(|m| header(m, "eventflow-algorithm") == Some("test/hand@0.2.0")),
        "the promoted version serves every message"
    );

    router.deploy("hand", "0.3.0", "examples", "echo");
    let sent = sent + wait_for_rollout_canary(&router, "hand", "0.3.0");
    let (status, body) = router.http("POST", "/v1/flows/hand/rollback", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "rolled_back", "{body}");
    wait_for("the rollback saved", Duration::from_secs(60), || {
        let (_, detail) = router.http("GET", "/v1/flows/hand", None);
        (detail["skip_versions"] == json!(["0.3.0"])).then_some(())
    });
    let (after, _) = fifty_more(&router, "hand", sent, "r");
    assert!(
        after
            .iter()
            .all(|m| header(m, "eventflow-algorithm") == Some("test/hand@0.2.0")),
        "the version promoted before serves every message"
    );

    // Removing the rollout also clears what it skipped (the list needs a
    // rollout).
    router.cli_ok(&["flows", "edit", "hand", "--no-rollout"]);
    let (_, detail) = router.http("GET", "/v1/flows/hand", None);
    assert!(
        detail.get("rollout").is_none() && detail.get("skip_versions").is_none(),
        "{detail}"
    );
}

/// Once the `sent` messages published to `<flow>-in` have their outputs,
/// publishes 50 more (`<prefix><i>`) and returns their outputs and the new
/// count.
fn fifty_more(router: &Router, flow: &str, sent: usize, prefix: &str) -> (Vec<Value>, usize) {
    let topic = format!("{flow}-out");
    let before = outputs_at_least(router, &topic, sent);
    router.publish(
        &format!("{flow}-in"),
        &(0..50).map(|i| format!("{prefix}{i}")).collect::<Vec<_>>(),
    );
    outputs_at_least(router, &topic, before + 50);
    (router.peek("local", &topic)[before..].to_vec(), before + 50)
}

/// A rollout is set and removed through the API and the CLI like any
/// field of a flow.
#[test]
fn a_rollout_is_set_by_patch_and_removed_by_the_cli() {
    let config = flow("later", "").replace("test/later/0.1.0", "test/later");
    let router = start(&config, &[("later", "0.1.0", "examples", "echo")]);
    let (status, body) = router.http(
        "PATCH",
        "/v1/flows/later",
        Some(json!({"rollout": "canary 20 percent"})),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("rollout"), "{body}");
    let (status, body) = router.http(
        "PATCH",
        "/v1/flows/later",
        Some(json!({"rollout": "canary 50% then promote after 100000"})),
    );
    assert_eq!(status, 200, "{body}");
    let (_, detail) = router.http("GET", "/v1/flows/later", None);
    assert_eq!(
        detail["rollout"], "canary 50% then promote after 100000",
        "{detail}"
    );
    router.publish("later-in", &["first".to_string()]);
    let sent = 1 + {
        outputs_at_least(&router, "later-out", 1);
        router.deploy("later", "0.2.0", "examples", "echo");
        wait_for_rollout_canary(&router, "later", "0.2.0")
    };

    router.cli_ok(&["flows", "edit", "later", "--no-rollout"]);
    let (_, detail) = router.http("GET", "/v1/flows/later", None);
    assert!(detail.get("rollout").is_none(), "{detail}");
    let (after, _) = fifty_more(&router, "later", sent, "n");
    assert!(
        after
            .iter()
            .all(|m| header(m, "eventflow-algorithm") == Some("test/later@0.2.0")),
        "without its rollout the flow runs the latest for every message"
    );
}
