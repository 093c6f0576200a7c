//! A hostile tenant, for the sandbox's resource and log tests. The payload
//! chooses the attack:
//!
//! - `AMPLIFY <mib> <times>`: publishes one buffer of `<mib>` MiB to `out`
//!   `<times>` times; outputs `published=N refused=M first_error=E`.
//! - `HEADERS`: publishes to `out` with a 10 MiB header value, 100,000
//!   headers, a 1 KiB header name, 65 headers and a reserved
//!   `eventflow-` header, then with 64 small headers; outputs one
//!   `case=result` line each.
//! - `FORGE`: logs a message with a forged log line after a newline and
//!   rejects with a reason that holds one too.
//! - `RANDOM <mib> <times>`: calls `wasi:random` `get-random-bytes` for
//!   `<mib>` MiB `<times>` times; outputs the number of bytes received.

use eventflow_sdk::publish::{self, PublishError};
use eventflow_sdk::{Failure, Guest, Message, log, reject};

/// The one `wasi:random` function the attack needs, imported directly.
mod wasi_random {
    wit_bindgen::generate!({
        inline: "
            package wasi:random@0.2.0;
            interface random {
                get-random-bytes: func(len: u64) -> list<u8>;
                get-random-u64: func() -> u64;
            }
            world hostile {
                import random;
            }
        ",
        world: "hostile",
    });
    pub use self::wasi::random::random::get_random_bytes;
}

/// The forged line an attacker wants in the router's log.
const FORGED: &str = "2026-01-01T00:00:00Z ERROR eventflow::run: FORGED";

struct Hostile;

fn result(r: Result<(), PublishError>) -> String {
    match r {
        Ok(()) => "ok".into(),
        Err(e) => format!("{e:?}"),
    }
}

fn numbers(words: &[&str]) -> Vec<u64> {
    words.iter().filter_map(|w| w.parse().ok()).collect()
}

impl Guest for Hostile {
    fn apply(msg: Message) -> Result<Option<Vec<u8>>, Failure> {
        let text = String::from_utf8_lossy(&msg.payload).into_owned();
        let words: Vec<&str> = text.split_whitespace().collect();
        match words.first().copied() {
            Some("AMPLIFY") => {
                let n = numbers(&words[1..]);
                let (mib, times) = (n.first().copied().unwrap_or(16), n.get(1).copied().unwrap_or(100));
                let buffer = vec![b'a'; (mib as usize) << 20];
                let (mut published, mut refused, mut first_error) = (0, 0, None);
                for _ in 0..times {
                    match publish::send("out", &buffer, &[]) {
                        Ok(()) => published += 1,
                        Err(e) => {
                            refused += 1;
                            first_error.get_or_insert(e);
                        }
                    }
                }
                let summary = format!(
                    "published={published} refused={refused} first_error={first_error:?}"
                );
                Ok(Some(summary.into_bytes()))
            }
            Some("HEADERS") => {
                let header = |name: String, value: String| (name, value);
                let cases: Vec<(&str, Vec<(String, String)>)> = vec![
                    ("huge_value", vec![header("big".into(), "v".repeat(10 << 20))]),
                    (
                        "many",
                        (0..100_000).map(|i| header(format!("h{i}"), "v".into())).collect(),
                    ),
                    ("long_name", vec![header("n".repeat(1024), "v".into())]),
                    (
                        "sixty_five",
                        (0..65).map(|i| header(format!("h{i}"), "v".into())).collect(),
                    ),
                    (
                        "reserved",
                        vec![header("Eventflow-Dead-Letter-Signature".into(), "forged".into())],
                    ),
                    (
                        "sixty_four",
                        (0..64).map(|i| header(format!("h{i}"), "v".repeat(100))).collect(),
                    ),
                ];
                let mut out = String::new();
                for (case, headers) in cases {
                    let r = publish::send("out", b"headers", &headers);
                    out.push_str(&format!("{case}={}\n", result(r)));
                }
                Ok(Some(out.into_bytes()))
            }
            Some("FORGE") => {
                log::log(log::Level::Warn, &format!("x\n{FORGED}"));
                log::log(log::Level::Info, &format!("ansi \x1b[2J\x1b[31m\r{FORGED}"));
                Err(reject(format!("because\n{FORGED}\r\n{FORGED}")))
            }
            Some("RANDOM") => {
                let n = numbers(&words[1..]);
                let (mib, times) = (n.first().copied().unwrap_or(64), n.get(1).copied().unwrap_or(1000));
                let mut total = 0u64;
                for _ in 0..times {
                    total += wasi_random::get_random_bytes(mib << 20).len() as u64;
                }
                Ok(Some(format!("random bytes={total}").into_bytes()))
            }
            _ => Err(reject(format!("unknown attack {text:?}"))),
        }
    }
}

eventflow_sdk::export_algorithm!(Hostile);
