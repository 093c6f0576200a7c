//! Amazon SQS end to end, against moto's server on loopback: native
//! dead-lettering (a redrive policy), the visibility heartbeat, saturation,
//! clear one-line errors for a queue that is not there, and a router that
//! needs no more than the queue-owner role, and order by a FIFO queue's
//! message group. What every broker does (the demo
//! flow, router-side dead-lettering, `kill -9`, ...) is in
//! tests/conformance.rs.

#[path = "support/moto.rs"]
mod moto;
#[path = "support/sqs_role_proxy.rs"]
mod sqs_role_proxy;
mod support;

use std::time::Duration;

use aws_sdk_sqs::types::QueueAttributeName;
use moto::Moto;
use support::{Plugins, Router, wait_for};

fn start(moto: &Moto, body: &str) -> Router {
    let mut router = Router::configure(&format!("{}\n{body}", moto.broker()), Plugins::Shared);
    moto::credentials(&mut router);
    router.launch();
    router
}

fn topic(name: &str, url: &str, consumers: &str, publishers: &str) -> String {
    format!(
        "[[topics]]\nname = \"{name}\"\naddress = \"{url}\"\nconsumers = [{consumers}]\npublishers = [{publishers}]\n"
    )
}

#[test]
fn a_redrive_policy_dead_letters_natively_after_max_receive_count() {
    let moto = Moto::start();
    let dead = moto.queue("native-dlq", &[]);
    let policy = format!(
        r#"{{"deadLetterTargetArn": "{}", "maxReceiveCount": "3"}}"#,
        moto.arn(&dead)
    );
    let incoming = moto.queue(
        "with-redrive",
        &[
            (QueueAttributeName::RedrivePolicy, policy),
            (QueueAttributeName::VisibilityTimeout, "2".into()),
        ],
    );
    let router = start(
        &moto,
        &format!(
            "{}[[flows]]\nname = \"flaky\"\ntopic = \"in\"\nalgorithm = \"test/flaky\"\nmax_receives = 10\n[flows.retry]\nbackoff = \"fixed\"\nbase_ms = 200\njitter = false\n",
            topic("in", &incoming, "\"test/flaky\"", ""),
        ),
    );
    wait_for("the redrive report", Duration::from_secs(30), || {
        router
            .log()
            .contains("maxReceiveCount applies")
            .then_some(())
    });
    moto.send(&incoming, &[r#"{"always_fail": true}"#.into()]);
    let moved = moto.drain(&dead, 1, Duration::from_secs(60));
    assert_eq!(
        moved.len(),
        1,
        "the message reached the queue's own dead-letter queue"
    );
    assert_eq!(moved[0].body(), Some(r#"{"always_fail": true}"#));
    let failures = router
        .log()
        .lines()
        .filter(|l| l.contains("Algorithm failed on a message"))
        .count();
    assert_eq!(
        failures, 3,
        "maxReceiveCount (3) attempts, not max_receives (10)"
    );
}

#[test]
fn the_heartbeat_keeps_a_long_invocation_from_being_redelivered() {
    let moto = Moto::start();
    let incoming = moto.queue(
        "slow-in",
        &[(QueueAttributeName::VisibilityTimeout, "3".into())],
    );
    let out = moto.queue("slow-out", &[]);
    let router = start(
        &moto,
        &format!(
            "{}{}[[flows]]\nname = \"slow\"\ntopic = \"in\"\nalgorithm = \"test/slow\"\noutput_topic = \"out\"\ntimeout_secs = 20\n",
            topic("in", &incoming, "\"test/slow\"", ""),
            topic("out", &out, "", "\"test/slow\""),
        ),
    );
    moto.send(&incoming, &[r#"{"id": "long", "sleep_ms": 10000}"#.into()]);
    let outputs = moto.drain(&out, 1, Duration::from_secs(60));
    assert_eq!(outputs.len(), 1);
    // Give a redelivery the chance to happen, then count invocations.
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        moto.drain(&out, 0, Duration::from_secs(1)).is_empty(),
        "a second output"
    );
    let log = router.log();
    let processed = log
        .lines()
        .filter(|l| l.contains("Message processed."))
        .count();
    assert_eq!(
        processed, 1,
        "invoked more than once under a 3 s visibility timeout"
    );
}

/// `ordering = "key"` on a FIFO queue: a message group's outputs come out
/// in input order (one receive returns several messages of a group, so the
/// router must run them one after another), and a slow group does not hold
/// back the others. The outputs go to a FIFO queue too, which takes only
/// messages with a group: the router gives its outputs one.
#[test]
fn a_fifo_group_is_in_order_and_a_slow_group_holds_back_only_itself() {
    let moto = Moto::start();
    let fifo = [(QueueAttributeName::FifoQueue, "true".to_string())];
    let incoming = moto.queue(
        "keyed-in.fifo",
        &[
            fifo[0].clone(),
            (QueueAttributeName::VisibilityTimeout, "30".into()),
        ],
    );
    let out = moto.queue("keyed-out.fifo", &fifo);
    // moto answers one request at a time while a long poll waits, so each
    // delete and send takes up to a poll (a second here): the quick groups'
    // four rounds take seconds, and the slow group sleeps 9, 6 and 3 s.
    let messages = support::slow_key_first(3000);
    moto.send_grouped(&incoming, &messages);
    // One receiver (the line continues the broker's table): moto's
    // ReceiveMessage takes no lock, so two receives at once may split one
    // group's messages between them, which SQS never does (a group's next
    // message is handed out only once those received are deleted).
    let _router = start(
        &moto,
        &format!(
            "receivers = 1\n{}{}[[flows]]\nname = \"keyed\"\ntopic = \"in\"\nalgorithm = \"test/slow\"\noutput_topic = \"out\"\nordering = \"key\"\nconcurrency = 8\ntimeout_secs = 20\n",
            topic("in", &incoming, "\"test/slow\"", ""),
            topic("out", &out, "", "\"test/slow\""),
        ),
    );
    let outputs = moto.drain(&out, messages.len(), Duration::from_secs(90));
    let ids: Vec<String> = outputs
        .iter()
        .map(|m| {
            assert!(
                m.attributes()
                    .and_then(
                        |a| a.get(&aws_sdk_sqs::types::MessageSystemAttributeName::MessageGroupId)
                    )
                    .is_some(),
                "an output without a group: {m:?}"
            );
            let v: serde_json::Value = serde_json::from_str(m.body().unwrap()).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect();
    support::assert_slow_key_held_back_only_itself(&ids);
}

#[test]
fn a_saturated_flow_gives_messages_back_with_the_configured_delay() {
    let moto = Moto::start();
    // Visibility 4 s: a received message that waits 2 s for a free slot
    // marks the flow as saturated.
    let incoming = moto.queue(
        "busy",
        &[(QueueAttributeName::VisibilityTimeout, "4".into())],
    );
    let router = start(
        &moto,
        &format!(
            "{}[[flows]]\nname = \"busy\"\ntopic = \"in\"\nalgorithm = \"test/slow\"\nconcurrency = 2\nmax_receives = 10\n[flows.consumer]\nsaturation_delay_secs = 12\n",
            topic("in", &incoming, "\"test/slow\"", ""),
        ),
    );
    // Two slots, 2.5 s each: the messages received ahead of the slots wait
    // longer than half the visibility timeout.
    let bodies: Vec<String> = (0..6)
        .map(|i| format!(r#"{{"id": "b{i:02}", "sleep_ms": 2500}}"#))
        .collect();
    moto.send(&incoming, &bodies);
    wait_for("the saturation report", Duration::from_secs(30), || {
        router.log().contains("Flow is saturated").then_some(())
    });
    let log = router.log();
    let line = log
        .lines()
        .find(|l| l.contains("Flow is saturated"))
        .unwrap();
    assert!(line.contains("delay=12s"), "{line}");
    // Given back, not lost: every message is processed in the end, and the
    // ones given back come back no sooner than the delay. Without it the six
    // would start within three rounds of 2.5 s.
    wait_for("all six messages", Duration::from_secs(90), || {
        (router.data_files("test/intervals").len() == 6).then_some(())
    });
    let mut starts: Vec<u128> = router
        .data_files("test/intervals")
        .iter()
        .map(|f| {
            let t = String::from_utf8(router.data_file(&format!("test/intervals/{f}")).unwrap())
                .unwrap();
            t.split(' ').next().unwrap().parse().unwrap()
        })
        .collect();
    starts.sort();
    let span_ms = (starts[5] - starts[0]) / 1_000_000;
    assert!(
        span_ms >= 12_000,
        "all six started within {span_ms} ms: nothing given back was delayed"
    );
}

#[test]
fn a_backlog_flows_through_a_small_flow_without_give_backs() {
    let moto = Moto::start();
    let incoming = moto.queue("backlog", &[]);
    // The backlog is there before the router starts, so every receive
    // comes back full.
    let bodies: Vec<String> = (0..300)
        .map(|i| format!(r#"{{"id": "q{i:03}", "sleep_ms": 1}}"#))
        .collect();
    moto.send(&incoming, &bodies);
    // Concurrency 4 with two receivers would overflow a flow that received
    // before it had room; the default saturation delay (5 minutes) would
    // then hold the surplus well past this test's wait.
    let router = start(
        &moto,
        &format!(
            "{}[[flows]]\nname = \"small\"\ntopic = \"in\"\nalgorithm = \"test/slow\"\nconcurrency = 4\n",
            topic("in", &incoming, "\"test/slow\"", ""),
        ),
    );
    wait_for("all 300 messages", Duration::from_secs(120), || {
        (router.data_files("test/intervals").len() == 300).then_some(())
    });
    assert!(
        !router.log().contains("Flow is saturated"),
        "a backlog was handed back as saturation"
    );
}

/// An SQS error as the operator sees it: one line, no SDK debug output (raw
/// HTTP responses, headers, `SdkBody`).
fn assert_one_short_line(error: &str) {
    assert!(!error.contains('\n'), "more than one line: {error}");
    assert!(error.len() < 600, "{} bytes: {error}", error.len());
    for dump in [
        "SdkBody",
        "headers",
        "raw:",
        "ServiceError {",
        "ErrorMetadata",
        "DispatchFailure(",
    ] {
        assert!(!error.contains(dump), "SDK debug output ({dump}): {error}");
    }
}

#[test]
fn an_unknown_queue_is_a_clear_error_naming_the_connection_and_queue() {
    let moto = Moto::start();
    let missing = format!("{}/123456789012/no-such-queue", moto.url);
    let router = start(
        &moto,
        &format!(
            "{}[[flows]]\nname = \"lost\"\ntopic = \"in\"\nalgorithm = \"examples/echo\"\n",
            topic("in", &missing, "\"examples/echo\"", ""),
        ),
    );
    let error = wait_for("the flow's error", Duration::from_secs(30), || {
        router.flow("lost")["last_error"][1]
            .as_str()
            .map(str::to_string)
    });
    assert!(error.contains("broker connection \"aws\" (sqs)"), "{error}");
    assert!(error.contains("no-such-queue"), "{error}");
    assert_one_short_line(&error);
    assert!(
        error.contains("does not exist") || error.contains("NonExistentQueue"),
        "{error}"
    );
    assert_eq!(router.flow("lost")["state"], "disconnected");
    // `eventflow status` shows the same single line.
    let status = router.cli_ok(&["status"]);
    let line = status
        .lines()
        .find(|l| l.contains("no-such-queue"))
        .unwrap_or_else(|| panic!("status names no queue: {status}"));
    assert_one_short_line(line);
    assert!(
        router
            .log()
            .contains("Cannot open the flow's consumer; retrying.")
    );
}

#[test]
fn wrong_credentials_are_a_clear_error() {
    // moto checks credentials against its own IAM when told to.
    let moto = Moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]);
    let url = format!("{}/123456789012/guarded", moto.url);
    let router = start(
        &moto,
        &format!(
            "{}[[flows]]\nname = \"guarded\"\ntopic = \"in\"\nalgorithm = \"examples/echo\"\n",
            topic("in", &url, "\"examples/echo\"", ""),
        ),
    );
    let error = wait_for("the flow's error", Duration::from_secs(30), || {
        router.flow("guarded")["last_error"][1]
            .as_str()
            .map(str::to_string)
    });
    assert!(
        error.contains("broker connection \"aws\" (sqs)") && error.contains("guarded"),
        "{error}"
    );
    assert!(
        error.contains("InvalidClientTokenId")
            || error.contains("security token")
            || error.contains("not authorized"),
        "{error}"
    );
}

#[test]
fn readiness_flips_when_sqs_goes_down_and_back() {
    let mut moto = Moto::start();
    let incoming = moto.queue("ready", &[]);
    let router = start(
        &moto,
        &format!(
            "{}[[flows]]\nname = \"r\"\ntopic = \"in\"\nalgorithm = \"examples/echo\"\n",
            topic("in", &incoming, "\"examples/echo\"", ""),
        ),
    );
    let addr = std::fs::read_to_string(router.state_dir().join("admin.addr")).unwrap();
    let ready = || support::http("GET", &format!("http://{}/readyz", addr.trim()), None, None);
    assert_eq!(ready().0, 200, "{}", ready().1);
    moto.stop();
    let (status, body) = wait_for("readiness to drop", Duration::from_secs(60), || {
        let r = ready();
        (r.0 == 503).then_some(r)
    });
    assert_eq!(status, 503);
    assert_eq!(body["brokers"][0]["state"], "down", "{body}");
    assert_one_short_line(body["brokers"][0]["error"].as_str().unwrap());
    assert!(
        router
            .metrics()
            .contains("eventflow_broker_up{broker=\"aws\"} 0")
    );
    moto.restart();
    wait_for("readiness to return", Duration::from_secs(60), || {
        (ready().0 == 200).then_some(())
    });
}

#[test]
fn readiness_and_consuming_need_only_the_queue_owner_role() {
    // The platform's queue-owner role grants ChangeMessageVisibility,
    // DeleteMessage, GetQueueAttributes and ReceiveMessage on the consumed
    // queue (SendMessage on published ones), never ListQueues: a router
    // that asks for anything else looks not ready, or fails.
    let moto = Moto::start();
    let incoming = moto.queue("role-in", &[]);
    let out = moto.queue("role-out", &[]);
    let proxy = sqs_role_proxy::RoleProxy::start(&moto.url, sqs_role_proxy::QUEUE_OWNER_ROLE);
    let broker = moto.broker().replace(&moto.url, &proxy.url);
    let mut router = Router::configure(
        &format!(
            "{broker}\n{}{}[[flows]]\nname = \"role\"\ntopic = \"in\"\nalgorithm = \"examples/echo\"\noutput_topic = \"out\"\n",
            topic("in", &incoming, "\"examples/echo\"", ""),
            topic("out", &out, "", "\"examples/echo\""),
        ),
        support::Plugins::Shared,
    );
    moto::credentials(&mut router);
    router.launch();
    let addr = std::fs::read_to_string(router.state_dir().join("admin.addr")).unwrap();
    let ready = || support::http("GET", &format!("http://{}/readyz", addr.trim()), None, None);
    let (status, body) = wait_for("readiness", Duration::from_secs(30), || {
        let r = ready();
        (r.0 == 200).then_some(r)
    });
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["brokers"][0]["state"], "connected", "{body}");
    moto.send(&incoming, &[r#"{"through": "the role"}"#.into()]);
    let outputs = moto.drain(&out, 1, Duration::from_secs(60));
    assert_eq!(outputs.len(), 1);
    assert_eq!(outputs[0].body(), Some(r#"{"through": "the role"}"#));
    assert_eq!(ready().0, 200);
    assert!(
        router.flow("role")["last_error"].is_null(),
        "{}",
        router.flow("role")
    );
    let seen = proxy.seen();
    assert!(seen.iter().any(|a| a == "GetQueueAttributes"), "{seen:?}");
    assert!(seen.iter().any(|a| a == "ReceiveMessage"), "{seen:?}");
    assert_eq!(
        proxy.denied(),
        Vec::<String>::new(),
        "asked for more than the role: {seen:?}"
    );

    // `topics list` may ask ListQueues; refused, it lists the declared
    // topics and says why the broker's own list is missing.
    let topics = router.cli_ok(&["topics", "list"]);
    assert!(
        topics.contains("aws:in") && topics.contains("aws:out"),
        "{topics}"
    );
    let note = topics
        .lines()
        .find(|l| l.contains("refused to list"))
        .unwrap_or_else(|| panic!("topics list does not say the listing was refused: {topics}"));
    assert!(note.contains("AccessDenied"), "{note}");
    assert_eq!(proxy.denied(), vec!["ListQueues".to_string()]);
}
