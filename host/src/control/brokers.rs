//! Broker connections: create (inline credentials become router
//! secrets), list and show redacted, delete.

use serde_json::Value;

use super::{Action, ControlError, ControlPlane, Role};
use crate::api;
use crate::config::{self, FlowSpec};
use crate::connector::BrokerSpec;
use crate::secret::{ROUTER_SECRETS, SecretRef};

impl ControlPlane {
    /// Creates a broker connection. Inline credentials (`{"value": ...}`)
    /// are stored as router secrets and replaced by references.
    pub async fn create_broker(
        &self,
        role: &Role,
        mut spec: Value,
    ) -> Result<api::Broker, ControlError> {
        role.authorize(Action::CreateBroker)?;
        let name = spec
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| ControlError::BadRequest("name: missing".into()))?
            .to_string();
        config::check_name(&name).map_err(|m| ControlError::BadRequest(format!("name: {m}")))?;
        if self.declarations().brokers.iter().any(|b| b.name() == name) {
            return Err(ControlError::Conflict(format!(
                "a broker connection named {name:?} exists; connections are never edited: create one under a new name and delete the old one"
            )));
        }
        // The credentials are checked as given (inline values included),
        // before anything is stored or opened, so a malformed one is a 400
        // that names the part, not a failed connect.
        let given: BrokerSpec = serde_json::from_value(spec.clone())
            .map_err(|e| ControlError::BadRequest(format!("broker connection: {e}")))?;
        given
            .validate()
            .map_err(|(field, m)| ControlError::BadRequest(format!("{field}: {m}")))?;
        let state = self.router.services().state.clone();
        tokio::task::spawn_blocking(move || check_credentials(&given, &state))
            .await
            .map_err(|e| ControlError::Unavailable(e.to_string()))?
            .map_err(|(field, m)| ControlError::BadRequest(format!("{field}: {m}")))?;
        let mut inline = Vec::new();
        store_inline_secrets(&mut spec, &format!("broker.{name}"), &mut inline);
        let parsed: BrokerSpec = serde_json::from_value(spec)
            .map_err(|e| ControlError::BadRequest(format!("broker connection: {e}")))?;
        let saved = inline.clone();
        self.with_state(move |state| {
            for (key, value) in &saved {
                state.set_secret(ROUTER_SECRETS, key, value)?;
            }
            Ok(())
        })
        .await?;
        let created = parsed.clone();
        let result = self
            .change(move |d| {
                d.brokers.push(created);
                Ok(())
            })
            .await;
        if let Err(e) = result {
            self.forget_router_secrets(inline.iter().map(|(k, _)| k.clone()).collect())
                .await;
            return Err(e);
        }
        self.show_broker(&name)
    }

    async fn forget_router_secrets(&self, keys: Vec<String>) {
        let _ = self
            .with_state(move |state| {
                for key in keys {
                    state.delete_secret(ROUTER_SECRETS, &key)?;
                }
                Ok(())
            })
            .await;
    }

    /// Every broker connection, redacted, each with its state (`connected`
    /// or `down`), for a caller who may see them.
    pub async fn brokers(&self, role: &Role) -> Result<Vec<api::Broker>, ControlError> {
        role.authorize(Action::ReadBrokers)?;
        let mut brokers = self.list_brokers();
        let health = self.router.check_brokers().await;
        for b in &mut brokers {
            if let Some((_, _, r)) = health.iter().find(|(n, _, _)| *n == b.name) {
                b.state = Some(if r.is_ok() { "connected" } else { "down" }.into());
            }
        }
        Ok(brokers)
    }

    /// One broker connection, redacted, for a caller who may see it.
    pub fn broker(&self, role: &Role, name: &str) -> Result<api::Broker, ControlError> {
        role.authorize(Action::ReadBrokers)?;
        self.show_broker(name)
    }

    /// Every broker connection, redacted.
    pub(super) fn list_brokers(&self) -> Vec<api::Broker> {
        self.declarations()
            .brokers
            .iter()
            .map(|b| self.redact_broker(b))
            .collect()
    }

    /// One broker connection, redacted.
    fn show_broker(&self, name: &str) -> Result<api::Broker, ControlError> {
        self.declarations()
            .brokers
            .iter()
            .find(|b| b.name() == name)
            .map(|b| self.redact_broker(b))
            .ok_or_else(|| ControlError::NotFound(format!("no broker connection named {name:?}")))
    }

    fn redact_broker(&self, b: &BrokerSpec) -> api::Broker {
        let mut v = b.redacted();
        let state = self.router.services().state.clone();
        annotate_secrets(&mut v, &state);
        let mut settings = match v {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        let mut take = |key: &str| match settings.remove(key) {
            Some(Value::String(s)) => s,
            _ => String::new(),
        };
        let (name, kind) = (take("name"), take("kind"));
        api::Broker {
            name,
            kind,
            state: None,
            used_by_flows: self
                .declarations()
                .flows
                .iter()
                .filter(|f| f.broker == b.name())
                .map(|f| f.name.clone())
                .collect(),
            settings,
        }
    }

    /// Deletes a broker connection and its topics. Refused while flows use
    /// it, unless `force`, which disables those flows first.
    pub async fn delete_broker(
        &self,
        role: &Role,
        name: &str,
        force: bool,
    ) -> Result<Vec<String>, ControlError> {
        role.authorize(Action::DeleteBroker)?;
        let d = self.declarations();
        if !d.brokers.iter().any(|b| b.name() == name) {
            return Err(ControlError::NotFound(format!(
                "no broker connection named {name:?}"
            )));
        }
        let users: Vec<String> = d
            .flows
            .iter()
            .filter(|f| f.broker == name || mentions_broker(f, name))
            .map(|f| f.name.clone())
            .collect();
        let enabled_users: Vec<&String> = users
            .iter()
            .filter(|u| d.flows.iter().any(|f| &f.name == *u && f.enabled))
            .collect();
        if !enabled_users.is_empty() && !force {
            return Err(ControlError::Conflict(format!(
                "broker connection {name:?} is used by flows {}: disable them first, or delete with force (which disables them)",
                enabled_users
                    .iter()
                    .map(|u| format!("{u:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        let owned = name.to_string();
        let disabled = users.clone();
        self.change(move |d| {
            for f in d.flows.iter_mut().filter(|f| disabled.contains(&f.name)) {
                f.enabled = false;
            }
            d.topics.retain(|t| t.broker != owned);
            d.brokers.retain(|b| b.name() != owned);
            Ok(())
        })
        .await?;
        let prefix = format!("broker.{name}.");
        let keys: Vec<String> = self
            .with_state(|state| state.all_secrets())
            .await
            .unwrap_or_default()
            .into_iter()
            .filter(|(scope, key, _)| scope == ROUTER_SECRETS && key.starts_with(&prefix))
            .map(|(_, key, _)| key)
            .collect();
        self.forget_router_secrets(keys).await;
        Ok(users)
    }

    pub(super) fn require_broker(&self, broker: &str) -> Result<(), ControlError> {
        if self
            .declarations()
            .brokers
            .iter()
            .any(|b| b.name() == broker)
        {
            Ok(())
        } else {
            Err(ControlError::NotFound(format!(
                "no broker connection named {broker:?}"
            )))
        }
    }
}

/// Resolves and parses the credentials a connection will use, without
/// connecting: a Service Bus or Event Hubs connection string missing its
/// `Endpoint`, `SharedAccessKeyName` or `SharedAccessKey`, or a reference
/// that does not resolve, is the caller's mistake. Returns the field and why.
pub(super) fn check_credentials(
    spec: &BrokerSpec,
    state: &crate::state::StateStore,
) -> Result<(), (String, String)> {
    match spec {
        #[cfg(feature = "servicebus")]
        BrokerSpec::Servicebus(c) => c.check_connection_string(Some(state)),
        #[cfg(feature = "kafka")]
        BrokerSpec::Eventhubs(c) => {
            let field = || "connection_string".to_string();
            let secret = c
                .connection_string
                .resolve(Some(state))
                .map_err(|e| (field(), format!("{e:#}")))?;
            c.client_properties(&secret)
                .map(|_| ())
                .map_err(|m| (field(), m))
        }
        _ => {
            let _ = state;
            Ok(())
        }
    }
}

fn mentions_broker(f: &FlowSpec, broker: &str) -> bool {
    [&f.output_topic, &f.dead_letter_topic]
        .into_iter()
        .flatten()
        .any(|t| t.split_once(':').is_some_and(|(b, _)| b == broker))
}

/// Replaces `{"value": ...}` objects by `{"secret": "<prefix><path>"}`,
/// collecting (key, value) pairs to store.
fn store_inline_secrets(v: &mut Value, path: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::Object(map) => {
            if map.len() == 1
                && let Some(Value::String(value)) = map.get("value")
            {
                let key = path.to_string();
                out.push((key.clone(), value.clone()));
                *v = serde_json::json!({ "secret": key });
                return;
            }
            for (k, child) in map.iter_mut() {
                store_inline_secrets(child, &format!("{path}.{k}"), out);
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter_mut().enumerate() {
                store_inline_secrets(child, &format!("{path}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Next to every secret reference, a `redacted` preview: connection strings
/// with their keys replaced by `***`, anything else as `***`.
fn annotate_secrets(v: &mut Value, state: &crate::state::StateStore) {
    match v {
        Value::Object(map) => {
            let is_ref = map.len() == 1
                && ["env", "file", "secret"]
                    .iter()
                    .any(|k| map.contains_key(*k));
            if is_ref {
                if let Ok(r) = serde_json::from_value::<SecretRef>(Value::Object(map.clone())) {
                    let preview = match r.resolve(Some(state)) {
                        Ok(s) if s.expose().contains("SharedAccessKey") => {
                            crate::secret::redact_connection_string(s.expose())
                        }
                        Ok(_) => "***".to_string(),
                        Err(_) => "(unresolved)".to_string(),
                    };
                    map.insert("redacted".into(), Value::String(preview));
                }
                return;
            }
            for child in map.values_mut() {
                annotate_secrets(child, state);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|c| annotate_secrets(c, state)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inline_secrets_become_references() {
        let mut v = serde_json::json!({
            "name": "sb",
            "connection_string": {"value": "Endpoint=sb://x/;SharedAccessKeyName=a;SharedAccessKey=k"},
        });
        let mut out = Vec::new();
        store_inline_secrets(&mut v, "broker.sb", &mut out);
        assert_eq!(
            v["connection_string"],
            serde_json::json!({"secret": "broker.sb.connection_string"})
        );
        assert_eq!(out.len(), 1);
        assert!(out[0].1.contains("SharedAccessKey=k"));
    }
}
