//! The version a latest-following flow's `rollout` serves: the version
//! that ran every message before a new one came (or the canary it
//! promoted). A new version is a canary beside it, so after a restart
//! (or a `kill -9`) the flow must know it again: without it, the newest
//! loaded version, an undecided canary, would serve every message.
//!
//! Written when it changes (rarely: a flow's first version, a promotion),
//! durably; a canary's counts are not kept, so its window starts again
//! after a restart.

use redb::{ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::{ROLLOUT_SERVING, StateStore};

/// What a flow's rollout serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutServing {
    /// `owner/name` of the algorithm: a flow declared again for another
    /// algorithm starts afresh.
    pub algorithm: String,
    /// The version.
    pub version: semver::Version,
}

impl StateStore {
    /// What the rollout of `flow` served when it last changed.
    pub fn rollout_serving(&self, flow: &str) -> anyhow::Result<Option<RolloutServing>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(ROLLOUT_SERVING)?;
        match table.get(flow)? {
            Some(v) => Ok(Some(serde_json::from_str(v.value())?)),
            None => Ok(None),
        }
    }

    /// Saves what the rollout of `flow` serves.
    pub fn set_rollout_serving(&self, flow: &str, serving: &RolloutServing) -> anyhow::Result<()> {
        let tx = self.db.begin_write()?;
        {
            let mut table = tx.open_table(ROLLOUT_SERVING)?;
            table.insert(flow, serde_json::to_string(serving)?.as_str())?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Forgets, in `tx`, the serving versions of flows not in `rollouts`
    /// (flow, `owner/name`): see [`StateStore::set_desired`].
    pub(super) fn keep_rollout_serving(
        &self,
        tx: &redb::WriteTransaction,
        rollouts: &[(String, String)],
    ) -> anyhow::Result<()> {
        let mut table = tx.open_table(ROLLOUT_SERVING)?;
        let mut stale = Vec::new();
        for entry in table.iter()? {
            let (flow, serving) = entry?;
            let algorithm = serde_json::from_str::<RolloutServing>(serving.value())
                .map(|s| s.algorithm)
                .unwrap_or_default();
            let flow = flow.value().to_string();
            if !rollouts.iter().any(|(f, a)| *f == flow && *a == algorithm) {
                stale.push(flow);
            }
        }
        for flow in stale {
            table.remove(flow.as_str())?;
        }
        Ok(())
    }
}
