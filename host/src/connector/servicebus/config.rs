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

    /// Resolves the connection string and parses it, without sending
    /// anything: a missing `Endpoint`, `SharedAccessKeyName` or
    /// `SharedAccessKey`, a malformed part, or a reference that does not
    /// resolve is named here, when the connection is created, instead of
    /// failing its connect. The error never holds the key.
    pub fn check_connection_string(
        &self,
        state: Option<&crate::state::StateStore>,
    ) -> Result<(), (String, String)> {
        let field = || "connection_string".to_string();
        let raw = self
            .connection_string
            .resolve(state)
            .map_err(|e| (field(), format!("{e:#}")))?;
        ConnectionString::parse(raw.expose())
            .map(|_| ())
            .map_err(|why| (field(), why))
    }
}

pub use crate::connector::azure::ConnectionString;

#[cfg(test)]
mod tests {
    use super::*;

    fn with(connection_string: &str) -> ServiceBusConfig {
        ServiceBusConfig {
            name: "sb".into(),
            connection_string: SecretRef::Value(connection_string.into()),
            endpoint: None,
            receivers: default_receivers(),
            receive_wait_secs: default_receive_wait_secs(),
            request_timeout_secs: default_request_timeout_secs(),
        }
    }

    #[test]
    fn a_malformed_connection_string_names_the_part_without_the_key() {
        let good =
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey=k3y";
        assert_eq!(with(good).check_connection_string(None), Ok(()));
        for (bad, part) in [
            (
                "SharedAccessKeyName=Root;SharedAccessKey=k3y",
                "no Endpoint",
            ),
            (
                "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKey=k3y",
                "no SharedAccessKeyName",
            ),
            (
                "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=Root",
                "no SharedAccessKey",
            ),
            (
                "Endpoint=https://ns.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey=k3y",
                "sb://",
            ),
            ("k3y", "not Key=Value"),
        ] {
            let (field, why) = with(bad).check_connection_string(None).unwrap_err();
            assert_eq!(field, "connection_string");
            assert!(why.contains(part), "{bad}: {why}");
            assert!(!why.contains("k3y"), "{bad}: the key leaks: {why}");
        }
        let unset = ServiceBusConfig {
            connection_string: SecretRef::Env("EVENTFLOW_TEST_UNSET_VARIABLE".into()),
            ..with(good)
        };
        let (_, why) = unset.check_connection_string(None).unwrap_err();
        assert!(why.contains("EVENTFLOW_TEST_UNSET_VARIABLE"), "{why}");
    }
}
