//! The pooling allocator's instance slots are shared by every flow: when
//! the flows' concurrency adds up to more than `[sandbox] max_instances`,
//! invocations wait for a free slot instead of failing, and the wait is
//! neither an attempt nor part of the algorithm's timeout. Real binary,
//! embedded broker, real algorithms.

mod support;

use std::time::Duration;

use support::{Router, wait_for};

const CONFIG: &str = r#"
[sandbox]
max_instances = 4

[[brokers]]
name = "local"
kind = "embedded"

[[topics]]
name = "slow-in"
consumers = ["test/slow"]

[[topics]]
name = "slow-out"
publishers = ["test/slow"]

[[topics]]
name = "slow-dlq"
publishers = ["test/slow"]

[[topics]]
name = "echo-in"
consumers = ["examples/echo"]

[[topics]]
name = "echo-out"
publishers = ["examples/echo"]

[[topics]]
name = "echo-dlq"
publishers = ["examples/echo"]

# One attempt each: any failure, a pool trap included, dead-letters at once.
[[flows]]
name = "slow"
topic = "slow-in"
algorithm = "test/slow"
output_topic = "slow-out"
dead_letter_topic = "slow-dlq"
concurrency = 4
max_receives = 1
# Longer than a run (0.6 s), shorter than a run plus a wait for a slot held
# by another run: the wait must not count.
timeout_secs = 1.0

[[flows]]
name = "echo"
topic = "echo-in"
algorithm = "examples/echo"
output_topic = "echo-out"
dead_letter_topic = "echo-dlq"
concurrency = 4
max_receives = 1
"#;

#[test]
fn pool_exhaustion_waits_for_a_slot_instead_of_failing_innocent_messages() {
    let router = Router::start(CONFIG);
    let slow: Vec<String> = (0..16)
        .map(|i| format!(r#"{{"id": "s{i:02}", "sleep_ms": 600}}"#))
        .collect();
    let echo: Vec<String> = (0..300).map(|i| format!("ping {i}")).collect();
    router.publish("slow-in", &slow);
    router.publish("echo-in", &echo);
    wait_for("every output", Duration::from_secs(120), || {
        let (s, e) = (
            router.peek("local", "slow-out").len(),
            router.peek("local", "echo-out").len(),
        );
        let failed: u64 = ["slow", "echo"]
            .iter()
            .map(|f| {
                let r = router.flow(f);
                r["dead_lettered"].as_u64().unwrap() + r["retried"].as_u64().unwrap()
            })
            .sum();
        assert_eq!(
            failed,
            0,
            "a message failed: slow {} echo {}\n{}",
            router.flow("slow"),
            router.flow("echo"),
            router.log()
        );
        (s == 16 && e == 300).then_some(())
    });
    assert!(router.dead_letters("slow").is_empty());
    assert!(router.dead_letters("echo").is_empty());
    assert!(
        !router.log().contains("concurrent limit"),
        "{}",
        router.log()
    );
    // The flows did compete for the slots.
    let waited: f64 = router
        .metrics()
        .lines()
        .filter(|l| l.starts_with("eventflow_instance_wait_seconds_sum"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(waited > 0.0, "no invocation waited for a slot");
}

#[test]
fn check_and_run_warn_when_the_flows_concurrency_exceeds_the_pool() {
    let router = Router::start(CONFIG);
    let check = router.cli_ok(&["check"]);
    let warning = check
        .lines()
        .find(|l| l.starts_with("warning:"))
        .unwrap_or_else(|| panic!("no warning in:\n{check}"));
    for part in ["slow 4", "echo 4", "adds up to 8", "max_instances is 4"] {
        assert!(warning.contains(part), "{warning}");
    }
    let log = router.log();
    let line = log
        .lines()
        .find(|l| l.contains("max_instances is 4"))
        .unwrap_or_else(|| panic!("run did not warn:\n{log}"));
    assert!(line.contains("WARN"), "{line}");

    // Within the pool: no warning.
    router.rewrite(&CONFIG.replace("max_instances = 4", "max_instances = 8"));
    let check = router.cli_ok(&["check"]);
    assert!(!check.contains("warning:"), "{check}");
}
