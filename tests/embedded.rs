//! The spine on the embedded broker, end to end with the real binary and
//! real compiled algorithms: durability across restarts and `kill -9`
//! (exactly one output per input), data-URI confinement, the concurrency
//! bound and clear errors. What every broker does (the demo flow, `kill -9`
//! mid-stream, a graceful drain, ...) is in tests/conformance.rs.

mod support;

use std::time::Duration;

use support::{Router, wait_for};

/// The quickstart's flow, with a dead-letter topic.
const STORE_FILE: &str = r#"
[[brokers]]
name = "local"
kind = "embedded"

[[topics]]
name = "incoming"
consumers = ["ezra/store_file"]

[[topics]]
name = "dlq"
publishers = ["ezra/store_file"]

[[flows]]
name = "store-files"
topic = "incoming"
algorithm = "ezra/store_file/0.1.0"
dead_letter_topic = "dlq"
max_receives = 2
concurrency = 4
"#;

fn store_file_config(enabled: bool) -> String {
    format!("{STORE_FILE}enabled = {enabled}\n")
}

fn demo_message(name: &str) -> String {
    format!(r#"{{"filename": "{name}", "data": "contents of {name}"}}"#)
}

#[test]
fn messages_published_before_a_kill_9_are_delivered_after_restart() {
    // The flow is off: messages wait, unacknowledged, in the store.
    let mut router = Router::start(&store_file_config(false));
    let names: Vec<String> = (0..200).map(|i| format!("f{i:03}.txt")).collect();
    let payloads: Vec<String> = names.iter().map(|n| demo_message(n)).collect();
    router.publish("incoming", &payloads);
    router.kill9();

    router.rewrite(&store_file_config(true));
    router.launch();
    wait_for("all 200 files", Duration::from_secs(60), || {
        (router.data_files("ezra/TestingEventFlow").len() == 200).then_some(())
    });
    assert_eq!(router.data_files("ezra/TestingEventFlow"), names);
}

/// The identity from `incoming` to `out`: every output is written in the
/// same transaction as its input's acknowledgement, so a `kill -9` at any
/// moment leaves exactly one output per input once the rest is drained.
#[test]
fn a_kill_9_mid_stream_duplicates_no_output_of_an_acknowledged_message() {
    let config = r#"
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
name = "identity"
topic = "incoming"
algorithm = "examples/echo"
output_topic = "out"
concurrency = 8
"#;
    const N: usize = 6000;
    let mut router = Router::start(config);
    let payloads: Vec<String> = (0..N).map(|i| format!("m{i:05}")).collect();
    router.publish("incoming", &payloads);
    wait_for("some outputs", Duration::from_secs(60), || {
        (router.peek("local", "out").len() >= 200).then_some(())
    });
    router.kill9();
    router.launch();
    let outputs = wait_for("every input drained", Duration::from_secs(180), || {
        let flow = router.flow("identity");
        let drained =
            router.peek("local", "incoming").is_empty() && flow["in_flight"].as_i64() == Some(0);
        drained.then(|| router.peek("local", "out"))
    });
    let log = router.log();
    let after_restart = log
        .split("===== start 2 =====")
        .nth(1)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("Message processed."))
        .count();
    assert!(
        after_restart > 0,
        "every input was done before the kill; the test proves nothing"
    );
    let mut seen = std::collections::BTreeMap::<String, usize>::new();
    for m in &outputs {
        *seen
            .entry(m["payload"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    let duplicated: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "{} inputs have more than one output (of {} outputs), e.g. {:?}",
        duplicated.len(),
        outputs.len(),
        &duplicated[..duplicated.len().min(5)]
    );
    let expected: std::collections::BTreeSet<String> = payloads.into_iter().collect();
    let got: std::collections::BTreeSet<String> = seen.into_keys().collect();
    assert_eq!(got.len(), N, "lost {} inputs", N - got.len().min(N));
    assert_eq!(got, expected);
    assert_eq!(outputs.len(), N);
}

#[test]
fn every_traversal_attempt_is_refused_and_nothing_escapes() {
    let router = Router::start(STORE_FILE);
    // A symlink inside the collection that leads out of it.
    let outside = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(router.data_dir().join("ezra/TestingEventFlow")).unwrap();
    std::os::unix::fs::symlink(
        outside.path(),
        router.data_dir().join("ezra/TestingEventFlow/link"),
    )
    .unwrap();
    let attempts = [
        "../../escaped.txt",
        "../escaped.txt",
        "a/../../escaped.txt",
        "/etc/passwd",
        "%2e%2e/%2e%2e/escaped.txt",
        "%2E%2E%2Fescaped.txt",
        "a%00b",
        "a\\u0000b",
        "link/escaped.txt",
        "..\\\\escaped.txt",
    ];
    let payloads: Vec<String> = attempts
        .iter()
        .map(|name| format!(r#"{{"filename": "{name}", "data": "x"}}"#))
        .collect();
    router.publish("incoming", &payloads);
    let letters = wait_for("a dead letter per attempt", Duration::from_secs(60), || {
        let l = router.dead_letters("store-files");
        (l.len() == attempts.len()).then_some(l)
    });
    for letter in &letters {
        assert_eq!(letter["last_failure"]["reason"], "guest_reject", "{letter}");
        let detail = letter["last_failure"]["detail"].as_str().unwrap();
        assert!(detail.contains("InvalidUri"), "{detail}");
    }
    assert!(std::fs::read_dir(outside.path()).unwrap().next().is_none());
    for leaked in [
        router.data_dir().join("escaped.txt"),
        router.data_dir().join("ezra/escaped.txt"),
        router.dir.path().join("escaped.txt"),
    ] {
        assert!(!leaked.exists(), "{} was written", leaked.display());
    }
    assert!(router.is_running_check());
}

/// Parses `data://test/intervals/*` into (start, end) nanoseconds.
fn intervals(router: &Router) -> Vec<(u128, u128)> {
    router
        .data_files("test/intervals")
        .iter()
        .map(|name| {
            let text =
                String::from_utf8(router.data_file(&format!("test/intervals/{name}")).unwrap())
                    .unwrap();
            let (a, b) = text.split_once(' ').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect()
}

/// The most intervals that overlap at any instant.
fn max_overlap(intervals: &[(u128, u128)]) -> usize {
    let mut events: Vec<(u128, i32)> = intervals
        .iter()
        .flat_map(|&(s, e)| [(s, 1), (e, -1)])
        .collect();
    // Ends sort before starts at the same instant.
    events.sort();
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in events {
        now += d;
        max = max.max(now);
    }
    max as usize
}

#[test]
fn the_concurrency_bound_is_honoured() {
    let config = r#"
[[brokers]]
name = "local"
kind = "embedded"

[[topics]]
name = "in"
consumers = ["test/slow"]

[[flows]]
name = "slow"
topic = "in"
algorithm = "test/slow"
concurrency = 3
"#;
    let router = Router::start(config);
    let payloads: Vec<String> = (0..60)
        .map(|i| format!(r#"{{"id": "m{i:02}", "sleep_ms": 50}}"#))
        .collect();
    router.publish("in", &payloads);
    wait_for("60 invocations", Duration::from_secs(60), || {
        (router.data_files("test/intervals").len() == 60).then_some(())
    });
    let overlap = max_overlap(&intervals(&router));
    assert_eq!(overlap, 3, "at most 3, and the bound is reached under load");
}

#[test]
fn user_mistakes_get_one_clear_line_and_a_non_zero_exit() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, STORE_FILE.replace("max_receives", "max_recieves")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_eventflow"))
        .args(["run", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(
        err.contains("bad.toml") && err.contains("flows[0]") && err.contains("max_recieves"),
        "{err}"
    );

    // No router running: the CLI says so.
    let good = dir.path().join("good.toml");
    std::fs::write(&good, STORE_FILE).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_eventflow"))
        .args(["send", "incoming", "--data", "x", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no running router"), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("backtrace"),
        "{err}"
    );

    // A second router on the same state directory is refused.
    let router = Router::start(STORE_FILE);
    let out = router.cli(&["run"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("in use by another eventflow process"), "{err}");
    assert!(router.is_running_check());

    // A data URI that tries to escape is refused by the CLI too.
    let out = router.cli(&[
        "data",
        "get",
        "data://ezra/TestingEventFlow/../../etc/passwd",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid data URI"));
}
