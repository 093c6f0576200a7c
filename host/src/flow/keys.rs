//! Per-key order (`ordering = "key"`): messages with the same key are
//! handled one at a time, in the order the flow received them; messages
//! with different keys (or none) run in parallel up to `concurrency`.
//!
//! The receive loop hands out turns in the order it receives: a message's
//! [`Turn`] waits for the previous message of its key to be done (settled:
//! acknowledged, retried or dead-lettered), and is itself done when it is
//! dropped. Nothing is sent: the end of a turn is its sender's drop, so a
//! task that ends any way (finished, aborted at shutdown) lets the next one
//! go.

use std::collections::HashMap;

use tokio::sync::oneshot::{self, Receiver, Sender, error::TryRecvError};

/// The keys whose entries a chain keeps before it drops those whose turns
/// are over.
const MIN_PRUNE_AT: usize = 1024;

/// The last turn handed out for each key.
pub(super) struct KeyChain {
    last: HashMap<String, Receiver<()>>,
    /// Prune when this many keys are held.
    prune_at: usize,
}

/// A message's turn in its key's order.
pub(super) struct Turn {
    /// Done when the previous message of the key is.
    after: Option<Receiver<()>>,
    /// Dropped when this message is done.
    _done: Sender<()>,
}

impl Default for KeyChain {
    fn default() -> Self {
        Self {
            last: HashMap::new(),
            prune_at: MIN_PRUNE_AT,
        }
    }
}

impl KeyChain {
    /// The turn of the next message with `key`, after every message of that
    /// key handed a turn before.
    pub(super) fn turn(&mut self, key: &str) -> Turn {
        let (done, next) = oneshot::channel();
        let after = self.last.insert(key.to_string(), next);
        if self.last.len() >= self.prune_at {
            // Keys whose last message is done need no entry: the next
            // message of such a key goes at once either way.
            self.last
                .retain(|_, rx| matches!(rx.try_recv(), Err(TryRecvError::Empty)));
            self.prune_at = (self.last.len() * 2).max(MIN_PRUNE_AT);
        }
        Turn { after, _done: done }
    }

    /// Keys with a message not done yet, or not pruned since.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.last.len()
    }
}

impl Turn {
    /// Waits until the previous message of the key is done.
    pub(super) async fn wait(&mut self) {
        if let Some(previous) = self.after.take() {
            // An error is the sender's drop: exactly the signal.
            let _ = previous.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn ready(turn: &mut Turn) -> bool {
        tokio::time::timeout(Duration::from_millis(20), turn.wait())
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn a_key_waits_for_its_previous_message_only() {
        let mut chain = KeyChain::default();
        let mut a1 = chain.turn("a");
        let mut a2 = chain.turn("a");
        let mut a3 = chain.turn("a");
        let mut b1 = chain.turn("b");
        assert!(ready(&mut a1).await && ready(&mut b1).await);
        assert!(!ready(&mut a2).await);
        drop(a1);
        assert!(ready(&mut a2).await);
        assert!(!ready(&mut a3).await, "a3 waits for a2, not a1");
        drop(a2);
        assert!(ready(&mut a3).await);
    }

    #[tokio::test]
    async fn keys_that_are_done_are_pruned() {
        let mut chain = KeyChain::default();
        let busy = chain.turn("busy");
        for i in 0..MIN_PRUNE_AT * 3 {
            drop(chain.turn(&format!("k{i}")));
        }
        assert!(chain.held() < MIN_PRUNE_AT, "{}", chain.held());
        // The busy key kept its entry: its next message still waits.
        let mut next = chain.turn("busy");
        assert!(!ready(&mut next).await);
        drop(busy);
        assert!(ready(&mut next).await);
    }
}
