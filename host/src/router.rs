//! The router: builds the services, connects the brokers, loads the plugins
//! and runs one task per enabled flow. [`Router::apply`] converges the
//! running flows to a new configuration without a restart.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Declarations, FlowSpec};
use crate::connector::{BrokerSpec, ConnectContext, connect};
use crate::data::Collections;
use crate::flow::{
    self, Broker, FlowReport, FlowState, FlowStatus, Services, Topology, TopologyHandle,
};
use crate::metrics::{AlgorithmLabels, BrokerLabels, Metrics};
use crate::registry::{self, Registry};
use crate::sandbox::Sandbox;
use crate::state::{Damaged, StateOptions, StateStore};

/// How often the router checks its broker connections for the flows'
/// status (`degraded` while one a flow uses is down).
const BROKER_WATCH_INTERVAL: Duration = Duration::from_secs(2);

struct RunningFlow {
    spec: FlowSpec,
    fingerprint: String,
    token: CancellationToken,
    handle: JoinHandle<()>,
    status: Arc<FlowStatus>,
}

/// A running router.
pub struct Router {
    services: Arc<Services>,
    config: RwLock<Config>,
    topology: TopologyHandle,
    flows: tokio::sync::Mutex<HashMap<String, RunningFlow>>,
    statuses: Mutex<HashMap<String, Arc<FlowStatus>>>,
    connect_ctx: ConnectContext,
    plugins_dir: PathBuf,
    background: CancellationToken,
}

impl Router {
    /// Starts the router: opens state, loads plugins, connects the brokers
    /// and starts the enabled flows. Errors are setup errors.
    pub async fn start(config: Config) -> anyhow::Result<Arc<Self>> {
        let dirs = &config.router;
        let damaged = if dirs.move_damaged_aside {
            Damaged::MoveAside
        } else {
            Damaged::Refuse
        };
        let state = {
            let dir = dirs.state_dir.clone();
            let options = StateOptions {
                damaged,
                key_file: dirs.secret_key_file.clone(),
            };
            tokio::task::spawn_blocking(move || StateStore::open(&dir, &options)).await??
        };
        let data = Arc::new(Collections::open(&dirs.data_dir).with_context(|| {
            format!("cannot open the data directory {}", dirs.data_dir.display())
        })?);
        let sandbox = Arc::new(Sandbox::new(
            &config.sandbox,
            Some(dirs.state_dir.join("compiled")),
            data,
        )?);
        let dead_letter_key = {
            let dir = dirs.state_dir.clone();
            tokio::task::spawn_blocking(move || flow::envelope::DeadLetterKey::load_or_create(&dir))
                .await??
        };
        let services = Arc::new(Services {
            sandbox,
            registry: Arc::new(Registry::new()),
            state,
            metrics: Arc::new(Metrics::new()),
            secrets: RwLock::new(HashMap::new()),
            dead_letter_key,
        });
        services.reload_secrets()?;
        std::fs::create_dir_all(&dirs.plugins_dir).with_context(|| {
            format!(
                "cannot create the plugin directory {}",
                dirs.plugins_dir.display()
            )
        })?;
        let router = Arc::new(Self {
            services: services.clone(),
            config: RwLock::new(Config::default()),
            topology: TopologyHandle::default(),
            flows: tokio::sync::Mutex::new(HashMap::new()),
            statuses: Mutex::new(HashMap::new()),
            connect_ctx: ConnectContext {
                state_dir: dirs.state_dir.clone(),
                state: Some(services.state.clone()),
                damaged,
            },
            plugins_dir: dirs.plugins_dir.clone(),
            background: CancellationToken::new(),
        });
        router.load_plugins().await;
        router.evict_compiled().await;
        router.spawn_cache_eviction();
        let config = router.seed(config).await?;
        router.apply(config).await?;
        router.spawn_sampler();
        router.spawn_broker_watch();
        Ok(router)
    }

    /// Chooses the declarations to start with. The state store holds the
    /// ones the admin API changed; the configuration file seeds it. When the
    /// file's declarations changed since they were last applied, the file
    /// wins (as `eventflow apply -f` would); otherwise the stored state does,
    /// so changes made through the API survive restarts.
    async fn seed(&self, config: Config) -> anyhow::Result<Config> {
        let from_file = config.declarations();
        let digest = from_file.digest();
        let state = self.services.state.clone();
        let stored = tokio::task::spawn_blocking(move || state.desired::<Declarations>()).await??;
        let chosen = match stored {
            Some((declarations, seed)) if seed == digest => {
                let mut candidate = config.with_declarations(declarations);
                match crate::config::validate(&mut candidate) {
                    Ok(()) => {
                        if candidate.declarations() != from_file {
                            tracing::info!(
                                "Starting from the state store: it holds changes made through the admin API (the configuration file is unchanged since it was applied)."
                            );
                        }
                        candidate
                    }
                    Err((field, message)) => {
                        tracing::warn!(
                            field = %field,
                            error = %message,
                            "The stored state does not validate with this configuration; starting from the configuration file instead."
                        );
                        config
                    }
                }
            }
            Some(_) => {
                tracing::info!(
                    "The configuration file changed since it was last applied: converging the state store to it."
                );
                config
            }
            None => config,
        };
        let state = self.services.state.clone();
        let declarations = chosen.declarations();
        tokio::task::spawn_blocking(move || state.set_desired(&declarations, Some(&digest)))
            .await??;
        Ok(chosen)
    }

    /// The shared services.
    pub fn services(&self) -> &Arc<Services> {
        &self.services
    }

    /// The current configuration.
    pub fn config(&self) -> Config {
        self.config
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The current connections and topics.
    pub fn topology(&self) -> Arc<Topology> {
        self.topology.current()
    }

    /// The plugin directory.
    pub fn plugins_dir(&self) -> &std::path::Path {
        &self.plugins_dir
    }

    async fn load_plugins(&self) {
        for (id, path) in registry::scan(&self.plugins_dir) {
            self.load_plugin(id, path).await;
        }
    }

    /// Loads (or reloads) one plugin file, logging and counting the outcome.
    pub async fn load_plugin(&self, id: crate::sandbox::AlgorithmId, path: PathBuf) {
        let labels = AlgorithmLabels {
            algorithm: id.to_string(),
        };
        match registry::load_file(
            &self.services.sandbox,
            &self.services.registry,
            id.clone(),
            path.clone(),
        )
        .await
        {
            Ok(algorithm) => {
                self.services
                    .metrics
                    .plugin_loads
                    .get_or_create(&labels)
                    .inc();
                tracing::info!(
                    algorithm = %id,
                    hash = %algorithm.hash,
                    from_cache = algorithm.from_cache,
                    path = %path.display(),
                    "Algorithm loaded."
                );
            }
            Err(rejection) => {
                self.services
                    .metrics
                    .plugin_rejections
                    .get_or_create(&labels)
                    .inc();
                let keeps = self
                    .services
                    .registry
                    .slot(&id)
                    .and_then(|s| s.serving)
                    .map(|a| format!("; the previous content ({}) keeps serving", &a.hash[..12]))
                    .unwrap_or_default();
                tracing::error!(
                    algorithm = %id,
                    path = %path.display(),
                    error = %rejection.reason,
                    "Plugin file rejected{keeps}."
                );
            }
        }
    }

    /// Converges brokers and flows to `config`: connects new brokers, stops
    /// flows that were removed or changed (letting in-flight work finish),
    /// and starts new or changed ones.
    pub async fn apply(&self, config: Config) -> anyhow::Result<()> {
        let mut flows = self.flows.lock().await;
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
        let topology = Arc::new(Topology {
            brokers,
            topics: config.topics.clone(),
            algorithm_limits: config.algorithm_limits.clone(),
            dead_letter_topics: crate::config::dead_letter_topic_keys(
                &config.flows,
                &config.topics,
            ),
        });

        // Stop flows that are gone, disabled or changed.
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
                .is_some_and(|f| fingerprint(f, &config) == flows[&name].fingerprint);
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

        self.topology.replace(topology.clone());
        if let Some(warning) = pool_oversubscription(&config) {
            tracing::warn!("{warning}");
        }
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
                    fingerprint: fingerprint(spec, &config),
                    token,
                    handle,
                    status,
                },
            );
        }
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
        *self.config.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
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

    /// The broker spec named `name`.
    pub fn broker_spec(&self, name: &str) -> Option<BrokerSpec> {
        self.config().brokers.into_iter().find(|b| b.name() == name)
    }

    /// Trims the compiled-code cache to the versions loaded now (see
    /// [`Sandbox::evict_compiled`]).
    async fn evict_compiled(&self) {
        let in_use = self.services.registry.hashes_in_use();
        let sandbox = self.services.sandbox.clone();
        match tokio::task::spawn_blocking(move || sandbox.evict_compiled(&in_use)).await {
            Ok(Ok(outcome)) if outcome.removed > 0 => tracing::info!(
                removed = outcome.removed,
                removed_bytes = outcome.removed_bytes,
                kept_bytes = outcome.kept_bytes,
                "Trimmed the compiled-code cache."
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(
                error = %format!("{e:#}"),
                "Could not trim the compiled-code cache."
            ),
            Err(e) => tracing::warn!(error = %e, "Could not trim the compiled-code cache."),
        }
    }

    /// Trims the cache again whenever versions are added, replaced or
    /// removed (a burst of changes trims once).
    fn spawn_cache_eviction(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let token = self.background.clone();
        let mut changes = self.services.registry.subscribe();
        changes.mark_unchanged();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    changed = changes.changed() => if changed.is_err() { return },
                }
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                changes.mark_unchanged();
                let Some(router) = weak.upgrade() else { return };
                router.evict_compiled().await;
            }
        });
    }

    /// Checks the broker connections every few seconds, so a flow's status
    /// follows an outage (and the recovery) without anyone asking
    /// `/readyz`.
    fn spawn_broker_watch(self: &Arc<Self>) {
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

    fn spawn_sampler(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let token = self.background.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(5));
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tick.tick() => {}
                }
                let Some(router) = weak.upgrade() else { return };
                let statuses: Vec<Arc<FlowStatus>> = router
                    .statuses
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .values()
                    .cloned()
                    .collect();
                statuses.iter().for_each(|s| s.sample());
            }
        });
    }

    /// Stops every flow gracefully and flushes state.
    pub async fn shutdown(&self) {
        self.background.cancel();
        let mut flows = self.flows.lock().await;
        for (_, running) in flows.drain() {
            let _ = running.handle.await;
        }
        // With the flows stopped, brokers write down what only memory holds
        // (the embedded broker's receive counts).
        for broker in self.topology().brokers.values() {
            broker.connection.close().await;
        }
        let state = self.services.state.clone();
        let _ = tokio::task::spawn_blocking(move || state.flush()).await;
    }

    /// A token cancelled when the router shuts down, for its helpers.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.background.clone()
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
