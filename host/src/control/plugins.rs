//! Loaded algorithm versions (`GET /v1/plugins`): an owner-scoped token
//! sees its owner's.

use super::{Action, ControlPlane, Role};
use crate::api;

impl ControlPlane {
    /// The loaded algorithm versions the caller may see, each with the
    /// enabled flows that run it.
    pub fn plugins(&self, role: &Role) -> Vec<api::Plugin> {
        let (config, topology) = (self.router.config(), self.router.topology());
        let registry = &self.router.services().registry;
        let shortfalls = |algorithm: &str, flows: &[String]| -> Vec<String> {
            config
                .flows
                .iter()
                .filter(|f| flows.contains(&f.name))
                .filter_map(|f| {
                    let a = registry.resolve(&f.algorithm)?;
                    (a.id.to_string() == algorithm)
                        .then(|| topology.memory_shortfall(f, &a))
                        .flatten()
                })
                .collect()
        };
        let flows: Vec<_> = self
            .flows(role)
            .into_iter()
            .filter(|f| f.enabled)
            .map(|f| (f.name, f.algorithm))
            .collect();
        self.router
            .services()
            .registry
            .list(&flows)
            .into_iter()
            .filter(|p| {
                let owner = p.algorithm.split_once('/').map_or("", |(o, _)| o);
                role.may(Action::SeePlugins(owner))
            })
            .map(|p| api::Plugin {
                memory_shortfalls: shortfalls(&p.algorithm, &p.flows),
                algorithm: p.algorithm,
                status: p.status.to_string(),
                hash: p.hash,
                size: p.size,
                loaded_at: p.loaded_at.map(crate::util::format_time),
                rejected: p.rejected.map(|r| api::PluginRejection {
                    reason: r.reason,
                    hash: r.hash,
                    at: crate::util::format_time(r.at),
                }),
                initial_memory_mib: p.initial_memory_bytes.map(|b| b.div_ceil(1 << 20)),
                world: p.world.map(str::to_string),
                flows: p.flows,
            })
            .collect()
    }
}
