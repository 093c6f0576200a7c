//! The failure journal: the first and last failure of every message that
//! has failed and is not yet settled for good. Its writes are not fsynced
//! one by one (they are diagnostics, not delivery state).

use redb::{Durability, ReadableDatabase, ReadableTable};
use serde::{Deserialize, Serialize};

use super::{FAILURES, StateStore};

/// One recorded failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// The reason code.
    pub reason: String,
    /// What happened.
    pub detail: String,
    /// The attempt that failed.
    pub attempt: u32,
    /// When, RFC 3339.
    pub at: String,
    /// `owner/name@version#hash` that failed.
    pub algorithm: String,
}

/// The first and the last failure of a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureHistory {
    /// The first failure recorded.
    pub first: FailureRecord,
    /// The most recent one.
    pub last: FailureRecord,
}

impl StateStore {
    /// Records a failure and returns the history including it.
    pub fn record_failure(
        &self,
        flow: &str,
        message_id: &str,
        failure: FailureRecord,
    ) -> anyhow::Result<FailureHistory> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::None)?;
        let history = {
            let mut table = tx.open_table(FAILURES)?;
            let previous = table
                .get((flow, message_id))?
                .and_then(|v| serde_json::from_str::<FailureHistory>(v.value()).ok());
            let history = match previous {
                Some(h) => FailureHistory {
                    first: h.first,
                    last: failure,
                },
                None => FailureHistory {
                    first: failure.clone(),
                    last: failure,
                },
            };
            table.insert(
                (flow, message_id),
                serde_json::to_string(&history)?.as_str(),
            )?;
            history
        };
        tx.commit()?;
        Ok(history)
    }

    /// The failures recorded for a message.
    pub fn failures(&self, flow: &str, message_id: &str) -> anyhow::Result<Option<FailureHistory>> {
        let tx = self.db.begin_read()?;
        let table = tx.open_table(FAILURES)?;
        Ok(table
            .get((flow, message_id))?
            .and_then(|v| serde_json::from_str(v.value()).ok()))
    }

    /// Forgets a message's failures once it is settled for good.
    pub fn forget(&self, flow: &str, message_id: &str) -> anyhow::Result<()> {
        let mut tx = self.db.begin_write()?;
        tx.set_durability(Durability::None)?;
        tx.open_table(FAILURES)?.remove((flow, message_id))?;
        tx.commit()?;
        Ok(())
    }
}
