//! Azure namespace connection strings, shared by Service Bus and Event Hubs.

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
