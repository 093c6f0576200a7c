//! `eventflow new`: writes a project that builds as it is, with the SDK of
//! its language vendored and a test input.
//!
//! The SDK is copied from the `eventflow` binary (it carries the files it
//! was built with) rather than referred to by a path into a clone or a
//! registry: a project then builds anywhere, offline apart from the
//! language's own packages, and against the contract of the router that
//! created it. To update the SDK, create a project with a newer `eventflow`
//! and copy its `eventflow-sdk/`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::{Lang, algorithm_id, sdk};
use crate::sandbox::AlgorithmId;

/// The directory the vendored SDK goes to, in every project.
pub const SDK_DIR: &str = "eventflow-sdk";
/// The test input every project starts with.
pub const TEST_INPUT: &str = "input.json";
/// The version a new project starts at.
const FIRST_VERSION: &str = "0.1.0";

/// Writes a new project for `owner/name` in `dir` (created; it must not
/// exist or be empty). Returns the files written, relative to `dir`.
pub fn create(owner_name: &str, lang: Lang, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let Some((owner, name)) = owner_name.split_once('/') else {
        bail!("\"{owner_name}\" is not owner/name");
    };
    let id = algorithm_id(owner, name, FIRST_VERSION)?;
    if lang == Lang::Rust && !is_crate_name(name) {
        bail!(
            "\"{name}\" cannot name a Rust crate: use letters, digits, '_' and '-', \
             starting with a letter"
        );
    }
    if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
        bail!("{} exists and is not empty", dir.display());
    }
    let mut files = project_files(&id, lang);
    for (path, text) in sdk_files(lang) {
        files.push((Path::new(SDK_DIR).join(path), text.to_string()));
    }
    for (path, text) in &files {
        let full = dir.join(path);
        if let Some(parent) = full.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create {}", parent.display()))?;
        }
        std::fs::write(&full, text).with_context(|| format!("cannot write {}", full.display()))?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

/// Cargo's rule for package names, narrowed to what also names a library.
fn is_crate_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The SDK files of `lang`, by their path in the repository.
fn sdk_files(lang: Lang) -> Vec<(PathBuf, &'static str)> {
    let own = match lang {
        Lang::Rust => sdk::RUST,
        Lang::Python => sdk::PYTHON,
        Lang::Js => sdk::JS,
    };
    let mut files: Vec<(PathBuf, &str)> = sdk::WIT
        .iter()
        .chain(own)
        .map(|(p, t)| (PathBuf::from(p), *t))
        .collect();
    if lang == Lang::Rust {
        files.push(("plugins/sdk/Cargo.toml".into(), RUST_SDK_MANIFEST));
    }
    files
}

/// The vendored Rust SDK's manifest: the repository's, without the
/// workspace it inherits from.
const RUST_SDK_MANIFEST: &str = r#"[package]
name = "eventflow-sdk"
version = "0.1.0"
description = "Bindings for writing Eventflow algorithms in Rust (vendored by `eventflow new`)"
edition = "2024"
license = "Apache-2.0"
publish = false

[dependencies]
wit-bindgen = "0.63"
"#;

/// The project's own files: the algorithm, its manifest, the test input.
fn project_files(id: &AlgorithmId, lang: Lang) -> Vec<(PathBuf, String)> {
    let fill = |template: &str| {
        template
            .replace("{{owner}}", &id.owner)
            .replace("{{name}}", &id.name)
    };
    let input = format!(
        "{{\"filename\": \"hello.txt\", \"data\": \"hello from {}/{}\"}}\n",
        id.owner, id.name
    );
    let mut files = vec![
        (PathBuf::from(TEST_INPUT), input),
        (PathBuf::from(".gitignore"), "/target\n/dist\n".to_string()),
    ];
    match lang {
        Lang::Rust => {
            files.push(("Cargo.toml".into(), cargo_manifest(id)));
            files.push(("src/lib.rs".into(), fill(include_str!("templates/lib.rs"))));
            files.push(("Cargo.lock".into(), sdk::CARGO_LOCK.to_string()));
        }
        Lang::Python => {
            files.push(("algorithm.toml".into(), manifest(id)));
            files.push(("app.py".into(), fill(include_str!("templates/app.py"))));
        }
        Lang::Js => {
            files.push(("algorithm.toml".into(), manifest(id)));
            files.push(("app.js".into(), fill(include_str!("templates/app.js"))));
        }
    }
    files
}

fn manifest(id: &AlgorithmId) -> String {
    format!(
        "# Built by `eventflow build` into dist/<owner>/<name>/<version>.wasm.\n\
         owner = \"{}\"\nname = \"{}\"\nversion = \"{}\"\n",
        id.owner, id.name, id.version
    )
}

fn cargo_manifest(id: &AlgorithmId) -> String {
    format!(
        r#"[package]
name = "{name}"
version = "{version}"
edition = "2024"
publish = false

# `eventflow build` installs the component as dist/<owner>/<name>/<version>.wasm.
[package.metadata.eventflow]
owner = "{owner}"

[lib]
crate-type = ["cdylib"]

[dependencies]
eventflow-sdk = {{ path = "{SDK_DIR}/plugins/sdk" }}
serde_json = "1"

# A workspace of its own, even inside another one.
[workspace]

[profile.release]
opt-level = "s"
lto = true
codegen-units = 1
strip = true
"#,
        name = id.name,
        version = id.version,
        owner = id.owner,
    )
}
