//! `eventflow build`: builds a project into a component with its language's
//! tool and installs it as `dist/<owner>/<name>/<version>.wasm`.
//!
//! The tools are found where `cargo xtask` installs them (componentize-py
//! in the project virtualenv, `$EVENTFLOW_VENV` or `~/.cache/eventflow-venv`;
//! componentize-js under `$EVENTFLOW_NPM` or `~/.cache/eventflow-npm`), else
//! on `PATH`; a missing one is named with the command that installs it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use super::new::SDK_DIR;
use super::{Lang, Project};

/// Builds the project in `dir`; returns it and where its component went.
pub fn build(dir: &Path) -> anyhow::Result<(Project, PathBuf)> {
    let project = Project::open(dir)?;
    let dest = project.component_path();
    let parent = dest.parent().context("the component path has no parent")?;
    std::fs::create_dir_all(parent)
        .with_context(|| format!("cannot create {}", parent.display()))?;
    let tmp = parent.join(format!(".{}.wasm.tmp", project.id.version));
    match project.lang {
        Lang::Rust => {
            let built = cargo_build(&project.dir)?;
            std::fs::copy(&built, &tmp)
                .with_context(|| format!("cannot copy {}", built.display()))?;
        }
        Lang::Python => run(
            componentize_py(&project.dir, &tmp, project.outbound_http)?,
            "componentize-py",
        )?,
        Lang::Js => run(
            componentize_js(&project.dir, &tmp, project.outbound_http)?,
            "componentize-js",
        )?,
    }
    std::fs::rename(&tmp, &dest).with_context(|| format!("cannot write {}", dest.display()))?;
    Ok((project, dest))
}

fn run(mut cmd: Command, what: &str) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {what} ({cmd:?})"))?;
    if !status.success() {
        bail!("{what} failed ({status}); its output is above");
    }
    Ok(())
}

/// `cargo build --release --target wasm32-wasip2`; returns the `.wasm` cargo
/// reports (wherever `CARGO_TARGET_DIR` puts it).
fn cargo_build(dir: &Path) -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--message-format=json-render-diagnostics",
            "--manifest-path",
        ])
        .arg(dir.join("Cargo.toml"))
        .stderr(Stdio::inherit())
        .output()
        .context("cannot run cargo (install Rust with rustup: https://rustup.rs)")?;
    if !out.status.success() {
        bail!(
            "cargo build failed ({}); if the wasm32-wasip2 target is missing, \
             `rustup target add wasm32-wasip2` installs it",
            out.status
        );
    }
    let mut wasm = None;
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let cdylib = msg["target"]["kind"]
            .as_array()
            .is_some_and(|k| k.iter().any(|k| k == "cdylib"));
        if msg["reason"] != "compiler-artifact" || !cdylib {
            continue;
        }
        let files = msg["filenames"].as_array().into_iter().flatten();
        if let Some(f) = files
            .filter_map(|f| f.as_str())
            .find(|f| f.ends_with(".wasm"))
        {
            wasm = Some(PathBuf::from(f));
        }
    }
    wasm.context("cargo built no .wasm (is the crate-type \"cdylib\"?)")
}

/// The virtualenv `cargo xtask` installs componentize-py into.
fn venv() -> Option<PathBuf> {
    std::env::var_os("EVENTFLOW_VENV")
        .map(PathBuf::from)
        .or_else(|| home_cache().map(|c| c.join("eventflow-venv")))
}

/// The directory `cargo xtask` installs componentize-js into.
fn npm_dir() -> Option<PathBuf> {
    std::env::var_os("EVENTFLOW_NPM")
        .map(PathBuf::from)
        .or_else(|| home_cache().map(|c| c.join("eventflow-npm")))
}

fn home_cache() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache"))
}

/// `name` in a directory of `PATH`.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// componentize-py for the algorithm world, or with `outbound_http` for the
/// world that adds `wasi:http` (plugins/python/wit-http).
fn componentize_py(dir: &Path, out: &Path, outbound_http: bool) -> anyhow::Result<Command> {
    let sdk = dir.join(SDK_DIR);
    let tool = venv()
        .map(|v| v.join("bin/componentize-py"))
        .filter(|p| p.is_file())
        .or_else(|| on_path("componentize-py"));
    let Some(tool) = tool else {
        let venv = venv().unwrap_or_else(|| "VENV".into());
        bail!(
            "componentize-py is not installed (looked in {venv} and on PATH); install the \
             pinned version with `python3 -m venv {venv} && {venv}/bin/pip install -r {req}`",
            venv = venv.display(),
            req = sdk.join("plugins/python/build-requirements.txt").display()
        );
    };
    let mut cmd = Command::new(tool);
    cmd.arg("-d").arg(sdk.join("wit"));
    if outbound_http {
        cmd.arg("-d")
            .arg(sdk.join("plugins/python/wit-http"))
            .args(["-w", "eventflow:algorithm-http/algorithm-http@0.1.0"]);
    } else {
        cmd.args(["-w", "batch-algorithm"]);
    }
    cmd.args(["componentize", "eventflow.main", "-p"])
        .arg(sdk.join("plugins/python"))
        .arg("-p")
        .arg(dir)
        .arg("-o")
        .arg(out);
    Ok(cmd)
}

/// build.mjs, with `--http` (componentize-js's `fetch`) for `outbound_http`.
fn componentize_js(dir: &Path, out: &Path, outbound_http: bool) -> anyhow::Result<Command> {
    let sdk = dir.join(SDK_DIR).join("plugins/js");
    let npm = npm_dir().unwrap_or_else(|| "NPM_DIR".into());
    let how = format!(
        "install Node.js 20 or later with npm, then the pinned componentize-js with \
         `mkdir -p {npm} && cp {sdk}/package.json {sdk}/package-lock.json {npm}/ && \
         npm ci --prefix {npm}` (or set EVENTFLOW_NPM to where it is installed)",
        npm = npm.display(),
        sdk = sdk.display()
    );
    if on_path("node").is_none() {
        bail!("node is not on PATH; {how}");
    }
    if !npm
        .join("node_modules/@bytecodealliance/componentize-js")
        .is_dir()
    {
        bail!(
            "componentize-js is not installed in {}; {how}",
            npm.display()
        );
    }
    let mut cmd = Command::new("node");
    cmd.arg(sdk.join("build.mjs"))
        .arg(dir)
        .arg(out)
        .env("EVENTFLOW_NPM", &npm);
    if outbound_http {
        cmd.arg("--http");
    }
    Ok(cmd)
}
