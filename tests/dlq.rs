//! Dead letters: each flow and owner reads only its own, only the router
//! writes real ones (algorithms' forgeries list as unverified and are not
//! replayed), and a failure too big for the dead-letter topic still leaves
//! its flow. Real binary, embedded broker, a hostile test algorithm
//! (`mallory/forger`).

mod support;

use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use sha2::Digest as _;
use support::{Router, http, wait_for};

/// Flow `flow-a` (test/always_reject on `in-a`) and flow `flow-b`
/// (mallory/forger on `in-b`), both dead-lettering to the shared `dlq`.
/// `dlq_grants` is the dead-letter topic's access lists.
fn shared_dlq(dlq_grants: &str) -> String {
    format!(
        r#"
[[brokers]]
name = "local"
kind = "embedded"

[[topics]]
name = "in-a"
consumers = ["test/always_reject"]

[[topics]]
name = "in-b"
consumers = ["mallory/forger"]

[[topics]]
name = "dlq"
{dlq_grants}

[[flows]]
name = "flow-a"
topic = "in-a"
algorithm = "test/always_reject"
dead_letter_topic = "dlq"

[[flows]]
name = "flow-b"
topic = "in-b"
algorithm = "mallory/forger"
dead_letter_topic = "dlq"
"#
    )
}

/// One flow `subject` of `algorithm` on `in`, dead-lettering to `dlq`, on an
/// embedded broker with `broker_extra` settings.
fn single_flow(algorithm: &str, broker_extra: &str) -> String {
    format!(
        r#"
[[brokers]]
name = "local"
kind = "embedded"
{broker_extra}

[[topics]]
name = "in"
consumers = ["{algorithm}"]

[[topics]]
name = "dlq"

[[flows]]
name = "subject"
topic = "in"
algorithm = "{algorithm}"
dead_letter_topic = "dlq"
max_receives = 3

[flows.retry]
backoff = "fixed"
base_ms = 100
jitter = false
"#
    )
}

fn url(router: &Router, path: &str) -> String {
    format!("{}{path}", router.admin_url())
}

fn owner_token(router: &Router, owner: &str) -> String {
    let (status, body) = router.http("POST", "/v1/tokens", Some(json!({ "owner": owner })));
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().unwrap().to_string()
}

/// `GET /v1/flows/{flow}/dead-letters` with `token` (the admin's when None).
fn list(router: &Router, token: Option<&str>, flow: &str) -> (u16, Value) {
    let path = format!("/v1/flows/{flow}/dead-letters?limit=100000");
    match token {
        Some(t) => http("GET", &url(router, &path), Some(t), None),
        None => router.http("GET", &path, None),
    }
}

fn replay(router: &Router, token: Option<&str>, flow: &str, body: Value) -> (u16, Value) {
    let path = format!("/v1/flows/{flow}/dead-letters/replay");
    match token {
        Some(t) => http("POST", &url(router, &path), Some(t), Some(body)),
        None => router.http("POST", &path, Some(body)),
    }
}

fn entries(body: &Value) -> Vec<Value> {
    body["dead_letters"].as_array().cloned().unwrap_or_default()
}

fn payloads(body: &Value) -> Vec<String> {
    let mut p: Vec<String> = entries(body)
        .iter()
        .map(|d| d["envelope"]["payload"].as_str().unwrap_or("?").to_string())
        .collect();
    p.sort();
    p
}

fn send(router: &Router, topic: &str, payload: &str) {
    router.publish(topic, &[payload.to_string()]);
}

fn wait_topic_len(router: &Router, topic: &str, n: usize) {
    wait_for(
        &format!("{n} messages on {topic}"),
        Duration::from_secs(60),
        || (router.peek("local", topic).len() == n).then_some(()),
    );
}

#[test]
fn dead_letter_reads_show_only_the_flows_and_the_owners_own() {
    // The old grants, so that the router before the fix starts too.
    let router = Router::start(&shared_dlq(r#"publishers = ["test/*", "mallory/*"]"#));
    for p in ["a1", "a2"] {
        send(&router, "in-a", p);
    }
    for p in ["b1", "b2", "b3"] {
        send(&router, "in-b", p);
    }
    wait_topic_len(&router, "dlq", 5);

    // The admin: each flow's listing holds that flow's dead letters only.
    let (status, a) = list(&router, None, "flow-a");
    assert_eq!(status, 200, "{a}");
    assert_eq!(payloads(&a), ["a1", "a2"], "{a}");
    assert!(entries(&a).iter().all(|d| d["verified"] == true), "{a}");
    let (_, b) = list(&router, None, "flow-b");
    assert_eq!(payloads(&b), ["b1", "b2", "b3"], "{b}");

    // Owners: their own flows, and nothing of another owner's.
    let test = owner_token(&router, "test");
    let mallory = owner_token(&router, "mallory");
    let (status, mine) = list(&router, Some(&test), "flow-a");
    assert_eq!(status, 200, "{mine}");
    assert_eq!(payloads(&mine), ["a1", "a2"]);
    let (status, theirs) = list(&router, Some(&test), "flow-b");
    assert_eq!(status, 403, "{theirs}");
    let (status, mine) = list(&router, Some(&mallory), "flow-b");
    assert_eq!(status, 200, "{mine}");
    assert_eq!(payloads(&mine), ["b1", "b2", "b3"]);
    assert_eq!(list(&router, Some(&mallory), "flow-a").0, 403);
    assert_eq!(
        replay(&router, Some(&mallory), "flow-a", json!({})).0,
        403,
        "replaying another owner's dead letters"
    );
    // Nor through one's own flow on the shared topic: test's flow-a does
    // not see mallory's dead letter by its id.
    let b_letter = entries(&b)[0]["dead_letter_id"].clone();
    let (status, body) = replay(&router, Some(&test), "flow-a", json!({ "id": b_letter }));
    assert_eq!(status, 404, "{body}");

    // Replay by test's token publishes test's dead letters only; flow-b's
    // stay where they are.
    let b_ids: Vec<Value> = entries(&b)
        .iter()
        .map(|d| d["dead_letter_id"].clone())
        .collect();
    let (status, replayed) = replay(&router, Some(&test), "flow-a", json!({}));
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(
        replayed["replayed"].as_array().unwrap().len(),
        2,
        "{replayed}"
    );
    let (_, b_after) = list(&router, None, "flow-b");
    let b_after: Vec<Value> = entries(&b_after)
        .iter()
        .map(|d| d["dead_letter_id"].clone())
        .collect();
    assert_eq!(b_after, b_ids);

    // A flow re-created under the same name for another algorithm does not
    // inherit the old one's dead letters. (First let the replayed messages
    // fail again into flow-a's dead letters.)
    wait_topic_len(&router, "dlq", 5);
    assert_eq!(router.http("DELETE", "/v1/flows/flow-b", None).0, 200);
    let (status, body) = router.http(
        "POST",
        "/v1/flows",
        Some(json!({
            "name": "flow-b", "algorithm": "test/always_reject", "topic": "in-a",
            "dead_letter_topic": "dlq",
        })),
    );
    assert_eq!(status, 200, "{body}");
    let (_, renamed) = list(&router, Some(&test), "flow-b");
    assert_eq!(payloads(&renamed), Vec::<String>::new(), "{renamed}");

    // The admin may replay any owner's dead letters, one by its id.
    let (_, a) = list(&router, None, "flow-a");
    let id = entries(&a)[0]["dead_letter_id"].clone();
    let (status, replayed) = replay(&router, None, "flow-a", json!({ "id": id }));
    assert_eq!(status, 200, "{replayed}");
    assert_eq!(
        replayed["replayed"].as_array().unwrap().len(),
        1,
        "{replayed}"
    );
}

/// A fake envelope claiming to be a dead letter of flow-a.
fn forged_envelope() -> String {
    json!({
        "eventflow_dead_letter": 1,
        "flow": "flow-a",
        "source": {"broker": "local", "kind": "embedded", "topic": "in-a", "message_id": "forged-1"},
        "algorithm": "test/always_reject@0.1.0",
        "component_hash": "0".repeat(64),
        "attempts": 1,
        "first_failure": null,
        "last_failure": {"reason": "timeout", "detail": "did not finish", "attempt": 1,
                         "at": "2026-01-01T00:00:00.000Z", "algorithm": "test/always_reject@0.1.0#000000000000"},
        "payload": "FORGED",
        "payload_encoding": "utf8",
        "headers": [],
        "enqueued_at": null,
        "dead_lettered_at": "2026-01-01T00:00:00.000Z",
    })
    .to_string()
}

#[test]
fn algorithms_cannot_forge_dead_letters() {
    // mallory/forger holds a publish grant on the dead-letter topic (which
    // the router no longer needs) and tries to write a fake envelope to it.
    let router = Router::start(&shared_dlq(r#"publishers = ["mallory/*"]"#));
    send(&router, "in-a", "real");
    send(
        &router,
        "in-b",
        &format!("FORGE dlq\n{}", forged_envelope()),
    );
    wait_topic_len(&router, "dlq", 2);
    let (_, a) = list(&router, None, "flow-a");
    assert_eq!(payloads(&a), ["real"], "the forgery was published: {a}");
    let (_, b) = list(&router, None, "flow-b");
    let refused = &entries(&b)[0]["envelope"]["last_failure"]["detail"];
    assert_eq!(refused, "publish to dlq refused: access-denied", "{b}");

    // Granted for that purpose it may publish, but what it writes is not a
    // dead letter of the router: listed as unverified, not replayed.
    let (status, body) = router.http(
        "POST",
        "/v1/brokers/local/topics/dlq/grants",
        Some(json!({"algorithm": "mallory/forger", "dead_letter_publish": true})),
    );
    assert_eq!(status, 200, "{body}");
    send(
        &router,
        "in-b",
        &format!("FORGE dlq\n{}", forged_envelope()),
    );
    wait_topic_len(&router, "dlq", 3);
    let (_, a) = list(&router, None, "flow-a");
    let by_payload = |p: &str| {
        entries(&a)
            .into_iter()
            .find(|d| d["envelope"]["payload"] == p)
            .unwrap_or_else(|| panic!("no {p} in {a}"))
    };
    assert_eq!(by_payload("real")["status"], "verified", "{a}");
    assert_eq!(by_payload("FORGED")["status"], "unverified", "{a}");
    assert_eq!(by_payload("FORGED")["verified"], false, "{a}");
    let out = router.cli_ok(&["dlq", "list", "flow-a"]);
    assert!(
        out.lines()
            .any(|l| l.starts_with("unverified ") && l.contains("FORGED")),
        "{out}"
    );
    let out: Vec<Value> =
        serde_json::from_str(&router.cli_ok(&["dlq", "list", "flow-a", "--json"])).unwrap();
    assert!(
        out.iter()
            .any(|d| d["status"] == "unverified" && d["envelope"]["payload"] == "FORGED"),
        "{out:?}"
    );

    let test = owner_token(&router, "test");
    assert_eq!(
        replay(
            &router,
            Some(&test),
            "flow-a",
            json!({"include_unverified": true})
        )
        .0,
        403,
        "only the admin may replay unverified dead letters"
    );
    let (status, body) = replay(&router, None, "flow-a", json!({"id": "forged-1"}));
    assert_eq!(status, 409, "{body}");
    let (status, body) = replay(&router, None, "flow-a", json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replayed"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["skipped"][0]["message_id"], "forged-1", "{body}");
    assert!(
        router
            .peek("local", "dlq")
            .iter()
            .any(|m| m["payload"].as_str().unwrap_or("").contains("FORGED")),
        "the forgery was removed"
    );

    // The admin API does not send the router's own headers either.
    let (status, body) = router.http(
        "POST",
        "/v1/messages",
        Some(json!({
            "topic": "dlq", "payload": forged_envelope(),
            "headers": [["eventflow-dead-letter-signature", "00"]],
        })),
    );
    assert_eq!(status, 400, "{body}");
}

#[test]
fn a_ten_mib_reject_reason_is_capped_and_dead_lettered_once() {
    let router = Router::start(&single_flow("mallory/forger", ""));
    send(&router, "in", "REJECT 10485760");
    let letters = router.wait_dead_letters("subject", 1, Duration::from_secs(60));
    let detail = letters[0]["last_failure"]["detail"].as_str().unwrap();
    assert!(detail.len() <= 4096, "{} bytes", detail.len());
    assert!(
        detail.ends_with("… [truncated, 10485760 bytes]"),
        "{detail:.80}"
    );
    // Settled: off its topic, and nothing more happens to it.
    wait_topic_len(&router, "in", 0);
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(router.dead_letters("subject").len(), 1);
    assert!(router.peek("local", "in").is_empty());
    let last_error = router.flow("subject")["last_error"].to_string();
    assert!(last_error.len() < 5000, "{} bytes", last_error.len());
    let log = router.log();
    assert!(log.len() < 1 << 20, "the log holds {} bytes", log.len());
}

#[test]
fn a_payload_near_the_broker_limit_is_dead_lettered_truncated() {
    // 48 KiB of binary grows by a third in base64: over the 64 KiB limit.
    let router = Router::start(&single_flow(
        "test/always_reject",
        "max_payload_bytes = 65536",
    ));
    let payload: Vec<u8> = (0..48 * 1024u32)
        .map(|i| (i * 7 % 251) as u8 | 0x80)
        .collect();
    let (status, body) = router.http(
        "POST",
        "/v1/messages",
        Some(json!({
            "topic": "in",
            "payload_base64": base64::engine::general_purpose::STANDARD.encode(&payload),
        })),
    );
    assert_eq!(status, 200, "{body}");
    let (_, listed) = wait_for("the dead letter", Duration::from_secs(60), || {
        let (s, b) = list(&router, None, "subject");
        (!entries(&b).is_empty()).then_some((s, b))
    });
    let d = &entries(&listed)[0];
    assert_eq!(d["status"], "verified", "{d}");
    let e = &d["envelope"];
    assert_eq!(e["payload_truncated"], true, "{e}");
    assert_eq!(e["payload_original_bytes"], payload.len(), "{e}");
    assert_eq!(
        e["payload_sha256"],
        hex::encode(sha2::Sha256::digest(&payload)),
        "{e}"
    );
    let kept = base64::engine::general_purpose::STANDARD
        .decode(e["payload"].as_str().unwrap())
        .unwrap();
    assert!(!kept.is_empty() && payload.starts_with(&kept));
    wait_topic_len(&router, "in", 0);
    // A truncated payload is not replayed as if it were the message.
    let (status, body) = replay(&router, None, "subject", json!({}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["replayed"].as_array().unwrap().len(), 0, "{body}");
    assert_eq!(body["skipped"].as_array().unwrap().len(), 1, "{body}");
}

#[test]
fn a_dead_letter_that_cannot_fit_at_all_drops_the_message_once() {
    // Even an empty envelope is over 400 bytes: the message cannot be
    // dead-lettered, and must not be redelivered for ever either.
    let router = Router::start(&single_flow(
        "test/always_reject",
        "max_payload_bytes = 400",
    ));
    send(&router, "in", "doomed");
    wait_for("the error", Duration::from_secs(60), || {
        router
            .log()
            .contains("its dead letter cannot be written")
            .then_some(())
    });
    wait_topic_len(&router, "in", 0);
    std::thread::sleep(Duration::from_secs(3));
    let log = router.log();
    assert_eq!(
        log.matches("its dead letter cannot be written").count(),
        1,
        "{log}"
    );
    assert!(router.peek("local", "dlq").is_empty());
    assert_eq!(router.flow("subject")["dropped"], 1);
}
