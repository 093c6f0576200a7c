//! Configuration of an Azure Service Bus connection.

use serde::{Deserialize, Serialize};

use crate::secret::SecretRef;

/// `kind = "servicebus"`: queues of one Service Bus namespace, configured
/// with the namespace connection string, as the platform's "Connect broker"
/// form asks. A topic's `address` is its queue name.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceBusConfig {
    /// The connection's name.
    pub name: String,
    /// `Endpoint=sb://NS.servicebus.windows.net/;SharedAccessKeyName=...;SharedAccessKey=...`,
    /// as a secret reference; never printed.
    pub connection_string: SecretRef,
    /// Send requests here instead of `https://NS.servicebus.windows.net`
    /// (a local server, a private endpoint), e.g. `http://127.0.0.1:9354`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Peek-lock receives in flight per flow.
    #[serde(default = "default_receivers")]
    pub receivers: u32,
    /// How long one peek-lock waits on the server for a message, in seconds.
    #[serde(default = "default_receive_wait_secs")]
    pub receive_wait_secs: u64,
    /// How long any one HTTP request may take beyond that wait, in seconds.
    #[serde(default = "default_request_timeout_secs")]
    pub request_timeout_secs: u64,
}

const fn default_receivers() -> u32 {
    2
}
const fn default_receive_wait_secs() -> u64 {
    5
}
const fn default_request_timeout_secs() -> u64 {
    30
}

impl ServiceBusConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.receivers == 0 || self.receivers > 32 {
            return Err(("receivers".into(), "must be between 1 and 32".into()));
        }
        if self.receive_wait_secs > 230 {
            return Err(("receive_wait_secs".into(), "must be at most 230".into()));
        }
        if let Some(e) = &self.endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            return Err(("endpoint".into(), format!("{e:?} is not an http(s) URL")));
        }
        Ok(())
    }
}

/// The parts of a namespace connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionString {
    /// `NS` of `sb://NS.servicebus.windows.net/`.
    pub namespace: String,
    /// The shared access policy.
    pub key_name: String,
    /// The key.
    pub key: crate::secret::Secret,
}

impl ConnectionString {
    /// Parses `Endpoint=...;SharedAccessKeyName=...;SharedAccessKey=...`.
    /// Errors name the missing part and never include the key.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut endpoint = None;
        let mut key_name = None;
        let mut key = None;
        for part in s.split(';').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((k, v)) = part.split_once('=') else {
                return Err("a part of the connection string is not Key=Value".into());
            };
            match k.to_ascii_lowercase().as_str() {
                "endpoint" => endpoint = Some(v.to_string()),
                "sharedaccesskeyname" => key_name = Some(v.to_string()),
                "sharedaccesskey" => key = Some(v.to_string()),
                _ => {}
            }
        }
        let endpoint = endpoint.ok_or("the connection string has no Endpoint")?;
        let host = endpoint
            .strip_prefix("sb://")
            .ok_or("Endpoint must start with sb://")?
            .trim_end_matches('/');
        let namespace = host
            .split('.')
            .next()
            .filter(|n| !n.is_empty())
            .ok_or("Endpoint has no namespace")?
            .to_string();
        let key_name = key_name
            .filter(|k| !k.is_empty())
            .ok_or("the connection string has no SharedAccessKeyName")?;
        let key = key
            .filter(|k| !k.is_empty())
            .ok_or("the connection string has no SharedAccessKey")?;
        Ok(Self {
            namespace,
            key_name,
            key: crate::secret::Secret::new(key),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_connection_string_parses_and_errors_name_the_missing_part() {
        let c = ConnectionString::parse(
            "Endpoint=sb://orders.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey=abc=",
        )
        .unwrap();
        assert_eq!(c.namespace, "orders");
        assert_eq!(c.key_name, "Root");
        assert_eq!(c.key.expose(), "abc=");
        let e = ConnectionString::parse(
            "Endpoint=sb://x.servicebus.windows.net/;SharedAccessKeyName=R",
        )
        .unwrap_err();
        assert!(e.contains("SharedAccessKey"), "{e}");
        let e = ConnectionString::parse("SharedAccessKeyName=R;SharedAccessKey=secretvalue")
            .unwrap_err();
        assert!(e.contains("Endpoint") && !e.contains("secretvalue"), "{e}");
        let e =
            ConnectionString::parse("Endpoint=sb://x.servicebus.windows.net/;SharedAccessKey=k")
                .unwrap_err();
        assert!(e.contains("SharedAccessKeyName"), "{e}");
    }
}
