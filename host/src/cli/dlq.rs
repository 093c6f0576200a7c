//! `dlq`: a flow's dead letters.

use clap::Subcommand;

use super::output::{self, Table};
use super::{Failure, Global};
use crate::api;

#[derive(Subcommand, Debug)]
pub(super) enum DlqCommand {
    /// Lists the flow's dead letters: verified ones were written by this
    /// router; unverified ones were not (forged, or signed with another
    /// router's dead-letter key). With --json, each with its envelope.
    List {
        /// The flow.
        flow: String,
        /// Read at most this many messages of the dead-letter topic.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
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
    },
}

pub(super) async fn run(g: &Global, command: DlqCommand) -> Result<(), Failure> {
    let c = g.client()?;
    match command {
        DlqCommand::List { flow, limit } => {
            let list = c.dead_letters(&flow, limit).await?;
            if g.json {
                output::json(&list.dead_letters);
            } else {
                print_dead_letters(&list);
            }
        }
        DlqCommand::Replay {
            flow,
            id,
            include_unverified,
        } => {
            let req = api::ReplayDeadLetters {
                id,
                include_unverified,
            };
            let report = c.replay(&flow, &req).await?;
            if g.json {
                output::json(&report);
                return Ok(());
            }
            println!(
                "replayed {} dead letters of flow {flow}",
                report.replayed.len()
            );
            for s in &report.skipped {
                eprintln!(
                    "skipped dead letter {} (message {}): {}",
                    s.dead_letter_id, s.message_id, s.why
                );
            }
        }
    }
    Ok(())
}

/// One dead letter a line: its status, ids, reason and payload.
fn print_dead_letters(list: &api::DeadLetterList) {
    let mut table = Table::new(&[
        "STATUS",
        "DEAD-LETTER ID",
        "MESSAGE ID",
        "REASON",
        "PAYLOAD",
    ]);
    for d in &list.dead_letters {
        let envelope: Envelope = serde_json::from_value(d.envelope.clone()).unwrap_or_default();
        let mut payload: String = envelope.payload.chars().take(60).collect();
        if envelope.payload.chars().count() > 60 {
            payload.push('…');
        }
        table.row(vec![
            d.status.clone(),
            d.dead_letter_id.clone(),
            output::or_dash(envelope.source.and_then(|s| s.message_id).as_deref()),
            output::or_dash(envelope.last_failure.and_then(|f| f.reason).as_deref()),
            payload,
        ]);
    }
    table.print();
    println!("{} verified, {} unverified", list.verified, list.unverified);
}

/// What the table shows of an envelope (which may be anything, when it is
/// unverified).
#[derive(serde::Deserialize, Default)]
struct Envelope {
    #[serde(default)]
    source: Option<Source>,
    #[serde(default)]
    last_failure: Option<LastFailure>,
    #[serde(default)]
    payload: String,
}

#[derive(serde::Deserialize, Default)]
struct Source {
    #[serde(default)]
    message_id: Option<String>,
}

#[derive(serde::Deserialize, Default)]
struct LastFailure {
    #[serde(default)]
    reason: Option<String>,
}
