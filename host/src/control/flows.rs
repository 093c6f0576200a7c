//! Flows, the "queues" of an algorithm: list, show, enable, edit, delete.

use super::{Action, ControlError, ControlPlane, Role};
use crate::api::{self, EditFlow, EnableFlow};
use crate::config::{
    self, AlgorithmRef, BatchSpec, CanarySpec, FilterSpec, FlowOrdering, FlowSpec, KeyFailure,
    RolloutPolicy, ShadowSpec,
};

/// A flow after it was enabled or edited, and what its caller should know.
#[derive(Debug, Clone)]
pub struct FlowChange {
    /// The flow as declared now.
    pub flow: FlowSpec,
    /// The flow as shown in listings.
    view: api::Flow,
    /// The flow kept the version it had (no version was given).
    pub version_kept: bool,
    /// What will not work yet, e.g. `version 9.9.9 of ezra/x is not loaded;
    /// the flow waits for it`.
    pub warnings: Vec<String>,
}

impl FlowChange {
    /// The API's answer: the flow's view with `version_kept` and `warnings`.
    pub fn to_api(&self) -> api::FlowChanged {
        api::FlowChanged {
            flow: self.view.clone(),
            version_kept: self.version_kept,
            warnings: self.warnings.clone(),
        }
    }
}

impl ControlPlane {
    /// The "queues" tab of an algorithm: every topic it may consume, each
    /// with all of the algorithm's flows on it (a topic may carry several,
    /// under different names or versions), enabled or not.
    pub fn algorithm_topics(
        &self,
        role: &Role,
        owner: &str,
        name: &str,
    ) -> Result<Vec<api::AlgorithmTopic>, ControlError> {
        role.authorize(Action::AlgorithmTopics(owner))?;
        let alg = AlgorithmRef {
            owner: owner.into(),
            name: name.into(),
            version: None,
        };
        let d = self.declarations();
        Ok(d.topics
            .iter()
            .filter(|t| t.may_consume(&alg.owner, &alg.name))
            .map(|t| {
                let flows: Vec<&FlowSpec> = d
                    .flows
                    .iter()
                    .filter(|f| {
                        f.broker == t.broker
                            && f.topic == t.name
                            && f.algorithm.owner == owner
                            && f.algorithm.name == name
                    })
                    .collect();
                api::AlgorithmTopic {
                    broker: t.broker.clone(),
                    topic: t.name.clone(),
                    enabled: flows.iter().any(|f| f.enabled),
                    flows: flows.iter().map(|f| self.flow_view(f)).collect(),
                }
            })
            .collect())
    }

    /// The topics an algorithm may publish to (its output and dead-letter
    /// topic choices), in declaration order.
    pub fn algorithm_publishes(
        &self,
        role: &Role,
        owner: &str,
        name: &str,
    ) -> Result<Vec<api::TopicRef>, ControlError> {
        role.authorize(Action::AlgorithmTopics(owner))?;
        Ok(self
            .declarations()
            .topics
            .iter()
            .filter(|t| t.may_publish(owner, name))
            .map(|t| api::TopicRef {
                broker: t.broker.clone(),
                topic: t.name.clone(),
            })
            .collect())
    }

    /// Flows the caller may see.
    pub fn flows(&self, role: &Role) -> Vec<FlowSpec> {
        self.declarations()
            .flows
            .into_iter()
            .filter(|f| role.may(Action::SeeFlow(&f.algorithm.owner)))
            .collect()
    }

    /// The status of every flow the caller may see (`GET /v1/flows`): the
    /// router's report, the flow as declared (`spec`) and, for an enabled
    /// flow whose algorithm version is not loaded, what it waits for
    /// (`waiting_for`).
    pub fn flow_statuses(&self, role: &Role) -> Vec<api::FlowEntry> {
        let visible = self.flows(role);
        self.router
            .flow_reports()
            .into_iter()
            .filter_map(|report| {
                let spec = visible.iter().find(|f| f.name == report.name)?;
                Some(api::FlowEntry {
                    report,
                    spec: self.flow_view(spec),
                    waiting_for: self.waiting_for(spec),
                })
            })
            .collect()
    }

    /// One flow as declared, with its status (`GET /v1/flows/{flow}`).
    pub fn flow_status(&self, role: &Role, name: &str) -> Result<api::FlowDetail, ControlError> {
        let spec = self.flow_named(name)?;
        role.authorize(Action::SeeFlow(&spec.algorithm.owner))?;
        let report = self
            .router
            .flow_reports()
            .into_iter()
            .find(|r| r.name == name);
        Ok(api::FlowDetail {
            flow: self.flow_view(&spec),
            status: report,
        })
    }

    /// A flow as shown in listings, with `waiting_for` when it is enabled
    /// and no loaded version of its algorithm matches.
    pub fn flow_view(&self, f: &FlowSpec) -> api::Flow {
        // Its broker's kind decides an unset ordering.
        let kind = self
            .router
            .topology()
            .brokers
            .get(&f.broker)
            .map_or("", |b| b.spec.kind());
        api::Flow {
            waiting_for: self.waiting_for(f),
            ..flow_view(f, kind)
        }
    }

    /// What an enabled flow waits for: the version it names is not loaded
    /// (or still compiling), or needs more memory to start than the flow
    /// allows.
    fn waiting_for(&self, f: &FlowSpec) -> Option<String> {
        if !f.enabled {
            return None;
        }
        let services = self.router.services();
        if f.rollout.is_some()
            && f.algorithm.version.is_none()
            && let Some(rollout) = services.rollouts.auto(&f.name)
            && let Some(why) = rollout.waiting_for(&services.registry)
        {
            return Some(why);
        }
        match services.registry.resolve(&f.algorithm) {
            Some(a) => self.router.topology().memory_shortfall(f, &a),
            None => self.missing_version(&f.algorithm),
        }
    }

    /// Why `algorithm` does not resolve to a loaded version, if it does not.
    fn missing_version(&self, algorithm: &AlgorithmRef) -> Option<String> {
        let registry = &self.router.services().registry;
        if registry.resolve(algorithm).is_some() {
            return None;
        }
        if registry.compiling_matches(algorithm) {
            return Some(match &algorithm.version {
                Some(v) => format!("version {v} of {} is compiling", algorithm.unversioned()),
                None => format!("a version of {} is compiling", algorithm.unversioned()),
            });
        }
        Some(match &algorithm.version {
            Some(v) => format!("version {v} of {} is not loaded", algorithm.unversioned()),
            None => format!("no version of {} is loaded", algorithm.unversioned()),
        })
    }

    /// The flow `name`, or 404.
    pub(super) fn flow_named(&self, name: &str) -> Result<FlowSpec, ControlError> {
        self.declarations()
            .flows
            .into_iter()
            .find(|f| f.name == name)
            .ok_or_else(|| ControlError::NotFound(format!("no flow named {name:?}")))
    }

    /// The result of a flow change: the flow, whether it kept its version,
    /// and warnings about a version that is not loaded.
    fn flow_change(&self, flow: FlowSpec, version_kept: bool, version_given: bool) -> FlowChange {
        let mut warnings = Vec::new();
        if (flow.enabled || version_given)
            && let Some(missing) = self.missing_version(&flow.algorithm)
        {
            let what = if flow.algorithm.version.is_some() {
                "it"
            } else {
                "one"
            };
            let when = if flow.enabled { "" } else { " once enabled" };
            tracing::warn!(
                flow = %flow.name,
                algorithm = %flow.algorithm,
                "The flow names a version that is not loaded; it waits for it."
            );
            warnings.push(format!("{missing}; the flow waits for {what}{when}"));
        }
        FlowChange {
            view: self.flow_view(&flow),
            flow,
            version_kept,
            warnings,
        }
    }

    /// Enables a topic for an algorithm version: creates the flow, or
    /// updates and enables the existing one of that name. Without a version
    /// an existing flow keeps the version it had (a new one follows the
    /// highest loaded version); `latest` switches it to the highest.
    pub async fn enable_flow(
        &self,
        role: &Role,
        req: EnableFlow,
    ) -> Result<FlowChange, ControlError> {
        let target = self.enable_target(role, &req)?;
        let (name, existed) = (target.name.clone(), target.existed);
        let version_given = target.settings.version.is_some();
        let d = self
            .change(move |d| {
                let flow = match d.flows.iter_mut().find(|f| f.name == target.name) {
                    Some(f) => f,
                    None => {
                        d.flows.push(FlowSpec::new(
                            &target.name,
                            &target.broker,
                            &target.topic,
                            target.algorithm,
                        ));
                        d.flows.last_mut().expect("just pushed")
                    }
                };
                flow.broker = target.broker;
                flow.topic = target.topic;
                target.settings.apply(flow);
                Ok(())
            })
            .await?;
        Ok(self.flow_change(declared(d, &name), existed && !version_given, version_given))
    }

    /// The flow an enable request names and what it sets, for a caller who
    /// may enable it: 400 for a malformed request, 403 for another owner's
    /// algorithm or flow, 409 for a name another algorithm's flow has.
    fn enable_target(&self, role: &Role, req: &EnableFlow) -> Result<Target, ControlError> {
        let algorithm: AlgorithmRef = req
            .algorithm
            .parse()
            .map_err(|e: String| ControlError::BadRequest(format!("algorithm: {e}")))?;
        if algorithm.version.is_some() {
            return Err(ControlError::BadRequest(
                "algorithm: give owner/name here and the version in `version`".into(),
            ));
        }
        role.authorize(Action::EnableFlow(&algorithm.owner))?;
        let settings = Settings::enabling(req)?;
        let d = self.declarations();
        let broker = match &req.broker {
            Some(b) => b.clone(),
            None if d.brokers.len() == 1 => d.brokers[0].name().to_string(),
            None => {
                return Err(ControlError::BadRequest(
                    "broker: required when there is not exactly one broker connection".into(),
                ));
            }
        };
        let name = req
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-{}-{}", algorithm.owner, algorithm.name, req.topic));
        for (field, value) in [("name", &name), ("topic", &req.topic), ("broker", &broker)] {
            config::check_name(value)
                .map_err(|m| ControlError::BadRequest(format!("{field}: {m}")))?;
        }
        let existing = d.flows.iter().find(|f| f.name == name);
        if let Some(existing) = existing {
            role.authorize(Action::EnableFlow(&existing.algorithm.owner))?;
            if existing.algorithm.owner != algorithm.owner
                || existing.algorithm.name != algorithm.name
            {
                return Err(ControlError::Conflict(format!(
                    "flow {name:?} exists for {}; choose another name",
                    existing.algorithm.unversioned()
                )));
            }
        }
        Ok(Target {
            existed: existing.is_some(),
            name,
            broker,
            topic: req.topic.clone(),
            algorithm,
            settings,
        })
    }

    /// Edits a flow's version, dead-letter topic, output, limits or state.
    /// A version that is not loaded is accepted (it may be deployed later)
    /// with a warning: the flow waits for it.
    pub async fn edit_flow(
        &self,
        role: &Role,
        name: &str,
        edit: EditFlow,
    ) -> Result<FlowChange, ControlError> {
        let flow = self.flow_named(name)?;
        role.authorize(Action::EditFlow(&flow.algorithm.owner))?;
        let settings = Settings::editing(edit)?;
        let version_given = settings.version.is_some();
        let n = flow.name;
        let d = self
            .change(move |d| {
                let f = d
                    .flows
                    .iter_mut()
                    .find(|f| f.name == n)
                    .ok_or_else(|| ControlError::NotFound(format!("no flow named {n:?}")))?;
                settings.apply(f);
                Ok(())
            })
            .await?;
        Ok(self.flow_change(declared(d, name), !version_given, version_given))
    }

    /// Deletes a flow. Its messages stay in the broker.
    pub async fn delete_flow(&self, role: &Role, name: &str) -> Result<(), ControlError> {
        let flow = self.flow_named(name)?;
        role.authorize(Action::DeleteFlow(&flow.algorithm.owner))?;
        self.change(move |d| {
            d.flows.retain(|f| f.name != flow.name);
            Ok(())
        })
        .await
        .map(|_| ())
    }
}

/// A flow as shown in listings.
/// `kind` is its broker's kind, which decides an unset `ordering`.
pub fn flow_view(f: &FlowSpec, kind: &str) -> api::Flow {
    api::Flow {
        name: f.name.clone(),
        broker: f.broker.clone(),
        topic: f.topic.clone(),
        algorithm: f.algorithm.unversioned(),
        version: f
            .algorithm
            .version
            .as_ref()
            .map(|v| v.to_string())
            .unwrap_or_else(|| "latest".into()),
        enabled: f.enabled,
        dead_letter_topic: f.dead_letter_topic.clone(),
        output_topic: f.output_topic.clone(),
        timeout_secs: f.timeout_secs,
        max_receives: f.max_receives,
        concurrency: f.concurrency,
        ordering: f.ordering_on(kind),
        on_key_failure: f.on_key_failure,
        filter: f.filter.clone(),
        batch: f.batch,
        canary: f.canary.clone(),
        shadow: f.shadow.clone(),
        rollout: f.rollout.clone(),
        skip_versions: f.skip_versions.clone(),
        waiting_for: None,
    }
}

/// Where an enable request puts its flow, checked, and what it sets.
struct Target {
    name: String,
    broker: String,
    topic: String,
    /// `owner/name`, without a version (the version is in `settings`).
    algorithm: AlgorithmRef,
    /// A flow of this name exists (for this algorithm).
    existed: bool,
    settings: Settings,
}

/// The settable fields of a flow as an enable or an edit gives them, `None`
/// keeping the flow's value: both apply them in this one way.
#[derive(Debug, Clone, Default, PartialEq)]
struct Settings {
    /// `Some(None)`: follow the highest loaded version; `Some(Some(v))`: `v`.
    version: Option<Option<semver::Version>>,
    enabled: Option<bool>,
    /// `Some(None)` removes the dead-letter topic.
    dead_letter_topic: Option<Option<String>>,
    /// `Some(None)` removes the output topic.
    output_topic: Option<Option<String>>,
    timeout_secs: Option<f64>,
    max_receives: Option<u32>,
    concurrency: Option<u32>,
    ordering: Option<FlowOrdering>,
    on_key_failure: Option<KeyFailure>,
    /// `Some(None)` removes the filter.
    filter: Option<Option<FilterSpec>>,
    /// `Some(None)` removes the batches.
    batch: Option<Option<BatchSpec>>,
    /// `Some(None)` removes the canary.
    canary: Option<Option<CanarySpec>>,
    /// `Some(None)` removes the shadow.
    shadow: Option<Option<ShadowSpec>>,
    /// `Some(None)` removes the rollout.
    rollout: Option<Option<RolloutPolicy>>,
    /// The new `skip_versions`.
    skip_versions: Option<Vec<semver::Version>>,
}

impl Settings {
    /// What enabling sets: the flow is enabled, and the topics are set when
    /// given (enabling never removes one).
    fn enabling(req: &EnableFlow) -> Result<Self, ControlError> {
        Ok(Self {
            version: parse_requested(req.version.as_deref())?,
            enabled: Some(true),
            dead_letter_topic: req.dead_letter_topic.clone().map(Some),
            output_topic: req.output_topic.clone().map(Some),
            timeout_secs: req.timeout_secs,
            max_receives: req.max_receives,
            concurrency: req.concurrency,
            ordering: req.ordering,
            on_key_failure: req.on_key_failure,
            filter: req.filter.clone().map(Some),
            batch: req.batch.map(Some),
            canary: None,
            shadow: None,
            rollout: None,
            skip_versions: None,
        })
    }

    /// What an edit sets: what it gives, `null` removing a topic.
    fn editing(edit: EditFlow) -> Result<Self, ControlError> {
        Ok(Self {
            version: parse_requested(edit.version.as_deref())?,
            enabled: edit.enabled,
            dead_letter_topic: edit.dead_letter_topic,
            output_topic: edit.output_topic,
            timeout_secs: edit.timeout_secs,
            max_receives: edit.max_receives,
            concurrency: edit.concurrency,
            ordering: edit.ordering,
            on_key_failure: edit.on_key_failure,
            filter: edit.filter,
            batch: edit.batch,
            canary: edit.canary,
            shadow: edit.shadow,
            rollout: edit.rollout,
            skip_versions: edit.skip_versions,
        })
    }

    /// Sets the given fields of `flow`.
    fn apply(self, flow: &mut FlowSpec) {
        // Removing the rollout clears what it skipped (the list needs a
        // rollout), unless the edit gives the list too.
        if matches!(self.rollout, Some(None)) && self.skip_versions.is_none() {
            flow.skip_versions.clear();
        }
        set(&mut flow.algorithm.version, self.version);
        set(&mut flow.enabled, self.enabled);
        set(&mut flow.dead_letter_topic, self.dead_letter_topic);
        set(&mut flow.output_topic, self.output_topic);
        set(&mut flow.timeout_secs, self.timeout_secs);
        set(&mut flow.max_receives, self.max_receives);
        set(&mut flow.concurrency, self.concurrency);
        set(&mut flow.ordering, self.ordering.map(Some));
        set(&mut flow.on_key_failure, self.on_key_failure);
        set(&mut flow.filter, self.filter);
        set(&mut flow.batch, self.batch);
        set(&mut flow.canary, self.canary);
        set(&mut flow.shadow, self.shadow);
        set(&mut flow.rollout, self.rollout);
        set(&mut flow.skip_versions, self.skip_versions);
    }
}

/// Sets `field` to `value` when one is given.
fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

/// The flow `name` of declarations just changed to hold it.
fn declared(d: config::Declarations, name: &str) -> FlowSpec {
    d.flows
        .into_iter()
        .find(|f| f.name == name)
        .expect("the flow exists")
}

/// A requested version: `None` when none was given (keep the flow's).
fn parse_requested(v: Option<&str>) -> Result<Option<Option<semver::Version>>, ControlError> {
    v.map(|v| parse_version(Some(v))).transpose()
}

fn parse_version(v: Option<&str>) -> Result<Option<semver::Version>, ControlError> {
    match v {
        None | Some("latest") | Some("") => Ok(None),
        Some(v) => semver::Version::parse(v).map(Some).map_err(|e| {
            ControlError::BadRequest(format!(
                "version: {v:?} is not a semver version or `latest`: {e}"
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version(Some("latest")).unwrap(), None);
        assert_eq!(
            parse_version(Some("0.1.0")).unwrap(),
            Some(semver::Version::new(0, 1, 0))
        );
        assert!(parse_version(Some("one")).is_err());
    }

    #[test]
    fn a_new_flow_has_the_file_defaults() {
        let algorithm: AlgorithmRef = "ezra/x".parse().unwrap();
        let from_file: FlowSpec =
            toml::from_str("name = \"f\"\ntopic = \"t\"\nalgorithm = \"ezra/x\"").unwrap();
        let new = FlowSpec::new("f", "b", "t", algorithm);
        assert_eq!(
            new,
            FlowSpec {
                broker: "b".into(),
                ..from_file
            }
        );
        assert_eq!(new.max_receives, 10);
        assert!(new.enabled);
    }

    /// Enabling and editing set the same fields the same way; only the
    /// defaults of what a request leaves out differ.
    #[test]
    fn enable_and_edit_apply_the_same_settings() {
        let base = FlowSpec::new("f", "b", "t", "ezra/x".parse().unwrap());
        let filter: FilterSpec = toml::from_str("payload = { kind = [\"order\"] }").unwrap();
        let enable = Settings::enabling(&EnableFlow {
            topic: "t".into(),
            algorithm: "ezra/x".into(),
            version: Some("1.2.3".into()),
            dead_letter_topic: Some("dlq".into()),
            output_topic: Some("out".into()),
            timeout_secs: Some(2.5),
            max_receives: Some(3),
            concurrency: Some(4),
            ordering: Some(FlowOrdering::Key),
            on_key_failure: Some(KeyFailure::Park),
            filter: Some(filter.clone()),
            batch: Some(BatchSpec::default()),
            ..EnableFlow::default()
        })
        .unwrap();
        let edit = Settings::editing(EditFlow {
            version: Some("1.2.3".into()),
            enabled: Some(true),
            dead_letter_topic: Some(Some("dlq".into())),
            output_topic: Some(Some("out".into())),
            timeout_secs: Some(2.5),
            max_receives: Some(3),
            concurrency: Some(4),
            ordering: Some(FlowOrdering::Key),
            on_key_failure: Some(KeyFailure::Park),
            filter: Some(Some(filter.clone())),
            batch: Some(Some(BatchSpec::default())),
            canary: None,
            shadow: None,
            rollout: None,
            skip_versions: None,
        })
        .unwrap();
        assert_eq!(enable, edit);
        let mut flow = FlowSpec {
            enabled: false,
            ..base.clone()
        };
        edit.apply(&mut flow);
        assert_eq!(flow.algorithm.version, Some(semver::Version::new(1, 2, 3)));
        assert_eq!(flow.dead_letter_topic.as_deref(), Some("dlq"));
        assert_eq!((flow.max_receives, flow.concurrency), (3, 4));
        assert_eq!(flow.filter.as_ref(), Some(&filter));
        assert_eq!(flow.batch, Some(BatchSpec::default()));
        assert_eq!(flow.ordering, Some(FlowOrdering::Key));
        assert_eq!(flow.on_key_failure, KeyFailure::Park);
        assert!(flow.enabled);
        // An edit's `null` removes a topic; enabling never does.
        let mut cleared = flow.clone();
        Settings {
            dead_letter_topic: Some(None),
            ..Settings::default()
        }
        .apply(&mut cleared);
        assert_eq!(cleared.dead_letter_topic, None);
        Settings {
            filter: Some(None),
            ..Settings::default()
        }
        .apply(&mut cleared);
        assert_eq!(cleared.filter, None);
        Settings {
            batch: Some(None),
            ..Settings::default()
        }
        .apply(&mut cleared);
        assert_eq!(cleared.batch, None);
        let mut kept = flow.clone();
        Settings::enabling(&EnableFlow::default())
            .unwrap()
            .apply(&mut kept);
        assert_eq!(kept, flow);
    }
}
