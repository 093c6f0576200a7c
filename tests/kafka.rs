//! Kafka end to end against tansu, a real Kafka-protocol broker, on
//! loopback: undecodable messages, partition order with overlapping
//! invocations, order by record key (a slow key, a parked key across
//! `kill -9`) and `ordering = "none"`, two routers in one group, a broker restart, an unreachable
//! bootstrap server and readiness without partitions. What every broker
//! does (the demo flow, dead-lettering, `kill -9`, ...) is in
//! tests/conformance.rs. One broker is shared by the tests (its first
//! consumer-group join takes about 20 s); each test has its own topics and
//! groups.

mod support;
#[path = "support/tansu.rs"]
mod tansu;

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;
use support::{Plugins, Router, wait_for};

fn unique(name: &str) -> String {
    format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

fn broker(bootstrap: &str) -> String {
    format!(
        "[[brokers]]\nname = \"kafka\"\nkind = \"kafka\"\nbootstrap_servers = \"{bootstrap}\"\n"
    )
}

fn topic(name: &str, address: &str, consumers: &str, publishers: &str) -> String {
    format!(
        "[[topics]]\nname = \"{name}\"\naddress = \"{address}\"\nconsumers = [{consumers}]\npublishers = [{publishers}]\n"
    )
}

const JOIN: Duration = Duration::from_secs(120);

/// A message the router cannot decode (a binary header) is dead-lettered at
/// once, and the partition goes on (dead-lettering at `max_receives` is in
/// tests/conformance.rs).
#[test]
fn an_undecodable_message_is_dead_lettered_and_the_partition_goes_on() {
    let bootstrap = tansu::shared();
    let (input, out, dlq) = (unique("dl-in"), unique("dl-out"), unique("dl-dlq"));
    tansu::create_topics(&bootstrap, &[&input, &out, &dlq], 1);
    let router = Router::start(&format!(
        "{}{}{}{}[[flows]]\nname = \"flaky\"\ntopic = \"in\"\nalgorithm = \"test/flaky\"\noutput_topic = \"out\"\ndead_letter_topic = \"dlq\"\nmax_receives = 3\n[flows.retry]\nbackoff = \"fixed\"\nbase_ms = 200\njitter = false\n",
        broker(&bootstrap),
        topic("in", &input, "\"test/flaky\"", ""),
        topic("out", &out, "", "\"test/flaky\""),
        topic("dlq", &dlq, "", "\"test/flaky\""),
    ));
    tansu::produce(
        &bootstrap,
        &input,
        &[
            (b"{}".to_vec(), vec![("binary".into(), vec![0xff, 0xfe])]),
            (br#"{"fail_times": 0}"#.to_vec(), vec![]),
        ],
    );
    let letters = tansu::read_all(&bootstrap, &dlq, 1, JOIN);
    assert_eq!(letters.len(), 1, "the undecodable message");
    let bad: Value = serde_json::from_slice(&letters[0].payload).unwrap();
    assert_eq!(bad["last_failure"]["reason"], "invalid_input", "{bad}");
    assert!(
        bad["last_failure"]["detail"]
            .as_str()
            .unwrap()
            .contains("binary")
    );
    // The partition went on: the good message after it was processed.
    let outputs = tansu::read_all(&bootstrap, &out, 1, Duration::from_secs(30));
    assert_eq!(outputs.len(), 1);
    let _ = router;
}

#[test]
fn overlapping_invocations_keep_the_partition_order_of_outputs() {
    let bootstrap = tansu::shared();
    let (input, out) = (unique("order-in"), unique("order-out"));
    tansu::create_topics(&bootstrap, &[&input, &out], 1);
    let router = Router::start(&format!(
        "{}{}{}[[flows]]\nname = \"order\"\ntopic = \"in\"\nalgorithm = \"test/slow\"\noutput_topic = \"out\"\nconcurrency = 8\n",
        broker(&bootstrap),
        topic("in", &input, "\"test/slow\"", ""),
        topic("out", &out, "", "\"test/slow\""),
    ));
    // In each run of eight, a later message sleeps less, so it finishes
    // before the ones ahead of it.
    let bodies: Vec<String> = (0..48)
        .map(|i| format!(r#"{{"id": "o{i:02}", "sleep_ms": {}}}"#, (7 - i % 8) * 40))
        .collect();
    tansu::produce_text(&bootstrap, &input, &bodies);
    let outputs = tansu::read_all(&bootstrap, &out, 48, JOIN);
    let got: Vec<String> = outputs
        .iter()
        .map(|r| String::from_utf8(r.payload.clone()).unwrap())
        .collect();
    assert_eq!(got, bodies, "outputs in the input partition's order");
    // The invocations did overlap: the order was kept at publishing.
    let mut intervals: Vec<(u128, u128)> = router
        .data_files("test/intervals")
        .iter()
        .map(|f| {
            let t = String::from_utf8(router.data_file(&format!("test/intervals/{f}")).unwrap())
                .unwrap();
            let (a, b) = t.split_once(' ').unwrap();
            (a.parse().unwrap(), b.parse().unwrap())
        })
        .collect();
    intervals.sort();
    assert!(
        intervals.windows(2).any(|w| w[1].0 < w[0].1),
        "no two invocations of the partition overlapped"
    );
}

/// `ordering = "key"` on Kafka: within one partition, one record key's
/// outputs come out in input order while a slow key does not hold back the
/// others (with the partition's order, nothing could pass its first
/// message).
#[test]
fn one_record_key_is_in_order_and_a_slow_key_holds_back_only_itself() {
    let bootstrap = tansu::shared();
    let (input, out) = (unique("key-in"), unique("key-out"));
    tansu::create_topics(&bootstrap, &[&input, &out], 1);
    let _router = Router::start(&format!(
        "{}{}{}[[flows]]\nname = \"keyed\"\ntopic = \"in\"\nalgorithm = \"test/slow\"\noutput_topic = \"out\"\nordering = \"key\"\nconcurrency = 8\ntimeout_secs = 20\n",
        broker(&bootstrap),
        topic("in", &input, "\"test/slow\"", ""),
        topic("out", &out, "", "\"test/slow\""),
    ));
    let messages = support::slow_key_first(1000);
    tansu::produce_keyed(&bootstrap, &input, &messages);
    let outputs = tansu::read_all(&bootstrap, &out, messages.len(), JOIN);
    let ids: Vec<String> = outputs
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_slice(&r.payload).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect();
    support::assert_slow_key_held_back_only_itself(&ids);
}

/// A poisoned record key on Kafka with `on_key_failure = "park"`: a
/// retried message keeps its key's order, the poisoned key's later records
/// are held (its partition and the other keys go on), stay held across
/// `kill -9`, and come out in order once released.
#[test]
fn a_retried_key_keeps_its_order_and_a_parked_key_survives_kill_9_until_released() {
    let bootstrap = tansu::shared();
    let (input, out, dlq) = (unique("park-in"), unique("park-out"), unique("park-dlq"));
    tansu::create_topics(&bootstrap, &[&input, &out, &dlq], 1);
    let mut router = Router::start(&format!(
        "{}{}{}{}[[flows]]\nname = \"keyed\"\ntopic = \"in\"\nalgorithm = \"test/flaky\"\noutput_topic = \"out\"\ndead_letter_topic = \"dlq\"\nordering = \"key\"\non_key_failure = \"park\"\nconcurrency = 8\nmax_receives = 3\n[flows.retry]\nbackoff = \"fixed\"\nbase_ms = 300\njitter = false\n",
        broker(&bootstrap),
        topic("in", &input, "\"test/flaky\"", ""),
        topic("out", &out, "", "\"test/flaky\""),
        topic("dlq", &dlq, "", "\"test/flaky\""),
    ));
    let record =
        |key: &str, id: &str, how: &str| (key.to_string(), format!(r#"{{"id": "{id}", {how}}}"#));
    let (ok, poison) = (r#""fail_times": 0"#, r#""always_fail": true"#);
    tansu::produce_keyed(
        &bootstrap,
        &input,
        &[
            record("a", "a0", r#""fail_times": 2"#),
            record("b", "b0", poison),
            record("a", "a1", ok),
            record("b", "b1", ok),
            record("a", "a2", ok),
            record("b", "b2", ok),
        ],
    );
    let ids = |records: &[tansu::Record]| -> Vec<String> {
        records
            .iter()
            .map(|r| {
                let v: Value = serde_json::from_slice(&r.payload).unwrap();
                v["payload"]["id"].as_str().unwrap().to_string()
            })
            .collect()
    };
    let parked = |router: &Router| -> Value {
        let (status, body) = router.http("GET", "/v1/flows/keyed/keys", None);
        assert_eq!(status, 200, "{body}");
        body["keys"].clone()
    };
    let held = |router: &Router, n: u64| {
        parked(router)
            .as_array()
            .is_some_and(|k| k.len() == 1 && k[0]["key"] == "b" && k[0]["messages"] == n)
    };
    assert_eq!(
        ids(&tansu::read_all(&bootstrap, &out, 3, JOIN)),
        ["a0", "a1", "a2"]
    );
    let letters = tansu::read_all(&bootstrap, &dlq, 1, JOIN);
    let letter = String::from_utf8_lossy(&letters[0].payload);
    assert!(letter.contains("b0"), "{letter}");
    wait_for("b's later records held", Duration::from_secs(60), || {
        held(&router, 2).then_some(())
    });
    // Offsets are committed every second: let the held records' go out, so
    // the restart does not deliver them again.
    std::thread::sleep(Duration::from_secs(3));
    router.kill9();
    router.launch();
    assert!(held(&router, 2), "{}", parked(&router));
    router.cli_ok(&["keys", "release", "keyed", "b"]);
    let outputs = tansu::read_all(&bootstrap, &out, 5, JOIN);
    assert_eq!(ids(&outputs), ["a0", "a1", "a2", "b1", "b2"]);
    wait_for("b unparked", Duration::from_secs(30), || {
        (parked(&router).as_array().map(Vec::len) == Some(0)).then_some(())
    });
}

/// `ordering = "none"` on Kafka: a partition's outputs are published as
/// their invocations finish, so quick messages pass a slow one ahead of
/// them (with the default `partition`, nothing passes it: the test above).
/// The offsets still wait for the slow one.
#[test]
fn ordering_none_lets_a_partitions_quick_messages_pass_a_slow_one() {
    let bootstrap = tansu::shared();
    let (input, out) = (unique("none-in"), unique("none-out"));
    tansu::create_topics(&bootstrap, &[&input, &out], 1);
    let _router = Router::start(&format!(
        "{}{}{}[[flows]]\nname = \"unordered\"\ntopic = \"in\"\nalgorithm = \"test/slow\"\noutput_topic = \"out\"\nordering = \"none\"\nconcurrency = 8\ntimeout_secs = 20\n",
        broker(&bootstrap),
        topic("in", &input, "\"test/slow\"", ""),
        topic("out", &out, "", "\"test/slow\""),
    ));
    let bodies: Vec<String> = (0..8)
        .map(|i| {
            format!(
                r#"{{"id": "n{i}", "sleep_ms": {}}}"#,
                if i == 0 { 3000 } else { 10 }
            )
        })
        .collect();
    tansu::produce_text(&bootstrap, &input, &bodies);
    let outputs = tansu::read_all(&bootstrap, &out, bodies.len(), JOIN);
    let got: Vec<String> = outputs
        .iter()
        .map(|r| String::from_utf8(r.payload.clone()).unwrap())
        .collect();
    assert_eq!(got.len(), bodies.len(), "{got:?}");
    assert_eq!(
        got.last(),
        Some(&bodies[0]),
        "the slow message held back the others: {got:?}"
    );
}

#[test]
fn batches_on_a_partition_keep_its_offset_order_of_outputs() {
    let bootstrap = tansu::shared();
    let (input, out) = (unique("batch-in"), unique("batch-out"));
    tansu::create_topics(&bootstrap, &[&input, &out], 1);
    let router = Router::start(&format!(
        "{}{}{}[[flows]]\nname = \"batched\"\ntopic = \"in\"\nalgorithm = \"examples/batch_echo\"\noutput_topic = \"out\"\nconcurrency = 4\nbatch = {{ max_messages = 16, max_wait_ms = 50 }}\n",
        broker(&bootstrap),
        topic("in", &input, "\"examples/batch_echo\"", ""),
        topic("out", &out, "", "\"examples/batch_echo\""),
    ));
    let bodies: Vec<String> = (0..200).map(|i| format!("size:{i:03}")).collect();
    tansu::produce_text(&bootstrap, &input, &bodies);
    let outputs = tansu::read_all(&bootstrap, &out, bodies.len(), JOIN);
    let got: Vec<String> = outputs
        .iter()
        .map(|r| {
            let text = String::from_utf8(r.payload.clone()).unwrap();
            text.split_once(' ').unwrap().0.to_string()
        })
        .collect();
    // Batches run side by side (concurrency 4), yet the partition's
    // outputs come out in offset order (`ordering = "partition"`, Kafka's
    // default).
    assert_eq!(got, bodies);
    let sizes: BTreeSet<usize> = outputs
        .iter()
        .map(|r| {
            let text = String::from_utf8(r.payload.clone()).unwrap();
            let batch = text.split(" batch=").nth(1).unwrap();
            batch.split(' ').next().unwrap().parse().unwrap()
        })
        .collect();
    assert!(
        sizes.iter().any(|&n| n > 1),
        "no batch held more than one message: {sizes:?}"
    );
    assert!(sizes.iter().all(|&n| n <= 16), "{sizes:?}");
    let flow = router.flow("batched");
    assert!(flow["batches"].as_u64().unwrap() < 200, "{flow}");
}

#[test]
fn two_routers_in_one_group_split_the_partitions() {
    let bootstrap = tansu::shared();
    let (input, out) = (unique("two-in"), unique("two-out"));
    tansu::create_topics(&bootstrap, &[&input, &out], 4);
    let group = unique("shared-group");
    let config = format!(
        "{}{}{}[[flows]]\nname = \"echo\"\ntopic = \"in\"\nalgorithm = \"examples/echo\"\noutput_topic = \"out\"\n[flows.consumer]\ngroup_id = \"{group}\"\n",
        broker(&bootstrap),
        topic("in", &input, "\"examples/echo\"", ""),
        topic("out", &out, "", "\"examples/echo\""),
    );
    let a = Router::start_with(&config, Plugins::Shared);
    let b = Router::start_with(&config, Plugins::Shared);
    // Wait until both have joined and hold partitions.
    wait_for("both routers to be assigned partitions", JOIN, || {
        let assigned = |r: &Router| r.log().contains("Kafka partitions assigned");
        (assigned(&a) && assigned(&b)).then_some(())
    });
    std::thread::sleep(Duration::from_secs(5));
    let bodies: Vec<String> = (0..200).map(|i| format!("p{i:03}")).collect();
    tansu::produce_text(&bootstrap, &input, &bodies);
    let outputs = tansu::read_all(&bootstrap, &out, 200, Duration::from_secs(120));
    let got: BTreeSet<String> = outputs
        .iter()
        .map(|r| String::from_utf8(r.payload.clone()).unwrap())
        .collect();
    assert_eq!(got.len(), 200);
    let processed = |r: &Router| {
        r.log()
            .lines()
            .filter(|l| l.contains("Message processed."))
            .count()
    };
    let (pa, pb) = (processed(&a), processed(&b));
    assert!(
        pa > 0 && pb > 0,
        "one router did all the work: {pa} and {pb}"
    );
}

#[test]
fn a_broker_restart_is_survived() {
    let mut kafka = tansu::Tansu::start();
    let (input, out) = (unique("rs-in"), unique("rs-out"));
    tansu::create_topics(&kafka.bootstrap, &[&input, &out], 1);
    let mut router = Router::start(&format!(
        "{}{}{}[[flows]]\nname = \"echo\"\ntopic = \"in\"\nalgorithm = \"examples/echo\"\noutput_topic = \"out\"\n",
        broker(&kafka.bootstrap),
        topic("in", &input, "\"examples/echo\"", ""),
        topic("out", &out, "", "\"examples/echo\""),
    ));
    tansu::produce_text(&kafka.bootstrap, &input, &["before".into()]);
    assert_eq!(tansu::read_all(&kafka.bootstrap, &out, 1, JOIN).len(), 1);

    kafka.stop();
    std::thread::sleep(Duration::from_secs(3));
    // The router does not hang: its API answers while the broker is away.
    assert!(router.is_running_check());
    kafka.restart();
    tansu::create_topics(&kafka.bootstrap, &[&input, &out], 1);
    // The restarted tansu is empty (memory storage): "after" lands at
    // offset 0 again, while a consumer that kept its assignment through the
    // outage fetches from its position, offset 1. A second message is at
    // offset 1, so either way something is there to process. The topics
    // created again have new topic ids, which a consumer that kept its
    // assignment learns at its next metadata refresh (every 30 s in the
    // router; with librdkafka's own 5 minutes this test failed whenever no
    // rebalance came first).
    tansu::produce_text(&kafka.bootstrap, &input, &["after".into(), "after".into()]);
    let outputs = tansu::read_all(&kafka.bootstrap, &out, 1, Duration::from_secs(180));
    assert!(
        outputs.iter().any(|r| r.payload == b"after"),
        "nothing was processed after the broker came back"
    );
    assert!(router.stop().success(), "a graceful stop after the outage");
}

#[test]
fn an_unreachable_bootstrap_server_is_a_clear_error_and_retried() {
    let router = Router::start(&format!(
        "{}{}[[flows]]\nname = \"nowhere\"\ntopic = \"in\"\nalgorithm = \"examples/echo\"\n",
        broker("127.0.0.1:1"),
        topic("in", "in", "\"examples/echo\"", ""),
    ));
    assert!(
        router.log().contains("Kafka is unreachable at start"),
        "{}",
        router.log()
    );
    let error = wait_for("the flow's error", Duration::from_secs(60), || {
        router.flow("nowhere")["last_error"][1]
            .as_str()
            .map(str::to_string)
    });
    assert!(
        error.contains("broker connection \"kafka\"") && error.contains("127.0.0.1:1"),
        "{error}"
    );
    wait_for("a retry", Duration::from_secs(60), || {
        (router
            .log()
            .matches("Cannot open the flow's consumer; retrying.")
            .count()
            >= 2)
            .then_some(())
    });
}

#[test]
fn a_flow_without_partitions_says_so_in_status_and_readiness() {
    let bootstrap = tansu::shared();
    let (input, out) = (unique("assign-in"), unique("assign-out"));
    tansu::create_topics(&bootstrap, &[&input, &out], 1);
    let router = Router::start(&format!(
        "{}{}{}[[flows]]\nname = \"waits\"\ntopic = \"in\"\nalgorithm = \"examples/echo\"\noutput_topic = \"out\"\n[flows.consumer]\ngroup_id = \"{}\"\nassignment_grace_secs = 1\n",
        broker(&bootstrap),
        topic("in", &input, "\"examples/echo\"", ""),
        topic("out", &out, "", "\"examples/echo\""),
        unique("assign-group"),
    ));
    let addr = std::fs::read_to_string(router.state_dir().join("admin.addr")).unwrap();
    let ready = || support::http("GET", &format!("http://{}/readyz", addr.trim()), None, None);
    // The group join takes a while on tansu: until it completes the flow
    // holds no partitions, and after the grace the router is not ready.
    let flow = wait_for("the consumer to be open", Duration::from_secs(10), || {
        let f = router.flow("waits");
        f.get("partitions_assigned").is_some().then_some(f)
    });
    assert_eq!(flow["partitions_assigned"], 0, "{flow}");
    assert_eq!(flow["state"], "waiting_for_partitions", "{flow}");
    let (status, body) = wait_for("readiness to drop", Duration::from_secs(5), || {
        let r = ready();
        (r.0 == 503).then_some(r)
    });
    assert_eq!(status, 503);
    assert_eq!(body["flows_not_ready"][0]["name"], "waits", "{body}");
    assert!(
        body["flows_not_ready"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("no partitions assigned"),
        "{body}"
    );
    assert!(
        router
            .cli_ok(&["status"])
            .contains("waiting_for_partitions"),
        "{}",
        router.cli_ok(&["status"])
    );
    // Once the group assigns the partition: running, and ready.
    let flow = wait_for("the partition assignment", JOIN, || {
        let f = router.flow("waits");
        (f["partitions_assigned"] == 1).then_some(f)
    });
    assert_eq!(flow["state"], "running", "{flow}");
    assert!(flow.get("unassigned_secs").is_none(), "{flow}");
    let (status, body) = ready();
    assert_eq!(status, 200, "{body}");
}
