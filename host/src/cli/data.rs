//! `data get|ls`: reads the data collections directly, from the data
//! directory or the bucket of `[data] backend` (no router needed).

use anyhow::Context;
use clap::Subcommand;

use super::{Failure, Global, output};
use crate::data::config::Backend;
use crate::data::{Collections, DataUri};

#[derive(Subcommand, Debug)]
pub(super) enum DataCommand {
    /// Prints a stored file.
    Get {
        /// `data://owner/collection/path`
        uri: String,
    },
    /// Lists a collection or one of its directories.
    Ls {
        /// `data://owner/collection[/dir]`
        uri: String,
    },
}

pub(super) async fn run(g: &Global, command: DataCommand) -> Result<(), Failure> {
    let (uri, list) = match command {
        DataCommand::Get { uri } => (uri, false),
        DataCommand::Ls { uri } => (uri, true),
    };
    let cfg = g.load()?;
    let uri = DataUri::parse(&uri).map_err(|e| anyhow::anyhow!("{e}"))?;
    let collections = open_collections(&cfg)?;
    if list {
        let names = collections
            .list(&uri)
            .await
            .map_err(|e| anyhow::anyhow!("{uri}: {e}"))?;
        if g.json {
            output::json(&names);
        } else {
            for name in names {
                println!("{name}");
            }
        }
    } else {
        let bytes = collections
            .get(&uri)
            .await
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

/// The configured collections. Router secrets are in the router's state,
/// which the CLI does not open; `{ env }` and `{ file }` credentials work.
fn open_collections(cfg: &crate::config::Config) -> anyhow::Result<Collections> {
    let dir = &cfg.router.data_dir;
    if cfg.data.parsed() == Ok(Backend::Local) && !dir.exists() {
        anyhow::bail!("the data directory {} does not exist yet", dir.display());
    }
    cfg.data.open(dir, None)
}
