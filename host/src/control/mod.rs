//! The control plane: broker connections, topics and their access lists,
//! flows (the "queues" of an algorithm), their canaries (`rollout`) and
//! parked keys, dead letters, messages, secrets, tokens and outbound HTTP
//! grants, one file a resource.
//!
//! Every call takes the caller's [`Role`], and whether it may is decided
//! here and only here, by [`Role::authorize`]; the admin API's
//! handlers only pass the caller in and map the answer.
//!
//! Every change is made to a copy of the declarations, validated as a whole
//! (the same checks as a configuration file), applied to the running router
//! (which connects new brokers and restarts only the flows it affects), and
//! only then persisted to the state store. A change that fails at any step
//! leaves both the router and the stored state as they were.

mod auth;
mod brokers;
mod dead_letters;
mod flows;
mod keys;
mod messages;
mod outbound;
mod plugins;
mod rollout;
mod secrets;
mod state;
mod tokens;
mod topics;

use std::sync::Arc;

use crate::config::{self, Declarations};
use crate::router::Router;

pub use auth::{Action, ControlError, Role};
pub use dead_letters::{MAX_DEAD_LETTER_SCAN, belongs_to};
pub use flows::{FlowChange, flow_view};
pub use messages::{MAX_PEEK_BYTES, MAX_PEEK_MESSAGES, MAX_PEEK_OFFSET, MAX_SEND_MESSAGES};

pub use crate::api::{
    DeclareTopic, EditFlow, EnableFlow, Grant, ReplayDeadLetters, ReplayReport, SkippedDeadLetter,
};

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
        self.with_state(move |s| s.set_desired(&stored, None, &stored.rollouts()))
            .await
            .map_err(|e| ControlError::Unavailable(format!("applied but not saved: {e}")))?;
        Ok(declarations)
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
