//! `brokers`: broker connections.

use anyhow::Context;
use clap::Subcommand;
use serde_json::Value;

use super::output::{self, Table};
use super::{Failure, Global, confirm, parse_pair};
use crate::api;

#[derive(Subcommand, Debug)]
pub(super) enum BrokersCommand {
    /// Lists broker connections, credentials redacted.
    List,
    /// Shows one broker connection, credentials redacted.
    Show {
        /// The connection.
        name: String,
    },
    /// Creates a broker connection.
    Create {
        /// The connection's name.
        name: String,
        /// embedded, kafka, eventhubs, sqs or servicebus.
        #[arg(long, value_parser = parse_kind)]
        kind: api::brokers::BrokerKind,
        /// A field, `key=value` (TOML value syntax, plain strings allowed).
        #[arg(long = "set", value_parser = parse_pair)]
        fields: Vec<(String, String)>,
        /// A credential field read from an environment variable of this
        /// command, `key=VAR`; stored by the router as a secret.
        #[arg(long = "secret", value_parser = parse_pair)]
        secrets: Vec<(String, String)>,
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
    },
}

fn parse_kind(s: &str) -> Result<api::brokers::BrokerKind, String> {
    serde_json::from_value(Value::String(s.into()))
        .map_err(|_| format!("{s:?}: use embedded, kafka, eventhubs, sqs or servicebus"))
}

/// A `--set` value: TOML value syntax, or else a plain string.
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

pub(super) async fn run(g: &Global, command: BrokersCommand) -> Result<(), Failure> {
    match command {
        BrokersCommand::List => {
            let brokers = g.client()?.brokers().await?;
            if g.json {
                output::json(&brokers);
                return Ok(());
            }
            let mut table = Table::new(&["NAME", "KIND", "STATE", "FLOWS"]);
            for b in &brokers {
                table.row(vec![
                    b.name.clone(),
                    b.kind.clone(),
                    output::or_dash(b.state.as_deref()),
                    output::list(&b.used_by_flows),
                ]);
            }
            table.print();
        }
        BrokersCommand::Show { name } => {
            let broker = g.client()?.broker(&name).await?;
            output::json(&broker);
        }
        BrokersCommand::Create {
            name,
            kind,
            fields,
            secrets,
        } => {
            let mut settings = serde_json::Map::new();
            for (k, v) in fields {
                settings.insert(k, parse_field(&v));
            }
            for (k, var) in secrets {
                let value = std::env::var(&var).with_context(|| {
                    format!("--secret {k}={var}: the environment variable {var} is not set")
                })?;
                settings.insert(k, serde_json::json!({ "value": value }));
            }
            let spec = api::NewBroker {
                name,
                kind,
                settings,
            };
            let created = g.client()?.create_broker(&spec).await?;
            if g.json {
                output::json(&created);
            } else {
                println!("created broker connection {}", created.name);
            }
        }
        BrokersCommand::Delete { name, force, yes } => {
            let c = g.client()?;
            confirm(
                &format!("Delete broker connection {name:?} and its topics?"),
                yes,
            )?;
            let deleted = c.delete_broker(&name, force).await?;
            if g.json {
                output::json(&deleted);
                return Ok(());
            }
            println!("deleted broker connection {name}");
            if !deleted.disabled_flows.is_empty() {
                println!("disabled flows: {}", deleted.disabled_flows.join(", "));
            }
        }
    }
    Ok(())
}
