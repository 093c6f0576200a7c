//! `flows`: enable a topic for an algorithm version, edit, disable, delete.

use clap::{Args, Subcommand};

use super::client::Client;
use super::output::{self, Table};
use super::{Failure, Global, confirm};
use crate::api;

#[derive(Subcommand, Debug)]
pub(super) enum FlowsCommand {
    /// Lists flows with their state; with --algorithm, the topics that
    /// algorithm may use, each enabled or disabled (its "queues" tab).
    List {
        /// `owner/name`.
        #[arg(long)]
        algorithm: Option<String>,
    },
    /// Shows one flow as declared, with its status.
    Show {
        /// The flow.
        name: String,
    },
    /// Enables a topic for an algorithm version (creates the flow, or
    /// re-enables it). Re-enabling keeps the flow's version unless
    /// --version or --latest is given.
    Enable(EnableArgs),
    /// Edits a flow's version, topics or settings. A version that is not
    /// loaded is accepted with a warning: the flow waits for it.
    Edit(EditArgs),
    /// Disables a flow: consumption stops, in-flight work finishes, messages
    /// wait in the broker.
    Disable {
        /// The flow.
        name: String,
    },
    /// Gives a flow a canary: a share of its messages goes to another
    /// version, rolled back when its gate fails (see the README's Canary
    /// rollouts); --remove takes it away.
    Canary(CanaryArgs),
    /// Gives a flow a shadow: every message is run again by another
    /// version, its effects discarded, and the two compared (see the
    /// README's Canary rollouts); --off takes it away.
    Shadow(ShadowArgs),
    /// Promotes a flow's canary: the flow runs the canary version for
    /// every message (a declared canary's version is pinned; a rollout's
    /// becomes the version it serves).
    Promote {
        /// The flow.
        name: String,
    },
    /// Rolls a flow's canary back: it gets no more messages and the flow
    /// stays on its version.
    Rollback {
        /// The flow.
        name: String,
    },
    /// Deletes a flow; its messages stay in the broker.
    Delete {
        /// The flow.
        name: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

/// `flows enable`.
#[derive(Args, Debug)]
pub(super) struct EnableArgs {
    /// `owner/name`.
    #[arg(long)]
    algorithm: String,
    /// The topic to consume.
    #[arg(long)]
    topic: String,
    /// The flow's name; `<owner>-<name>-<topic>` by default.
    #[arg(long)]
    name: Option<String>,
    /// The broker connection, when there are several.
    #[arg(long)]
    broker: Option<String>,
    /// A version (or `latest`). Without it an existing flow keeps its
    /// version and a new flow follows the highest loaded version.
    #[arg(long, conflicts_with = "latest")]
    version: Option<String>,
    /// Follow the highest loaded version (also for an existing flow).
    #[arg(long)]
    latest: bool,
    /// Where failed messages go.
    #[arg(long)]
    dead_letter_topic: Option<String>,
    /// Where outputs go.
    #[arg(long)]
    output_topic: Option<String>,
    #[command(flatten)]
    settings: Settings,
}

/// `flows edit`.
#[derive(Args, Debug)]
pub(super) struct EditArgs {
    /// The flow.
    name: String,
    /// A version, or `latest`.
    #[arg(long, conflicts_with = "latest")]
    version: Option<String>,
    /// Follow the highest loaded version.
    #[arg(long)]
    latest: bool,
    /// A new dead-letter topic.
    #[arg(long, conflicts_with = "no_dead_letter_topic")]
    dead_letter_topic: Option<String>,
    /// Remove the dead-letter topic (failures are then dropped).
    #[arg(long)]
    no_dead_letter_topic: bool,
    /// A new output topic.
    #[arg(long, conflicts_with = "no_output_topic")]
    output_topic: Option<String>,
    /// Remove the output topic.
    #[arg(long)]
    no_output_topic: bool,
    /// Remove the filter: every message invokes the algorithm.
    #[arg(long, conflicts_with = "filter")]
    no_filter: bool,
    /// Remove the batches: one message per call.
    #[arg(long, conflicts_with = "batch")]
    no_batch: bool,
    /// For a flow that follows the latest version: roll a newly loaded
    /// version out gradually, e.g. "canary 10% then promote after 1000".
    #[arg(long, conflicts_with = "no_rollout")]
    rollout: Option<String>,
    /// Remove the rollout: a new version takes every message at once.
    #[arg(long)]
    no_rollout: bool,
    #[command(flatten)]
    settings: Settings,
}

/// `flows canary`.
#[derive(Args, Debug)]
pub(super) struct CanaryArgs {
    /// The flow.
    name: String,
    /// The canary version.
    #[arg(long, required_unless_present = "remove")]
    version: Option<String>,
    /// Its share of the messages, in percent.
    #[arg(long, default_value_t = 10.0)]
    percent: f64,
    /// Roll back when its failure rate exceeds the serving version's by
    /// more than this (0 to 1).
    #[arg(long)]
    max_failure_rate: Option<f64>,
    /// Roll back when its p99 invocation time exceeds this many times the
    /// serving version's.
    #[arg(long)]
    max_p99_ratio: Option<f64>,
    /// Messages of the canary before its gate is judged.
    #[arg(long, default_value_t = 100)]
    window_messages: u64,
    /// Promote it after this many messages with its gate passing.
    #[arg(long)]
    promote_after: Option<u64>,
    /// Remove the flow's canary.
    #[arg(long, conflicts_with = "version")]
    remove: bool,
}

/// `flows shadow`.
#[derive(Args, Debug)]
pub(super) struct ShadowArgs {
    /// The flow.
    name: String,
    /// The shadow version.
    #[arg(required_unless_present = "off")]
    version: Option<String>,
    /// Stop it when less than this share of the serving outputs (0 to 1)
    /// is reproduced byte for byte.
    #[arg(long)]
    min_output_agreement: Option<f64>,
    /// Stop it when its failure rate exceeds the serving version's by more
    /// than this (0 to 1).
    #[arg(long)]
    max_failure_rate: Option<f64>,
    /// Stop it when its p99 invocation time is more than this many times
    /// the serving version's.
    #[arg(long)]
    max_p99_ratio: Option<f64>,
    /// Messages of the shadow before its gate is judged.
    #[arg(long, default_value_t = 100)]
    window_messages: u64,
    /// Shadow runs at once; a message finding them all busy is skipped.
    #[arg(long, default_value_t = 2)]
    concurrency: u32,
    /// Remove the flow's shadow.
    #[arg(long, conflicts_with = "version")]
    off: bool,
}

/// A flow's settings, as `enable` and `edit` take them.
#[derive(Args, Debug)]
pub(super) struct Settings {
    /// Wall-clock limit per message, in seconds (above 0, at most 43200).
    #[arg(long)]
    timeout_secs: Option<f64>,
    /// Deliveries of a message before it is dead-lettered (at least 1).
    #[arg(long)]
    max_receives: Option<u32>,
    /// Invocations at once (at least 1).
    #[arg(long)]
    concurrency: Option<u32>,
    /// Which messages invoke the algorithm, as JSON, e.g.
    /// '{"payload": {"kind": ["order"]}, "headers": {"source": [{"prefix": "shop-"}]}}'
    /// (see the README's Filters); the others are acknowledged unprocessed.
    #[arg(long, value_parser = parse_filter)]
    filter: Option<api::flows::FilterSpec>,
    /// Batches for a 0.2.0 algorithm's `apply-batch`, as JSON, e.g.
    /// '{"max_messages": 64, "max_wait_ms": 20}' (see the README's Batches).
    #[arg(long, value_parser = parse_batch)]
    batch: Option<api::flows::BatchSpec>,
    /// `key`: messages with the same key one at a time, in order, keys in
    /// parallel (embedded, Kafka, SQS FIFO); `partition`: a partition's
    /// outputs in offset order (Kafka, Event Hubs); `none`: no order.
    #[arg(long, value_parser = parse_ordering)]
    ordering: Option<api::flows::FlowOrdering>,
    /// With `--ordering key`: `continue` (a key's failed message goes to the
    /// dead-letter topic and the key's next one proceeds) or `park` (the
    /// key's later messages are held until `eventflow keys release|drop`).
    #[arg(long, value_parser = parse_key_failure)]
    on_key_failure: Option<api::flows::KeyFailure>,
}

/// An `--ordering`: `none`, `partition` or `key`.
fn parse_ordering(text: &str) -> Result<api::flows::FlowOrdering, String> {
    serde_json::from_value(serde_json::Value::String(text.into()))
        .map_err(|_| format!("{text:?}: expected none, partition or key"))
}

/// An `--on-key-failure`: `continue` or `park`.
fn parse_key_failure(text: &str) -> Result<api::flows::KeyFailure, String> {
    serde_json::from_value(serde_json::Value::String(text.into()))
        .map_err(|_| format!("{text:?}: expected continue or park"))
}

/// A `--filter`: JSON in the shape of the configuration's `filter` table.
fn parse_filter(text: &str) -> Result<api::flows::FilterSpec, String> {
    serde_json::from_str(text).map_err(|e| format!("not a filter: {e}"))
}

/// A `--batch`: JSON in the shape of the configuration's `batch` table.
fn parse_batch(text: &str) -> Result<api::flows::BatchSpec, String> {
    serde_json::from_str(text).map_err(|e| format!("not a batch: {e}"))
}

pub(super) async fn run(g: &Global, command: FlowsCommand) -> Result<(), Failure> {
    let c = g.client()?;
    match command {
        FlowsCommand::List {
            algorithm: Some(alg),
        } => {
            let topics = c.algorithm_topics(&alg).await?;
            if g.json {
                output::json(&topics);
            } else {
                print_algorithm_topics(&topics);
            }
        }
        FlowsCommand::List { algorithm: None } => {
            let flows = c.flows().await?;
            if g.json {
                output::json(&flows);
            } else {
                print_flows(&flows);
            }
        }
        FlowsCommand::Show { name } => {
            let flow = c.flow(&name).await?;
            output::json(&flow);
        }
        FlowsCommand::Enable(args) => enable(g, &c, args).await?,
        FlowsCommand::Edit(args) => edit(g, &c, args).await?,
        FlowsCommand::Disable { name } => {
            let edit = api::EditFlow {
                enabled: Some(false),
                ..Default::default()
            };
            let changed = c.edit_flow(&name, &edit).await?;
            if g.json {
                output::json(&changed);
            } else {
                println!("disabled flow {name}: its messages wait in the broker");
            }
        }
        FlowsCommand::Canary(args) => canary(g, &c, args).await?,
        FlowsCommand::Shadow(args) => shadow(g, &c, args).await?,
        FlowsCommand::Promote { name } => end_canary(g, &c, &name, "promote").await?,
        FlowsCommand::Rollback { name } => end_canary(g, &c, &name, "rollback").await?,
        FlowsCommand::Delete { name, yes } => {
            confirm(&format!("Delete flow {name:?}?"), yes)?;
            let deleted = c.delete_flow(&name).await?;
            if g.json {
                output::json(&deleted);
            } else {
                println!("deleted flow {name}");
            }
        }
    }
    Ok(())
}

async fn enable(g: &Global, c: &Client, args: EnableArgs) -> Result<(), Failure> {
    let req = api::EnableFlow {
        name: args.name,
        broker: args.broker,
        topic: args.topic,
        algorithm: args.algorithm,
        version: version(args.version, args.latest),
        dead_letter_topic: args.dead_letter_topic,
        output_topic: args.output_topic,
        timeout_secs: args.settings.timeout_secs,
        max_receives: args.settings.max_receives,
        concurrency: args.settings.concurrency,
        ordering: args.settings.ordering,
        on_key_failure: args.settings.on_key_failure,
        filter: args.settings.filter,
        batch: args.settings.batch,
    };
    let changed = c.enable_flow(&req).await?;
    if g.json {
        output::json(&changed);
        return Ok(());
    }
    let f = &changed.flow;
    println!(
        "enabled flow {}: {}:{} -> {} {}{}",
        f.name,
        f.broker,
        f.topic,
        f.algorithm,
        f.version,
        if changed.version_kept {
            " (the version it had; --version V or --latest changes it)"
        } else {
            ""
        },
    );
    print_warnings(&changed);
    Ok(())
}

async fn edit(g: &Global, c: &Client, args: EditArgs) -> Result<(), Failure> {
    let edit = api::EditFlow {
        version: version(args.version, args.latest),
        dead_letter_topic: topic_edit(args.dead_letter_topic, args.no_dead_letter_topic),
        output_topic: topic_edit(args.output_topic, args.no_output_topic),
        enabled: None,
        timeout_secs: args.settings.timeout_secs,
        max_receives: args.settings.max_receives,
        concurrency: args.settings.concurrency,
        ordering: args.settings.ordering,
        on_key_failure: args.settings.on_key_failure,
        filter: if args.no_filter {
            Some(None)
        } else {
            args.settings.filter.map(Some)
        },
        batch: if args.no_batch {
            Some(None)
        } else {
            args.settings.batch.map(Some)
        },
        canary: None,
        shadow: None,
        rollout: match (args.rollout, args.no_rollout) {
            (_, true) => Some(None),
            (Some(text), false) => Some(Some(
                crate::config::RolloutPolicy::try_from(text)
                    .map_err(|e| anyhow::anyhow!("--rollout: {e}"))?,
            )),
            (None, false) => None,
        },
        skip_versions: None,
    };
    let changed = c.edit_flow(&args.name, &edit).await?;
    if g.json {
        output::json(&changed);
        return Ok(());
    }
    println!(
        "edited flow {}: {} {}",
        args.name, changed.flow.algorithm, changed.flow.version
    );
    print_warnings(&changed);
    Ok(())
}

/// `flows shadow`: an edit of the flow's shadow.
async fn shadow(g: &Global, c: &Client, args: ShadowArgs) -> Result<(), Failure> {
    let shadow = match args.version {
        Some(v) if !args.off => Some(api::flows::ShadowSpec {
            version: semver::Version::parse(&v)
                .map_err(|e| anyhow::anyhow!("version {v:?} is not a semver version: {e}"))?,
            min_output_agreement: args.min_output_agreement,
            max_failure_rate: args.max_failure_rate,
            max_p99_ratio: args.max_p99_ratio,
            window_messages: args.window_messages,
            concurrency: args.concurrency,
        }),
        _ => None,
    };
    let edit = api::EditFlow {
        shadow: Some(shadow),
        ..Default::default()
    };
    let changed = c.edit_flow(&args.name, &edit).await?;
    if g.json {
        output::json(&changed);
        return Ok(());
    }
    match &changed.flow.shadow {
        Some(s) => println!(
            "flow {}: shadow {} runs every message, its effects discarded",
            args.name, s.version
        ),
        None => println!("flow {}: no shadow", args.name),
    }
    print_warnings(&changed);
    Ok(())
}

/// `flows canary`: an edit of the flow's canary.
async fn canary(g: &Global, c: &Client, args: CanaryArgs) -> Result<(), Failure> {
    let canary = match args.version {
        Some(v) if !args.remove => Some(api::flows::CanarySpec {
            version: semver::Version::parse(&v)
                .map_err(|e| anyhow::anyhow!("--version {v:?} is not a semver version: {e}"))?,
            percent: args.percent,
            max_failure_rate: args.max_failure_rate,
            max_p99_ratio: args.max_p99_ratio,
            window_messages: args.window_messages,
            promote_after: args.promote_after,
        }),
        _ => None,
    };
    let edit = api::EditFlow {
        canary: Some(canary),
        ..Default::default()
    };
    let changed = c.edit_flow(&args.name, &edit).await?;
    if g.json {
        output::json(&changed);
        return Ok(());
    }
    match &changed.flow.canary {
        Some(k) => println!(
            "flow {}: canary {} gets {}% of the messages",
            args.name, k.version, k.percent
        ),
        None => println!("flow {}: no canary", args.name),
    }
    print_warnings(&changed);
    Ok(())
}

/// `flows promote` or `flows rollback` (`action`).
async fn end_canary(g: &Global, c: &Client, name: &str, action: &str) -> Result<(), Failure> {
    let changed = c.end_canary(name, action).await?;
    if g.json {
        output::json(&changed);
    } else if changed.state == api::RolloutState::Promoted {
        println!(
            "promoted the canary of flow {name}: it runs {}",
            changed.algorithm
        );
    } else {
        println!(
            "rolled back the canary of flow {name}: it runs {}",
            changed.algorithm
        );
    }
    Ok(())
}

/// `--version V`, or `latest` with `--latest`.
fn version(version: Option<String>, latest: bool) -> Option<String> {
    if latest {
        Some("latest".into())
    } else {
        version
    }
}

/// A topic edit: a new topic, `null` to remove it, or absent to keep it.
fn topic_edit(topic: Option<String>, remove: bool) -> Option<Option<String>> {
    if remove { Some(None) } else { topic.map(Some) }
}

/// Prints the warnings of a change, one `warning: ...` line each.
fn print_warnings(changed: &api::FlowChanged) {
    for w in &changed.warnings {
        println!("warning: {w}");
    }
}

/// Each flow as declared, with its state and last error (a `degraded` flow
/// says there why).
fn print_flows(flows: &[api::FlowEntry]) {
    let mut table = Table::new(&[
        "FLOW",
        "STATE",
        "TOPIC",
        "ALGORITHM",
        "VERSION",
        "DEAD-LETTER TOPIC",
        "LAST ERROR",
    ]);
    for f in flows {
        let last_error = match (&f.report.last_error, &f.waiting_for) {
            (Some((at, what)), _) => format!("{at} {what}"),
            (None, Some(waiting)) => format!("waiting: {waiting}"),
            (None, None) => "-".into(),
        };
        table.row(vec![
            f.spec.name.clone(),
            f.report.state.to_string(),
            format!("{}:{}", f.spec.broker, f.spec.topic),
            f.spec.algorithm.clone(),
            f.spec.version.clone(),
            output::or_dash(f.spec.dead_letter_topic.as_deref()),
            last_error,
        ]);
    }
    table.print();
}

/// An algorithm's topics, every flow of it on each topic one a line.
fn print_algorithm_topics(topics: &api::AlgorithmTopics) {
    println!(
        "{:<32} {:<9} {:<24} {:<10} DEAD-LETTER TOPIC",
        "TOPIC", "ENABLED", "FLOW", "VERSION"
    );
    for t in &topics.topics {
        let topic = format!("{}:{}", t.broker, t.topic);
        if t.flows.is_empty() {
            println!("{topic:<32} {:<9} {:<24} {:<10} -", "no", "-", "-");
        }
        for flow in &t.flows {
            println!(
                "{:<32} {:<9} {:<24} {:<10} {}{}",
                topic,
                if flow.enabled { "yes" } else { "no" },
                flow.name,
                flow.version,
                flow.dead_letter_topic.as_deref().unwrap_or("-"),
                flow.waiting_for
                    .as_deref()
                    .map(|w| format!("  (waiting: {w})"))
                    .unwrap_or_default(),
            );
        }
    }
}
