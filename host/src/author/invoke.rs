//! `eventflow invoke`: runs one message through an algorithm in the
//! router's sandbox, under a flow's limits, with no broker and no router,
//! and reports everything the invocation did ([`Report`]).
//!
//! What differs from a flow, on purpose: every topic may be published to
//! (the messages are shown, not sent; grants are the router's business),
//! and instead of the router's secrets the algorithm gets the ones given on
//! the command line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::{Context, bail};

use super::parse_id;
use super::report::{self, DataSnapshot, LogCapture, Report};
use crate::config::{Config, FlowSpec, Limits};
use crate::data::Collections;
use crate::message::{Header, InboundMessage};
use crate::sandbox::outbound::Origin;
use crate::sandbox::{AlgorithmId, Invocation, PublishRefusal, Sandbox, TopicResolver};

/// What to run and on what.
pub struct Request {
    /// A component file, or `owner/name/version` in the plugin directory.
    pub target: String,
    /// Who the algorithm is, when `target` is a file outside a plugin
    /// directory's layout.
    pub id: Option<String>,
    /// The payload.
    pub payload: Vec<u8>,
    /// The message's headers.
    pub headers: Vec<Header>,
    /// The topic the message seems to come from.
    pub topic: String,
    /// The algorithm's secrets (environment variables).
    pub secrets: Vec<(String, String)>,
    /// Where `data://` lives; the configuration's, else a temporary
    /// directory removed afterwards.
    pub data_dir: Option<PathBuf>,
    /// The configuration whose sandbox settings, flow limits, plugin and
    /// data directories and outbound grants apply.
    pub config: Option<Config>,
    /// Origins the algorithm may call besides the configuration's grants.
    pub allow: Vec<Origin>,
}

/// Runs the request; the report says whether the algorithm succeeded.
pub async fn invoke(req: Request) -> anyhow::Result<Report> {
    let (path, id) = locate(&req)?;
    let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let (limits, timeout_secs) = flow_limits(req.config.as_ref(), &id);
    let temporary = match req
        .data_dir
        .clone()
        .or(req.config.as_ref().map(|c| c.router.data_dir.clone()))
    {
        Some(dir) => DataDir::Kept(dir),
        None => DataDir::temporary()?,
    };
    let data = Arc::new(Collections::open(temporary.path()).with_context(|| {
        format!(
            "cannot open the data directory {}",
            temporary.path().display()
        )
    })?);
    let mut settings = req
        .config
        .as_ref()
        .map(|c| c.sandbox.clone())
        .unwrap_or_default();
    // One invocation needs one slot; the per-instance limits do not depend
    // on the number of slots.
    settings.max_instances = 1;
    let cache = compiled_cache_dir();
    let sandbox = Sandbox::new(&settings, cache.clone(), data)?;
    // The configuration's grants, and this run's for the algorithm itself.
    let mut grants: std::collections::HashMap<String, Vec<Origin>> = Default::default();
    for g in req.config.iter().flat_map(|c| &c.outbound) {
        grants
            .entry(g.algorithm.clone())
            .or_default()
            .extend(g.origins.iter().cloned());
    }
    grants
        .entry(format!("{}/{}", id.owner, id.name))
        .or_default()
        .extend(req.allow.iter().cloned());
    sandbox.outbound().replace(grants);
    let compiling = Instant::now();
    let algorithm = sandbox
        .load(id.clone(), &bytes)
        .with_context(|| format!("{} ({}) does not load", id, path.display()))?;
    let compile = compiling.elapsed();
    if cache.is_some() {
        trim_cache(&sandbox);
    }
    let mut message = InboundMessage {
        id: uuid::Uuid::now_v7().to_string(),
        topic: req.topic.clone(),
        payload: req.payload,
        headers: req.headers,
        attempt: 1,
        enqueued_at: Some(SystemTime::now()),
        undecodable: None,
    };
    let before = DataSnapshot::take(temporary.path());
    let capture = LogCapture::default();
    let outcome = {
        let _logs = capture.install();
        sandbox
            .invoke(
                &algorithm,
                Invocation {
                    flow: "invoke".into(),
                    message: &mut message,
                    timeout: std::time::Duration::from_secs_f64(timeout_secs),
                    limits: &limits,
                    env: &req.secrets,
                    resolver: Arc::new(AnyTopic),
                },
            )
            .await
    };
    let changes = DataSnapshot::take(temporary.path()).changes_since(&before);
    Ok(report::Report::new(report::Parts {
        id: &id,
        path: &path,
        hash: &algorithm.hash,
        outcome,
        data: changes,
        data_dir: match &temporary {
            DataDir::Kept(d) => Some(d.clone()),
            DataDir::Temporary(_) => None,
        },
        logs: capture.lines(),
        compile,
    }))
}

/// The component's file and who it is.
fn locate(req: &Request) -> anyhow::Result<(PathBuf, AlgorithmId)> {
    let path = Path::new(&req.target);
    if path.is_file() {
        let id = match &req.id {
            Some(id) => parse_id(id)?,
            None => id_from_layout(path).with_context(|| {
                format!(
                    "cannot tell who {} is from its path (not <owner>/<name>/<version>.wasm); \
                     pass --id owner/name/version",
                    path.display()
                )
            })?,
        };
        return Ok((path.to_path_buf(), id));
    }
    if req.target.ends_with(".wasm") {
        bail!("{} does not exist", path.display());
    }
    let id = parse_id(&req.target).with_context(|| {
        format!(
            "{:?} is neither a component file nor owner/name/version",
            req.target
        )
    })?;
    let plugins = req
        .config
        .as_ref()
        .map(|c| c.router.plugins_dir.clone())
        .unwrap_or_else(|| PathBuf::from("plugins"));
    let file = plugins
        .join(&id.owner)
        .join(&id.name)
        .join(format!("{}.wasm", id.version));
    if !file.is_file() {
        bail!(
            "{id} is not in the plugin directory: {} does not exist",
            file.display()
        );
    }
    Ok((file, id))
}

/// `owner/name/version` from `.../<owner>/<name>/<version>.wasm`.
fn id_from_layout(path: &Path) -> anyhow::Result<AlgorithmId> {
    let abs = std::path::absolute(path)?;
    let version = abs
        .file_name()
        .and_then(|f| f.to_str())
        .and_then(|f| f.strip_suffix(".wasm"))
        .context("not a .wasm file")?;
    let mut up = abs
        .ancestors()
        .skip(1)
        .filter_map(|p| p.file_name()?.to_str());
    let (Some(name), Some(owner)) = (up.next(), up.next()) else {
        bail!("too short a path");
    };
    parse_id(&format!("{owner}/{name}/{version}"))
}

/// The limits and timeout of the configuration's first flow of the
/// algorithm (pinned to this version or following the latest), else a
/// flow's defaults.
fn flow_limits(config: Option<&Config>, id: &AlgorithmId) -> (Limits, f64) {
    let flow = config.and_then(|c| {
        c.flows.iter().find(|f| {
            f.algorithm.owner == id.owner
                && f.algorithm.name == id.name
                && f.algorithm
                    .version
                    .as_ref()
                    .is_none_or(|v| *v == id.version)
        })
    });
    match flow {
        Some(f) => (f.limits.clone(), f.timeout_secs),
        None => {
            let algorithm = format!("{}/{}", id.owner, id.name)
                .parse()
                .expect("checked names make a reference");
            let f = FlowSpec::new("invoke", "invoke", "invoke", algorithm);
            (f.limits, f.timeout_secs)
        }
    }
}

/// Accepts every topic: the messages are reported, never sent.
struct AnyTopic;

impl TopicResolver for AnyTopic {
    fn resolve(&self, topic: &str, _size: usize) -> Result<String, PublishRefusal> {
        Ok(topic.to_string())
    }
}

/// The data directory of one invocation.
enum DataDir {
    /// Given or configured: it stays.
    Kept(PathBuf),
    /// Made for the invocation and removed with this value.
    Temporary(PathBuf),
}

impl DataDir {
    fn temporary() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!("eventflow-invoke-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(DataDir::Temporary(dir))
    }

    fn path(&self) -> &Path {
        match self {
            DataDir::Kept(p) | DataDir::Temporary(p) => p,
        }
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        if let DataDir::Temporary(dir) = self {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Compiled code of invoked components, kept between runs
/// (`$EVENTFLOW_COMPILED_CACHE`, else `~/.cache/eventflow-compiled`): a
/// Python or JavaScript component takes seconds to compile.
fn compiled_cache_dir() -> Option<PathBuf> {
    std::env::var_os("EVENTFLOW_COMPILED_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/eventflow-compiled"))
        })
}

/// How long an entry of the cache unused by `invoke` is kept.
const CACHE_KEEP: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

/// Drops cache entries unused for [`CACHE_KEEP`] and keeps the rest within
/// `compiled_cache_max_mib`, least recently used first. A failure only
/// costs disk space.
fn trim_cache(sandbox: &Sandbox) {
    let Some(dir) = compiled_cache_dir() else {
        return;
    };
    let recent = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t.elapsed().unwrap_or_default() < CACHE_KEEP)
        })
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            Some(name.split_once('-')?.0.to_string())
        })
        .collect();
    if let Err(e) = sandbox.evict_compiled(&recent) {
        tracing::debug!(error = %format!("{e:#}"), "Could not trim the compiled-code cache.");
    }
}
