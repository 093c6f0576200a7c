//! The dead-letter envelope: the original message and why it failed, signed
//! by the router that wrote it.
//!
//! Documented in the README; its fields are a contract with whoever reads
//! dead-letter topics, so change them only by adding.
//!
//! Dead letters are the router's to write. Every envelope the router
//! publishes carries [`SIGNATURE_HEADER`], an HMAC-SHA256 of the envelope's
//! bytes under the router's [`DeadLetterKey`]; whatever else lands on a
//! dead-letter topic (an algorithm granted `dead_letter_publishers`, another
//! router with another key) reads back as unverified.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use anyhow::Context as _;
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use crate::message::{Header, InboundMessage, OutboundMessage};
use crate::sandbox::cap_detail;
use crate::state::FailureRecord;

/// The envelope's format version.
pub const VERSION: u32 = 1;
/// Header carrying the failure reason code on dead letters.
pub const REASON_HEADER: &str = "eventflow-dead-letter-reason";
/// Header carrying the hex HMAC-SHA256 of the envelope bytes under the
/// router's dead-letter key.
pub const SIGNATURE_HEADER: &str = "eventflow-dead-letter-signature";
/// The key file in the state directory.
pub const KEY_FILE: &str = "dead-letter.key";

/// Where the message came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceInfo {
    /// The broker connection.
    pub broker: String,
    /// Its kind (embedded, kafka, ...).
    pub kind: String,
    /// The topic, by its configured name.
    pub topic: String,
    /// The broker's message id.
    pub message_id: String,
}

/// A dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Always [`VERSION`].
    pub eventflow_dead_letter: u32,
    /// The flow that gave up.
    pub flow: String,
    /// Where the message came from.
    pub source: SourceInfo,
    /// `owner/name@version` that handled the last attempt.
    pub algorithm: String,
    /// SHA-256 of that component.
    pub component_hash: String,
    /// Deliveries of the message, this last one included.
    pub attempts: u32,
    /// The first failure the router recorded (absent when earlier attempts
    /// were handled by another router, or their router died mid-attempt).
    pub first_failure: Option<FailureRecord>,
    /// The failure that ended it.
    pub last_failure: FailureRecord,
    /// The payload: UTF-8 text as is, anything else base64.
    pub payload: String,
    /// `utf8` or `base64`.
    pub payload_encoding: String,
    /// The original headers, in order.
    pub headers: Vec<Header>,
    /// When the broker accepted the message, RFC 3339, where it says.
    pub enqueued_at: Option<String>,
    /// When it was dead-lettered, RFC 3339.
    pub dead_lettered_at: String,
    /// True when the whole envelope did not fit the dead-letter topic's
    /// message size limit and `payload` holds only the payload's beginning.
    #[serde(default, skip_serializing_if = "is_false")]
    pub payload_truncated: bool,
    /// With `payload_truncated`: the original payload's size in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_original_bytes: Option<u64>,
    /// With `payload_truncated`: the SHA-256 of the original payload, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload_sha256: Option<String>,
    /// True when the original headers were left out to make the envelope fit.
    #[serde(default, skip_serializing_if = "is_false")]
    pub headers_truncated: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Envelope {
    /// Wraps a message that failed for good. Failure details are capped
    /// (they already are when they come from this router's sandbox; records
    /// in an older journal may not be).
    pub fn new(
        flow: &str,
        source: SourceInfo,
        message: &InboundMessage,
        algorithm: (String, String),
        first_failure: Option<FailureRecord>,
        last_failure: FailureRecord,
    ) -> Self {
        let (payload, payload_encoding) = encode(&message.payload);
        let cap = |mut r: FailureRecord| {
            r.detail = cap_detail(r.detail);
            r
        };
        Self {
            eventflow_dead_letter: VERSION,
            flow: flow.to_string(),
            source,
            algorithm: algorithm.0,
            component_hash: algorithm.1,
            attempts: message.attempt,
            first_failure: first_failure.map(cap),
            last_failure: cap(last_failure),
            payload,
            payload_encoding: payload_encoding.to_string(),
            headers: message.headers.clone(),
            enqueued_at: message.enqueued_at.map(crate::util::format_time),
            dead_lettered_at: crate::util::rfc3339_now(),
            payload_truncated: false,
            payload_original_bytes: None,
            payload_sha256: None,
            headers_truncated: false,
        }
    }

    /// The envelope as a message for the dead-letter topic, signed with `key`.
    pub fn to_message(&self, key: &DeadLetterKey) -> OutboundMessage {
        let payload = serde_json::to_vec(self).expect("an envelope always serializes");
        OutboundMessage {
            headers: vec![
                ("content-type".into(), "application/json".into()),
                (REASON_HEADER.into(), self.last_failure.reason.clone()),
                ("eventflow-flow".into(), self.flow.clone()),
                (SIGNATURE_HEADER.into(), key.sign(&payload)),
            ],
            payload,
        }
    }

    /// A copy whose serialized form is at most `budget` bytes: the payload
    /// cut to its beginning (at a character boundary for text) and marked
    /// with `payload_truncated`, the original size and SHA-256; the original
    /// headers left out too when even an empty payload does not fit.
    /// `original` is the message's payload. `None` when nothing fits.
    pub fn truncated(&self, original: &[u8], budget: usize) -> Option<Envelope> {
        let mut e = self.clone();
        e.payload_truncated = true;
        e.payload_original_bytes = Some(original.len() as u64);
        e.payload_sha256 = Some(hex::encode(Sha256::digest(original)));
        e.payload = String::new();
        let size = |e: &Envelope| serde_json::to_vec(e).map(|v| v.len()).unwrap_or(usize::MAX);
        let mut base = size(&e);
        if base > budget {
            e.headers = Vec::new();
            e.headers_truncated = true;
            base = size(&e);
            if base > budget {
                return None;
            }
        }
        let text = std::str::from_utf8(original).ok();
        // Every payload byte takes at least one byte of JSON, so this is an
        // upper bound; shrink in proportion to the JSON the kept bytes took
        // until it fits (a round or two for base64 or escaped text).
        let room = budget - base;
        let mut n = room.min(original.len());
        loop {
            match text {
                Some(t) => {
                    while !t.is_char_boundary(n) {
                        n -= 1;
                    }
                    e.payload = t[..n].to_string();
                    e.payload_encoding = "utf8".into();
                }
                None => {
                    e.payload = base64::engine::general_purpose::STANDARD.encode(&original[..n]);
                    e.payload_encoding = "base64".into();
                }
            }
            let s = size(&e);
            if s <= budget {
                return Some(e);
            }
            if n == 0 {
                return None;
            }
            let scaled = (n as u128 * room as u128 / (s - base).max(1) as u128) as usize;
            n = scaled.min(n - 1);
        }
    }

    /// The original payload.
    pub fn original_payload(&self) -> anyhow::Result<Vec<u8>> {
        match self.payload_encoding.as_str() {
            "utf8" => Ok(self.payload.clone().into_bytes()),
            "base64" => Ok(base64::engine::general_purpose::STANDARD.decode(&self.payload)?),
            other => anyhow::bail!("unknown payload_encoding {other:?}"),
        }
    }

    /// The `owner` and `name` of [`Envelope::algorithm`] (`owner/name@version`).
    pub fn algorithm_owner_name(&self) -> Option<(&str, &str)> {
        let unversioned = self
            .algorithm
            .split_once('@')
            .map_or(self.algorithm.as_str(), |(a, _)| a);
        unversioned.split_once('/')
    }
}

fn encode(payload: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(payload) {
        Ok(text) => (text.to_string(), "utf8"),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(payload),
            "base64",
        ),
    }
}

/// A message read back from a dead-letter topic that parses as an envelope.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    /// The dead letter's own id on its topic.
    pub id: String,
    /// The envelope, parsed.
    pub envelope: Envelope,
    /// The envelope as published, with any fields this version does not know.
    pub raw: serde_json::Value,
    /// Whether it carries a valid signature of this router's key: written by
    /// the router, not by anything else that may publish to the topic.
    pub verified: bool,
}

impl DeadLetter {
    /// Reads one message of a dead-letter topic; `None` when it is not an
    /// envelope at all.
    pub fn read(message: &InboundMessage, key: &DeadLetterKey) -> Option<Self> {
        let envelope: Envelope = serde_json::from_slice(&message.payload).ok()?;
        let raw = serde_json::from_slice(&message.payload).ok()?;
        let verified = message
            .header(SIGNATURE_HEADER)
            .is_some_and(|s| key.verify(&message.payload, s));
        Some(Self {
            id: message.id.clone(),
            envelope,
            raw,
            verified,
        })
    }
}

/// The router's key for signing the dead letters it writes: 32 random bytes
/// in `<state_dir>/dead-letter.key` (mode 0600), created at first start.
/// Routers that share dead-letter topics need the same key file to verify
/// each other's dead letters.
#[derive(Clone)]
pub struct DeadLetterKey([u8; 32]);

impl std::fmt::Debug for DeadLetterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeadLetterKey(***)")
    }
}

impl DeadLetterKey {
    /// A key from its bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// Reads the key file of `state_dir`, creating it (mode 0600) when it
    /// does not exist.
    pub fn load_or_create(state_dir: &Path) -> anyhow::Result<Self> {
        let path = state_dir.join(KEY_FILE);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
        {
            Ok(mut file) => {
                let bytes: [u8; 32] = rand::random();
                file.write_all(&bytes)
                    .and_then(|_| file.sync_all())
                    .with_context(|| {
                        format!("cannot write the dead-letter key {}", path.display())
                    })?;
                tracing::info!(path = %path.display(), "Created the dead-letter signing key.");
                Ok(Self(bytes))
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let bytes = std::fs::read(&path).with_context(|| {
                    format!("cannot read the dead-letter key {}", path.display())
                })?;
                let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
                    anyhow::anyhow!(
                        "the dead-letter key {} is {} bytes, not 32: restore it from a backup (or from a router that shares the dead-letter topics), or remove it to create a new one (dead letters signed with the old key then list as unverified)",
                        path.display(),
                        bytes.len()
                    )
                })?;
                if let Ok(meta) = std::fs::metadata(&path)
                    && meta.permissions().mode() & 0o077 != 0
                {
                    tracing::warn!(
                        path = %path.display(),
                        mode = %format!("{:o}", meta.permissions().mode() & 0o777),
                        "The dead-letter key is readable by others than its owner: whoever reads it can forge dead letters (chmod 600)."
                    );
                }
                Ok(Self(bytes))
            }
            Err(e) => Err(e)
                .with_context(|| format!("cannot create the dead-letter key {}", path.display())),
        }
    }

    fn mac(&self) -> Hmac<Sha256> {
        Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes a key of any length")
    }

    /// The signature of `bytes`: hex HMAC-SHA256.
    pub fn sign(&self, bytes: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(bytes);
        hex::encode(mac.finalize().into_bytes())
    }

    /// Whether `signature` is this key's signature of `bytes` (compared in
    /// constant time).
    pub fn verify(&self, bytes: &[u8], signature: &str) -> bool {
        let Ok(tag) = hex::decode(signature.trim()) else {
            return false;
        };
        let mut mac = self.mac();
        mac.update(bytes);
        mac.verify_slice(&tag).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn record() -> FailureRecord {
        FailureRecord {
            reason: "trap".into(),
            detail: "boom".into(),
            attempt: 1,
            at: "2026-01-01T00:00:00.000Z".into(),
            algorithm: "a/b@1.0.0#0123".into(),
        }
    }

    fn message(payload: Vec<u8>) -> InboundMessage {
        InboundMessage {
            id: "m1".into(),
            topic: "t".into(),
            payload,
            headers: vec![("k".into(), "v".into())],
            attempt: 3,
            enqueued_at: None,
            undecodable: None,
        }
    }

    fn envelope(m: &InboundMessage) -> Envelope {
        let source = SourceInfo {
            broker: "b".into(),
            kind: "embedded".into(),
            topic: "t".into(),
            message_id: "m1".into(),
        };
        Envelope::new(
            "f",
            source,
            m,
            ("a/b@1.0.0".into(), "h".into()),
            None,
            record(),
        )
    }

    fn key() -> DeadLetterKey {
        DeadLetterKey::from_bytes([7; 32])
    }

    fn inbound(out: &OutboundMessage) -> InboundMessage {
        InboundMessage {
            payload: out.payload.clone(),
            headers: out.headers.clone(),
            ..message(Vec::new())
        }
    }

    #[test]
    fn binary_payloads_round_trip_as_base64() {
        let m = message(vec![0xff, 0x00, 0x80]);
        let e = envelope(&m);
        assert_eq!(e.payload_encoding, "base64");
        let out = e.to_message(&key());
        let back: Envelope = serde_json::from_slice(&out.payload).unwrap();
        assert_eq!(back.original_payload().unwrap(), m.payload);
        assert_eq!(back.attempts, 3);
        assert_eq!(
            crate::message::header(&out.headers, REASON_HEADER),
            Some("trap")
        );
        assert_eq!(back.algorithm_owner_name(), Some(("a", "b")));
    }

    #[test]
    fn only_the_routers_own_signature_verifies() {
        let out = envelope(&message(b"hello".to_vec())).to_message(&key());
        assert!(DeadLetter::read(&inbound(&out), &key()).unwrap().verified);
        let other = DeadLetterKey::from_bytes([8; 32]);
        assert!(!DeadLetter::read(&inbound(&out), &other).unwrap().verified);
        // A changed byte, or no signature at all, does not verify either.
        let mut forged = inbound(&out);
        let at = forged.payload.len() - 3;
        forged.payload[at] ^= 1;
        assert!(!DeadLetter::read(&forged, &key()).is_some_and(|d| d.verified));
        let mut unsigned = inbound(&out);
        unsigned.headers.retain(|(k, _)| k != SIGNATURE_HEADER);
        assert!(!DeadLetter::read(&unsigned, &key()).unwrap().verified);
        // Something that is not an envelope is not a dead letter.
        assert!(DeadLetter::read(&message(b"{}".to_vec()), &key()).is_none());
    }

    #[test]
    fn truncation_fits_the_budget_and_marks_the_original() {
        for payload in [
            vec![b'a'; 300_000],
            "é\"\n".repeat(100_000).into_bytes(),
            (0..300_000u32)
                .map(|i| (i % 251) as u8)
                .collect::<Vec<u8>>(),
        ] {
            let m = message(payload.clone());
            let e = envelope(&m);
            let budget = 64 * 1024;
            let t = e.truncated(&payload, budget).expect("fits");
            let bytes = serde_json::to_vec(&t).unwrap();
            assert!(bytes.len() <= budget, "{} > {budget}", bytes.len());
            assert!(bytes.len() > budget - 1024, "wasteful: {}", bytes.len());
            let back: Envelope = serde_json::from_slice(&bytes).unwrap();
            assert!(back.payload_truncated);
            assert_eq!(back.payload_original_bytes, Some(payload.len() as u64));
            assert_eq!(
                back.payload_sha256.as_deref(),
                Some(hex::encode(Sha256::digest(&payload)).as_str())
            );
            let kept = back.original_payload().unwrap();
            assert!(payload.starts_with(&kept) && !kept.is_empty());
        }
    }

    #[test]
    fn huge_headers_are_left_out_and_nothing_fits_in_nothing() {
        let mut m = message(b"x".repeat(10));
        m.headers = vec![("big".into(), "v".repeat(100_000))];
        let e = envelope(&m);
        let t = e
            .truncated(&m.payload, 8 * 1024)
            .expect("fits without headers");
        assert!(t.headers_truncated && t.headers.is_empty());
        assert!(e.truncated(&m.payload, 100).is_none());
    }

    #[test]
    fn the_key_file_is_created_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = DeadLetterKey::load_or_create(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = DeadLetterKey::load_or_create(dir.path()).unwrap();
        assert_eq!(a.sign(b"x"), b.sign(b"x"));
        std::fs::write(dir.path().join(KEY_FILE), b"short").unwrap();
        let e = DeadLetterKey::load_or_create(dir.path()).unwrap_err();
        assert!(
            format!("{e:#}").contains("dead-letter.key is 5 bytes"),
            "{e:#}"
        );
    }
}
