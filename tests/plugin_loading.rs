//! How the router loads its plugins: in the background, so flows whose
//! algorithms are loaded run while others still compile, and with a check
//! of each version's initial memory against the memory limit of the flows
//! that run it.

mod support;

use std::time::Duration;

use serde_json::json;
use support::{Plugins, Router, wait_for};

const TIGHT: &str = r#"
[[brokers]]
name = "local"
kind = "embedded"

[[topics]]
name = "in"
consumers = ["examples/echo"]

[[topics]]
name = "out"
publishers = ["examples/echo"]

[[topics]]
name = "dlq"

[[flows]]
name = "tight"
topic = "in"
algorithm = "examples/echo/0.1.0"
output_topic = "out"
dead_letter_topic = "dlq"
max_receives = 1

[flows.limits]
max_memory_mib = 1
"#;

#[test]
fn a_memory_limit_below_the_initial_memory_is_refused_at_load_and_messages_wait() {
    // A Rust component starts with a 1 MiB stack plus its data, so more
    // than 1 MiB of memory: every instance would fail before running.
    let router = Router::start_with(TIGHT, Plugins::Copy(&[("examples", "echo")]));
    let echo = router.plugin("examples/echo/0.1.0");
    let needs = echo["initial_memory_mib"].as_u64().unwrap();
    assert!(needs >= 2, "{echo}");
    let sentence = format!(
        "examples/echo/0.1.0 needs {needs} MiB initial memory, flow \"tight\" allows 1 MiB"
    );
    assert_eq!(echo["status"], "ok", "{echo}");
    let shortfalls = echo["memory_shortfalls"].as_array().unwrap();
    assert!(
        shortfalls.len() == 1 && shortfalls[0].as_str().unwrap().starts_with(&sentence),
        "{echo}"
    );
    let listed = router.cli_ok(&["plugins", "list"]);
    assert!(listed.contains(&format!("not run: {sentence}")), "{listed}");

    // The flow does not invoke it: its status says why, and a message
    // stays in the broker instead of failing (max_receives is 1).
    router.publish("in", &["kept".into()]);
    let flow = wait_for("the flow to wait", Duration::from_secs(30), || {
        let f = router.flow("tight");
        (f["state"] == "waiting_for_plugin").then_some(f)
    });
    assert!(
        flow["waiting_for"].as_str().unwrap().starts_with(&sentence),
        "{flow}"
    );
    let status = router.cli_ok(&["status"]);
    assert!(status.contains(&sentence), "{status}");
    wait_for("the log line", Duration::from_secs(30), || {
        router
            .log()
            .contains("The flow's memory limit is below what the algorithm needs to start")
            .then_some(())
    });
    assert_eq!(router.flow("tight")["received"], 0);

    // Raising the version's limit, live, lets the waiting message through.
    let file = router.dir.path().join("raised.toml");
    std::fs::write(
        &file,
        format!(
            "{TIGHT}\n[[algorithm_limits]]\nalgorithm = \"examples/echo/0.1.0\"\nmax_memory_mib = {needs}\n"
        ),
    )
    .unwrap();
    router.cli_ok(&["apply", "-f", file.to_str().unwrap()]);
    let out = wait_for("the output", Duration::from_secs(30), || {
        router.peek("local", "out").into_iter().next()
    });
    assert_eq!(out["payload"], "kept");
    assert!(router.dead_letters("tight").is_empty());
    assert!(
        router.plugin("examples/echo/0.1.0")["memory_shortfalls"]
            .as_array()
            .unwrap()
            .is_empty()
    );
}

#[test]
fn flows_run_while_a_big_plugin_is_still_compiling() {
    let mut router = Router::configure(
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

[[topics]]
name = "incoming-python"
consumers = ["ezra/store_file_py"]

[[flows]]
name = "rust"
topic = "in"
algorithm = "examples/echo/0.1.0"
output_topic = "out"

[[flows]]
name = "python"
topic = "incoming-python"
algorithm = "ezra/store_file_py/0.1.0"
"#,
        Plugins::Guest(&[("ezra", "store_file_py")]),
    );
    let echo = std::fs::read(support::plugin_file("examples", "echo")).unwrap();
    router.install("examples/echo", "0.1.0", &echo);
    // No compiled code is shared with this router: the Python component
    // (18 MB) compiles from scratch, which takes a minute in a debug build,
    // the Rust one well under a second.
    router.launch_without_waiting();
    let python = "ezra/store_file_py/0.1.0";
    assert_eq!(router.plugin(python)["status"], "compiling");
    router.publish("in", &["while python compiles".into()]);
    router.publish(
        "incoming-python",
        &[json!({"filename": "late.txt", "data": "after compiling"}).to_string()],
    );

    // The Rust flow serves its message, and the Python flow, started beside
    // it, waits (it says so at a moment of its own)...
    let (out, flow) = wait_for("the Rust flow's output", Duration::from_secs(60), || {
        let flow = router.flow("python");
        let out = router.peek("local", "out").into_iter().next()?;
        (flow["state"] == "waiting_for_plugin").then_some((out, flow))
    });
    assert_eq!(out["payload"], "while python compiles");
    // ...while the Python version is still compiling.
    assert_eq!(router.plugin(python)["status"], "compiling");
    assert_eq!(
        flow["waiting_for"], "version 0.1.0 of ezra/store_file_py is compiling",
        "{flow}"
    );
    let listed = router.cli_ok(&["plugins", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(python) && l.contains("compiling")),
        "{listed}"
    );

    // Once compiled, it loads and its flow takes the waiting message.
    wait_for(
        "the Python version to load",
        Duration::from_secs(600),
        || (router.plugin(python)["status"] == "ok").then_some(()),
    );
    let stored = wait_for("the stored file", Duration::from_secs(60), || {
        router.data_file("ezra/TestingEventFlow/late.txt")
    });
    assert_eq!(stored, b"after compiling");
    assert!(router.flow("python")["waiting_for"].is_null());
}
