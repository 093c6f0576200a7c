//! The admin API's contract: the request and response bodies of every
//! resource, with their serde and OpenAPI schema derives and no logic. The
//! admin handlers (`crate::admin`), the control plane and the CLI's client
//! use these types; the OpenAPI document (`/v1/openapi.json`) is generated
//! from them, so the three cannot drift apart.
//!
//! Validation bounds in the schemas (`minimum`, `maximum`, `pattern`) are the
//! ones `crate::config` and the handlers enforce.

pub mod brokers;
pub mod dead_letters;
pub mod flows;
pub mod keys;
pub mod messages;
pub mod outbound;
pub mod params;
pub mod plugins;
pub mod rollout;
pub mod secrets;
pub mod state;
pub mod status;
pub mod tokens;
pub mod topics;

pub use brokers::{Broker, BrokerList, NewBroker};
pub use dead_letters::{
    DeadLetter, DeadLetterList, ReplayDeadLetters, ReplayReport, SkippedDeadLetter,
};
pub use flows::{
    AlgorithmTopic, AlgorithmTopics, EditFlow, EnableFlow, Flow, FlowChanged, FlowDetail,
    FlowEntry, FlowList, TopicRef,
};
pub use keys::{KeySelection, KeysChanged, ParkedKey, ParkedKeyList};
pub use messages::{MessageBody, Peeked, PeekedMessage, Published, SendMessages};
pub use outbound::{OutboundGrant, OutboundList, OutboundOrigin};
pub use plugins::{Plugin, PluginList, PluginRejection};
pub use rollout::{
    RolloutChanged, RolloutReport, RolloutSide, RolloutState, ShadowReport, ShadowState,
};
pub use secrets::{SecretNames, SecretSet, SecretValue};
pub use state::{Applied, StateView};
pub use status::{FlowReport, FlowState};
pub use tokens::{Identity, NewToken, Token, TokenCreated, TokenKind, TokenList};
pub use topics::{DeclareTopic, Grant, Topic, TopicEntry, TopicListing};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The pattern of a name (broker, topic, flow, owner, algorithm, token id).
/// The server also refuses `.` and `..`, which the pattern leaves out to
/// stay a plain regular expression.
pub const NAME_PATTERN: &str = "^[A-Za-z0-9_.-]{1,128}$";

/// The pattern of a secret's name: an environment variable name.
pub const SECRET_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]{0,127}$";

/// Every error: a message that says what to change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong and what to change.
    pub error: String,
}

/// A resource was deleted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    /// Its name (or id).
    pub deleted: String,
}

/// A broker connection or topic was deleted, and the flows that used it
/// (disabled, with `force`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeletedWithFlows {
    /// Its name.
    pub deleted: String,
    /// Flows that used it; they are disabled now.
    pub disabled_flows: Vec<String>,
}
