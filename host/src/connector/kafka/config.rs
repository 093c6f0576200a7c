//! Configuration of Kafka and Event Hubs connections, and the client
//! properties they become.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::secret::{Secret, SecretRef};

/// `kind = "kafka"`: an Apache Kafka cluster (or anything that speaks its
/// protocol). A topic's `address` is the Kafka topic.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// The connection's name.
    pub name: String,
    /// `host:port[,host:port...]`.
    pub bootstrap_servers: String,
    /// `plaintext`, `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default)]
    pub security_protocol: SecurityProtocol,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`, with a SASL protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_mechanism: Option<String>,
    /// The SASL user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_username: Option<String>,
    /// The SASL password, as a secret reference; never inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl_password: Option<SecretRef>,
    /// CA certificates to trust for SSL (a file under `allowed_file_dir`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_ca_location: Option<PathBuf>,
    /// The only directory file-path properties may point into.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_file_dir: Option<PathBuf>,
    /// Extra librdkafka client properties, from an allowlist (see the
    /// README). Credentials and the settings that keep delivery
    /// at-least-once cannot be set here.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// The largest message produced, in bytes (the brokers'
    /// `message.max.bytes`).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

/// `kind = "eventhubs"`: an Azure Event Hubs namespace through its Kafka
/// endpoint. An event hub is a topic's `address`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventHubsConfig {
    /// The connection's name.
    pub name: String,
    /// The namespace connection string
    /// (`Endpoint=sb://NS.servicebus.windows.net/;SharedAccessKeyName=...;SharedAccessKey=...`),
    /// as a secret reference; never printed.
    pub connection_string: SecretRef,
    /// Extra client properties, from the same allowlist as Kafka's.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
    /// The largest message produced, in bytes (Event Hubs takes 1 MiB).
    #[serde(default = "default_max_message_bytes")]
    pub max_message_bytes: usize,
}

const fn default_max_message_bytes() -> usize {
    1_000_000
}

/// How the client talks to the brokers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SecurityProtocol {
    /// No encryption, no authentication.
    #[default]
    Plaintext,
    /// TLS.
    Ssl,
    /// SASL without TLS.
    SaslPlaintext,
    /// SASL over TLS.
    SaslSsl,
}

impl SecurityProtocol {
    fn librdkafka(self) -> &'static str {
        match self {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        }
    }

    fn is_sasl(self) -> bool {
        matches!(
            self,
            SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
        )
    }
}

/// Properties users may set. Everything else is refused: credentials have
/// their own (secret) fields, and the router owns the settings that make
/// delivery at-least-once (offset storing, commits, idempotence, acks).
const ALLOWED: &[&str] = &[
    "client.id",
    "client.rack",
    "socket.timeout.ms",
    "socket.keepalive.enable",
    "socket.connection.setup.timeout.ms",
    "metadata.max.age.ms",
    "topic.metadata.refresh.interval.ms",
    "reconnect.backoff.ms",
    "reconnect.backoff.max.ms",
    "request.timeout.ms",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "partition.assignment.strategy",
    "auto.offset.reset",
    "fetch.min.bytes",
    "fetch.wait.max.ms",
    "fetch.max.bytes",
    "max.partition.fetch.bytes",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "isolation.level",
    "linger.ms",
    "batch.size",
    "batch.num.messages",
    "compression.type",
    "message.timeout.ms",
    "statistics.interval.ms",
    "ssl.endpoint.identification.algorithm",
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.ca.location",
    "broker.address.family",
];

/// Properties whose value is a file path, which must stay inside
/// `allowed_file_dir`.
const FILE_PATHS: &[&str] = &[
    "ssl.certificate.location",
    "ssl.key.location",
    "ssl.ca.location",
];

/// Checks extra properties against the allowlist; errors name the field.
pub fn check_properties(
    properties: &BTreeMap<String, String>,
    allowed_dir: Option<&Path>,
) -> Result<(), (String, String)> {
    for (key, value) in properties {
        let field = format!("properties.{key:?}");
        if key == "sasl.jaas.config" {
            return Err((
                field,
                "not allowed: JAAS configuration would carry credentials inline; use sasl_mechanism, sasl_username and sasl_password".into(),
            ));
        }
        if !ALLOWED.contains(&key.as_str()) {
            return Err((
                field,
                "not on the allowlist of client properties (credentials have their own secret fields; offset, commit, idempotence and acks settings belong to the router)".into(),
            ));
        }
        if FILE_PATHS.contains(&key.as_str()) {
            check_path(Path::new(value), allowed_dir).map_err(|why| (field, why))?;
        }
    }
    Ok(())
}

fn check_path(path: &Path, allowed_dir: Option<&Path>) -> Result<(), String> {
    let Some(dir) = allowed_dir else {
        return Err(
            "file paths need allowed_file_dir, the only directory they may point into".into(),
        );
    };
    let escapes = path
        .components()
        .any(|c| matches!(c, std::path::Component::ParentDir));
    if escapes || !path.is_absolute() || !path.starts_with(dir) {
        return Err(format!(
            "{} is outside allowed_file_dir ({}); give an absolute path inside it",
            path.display(),
            dir.display()
        ));
    }
    Ok(())
}

impl KafkaConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(("bootstrap_servers".into(), "must not be empty".into()));
        }
        if self.security_protocol.is_sasl() {
            if self.sasl_mechanism.is_none() {
                return Err((
                    "sasl_mechanism".into(),
                    "required with a SASL security_protocol: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"
                        .into(),
                ));
            }
            if self.sasl_username.is_none() || self.sasl_password.is_none() {
                return Err((
                    "sasl_username".into(),
                    "a SASL security_protocol needs sasl_username and sasl_password".into(),
                ));
            }
        }
        if let Some(m) = &self.sasl_mechanism
            && !["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"].contains(&m.as_str())
        {
            return Err((
                "sasl_mechanism".into(),
                format!("{m:?}: use PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
            ));
        }
        if let Some(ca) = &self.ssl_ca_location {
            check_path(ca, self.allowed_file_dir.as_deref())
                .map_err(|why| ("ssl_ca_location".to_string(), why))?;
        }
        check_properties(&self.properties, self.allowed_file_dir.as_deref())
    }

    /// The client properties, with the password resolved.
    pub fn client_properties(&self, password: Option<&Secret>) -> Vec<(String, String)> {
        let mut out = vec![
            (
                "bootstrap.servers".to_string(),
                self.bootstrap_servers.clone(),
            ),
            (
                "security.protocol".to_string(),
                self.security_protocol.librdkafka().to_string(),
            ),
        ];
        if let Some(m) = &self.sasl_mechanism {
            out.push(("sasl.mechanism".into(), m.clone()));
        }
        if let Some(u) = &self.sasl_username {
            out.push(("sasl.username".into(), u.clone()));
        }
        if let Some(p) = password {
            out.push(("sasl.password".into(), p.expose().to_string()));
        }
        if let Some(ca) = &self.ssl_ca_location {
            out.push(("ssl.ca.location".into(), ca.display().to_string()));
        }
        out.extend(self.properties.iter().map(|(k, v)| (k.clone(), v.clone())));
        out
    }
}

impl EventHubsConfig {
    /// Checks what serde cannot.
    pub fn validate(&self) -> Result<(), (String, String)> {
        check_properties(&self.properties, None)
    }

    /// The client properties for the namespace's Kafka endpoint: port 9093,
    /// SASL_SSL, PLAIN, user `$ConnectionString`, the connection string as
    /// the password.
    pub fn client_properties(
        &self,
        connection_string: &Secret,
    ) -> Result<Vec<(String, String)>, String> {
        let parsed =
            crate::connector::azure::ConnectionString::parse(connection_string.expose())?.namespace;
        let mut out = vec![
            (
                "bootstrap.servers".to_string(),
                format!("{}.servicebus.windows.net:9093", parsed),
            ),
            ("security.protocol".to_string(), "sasl_ssl".to_string()),
            ("sasl.mechanism".to_string(), "PLAIN".to_string()),
            ("sasl.username".to_string(), "$ConnectionString".to_string()),
            (
                "sasl.password".to_string(),
                connection_string.expose().to_string(),
            ),
        ];
        out.extend(self.properties.iter().map(|(k, v)| (k.clone(), v.clone())));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_hubs_becomes_its_kafka_endpoint() {
        let c = EventHubsConfig {
            name: "eh".into(),
            connection_string: SecretRef::Env("X".into()),
            properties: BTreeMap::new(),
            max_message_bytes: default_max_message_bytes(),
        };
        let conn = Secret::new(
            "Endpoint=sb://orders.servicebus.windows.net/;SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey=abc=",
        );
        let props: BTreeMap<String, String> =
            c.client_properties(&conn).unwrap().into_iter().collect();
        assert_eq!(
            props["bootstrap.servers"],
            "orders.servicebus.windows.net:9093"
        );
        assert_eq!(props["security.protocol"], "sasl_ssl");
        assert_eq!(props["sasl.mechanism"], "PLAIN");
        assert_eq!(props["sasl.username"], "$ConnectionString");
        assert_eq!(props["sasl.password"], conn.expose());
        let bad = Secret::new("SharedAccessKeyName=x;SharedAccessKey=y");
        assert!(c.client_properties(&bad).unwrap_err().contains("Endpoint"));
    }

    #[test]
    fn the_property_allowlist_refuses_what_it_must() {
        let props = |k: &str, v: &str| BTreeMap::from([(k.to_string(), v.to_string())]);
        let jaas = check_properties(&props("sasl.jaas.config", "x"), None).unwrap_err();
        assert!(jaas.0.contains("sasl.jaas.config") && jaas.1.contains("not allowed"));
        assert!(check_properties(&props("enable.auto.offset.store", "true"), None).is_err());
        assert!(check_properties(&props("sasl.password", "p"), None).is_err());
        assert!(check_properties(&props("linger.ms", "5"), None).is_ok());
        let dir = Path::new("/etc/eventflow/kafka");
        assert!(
            check_properties(
                &props("ssl.ca.location", "/etc/eventflow/kafka/ca.pem"),
                Some(dir)
            )
            .is_ok()
        );
        assert!(check_properties(&props("ssl.ca.location", "/etc/passwd"), Some(dir)).is_err());
        assert!(
            check_properties(
                &props("ssl.ca.location", "/etc/eventflow/kafka/../../passwd"),
                Some(dir)
            )
            .is_err()
        );
        assert!(
            check_properties(
                &props("ssl.key.location", "/etc/eventflow/kafka/k.pem"),
                None
            )
            .is_err()
        );
    }

    #[test]
    fn sasl_needs_its_fields() {
        let c = KafkaConfig {
            name: "k".into(),
            bootstrap_servers: "b:9092".into(),
            security_protocol: SecurityProtocol::SaslSsl,
            sasl_mechanism: Some("SCRAM-SHA-512".into()),
            sasl_username: Some("u".into()),
            sasl_password: None,
            ssl_ca_location: None,
            allowed_file_dir: None,
            properties: BTreeMap::new(),
            max_message_bytes: 1,
        };
        assert!(c.validate().is_err());
        let c = KafkaConfig {
            sasl_password: Some(SecretRef::Env("P".into())),
            ..c
        };
        assert!(c.validate().is_ok());
        let props = c.client_properties(Some(&Secret::new("pw")));
        assert!(props.contains(&("sasl.password".into(), "pw".into())));
    }
}
