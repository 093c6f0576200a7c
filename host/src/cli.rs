//! The `eventflow` command line. Every subcommand but `run` and `data`
//! talks to the running router through the admin API it finds from the same
//! `--config`. Mistakes print one line and exit non-zero: 2 for a bad
//! configuration or usage, 1 for anything else.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Value, json};

use crate::admin::client::AdminClient;
use crate::config::{self, Config, ConfigError};
use crate::data::{Collections, DataUri};

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

/// How log lines look.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
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
    /// Inspects topics.
    Topics {
        #[command(subcommand)]
        command: TopicsCommand,
    },
}

#[derive(Subcommand, Debug)]
enum TopicsCommand {
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
    /// Prints the flow's dead-letter envelopes, one JSON object per line.
    List {
        /// The flow.
        flow: String,
        /// At most this many.
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
    Ok(AdminClient::for_state_dir(&config.router.state_dir)?)
}

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Run {
            config,
            plugins,
            data,
            state,
        } => {
            let mut cfg = load(&config)?;
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
        Command::Topics {
            command:
                TopicsCommand::Peek {
                    topic,
                    broker,
                    limit,
                    config,
                },
        } => {
            let cfg = load(&config)?;
            let broker = match broker {
                Some(b) => b,
                None => {
                    let owners: Vec<&str> = cfg
                        .topics
                        .iter()
                        .filter(|t| t.name == topic)
                        .map(|t| t.broker.as_str())
                        .collect();
                    match owners.as_slice() {
                        [one] => one.to_string(),
                        [] => {
                            return Err(anyhow::anyhow!(
                                "no topic {topic:?} is declared in {}",
                                config.config.display()
                            )
                            .into());
                        }
                        _ => {
                            return Err(anyhow::anyhow!(
                                "topic {topic:?} exists on several brokers: pass --broker"
                            )
                            .into());
                        }
                    }
                }
            };
            let answer = AdminClient::for_state_dir(&cfg.router.state_dir)?
                .get(&format!(
                    "/v1/brokers/{broker}/topics/{topic}/messages?limit={limit}"
                ))
                .await?;
            for m in answer["messages"].as_array().into_iter().flatten() {
                println!("{m}");
            }
        }
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
                    println!("{}", letter["envelope"]);
                }
            }
            DlqCommand::Replay { flow, id, config } => {
                let answer = client(&config)?
                    .post(
                        &format!("/v1/flows/{flow}/dead-letters/replay"),
                        &json!({ "id": id }),
                    )
                    .await?;
                let replayed = answer["replayed"].as_array().map(|a| a.len()).unwrap_or(0);
                println!("replayed {replayed} dead letters of flow {flow}");
            }
        },
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
    println!(
        "{:<24} {:<19} {:>8} {:>8} {:>8} {:>9} {:>9} {:>6}  LAST ERROR",
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
            "{:<24} {:<19} {:>8.1} {:>8.1} {:>8.1} {:>9} {:>9} {:>6}  {}",
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
    }
}
