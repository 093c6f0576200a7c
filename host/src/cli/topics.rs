//! `topics` and `send`: topics, their access lists and their messages.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::client::Client;
use super::output::{self, Table};
use super::{Failure, Global, confirm, parse_pair};
use crate::api;

#[derive(Subcommand, Debug)]
pub(super) enum TopicsCommand {
    /// Lists a broker's topics: declared ones with their access lists, and
    /// those the broker itself lists.
    List {
        /// The broker connection; all of them by default.
        #[arg(long)]
        broker: Option<String>,
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
    },
    /// Grants an algorithm (`owner/name` or `owner/*`) access to a topic.
    Grant(GrantArgs),
    /// Revokes an algorithm's access to a topic.
    Revoke(GrantArgs),
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
    },
    /// Prints a topic's messages, oldest first, without consuming them
    /// (embedded broker).
    Peek {
        /// The topic, by its configured name.
        topic: String,
        /// The broker connection; needed when several brokers exist.
        #[arg(long)]
        broker: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
}

/// What `grant` and `revoke` change.
#[derive(Args, Debug)]
pub(super) struct GrantArgs {
    /// The topic.
    topic: String,
    /// `owner/name` or `owner/*`.
    algorithm: String,
    /// Consuming from it.
    #[arg(long)]
    consume: bool,
    /// Publishing to it (also as output topic).
    #[arg(long)]
    publish: bool,
    /// Publishing to it while it is a flow's dead-letter topic (`publish`
    /// does not cover that: dead letters are the router's).
    #[arg(long)]
    dead_letter_publish: bool,
    /// The broker connection.
    #[arg(long)]
    broker: Option<String>,
}

/// `eventflow send`.
#[derive(Args, Debug)]
pub(super) struct SendArgs {
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
    #[arg(long = "header", short = 'H', value_parser = parse_pair)]
    headers: Vec<(String, String)>,
    /// The message's key (the `message-key` header): flows with
    /// `ordering = "key"` handle one key's messages in order.
    #[arg(long)]
    key: Option<String>,
}

pub(super) async fn send(g: &Global, args: SendArgs) -> Result<(), Failure> {
    let payload = match (args.data, args.file) {
        (Some(d), _) => d.into_bytes(),
        (None, Some(f)) => {
            std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?
        }
        (None, None) => unreachable!("clap requires --data or --file"),
    };
    let mut req = api::SendMessages {
        topic: args.topic,
        broker: args.broker,
        headers: args.headers,
        key: args.key,
        ..Default::default()
    };
    match String::from_utf8(payload) {
        Ok(text) => req.payload = Some(text),
        Err(e) => {
            use base64::Engine as _;
            req.payload_base64 =
                Some(base64::engine::general_purpose::STANDARD.encode(e.into_bytes()));
        }
    }
    let published = g.client()?.send(&req).await?;
    if g.json {
        output::json(&published);
    } else {
        println!("published to {}", published.topic);
    }
    Ok(())
}

/// The broker connection of `topic`: the given one, the only connection, or
/// the one connection that declares the topic.
async fn broker_of(c: &Client, topic: &str, broker: Option<String>) -> Result<String, Failure> {
    if let Some(b) = broker {
        return Ok(b);
    }
    let state = c.state().await?;
    if let [one] = state.brokers.as_slice() {
        return Ok(one.name.clone());
    }
    let owners: Vec<&str> = state
        .topics
        .iter()
        .filter(|t| t.name == topic)
        .map(|t| t.broker.as_str())
        .collect();
    match owners.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err(anyhow::anyhow!("no topic {topic:?} is declared; pass --broker").into()),
        _ => {
            Err(anyhow::anyhow!("topic {topic:?} exists on several brokers: pass --broker").into())
        }
    }
}

pub(super) async fn run(g: &Global, command: TopicsCommand) -> Result<(), Failure> {
    let c = g.client()?;
    match command {
        TopicsCommand::List { broker } => list(g, &c, broker).await?,
        TopicsCommand::Declare {
            topic,
            broker,
            address,
        } => {
            let broker = broker_of(&c, &topic, broker).await?;
            // Only the fields given: the router keeps the others of a
            // declared topic, so this never wipes an access list.
            let spec = api::DeclareTopic {
                address: address.map(Some),
                ..Default::default()
            };
            let declared = c.declare_topic(&broker, &topic, &spec).await?;
            if g.json {
                output::json(&declared);
            } else {
                println!(
                    "declared topic {broker}:{topic}  address={}  consumers={}  publishers={}",
                    declared.address.as_deref().unwrap_or(&topic),
                    output::list(&declared.consumers),
                    output::list(&declared.publishers)
                );
            }
        }
        TopicsCommand::Grant(args) => change_grant(g, &c, args, true).await?,
        TopicsCommand::Revoke(args) => change_grant(g, &c, args, false).await?,
        TopicsCommand::Delete {
            topic,
            broker,
            force,
            yes,
        } => {
            let broker = broker_of(&c, &topic, broker).await?;
            confirm(&format!("Delete topic {broker}:{topic}?"), yes)?;
            let deleted = c.delete_topic(&broker, &topic, force).await?;
            if g.json {
                output::json(&deleted);
            } else {
                println!("deleted topic {broker}:{topic}");
                if !deleted.disabled_flows.is_empty() {
                    println!("disabled flows: {}", deleted.disabled_flows.join(", "));
                }
            }
        }
        TopicsCommand::Peek {
            topic,
            broker,
            limit,
        } => peek(g, &c, &topic, broker, limit).await?,
    }
    Ok(())
}

async fn peek(
    g: &Global,
    c: &Client,
    topic: &str,
    broker: Option<String>,
    limit: usize,
) -> Result<(), Failure> {
    let broker = broker_of(c, topic, broker).await?;
    let peeked = c.peek(&broker, topic, limit).await?;
    if g.json {
        output::json(&peeked);
        return Ok(());
    }
    let mut table = Table::new(&["ID", "RECEIVES", "ENQUEUED", "PAYLOAD"]);
    for m in &peeked.messages {
        table.row(vec![
            m.id.clone(),
            m.receive_count.to_string(),
            output::or_dash(m.enqueued_at.as_deref()),
            shorten(&m.payload, &m.payload_encoding),
        ]);
    }
    table.print();
    if peeked.truncated {
        println!("(more messages: the answer reached its byte limit)");
    }
    Ok(())
}

/// A payload on one line, cut at 80 characters.
fn shorten(payload: &str, encoding: &str) -> String {
    let one_line: String = payload
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut short: String = one_line.chars().take(80).collect();
    if one_line.chars().count() > 80 {
        short.push('…');
    }
    if encoding == "base64" {
        format!("(base64) {short}")
    } else {
        short
    }
}

async fn list(g: &Global, c: &Client, broker: Option<String>) -> Result<(), Failure> {
    let brokers: Vec<String> = match broker {
        Some(b) => vec![b],
        None => c.brokers().await?.into_iter().map(|b| b.name).collect(),
    };
    let mut listings = Vec::new();
    for b in brokers {
        let listing = c.topics(&b).await?;
        listings.push((b, listing));
    }
    if g.json {
        let all: Vec<&api::TopicEntry> = listings.iter().flat_map(|(_, l)| &l.topics).collect();
        output::json(&all);
        return Ok(());
    }
    let mut table = Table::new(&["TOPIC", "DECLARED", "CONSUMERS", "PUBLISHERS"]);
    for (b, listing) in &listings {
        for t in &listing.topics {
            table.row(vec![
                format!("{b}:{}", t.topic.name),
                if t.declared { "yes" } else { "no" }.into(),
                output::list(&t.topic.consumers),
                output::list(&t.topic.publishers),
            ]);
        }
    }
    table.print();
    for (b, listing) in &listings {
        if let Some(why) = &listing.listing_error {
            println!("{b}: only declared topics shown; the broker refused to list its own: {why}");
        }
    }
    Ok(())
}

/// Grants (`add`) or revokes consume and/or publish access.
async fn change_grant(g: &Global, c: &Client, args: GrantArgs, add: bool) -> Result<(), Failure> {
    if !args.consume && !args.publish && !args.dead_letter_publish {
        return Err(
            anyhow::anyhow!("say what: --consume, --publish and/or --dead-letter-publish").into(),
        );
    }
    let broker = broker_of(c, &args.topic, args.broker).await?;
    let grant = api::Grant {
        algorithm: args.algorithm,
        consume: args.consume,
        publish: args.publish,
        dead_letter_publish: args.dead_letter_publish,
    };
    let topic = c.grant(&broker, &args.topic, &grant, add).await?;
    let (algorithm, name) = (&grant.algorithm, &args.topic);
    if g.json {
        output::json(&topic);
    } else if add {
        println!("granted {algorithm} access to {broker}:{name}");
    } else {
        println!("revoked {algorithm}'s access to {broker}:{name}");
    }
    Ok(())
}
