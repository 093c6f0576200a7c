//! `data get|ls`: reads the data directory (no router needed).

use std::path::Path;

use anyhow::Context;
use clap::Subcommand;

use super::{Failure, Global, output};
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

pub(super) fn run(g: &Global, command: DataCommand) -> Result<(), Failure> {
    let (uri, list) = match command {
        DataCommand::Get { uri } => (uri, false),
        DataCommand::Ls { uri } => (uri, true),
    };
    let cfg = g.load()?;
    let uri = DataUri::parse(&uri).map_err(|e| anyhow::anyhow!("{e}"))?;
    let collections = open_collections(&cfg.router.data_dir)?;
    if list {
        let names = collections
            .list(&uri)
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
