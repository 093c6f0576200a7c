//! The control plane: broker connections, topics and their access lists,
//! flows (the "queues" of an algorithm), secrets and tokens.
//!
//! Every change is made to a copy of the declarations, validated as a whole
//! (the same checks as a configuration file), applied to the running router
//! (which connects new brokers and restarts only the flows it affects), and
//! only then persisted to the state store. A change that fails at any step
//! leaves both the router and the stored state as they were.

use std::sync::Arc;

use serde_json::Value;

use crate::api;
use crate::config::{self, AlgorithmRef, Declarations, FlowSpec, TopicSpec};
use crate::connector::BrokerSpec;
use crate::flow::envelope::{DeadLetter, Envelope};
use crate::router::Router;
use crate::secret::{ROUTER_SECRETS, SecretRef};
use crate::state::TokenInfo;
use crate::state::token::{new_token, token_hash};

/// Who is calling.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The admin token: everything.
    Admin,
    /// An owner-scoped token: see [`Role::authorize`] for what it may do.
    Owner(String),
}

/// One thing a caller asks to do, with the owner of the algorithm (or the
/// topic) it concerns. Every permission of the admin API is decided by
/// [`Role::authorize`] on one of these: handlers and control-plane methods
/// never look at the role themselves.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// Read the whole desired state (`GET /v1/state`).
    ReadState,
    /// Replace the whole desired state (`eventflow apply -f`).
    ApplyState,
    /// List or show broker connections.
    ReadBrokers,
    /// Create a broker connection.
    CreateBroker,
    /// Delete a broker connection.
    DeleteBroker,
    /// List a broker's topics and their access lists.
    ListTopics,
    /// Declare a topic or change its address and access lists.
    DeclareTopic,
    /// Delete a topic declaration.
    DeleteTopic,
    /// Grant or revoke an algorithm's access to a topic.
    ChangeGrant,
    /// Read a topic's messages without consuming them.
    PeekTopic,
    /// Publish messages to this topic.
    Send(&'a TopicSpec),
    /// See the topics an algorithm of this owner may consume (its queues tab).
    AlgorithmTopics(&'a str),
    /// List, show and see the status of a flow of an algorithm of this owner.
    SeeFlow(&'a str),
    /// Enable (create or re-enable) a flow for an algorithm of this owner.
    EnableFlow(&'a str),
    /// Edit or disable a flow of an algorithm of this owner.
    EditFlow(&'a str),
    /// Delete a flow of an algorithm of this owner.
    DeleteFlow(&'a str),
    /// List or replay the dead letters of a flow of an algorithm of this owner.
    DeadLetters(&'a str),
    /// List the names of, set or delete secrets of an algorithm of this owner.
    Secrets(&'a str),
    /// See the loaded versions of the algorithms of this owner.
    SeePlugins(&'a str),
    /// Create, list or revoke owner-scoped tokens.
    ManageTokens,
    /// Replay messages on a dead-letter topic that the router did not sign.
    ReplayUnverified,
}

impl Action<'_> {
    /// What the caller asked, as a phrase for a refusal.
    fn describe(&self) -> String {
        match self {
            Action::ReadState => "read the desired state".into(),
            Action::ApplyState => "replace the desired state".into(),
            Action::ReadBrokers => "see broker connections".into(),
            Action::CreateBroker => "create broker connections".into(),
            Action::DeleteBroker => "delete broker connections".into(),
            Action::ListTopics => "list topics".into(),
            Action::DeclareTopic => "declare topics".into(),
            Action::DeleteTopic => "delete topics".into(),
            Action::ChangeGrant => "grant or revoke access to topics".into(),
            Action::PeekTopic => "peek at topics".into(),
            Action::Send(t) => format!(
                "send to topic {:?} on broker {:?} (none of its algorithms may consume it)",
                t.name, t.broker
            ),
            Action::AlgorithmTopics(o) => format!("see the topics of algorithms of {o:?}"),
            Action::SeeFlow(o) => format!("see flows of algorithms of {o:?}"),
            Action::EnableFlow(o) => format!("enable flows of algorithms of {o:?}"),
            Action::EditFlow(o) => format!("edit flows of algorithms of {o:?}"),
            Action::DeleteFlow(o) => format!("delete flows of algorithms of {o:?}"),
            Action::DeadLetters(o) => {
                format!("read or replay dead letters of flows of algorithms of {o:?}")
            }
            Action::Secrets(o) => format!("manage secrets of algorithms of {o:?}"),
            Action::SeePlugins(o) => format!("see algorithms of {o:?}"),
            Action::ManageTokens => "manage tokens".into(),
            Action::ReplayUnverified => "replay unverified dead letters".into(),
        }
    }
}

impl Role {
    /// Whether this caller may do `action`: the one place that decides.
    ///
    /// The admin token may do everything. An owner-scoped token may, for
    /// algorithms of its own owner only: see, enable, edit, disable and
    /// delete flows (and see their status); list and replay those flows'
    /// dead letters; set, delete and list the names of secrets; see the
    /// algorithms' topics and loaded versions; and send messages to a topic
    /// one of its algorithms may consume (to test a queue). Everything else
    /// (brokers, topics, grants, peeking, the whole state, tokens, and
    /// anything of another owner) is refused.
    pub fn authorize(&self, action: Action<'_>) -> Result<(), ControlError> {
        let Role::Owner(me) = self else {
            return Ok(());
        };
        let allowed = match action {
            Action::AlgorithmTopics(owner)
            | Action::SeeFlow(owner)
            | Action::EnableFlow(owner)
            | Action::EditFlow(owner)
            | Action::DeleteFlow(owner)
            | Action::DeadLetters(owner)
            | Action::Secrets(owner)
            | Action::SeePlugins(owner) => owner == me.as_str(),
            Action::Send(topic) => topic.consumers.iter().any(|g| {
                g.split_once('/')
                    .is_some_and(|(owner, _)| owner == me.as_str())
            }),
            Action::ReadState
            | Action::ApplyState
            | Action::ReadBrokers
            | Action::CreateBroker
            | Action::DeleteBroker
            | Action::ListTopics
            | Action::DeclareTopic
            | Action::DeleteTopic
            | Action::ChangeGrant
            | Action::PeekTopic
            | Action::ManageTokens
            | Action::ReplayUnverified => {
                return Err(ControlError::Forbidden(format!(
                    "the token of owner {me:?} cannot {}: it needs the admin token",
                    action.describe()
                )));
            }
        };
        if allowed {
            Ok(())
        } else {
            Err(ControlError::Forbidden(format!(
                "the token of owner {me:?} cannot {}",
                action.describe()
            )))
        }
    }

    /// Whether `action` is allowed, for filtering listings.
    pub fn may(&self, action: Action<'_>) -> bool {
        self.authorize(action).is_ok()
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

/// A flow after it was enabled or edited, and what its caller should know.
#[derive(Debug, Clone)]
pub struct FlowChange {
    /// The flow as declared now.
    pub flow: FlowSpec,
    /// The flow as shown in listings.
    view: api::Flow,
    /// The flow kept the version it had (no version was given).
    pub version_kept: bool,
    /// What will not work yet, e.g. `version 9.9.9 of ezra/x is not loaded;
    /// the flow waits for it`.
    pub warnings: Vec<String>,
}

impl FlowChange {
    /// The API's answer: the flow's view with `version_kept` and `warnings`.
    pub fn to_api(&self) -> api::FlowChanged {
        api::FlowChanged {
            flow: self.view.clone(),
            version_kept: self.version_kept,
            warnings: self.warnings.clone(),
        }
    }
}

pub use crate::api::{
    DeclareTopic, EditFlow, EnableFlow, Grant, ReplayDeadLetters, ReplayReport, SkippedDeadLetter,
};

impl From<TopicSpec> for api::Topic {
    fn from(t: TopicSpec) -> Self {
        Self {
            name: t.name,
            broker: t.broker,
            address: t.address,
            consumers: t.consumers,
            publishers: t.publishers,
            dead_letter_publishers: t.dead_letter_publishers,
        }
    }
}

/// The most messages of a dead-letter topic one list or replay reads.
pub const MAX_DEAD_LETTER_SCAN: usize = 100_000;

/// Whether `envelope` is a dead letter of `flow` that `role` may see: the
/// flow's name, source broker and topic, and algorithm (`owner/name`) all
/// match, and an owner-scoped token sees its own owner's algorithms only.
/// A flow deleted and re-created under the same name for another algorithm
/// does not inherit the old one's dead letters.
pub fn belongs_to(envelope: &Envelope, flow: &FlowSpec, role: &Role) -> bool {
    let Some((owner, name)) = envelope.algorithm_owner_name() else {
        return false;
    };
    envelope.flow == flow.name
        && envelope.source.broker == flow.broker
        && envelope.source.topic == flow.topic
        && owner == flow.algorithm.owner
        && name == flow.algorithm.name
        && match role {
            Role::Admin => true,
            Role::Owner(o) => o == owner,
        }
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
        role.authorize(Action::ApplyState)?;
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

    /// The desired state as `GET /v1/state` shows it: brokers redacted.
    pub fn state(&self, role: &Role) -> Result<api::StateView, ControlError> {
        role.authorize(Action::ReadState)?;
        let d = self.declarations();
        Ok(api::StateView {
            brokers: self.list_brokers(),
            topics: d.topics.into_iter().map(api::Topic::from).collect(),
            flows: d
                .flows
                .iter()
                .map(|f| serde_json::to_value(f).unwrap_or_default())
                .collect(),
            algorithm_limits: d
                .algorithm_limits
                .iter()
                .map(|l| serde_json::to_value(l).unwrap_or_default())
                .collect(),
        })
    }

    /// Every broker connection, redacted, for a caller who may see them.
    pub fn brokers(&self, role: &Role) -> Result<Vec<api::Broker>, ControlError> {
        role.authorize(Action::ReadBrokers)?;
        Ok(self.list_brokers())
    }

    /// One broker connection, redacted, for a caller who may see it.
    pub fn broker(&self, role: &Role, name: &str) -> Result<api::Broker, ControlError> {
        role.authorize(Action::ReadBrokers)?;
        self.show_broker(name)
    }

    /// Every broker connection, redacted.
    fn list_brokers(&self) -> Vec<api::Broker> {
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

    // ----- topics and grants -----

    /// Declared topics of a broker, and those the broker lists. The second
    /// value says why the broker's own list is missing when the broker
    /// refused to give it (SQS without `ListQueues`, say).
    pub async fn list_topics(
        &self,
        role: &Role,
        broker: &str,
    ) -> Result<(Vec<api::TopicEntry>, Option<String>), ControlError> {
        role.authorize(Action::ListTopics)?;
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
        let mut out: Vec<api::TopicEntry> = d
            .topics
            .iter()
            .filter(|t| t.broker == broker)
            .map(|t| api::TopicEntry {
                topic: t.clone().into(),
                declared: true,
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
                        out.push(api::TopicEntry {
                            topic: api::Topic {
                                name,
                                broker: broker.to_string(),
                                address: None,
                                consumers: Vec::new(),
                                publishers: Vec::new(),
                                dead_letter_publishers: Vec::new(),
                            },
                            declared: false,
                        });
                    }
                }
            }
            Ok(None) => {}
            Err(e) => {
                let why = format!("{e:#}");
                tracing::warn!(broker = %broker, error = %why, "Cannot list the broker's topics.");
                return Ok((out, Some(why)));
            }
        }
        Ok((out, None))
    }

    /// Declares a topic, or changes the fields `spec` gives of an existing
    /// one (the others keep their values).
    pub async fn declare_topic(
        &self,
        role: &Role,
        broker: &str,
        name: &str,
        spec: DeclareTopic,
    ) -> Result<TopicSpec, ControlError> {
        role.authorize(Action::DeclareTopic)?;
        self.require_broker(broker)?;
        let (b, n) = (broker.to_string(), name.to_string());
        let d = self
            .change(move |d| {
                match d.topics.iter_mut().find(|x| x.broker == b && x.name == n) {
                    Some(existing) => {
                        if let Some(address) = spec.address {
                            existing.address = address;
                        }
                        if let Some(consumers) = spec.consumers {
                            existing.consumers = consumers;
                        }
                        if let Some(publishers) = spec.publishers {
                            existing.publishers = publishers;
                        }
                        if let Some(dlp) = spec.dead_letter_publishers {
                            existing.dead_letter_publishers = dlp;
                        }
                    }
                    None => d.topics.push(TopicSpec {
                        name: n,
                        broker: b,
                        address: spec.address.flatten(),
                        consumers: spec.consumers.unwrap_or_default(),
                        publishers: spec.publishers.unwrap_or_default(),
                        dead_letter_publishers: spec.dead_letter_publishers.unwrap_or_default(),
                    }),
                }
                Ok(())
            })
            .await?;
        Ok(d.topics
            .into_iter()
            .find(|x| x.broker == broker && x.name == name)
            .expect("the topic was just declared"))
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
        role.authorize(Action::ChangeGrant)?;
        check_grant(&grant.algorithm)?;
        if !grant.consume && !grant.publish && !grant.dead_letter_publish {
            return Err(ControlError::BadRequest(
                "say what to grant or revoke: consume, publish, dead_letter_publish".into(),
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
                    (grant.dead_letter_publish, &mut spec.dead_letter_publishers),
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
        role.authorize(Action::DeleteTopic)?;
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
    /// with all of the algorithm's flows on it (a topic may carry several,
    /// under different names or versions), enabled or not.
    pub fn algorithm_topics(
        &self,
        role: &Role,
        owner: &str,
        name: &str,
    ) -> Result<Vec<api::AlgorithmTopic>, ControlError> {
        role.authorize(Action::AlgorithmTopics(owner))?;
        let alg = AlgorithmRef {
            owner: owner.into(),
            name: name.into(),
            version: None,
        };
        let d = self.declarations();
        Ok(d.topics
            .iter()
            .filter(|t| t.may_consume(&alg.owner, &alg.name))
            .map(|t| {
                let flows: Vec<&FlowSpec> = d
                    .flows
                    .iter()
                    .filter(|f| {
                        f.broker == t.broker
                            && f.topic == t.name
                            && f.algorithm.owner == owner
                            && f.algorithm.name == name
                    })
                    .collect();
                api::AlgorithmTopic {
                    broker: t.broker.clone(),
                    topic: t.name.clone(),
                    enabled: flows.iter().any(|f| f.enabled),
                    flows: flows.iter().map(|f| self.flow_view(f)).collect(),
                }
            })
            .collect())
    }

    /// Flows the caller may see.
    pub fn flows(&self, role: &Role) -> Vec<FlowSpec> {
        self.declarations()
            .flows
            .into_iter()
            .filter(|f| role.may(Action::SeeFlow(&f.algorithm.owner)))
            .collect()
    }

    /// The status of every flow the caller may see (`GET /v1/flows`): the
    /// router's report, the flow as declared (`spec`) and, for an enabled
    /// flow whose algorithm version is not loaded, what it waits for
    /// (`waiting_for`).
    pub fn flow_statuses(&self, role: &Role) -> Vec<api::FlowEntry> {
        let visible = self.flows(role);
        self.router
            .flow_reports()
            .into_iter()
            .filter_map(|report| {
                let spec = visible.iter().find(|f| f.name == report.name)?;
                Some(api::FlowEntry {
                    report,
                    spec: self.flow_view(spec),
                    waiting_for: self.waiting_for(spec),
                })
            })
            .collect()
    }

    /// One flow as declared, with its status (`GET /v1/flows/{flow}`).
    pub fn flow_status(&self, role: &Role, name: &str) -> Result<api::FlowDetail, ControlError> {
        let spec = self.flow_named(name)?;
        role.authorize(Action::SeeFlow(&spec.algorithm.owner))?;
        let report = self
            .router
            .flow_reports()
            .into_iter()
            .find(|r| r.name == name);
        Ok(api::FlowDetail {
            flow: self.flow_view(&spec),
            status: report,
        })
    }

    /// A flow as shown in listings, with `waiting_for` when it is enabled
    /// and no loaded version of its algorithm matches.
    pub fn flow_view(&self, f: &FlowSpec) -> api::Flow {
        api::Flow {
            waiting_for: self.waiting_for(f),
            ..flow_view(f)
        }
    }

    /// What an enabled flow waits for: the version it names is not loaded.
    fn waiting_for(&self, f: &FlowSpec) -> Option<String> {
        if f.enabled {
            self.missing_version(&f.algorithm)
        } else {
            None
        }
    }

    /// Why `algorithm` does not resolve to a loaded version, if it does not.
    fn missing_version(&self, algorithm: &AlgorithmRef) -> Option<String> {
        if self.router.services().registry.resolve(algorithm).is_some() {
            return None;
        }
        Some(match &algorithm.version {
            Some(v) => format!("version {v} of {} is not loaded", algorithm.unversioned()),
            None => format!("no version of {} is loaded", algorithm.unversioned()),
        })
    }

    /// The flow `name`, or 404.
    fn flow_named(&self, name: &str) -> Result<FlowSpec, ControlError> {
        self.declarations()
            .flows
            .into_iter()
            .find(|f| f.name == name)
            .ok_or_else(|| ControlError::NotFound(format!("no flow named {name:?}")))
    }

    /// The result of a flow change: the flow, whether it kept its version,
    /// and warnings about a version that is not loaded.
    fn flow_change(&self, flow: FlowSpec, version_kept: bool, version_given: bool) -> FlowChange {
        let mut warnings = Vec::new();
        if (flow.enabled || version_given)
            && let Some(missing) = self.missing_version(&flow.algorithm)
        {
            let what = if flow.algorithm.version.is_some() {
                "it"
            } else {
                "one"
            };
            let when = if flow.enabled { "" } else { " once enabled" };
            tracing::warn!(
                flow = %flow.name,
                algorithm = %flow.algorithm,
                "The flow names a version that is not loaded; it waits for it."
            );
            warnings.push(format!("{missing}; the flow waits for {what}{when}"));
        }
        FlowChange {
            view: self.flow_view(&flow),
            flow,
            version_kept,
            warnings,
        }
    }

    /// Enables a topic for an algorithm version: creates the flow, or
    /// updates and enables the existing one of that name. Without a version
    /// an existing flow keeps the version it had (a new one follows the
    /// highest loaded version); `latest` switches it to the highest.
    pub async fn enable_flow(
        &self,
        role: &Role,
        req: EnableFlow,
    ) -> Result<FlowChange, ControlError> {
        let algorithm: AlgorithmRef = req
            .algorithm
            .parse()
            .map_err(|e: String| ControlError::BadRequest(format!("algorithm: {e}")))?;
        if algorithm.version.is_some() {
            return Err(ControlError::BadRequest(
                "algorithm: give owner/name here and the version in `version`".into(),
            ));
        }
        role.authorize(Action::EnableFlow(&algorithm.owner))?;
        // `None`: keep the version; `Some(None)`: latest; `Some(Some(v))`: v.
        let requested = req
            .version
            .as_deref()
            .map(|v| parse_version(Some(v)))
            .transpose()?;
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
        config::check_name(&req.topic)
            .map_err(|m| ControlError::BadRequest(format!("topic: {m}")))?;
        config::check_name(&broker)
            .map_err(|m| ControlError::BadRequest(format!("broker: {m}")))?;
        let existed = match d.flows.iter().find(|f| f.name == name) {
            Some(existing) => {
                role.authorize(Action::EnableFlow(&existing.algorithm.owner))?;
                if existing.algorithm.owner != algorithm.owner
                    || existing.algorithm.name != algorithm.name
                {
                    return Err(ControlError::Conflict(format!(
                        "flow {name:?} exists for {}; choose another name",
                        existing.algorithm.unversioned()
                    )));
                }
                true
            }
            None => false,
        };
        let spec_name = name.clone();
        let version = requested.clone();
        let d = self
            .change(move |d| {
                let flow = match d.flows.iter_mut().find(|f| f.name == spec_name) {
                    Some(f) => f,
                    None => {
                        let mut fresh = algorithm.clone();
                        fresh.version = version.clone().flatten();
                        d.flows
                            .push(new_flow(&spec_name, &broker, &req.topic, fresh));
                        d.flows.last_mut().expect("just pushed")
                    }
                };
                flow.broker = broker;
                flow.topic = req.topic;
                flow.algorithm.owner = algorithm.owner;
                flow.algorithm.name = algorithm.name;
                if let Some(v) = version {
                    flow.algorithm.version = v;
                }
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
        let flow = d
            .flows
            .into_iter()
            .find(|f| f.name == name)
            .expect("the flow exists");
        Ok(self.flow_change(flow, existed && requested.is_none(), requested.is_some()))
    }

    /// Edits a flow's version, dead-letter topic, output, limits or state.
    /// A version that is not loaded is accepted (it may be deployed later)
    /// with a warning: the flow waits for it.
    pub async fn edit_flow(
        &self,
        role: &Role,
        name: &str,
        edit: EditFlow,
    ) -> Result<FlowChange, ControlError> {
        let flow = self.flow_named(name)?;
        role.authorize(Action::EditFlow(&flow.algorithm.owner))?;
        let version = match &edit.version {
            Some(v) => Some(parse_version(Some(v))?),
            None => None,
        };
        let version_given = version.is_some();
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
        let flow = d
            .flows
            .into_iter()
            .find(|f| f.name == name)
            .expect("the flow exists");
        Ok(self.flow_change(flow, !version_given, version_given))
    }

    /// Deletes a flow. Its messages stay in the broker.
    pub async fn delete_flow(&self, role: &Role, name: &str) -> Result<(), ControlError> {
        let flow = self.flow_named(name)?;
        role.authorize(Action::DeleteFlow(&flow.algorithm.owner))?;
        self.change(move |d| {
            d.flows.retain(|f| f.name != flow.name);
            Ok(())
        })
        .await
        .map(|_| ())
    }

    // ----- dead letters -----

    /// The flow `name`, for a caller who may read its dead letters (404 for
    /// no such flow, 403 for another owner's).
    fn flow_for(&self, role: &Role, name: &str) -> Result<FlowSpec, ControlError> {
        let flow = self
            .declarations()
            .flows
            .into_iter()
            .find(|f| f.name == name)
            .ok_or_else(|| ControlError::NotFound(format!("no flow named {name:?}")))?;
        role.authorize(Action::DeadLetters(&flow.algorithm.owner))?;
        Ok(flow)
    }

    /// The flow `name` and its dead-letter topic, for a caller who may
    /// manage the flow (404 for no such flow, 403 for another owner's).
    fn dead_letter_topic(
        &self,
        role: &Role,
        name: &str,
    ) -> Result<(FlowSpec, TopicSpec), ControlError> {
        let flow = self.flow_for(role, name)?;
        let dlq = flow.dead_letter_topic.clone().ok_or_else(|| {
            ControlError::BadRequest(format!("flow {name:?} has no dead_letter_topic"))
        })?;
        let topic = self
            .router
            .topology()
            .topic(&flow.broker, &dlq)
            .cloned()
            .ok_or_else(|| {
                ControlError::NotFound(format!("dead-letter topic {dlq:?} is not declared"))
            })?;
        Ok((flow, topic))
    }

    /// The dead letters of flow `name` the caller may see, oldest first,
    /// among the first `scan` messages of its dead-letter topic (at most
    /// [`MAX_DEAD_LETTER_SCAN`]). Every read of dead letters (list, replay)
    /// goes through here: a dead-letter topic may be shared by flows and
    /// owners, and may hold messages the router did not write, so only
    /// envelopes of this flow's source topic, name and algorithm are kept
    /// (see [`belongs_to`]), each marked verified or not.
    pub async fn dead_letters(
        &self,
        role: &Role,
        name: &str,
        scan: usize,
    ) -> Result<(FlowSpec, TopicSpec, Vec<DeadLetter>), ControlError> {
        let (flow, topic) = self.dead_letter_topic(role, name)?;
        let connection = self
            .router
            .topology()
            .brokers
            .get(&topic.broker)
            .ok_or_else(|| {
                ControlError::Unavailable(format!(
                    "broker connection {:?} is not connected",
                    topic.broker
                ))
            })?
            .connection
            .clone();
        let messages = connection
            .peek(&topic, scan.min(MAX_DEAD_LETTER_SCAN))
            .await
            .map_err(|e| {
                ControlError::Unavailable(format!(
                    "cannot read dead-letter topic {:?} on broker {:?}: {e:#}",
                    topic.name, topic.broker
                ))
            })?;
        let key = &self.router.services().dead_letter_key;
        let letters = messages
            .iter()
            .filter_map(|m| DeadLetter::read(m, key))
            .filter(|d| belongs_to(&d.envelope, &flow, role))
            .collect();
        Ok((flow, topic, letters))
    }

    /// Publishes dead letters of flow `name` back to its topic and removes
    /// them from the dead-letter topic. Unverified envelopes (not written by
    /// this router's key) are skipped unless `include_unverified`, which
    /// only the admin token may ask for; envelopes whose payload was
    /// truncated are always skipped.
    pub async fn replay_dead_letters(
        &self,
        role: &Role,
        name: &str,
        req: ReplayDeadLetters,
    ) -> Result<ReplayReport, ControlError> {
        if req.include_unverified {
            role.authorize(Action::ReplayUnverified)?;
        }
        let (flow, dlq, letters) = self.dead_letters(role, name, MAX_DEAD_LETTER_SCAN).await?;
        let topology = self.router.topology();
        let source = topology
            .topic(&flow.broker, &flow.topic)
            .cloned()
            .ok_or_else(|| {
                ControlError::NotFound(format!("topic {:?} is not declared", flow.topic))
            })?;
        let mut report = ReplayReport::default();
        for letter in letters {
            let envelope = &letter.envelope;
            if let Some(id) = &req.id
                && *id != envelope.source.message_id
                && *id != letter.id
            {
                continue;
            }
            let skip = if !letter.verified && !req.include_unverified {
                Some(
                    "unverified: not signed with this router's dead-letter key (forged, or written by a router with another key); the admin token can replay it with include_unverified",
                )
            } else if envelope.payload_truncated {
                Some(
                    "its payload was truncated to fit the dead-letter topic: the original cannot be replayed",
                )
            } else {
                None
            };
            if let Some(why) = skip {
                report.skipped.push(SkippedDeadLetter {
                    dead_letter_id: letter.id.clone(),
                    message_id: envelope.source.message_id.clone(),
                    why: why.to_string(),
                });
                continue;
            }
            let payload = envelope
                .original_payload()
                .map_err(|e| ControlError::BadRequest(format!("dead letter {}: {e}", letter.id)))?;
            let mut headers = envelope.headers.clone();
            crate::message::set_header(
                &mut headers,
                "eventflow-replayed-from",
                envelope.source.message_id.clone(),
            );
            topology
                .publish(
                    &source.key(),
                    vec![crate::message::OutboundMessage { payload, headers }],
                )
                .await
                .map_err(|e| {
                    ControlError::Unavailable(format!("cannot publish to {}: {e:#}", source.name))
                })?;
            let broker = topology.brokers.get(&dlq.broker).ok_or_else(|| {
                ControlError::Unavailable(format!(
                    "broker connection {:?} is not connected",
                    dlq.broker
                ))
            })?;
            broker
                .connection
                .remove(&dlq, &letter.id)
                .await
                .map_err(|e| {
                    ControlError::Unavailable(format!(
                        "replayed but cannot remove the dead letter {}: {e:#}",
                        letter.id
                    ))
                })?;
            tracing::info!(
                flow = %name,
                message_id = %envelope.source.message_id,
                verified = letter.verified,
                "Dead letter replayed."
            );
            report.replayed.push(envelope.source.message_id.clone());
        }
        if let Some(id) = &req.id
            && report.replayed.is_empty()
        {
            return Err(match report.skipped.first() {
                Some(s) => ControlError::Conflict(format!(
                    "dead letter {id:?} of flow {name:?} was not replayed: {}",
                    s.why
                )),
                None => {
                    ControlError::NotFound(format!("no dead letter of flow {name:?} has id {id:?}"))
                }
            });
        }
        Ok(report)
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
        role.authorize(Action::Secrets(owner))?;
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
        role.authorize(Action::Secrets(owner))?;
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
        role.authorize(Action::Secrets(owner))?;
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
        role.authorize(Action::ManageTokens)?;
        if !config::is_valid_name(owner) {
            return Err(ControlError::BadRequest(format!(
                "owner: {owner:?} is not a valid owner name"
            )));
        }
        let token = new_token();
        let info = TokenInfo {
            id: uuid::Uuid::new_v4().simple().to_string()[..12].to_string(),
            owner: owner.to_string(),
            created_at: crate::util::rfc3339_now(),
        };
        let (hash, stored) = (token_hash(&token), info.clone());
        self.with_state(move |state| state.add_token(&hash, &stored))
            .await?;
        Ok((info, token))
    }

    /// Every owner-scoped token (without the tokens).
    pub async fn tokens(&self, role: &Role) -> Result<Vec<TokenInfo>, ControlError> {
        role.authorize(Action::ManageTokens)?;
        self.with_state(|state| state.tokens()).await
    }

    /// Revokes a token.
    pub async fn delete_token(&self, role: &Role, id: &str) -> Result<(), ControlError> {
        role.authorize(Action::ManageTokens)?;
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
pub fn flow_view(f: &FlowSpec) -> api::Flow {
    api::Flow {
        name: f.name.clone(),
        broker: f.broker.clone(),
        topic: f.topic.clone(),
        algorithm: f.algorithm.unversioned(),
        version: f
            .algorithm
            .version
            .as_ref()
            .map(|v| v.to_string())
            .unwrap_or_else(|| "latest".into()),
        enabled: f.enabled,
        dead_letter_topic: f.dead_letter_topic.clone(),
        output_topic: f.output_topic.clone(),
        timeout_secs: f.timeout_secs,
        max_receives: f.max_receives,
        concurrency: f.concurrency,
        waiting_for: None,
    }
}

fn new_flow(name: &str, broker: &str, topic: &str, algorithm: AlgorithmRef) -> FlowSpec {
    // The defaults of a flow declared in a file with only these fields,
    // built as a TOML table (never as text, so no name can break it).
    let mut table = toml::Table::new();
    table.insert("name".into(), toml::Value::String(name.into()));
    table.insert("topic".into(), toml::Value::String(topic.into()));
    table.insert(
        "algorithm".into(),
        toml::Value::String(algorithm.to_string()),
    );
    let mut flow: FlowSpec = toml::Value::Table(table)
        .try_into()
        .expect("a flow of a name, a topic and an algorithm is complete");
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
    fn an_owner_token_may_only_manage_its_own_algorithms() {
        let ezra = Role::Owner("ezra".into());
        let topic = |consumers: &[&str]| TopicSpec {
            name: "in".into(),
            broker: "local".into(),
            address: None,
            consumers: consumers.iter().map(|c| c.to_string()).collect(),
            publishers: vec!["ezra/x".into()],
            dead_letter_publishers: vec![],
        };
        let consumable = topic(&["bob/y", "ezra/x"]);
        let by_owner = topic(&["ezra/*"]);
        let publish_only = topic(&["bob/y"]);
        let allowed = [
            Action::AlgorithmTopics("ezra"),
            Action::SeeFlow("ezra"),
            Action::EnableFlow("ezra"),
            Action::EditFlow("ezra"),
            Action::DeleteFlow("ezra"),
            Action::DeadLetters("ezra"),
            Action::Secrets("ezra"),
            Action::SeePlugins("ezra"),
            Action::Send(&consumable),
            Action::Send(&by_owner),
        ];
        for action in allowed {
            assert!(ezra.may(action), "{action:?}");
            assert!(Role::Admin.may(action), "{action:?}");
        }
        let refused = [
            Action::ReadState,
            Action::ApplyState,
            Action::ReadBrokers,
            Action::CreateBroker,
            Action::DeleteBroker,
            Action::ListTopics,
            Action::DeclareTopic,
            Action::DeleteTopic,
            Action::ChangeGrant,
            Action::PeekTopic,
            Action::ManageTokens,
            Action::AlgorithmTopics("bob"),
            Action::SeeFlow("bob"),
            Action::EnableFlow("bob"),
            Action::EditFlow("bob"),
            Action::DeleteFlow("bob"),
            Action::DeadLetters("bob"),
            Action::Secrets("bob"),
            Action::SeePlugins("bob"),
            Action::SeeFlow("ezr"),
            Action::Send(&publish_only),
        ];
        for action in refused {
            assert!(
                matches!(ezra.authorize(action), Err(ControlError::Forbidden(_))),
                "{action:?}"
            );
            assert!(Role::Admin.may(action), "{action:?}");
        }
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
