//! The control plane: broker connections, topics and their access lists,
//! flows (the "queues" of an algorithm), secrets and tokens.
//!
//! Every change is made to a copy of the declarations, validated as a whole
//! (the same checks as a configuration file), applied to the running router
//! (which connects new brokers and restarts only the flows it affects), and
//! only then persisted to the state store. A change that fails at any step
//! leaves both the router and the stored state as they were.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::config::{self, AlgorithmRef, Declarations, FlowSpec, TopicSpec};
use crate::connector::BrokerSpec;
use crate::router::Router;
use crate::secret::{ROUTER_SECRETS, SecretRef};
use crate::state::TokenInfo;

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The admin token: everything.
    Admin,
    /// An owner-scoped token: the flows and secrets of this owner's
    /// algorithms only.
    Owner(String),
}

impl Role {
    fn require_admin(&self) -> Result<(), ControlError> {
        match self {
            Role::Admin => Ok(()),
            Role::Owner(o) => Err(ControlError::Forbidden(format!(
                "the token of owner {o:?} cannot do this: it needs the admin token"
            ))),
        }
    }

    fn require_owner(&self, owner: &str) -> Result<(), ControlError> {
        match self {
            Role::Admin => Ok(()),
            Role::Owner(o) if o == owner => Ok(()),
            Role::Owner(o) => Err(ControlError::Forbidden(format!(
                "the token of owner {o:?} cannot manage algorithms of {owner:?}"
            ))),
        }
    }
}

/// Why a control-plane call failed; maps to an HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// 400: the request is wrong; the message says how.
    #[error("{0}")]
    BadRequest(String),
    /// 403: the token may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// 404: no such thing.
    #[error("{0}")]
    NotFound(String),
    /// 409: it conflicts with the current state (in use, already exists).
    #[error("{0}")]
    Conflict(String),
    /// 503: the router could not carry it out (a broker did not answer).
    #[error("{0}")]
    Unavailable(String),
}

/// A request to enable a topic for an algorithm version.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnableFlow {
    /// The flow's name; `<owner>-<name>-<topic>` by default.
    #[serde(default)]
    pub name: Option<String>,
    /// The broker connection; optional when there is one.
    #[serde(default)]
    pub broker: Option<String>,
    /// The topic to consume.
    pub topic: String,
    /// `owner/name`.
    pub algorithm: String,
    /// A version, or `latest` / absent to follow the highest.
    #[serde(default)]
    pub version: Option<String>,
    /// Where failed messages go; must be a topic the algorithm may publish to.
    #[serde(default)]
    pub dead_letter_topic: Option<String>,
    /// Where outputs go.
    #[serde(default)]
    pub output_topic: Option<String>,
    /// Wall-clock limit per message.
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    /// Deliveries before dead-lettering.
    #[serde(default)]
    pub max_receives: Option<u32>,
    /// Invocations at once.
    #[serde(default)]
    pub concurrency: Option<u32>,
}

/// An edit of a flow: absent fields stay; `null` clears optional ones.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EditFlow {
    /// A version, or `latest`.
    #[serde(default)]
    pub version: Option<String>,
    /// A topic, or null to remove the dead-letter topic.
    #[serde(default, with = "double_option")]
    pub dead_letter_topic: Option<Option<String>>,
    /// A topic, or null to remove the output topic.
    #[serde(default, with = "double_option")]
    pub output_topic: Option<Option<String>>,
    /// Enable or disable.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// Wall-clock limit per message.
    #[serde(default)]
    pub timeout_secs: Option<f64>,
    /// Deliveries before dead-lettering.
    #[serde(default)]
    pub max_receives: Option<u32>,
    /// Invocations at once.
    #[serde(default)]
    pub concurrency: Option<u32>,
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`).
mod double_option {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }

    pub fn serialize<S: Serializer, T: Serialize>(
        v: &Option<Option<T>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(inner) => inner.serialize(s),
            None => s.serialize_none(),
        }
    }
}

/// A grant change on a topic.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    /// `owner/name` or `owner/*`.
    pub algorithm: String,
    /// May consume (be a flow's source).
    #[serde(default)]
    pub consume: bool,
    /// May publish (including as output or dead-letter topic).
    #[serde(default)]
    pub publish: bool,
}

/// A topic declaration through the API.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeclareTopic {
    /// The broker's own name (queue URL, queue, Kafka topic), if it differs.
    #[serde(default)]
    pub address: Option<String>,
    /// Who may consume.
    #[serde(default)]
    pub consumers: Vec<String>,
    /// Who may publish.
    #[serde(default)]
    pub publishers: Vec<String>,
}

/// The control plane of one router.
pub struct ControlPlane {
    router: Arc<Router>,
    lock: tokio::sync::Mutex<()>,
}

impl ControlPlane {
    /// Wraps a running router.
    pub fn new(router: Arc<Router>) -> Self {
        Self {
            router,
            lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The router.
    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    /// Runs a state-store operation on the blocking pool.
    async fn with_state<T: Send + 'static>(
        &self,
        op: impl FnOnce(&crate::state::StateStore) -> anyhow::Result<T> + Send + 'static,
    ) -> Result<T, ControlError> {
        let state = self.router.services().state.clone();
        tokio::task::spawn_blocking(move || op(&state))
            .await
            .map_err(|e| ControlError::Unavailable(e.to_string()))?
            .map_err(|e| ControlError::Unavailable(format!("{e:#}")))
    }

    /// The current declarations.
    pub fn declarations(&self) -> Declarations {
        self.router.config().declarations()
    }

    /// Applies `edit` to a copy of the declarations, validates, applies to
    /// the router and persists. Returns the new declarations.
    async fn change(
        &self,
        edit: impl FnOnce(&mut Declarations) -> Result<(), ControlError>,
    ) -> Result<Declarations, ControlError> {
        let _serial = self.lock.lock().await;
        let base = self.router.config();
        let mut declarations = base.declarations();
        edit(&mut declarations)?;
        let mut config = base.with_declarations(declarations);
        config::validate(&mut config).map_err(|(field, message)| {
            ControlError::BadRequest(format!(
                "{}: {message}",
                describe(&field, &config.declarations())
            ))
        })?;
        self.router
            .apply(config.clone())
            .await
            .map_err(|e| ControlError::Unavailable(format!("{e:#}")))?;
        let declarations = config.declarations();
        let stored = declarations.clone();
        self.with_state(move |s| s.set_desired(&stored, None))
            .await
            .map_err(|e| ControlError::Unavailable(format!("applied but not saved: {e}")))?;
        Ok(declarations)
    }

    /// Replaces all declarations (`eventflow apply -f`). A broker connection
    /// whose name exists with other settings is refused (409) before
    /// anything is opened: connections are never edited in place, since the
    /// old one still holds its store and its flows' leases.
    pub async fn apply(&self, role: &Role, d: Declarations) -> Result<Declarations, ControlError> {
        role.require_admin()?;
        let current = self.declarations();
        let mut candidate = self.router.config().with_declarations(d.clone());
        config::validate(&mut candidate).map_err(|(field, message)| {
            ControlError::BadRequest(format!(
                "{}: {message}",
                describe(&field, &candidate.declarations())
            ))
        })?;
        for b in &d.brokers {
            match current.brokers.iter().find(|c| c.name() == b.name()) {
                Some(existing) if existing != b => {
                    return Err(ControlError::Conflict(format!(
                        "connection {:?} cannot be edited: create a new one with another name and move the topics",
                        b.name()
                    )));
                }
                Some(_) => {}
                None => {
                    let state = self.router.services().state.clone();
                    let spec = b.clone();
                    tokio::task::spawn_blocking(move || check_credentials(&spec, &state))
                        .await
                        .map_err(|e| ControlError::Unavailable(e.to_string()))?
                        .map_err(|(field, m)| {
                            ControlError::BadRequest(format!("broker {:?}.{field}: {m}", b.name()))
                        })?;
                }
            }
        }
        self.change(move |current| {
            *current = d;
            Ok(())
        })
        .await
    }

    // ----- broker connections -----

    /// Creates a broker connection. Inline credentials (`{"value": ...}`)
    /// are stored as router secrets and replaced by references.
    pub async fn create_broker(&self, role: &Role, mut spec: Value) -> Result<Value, ControlError> {
        role.require_admin()?;
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

    /// Every broker connection, redacted.
    pub fn list_brokers(&self) -> Vec<Value> {
        self.declarations()
            .brokers
            .iter()
            .map(|b| self.redact_broker(b))
            .collect()
    }

    /// One broker connection, redacted.
    pub fn show_broker(&self, name: &str) -> Result<Value, ControlError> {
        self.declarations()
            .brokers
            .iter()
            .find(|b| b.name() == name)
            .map(|b| self.redact_broker(b))
            .ok_or_else(|| ControlError::NotFound(format!("no broker connection named {name:?}")))
    }

    fn redact_broker(&self, b: &BrokerSpec) -> Value {
        let mut v = b.redacted();
        let state = self.router.services().state.clone();
        annotate_secrets(&mut v, &state);
        if let Value::Object(map) = &mut v {
            let flows: Vec<String> = self
                .declarations()
                .flows
                .iter()
                .filter(|f| f.broker == b.name())
                .map(|f| f.name.clone())
                .collect();
            map.insert("used_by_flows".into(), serde_json::json!(flows));
        }
        v
    }

    /// Deletes a broker connection and its topics. Refused while flows use
    /// it, unless `force`, which disables those flows first.
    pub async fn delete_broker(
        &self,
        role: &Role,
        name: &str,
        force: bool,
    ) -> Result<Vec<String>, ControlError> {
        role.require_admin()?;
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

    // ----- topics and grants -----

    /// Declared topics of a broker, and those the broker lists.
    pub async fn list_topics(&self, broker: &str) -> Result<Vec<Value>, ControlError> {
        let topology = self.router.topology();
        let connection = topology
            .brokers
            .get(broker)
            .ok_or_else(|| {
                ControlError::NotFound(format!("no broker connection named {broker:?}"))
            })?
            .connection
            .clone();
        let d = self.declarations();
        let mut out: Vec<Value> = d
            .topics
            .iter()
            .filter(|t| t.broker == broker)
            .map(|t| {
                let mut v = serde_json::to_value(t).unwrap_or_default();
                v["declared"] = Value::Bool(true);
                v
            })
            .collect();
        match connection.list_topics().await {
            Ok(Some(names)) => {
                for name in names {
                    let known = d
                        .topics
                        .iter()
                        .any(|t| t.broker == broker && (t.address() == name || t.name == name));
                    if !known {
                        out.push(serde_json::json!({
                            "name": name,
                            "broker": broker,
                            "declared": false,
                            "consumers": [],
                            "publishers": [],
                        }));
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(broker = %broker, error = %format!("{e:#}"), "Cannot list the broker's topics.");
            }
        }
        Ok(out)
    }

    /// Declares a topic, or replaces its address and access lists.
    pub async fn declare_topic(
        &self,
        role: &Role,
        broker: &str,
        name: &str,
        spec: DeclareTopic,
    ) -> Result<TopicSpec, ControlError> {
        role.require_admin()?;
        self.require_broker(broker)?;
        let topic = TopicSpec {
            name: name.to_string(),
            broker: broker.to_string(),
            address: spec.address,
            consumers: spec.consumers,
            publishers: spec.publishers,
        };
        let t = topic.clone();
        self.change(move |d| {
            match d
                .topics
                .iter_mut()
                .find(|x| x.broker == t.broker && x.name == t.name)
            {
                Some(existing) => *existing = t,
                None => d.topics.push(t),
            }
            Ok(())
        })
        .await?;
        Ok(topic)
    }

    /// Adds (`add`) or removes grants of an algorithm on a topic.
    pub async fn grant(
        &self,
        role: &Role,
        broker: &str,
        topic: &str,
        grant: Grant,
        add: bool,
    ) -> Result<TopicSpec, ControlError> {
        role.require_admin()?;
        check_grant(&grant.algorithm)?;
        if !grant.consume && !grant.publish {
            return Err(ControlError::BadRequest(
                "say what to grant or revoke: consume, publish or both".into(),
            ));
        }
        let (b, t) = (broker.to_string(), topic.to_string());
        let d = self
            .change(move |d| {
                let spec = d
                    .topics
                    .iter_mut()
                    .find(|x| x.broker == b && x.name == t)
                    .ok_or_else(|| {
                        ControlError::NotFound(format!("no topic {t:?} on broker {b:?}"))
                    })?;
                for (wanted, list) in [
                    (grant.consume, &mut spec.consumers),
                    (grant.publish, &mut spec.publishers),
                ] {
                    if !wanted {
                        continue;
                    }
                    list.retain(|g| *g != grant.algorithm);
                    if add {
                        list.push(grant.algorithm.clone());
                    }
                }
                Ok(())
            })
            .await?;
        Ok(d.topics
            .into_iter()
            .find(|x| x.broker == broker && x.name == topic)
            .expect("the topic exists"))
    }

    /// Deletes a topic declaration. Refused while flows use it, unless
    /// `force`, which disables them.
    pub async fn delete_topic(
        &self,
        role: &Role,
        broker: &str,
        topic: &str,
        force: bool,
    ) -> Result<Vec<String>, ControlError> {
        role.require_admin()?;
        let d = self.declarations();
        if !d
            .topics
            .iter()
            .any(|t| t.broker == broker && t.name == topic)
        {
            return Err(ControlError::NotFound(format!(
                "no topic {topic:?} on broker {broker:?}"
            )));
        }
        let users: Vec<String> = d
            .flows
            .iter()
            .filter(|f| f.enabled && flow_uses_topic(f, broker, topic))
            .map(|f| f.name.clone())
            .collect();
        if !users.is_empty() && !force {
            return Err(ControlError::Conflict(format!(
                "topic {topic:?} is used by flows {}: disable them first, or delete with force",
                users.join(", ")
            )));
        }
        let (b, t, u) = (broker.to_string(), topic.to_string(), users.clone());
        self.change(move |d| {
            for f in d.flows.iter_mut().filter(|f| u.contains(&f.name)) {
                f.enabled = false;
            }
            d.topics.retain(|x| !(x.broker == b && x.name == t));
            Ok(())
        })
        .await?;
        Ok(users)
    }

    fn require_broker(&self, broker: &str) -> Result<(), ControlError> {
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

    // ----- flows -----

    /// The "queues" tab of an algorithm: every topic it may consume, each
    /// with its flow, enabled or not.
    pub fn algorithm_topics(
        &self,
        role: &Role,
        owner: &str,
        name: &str,
    ) -> Result<Vec<Value>, ControlError> {
        role.require_owner(owner)?;
        let alg = AlgorithmRef {
            owner: owner.into(),
            name: name.into(),
            version: None,
        };
        let d = self.declarations();
        Ok(d.topics
            .iter()
            .filter(|t| t.may_consume(&alg))
            .map(|t| {
                let flow = d.flows.iter().find(|f| {
                    f.broker == t.broker
                        && f.topic == t.name
                        && f.algorithm.owner == owner
                        && f.algorithm.name == name
                });
                serde_json::json!({
                    "broker": t.broker,
                    "topic": t.name,
                    "enabled": flow.is_some_and(|f| f.enabled),
                    "flow": flow.map(flow_view),
                })
            })
            .collect())
    }

    /// Flows the caller may see.
    pub fn flows(&self, role: &Role) -> Vec<FlowSpec> {
        self.declarations()
            .flows
            .into_iter()
            .filter(|f| match role {
                Role::Admin => true,
                Role::Owner(o) => f.algorithm.owner == *o,
            })
            .collect()
    }

    fn flow_for(&self, role: &Role, name: &str) -> Result<FlowSpec, ControlError> {
        let flow = self
            .declarations()
            .flows
            .into_iter()
            .find(|f| f.name == name)
            .ok_or_else(|| ControlError::NotFound(format!("no flow named {name:?}")))?;
        role.require_owner(&flow.algorithm.owner)?;
        Ok(flow)
    }

    /// Enables a topic for an algorithm version: creates the flow, or
    /// updates and enables the existing one of that name.
    pub async fn enable_flow(
        &self,
        role: &Role,
        req: EnableFlow,
    ) -> Result<FlowSpec, ControlError> {
        let mut algorithm: AlgorithmRef = req
            .algorithm
            .parse()
            .map_err(|e: String| ControlError::BadRequest(format!("algorithm: {e}")))?;
        if algorithm.version.is_some() {
            return Err(ControlError::BadRequest(
                "algorithm: give owner/name here and the version in `version`".into(),
            ));
        }
        role.require_owner(&algorithm.owner)?;
        algorithm.version = parse_version(req.version.as_deref())?;
        let d = self.declarations();
        let broker = match &req.broker {
            Some(b) => b.clone(),
            None if d.brokers.len() == 1 => d.brokers[0].name().to_string(),
            None => {
                return Err(ControlError::BadRequest(
                    "broker: required when there is not exactly one broker connection".into(),
                ));
            }
        };
        let name = req
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-{}-{}", algorithm.owner, algorithm.name, req.topic));
        config::check_name(&name).map_err(|m| ControlError::BadRequest(format!("name: {m}")))?;
        if let Some(existing) = d.flows.iter().find(|f| f.name == name) {
            role.require_owner(&existing.algorithm.owner)?;
            if existing.algorithm.owner != algorithm.owner
                || existing.algorithm.name != algorithm.name
            {
                return Err(ControlError::Conflict(format!(
                    "flow {name:?} exists for {}; choose another name",
                    existing.algorithm.unversioned()
                )));
            }
        }
        let spec_name = name.clone();
        let d = self
            .change(move |d| {
                let flow = match d.flows.iter_mut().find(|f| f.name == spec_name) {
                    Some(f) => f,
                    None => {
                        d.flows
                            .push(new_flow(&spec_name, &broker, &req.topic, algorithm.clone()));
                        d.flows.last_mut().expect("just pushed")
                    }
                };
                flow.broker = broker;
                flow.topic = req.topic;
                flow.algorithm = algorithm;
                flow.enabled = true;
                if req.dead_letter_topic.is_some() {
                    flow.dead_letter_topic = req.dead_letter_topic;
                }
                if req.output_topic.is_some() {
                    flow.output_topic = req.output_topic;
                }
                if let Some(t) = req.timeout_secs {
                    flow.timeout_secs = t;
                }
                if let Some(m) = req.max_receives {
                    flow.max_receives = m;
                }
                if let Some(c) = req.concurrency {
                    flow.concurrency = c;
                }
                Ok(())
            })
            .await?;
        Ok(d.flows
            .into_iter()
            .find(|f| f.name == name)
            .expect("the flow exists"))
    }

    /// Edits a flow's version, dead-letter topic, output, limits or state.
    pub async fn edit_flow(
        &self,
        role: &Role,
        name: &str,
        edit: EditFlow,
    ) -> Result<FlowSpec, ControlError> {
        let flow = self.flow_for(role, name)?;
        let version = match &edit.version {
            Some(v) => Some(parse_version(Some(v))?),
            None => None,
        };
        let n = flow.name.clone();
        let d = self
            .change(move |d| {
                let f = d
                    .flows
                    .iter_mut()
                    .find(|f| f.name == n)
                    .ok_or_else(|| ControlError::NotFound(format!("no flow named {n:?}")))?;
                if let Some(v) = version {
                    f.algorithm.version = v;
                }
                if let Some(dlq) = edit.dead_letter_topic {
                    f.dead_letter_topic = dlq;
                }
                if let Some(out) = edit.output_topic {
                    f.output_topic = out;
                }
                if let Some(e) = edit.enabled {
                    f.enabled = e;
                }
                if let Some(t) = edit.timeout_secs {
                    f.timeout_secs = t;
                }
                if let Some(m) = edit.max_receives {
                    f.max_receives = m;
                }
                if let Some(c) = edit.concurrency {
                    f.concurrency = c;
                }
                Ok(())
            })
            .await?;
        Ok(d.flows
            .into_iter()
            .find(|f| f.name == name)
            .expect("the flow exists"))
    }

    /// Deletes a flow. Its messages stay in the broker.
    pub async fn delete_flow(&self, role: &Role, name: &str) -> Result<(), ControlError> {
        let flow = self.flow_for(role, name)?;
        self.change(move |d| {
            d.flows.retain(|f| f.name != flow.name);
            Ok(())
        })
        .await
        .map(|_| ())
    }

    // ----- secrets -----

    /// Sets an algorithm's secret (an environment variable it will see).
    pub async fn set_secret(
        &self,
        role: &Role,
        owner: &str,
        name: &str,
        key: &str,
        value: String,
    ) -> Result<(), ControlError> {
        check_algorithm(owner, name)?;
        role.require_owner(owner)?;
        check_variable(key)?;
        let (alg, k) = (format!("{owner}/{name}"), key.to_string());
        self.secrets_op(move |s| s.set_secret(&alg, &k, &value).map(|_| true))
            .await
            .map(|_| ())
    }

    /// Names of an algorithm's secrets (never values).
    pub async fn secret_names(
        &self,
        role: &Role,
        owner: &str,
        name: &str,
    ) -> Result<Vec<String>, ControlError> {
        check_algorithm(owner, name)?;
        role.require_owner(owner)?;
        let alg = format!("{owner}/{name}");
        let all = self.with_state(|state| state.all_secrets()).await?;
        let mut names: Vec<String> = all
            .into_iter()
            .filter(|(scope, _, _)| *scope == alg)
            .map(|(_, k, _)| k)
            .collect();
        names.sort();
        Ok(names)
    }

    /// Deletes an algorithm's secret.
    pub async fn delete_secret(
        &self,
        role: &Role,
        owner: &str,
        name: &str,
        key: &str,
    ) -> Result<(), ControlError> {
        check_algorithm(owner, name)?;
        role.require_owner(owner)?;
        check_variable(key)?;
        let (alg, k) = (format!("{owner}/{name}"), key.to_string());
        let existed = self.secrets_op(move |s| s.delete_secret(&alg, &k)).await?;
        if existed {
            Ok(())
        } else {
            Err(ControlError::NotFound(format!(
                "{owner}/{name} has no secret {key:?}"
            )))
        }
    }

    async fn secrets_op(
        &self,
        op: impl FnOnce(&crate::state::StateStore) -> anyhow::Result<bool> + Send + 'static,
    ) -> Result<bool, ControlError> {
        let services = self.router.services().clone();
        tokio::task::spawn_blocking(move || {
            let result = op(&services.state)?;
            services.reload_secrets()?;
            anyhow::Ok(result)
        })
        .await
        .map_err(|e| ControlError::Unavailable(e.to_string()))?
        .map_err(|e| ControlError::Unavailable(format!("{e:#}")))
    }

    // ----- tokens -----

    /// Creates an owner-scoped token; returns its info and the token, which
    /// is shown only this once.
    pub async fn create_token(
        &self,
        role: &Role,
        owner: &str,
    ) -> Result<(TokenInfo, String), ControlError> {
        role.require_admin()?;
        if !config::is_valid_name(owner) {
            return Err(ControlError::BadRequest(format!(
                "owner: {owner:?} is not a valid owner name"
            )));
        }
        let token = crate::admin::auth::new_token();
        let info = TokenInfo {
            id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            owner: owner.to_string(),
            created_at: crate::util::rfc3339_now(),
        };
        let (hash, stored) = (crate::admin::auth::token_hash(&token), info.clone());
        self.with_state(move |state| state.add_token(&hash, &stored))
            .await?;
        Ok((info, token))
    }

    /// Every owner-scoped token (without the tokens).
    pub async fn tokens(&self, role: &Role) -> Result<Vec<TokenInfo>, ControlError> {
        role.require_admin()?;
        self.with_state(|state| state.tokens()).await
    }

    /// Revokes a token.
    pub async fn delete_token(&self, role: &Role, id: &str) -> Result<(), ControlError> {
        role.require_admin()?;
        let id2 = id.to_string();
        let found = self
            .with_state(move |state| state.delete_token(&id2))
            .await?;
        if found {
            Ok(())
        } else {
            Err(ControlError::NotFound(format!("no token with id {id:?}")))
        }
    }
}

/// A flow as shown in listings.
pub fn flow_view(f: &FlowSpec) -> Value {
    serde_json::json!({
        "name": f.name,
        "broker": f.broker,
        "topic": f.topic,
        "algorithm": f.algorithm.unversioned(),
        "version": f.algorithm.version.as_ref().map(|v| v.to_string()).unwrap_or_else(|| "latest".into()),
        "enabled": f.enabled,
        "dead_letter_topic": f.dead_letter_topic,
        "output_topic": f.output_topic,
        "timeout_secs": f.timeout_secs,
        "max_receives": f.max_receives,
        "concurrency": f.concurrency,
    })
}

fn new_flow(name: &str, broker: &str, topic: &str, algorithm: AlgorithmRef) -> FlowSpec {
    // The defaults of a flow declared in a file with only these fields.
    let mut flow: FlowSpec = toml::from_str(&format!(
        "name = {name:?}\ntopic = {topic:?}\nalgorithm = {:?}\n",
        algorithm.to_string()
    ))
    .expect("a minimal flow parses");
    flow.broker = broker.to_string();
    flow.algorithm = algorithm;
    flow
}

fn parse_version(v: Option<&str>) -> Result<Option<semver::Version>, ControlError> {
    match v {
        None | Some("latest") | Some("") => Ok(None),
        Some(v) => semver::Version::parse(v).map(Some).map_err(|e| {
            ControlError::BadRequest(format!(
                "version: {v:?} is not a semver version or `latest`: {e}"
            ))
        }),
    }
}

fn check_grant(g: &str) -> Result<(), ControlError> {
    let ok = match g.split_once('/') {
        Some((owner, name)) => {
            config::is_valid_name(owner) && (name == "*" || config::is_valid_name(name))
        }
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(ControlError::BadRequest(format!(
            "algorithm: {g:?} is not owner/name or owner/*"
        )))
    }
}

fn check_variable(key: &str) -> Result<(), ControlError> {
    if config::is_valid_variable(key) {
        Ok(())
    } else {
        Err(ControlError::BadRequest(format!(
            "key: secret name {}: use 1 to {} letters, digits and '_', not starting with a digit (it becomes an environment variable)",
            config::quote_name(key),
            config::MAX_NAME_BYTES
        )))
    }
}

/// Checks the two parts of an algorithm named in a request (`owner/name`),
/// which scope secrets and grants: `ezra/../../test/x` is no algorithm.
fn check_algorithm(owner: &str, name: &str) -> Result<(), ControlError> {
    config::check_name(owner).map_err(|m| ControlError::BadRequest(format!("owner: {m}")))?;
    config::check_name(name).map_err(|m| ControlError::BadRequest(format!("name: {m}")))
}

/// Resolves and parses the credentials a connection will use, without
/// connecting: a Service Bus or Event Hubs connection string missing its
/// `Endpoint`, `SharedAccessKeyName` or `SharedAccessKey`, or a reference
/// that does not resolve, is the caller's mistake. Returns the field and why.
fn check_credentials(
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

fn flow_uses_topic(f: &FlowSpec, broker: &str, topic: &str) -> bool {
    let names = |r: &str| -> bool {
        match r.split_once(':') {
            Some((b, t)) => b == broker && t == topic,
            None => f.broker == broker && r == topic,
        }
    };
    names(&f.topic)
        || f.output_topic.as_deref().is_some_and(names)
        || f.dead_letter_topic.as_deref().is_some_and(names)
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

/// Replaces `flows[2]` by `flow "name"` and the like in a field path.
fn describe(field: &str, d: &Declarations) -> String {
    let mut out = field.to_string();
    for (i, f) in d.flows.iter().enumerate() {
        out = out.replace(&format!("flows[{i}]"), &format!("flow {:?}", f.name));
    }
    for (i, t) in d.topics.iter().enumerate() {
        out = out.replace(
            &format!("topics[{i}]"),
            &format!("topic \"{}:{}\"", t.broker, t.name),
        );
    }
    for (i, b) in d.brokers.iter().enumerate() {
        out = out.replace(&format!("brokers[{i}]"), &format!("broker {:?}", b.name()));
    }
    out
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

    #[test]
    fn roles_are_enforced() {
        assert!(Role::Admin.require_admin().is_ok());
        assert!(Role::Owner("ezra".into()).require_owner("ezra").is_ok());
        assert!(matches!(
            Role::Owner("ezra".into()).require_owner("bob"),
            Err(ControlError::Forbidden(_))
        ));
        assert!(matches!(
            Role::Owner("ezra".into()).require_admin(),
            Err(ControlError::Forbidden(_))
        ));
    }

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version(Some("latest")).unwrap(), None);
        assert_eq!(
            parse_version(Some("0.1.0")).unwrap(),
            Some(semver::Version::new(0, 1, 0))
        );
        assert!(parse_version(Some("one")).is_err());
    }

    #[test]
    fn a_new_flow_has_the_file_defaults() {
        let f = new_flow("f", "b", "t", "ezra/x".parse().unwrap());
        assert_eq!(f.max_receives, 10);
        assert!(f.enabled);
        assert_eq!(f.broker, "b");
    }
}
