//! Broker health: checking the connections, on request and every few
//! seconds, and telling each flow when one it uses is down.

use std::sync::Arc;

use super::{BROKER_WATCH_INTERVAL, Router};
use crate::flow::Topology;
use crate::metrics::BrokerLabels;

impl Router {
    /// Checks every broker connection, updating the `broker_up` metric.
    pub async fn check_brokers(&self) -> Vec<(String, &'static str, Result<(), String>)> {
        let topology = self.topology();
        let mut out = Vec::new();
        for (name, broker) in &topology.brokers {
            let result = broker.connection.check().await;
            self.services
                .metrics
                .broker_up
                .get_or_create(&BrokerLabels {
                    broker: name.clone(),
                })
                .set(i64::from(result.is_ok()));
            out.push((name.clone(), broker.spec.kind(), result));
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        self.note_broker_health(&topology, &out);
        out
    }

    /// Tells every flow whether a broker connection it uses (the one it
    /// consumes from, its output's and its dead-letter topic's) is down, so
    /// its status says `degraded` and why instead of `running`.
    fn note_broker_health(
        &self,
        topology: &Topology,
        health: &[(String, &'static str, Result<(), String>)],
    ) {
        let down = |name: &str| {
            health
                .iter()
                .find(|(n, _, _)| n == name)
                .and_then(|(_, kind, r)| r.as_ref().err().map(|why| (kind, why)))
                // Named as the flow's own connection errors name it.
                .map(|(kind, why)| format!("broker connection {name:?} ({kind}) is down: {why}"))
        };
        let config = self.config();
        let statuses = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
        for spec in &config.flows {
            let Some(status) = statuses.get(&spec.name) else {
                continue;
            };
            let others = [&spec.output_topic, &spec.dead_letter_topic]
                .into_iter()
                .flatten()
                .filter_map(|t| topology.topic(&spec.broker, t))
                .map(|t| t.broker.as_str());
            let why = std::iter::once(spec.broker.as_str())
                .chain(others)
                .find_map(down);
            status.set_broker_down(why);
        }
    }

    /// Checks the broker connections every few seconds, so a flow's status
    /// follows an outage (and the recovery) without anyone asking
    /// `/readyz`.
    pub(super) fn spawn_broker_watch(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let token = self.background.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(BROKER_WATCH_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(router) = weak.upgrade() else { return };
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = router.check_brokers() => {}
                }
            }
        });
    }
}
