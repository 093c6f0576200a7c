//! What many tests do with a router beyond starting it: the usual
//! one-flow configuration, publishing keyed messages, installing plugin
//! versions, reading plugins, headers and readiness, and waiting for dead
//! letters.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Router, http, wait_for};

/// Topics `<name>-in`, `<name>-out` and `<name>-dlq` (granted to
/// `test/<name>`), and flow `name` of `algorithm` on them, with `extra`
/// lines in its table.
pub fn named_flow(name: &str, algorithm: &str, extra: &str) -> String {
    format!(
        r#"
[[topics]]
name = "{name}-in"
consumers = ["test/{name}"]

[[topics]]
name = "{name}-out"
publishers = ["test/{name}"]

[[topics]]
name = "{name}-dlq"
publishers = ["test/{name}"]

[[flows]]
name = "{name}"
topic = "{name}-in"
algorithm = "{algorithm}"
output_topic = "{name}-out"
dead_letter_topic = "{name}-dlq"
{extra}
"#
    )
}

/// The embedded broker `local` most tests use.
pub const EMBEDDED_BROKER: &str = "[[brokers]]\nname = \"local\"\nkind = \"embedded\"\n";

/// On the embedded broker `local`: topics `in` (consumed by `algorithm`),
/// `out` (published to by it) and `dlq`, and flow `flow` of `algorithm`
/// from `in` to `out`, dead-lettering to `dlq`, with `flow_extra` lines in
/// its table. `algorithm` may carry a version (`test/swap/0.1.0`); the
/// grants name the algorithm without it.
pub fn one_flow(flow: &str, algorithm: &str, flow_extra: &str) -> String {
    let granted = algorithm
        .splitn(3, '/')
        .take(2)
        .collect::<Vec<_>>()
        .join("/");
    format!(
        r#"{EMBEDDED_BROKER}
[[topics]]
name = "in"
consumers = ["{granted}"]

[[topics]]
name = "out"
publishers = ["{granted}"]

[[topics]]
name = "dlq"

[[flows]]
name = "{flow}"
topic = "in"
algorithm = "{algorithm}"
output_topic = "out"
dead_letter_topic = "dlq"
{flow_extra}
"#
    )
}

/// The value of header `key` of a message as the API lists it.
pub fn header<'a>(message: &'a Value, key: &str) -> Option<&'a str> {
    message["headers"]
        .as_array()?
        .iter()
        .find(|h| h[0] == key)
        .and_then(|h| h[1].as_str())
}

impl Router {
    /// The admin API's base URL (`http://127.0.0.1:PORT`).
    pub fn admin_url(&self) -> String {
        let addr = std::fs::read_to_string(self.state_dir().join("admin.addr")).unwrap();
        format!("http://{}", addr.trim())
    }

    /// The admin token.
    pub fn admin_token(&self) -> String {
        let token = std::fs::read_to_string(self.state_dir().join("admin.token")).unwrap();
        token.trim().to_string()
    }

    /// `GET /readyz`, which takes no token.
    pub fn ready(&self) -> (u16, Value) {
        http("GET", &format!("{}/readyz", self.admin_url()), None, None)
    }

    /// Publishes `messages` (objects of the API: `payload`, `key`,
    /// `headers`, ...) to `topic` in one request, in order.
    pub fn send(&self, topic: &str, messages: Vec<Value>) {
        let (status, body) = self.http(
            "POST",
            "/v1/messages",
            Some(json!({ "topic": topic, "messages": messages })),
        );
        assert_eq!(status, 200, "publish to {topic} failed: {body}");
    }

    /// One version as `GET /v1/plugins` lists it (`owner/name/version`).
    pub fn plugin(&self, algorithm: &str) -> Value {
        self.listed("/v1/plugins", "plugins", "algorithm", algorithm)
    }

    /// Installs `(owner, name)`'s component as `test/<alg>/<version>` (a
    /// tagged variant, so each version has its own hash).
    pub fn deploy(&self, alg: &str, version: &str, owner: &str, name: &str) {
        let bytes = std::fs::read(super::plugin_file(owner, name)).unwrap();
        self.install(
            &format!("test/{alg}"),
            version,
            &super::variant(&bytes, version),
        );
    }

    /// Installs `bytes` as version `version` of `algorithm` (`owner/name`)
    /// in the router's plugin directory, in one rename, as a careful
    /// deployment does (the directory must be the router's own:
    /// [`super::Plugins::Copy`] or [`super::Plugins::Guest`]).
    pub fn install(&self, algorithm: &str, version: &str, bytes: &[u8]) {
        install_in(&self.plugins_dir().join(algorithm), version, bytes);
    }

    /// Waits until flow `flow` has at least `n` dead letters; returns them.
    pub fn wait_dead_letters(&self, flow: &str, n: usize, timeout: Duration) -> Vec<Value> {
        wait_for(&format!("{n} dead letters of {flow}"), timeout, || {
            let letters = self.dead_letters(flow);
            (letters.len() >= n).then_some(letters)
        })
    }
}

/// Writes `bytes` as `<dir>/<version>.wasm` in one rename.
pub fn install_in(dir: &Path, version: &str, bytes: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    let tmp = dir.join(format!(".{version}.tmp"));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(tmp, dir.join(format!("{version}.wasm"))).unwrap();
}

/// Messages `(key, body)` for the `test/slow` algorithm that show order by
/// key: a slow key "a" first, whose earlier messages sleep longer still
/// (3, 2 and 1 × `slow_ms`, so without the per-key wait a later one
/// finishes first), then quick messages of keys "b" and "c", interleaved,
/// earlier ones slower too (200 to 50 ms).
pub fn slow_key_first(slow_ms: u64) -> Vec<(String, String)> {
    let mut messages = Vec::new();
    for round in 0..3u64 {
        let body = format!(
            r#"{{"id": "a{round}", "sleep_ms": {}}}"#,
            (3 - round) * slow_ms
        );
        messages.push(("a".to_string(), body));
    }
    for round in 0..4 {
        for key in ["b", "c"] {
            let body = format!(
                r#"{{"id": "{key}{round}", "sleep_ms": {}}}"#,
                (4 - round) * 50
            );
            messages.push((key.to_string(), body));
        }
    }
    messages
}

/// Asserts, of the output ids of [`slow_key_first`] in output order, that
/// every key's come out in input order and that the quick keys did not
/// wait for the slow key's first message (in one queue's or partition's
/// order, nothing could pass it).
pub fn assert_slow_key_held_back_only_itself(ids: &[String]) {
    assert_eq!(ids.len(), 11, "{ids:?}");
    for (key, rounds) in [("a", 3), ("b", 4), ("c", 4)] {
        let of_key: Vec<&String> = ids.iter().filter(|i| i.starts_with(key)).collect();
        let expected: Vec<String> = (0..rounds).map(|r| format!("{key}{r}")).collect();
        assert_eq!(
            of_key,
            expected.iter().collect::<Vec<_>>(),
            "key {key}: {ids:?}"
        );
    }
    let a0 = ids.iter().position(|i| i == "a0").unwrap();
    assert!(a0 >= 8, "the slow key held back the others: {ids:?}");
}
