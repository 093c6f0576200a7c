//! The `eventflow` command line. Every subcommand but `run` and `data`
//! talks to the running router through the admin API it finds from the same
//! `--config`. Mistakes print one line and exit non-zero: 2 for a bad
//! configuration or usage, 1 for anything else.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use crate::admin::client::AdminClient;
use crate::config::{self, Config, ConfigError};
use crate::data::{Collections, DataUri};
use crate::telemetry::LogFormat;

/// Eventflow: an event router for WebAssembly algorithms.
#[derive(Parser, Debug)]
#[command(name = "eventflow", version, about, long_about = None)]
pub struct Cli {
    /// Log format of `run`.
    #[arg(
        long,
        value_enum,
        default_value = "text",
        global = true,
        env = "EVENTFLOW_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct ConfigArg {
    /// The configuration file (TOML).
    #[arg(
        long,
        short = 'c',
        default_value = "eventflow.toml",
        env = "EVENTFLOW_CONFIG"
    )]
    config: PathBuf,
    /// An API token; the admin token from the state directory by default.
    /// Owner-scoped tokens manage only their owner's algorithms: flows, dead
    /// letters, secrets, and sending to topics those algorithms consume.
    #[arg(long, env = "EVENTFLOW_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Starts the router: loads plugins, connects brokers, runs the flows
    /// until SIGINT or SIGTERM, then finishes in-flight messages and exits 0.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Overrides router.plugins_dir.
        #[arg(long)]
        plugins: Option<PathBuf>,
        /// Overrides router.data_dir.
        #[arg(long)]
        data: Option<PathBuf>,
        /// Overrides router.state_dir.
        #[arg(long)]
        state: Option<PathBuf>,
        /// When a store file (state.redb, an embedded broker's file) is
        /// damaged, rename it to `<file>.damaged-<timestamp>` and start with
        /// an empty one instead of refusing to start.
        #[arg(long)]
        move_damaged_aside: bool,
    },
    /// Checks a configuration file and prints what it declares.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Publishes a message to a topic through the running router.
    Send {
        /// The topic, by its configured name.
        topic: String,
        /// The payload, as text (usually JSON).
        #[arg(long, conflicts_with = "file", required_unless_present = "file")]
        data: Option<String>,
        /// Read the payload from a file.
        #[arg(long)]
        file: Option<PathBuf>,
        /// The broker connection, when the topic name exists on several.
        #[arg(long)]
        broker: Option<String>,
        /// A header, `key=value`; repeatable.
        #[arg(long = "header", short = 'H', value_parser = parse_header)]
        headers: Vec<(String, String)>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Reads data collections (from the data directory; no router needed).
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Lists the algorithms the running router has loaded.
    Plugins {
        #[command(subcommand)]
        command: PluginsCommand,
    },
    /// Shows what every flow of the running router is doing.
    Status {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Inspects and replays a flow's dead letters.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
    /// Topics of broker connections and their access lists.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
    /// Converges the router's state (brokers, topics, flows, limits) to a
    /// configuration file, live.
    Apply {
        /// The file whose declarations to apply.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Broker connections: create, list, show, delete (never edited).
    Brokers {
        #[command(subcommand)]
        command: BrokersCommand,
    },
    /// Flows: enable a topic for an algorithm version, edit, disable.
    Flows {
        #[command(subcommand)]
        command: FlowsCommand,
    },
    /// Algorithms' secrets: set, list names, delete. Values are never shown.
    Secrets {
        #[command(subcommand)]
        command: SecretsCommand,
    },
    /// Owner-scoped API tokens.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
}

#[derive(Subcommand, Debug)]
enum BrokersCommand {
    /// Lists broker connections, credentials redacted.
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Shows one broker connection, credentials redacted.
    Show {
        /// The connection.
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Creates a broker connection.
    Create {
        /// The connection's name.
        name: String,
        /// embedded, kafka, eventhubs, sqs or servicebus.
        #[arg(long)]
        kind: String,
        /// A field, `key=value` (TOML value syntax, plain strings allowed).
        #[arg(long = "set", value_parser = parse_header)]
        fields: Vec<(String, String)>,
        /// A credential field read from an environment variable of this
        /// command, `key=VAR`; stored by the router as a secret.
        #[arg(long = "secret", value_parser = parse_header)]
        secrets: Vec<(String, String)>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Deletes a broker connection and its topics.
    Delete {
        /// The connection.
        name: String,
        /// Disable the flows that use it first, instead of refusing.
        #[arg(long)]
        force: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand, Debug)]
enum FlowsCommand {
    /// Lists flows; with --algorithm, the topics that algorithm may use,
    /// each enabled or disabled (its "queues" tab).
    List {
        /// `owner/name`.
        #[arg(long)]
        algorithm: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Enables a topic for an algorithm version (creates the flow, or
    /// re-enables it). Re-enabling keeps the flow's version unless
    /// --version or --latest is given.
    Enable {
        /// `owner/name`.
        #[arg(long)]
        algorithm: String,
        /// The topic to consume.
        #[arg(long)]
        topic: String,
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
        /// The flow's name; `<owner>-<name>-<topic>` by default.
        #[arg(long)]
        name: Option<String>,
        /// The broker connection, when there are several.
        #[arg(long)]
        broker: Option<String>,
        /// Wall-clock limit per message.
        #[arg(long)]
        timeout_secs: Option<f64>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Edits a flow's version or dead-letter topic. A version that is not
    /// loaded is accepted with a warning: the flow waits for it.
    Edit {
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
        /// Remove the dead-letter topic.
        #[arg(long)]
        no_dead_letter_topic: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Disables a flow: consumption stops, in-flight work finishes, messages
    /// wait in the broker.
    Disable {
        /// The flow.
        name: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Deletes a flow; its messages stay in the broker.
    Delete {
        /// The flow.
        name: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand, Debug)]
enum SecretsCommand {
    /// Sets a secret; the value comes from --from-env or standard input.
    Set {
        /// `owner/name`.
        algorithm: String,
        /// The environment variable the algorithm will see.
        key: String,
        /// Read the value from this environment variable of this command.
        #[arg(long)]
        from_env: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Lists the names of an algorithm's secrets.
    List {
        /// `owner/name`.
        algorithm: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Re-encrypts every secret with a new key (the router must be
    /// stopped): a new random key in place of the current key file, or the
    /// key in --new-key-file (created if missing).
    RotateKey {
        /// Use this key file (32 bytes or 64 hex digits; created if
        /// missing); point EVENTFLOW_SECRET_KEY_FILE or
        /// router.secret_key_file at it afterwards.
        #[arg(long)]
        new_key_file: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Deletes a secret.
    Delete {
        /// `owner/name`.
        algorithm: String,
        /// The variable.
        key: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand, Debug)]
enum TokensCommand {
    /// Creates a token for an owner and prints it (only this once).
    Create {
        /// The owner whose algorithms the token may manage.
        #[arg(long)]
        owner: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Lists tokens (ids and owners).
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Revokes a token.
    Delete {
        /// The token's id.
        id: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand, Debug)]
enum TopicsCommand {
    /// Lists a broker's topics: declared ones with their access lists, and
    /// those the broker itself lists.
    List {
        /// The broker connection; all of them by default.
        #[arg(long)]
        broker: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Declares a topic, or changes the address of a declared one (its
    /// access lists are kept; change them with grant and revoke).
    Declare {
        /// The topic's name.
        topic: String,
        /// The broker connection.
        #[arg(long)]
        broker: Option<String>,
        /// The broker's own name for it (SQS queue URL, ...).
        #[arg(long)]
        address: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Grants an algorithm (`owner/name` or `owner/*`) access to a topic.
    Grant {
        /// The topic.
        topic: String,
        /// `owner/name` or `owner/*`.
        algorithm: String,
        /// May consume from it.
        #[arg(long)]
        consume: bool,
        /// May publish to it (also as output topic).
        #[arg(long)]
        publish: bool,
        /// May publish to it while it is a flow's dead-letter topic
        /// (`publish` does not cover that: dead letters are the router's).
        #[arg(long)]
        dead_letter_publish: bool,
        /// The broker connection.
        #[arg(long)]
        broker: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Revokes an algorithm's access to a topic.
    Revoke {
        /// The topic.
        topic: String,
        /// `owner/name` or `owner/*`.
        algorithm: String,
        /// Revoke consuming.
        #[arg(long)]
        consume: bool,
        /// Revoke publishing.
        #[arg(long)]
        publish: bool,
        /// Revoke publishing to it as a dead-letter topic.
        #[arg(long)]
        dead_letter_publish: bool,
        /// The broker connection.
        #[arg(long)]
        broker: Option<String>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Deletes a topic declaration.
    Delete {
        /// The topic.
        topic: String,
        /// The broker connection.
        #[arg(long)]
        broker: Option<String>,
        /// Disable the flows that use it first, instead of refusing.
        #[arg(long)]
        force: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Prints a topic's messages, oldest first, one JSON object per line,
    /// without consuming them (embedded broker).
    Peek {
        /// The topic, by its configured name.
        topic: String,
        /// The broker connection; needed when several brokers exist.
        #[arg(long)]
        broker: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand, Debug)]
enum DataCommand {
    /// Prints a stored file.
    Get {
        /// `data://owner/collection/path`
        uri: String,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Lists a collection or one of its directories.
    Ls {
        /// `data://owner/collection[/dir]`
        uri: String,
        #[command(flatten)]
        config: ConfigArg,
    },
}

#[derive(Subcommand, Debug)]
enum PluginsCommand {
    /// Lists owner/name/version, hash, load time, status and the flows using each.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
enum DlqCommand {
    /// Prints the flow's dead letters, one JSON object per line:
    /// `{"status": "verified"|"unverified", "dead_letter_id", "envelope"}`.
    /// Unverified ones were not written by this router (forged, or signed
    /// with another router's dead-letter key).
    List {
        /// The flow.
        flow: String,
        /// Read at most this many messages of the dead-letter topic.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Publishes dead letters back to the flow's topic and removes them from
    /// the dead-letter topic.
    Replay {
        /// The flow.
        flow: String,
        /// Only the dead letter of this message id.
        #[arg(long)]
        id: Option<String>,
        /// Replay unverified envelopes too (admin token only).
        #[arg(long)]
        include_unverified: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
}

fn parse_header(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not key=value"))
}

/// A failure of the CLI: a configuration error (exit 2) or anything else (1).
enum Failure {
    Config(ConfigError),
    Other(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<ConfigError>() {
            Ok(c) => Failure::Config(c),
            Err(e) => Failure::Other(e),
        }
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Failure::Config(e)
    }
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(dispatch(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(e)) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
        Err(Failure::Other(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn load(arg: &ConfigArg) -> Result<Config, Failure> {
    Ok(config::load(&arg.config)?)
}

fn client(arg: &ConfigArg) -> Result<AdminClient, Failure> {
    let config = load(arg)?;
    Ok(match &arg.token {
        Some(t) => AdminClient::with_token_for(&config.router.state_dir, t.clone())?,
        None => AdminClient::for_state_dir(&config.router.state_dir)?,
    })
}

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Run {
            config,
            plugins,
            data,
            state,
            move_damaged_aside,
        } => {
            let mut cfg = load(&config)?;
            cfg.router.move_damaged_aside = move_damaged_aside;
            if let Some(p) = plugins {
                cfg.router.plugins_dir = p;
            }
            if let Some(d) = data {
                cfg.router.data_dir = d;
            }
            if let Some(s) = state {
                cfg.router.state_dir = s;
            }
            crate::telemetry::init(cli.log_format);
            crate::run::run(cfg, &config.config).await?;
        }
        Command::Check { config } => {
            let cfg = load(&config)?;
            println!(
                "{}: ok ({} broker connections, {} topics, {} flows)",
                config.config.display(),
                cfg.brokers.len(),
                cfg.topics.len(),
                cfg.flows.len()
            );
            for f in &cfg.flows {
                let dlq = f
                    .dead_letter_topic
                    .as_deref()
                    .unwrap_or("none: failures are dropped");
                println!(
                    "  flow {}: {}:{} -> {} (dead letters: {dlq})",
                    f.name, f.broker, f.topic, f.algorithm
                );
            }
            if let Some(warning) = crate::router::pool_oversubscription(&cfg) {
                println!("warning: {warning}");
            }
        }
        Command::Send {
            topic,
            data,
            file,
            broker,
            headers,
            config,
        } => {
            let payload = match (data, file) {
                (Some(d), _) => d.into_bytes(),
                (None, Some(f)) => {
                    std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?
                }
                (None, None) => unreachable!("clap requires --data or --file"),
            };
            let body = match String::from_utf8(payload) {
                Ok(text) => {
                    json!({ "topic": topic, "broker": broker, "payload": text, "headers": headers })
                }
                Err(e) => {
                    use base64::Engine as _;
                    json!({
                        "topic": topic,
                        "broker": broker,
                        "payload_base64": base64::engine::general_purpose::STANDARD.encode(e.into_bytes()),
                        "headers": headers,
                    })
                }
            };
            let answer = client(&config)?.post("/v1/messages", &body).await?;
            println!(
                "published to {}",
                answer["topic"].as_str().unwrap_or(&topic)
            );
        }
        Command::Data { command } => data_command(command)?,
        Command::Plugins {
            command: PluginsCommand::List { config, json },
        } => {
            let answer = client(&config)?.get("/v1/plugins").await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&answer["plugins"]).unwrap_or_default()
                );
            } else {
                print_plugins(&answer["plugins"]);
            }
        }
        Command::Status { config, json } => {
            let c = client(&config)?;
            let flows = c.get("/v1/flows").await?;
            let ready = c.get_open("/readyz").await.unwrap_or(Value::Null);
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({ "flows": flows["flows"], "readiness": ready })
                    )
                    .unwrap_or_default()
                );
            } else {
                print_status(&flows["flows"], &ready);
            }
        }
        Command::Topics { command } => topics_command(command).await?,
        Command::Apply { file, config } => {
            let declarations = config::load(&file)?.declarations();
            let answer = client(&config)?
                .put(
                    "/v1/state",
                    &serde_json::to_value(&declarations).map_err(anyhow::Error::from)?,
                )
                .await?;
            println!(
                "applied {}: {} broker connections, {} topics, {} flows",
                file.display(),
                answer["brokers"],
                answer["topics"],
                answer["flows"]
            );
        }
        Command::Brokers { command } => brokers_command(command).await?,
        Command::Flows { command } => flows_command(command).await?,
        Command::Secrets { command } => secrets_command(command).await?,
        Command::Tokens { command } => tokens_command(command).await?,
        Command::Dlq { command } => match command {
            DlqCommand::List {
                flow,
                limit,
                config,
            } => {
                let answer = client(&config)?
                    .get(&format!("/v1/flows/{flow}/dead-letters?limit={limit}"))
                    .await?;
                for letter in answer["dead_letters"].as_array().into_iter().flatten() {
                    println!(
                        "{}",
                        json!({
                            "status": letter["status"],
                            "dead_letter_id": letter["dead_letter_id"],
                            "envelope": letter["envelope"],
                        })
                    );
                }
            }
            DlqCommand::Replay {
                flow,
                id,
                include_unverified,
                config,
            } => {
                let answer = client(&config)?
                    .post(
                        &format!("/v1/flows/{flow}/dead-letters/replay"),
                        &json!({ "id": id, "include_unverified": include_unverified }),
                    )
                    .await?;
                let replayed = answer["replayed"].as_array().map(|a| a.len()).unwrap_or(0);
                println!("replayed {replayed} dead letters of flow {flow}");
                for s in answer["skipped"].as_array().into_iter().flatten() {
                    eprintln!(
                        "skipped dead letter {} (message {}): {}",
                        s["dead_letter_id"].as_str().unwrap_or("?"),
                        s["message_id"].as_str().unwrap_or("?"),
                        s["why"].as_str().unwrap_or("?")
                    );
                }
            }
        },
    }
    Ok(())
}

/// Asks "question [y/N]" on the terminal; `--yes` skips it. Without a
/// terminal and without `--yes`, refuses.
fn confirm(question: &str, yes: bool) -> Result<(), Failure> {
    if yes {
        return Ok(());
    }
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Err(anyhow::anyhow!(
            "{question}: pass --yes to confirm (standard input is not a terminal)"
        )
        .into());
    }
    print!("{question} [y/N] ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut answer)
        .context("cannot read the answer")?;
    if matches!(answer.trim(), "y" | "Y" | "yes") {
        Ok(())
    } else {
        Err(anyhow::anyhow!("not confirmed; nothing changed").into())
    }
}

/// The broker connection of `topic`: the given one, the only connection, or
/// the one connection that declares the topic.
async fn broker_of(
    c: &AdminClient,
    topic: &str,
    broker: Option<String>,
) -> Result<String, Failure> {
    if let Some(b) = broker {
        return Ok(b);
    }
    let state = c.get("/v1/state").await?;
    let brokers: Vec<&str> = state["brokers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| b["name"].as_str())
        .collect();
    if let [one] = brokers.as_slice() {
        return Ok(one.to_string());
    }
    let owners: Vec<&str> = state["topics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["name"] == topic)
        .filter_map(|t| t["broker"].as_str())
        .collect();
    match owners.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(anyhow::anyhow!("no topic {topic:?} is declared; pass --broker").into()),
        _ => {
            Err(anyhow::anyhow!("topic {topic:?} exists on several brokers: pass --broker").into())
        }
    }
}

fn parse_field(value: &str) -> Value {
    #[derive(serde::Deserialize)]
    struct One {
        v: toml::Value,
    }
    match toml::from_str::<One>(&format!("v = {value}")) {
        Ok(one) => serde_json::to_value(one.v).unwrap_or(Value::String(value.into())),
        Err(_) => Value::String(value.into()),
    }
}

async fn brokers_command(command: BrokersCommand) -> Result<(), Failure> {
    match command {
        BrokersCommand::List { config } => {
            let answer = client(&config)?.get("/v1/brokers").await?;
            for b in answer["brokers"].as_array().into_iter().flatten() {
                println!("{b}");
            }
        }
        BrokersCommand::Show { name, config } => {
            let answer = client(&config)?.get(&format!("/v1/brokers/{name}")).await?;
            println!(
                "{}",
                serde_json::to_string_pretty(&answer).unwrap_or_default()
            );
        }
        BrokersCommand::Create {
            name,
            kind,
            fields,
            secrets,
            config,
        } => {
            let mut spec = serde_json::Map::new();
            spec.insert("name".into(), json!(name));
            spec.insert("kind".into(), json!(kind));
            for (k, v) in fields {
                spec.insert(k, parse_field(&v));
            }
            for (k, var) in secrets {
                let value = std::env::var(&var).with_context(|| {
                    format!("--secret {k}={var}: the environment variable {var} is not set")
                })?;
                spec.insert(k, json!({ "value": value }));
            }
            client(&config)?
                .post("/v1/brokers", &Value::Object(spec))
                .await?;
            println!("created broker connection {name}");
        }
        BrokersCommand::Delete {
            name,
            force,
            yes,
            config,
        } => {
            let c = client(&config)?;
            confirm(
                &format!("Delete broker connection {name:?} and its topics?"),
                yes,
            )?;
            let answer = c
                .delete(&format!("/v1/brokers/{name}?force={force}"))
                .await?;
            let disabled: Vec<String> = answer["disabled_flows"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str().map(str::to_string))
                .collect();
            println!("deleted broker connection {name}");
            if !disabled.is_empty() {
                println!("disabled flows: {}", disabled.join(", "));
            }
        }
    }
    Ok(())
}

async fn topics_command(command: TopicsCommand) -> Result<(), Failure> {
    match command {
        TopicsCommand::List { broker, config } => {
            let c = client(&config)?;
            let brokers: Vec<String> = match broker {
                Some(b) => vec![b],
                None => c.get("/v1/brokers").await?["brokers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|b| b["name"].as_str().map(str::to_string))
                    .collect(),
            };
            for b in brokers {
                let answer = c.get(&format!("/v1/brokers/{b}/topics")).await?;
                for t in answer["topics"].as_array().into_iter().flatten() {
                    println!(
                        "{b}:{}  declared={}  consumers={}  publishers={}",
                        t["name"].as_str().unwrap_or("?"),
                        t["declared"],
                        t["consumers"],
                        t["publishers"]
                    );
                }
                if let Some(why) = answer["listing_error"].as_str() {
                    println!(
                        "{b}: only declared topics shown; the broker refused to list its own: {why}"
                    );
                }
            }
        }
        TopicsCommand::Declare {
            topic,
            broker,
            address,
            config,
        } => {
            let c = client(&config)?;
            let broker = broker_of(&c, &topic, broker).await?;
            let path = format!("/v1/brokers/{broker}/topics/{topic}");
            // Only the fields given: the router keeps the others of a
            // declared topic, so this never wipes an access list.
            let mut body = serde_json::Map::new();
            if let Some(a) = address {
                body.insert("address".into(), json!(a));
            }
            let declared = c.put(&path, &Value::Object(body)).await?;
            println!(
                "declared topic {broker}:{topic}  address={}  consumers={}  publishers={}",
                declared["address"].as_str().unwrap_or(&topic),
                declared["consumers"],
                declared["publishers"]
            );
        }
        TopicsCommand::Grant {
            topic,
            algorithm,
            consume,
            publish,
            dead_letter_publish,
            broker,
            config,
        } => {
            change_grant(
                &config,
                &topic,
                &algorithm,
                (consume, publish, dead_letter_publish),
                broker,
                true,
            )
            .await?
        }
        TopicsCommand::Revoke {
            topic,
            algorithm,
            consume,
            publish,
            dead_letter_publish,
            broker,
            config,
        } => {
            change_grant(
                &config,
                &topic,
                &algorithm,
                (consume, publish, dead_letter_publish),
                broker,
                false,
            )
            .await?
        }
        TopicsCommand::Delete {
            topic,
            broker,
            force,
            yes,
            config,
        } => {
            let c = client(&config)?;
            let broker = broker_of(&c, &topic, broker).await?;
            confirm(&format!("Delete topic {broker}:{topic}?"), yes)?;
            c.delete(&format!(
                "/v1/brokers/{broker}/topics/{topic}?force={force}"
            ))
            .await?;
            println!("deleted topic {broker}:{topic}");
        }
        TopicsCommand::Peek {
            topic,
            broker,
            limit,
            config,
        } => {
            let c = client(&config)?;
            let broker = broker_of(&c, &topic, broker).await?;
            let answer = c
                .get(&format!(
                    "/v1/brokers/{broker}/topics/{topic}/messages?limit={limit}"
                ))
                .await?;
            for m in answer["messages"].as_array().into_iter().flatten() {
                println!("{m}");
            }
        }
    }
    Ok(())
}

/// Grants (`add`) or revokes consume and/or publish access.
async fn change_grant(
    config: &ConfigArg,
    topic: &str,
    algorithm: &str,
    (consume, publish, dead_letter_publish): (bool, bool, bool),
    broker: Option<String>,
    add: bool,
) -> Result<(), Failure> {
    if !consume && !publish && !dead_letter_publish {
        return Err(
            anyhow::anyhow!("say what: --consume, --publish and/or --dead-letter-publish").into(),
        );
    }
    let c = client(config)?;
    let broker = broker_of(&c, topic, broker).await?;
    let path = if add { "grants" } else { "grants/revoke" };
    c.post(
        &format!("/v1/brokers/{broker}/topics/{topic}/{path}"),
        &json!({
            "algorithm": algorithm,
            "consume": consume,
            "publish": publish,
            "dead_letter_publish": dead_letter_publish,
        }),
    )
    .await?;
    if add {
        println!("granted {algorithm} access to {broker}:{topic}");
    } else {
        println!("revoked {algorithm}'s access to {broker}:{topic}");
    }
    Ok(())
}

async fn flows_command(command: FlowsCommand) -> Result<(), Failure> {
    match command {
        FlowsCommand::List { algorithm, config } => {
            let c = client(&config)?;
            match algorithm {
                Some(alg) => {
                    let answer = c.get(&format!("/v1/algorithms/{alg}/topics")).await?;
                    println!(
                        "{:<32} {:<9} {:<24} {:<10} DEAD-LETTER TOPIC",
                        "TOPIC", "ENABLED", "FLOW", "VERSION"
                    );
                    for t in answer["topics"].as_array().into_iter().flatten() {
                        let topic = format!(
                            "{}:{}",
                            t["broker"].as_str().unwrap_or("?"),
                            t["topic"].as_str().unwrap_or("?")
                        );
                        let flows = t["flows"].as_array().cloned().unwrap_or_default();
                        if flows.is_empty() {
                            println!("{topic:<32} {:<9} {:<24} {:<10} -", "no", "-", "-");
                        }
                        // Every flow of the algorithm on the topic, one a line.
                        for flow in &flows {
                            println!(
                                "{:<32} {:<9} {:<24} {:<10} {}{}",
                                topic,
                                if flow["enabled"] == true { "yes" } else { "no" },
                                flow["name"].as_str().unwrap_or("-"),
                                flow["version"].as_str().unwrap_or("-"),
                                flow["dead_letter_topic"].as_str().unwrap_or("-"),
                                flow["waiting_for"]
                                    .as_str()
                                    .map(|w| format!("  (waiting: {w})"))
                                    .unwrap_or_default(),
                            );
                        }
                    }
                }
                None => {
                    let answer = c.get("/v1/flows").await?;
                    // Each flow as declared, with its state and last error
                    // (a `degraded` flow says there why).
                    for f in answer["flows"].as_array().into_iter().flatten() {
                        let mut line = f["spec"].clone();
                        if let Some(line) = line.as_object_mut() {
                            line.insert("state".into(), f["state"].clone());
                            if !f["last_error"].is_null() {
                                line.insert("last_error".into(), f["last_error"].clone());
                            }
                        }
                        println!("{line}");
                    }
                }
            }
        }
        FlowsCommand::Enable {
            algorithm,
            topic,
            version,
            latest,
            dead_letter_topic,
            output_topic,
            name,
            broker,
            timeout_secs,
            config,
        } => {
            let answer = client(&config)?
                .post(
                    "/v1/flows",
                    &json!({
                        "algorithm": algorithm,
                        "topic": topic,
                        "version": if latest { Some("latest".to_string()) } else { version },
                        "dead_letter_topic": dead_letter_topic,
                        "output_topic": output_topic,
                        "name": name,
                        "broker": broker,
                        "timeout_secs": timeout_secs,
                    }),
                )
                .await?;
            println!(
                "enabled flow {}: {}:{} -> {} {}{}",
                answer["name"].as_str().unwrap_or("?"),
                answer["broker"].as_str().unwrap_or("?"),
                answer["topic"].as_str().unwrap_or("?"),
                answer["algorithm"].as_str().unwrap_or("?"),
                answer["version"].as_str().unwrap_or("?"),
                if answer["version_kept"] == true {
                    " (the version it had; --version V or --latest changes it)"
                } else {
                    ""
                },
            );
            print_warnings(&answer);
        }
        FlowsCommand::Edit {
            name,
            version,
            latest,
            dead_letter_topic,
            no_dead_letter_topic,
            config,
        } => {
            let mut edit = serde_json::Map::new();
            if let Some(v) = version {
                edit.insert("version".into(), json!(v));
            }
            if latest {
                edit.insert("version".into(), json!("latest"));
            }
            if let Some(d) = dead_letter_topic {
                edit.insert("dead_letter_topic".into(), json!(d));
            }
            if no_dead_letter_topic {
                edit.insert("dead_letter_topic".into(), Value::Null);
            }
            let answer = client(&config)?
                .patch(&format!("/v1/flows/{name}"), &Value::Object(edit))
                .await?;
            println!(
                "edited flow {name}: {} {}",
                answer["algorithm"].as_str().unwrap_or("?"),
                answer["version"].as_str().unwrap_or("?")
            );
            print_warnings(&answer);
        }
        FlowsCommand::Disable { name, config } => {
            client(&config)?
                .patch(&format!("/v1/flows/{name}"), &json!({ "enabled": false }))
                .await?;
            println!("disabled flow {name}: its messages wait in the broker");
        }
        FlowsCommand::Delete { name, yes, config } => {
            let c = client(&config)?;
            confirm(&format!("Delete flow {name:?}?"), yes)?;
            c.delete(&format!("/v1/flows/{name}")).await?;
            println!("deleted flow {name}");
        }
    }
    Ok(())
}

/// Prints the `warnings` of an API answer, one `warning: ...` line each.
fn print_warnings(answer: &Value) {
    for w in answer["warnings"].as_array().into_iter().flatten() {
        println!("warning: {}", w.as_str().unwrap_or_default());
    }
}

async fn secrets_command(command: SecretsCommand) -> Result<(), Failure> {
    match command {
        SecretsCommand::Set {
            algorithm,
            key,
            from_env,
            config,
        } => {
            let value = match from_env {
                Some(var) => std::env::var(&var)
                    .with_context(|| format!("the environment variable {var} is not set"))?,
                None => {
                    let mut v = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut v)
                        .context("cannot read the value from standard input")?;
                    v.trim_end_matches(['\n', '\r']).to_string()
                }
            };
            client(&config)?
                .put(
                    &format!("/v1/algorithms/{algorithm}/secrets/{key}"),
                    &json!({ "value": value }),
                )
                .await?;
            println!("set secret {key} of {algorithm}");
        }
        SecretsCommand::RotateKey {
            new_key_file,
            config,
        } => {
            let cfg = load(&config)?;
            let options = crate::state::StateOptions {
                damaged: crate::state::Damaged::Refuse,
                key_file: cfg.router.secret_key_file.clone(),
            };
            let dir = cfg.router.state_dir.clone();
            let keep = new_key_file.clone();
            let rotation = tokio::task::spawn_blocking(move || {
                crate::state::rotate_key(&dir, &options, keep.as_deref())
            })
            .await
            .context("the key rotation failed")??;
            println!(
                "re-encrypted {} secrets with {}",
                rotation.secrets,
                rotation.key_file.display()
            );
            if new_key_file.is_some() {
                println!(
                    "point EVENTFLOW_SECRET_KEY_FILE (or router.secret_key_file) at {} before the next start",
                    rotation.key_file.display()
                );
            }
        }
        SecretsCommand::List { algorithm, config } => {
            let answer = client(&config)?
                .get(&format!("/v1/algorithms/{algorithm}/secrets"))
                .await?;
            for name in answer["secrets"].as_array().into_iter().flatten() {
                println!("{}", name.as_str().unwrap_or("?"));
            }
        }
        SecretsCommand::Delete {
            algorithm,
            key,
            config,
        } => {
            client(&config)?
                .delete(&format!("/v1/algorithms/{algorithm}/secrets/{key}"))
                .await?;
            println!("deleted secret {key} of {algorithm}");
        }
    }
    Ok(())
}

async fn tokens_command(command: TokensCommand) -> Result<(), Failure> {
    match command {
        TokensCommand::Create { owner, config } => {
            let answer = client(&config)?
                .post("/v1/tokens", &json!({ "owner": owner }))
                .await?;
            eprintln!(
                "token {} for owner {owner} (shown only now; pass it with --token or EVENTFLOW_TOKEN):",
                answer["id"].as_str().unwrap_or("?")
            );
            println!("{}", answer["token"].as_str().unwrap_or_default());
        }
        TokensCommand::List { config } => {
            let answer = client(&config)?.get("/v1/tokens").await?;
            for t in answer["tokens"].as_array().into_iter().flatten() {
                println!(
                    "{}  owner={}  created={}",
                    t["id"].as_str().unwrap_or("?"),
                    t["owner"].as_str().unwrap_or("?"),
                    t["created_at"].as_str().unwrap_or("?")
                );
            }
        }
        TokensCommand::Delete { id, config } => {
            client(&config)?.delete(&format!("/v1/tokens/{id}")).await?;
            println!("revoked token {id}");
        }
    }
    Ok(())
}

fn data_command(command: DataCommand) -> Result<(), Failure> {
    let (uri, config, list) = match command {
        DataCommand::Get { uri, config } => (uri, config, false),
        DataCommand::Ls { uri, config } => (uri, config, true),
    };
    let cfg = load(&config)?;
    let uri = DataUri::parse(&uri).map_err(|e| anyhow::anyhow!("{e}"))?;
    let collections = open_collections(&cfg.router.data_dir)?;
    if list {
        for name in collections
            .list(&uri)
            .map_err(|e| anyhow::anyhow!("{uri}: {e}"))?
        {
            println!("{name}");
        }
    } else {
        let bytes = collections
            .get(&uri)
            .map_err(|e| anyhow::anyhow!("{uri}: {e}"))?;
        use std::io::Write;
        let mut out = std::io::stdout();
        out.write_all(&bytes).context("cannot write to stdout")?;
        if !bytes.ends_with(b"\n") && std::io::IsTerminal::is_terminal(&out) {
            let _ = out.write_all(b"\n");
        }
    }
    Ok(())
}

fn open_collections(dir: &Path) -> anyhow::Result<Collections> {
    if !dir.exists() {
        anyhow::bail!("the data directory {} does not exist yet", dir.display());
    }
    Collections::open(dir).with_context(|| format!("cannot open {}", dir.display()))
}

fn print_plugins(plugins: &Value) {
    let Some(list) = plugins.as_array() else {
        return;
    };
    if list.is_empty() {
        println!("no algorithms loaded");
        return;
    }
    println!(
        "{:<40} {:<9} {:<14} {:<25} FLOWS",
        "ALGORITHM", "STATUS", "HASH", "LOADED"
    );
    for p in list {
        let hash = p["hash"]
            .as_str()
            .map(|h| &h[..12.min(h.len())])
            .unwrap_or("-");
        let flows: Vec<&str> = p["flows"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
            .collect();
        println!(
            "{:<40} {:<9} {:<14} {:<25} {}",
            p["algorithm"].as_str().unwrap_or("?"),
            p["status"].as_str().unwrap_or("?"),
            hash,
            p["loaded_at"].as_str().unwrap_or("-"),
            if flows.is_empty() {
                "-".to_string()
            } else {
                flows.join(",")
            }
        );
        if let Some(reason) = p["rejected"]["reason"].as_str() {
            println!("    rejected: {reason}");
        }
    }
}

fn print_status(flows: &Value, ready: &Value) {
    if let Some(brokers) = ready["brokers"].as_array() {
        for b in brokers {
            println!(
                "broker {} ({}): {}{}",
                b["name"].as_str().unwrap_or("?"),
                b["kind"].as_str().unwrap_or("?"),
                b["state"].as_str().unwrap_or("?"),
                b["error"]
                    .as_str()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            );
        }
    }
    for f in ready["flows_not_ready"].as_array().into_iter().flatten() {
        println!(
            "flow {} not ready: {}",
            f["name"].as_str().unwrap_or("?"),
            f["reason"].as_str().unwrap_or("?")
        );
    }
    println!(
        "{:<24} {:<22} {:>8} {:>8} {:>8} {:>9} {:>9} {:>6}  LAST ERROR",
        "FLOW", "STATE", "IN/s", "OK/s", "FAIL/s", "IN-FLIGHT", "DEAD", "DROP"
    );
    for f in flows.as_array().into_iter().flatten() {
        let last = f["last_error"]
            .as_array()
            .map(|e| {
                format!(
                    "{} {}",
                    e[0].as_str().unwrap_or(""),
                    e[1].as_str().unwrap_or("")
                )
            })
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<24} {:<22} {:>8.1} {:>8.1} {:>8.1} {:>9} {:>9} {:>6}  {}",
            f["name"].as_str().unwrap_or("?"),
            f["state"].as_str().unwrap_or("?"),
            f["received_per_sec"].as_f64().unwrap_or(0.0),
            f["succeeded_per_sec"].as_f64().unwrap_or(0.0),
            f["failed_per_sec"].as_f64().unwrap_or(0.0),
            f["in_flight"].as_i64().unwrap_or(0),
            f["dead_lettered"].as_u64().unwrap_or(0),
            f["dropped"].as_u64().unwrap_or(0),
            last
        );
        if let Some(waiting) = f["waiting_for"].as_str() {
            println!("    waiting: {waiting}");
        }
    }
}
