//! The whole desired state: read it, or replace it (`eventflow apply`).

use super::brokers::check_credentials;
use super::{Action, ControlError, ControlPlane, Role, describe};
use crate::api;
use crate::config::{self, Declarations};

impl ControlPlane {
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
}
