//! The desired state: the declarations the admin API edits and `eventflow
//! apply` converges, with the digest of the file they were seeded from.

use anyhow::Context;
use redb::ReadableDatabase;
use serde::Serialize;

use super::{META, StateStore};

impl StateStore {
    /// The stored declarations ([`crate::config::Declarations`]) and the
    /// digest of the file they were seeded from. The store keeps them as
    /// JSON; their schema is the configuration's.
    pub fn desired<D: serde::de::DeserializeOwned>(&self) -> anyhow::Result<Option<(D, String)>> {
        let tx = self.db.begin_read()?;
        let meta = tx.open_table(META)?;
        let Some(desired) = meta.get("desired")? else {
            return Ok(None);
        };
        let mut value: serde_json::Value = serde_json::from_str(desired.value())
            .context("the stored desired state is unreadable")?;
        if meta.get("desired_format")?.is_none() {
            upgrade_from_first_format(&mut value);
        }
        let declarations =
            serde_json::from_value(value).context("the stored desired state is unreadable")?;
        let seed = meta
            .get("seed")?
            .map(|v| v.value().to_string())
            .unwrap_or_default();
        Ok(Some((declarations, seed)))
    }

    /// Stores the declarations; `seed` records the digest of the file they
    /// came from (`None` keeps the recorded one). `rollouts` are the flows
    /// with a latest-following `rollout`, with their algorithms
    /// (`owner/name`): in the same transaction, the serving version saved
    /// for any other flow (deleted, its rollout removed, or declared again
    /// for another algorithm) is forgotten.
    pub fn set_desired<D: Serialize>(
        &self,
        declarations: &D,
        seed: Option<&str>,
        rollouts: &[(String, String)],
    ) -> anyhow::Result<()> {
        let json = serde_json::to_string(declarations)?;
        let tx = self.db.begin_write()?;
        {
            let mut meta = tx.open_table(META)?;
            meta.insert("desired", json.as_str())?;
            meta.insert("desired_format", DESIRED_FORMAT)?;
            if let Some(seed) = seed {
                meta.insert("seed", seed)?;
            }
            self.keep_rollout_serving(&tx, rollouts)?;
        }
        tx.commit()?;
        Ok(())
    }
}

/// The format of the stored declarations, kept beside them as
/// `desired_format`. The first format (no `desired_format`) wrote every
/// flow's `ordering`, `"none"` when it set none, and a Kafka flow kept its
/// partitions' order whatever it said; the second writes `ordering` only
/// when set, and `"none"` on Kafka means no order.
const DESIRED_FORMAT: &str = "2";

/// Reads declarations of the first format as the second: a flow's
/// `"ordering": "none"` is the default it was then (a Kafka flow keeps its
/// partition order, as it did).
fn upgrade_from_first_format(declarations: &mut serde_json::Value) {
    let Some(flows) = declarations.get_mut("flows").and_then(|f| f.as_array_mut()) else {
        return;
    };
    for flow in flows.iter_mut().filter_map(|f| f.as_object_mut()) {
        if flow.get("ordering").and_then(|o| o.as_str()) == Some("none") {
            flow.remove("ordering");
        }
    }
}
