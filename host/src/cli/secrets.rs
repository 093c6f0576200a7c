//! `secrets`: an algorithm's secrets (values are never shown), and the key
//! they are encrypted with.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use super::{Failure, Global, output};

#[derive(Subcommand, Debug)]
pub(super) enum SecretsCommand {
    /// Sets a secret; the value comes from --from-env or standard input.
    Set {
        /// `owner/name`.
        algorithm: String,
        /// The environment variable the algorithm will see.
        key: String,
        /// Read the value from this environment variable of this command.
        #[arg(long)]
        from_env: Option<String>,
    },
    /// Lists the names of an algorithm's secrets.
    List {
        /// `owner/name`.
        algorithm: String,
    },
    /// Re-encrypts every secret with a new key (the router must be
    /// stopped): a new random key in place of the current key file, or the
    /// key in --new-key-file (created if missing).
    RotateKey {
        /// Use this key file (32 bytes or 64 hex digits; created if
        /// missing); point EVENTFLOW_SECRET_KEY_FILE or
        /// router.secret_key_file at it afterwards.
        #[arg(long)]
        new_key_file: Option<PathBuf>,
    },
    /// Deletes a secret.
    Delete {
        /// `owner/name`.
        algorithm: String,
        /// The variable.
        key: String,
    },
}

pub(super) async fn run(g: &Global, command: SecretsCommand) -> Result<(), Failure> {
    match command {
        SecretsCommand::Set {
            algorithm,
            key,
            from_env,
        } => {
            let value = match from_env {
                Some(var) => std::env::var(&var)
                    .with_context(|| format!("the environment variable {var} is not set"))?,
                None => {
                    let mut v = String::new();
                    std::io::Read::read_to_string(&mut std::io::stdin(), &mut v)
                        .context("cannot read the value from standard input")?;
                    v.trim_end_matches(['\n', '\r']).to_string()
                }
            };
            let set = g.client()?.set_secret(&algorithm, &key, value).await?;
            if g.json {
                output::json(&set);
            } else {
                println!("set secret {key} of {algorithm}");
            }
        }
        SecretsCommand::RotateKey { new_key_file } => rotate_key(g, new_key_file).await?,
        SecretsCommand::List { algorithm } => {
            let names = g.client()?.secrets(&algorithm).await?;
            if g.json {
                output::json(&names.secrets);
            } else {
                for name in &names.secrets {
                    println!("{name}");
                }
            }
        }
        SecretsCommand::Delete { algorithm, key } => {
            let deleted = g.client()?.delete_secret(&algorithm, &key).await?;
            if g.json {
                output::json(&deleted);
            } else {
                println!("deleted secret {key} of {algorithm}");
            }
        }
    }
    Ok(())
}

async fn rotate_key(g: &Global, new_key_file: Option<PathBuf>) -> Result<(), Failure> {
    let cfg = g.load()?;
    let options = crate::state::StateOptions {
        damaged: crate::state::Damaged::Refuse,
        key_file: cfg.router.secret_key_file.clone(),
    };
    let dir = cfg.router.state_dir.clone();
    let keep = new_key_file.clone();
    let rotation = tokio::task::spawn_blocking(move || {
        crate::state::rotate_key(&dir, &options, keep.as_deref())
    })
    .await
    .context("the key rotation failed")??;
    if g.json {
        output::json(&serde_json::json!({
            "secrets": rotation.secrets,
            "key_file": rotation.key_file,
        }));
        return Ok(());
    }
    println!(
        "re-encrypted {} secrets with {}",
        rotation.secrets,
        rotation.key_file.display()
    );
    if new_key_file.is_some() {
        println!(
            "point EVENTFLOW_SECRET_KEY_FILE (or router.secret_key_file) at {} before the next start",
            rotation.key_file.display()
        );
    }
    Ok(())
}
