//! The development loop of algorithm authors, one file per command: create
//! a project ([`new`]), build it into a component ([`build`]), run one
//! message through the router's sandbox without a router ([`invoke`], what
//! it reports in [`report`]), and copy a component into a running router's
//! plugin directory ([`deploy`]).
//!
//! A project is a directory with the algorithm's source, a test input
//! (`input.json`), and the SDK of its language vendored from the `eventflow`
//! binary that created it (`eventflow-sdk/`, laid out as in the repository),
//! so it builds outside the repository and against the contract this
//! router implements. `build` installs the component as
//! `dist/<owner>/<name>/<version>.wasm`: the plugin directory's layout, from
//! which `invoke` reads who the algorithm is.

pub mod build;
pub mod deploy;
pub mod invoke;
pub mod new;
pub mod report;

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::sandbox::AlgorithmId;

/// The language of a project.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    /// A Rust crate built by cargo for wasm32-wasip2.
    Rust,
    /// `app.py`, built by componentize-py.
    Python,
    /// `app.js`, built by componentize-js.
    Js,
}

/// The manifest of a Python or JavaScript project, `algorithm.toml` (the
/// format of the repository's `plugins/*/algorithm.toml`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    owner: String,
    name: String,
    version: String,
    /// The repository's test algorithms set it; it changes nothing here.
    #[serde(default)]
    #[allow(dead_code)]
    test_only: bool,
    /// The algorithm calls out over HTTP: built for a world that imports
    /// `wasi:http` (Python: `plugins/python/wit-http`; JavaScript:
    /// componentize-js's `fetch`).
    #[serde(default)]
    outbound_http: bool,
}

/// A project found in a directory: its language and who it builds.
#[derive(Debug)]
pub struct Project {
    /// The project's directory.
    pub dir: PathBuf,
    /// Its language.
    pub lang: Lang,
    /// `owner/name/version` of the component it builds.
    pub id: AlgorithmId,
    /// `outbound_http = true` in `algorithm.toml` (never for Rust, whose
    /// crates import what they use).
    pub outbound_http: bool,
}

impl Project {
    /// Reads the project in `dir`: `Cargo.toml` with
    /// `[package.metadata.eventflow] owner`, or `algorithm.toml` beside
    /// `app.py` or `app.js`.
    pub fn open(dir: &Path) -> anyhow::Result<Self> {
        let (lang, owner, name, version, outbound_http) = if dir.join("Cargo.toml").exists() {
            let (lang, owner, name, version) = rust_manifest(&dir.join("Cargo.toml"))?;
            (lang, owner, name, version, false)
        } else {
            let lang = if dir.join("app.py").exists() {
                Lang::Python
            } else if dir.join("app.js").exists() {
                Lang::Js
            } else {
                bail!(
                    "{} is not an algorithm project: it has no Cargo.toml, app.py or app.js \
                     (`eventflow new` creates one)",
                    dir.display()
                );
            };
            let path = dir.join("algorithm.toml");
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let m: Manifest = toml::from_str(&text)
                .with_context(|| format!("cannot parse {}", path.display()))?;
            (lang, m.owner, m.name, m.version, m.outbound_http)
        };
        let id = algorithm_id(&owner, &name, &version)
            .with_context(|| format!("the project in {}", dir.display()))?;
        Ok(Self {
            dir: dir.to_path_buf(),
            lang,
            id,
            outbound_http,
        })
    }

    /// Where `build` installs the component.
    pub fn component_path(&self) -> PathBuf {
        self.dir
            .join("dist")
            .join(&self.id.owner)
            .join(&self.id.name)
            .join(format!("{}.wasm", self.id.version))
    }
}

/// Owner, name and version of a Rust project, from its `Cargo.toml`.
fn rust_manifest(path: &Path) -> anyhow::Result<(Lang, String, String, String)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let doc: toml::Table =
        toml::from_str(&text).with_context(|| format!("cannot parse {}", path.display()))?;
    let package = doc.get("package").and_then(|p| p.as_table());
    let field = |key: &str| package.and_then(|p| p.get(key)).and_then(|v| v.as_str());
    let owner = package
        .and_then(|p| p.get("metadata"))
        .and_then(|m| m.get("eventflow"))
        .and_then(|e| e.get("owner"))
        .and_then(|o| o.as_str());
    match (owner, field("name"), field("version")) {
        (Some(owner), Some(name), Some(version)) => Ok((
            Lang::Rust,
            owner.to_string(),
            name.to_string(),
            version.to_string(),
        )),
        (None, ..) => bail!(
            "{}: no [package.metadata.eventflow] owner = \"...\" (the algorithm's owner)",
            path.display()
        ),
        _ => bail!("{}: [package] needs a name and a version", path.display()),
    }
}

/// Checks and builds `owner/name/version`.
pub fn algorithm_id(owner: &str, name: &str, version: &str) -> anyhow::Result<AlgorithmId> {
    parse_id(&format!("{owner}/{name}/{version}"))
}

/// Parses `owner/name/version`, with the rules of the configuration.
pub fn parse_id(s: &str) -> anyhow::Result<AlgorithmId> {
    let r: crate::config::AlgorithmRef = s.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let Some(version) = r.version else {
        bail!("\"{s}\" has no version: expected owner/name/version");
    };
    Ok(AlgorithmId {
        owner: r.owner,
        name: r.name,
        version,
    })
}

/// The SDK's files, as the `eventflow` binary was built with them, by their
/// path in the repository. `new` writes those of a project's language under
/// `eventflow-sdk/`.
pub(crate) mod sdk {
    /// The contract, for every language.
    pub const WIT: &[(&str, &str)] = &[
        (
            "wit/algorithm.wit",
            include_str!("../../../wit/algorithm.wit"),
        ),
        (
            "wit/deps/algorithm-0.1.0/algorithm.wit",
            include_str!("../../../wit/deps/algorithm-0.1.0/algorithm.wit"),
        ),
    ];
    /// The Rust SDK's source (its `Cargo.toml` is written by `new`).
    pub const RUST: &[(&str, &str)] = &[(
        "plugins/sdk/src/lib.rs",
        include_str!("../../../plugins/sdk/src/lib.rs"),
    )];
    /// The Python SDK.
    pub const PYTHON: &[(&str, &str)] = &[
        (
            "plugins/python/eventflow/__init__.py",
            include_str!("../../../plugins/python/eventflow/__init__.py"),
        ),
        (
            "plugins/python/eventflow/_core.py",
            include_str!("../../../plugins/python/eventflow/_core.py"),
        ),
        (
            "plugins/python/eventflow/data.py",
            include_str!("../../../plugins/python/eventflow/data.py"),
        ),
        (
            "plugins/python/eventflow/main.py",
            include_str!("../../../plugins/python/eventflow/main.py"),
        ),
        (
            "plugins/python/eventflow/http.py",
            include_str!("../../../plugins/python/eventflow/http.py"),
        ),
        (
            "plugins/python/build-requirements.txt",
            include_str!("../../../plugins/python/build-requirements.txt"),
        ),
        // The world of algorithms that call out (`outbound_http = true`).
        (
            "plugins/python/wit-http/world.wit",
            include_str!("../../../plugins/python/wit-http/world.wit"),
        ),
        (
            "plugins/python/wit-http/deps/cli/cli.wit",
            include_str!("../../../plugins/python/wit-http/deps/cli/cli.wit"),
        ),
        (
            "plugins/python/wit-http/deps/clocks/clocks.wit",
            include_str!("../../../plugins/python/wit-http/deps/clocks/clocks.wit"),
        ),
        (
            "plugins/python/wit-http/deps/filesystem/filesystem.wit",
            include_str!("../../../plugins/python/wit-http/deps/filesystem/filesystem.wit"),
        ),
        (
            "plugins/python/wit-http/deps/http/http.wit",
            include_str!("../../../plugins/python/wit-http/deps/http/http.wit"),
        ),
        (
            "plugins/python/wit-http/deps/io/io.wit",
            include_str!("../../../plugins/python/wit-http/deps/io/io.wit"),
        ),
        (
            "plugins/python/wit-http/deps/random/random.wit",
            include_str!("../../../plugins/python/wit-http/deps/random/random.wit"),
        ),
        (
            "plugins/python/wit-http/deps/sockets/sockets.wit",
            include_str!("../../../plugins/python/wit-http/deps/sockets/sockets.wit"),
        ),
    ];
    /// The JavaScript SDK and its build script.
    pub const JS: &[(&str, &str)] = &[
        (
            "plugins/js/eventflow.js",
            include_str!("../../../plugins/js/eventflow.js"),
        ),
        (
            "plugins/js/build.mjs",
            include_str!("../../../plugins/js/build.mjs"),
        ),
        (
            "plugins/js/package.json",
            include_str!("../../../plugins/js/package.json"),
        ),
        (
            "plugins/js/package-lock.json",
            include_str!("../../../plugins/js/package-lock.json"),
        ),
        (
            "plugins/js/wit/algorithm-js.wit",
            include_str!("../../../plugins/js/wit/algorithm-js.wit"),
        ),
        (
            "plugins/js/wit/wasi-cli-environment.wit",
            include_str!("../../../plugins/js/wit/wasi-cli-environment.wit"),
        ),
    ];
    /// The versions the repository's algorithms build with: a new Rust
    /// project starts from them, so it builds with what cargo has cached.
    pub const CARGO_LOCK: &str = include_str!("../../../plugins/Cargo.lock");
}
