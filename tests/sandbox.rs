//! Untrusted algorithms cannot hurt the router: each misbehaviour ends in the
//! dead-letter topic with its reason while the router and the other flows
//! keep going. Real binary, embedded broker, real misbehaving algorithms.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use support::{Plugins, Router, wait_for};

/// One flow of `algorithm` consuming `in`, dead-lettering to `dlq`, with
/// extra flow fields; plus an echo flow `in2 -> out2` that must keep flowing.
fn config(algorithm: &str, flow_extra: &str) -> String {
    format!(
        r#"
[[brokers]]
name = "local"
kind = "embedded"

[[topics]]
name = "in"
consumers = ["{algorithm}"]

[[topics]]
name = "out"
publishers = ["{algorithm}"]

[[topics]]
name = "dlq"
publishers = ["{algorithm}"]

[[topics]]
name = "in2"
consumers = ["examples/echo"]

[[topics]]
name = "out2"
publishers = ["examples/echo"]

[[flows]]
name = "subject"
topic = "in"
algorithm = "{algorithm}"
output_topic = "out"
dead_letter_topic = "dlq"
{flow_extra}

[[flows]]
name = "bystander"
topic = "in2"
algorithm = "examples/echo"
output_topic = "out2"
"#
    )
}

fn millis(rfc3339: &Value) -> u128 {
    let t = humantime::parse_rfc3339(rfc3339.as_str().unwrap()).unwrap();
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()
}

/// The bystander flow still processes messages.
fn bystander_flows(router: &Router, n: usize) {
    let before = router.peek("local", "out2").len();
    let payloads: Vec<String> = (0..n).map(|i| format!("ping {i}")).collect();
    router.publish("in2", &payloads);
    wait_for("the bystander's outputs", Duration::from_secs(60), || {
        (router.peek("local", "out2").len() == before + n).then_some(())
    });
}

#[test]
fn an_infinite_loop_is_dead_lettered_as_timeout_within_a_second_of_the_timeout() {
    // The flow allows 30 s; the version's override allows 1 s.
    let overrides =
        "\n[[algorithm_limits]]\nalgorithm = \"test/loop_forever/0.1.0\"\ntimeout_secs = 1\n";
    let router = Router::start(
        &(config(
            "test/loop_forever",
            "timeout_secs = 30\nmax_receives = 1\nconcurrency = 2",
        ) + overrides),
    );
    assert!(
        router.log().contains("Flow has no dead-letter topic")
            && router.log().contains("flow=bystander"),
        "eventflow run warns about flows without a dead-letter topic"
    );
    router.publish("in", &["spin".into(), "spin".into()]);
    bystander_flows(&router, 50);
    let letters = router.wait_dead_letters("subject", 2, Duration::from_secs(30));
    for l in &letters {
        assert_eq!(l["last_failure"]["reason"], "timeout", "{l}");
        let spent = millis(&l["dead_lettered_at"]) - millis(&l["enqueued_at"]);
        assert!(
            spent <= 2_000,
            "dead-lettered {spent} ms after enqueue; the timeout is 1 s"
        );
    }
    bystander_flows(&router, 10);
}

#[test]
fn a_memory_bomb_is_stopped_and_the_router_stays_small() {
    let router = Router::start(&config(
        "test/memory_bomb",
        "max_receives = 1\nconcurrency = 2\n[flows.limits]\nmax_memory_mib = 64",
    ));
    let payloads: Vec<String> = (0..20).map(|i| format!("bomb {i}")).collect();
    router.publish("in", &payloads);
    let letters = router.wait_dead_letters("subject", 20, Duration::from_secs(60));
    for l in &letters {
        assert_eq!(l["last_failure"]["reason"], "memory_limit", "{l}");
    }
    // 20 bombs of 64 MiB went through; the router must not hold on to them.
    let rss = router.rss_kib();
    assert!(
        rss < 400 * 1024,
        "router resident memory is {rss} KiB after 20 memory bombs"
    );
    bystander_flows(&router, 10);
}

#[test]
fn unbounded_recursion_is_a_stack_overflow_not_a_crash() {
    let mut router = Router::start(&config("test/deep_recursion", "max_receives = 1"));
    router.publish("in", &["down".into(), "down".into(), "down".into()]);
    let letters = router.wait_dead_letters("subject", 3, Duration::from_secs(30));
    for l in &letters {
        assert_eq!(l["last_failure"]["reason"], "stack_overflow", "{l}");
    }
    assert!(router.is_running());
    bystander_flows(&router, 10);
}

#[test]
fn a_huge_output_is_refused() {
    let router = Router::start(&config(
        "test/huge_output",
        "max_receives = 1\n[flows.limits]\nmax_memory_mib = 512\nmax_output_bytes = 1048576",
    ));
    router.publish("in", &["big".into()]);
    let letters = router.wait_dead_letters("subject", 1, Duration::from_secs(60));
    assert_eq!(letters[0]["last_failure"]["reason"], "output_too_large");
    assert!(router.peek("local", "out").is_empty());
}

#[test]
fn a_panic_is_a_trap_with_its_message() {
    let router = Router::start(&config("test/panic", "max_receives = 1"));
    router.publish("in", &["boom".into()]);
    let letters = router.wait_dead_letters("subject", 1, Duration::from_secs(30));
    let failure = &letters[0]["last_failure"];
    assert_eq!(failure["reason"], "trap");
    let detail = failure["detail"].as_str().unwrap();
    assert!(
        detail.contains("panic plugin was given 4 bytes"),
        "{detail}"
    );
    assert!(
        letters[0]["algorithm"]
            .as_str()
            .unwrap()
            .starts_with("test/panic@0.1.0")
    );
    assert_eq!(letters[0]["component_hash"].as_str().unwrap().len(), 64);
}

#[test]
fn fails_twice_then_succeeds_once_on_the_third_attempt() {
    let router = Router::start(&config(
        "test/flaky",
        "max_receives = 5\n[flows.retry]\nbackoff = \"fixed\"\nbase_ms = 100\njitter = false",
    ));
    router.publish("in", &[r#"{"fail_times": 2}"#.into()]);
    // The success is counted after the output is published and the input
    // acknowledged: wait for both.
    let out = wait_for("the output", Duration::from_secs(30), || {
        let o = router.peek("local", "out");
        let counted = router.flow("subject")["succeeded"].as_u64() >= Some(1);
        (!o.is_empty() && counted).then_some(o)
    });
    // Give a duplicate the chance to show up before counting.
    std::thread::sleep(Duration::from_millis(500));
    let out_now = router.peek("local", "out");
    assert_eq!(out_now.len(), 1, "processed more than once: {out_now:?}");
    let doc: Value = serde_json::from_str(out[0]["payload"].as_str().unwrap()).unwrap();
    assert_eq!(doc["attempt"], 3);
    assert!(router.dead_letters("subject").is_empty());
    let flow = router.flow("subject");
    assert_eq!(flow["retried"], 2);
    assert_eq!(flow["succeeded"], 1);
}

#[test]
fn always_failing_is_dead_lettered_after_exactly_max_receives_across_a_restart() {
    let mut router = Router::start(&config(
        "test/flaky",
        "max_receives = 4\n[flows.retry]\nbackoff = \"fixed\"\nbase_ms = 1500\njitter = false",
    ));
    router.publish("in", &[r#"{"always_fail": true}"#.into()]);
    wait_for("two failed attempts", Duration::from_secs(30), || {
        (router.flow("subject")["retried"].as_u64() == Some(2)).then_some(())
    });
    let status = router.stop();
    assert!(status.success());
    router.launch();
    let letters = router.wait_dead_letters("subject", 1, Duration::from_secs(60));
    let l = &letters[0];
    assert_eq!(l["attempts"], 4, "{l}");
    assert_eq!(l["first_failure"]["attempt"], 1, "{l}");
    assert_eq!(l["last_failure"]["attempt"], 4, "{l}");
    assert_eq!(l["last_failure"]["reason"], "guest_retry");
    let id = l["source"]["message_id"].as_str().unwrap();
    let attempts = router
        .log()
        .lines()
        .filter(|line| line.contains("Algorithm failed on a message") && line.contains(id))
        .count();
    assert_eq!(attempts, 4, "the algorithm ran {attempts} times");
    assert!(router.peek("local", "out").is_empty());
}

#[test]
fn ten_thousand_poison_messages_among_ten_thousand_good_ones() {
    let router = Router::start(&config(
        "test/chaos",
        "max_receives = 2\nconcurrency = 16\n[flows.retry]\nbackoff = \"fixed\"\nbase_ms = 10\njitter = false",
    ));
    let mut payloads = Vec::new();
    for i in 0..10_000 {
        payloads.push(format!("good {i}"));
        payloads.push(if i % 2 == 0 {
            format!("TRAP {i}")
        } else {
            format!("REJECT {i}")
        });
    }
    router.publish("in", &payloads);
    let letters = router.wait_dead_letters("subject", 10_000, Duration::from_secs(600));
    assert_eq!(letters.len(), 10_000);
    let outputs = wait_for("10,000 outputs", Duration::from_secs(120), || {
        let o = router.peek("local", "out");
        (o.len() >= 10_000).then_some(o)
    });
    let good: BTreeSet<String> = outputs
        .iter()
        .map(|m| m["payload"].as_str().unwrap().to_string())
        .collect();
    let expected_good: BTreeSet<String> = (0..10_000).map(|i| format!("good {i}")).collect();
    assert_eq!(good, expected_good);
    let mut poison = BTreeSet::new();
    for l in &letters {
        let payload = l["payload"].as_str().unwrap().to_string();
        let reason = l["last_failure"]["reason"].as_str().unwrap();
        if payload.starts_with("TRAP") {
            assert_eq!(reason, "trap", "{l}");
            assert_eq!(l["attempts"], 2, "{l}");
        } else {
            assert_eq!(reason, "guest_reject", "{l}");
            assert_eq!(l["attempts"], 1, "{l}");
        }
        poison.insert(payload);
    }
    assert_eq!(poison.len(), 10_000);
    assert!(poison.iter().all(|p| !p.starts_with("good")));
}

#[test]
fn dlq_replay_after_fixing_the_algorithm_processes_the_messages() {
    let router = Router::start_with(
        &config("test/always_reject", "max_receives = 3"),
        Plugins::Copy(&[("test", "always_reject"), ("examples", "echo")]),
    );
    let payloads: Vec<String> = (0..5).map(|i| format!("order {i}")).collect();
    router.publish("in", &payloads);
    router.wait_dead_letters("subject", 5, Duration::from_secs(30));
    let listed: Vec<Value> =
        serde_json::from_str(&router.cli_ok(&["dlq", "list", "subject", "--json"])).unwrap();
    assert_eq!(listed.len(), 5);
    for letter in &listed {
        assert_eq!(letter["status"], "verified", "{letter}");
        assert_eq!(letter["envelope"]["last_failure"]["reason"], "guest_reject");
    }

    // The fix: version 0.2.0 of the algorithm, dropped into the plugin
    // directory (written under a temporary name, then renamed).
    let dir = router.plugins_dir().join("test/always_reject");
    std::fs::copy(
        support::plugin_file("examples", "echo"),
        dir.join(".0.2.0.tmp"),
    )
    .unwrap();
    std::fs::rename(dir.join(".0.2.0.tmp"), dir.join("0.2.0.wasm")).unwrap();
    wait_for("version 0.2.0 to load", Duration::from_secs(30), || {
        router
            .cli_ok(&["plugins", "list"])
            .lines()
            .any(|l| l.starts_with("test/always_reject/0.2.0 ") && l.contains(" ok "))
            .then_some(())
    });

    let replayed = router.cli_ok(&["dlq", "replay", "subject"]);
    assert!(replayed.contains("replayed 5"), "{replayed}");
    let outputs = wait_for("5 outputs", Duration::from_secs(30), || {
        let o = router.peek("local", "out");
        (o.len() == 5).then_some(o)
    });
    let got: BTreeSet<&str> = outputs
        .iter()
        .map(|m| m["payload"].as_str().unwrap())
        .collect();
    let want: BTreeSet<&str> = payloads.iter().map(String::as_str).collect();
    assert_eq!(got, want);
    for m in &outputs {
        let headers = m["headers"].as_array().unwrap();
        assert!(
            headers
                .iter()
                .any(|h| h[0] == "eventflow-algorithm" && h[1] == "test/always_reject@0.2.0"),
            "{m}"
        );
    }
    assert!(router.dead_letters("subject").is_empty());
}

#[test]
fn fuel_and_host_call_limits_have_their_own_reasons() {
    let router = Router::start(&format!(
        "[sandbox]\nfuel = true\n{}\n{}",
        config(
            "test/loop_forever",
            "max_receives = 1\ntimeout_secs = 30\n[flows.limits]\nmax_fuel = 10000000",
        ),
        r#"
[[topics]]
name = "files"
consumers = ["ezra/store_file"]

[[topics]]
name = "files-dlq"
publishers = ["ezra/store_file"]

[[flows]]
name = "no-calls"
topic = "files"
algorithm = "ezra/store_file"
dead_letter_topic = "files-dlq"
max_receives = 1

[flows.limits]
max_host_calls = 0
"#
    ));
    router.publish("in", &["spin".into()]);
    let letters = router.wait_dead_letters("subject", 1, Duration::from_secs(30));
    assert_eq!(
        letters[0]["last_failure"]["reason"], "fuel_exhausted",
        "{}",
        letters[0]
    );
    router.publish("files", &[r#"{"filename": "f", "data": "d"}"#.into()]);
    let letters = wait_for("the host-call dead letter", Duration::from_secs(30), || {
        let l = router.dead_letters("no-calls");
        (!l.is_empty()).then_some(l)
    });
    assert_eq!(
        letters[0]["last_failure"]["reason"], "host_call_limit",
        "{}",
        letters[0]
    );
    assert!(router.data_file("ezra/TestingEventFlow/f").is_none());
}

#[test]
fn no_state_survives_from_one_message_to_the_next_in_a_reused_pool_slot() {
    // One message at a time, so the pool hands the same warm slot out again
    // and again: its memory is reset in place (the pages the pool keeps
    // resident) and by madvise (the rest of the 512 KiB the algorithm
    // dirties), and neither may leave anything behind.
    let router = Router::start(&config("test/residue", "concurrency = 1"));
    let n = 20;
    let payloads: Vec<String> = (0..n).map(|i| format!("m{i}")).collect();
    router.publish("in", &payloads);
    let out = wait_for("the outputs", Duration::from_secs(60), || {
        let o = router.peek("local", "out");
        (o.len() >= n).then_some(o)
    });
    assert_eq!(out.len(), n);
    for o in &out {
        assert_eq!(o["payload"].as_str().unwrap(), "calls=0 dirty=0", "{o}");
    }
    assert!(router.dead_letters("subject").is_empty());
}
