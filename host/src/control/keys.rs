//! A flow's parked keys (`on_key_failure = "park"`): list, release, drop.
//!
//! Seeing them takes what seeing the flow takes ([`Action::SeeFlow`]);
//! releasing or dropping them, what editing it takes
//! ([`Action::EditFlow`]). Both change only the state store: the flow
//! looks for released and dropped keys twice a second and, for a released
//! key, handles its held messages in order before it unparks it (a flow
//! that is not running does so when it starts).

use super::{Action, ControlError, ControlPlane, Role};
use crate::api::{KeySelection, KeysChanged, ParkedKeyList};
use crate::config::FlowSpec;
use crate::state::{ParkedKey, StateStore};

/// A state-store change to a flow's parked keys: the flow, the key (every
/// parked key when `None`); returns the keys it changed.
type KeysOp = fn(&StateStore, &str, Option<&str>) -> anyhow::Result<Vec<ParkedKey>>;

impl ControlPlane {
    /// The flow `name`, for a caller who may see it, or edit it when
    /// `edit`.
    fn keyed_flow(&self, role: &Role, name: &str, edit: bool) -> Result<FlowSpec, ControlError> {
        let flow = self
            .declarations()
            .flows
            .into_iter()
            .find(|f| f.name == name)
            .ok_or_else(|| ControlError::NotFound(format!("no flow named {name:?}")))?;
        let owner = flow.algorithm.owner.as_str();
        role.authorize(if edit {
            Action::EditFlow(owner)
        } else {
            Action::SeeFlow(owner)
        })?;
        Ok(flow)
    }

    /// The parked keys of flow `name`, with the messages each holds.
    pub async fn parked_keys(
        &self,
        role: &Role,
        name: &str,
    ) -> Result<ParkedKeyList, ControlError> {
        let flow = self.keyed_flow(role, name, false)?.name;
        let f = flow.clone();
        let keys = self.with_state(move |s| s.parked_keys(&f)).await?;
        Ok(ParkedKeyList { flow, keys })
    }

    /// Releases the selected parked keys of flow `name`: the flow handles
    /// their held messages, in order, then unparks them.
    pub async fn release_keys(
        &self,
        role: &Role,
        name: &str,
        which: KeySelection,
    ) -> Result<KeysChanged, ControlError> {
        self.change_keys(role, name, which, StateStore::release_keys)
            .await
    }

    /// Drops the selected parked keys of flow `name`: they are unparked and
    /// their held messages deleted (they were acknowledged on the broker
    /// when they were held).
    pub async fn drop_keys(
        &self,
        role: &Role,
        name: &str,
        which: KeySelection,
    ) -> Result<KeysChanged, ControlError> {
        self.change_keys(role, name, which, StateStore::drop_keys)
            .await
    }

    /// Applies `op` (release or drop) to the selected parked keys of flow
    /// `name`, for a caller who may edit the flow.
    async fn change_keys(
        &self,
        role: &Role,
        name: &str,
        which: KeySelection,
        op: KeysOp,
    ) -> Result<KeysChanged, ControlError> {
        let flow = self.keyed_flow(role, name, true)?.name;
        let f = flow.clone();
        let key = which.key.clone();
        let keys = self.with_state(move |s| op(s, &f, key.as_deref())).await?;
        selected(
            &flow,
            which,
            KeysChanged {
                flow: flow.clone(),
                keys,
            },
        )
    }
}

/// `changed`, or 404 when a key was named and it is not parked.
fn selected(
    flow: &str,
    which: KeySelection,
    changed: KeysChanged,
) -> Result<KeysChanged, ControlError> {
    match which.key {
        Some(key) if changed.keys.is_empty() => Err(ControlError::NotFound(format!(
            "key {key:?} of flow {flow:?} is not parked (or is being released already)"
        ))),
        _ => Ok(changed),
    }
}
