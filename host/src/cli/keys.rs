//! `keys`: a flow's parked keys (`on_key_failure = "park"`).

use clap::Subcommand;

use super::output::{self, Table};
use super::{Failure, Global, confirm};
use crate::api;

#[derive(Subcommand, Debug)]
pub(super) enum KeysCommand {
    /// Lists the flow's parked keys and the messages each holds.
    List {
        /// The flow.
        flow: String,
    },
    /// Releases a parked key (every parked key without KEY): the flow
    /// handles its held messages in order, then unparks it.
    Release {
        /// The flow.
        flow: String,
        /// The key; every parked key of the flow when left out.
        key: Option<String>,
    },
    /// Drops a parked key (every parked key without KEY): unparks it and
    /// deletes its held messages, which were acknowledged on the broker
    /// when they were held, so they are gone.
    Drop {
        /// The flow.
        flow: String,
        /// The key; every parked key of the flow when left out.
        key: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

pub(super) async fn run(g: &Global, command: KeysCommand) -> Result<(), Failure> {
    let c = g.client()?;
    match command {
        KeysCommand::List { flow } => {
            let list = c.parked_keys(&flow).await?;
            if g.json {
                output::json(&list);
            } else {
                print_keys(&list.keys);
            }
        }
        KeysCommand::Release { flow, key } => {
            let changed = c.release_keys(&flow, &api::KeySelection { key }).await?;
            print_changed(g, "released", &changed);
        }
        KeysCommand::Drop { flow, key, yes } => {
            let what = match &key {
                Some(k) => format!("key {k:?}"),
                None => "every parked key".to_string(),
            };
            confirm(
                &format!("delete the held messages of {what} of flow {flow}?"),
                yes,
            )?;
            let changed = c.drop_keys(&flow, &api::KeySelection { key }).await?;
            print_changed(g, "dropped", &changed);
        }
    }
    Ok(())
}

fn print_keys(keys: &[api::ParkedKey]) {
    let mut table = Table::new(&["KEY", "MESSAGES", "SINCE", "STATE"]);
    for k in keys {
        let state = if k.released { "releasing" } else { "parked" };
        table.row(vec![
            k.key.clone(),
            k.messages.to_string(),
            k.since.clone(),
            state.to_string(),
        ]);
    }
    table.print();
}

fn print_changed(g: &Global, done: &str, changed: &api::KeysChanged) {
    if g.json {
        output::json(changed);
        return;
    }
    for k in &changed.keys {
        println!(
            "{done} key {:?} of flow {} ({} messages)",
            k.key, changed.flow, k.messages
        );
    }
    if changed.keys.is_empty() {
        println!(
            "no parked keys of flow {} to {}",
            changed.flow,
            &done[..done.len() - 2]
        );
    }
}
