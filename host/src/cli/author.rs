//! `new`, `build`, `invoke`, `deploy`: the development loop of algorithm
//! authors (the work is in [`crate::author`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, anyhow};
use clap::Args;

use super::{Failure, Global, output, parse_pair};
use crate::author::{self, Lang, deploy, invoke};

#[derive(Args, Debug)]
pub(super) struct NewArgs {
    /// `owner/name` of the algorithm.
    algorithm: String,
    /// The language.
    #[arg(long, value_enum)]
    lang: Lang,
    /// The project's directory (created; must be empty); `./<name>` by default.
    dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub(super) struct BuildArgs {
    /// The project's directory.
    #[arg(default_value = ".")]
    dir: PathBuf,
}

#[derive(Args, Debug)]
pub(super) struct InvokeArgs {
    /// A component file (`dist/<owner>/<name>/<version>.wasm` after `build`),
    /// or `owner/name/version` in the configuration's plugin directory.
    target: String,
    /// The payload: JSON (any text), or `@FILE` for a file's contents.
    #[arg(long)]
    data: String,
    /// A header of the message, `key=value` (repeatable).
    #[arg(long = "header", value_parser = parse_pair)]
    headers: Vec<(String, String)>,
    /// A secret the algorithm sees as an environment variable, `KEY=value`
    /// (repeatable).
    #[arg(long = "secret", value_parser = parse_pair)]
    secrets: Vec<(String, String)>,
    /// Where `data://` collections live; the configuration's data directory
    /// when --config names a file, else a temporary directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Who the component is, `owner/name/version`, when its path does not
    /// say (`<owner>/<name>/<version>.wasm`).
    #[arg(long)]
    id: Option<String>,
    /// The topic the message comes from.
    #[arg(long, default_value = "invoke")]
    topic: String,
    /// An origin the algorithm may send HTTP requests to for this run
    /// (`https://api.example.com`, `http://127.0.0.1:8080`; repeatable),
    /// besides the configuration's `[[outbound]]` grants. The router's
    /// checks apply as in a flow: a private address must be named.
    #[arg(long = "allow")]
    allow: Vec<crate::sandbox::outbound::Origin>,
}

#[derive(Args, Debug)]
pub(super) struct DeployArgs {
    /// The component file.
    component: PathBuf,
    /// `owner/name/version` to install it as.
    algorithm: String,
    /// The plugin directory; by default the configuration's, or its plugin
    /// bucket (`[plugins] backend`), to which the component is uploaded.
    #[arg(long)]
    plugins: Option<PathBuf>,
    /// How long to wait for the router to load or reject it.
    #[arg(long, default_value_t = 300.0)]
    timeout_secs: f64,
}

pub(super) fn new(args: NewArgs) -> Result<(), Failure> {
    let name = args.algorithm.rsplit('/').next().unwrap_or_default();
    let dir = args.dir.unwrap_or_else(|| PathBuf::from(name));
    author::new::create(&args.algorithm, args.lang, &dir)?;
    println!(
        "created {} in {}: `eventflow build {dir}` builds it, \
         `eventflow invoke <component> --data @{dir}/{}` runs it",
        args.algorithm,
        dir.display(),
        author::new::TEST_INPUT,
        dir = dir.display(),
    );
    Ok(())
}

pub(super) fn build(g: &Global, args: BuildArgs) -> Result<(), Failure> {
    let (project, path) = author::build::build(&args.dir)?;
    if g.json {
        output::json(&serde_json::json!({
            "algorithm": project.id.to_string(),
            "component": path,
        }));
    } else {
        println!("built {}: {}", project.id, path.display());
    }
    Ok(())
}

pub(super) async fn invoke(g: &Global, args: InvokeArgs) -> Result<(), Failure> {
    let payload = match args.data.strip_prefix('@') {
        Some(file) => std::fs::read(file).with_context(|| format!("cannot read {file}"))?,
        None => args.data.into_bytes(),
    };
    // The default configuration file is used only when it exists.
    let config = if g.config.exists() || g.config != Path::new("eventflow.toml") {
        Some(g.load()?)
    } else {
        None
    };
    let report = invoke::invoke(invoke::Request {
        target: args.target,
        id: args.id,
        payload,
        headers: args.headers,
        topic: args.topic,
        secrets: args.secrets,
        data_dir: args.data_dir,
        config,
        allow: args.allow,
    })
    .await?;
    if g.json {
        output::json(&report);
    } else {
        report.print();
    }
    if report.succeeded() {
        Ok(())
    } else {
        Err(anyhow!(
            "{} failed: {}: {}",
            report.algorithm,
            report.verdict,
            report.reason.as_deref().unwrap_or_default()
        )
        .into())
    }
}

pub(super) async fn deploy(g: &Global, args: DeployArgs) -> Result<(), Failure> {
    let id = author::parse_id(&args.algorithm)?;
    let (dest, hash) = match args.plugins {
        Some(plugins) => deploy::install(&args.component, &id, &plugins)?,
        None => {
            let config = g.load()?;
            match crate::mirror::Mirror::of(&config)? {
                // Plugins come from a bucket: upload there; every router
                // of the fleet mirrors it.
                Some(bucket) => deploy::upload(&args.component, &id, &bucket).await?,
                None => deploy::install(&args.component, &id, &config.router.plugins_dir)?,
            }
        }
    };
    if !g.json {
        println!("copied to {}; waiting for the router", dest.display());
    }
    let client = g.client().map_err(|e| {
        let why = match e {
            Failure::Config(e) => e.to_string(),
            Failure::Other(e) => format!("{e:#}"),
        };
        anyhow!(
            "copied to {}, but cannot reach the router to ask whether it loaded it: {why}",
            dest.display()
        )
    })?;
    let timeout = Duration::from_secs_f64(args.timeout_secs);
    let verdict = deploy::wait(&client, &id, &hash, timeout).await?;
    if g.json {
        output::json(
            &serde_json::json!({ "algorithm": id.to_string(), "file": dest, "hash": hash, "verdict": verdict }),
        );
    }
    match verdict {
        deploy::Verdict::Loaded => {
            if !g.json {
                println!("loaded {id} ({})", &hash[..12]);
            }
            Ok(())
        }
        deploy::Verdict::Rejected { reason } => {
            if !g.json {
                println!("rejected {id}: {reason}");
            }
            Err(anyhow!("the router rejected {id}: {reason}").into())
        }
    }
}
