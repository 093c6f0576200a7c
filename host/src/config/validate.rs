//! Cross-reference checks of a parsed configuration: names, brokers, topics
//! and their grants, flows and limits.

use std::collections::{BTreeMap, HashSet};

use super::{
    Config, FlowSpec, Limits, SandboxConfig, TopicSpec, check_name, check_topic_reference,
    dead_letter_topic_keys, find_topic, is_valid_name, quote_name,
};

/// A field's dotted path and what is wrong with it.
type FieldError = (String, String);

/// Checks cross-references and fills in defaults that depend on other fields
/// (a flow's or topic's broker when there is only one).
pub fn validate(config: &mut Config) -> Result<(), FieldError> {
    if config.sandbox.max_instances == 0 {
        return Err(("sandbox.max_instances".into(), "must be at least 1".into()));
    }
    check_bucket("data", &config.data)?;
    check_bucket("plugins", &config.plugins)?;
    if !config.plugins.is_local() {
        let p = &config.plugins;
        let credentials = [
            ("access_key_id", &p.access_key_id),
            ("secret_access_key", &p.secret_access_key),
            ("session_token", &p.session_token),
            ("access_key", &p.access_key),
        ];
        if let Some((field, _)) = credentials
            .iter()
            .find(|(_, r)| matches!(r, Some(crate::secret::SecretRef::Secret(_))))
        {
            return Err((
                format!("plugins.{field}"),
                "the plugin bucket's credentials are read before the router's secrets are open: use { env = \"VAR\" } or { file = \"PATH\" }, or the default chain".into(),
            ));
        }
    }
    let poll = config.router.plugins_poll_secs;
    if !(poll.is_finite() && (0.1..=86_400.0).contains(&poll)) {
        return Err((
            "router.plugins_poll_secs".into(),
            "must be between 0.1 and 86400 seconds".into(),
        ));
    }
    let brokers = check_brokers(config)?;
    check_topics(config, &brokers)?;
    check_flow_names(config, &brokers)?;
    check_flows(config)?;
    super::outbound::check_outbound(&config.outbound)?;
    check_algorithm_limits(config)
}

/// Checks `[data]` or `[plugins]` (`section`): the backend URL, which
/// fields apply to it, and that credentials are references.
fn check_bucket(section: &str, bucket: &crate::data::DataConfig) -> Result<(), FieldError> {
    bucket
        .validate()
        .map_err(|(f, m)| (format!("{section}.{f}"), m))?;
    let spec = serde_json::to_value(bucket).unwrap_or_default();
    if let Some(path) = inline_secret(&spec, "") {
        return Err((
            format!("{section}{path}"),
            "credentials may not be written inline: use { env = \"VAR\" }, { file = \"PATH\" } or { secret = \"NAME\" }".into(),
        ));
    }
    if let Some((path, m)) = bad_secret_name(&spec, "") {
        return Err((format!("{section}{path}.secret"), m));
    }
    Ok(())
}

/// The broker connections that topics and flows may name.
struct Brokers {
    /// Every connection's name.
    names: HashSet<String>,
    /// The name of the only connection, when there is exactly one.
    only: Option<String>,
}

impl Brokers {
    /// Fills in an empty `broker` with the only connection, or checks that
    /// the named connection exists.
    fn resolve(&self, field: String, broker: &mut String) -> Result<(), FieldError> {
        if broker.is_empty() {
            match &self.only {
                Some(name) => *broker = name.clone(),
                None => {
                    return Err((
                        field,
                        "is required when there is not exactly one broker connection".into(),
                    ));
                }
            }
        } else if !self.names.contains(broker.as_str()) {
            return Err((field, format!("no broker connection named \"{broker}\"")));
        }
        Ok(())
    }
}

/// Checks each broker connection's name, uniqueness, own settings and
/// credential references.
fn check_brokers(config: &Config) -> Result<Brokers, FieldError> {
    let mut names = HashSet::new();
    for (i, b) in config.brokers.iter().enumerate() {
        check_name(b.name()).map_err(|m| (format!("brokers[{i}].name"), m))?;
        if !names.insert(b.name().to_string()) {
            return Err((
                format!("brokers[{i}].name"),
                format!(
                    "a broker connection named \"{}\" is already defined",
                    b.name()
                ),
            ));
        }
        b.validate()
            .map_err(|(f, m)| (format!("brokers[{i}].{f}"), m))?;
        let spec = serde_json::to_value(b).unwrap_or_default();
        if let Some(path) = inline_secret(&spec, "") {
            return Err((
                format!("brokers[{i}]{path}"),
                "credentials may not be written inline: use { env = \"VAR\" }, { file = \"PATH\" } or { secret = \"NAME\" } (the admin API stores inline values as secrets)".into(),
            ));
        }
        if let Some((path, m)) = bad_secret_name(&spec, "") {
            return Err((format!("brokers[{i}]{path}.secret"), m));
        }
    }
    let only = (config.brokers.len() == 1).then(|| config.brokers[0].name().to_string());
    Ok(Brokers { names, only })
}

/// Checks each topic's names, address and grants, fills in its broker, and
/// refuses a topic declared twice on one broker.
fn check_topics(config: &mut Config, brokers: &Brokers) -> Result<(), FieldError> {
    let mut topic_keys: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (i, t) in config.topics.iter_mut().enumerate() {
        check_name(&t.name).map_err(|m| (format!("topics[{i}].name"), m))?;
        if !t.broker.is_empty() {
            check_name(&t.broker).map_err(|m| (format!("topics[{i}].broker"), m))?;
        }
        brokers.resolve(format!("topics[{i}].broker"), &mut t.broker)?;
        if let Some(address) = &t.address {
            check_address(address).map_err(|m| (format!("topics[{i}].address"), m))?;
        }
        check_grants(i, t)?;
        if topic_keys
            .insert((t.broker.clone(), t.name.clone()), i)
            .is_some()
        {
            return Err((
                format!("topics[{i}].name"),
                format!(
                    "topic \"{}\" is already defined on broker \"{}\"",
                    t.name, t.broker
                ),
            ));
        }
    }
    Ok(())
}

/// Checks that every entry of topic `i`'s access lists is `owner/name` or
/// `owner/*`.
fn check_grants(i: usize, t: &TopicSpec) -> Result<(), FieldError> {
    for (list, grants) in [
        ("consumers", &t.consumers),
        ("publishers", &t.publishers),
        ("dead_letter_publishers", &t.dead_letter_publishers),
    ] {
        for (j, g) in grants.iter().enumerate() {
            let ok = match g.split_once('/') {
                Some((owner, name)) => is_valid_name(owner) && (name == "*" || is_valid_name(name)),
                None => false,
            };
            if !ok {
                return Err((
                    format!("topics[{i}].{list}[{j}]"),
                    format!("\"{g}\" is not a grant: expected owner/name or owner/*"),
                ));
            }
        }
    }
    Ok(())
}

/// Checks each flow's names and topic references, refuses a flow declared
/// twice, and fills in its broker.
fn check_flow_names(config: &mut Config, brokers: &Brokers) -> Result<(), FieldError> {
    let mut flow_names = HashSet::new();
    for (i, f) in config.flows.iter_mut().enumerate() {
        let at = |field: &str| format!("flows[{i}].{field}");
        check_name(&f.name).map_err(|m| (at("name"), m))?;
        if !f.broker.is_empty() {
            check_name(&f.broker).map_err(|m| (at("broker"), m))?;
        }
        check_name(&f.topic).map_err(|m| {
            let hint = if f.topic.contains(':') {
                " (a flow consumes from its own broker connection: use the plain topic name)"
            } else {
                ""
            };
            (at("topic"), format!("{m}{hint}"))
        })?;
        for (field, target) in [
            ("output_topic", &f.output_topic),
            ("dead_letter_topic", &f.dead_letter_topic),
        ] {
            if let Some(target) = target {
                check_topic_reference(target).map_err(|m| (at(field), m))?;
            }
        }
        if !flow_names.insert(f.name.clone()) {
            return Err((
                at("name"),
                format!("a flow named \"{}\" is already defined", f.name),
            ));
        }
        if f.enabled {
            brokers.resolve(at("broker"), &mut f.broker)?;
        } else if f.broker.is_empty() {
            // A disabled flow may point at a connection that is gone; it is
            // checked again when it is enabled.
            if let Some(name) = &brokers.only {
                f.broker = name.clone();
            }
        }
    }
    Ok(())
}

/// With every flow's broker known: checks enabled flows against the topics
/// and every flow's timeout and limits.
fn check_flows(config: &Config) -> Result<(), FieldError> {
    let dead_letter_topics = dead_letter_topic_keys(&config.flows, &config.topics);
    for (i, f) in config.flows.iter().enumerate() {
        let at = |field: &str| format!("flows[{i}].{field}");
        if f.enabled {
            check_flow(f, &config.topics, &dead_letter_topics)
                .map_err(|(field, m)| (at(&field), m))?;
        }
        check_timeout(f.timeout_secs).map_err(|m| (at("timeout_secs"), m))?;
        check_limits(&f.limits, &config.sandbox)
            .map_err(|(field, m)| (at(&format!("limits.{field}")), m))?;
        check_filter(f).map_err(|(field, m)| (at(&field), m))?;
        check_ordering(f, config).map_err(|m| (at("ordering"), m))?;
        if let Some(canary) = &f.canary {
            super::check_canary(canary, &f.algorithm).map_err(|(field, m)| (at(&field), m))?;
        }
        if let Some(shadow) = &f.shadow {
            super::check_shadow(shadow, &f.algorithm).map_err(|(field, m)| (at(&field), m))?;
        }
        if f.rollout.is_some() {
            check_rollout(f).map_err(|m| (at("rollout"), m))?;
        }
        check_skip_versions(f).map_err(|m| (at("skip_versions"), m))?;
    }
    Ok(())
}

/// A rollout takes over from the latest version, so the flow must follow
/// it; and a flow's canary is either declared or the rollout's.
fn check_rollout(f: &FlowSpec) -> Result<(), String> {
    if let Some(v) = &f.algorithm.version {
        return Err(format!(
            "a rollout applies to a flow that follows the latest version (algorithm = \"{}/{}\"); this one pins {v}",
            f.algorithm.owner, f.algorithm.name
        ));
    }
    if f.canary.is_some() {
        return Err("a flow with a rollout cannot also declare a canary: the rollout makes each new version its canary".into());
    }
    Ok(())
}

/// Skipped versions are the rollout's: a flow without one has nothing that
/// would skip them.
fn check_skip_versions(f: &FlowSpec) -> Result<(), String> {
    if f.skip_versions.is_empty() || f.rollout.is_some() {
        return Ok(());
    }
    Err(format!(
        "skip_versions ({}) applies to a flow with a rollout (rollout = \"canary N% then promote after M\"); remove it or add a rollout",
        f.skip_versions
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// Order by key needs a key and a receive loop that keeps it: the embedded
/// broker's message key, Kafka's (and Event Hubs') record key, an SQS FIFO
/// queue's message group. Order by partition needs partitions. `park`
/// needs an order to hold.
fn check_ordering(f: &FlowSpec, config: &Config) -> Result<(), String> {
    use super::FlowOrdering;
    if !f.by_key() && f.on_key_failure == super::KeyFailure::Park {
        return Err(
            "on_key_failure = \"park\" needs ordering = \"key\": without an order there is nothing to hold".into(),
        );
    }
    let Some(b) = config.brokers.iter().find(|b| b.name() == f.broker) else {
        return Ok(());
    };
    match f.ordering {
        Some(FlowOrdering::Partition) if !super::PARTITIONED_BROKERS.contains(&b.kind()) => {
            Err(format!(
                "ordering = \"partition\" needs a broker with partitions (kafka, eventhubs); broker \"{}\" is {}: use \"key\" or \"none\"",
                f.broker,
                b.kind()
            ))
        }
        Some(FlowOrdering::Key) if !KEYED_BROKERS.contains(&b.kind()) => Err(format!(
            "ordering = \"key\" is supported on the embedded, kafka, eventhubs and sqs (FIFO queues) brokers so far; broker \"{}\" is {}",
            f.broker,
            b.kind()
        )),
        #[cfg(feature = "sqs")]
        Some(FlowOrdering::Key) if b.kind() == "sqs" => {
            let address = config
                .topics
                .iter()
                .find(|t| t.name == f.topic && t.broker == f.broker)
                .map(|t| t.address())
                .unwrap_or(&f.topic);
            if crate::connector::sqs::is_fifo(address) {
                Ok(())
            } else {
                Err(format!(
                    "ordering = \"key\" on SQS orders by a FIFO queue's message group; queue {address} of topic \"{}\" is a standard queue (FIFO queue names end in .fifo)",
                    f.topic
                ))
            }
        }
        _ => Ok(()),
    }
}

/// The broker kinds whose messages have a key `ordering = "key"` can use.
const KEYED_BROKERS: [&str; 4] = ["embedded", "kafka", "eventhubs", "sqs"];

/// Compiles a flow's filter the way the flow will when it starts; the error
/// names the flow and the pattern.
fn check_filter(f: &FlowSpec) -> Result<(), FieldError> {
    let Some(filter) = &f.filter else {
        return Ok(());
    };
    crate::flow::filter::Filter::compile(filter)
        .map(|_| ())
        .map_err(|e| {
            let field = match e.path.as_str() {
                "filter" => "filter".to_string(),
                path => format!("filter.{path}"),
            };
            let message = format!(
                "flow \"{}\": filter pattern {}: {}",
                f.name, e.pattern, e.message
            );
            (field, message)
        })
}

/// Checks the per-version limit overrides: each names a version and keeps
/// within the sandbox's bounds.
fn check_algorithm_limits(config: &Config) -> Result<(), FieldError> {
    for (i, o) in config.algorithm_limits.iter().enumerate() {
        if o.algorithm.version.is_none() {
            return Err((
                format!("algorithm_limits[{i}].algorithm"),
                format!(
                    "\"{}\" must name a version: owner/name/version",
                    o.algorithm
                ),
            ));
        }
        if let Some(t) = o.timeout_secs {
            check_timeout(t).map_err(|m| (format!("algorithm_limits[{i}].timeout_secs"), m))?;
        }
        check_limits(&o.apply_to(&Limits::default()), &config.sandbox)
            .map_err(|(field, m)| (format!("algorithm_limits[{i}].{field}"), m))?;
    }
    Ok(())
}

/// The broker's own name for a topic (a queue URL, a queue, a Kafka topic)
/// is the broker's to judge; only what no broker takes is refused here.
fn check_address(address: &str) -> Result<(), String> {
    const MAX_ADDRESS_BYTES: usize = 1024;
    if address.is_empty() {
        Err("may not be empty (leave it out to use the topic's name)".into())
    } else if address.len() > MAX_ADDRESS_BYTES {
        Err(format!(
            "{} is longer than {MAX_ADDRESS_BYTES} bytes",
            quote_name(address)
        ))
    } else if address.chars().any(char::is_control) {
        Err(format!(
            "{} contains control characters",
            quote_name(address)
        ))
    } else {
        Ok(())
    }
}

/// The path and error of the first router-secret reference
/// (`{ secret = NAME }`) in `v` whose name is not a valid name.
fn bad_secret_name(v: &serde_json::Value, path: &str) -> Option<(String, String)> {
    match v {
        serde_json::Value::Object(map) => {
            if map.len() == 1
                && let Some(serde_json::Value::String(name)) = map.get("secret")
            {
                return check_name(name).err().map(|m| (path.to_string(), m));
            }
            map.iter()
                .find_map(|(k, v)| bad_secret_name(v, &format!("{path}.{k}")))
        }
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| bad_secret_name(v, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// The path of the first inline credential (`{ value = ... }`) in `v`.
pub fn inline_secret(v: &serde_json::Value, path: &str) -> Option<String> {
    match v {
        serde_json::Value::Object(map) => {
            if map.len() == 1 && map.contains_key("value") {
                return Some(path.to_string());
            }
            map.iter()
                .find_map(|(k, v)| inline_secret(v, &format!("{path}.{k}")))
        }
        serde_json::Value::Array(items) => items
            .iter()
            .enumerate()
            .find_map(|(i, v)| inline_secret(v, &format!("{path}[{i}]"))),
        _ => None,
    }
}

/// Checks one flow against the topics and their access lists;
/// `dead_letter_topics` holds the keys of every flow's dead-letter topic.
pub fn check_flow(
    f: &FlowSpec,
    topics: &[TopicSpec],
    dead_letter_topics: &HashSet<String>,
) -> Result<(), FieldError> {
    let topic = find_topic(topics, &f.broker, &f.topic).ok_or_else(|| {
        (
            "topic".to_string(),
            format!(
                "no topic \"{}\" is declared on broker \"{}\" (add it to [[topics]])",
                f.topic, f.broker
            ),
        )
    })?;
    if f.topic.contains(':') {
        return Err((
            "topic".into(),
            "a flow consumes from its own broker connection: use the plain topic name".into(),
        ));
    }
    let alg = f.algorithm.unversioned();
    if !topic.may_consume(&f.algorithm.owner, &f.algorithm.name) {
        return Err((
            "algorithm".into(),
            format!(
                "{alg} has no grant to consume from topic \"{}\" on broker \"{}\": add \"{alg}\" to that topic's consumers",
                topic.name, topic.broker
            ),
        ));
    }
    check_targets(f, topics, dead_letter_topics)?;
    check_flow_settings(f)
}

/// Checks that flow `f` may publish its outputs to its output topic; its
/// dead-letter topic needs only to exist, since the router writes there.
fn check_targets(
    f: &FlowSpec,
    topics: &[TopicSpec],
    dead_letter_topics: &HashSet<String>,
) -> Result<(), FieldError> {
    let alg = f.algorithm.unversioned();
    for (field, target) in [
        ("output_topic", &f.output_topic),
        ("dead_letter_topic", &f.dead_letter_topic),
    ] {
        let Some(target) = target else { continue };
        let t = find_topic(topics, &f.broker, target).ok_or_else(|| {
            (
                field.to_string(),
                format!("no topic \"{target}\" is declared (add it to [[topics]])"),
            )
        })?;
        if field == "dead_letter_topic" {
            // The router writes dead letters itself: no grant needed.
            continue;
        }
        if dead_letter_topics.contains(&t.key()) {
            if !t.may_publish_dead_letters(&f.algorithm.owner, &f.algorithm.name) {
                return Err((
                    field.to_string(),
                    format!(
                        "topic \"{}\" on broker \"{}\" is a flow's dead-letter topic, which only the router writes: add \"{alg}\" to that topic's dead_letter_publishers to let the algorithm's outputs go there",
                        t.name, t.broker
                    ),
                ));
            }
            continue;
        }
        if !t.may_publish(&f.algorithm.owner, &f.algorithm.name) {
            return Err((
                field.to_string(),
                format!(
                    "{alg} has no grant to publish to topic \"{}\" on broker \"{}\": add \"{alg}\" to that topic's publishers",
                    t.name, t.broker
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a flow's numeric settings: concurrency, deliveries, consumer
/// depth and retry delays.
fn check_flow_settings(f: &FlowSpec) -> Result<(), FieldError> {
    if f.concurrency == 0 {
        return Err(("concurrency".into(), "must be at least 1".into()));
    }
    if f.max_receives == 0 {
        return Err(("max_receives".into(), "must be at least 1".into()));
    }
    if let Some(b) = &f.batch {
        if !(1..=super::flow::MAX_BATCH_MESSAGES).contains(&b.max_messages) {
            return Err((
                "batch.max_messages".into(),
                format!(
                    "{} must be between 1 and {}",
                    b.max_messages,
                    super::flow::MAX_BATCH_MESSAGES
                ),
            ));
        }
        if b.max_wait_ms > super::flow::MAX_BATCH_WAIT_MS {
            return Err((
                "batch.max_wait_ms".into(),
                format!(
                    "{} is over {} (a minute)",
                    b.max_wait_ms,
                    super::flow::MAX_BATCH_WAIT_MS
                ),
            ));
        }
        if b.max_bytes == 0 {
            return Err(("batch.max_bytes".into(), "must be at least 1".into()));
        }
    }
    if let Some(n) = f.consumer.in_flight_per_partition
        && !(1..=64).contains(&n)
    {
        return Err((
            "consumer.in_flight_per_partition".into(),
            format!("{n} must be between 1 and 64"),
        ));
    }
    if f.retry.base_ms > f.retry.cap_ms {
        return Err((
            "retry.base_ms".into(),
            format!(
                "{} is larger than retry.cap_ms ({})",
                f.retry.base_ms, f.retry.cap_ms
            ),
        ));
    }
    Ok(())
}

fn check_timeout(t: f64) -> Result<(), String> {
    if t > 0.0 && t <= 12.0 * 3600.0 {
        Ok(())
    } else {
        Err(format!("{t} must be above 0 and at most 43200 (12 h)"))
    }
}

fn check_limits(l: &Limits, sandbox: &SandboxConfig) -> Result<(), FieldError> {
    if !(l.host_call_timeout_secs > 0.0 && l.host_call_timeout_secs <= 3600.0) {
        return Err((
            "host_call_timeout_secs".into(),
            "must be above 0 and at most 3600".into(),
        ));
    }
    if l.max_memory_mib == 0 || l.max_memory_mib > sandbox.max_memory_mib {
        return Err((
            "max_memory_mib".into(),
            format!(
                "{} must be between 1 and sandbox.max_memory_mib ({})",
                l.max_memory_mib, sandbox.max_memory_mib
            ),
        ));
    }
    if l.max_fuel.is_some() && !sandbox.fuel {
        return Err((
            "max_fuel".into(),
            "needs fuel counting: set `fuel = true` under [sandbox]".into(),
        ));
    }
    Ok(())
}
