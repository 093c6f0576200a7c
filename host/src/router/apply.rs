//! Converging to a configuration: connecting its brokers, restarting the
//! flows it changed and starting the new ones, while the others keep running.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use super::{Router, RunningFlow};
use crate::config::{Config, FlowSpec};
use crate::connector::connect;
use crate::flow::{self, Broker, FlowReport, FlowState, FlowStatus, Topology};

impl Router {
    /// Converges brokers and flows to `config`: connects new brokers, stops
    /// flows that were removed or changed (letting in-flight work finish),
    /// and starts new or changed ones.
    pub async fn apply(&self, config: Config) -> anyhow::Result<()> {
        let mut flows = self.flows.lock().await;
        let topology = self.connect_topology(&config).await?;
        Self::stop_changed_flows(&mut flows, &config).await;
        self.topology.replace(topology);
        if let Some(warning) = pool_oversubscription(&config) {
            tracing::warn!("{warning}");
        }
        self.services.sandbox.outbound().replace(
            config
                .outbound
                .iter()
                .map(|g| (g.algorithm.clone(), g.origins.clone())),
        );
        self.start_new_flows(&mut flows, &config);
        self.update_statuses(&config);
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    /// The topology of `config`: its broker connections (reusing those whose
    /// spec did not change, connecting the others), topics and overrides.
    async fn connect_topology(&self, config: &Config) -> anyhow::Result<Arc<Topology>> {
        let old = self.topology();
        let mut brokers = HashMap::new();
        for spec in &config.brokers {
            let existing = old.brokers.get(spec.name()).filter(|b| b.spec == *spec);
            let broker = match existing {
                Some(b) => b.clone(),
                None => Broker {
                    spec: spec.clone(),
                    connection: connect(spec, &self.connect_ctx).await.with_context(|| {
                        format!(
                            "failed to connect broker {:?} ({})",
                            spec.name(),
                            spec.kind()
                        )
                    })?,
                },
            };
            brokers.insert(spec.name().to_string(), broker);
        }
        Ok(Arc::new(Topology {
            brokers,
            topics: config.topics.clone(),
            algorithm_limits: config.algorithm_limits.clone(),
            dead_letter_topics: crate::config::dead_letter_topic_keys(
                &config.flows,
                &config.topics,
            ),
        }))
    }

    /// Stops the flows that are gone, disabled or changed, and waits for
    /// their in-flight work to finish.
    async fn stop_changed_flows(flows: &mut HashMap<String, RunningFlow>, config: &Config) {
        let wanted: HashMap<&str, &FlowSpec> = config
            .flows
            .iter()
            .filter(|f| f.enabled)
            .map(|f| (f.name.as_str(), f))
            .collect();
        let mut stopping = Vec::new();
        let names: Vec<String> = flows.keys().cloned().collect();
        for name in names {
            let keep = wanted
                .get(name.as_str())
                .is_some_and(|f| fingerprint(f, config) == flows[&name].fingerprint);
            if !keep && let Some(running) = flows.remove(&name) {
                running.token.cancel();
                stopping.push(running);
            }
        }
        for running in stopping {
            let _ = running.handle.await;
            if !wanted.contains_key(running.spec.name.as_str()) {
                running.status.set_state(FlowState::Disabled);
            }
        }
    }

    /// Starts every enabled flow of `config` that is not running.
    fn start_new_flows(&self, flows: &mut HashMap<String, RunningFlow>, config: &Config) {
        let grace = Duration::from_secs_f64(config.router.shutdown_grace_secs);
        for spec in config.flows.iter().filter(|f| f.enabled) {
            if flows.contains_key(&spec.name) {
                continue;
            }
            if spec.dead_letter_topic.is_none() {
                tracing::warn!(
                    flow = %spec.name,
                    "Flow has no dead-letter topic: messages that fail max_receives times will be dropped (logged and counted)."
                );
            }
            let status = self
                .statuses
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(spec.name.clone())
                .or_default()
                .clone();
            let token = self.background.child_token();
            let handle = tokio::spawn(flow::run(
                Arc::new(spec.clone()),
                self.topology.clone(),
                self.services.clone(),
                status.clone(),
                token.clone(),
                grace,
            ));
            flows.insert(
                spec.name.clone(),
                RunningFlow {
                    spec: spec.clone(),
                    fingerprint: fingerprint(spec, config),
                    token,
                    handle,
                    status,
                },
            );
        }
    }

    /// Marks the disabled flows of `config` as such and forgets the status
    /// of flows it no longer has.
    fn update_statuses(&self, config: &Config) {
        for spec in config.flows.iter().filter(|f| !f.enabled) {
            self.statuses
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(spec.name.clone())
                .or_default()
                .set_state(FlowState::Disabled);
        }
        let known: std::collections::HashSet<&str> =
            config.flows.iter().map(|f| f.name.as_str()).collect();
        self.statuses
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|name, _| known.contains(name.as_str()));
    }

    /// Status of every configured flow.
    pub fn flow_reports(&self) -> Vec<FlowReport> {
        let config = self.config();
        let statuses = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
        config
            .flows
            .iter()
            .map(|spec| match statuses.get(&spec.name) {
                Some(s) => s.report(spec),
                None => FlowStatus::default().report(spec),
            })
            .collect()
    }

    /// The running flows that are not ready, and why: Kafka flows whose
    /// consumer has held no partition assignment for longer than their
    /// `consumer.assignment_grace_secs`.
    pub fn unready_flows(&self) -> Vec<(String, String)> {
        let config = self.config();
        let statuses = self.statuses.lock().unwrap_or_else(|p| p.into_inner());
        config
            .flows
            .iter()
            .filter_map(|spec| {
                let grace = spec
                    .consumer
                    .assignment_grace_secs
                    .map_or(flow::DEFAULT_ASSIGNMENT_GRACE, Duration::from_secs);
                let why = statuses.get(&spec.name)?.unready(grace)?;
                Some((spec.name.clone(), why))
            })
            .collect()
    }
}

/// A one-line warning when the enabled flows' concurrency adds up to more
/// than the pool's instance slots: invocations beyond them wait for a slot
/// (they do not fail), so a flow can be slowed by the others.
pub fn pool_oversubscription(config: &Config) -> Option<String> {
    if !config.sandbox.pooling {
        return None;
    }
    let flows: Vec<String> = config
        .flows
        .iter()
        .filter(|f| f.enabled)
        .map(|f| format!("{} {}", f.name, f.concurrency))
        .collect();
    let total: u64 = config
        .flows
        .iter()
        .filter(|f| f.enabled)
        .map(|f| u64::from(f.concurrency))
        .sum();
    let slots = config.sandbox.max_instances;
    (total > u64::from(slots)).then(|| {
        format!(
            "The flows' concurrency adds up to {total} ({}) but [sandbox] max_instances is {slots}: \
             invocations beyond {slots} at once wait for a free instance slot, so busy flows slow the others.",
            flows.join(", ")
        )
    })
}

/// What a running flow depends on beyond the live topology snapshot: its
/// own spec, its broker connection and its source topic. A change to any of
/// them restarts the flow; grants, other topics and limit overrides apply
/// live.
fn fingerprint(spec: &FlowSpec, config: &Config) -> String {
    let broker = config.brokers.iter().find(|b| b.name() == spec.broker);
    let topic = crate::config::find_topic(&config.topics, &spec.broker, &spec.topic);
    serde_json::to_string(&(spec, broker, topic)).unwrap_or_default()
}
