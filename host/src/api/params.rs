//! Path and query parameters.

use serde::Deserialize;
use utoipa::IntoParams;

/// `{broker}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct BrokerPath {
    /// A broker connection's name.
    #[param(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    pub broker: String,
}

/// `{broker}/topics/{topic}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TopicPath {
    /// A broker connection's name.
    #[param(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    pub broker: String,
    /// A topic's name.
    #[param(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    pub topic: String,
}

/// `{owner}/{name}`: an algorithm.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct AlgorithmPath {
    /// The algorithm's owner.
    #[param(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    pub owner: String,
    /// The algorithm's name.
    #[param(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    pub name: String,
}

/// `{owner}/{name}/secrets/{key}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct SecretPath {
    /// The algorithm's owner.
    #[param(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    pub owner: String,
    /// The algorithm's name.
    #[param(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    pub name: String,
    /// The secret's name, an environment variable name.
    #[param(pattern = "^[A-Za-z_][A-Za-z0-9_]{0,127}$")]
    pub key: String,
}

/// `{flow}`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct FlowPath {
    /// A flow's name.
    #[param(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    pub flow: String,
}

/// `{id}`: a token.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TokenPath {
    /// A token's id.
    #[param(pattern = "^[A-Za-z0-9_.-]{1,128}$")]
    pub id: String,
}

/// `?force=`: delete what flows use, disabling them.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ForceQuery {
    /// Disable the flows that use it, and delete it.
    #[serde(default)]
    pub force: Option<bool>,
}

/// `?limit=&offset=` of a topic peek.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PeekQuery {
    /// At most this many messages (default 10).
    #[serde(default)]
    #[param(minimum = 0, maximum = 1000)]
    pub limit: Option<usize>,
    /// Skip this many messages first, to page through a topic (default 0).
    #[serde(default)]
    #[param(minimum = 0, maximum = 100000)]
    pub offset: Option<usize>,
}

/// `?limit=` of a dead-letter listing.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeadLetterQuery {
    /// Read at most this many messages of the dead-letter topic (default
    /// 1000).
    #[serde(default)]
    #[param(minimum = 0, maximum = 100000)]
    pub limit: Option<usize>,
}
