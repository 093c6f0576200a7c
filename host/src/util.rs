//! Small helpers shared by several modules.

use std::time::SystemTime;

/// RFC 3339 timestamp with milliseconds, UTC.
pub fn rfc3339_now() -> String {
    format_time(SystemTime::now())
}

/// RFC 3339 timestamp with milliseconds, UTC.
pub fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Serializes a `SystemTime` as RFC 3339.
pub mod rfc3339 {
    use std::time::SystemTime;

    /// For `#[serde(with)]`.
    pub fn serialize<S: serde::Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_time(*t))
    }
}

/// Serializes an `Option<SystemTime>` as RFC 3339 or null.
pub mod rfc3339_opt {
    use std::time::SystemTime;

    /// For `#[serde(with)]`.
    pub fn serialize<S: serde::Serializer>(
        t: &Option<SystemTime>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.serialize_str(&super::format_time(*t)),
            None => s.serialize_none(),
        }
    }
}
