//! `outbound`: the origins algorithms may send HTTP requests to.

use clap::Subcommand;

use super::{Failure, Global, output};

#[derive(Subcommand, Debug)]
pub(super) enum OutboundCommand {
    /// Allows an algorithm to send HTTP requests to an origin.
    Allow {
        /// `owner/name`, or `owner/*` for every algorithm of the owner.
        algorithm: String,
        /// `http(s)://host[:port]`, e.g. https://api.example.com or
        /// https://*.example.com (its subdomains). A private address is
        /// reachable only when the origin names that IP address.
        origin: String,
    },
    /// Denies an origin the algorithm was allowed.
    Deny {
        /// `owner/name` or `owner/*`.
        algorithm: String,
        /// The origin, as it was allowed.
        origin: String,
    },
    /// Lists the allowed origins, of one algorithm or of all.
    List {
        /// `owner/name` or `owner/*`; every algorithm without it.
        algorithm: Option<String>,
    },
}

pub(super) async fn run(g: &Global, command: OutboundCommand) -> Result<(), Failure> {
    let (algorithm, origin, add) = match command {
        OutboundCommand::Allow { algorithm, origin } => (algorithm, origin, true),
        OutboundCommand::Deny { algorithm, origin } => (algorithm, origin, false),
        OutboundCommand::List { algorithm } => {
            let mut grants = g.client()?.outbound().await?;
            grants.retain(|x| algorithm.as_ref().is_none_or(|a| *a == x.algorithm));
            if g.json {
                output::json(&grants);
            } else {
                for grant in &grants {
                    for origin in &grant.origins {
                        println!("{}\t{origin}", grant.algorithm);
                    }
                }
            }
            return Ok(());
        }
    };
    let grant = g
        .client()?
        .change_outbound(&algorithm, &origin, add)
        .await?;
    if g.json {
        output::json(&grant);
    } else {
        let verb = if add { "allowed" } else { "denied" };
        println!("{verb} {origin} for {algorithm}");
    }
    Ok(())
}
