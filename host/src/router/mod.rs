//! The router: builds the services, connects the brokers, loads the plugins
//! and runs one task per enabled flow. [`Router::apply`] converges the
//! running flows to a new configuration without a restart (`apply`);
//! `brokers` watches the broker connections' health.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, Declarations, FlowSpec};
use crate::connector::{BrokerSpec, ConnectContext};
use crate::flow::{self, FlowStatus, Services, Topology, TopologyHandle};
use crate::metrics::{AlgorithmLabels, Metrics};
use crate::registry::{self, Registry};
use crate::sandbox::Sandbox;
use crate::state::{Damaged, StateOptions, StateStore};

mod apply;
mod brokers;

pub use apply::pool_oversubscription;

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
    /// Starts the router: opens state, starts loading the plugins, connects
    /// the brokers and starts the enabled flows. Errors are setup errors.
    /// It does not wait for plugins to compile: a flow whose algorithm is
    /// still compiling waits (`waiting_for_plugin`) and starts when it loads.
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
        let data = Arc::new(config.data.open(&dirs.data_dir, Some(&state))?);
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
            sandbox: sandbox.clone(),
            registry: Arc::new(Registry::new()),
            state,
            metrics: Arc::new({
                let mut metrics = Metrics::new();
                metrics.register_outbound(sandbox.outbound().metrics());
                metrics
            }),
            secrets: RwLock::new(HashMap::new()),
            dead_letter_key,
            rollouts: Default::default(),
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
        router.spawn_plugin_loads(&config);
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
        tokio::task::spawn_blocking(move || {
            state.set_desired(&declarations, Some(&digest), &declarations.rollouts())
        })
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

    /// Loads every version in the plugin directory in the background, those
    /// that enabled flows name queued first; each is marked compiling from
    /// now on. Once all are done, trims the compiled-code cache.
    fn spawn_plugin_loads(self: &Arc<Self>, config: &Config) {
        let mut found = registry::scan(&self.plugins_dir);
        let wanted = |id: &crate::sandbox::AlgorithmId| {
            config
                .flows
                .iter()
                .any(|f| f.enabled && f.algorithm.owner == id.owner && f.algorithm.name == id.name)
        };
        // Stable: within each group, the scan's order.
        found.sort_by_key(|(id, _)| !wanted(id));
        if !found.is_empty() {
            tracing::info!(
                versions = found.len(),
                "Loading the plugin directory in the background; flows start as their algorithms load."
            );
        }
        let mut loads = tokio::task::JoinSet::new();
        for (id, path) in found {
            let guard = self.services.registry.compiling(&id);
            let router = self.clone();
            loads.spawn(async move {
                router.load_plugin(id, path).await;
                drop(guard);
            });
        }
        let (router, token) = (self.clone(), self.background.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = token.cancelled() => loads.abort_all(),
                _ = async { while loads.join_next().await.is_some() {} } => {
                    // Otherwise the end of that load trims it.
                    if !router.services.registry.any_compiling() {
                        router.evict_compiled().await;
                    }
                }
            }
        });
    }

    /// Loads (or reloads) one plugin file, logging and counting the outcome;
    /// the version shows as compiling until it is logged.
    pub async fn load_plugin(&self, id: crate::sandbox::AlgorithmId, path: PathBuf) {
        let _compiling = self.services.registry.compiling(&id);
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
                self.log_memory_shortfalls(&algorithm);
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

    /// Logs every enabled flow that runs `algorithm` under a memory limit
    /// below its initial memory: such a flow waits instead of invoking it.
    fn log_memory_shortfalls(&self, algorithm: &crate::sandbox::Algorithm) {
        let (config, topology) = (self.config(), self.topology());
        for flow in config.flows.iter().filter(|f| f.enabled) {
            let runs_it = self
                .services
                .registry
                .resolve(&flow.algorithm)
                .is_some_and(|a| a.id == algorithm.id);
            if let Some(why) = runs_it
                .then(|| topology.memory_shortfall(flow, algorithm))
                .flatten()
            {
                tracing::error!(
                    flow = %flow.name,
                    algorithm = %algorithm.id,
                    error = %why,
                    "The flow's memory limit is below what the algorithm needs to start; the flow does not invoke it and its messages wait in the broker."
                );
            }
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
    /// removed (a burst of changes trims once), but not while any version
    /// is compiling or waits to: the entry it is about to read must stay (the
    /// end of the last load is a change too).
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
                if !router.services.registry.any_compiling() {
                    router.evict_compiled().await;
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

    /// Closes the admin listener's address to algorithms' HTTP requests.
    pub fn protect_admin(&self, admin: std::net::SocketAddr) {
        self.services.sandbox.outbound().protect(admin);
    }

    /// A token cancelled when the router shuts down, for its helpers.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.background.clone()
    }
}
