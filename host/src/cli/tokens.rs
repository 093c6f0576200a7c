//! `tokens`: owner-scoped API tokens.

use clap::Subcommand;

use super::output::{self, Table};
use super::{Failure, Global};

#[derive(Subcommand, Debug)]
pub(super) enum TokensCommand {
    /// Creates a token for an owner and prints it (only this once).
    Create {
        /// The owner whose algorithms the token may manage.
        #[arg(long)]
        owner: String,
    },
    /// Lists tokens (ids and owners).
    List,
    /// Revokes a token.
    Delete {
        /// The token's id.
        id: String,
    },
}

pub(super) async fn run(g: &Global, command: TokensCommand) -> Result<(), Failure> {
    let c = g.client()?;
    match command {
        TokensCommand::Create { owner } => {
            let created = c.create_token(&owner).await?;
            if g.json {
                output::json(&created);
                return Ok(());
            }
            eprintln!(
                "token {} for owner {owner} (shown only now; pass it with --token or EVENTFLOW_TOKEN):",
                created.id
            );
            println!("{}", created.token);
        }
        TokensCommand::List => {
            let tokens = c.tokens().await?;
            if g.json {
                output::json(&tokens);
                return Ok(());
            }
            let mut table = Table::new(&["ID", "OWNER", "CREATED"]);
            for t in tokens {
                table.row(vec![t.id, t.owner, t.created_at]);
            }
            table.print();
        }
        TokensCommand::Delete { id } => {
            let deleted = c.delete_token(&id).await?;
            if g.json {
                output::json(&deleted);
            } else {
                println!("revoked token {id}");
            }
        }
    }
    Ok(())
}
