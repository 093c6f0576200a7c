//! The `eventflow` command line, one file per subcommand group over the
//! typed client ([`client`]). Every subcommand but `run`, `check`, `data`
//! and the authors' `new`, `build` and `invoke` talks to the running router through the admin API, found from the same
//! `--config` (or at `--url`). Output is a human table or text by default
//! and JSON with `--json`. Mistakes print one line and exit non-zero: 2 for
//! a bad configuration or usage, 1 for anything else.

mod author;
mod brokers;
pub mod client;
mod data;
mod dlq;
mod flows;
mod keys;
mod outbound;
mod output;
mod router;
mod secrets;
mod status;
mod tokens;
mod topics;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{self, Config, ConfigError};
pub use crate::telemetry::LogFormat;
use client::Client;

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
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

/// The flags every subcommand takes.
#[derive(Args, Debug, Clone)]
struct Global {
    /// The configuration file (TOML).
    #[arg(
        long,
        short = 'c',
        global = true,
        default_value = "eventflow.toml",
        env = "EVENTFLOW_CONFIG"
    )]
    config: PathBuf,
    /// An API token; the admin token from the state directory by default.
    /// Owner-scoped tokens manage only their owner's algorithms: flows, dead
    /// letters, secrets, and sending to topics those algorithms consume.
    #[arg(long, global = true, env = "EVENTFLOW_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The router's admin API (`http://host:port`), e.g. on another
    /// machine; found through the state directory's `admin.addr` by default.
    /// Pass --token with it unless the configuration's state directory
    /// holds the admin token.
    #[arg(long, global = true, env = "EVENTFLOW_URL")]
    url: Option<String>,
    /// Print JSON (for scripts) instead of tables and text.
    #[arg(long, global = true)]
    json: bool,
}

impl Global {
    /// The configuration file, loaded.
    fn load(&self) -> Result<Config, Failure> {
        Ok(config::load(&self.config)?)
    }

    /// A client of the router: at `--url`, or found through the
    /// configuration's state directory; with `--token`, or the admin token.
    fn client(&self) -> Result<Client, Failure> {
        let state_dir = || self.load().map(|c| c.router.state_dir);
        let url = match &self.url {
            Some(url) => url.clone(),
            None => Client::address_in(&state_dir()?)?,
        };
        let token = match &self.token {
            Some(t) => t.clone(),
            None => Client::admin_token_in(&state_dir()?)?,
        };
        Ok(Client::new(&url, token)?)
    }
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Starts the router: loads plugins, connects brokers, runs the flows
    /// until SIGINT or SIGTERM, then finishes in-flight messages and exits 0.
    Run(router::RunArgs),
    /// Checks a configuration file and prints what it declares.
    Check,
    /// Publishes a message to a topic through the running router.
    Send(topics::SendArgs),
    /// Reads data collections (from the data directory; no router needed).
    Data {
        #[command(subcommand)]
        command: data::DataCommand,
    },
    /// Lists the algorithms the running router has loaded.
    Plugins {
        #[command(subcommand)]
        command: status::PluginsCommand,
    },
    /// Shows what every flow of the running router is doing, or one flow
    /// (with its canary and shadow).
    Status {
        /// Only this flow.
        flow: Option<String>,
    },
    /// Inspects and replays a flow's dead letters.
    Dlq {
        #[command(subcommand)]
        command: dlq::DlqCommand,
    },
    /// Topics of broker connections and their access lists.
    Topics {
        #[command(subcommand)]
        command: topics::TopicsCommand,
    },
    /// Converges the router's state (brokers, topics, flows, limits) to a
    /// configuration file, live.
    Apply {
        /// The file whose declarations to apply.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Broker connections: create, list, show, delete (never edited).
    Brokers {
        #[command(subcommand)]
        command: brokers::BrokersCommand,
    },
    /// Flows: enable a topic for an algorithm version, edit, disable.
    Flows {
        #[command(subcommand)]
        command: flows::FlowsCommand,
    },
    /// A flow's parked keys (`on_key_failure = "park"`): list, release,
    /// drop.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Algorithms' secrets: set, list names, delete. Values are never shown.
    Secrets {
        #[command(subcommand)]
        command: secrets::SecretsCommand,
    },
    /// Where algorithms may send HTTP requests: allow, deny, list origins.
    Outbound {
        #[command(subcommand)]
        command: outbound::OutboundCommand,
    },
    /// Owner-scoped API tokens.
    Tokens {
        #[command(subcommand)]
        command: tokens::TokensCommand,
    },
    /// Creates an algorithm project (Rust, Python or JavaScript) with a test
    /// input.
    New(author::NewArgs),
    /// Builds an algorithm project into a component, in
    /// `dist/<owner>/<name>/<version>.wasm`.
    Build(author::BuildArgs),
    /// Runs one message through an algorithm in the router's sandbox, with
    /// no broker and no router, and shows everything it did. Exits non-zero
    /// when the algorithm fails.
    Invoke(author::InvokeArgs),
    /// Installs a component in the plugin directory and waits for the
    /// running router to load or reject it. Exits non-zero when rejected.
    Deploy(author::DeployArgs),
}

/// Parses `key=value`.
fn parse_pair(s: &str) -> Result<(String, String), String> {
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

async fn dispatch(cli: Cli) -> Result<(), Failure> {
    let g = &cli.global;
    match cli.command {
        Command::Run(args) => router::run(g, args, cli.log_format).await,
        Command::Check => router::check(g),
        Command::Apply { file } => router::apply(g, &file).await,
        Command::Send(args) => topics::send(g, args).await,
        Command::Data { command } => data::run(g, command).await,
        Command::Plugins { command } => status::plugins(g, command).await,
        Command::Status { flow } => status::status(g, flow.as_deref()).await,
        Command::Dlq { command } => dlq::run(g, command).await,
        Command::Topics { command } => topics::run(g, command).await,
        Command::Brokers { command } => brokers::run(g, command).await,
        Command::Flows { command } => flows::run(g, command).await,
        Command::Keys { command } => keys::run(g, command).await,
        Command::Secrets { command } => secrets::run(g, command).await,
        Command::Outbound { command } => outbound::run(g, command).await,
        Command::Tokens { command } => tokens::run(g, command).await,
        Command::New(args) => author::new(args),
        Command::Build(args) => author::build(g, args),
        Command::Invoke(args) => author::invoke(g, args).await,
        Command::Deploy(args) => author::deploy(g, args).await,
    }
}

/// Asks "question [y/N]" on the terminal; `--yes` skips it. Without a
/// terminal and without `--yes`, refuses.
fn confirm(question: &str, yes: bool) -> Result<(), Failure> {
    if yes {
        return Ok(());
    }
    use anyhow::Context;
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
