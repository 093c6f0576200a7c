//! Names of things and references to algorithms and topics: what a name may
//! be, and how a refused one is shown.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// `owner/name` or `owner/name/version`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AlgorithmRef {
    /// The owner (user or organization).
    pub owner: String,
    /// The algorithm's name.
    pub name: String,
    /// A pinned version; `None` follows the highest version loaded.
    pub version: Option<semver::Version>,
}

impl AlgorithmRef {
    /// `owner/name`, without the version.
    pub fn unversioned(&self) -> String {
        format!("{}/{}", self.owner, self.name)
    }
}

impl fmt::Display for AlgorithmRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.version {
            Some(v) => write!(f, "{}/{}/{}", self.owner, self.name, v),
            None => write!(f, "{}/{}", self.owner, self.name),
        }
    }
}

/// The longest name of anything (owner, algorithm, topic, broker connection,
/// flow, token id), in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// Whether `s` can be the name of an owner, algorithm, collection, topic,
/// broker connection, flow, router secret or token: 1 to 128 of ASCII letters,
/// digits, `_`, `-` and `.`, and neither `.` nor `..`. Names become path
/// segments, file names and URL segments, so nothing else is allowed.
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_BYTES
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
}

/// Checks a name with [`is_valid_name`]; the error says what a name may be
/// and shows the name escaped and shortened (it may hold control characters
/// or be very long).
pub fn check_name(s: &str) -> Result<(), String> {
    if is_valid_name(s) {
        Ok(())
    } else {
        Err(format!(
            "{} is not a valid name: use 1 to {MAX_NAME_BYTES} letters, digits, '_', '-' and '.' (not \".\" or \"..\")",
            quote_name(s)
        ))
    }
}

/// Whether `s` can be the name of an algorithm's secret, which the algorithm
/// sees as an environment variable: letters, digits and `_`, not starting
/// with a digit, at most 128 bytes.
pub fn is_valid_variable(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_BYTES
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `s` quoted with control characters escaped, cut to 64 characters: for
/// showing a refused name in an error.
pub fn quote_name(s: &str) -> String {
    const SHOWN: usize = 64;
    if s.chars().count() > SHOWN {
        let head: String = s.chars().take(SHOWN).collect();
        format!("{head:?}... ({} bytes)", s.len())
    } else {
        format!("{s:?}")
    }
}

/// Checks a reference to a topic: `name`, or `broker:name` for a topic of
/// another broker connection.
pub fn check_topic_reference(s: &str) -> Result<(), String> {
    match s.split_once(':') {
        Some((broker, name)) => check_name(broker).and_then(|()| check_name(name)),
        None => check_name(s),
    }
}

impl FromStr for AlgorithmRef {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let (owner, name, version) = match parts.as_slice() {
            [owner, name] => (*owner, *name, None),
            [owner, name, version] => (*owner, *name, Some(*version)),
            _ => {
                return Err(format!(
                    "\"{s}\" is not an algorithm reference: expected owner/name or owner/name/version"
                ));
            }
        };
        for (what, value) in [("owner", owner), ("name", name)] {
            if !is_valid_name(value) {
                return Err(format!(
                    "{}: the {what} {} may only use letters, digits, '_', '-' and '.' (1 to {MAX_NAME_BYTES}, not \".\" or \"..\")",
                    quote_name(s),
                    quote_name(value)
                ));
            }
        }
        let version = version
            .map(|v| {
                semver::Version::parse(v)
                    .map_err(|e| format!("\"{s}\": \"{v}\" is not a semver version: {e}"))
            })
            .transpose()?;
        Ok(Self {
            owner: owner.into(),
            name: name.into(),
            version,
        })
    }
}

impl<'de> Deserialize<'de> for AlgorithmRef {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for AlgorithmRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}
