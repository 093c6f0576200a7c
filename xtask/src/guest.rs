//! Algorithms written in Python and JavaScript: a directory under plugins/
//! with an `algorithm.toml` (owner, name, version, `test_only`) and either
//! `app.py` (built with componentize-py over plugins/python) or `app.js`
//! (bundled with plugins/js and built with componentize-js).
//!
//! The tools are installed under ~/.cache at the versions the repository pins
//! (plugins/python/build-requirements.txt, plugins/js/package.json), never
//! globally. Each component is cached under ~/.cache/eventflow-components by a
//! hash of everything it is built from, so a repeat run (or CI on a clean
//! clone that keeps ~/.cache) only copies files. Where a tool is missing or
//! cannot be installed, its algorithms are skipped with a message that says
//! how to install it; the caller still builds the Rust ones.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::{cache_dir, root, run};

/// `algorithm.toml`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    owner: String,
    name: String,
    version: String,
    /// Installed only for the tests.
    #[serde(default)]
    test_only: bool,
    /// Calls out over HTTP: built for the world that imports `wasi:http`
    /// (Python: plugins/python/wit-http; JavaScript: componentize-js's
    /// defaults, with `fetch`).
    #[serde(default)]
    outbound_http: bool,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Lang {
    Python,
    Js,
}

impl Lang {
    fn of(dir: &Path) -> Option<Self> {
        if dir.join("app.py").exists() {
            Some(Lang::Python)
        } else if dir.join("app.js").exists() {
            Some(Lang::Js)
        } else {
            None
        }
    }

    /// The files besides the algorithm's own that its component is built
    /// from: the SDK, the pins, the contract, and for a Python algorithm
    /// that calls out (`outbound_http`) the world it is built for.
    fn inputs(self, outbound_http: bool) -> Vec<PathBuf> {
        let root = root();
        let mut files = vec![
            root.join("wit/algorithm.wit"),
            root.join("wit/deps/algorithm-0.1.0/algorithm.wit"),
        ];
        match self {
            Lang::Python => {
                files.push(root.join("plugins/python/build-requirements.txt"));
                if outbound_http {
                    files.push(root.join("plugins/python/wit-http/world.wit"));
                    for deps in subdirs(&root.join("plugins/python/wit-http/deps")) {
                        files.extend(files_in(&deps));
                    }
                }
                files.extend(files_in(&root.join("plugins/python/eventflow")));
            }
            Lang::Js => {
                for f in ["package.json", "eventflow.js", "build.mjs"] {
                    files.push(root.join("plugins/js").join(f));
                }
                files.extend(files_in(&root.join("plugins/js/wit")));
            }
        }
        files
    }
}

/// One algorithm to build.
struct Guest {
    dir: PathBuf,
    lang: Lang,
    manifest: Manifest,
}

/// The Python and JavaScript algorithms under plugins/.
fn find(with_test_algorithms: bool) -> anyhow::Result<Vec<Guest>> {
    let mut found = Vec::new();
    for dir in subdirs(&root().join("plugins")) {
        let manifest_path = dir.join("algorithm.toml");
        let Some(lang) = Lang::of(&dir).filter(|_| manifest_path.exists()) else {
            continue;
        };
        let text = std::fs::read_to_string(&manifest_path)?;
        let manifest: Manifest = toml::from_str(&text)
            .with_context(|| format!("cannot parse {}", manifest_path.display()))?;
        if manifest.test_only && !with_test_algorithms {
            continue;
        }
        found.push(Guest {
            dir,
            lang,
            manifest,
        });
    }
    Ok(found)
}

/// Builds (or takes from the cache) every Python and JavaScript algorithm and
/// installs it as `<out>/<owner>/<name>/<version>.wasm`. Returns how many were
/// installed; those whose tool is unavailable are reported and skipped.
pub fn build(out: &Path, with_test_algorithms: bool) -> anyhow::Result<usize> {
    let guests = find(with_test_algorithms)?;
    let cache = cache_dir().join("eventflow-components");
    std::fs::create_dir_all(&cache)?;
    let mut tools: [Option<Result<(), String>>; 2] = [None, None];
    let mut count = 0;
    for g in &guests {
        let key = cache_key(g)?;
        let cached = cache.join(format!("{}-{key:016x}.wasm", g.manifest.name));
        if !cached.exists() {
            let tool = &mut tools[g.lang as usize];
            if tool.is_none() {
                *tool = Some(ensure_tool(g.lang).map_err(|e| format!("{e:#}")));
            }
            if let Some(Err(why)) = tool {
                println!(
                    "xtask: skipping {}/{} ({:?}): {why}",
                    g.manifest.owner, g.manifest.name, g.lang
                );
                continue;
            }
            println!(
                "xtask: building {}/{} from {} (the first build takes a minute)",
                g.manifest.owner,
                g.manifest.name,
                g.dir.strip_prefix(root()).unwrap_or(&g.dir).display()
            );
            let tmp = cached.with_extension("wasm.tmp");
            compile(g, &tmp)?;
            std::fs::rename(&tmp, &cached)?;
        }
        install(&cached, out, &g.manifest)?;
        count += 1;
    }
    Ok(count)
}

fn install(wasm: &Path, out: &Path, m: &Manifest) -> anyhow::Result<()> {
    let dir = out.join(&m.owner).join(&m.name);
    std::fs::create_dir_all(&dir)?;
    let tmp = dir.join(format!(".{}.wasm.tmp", m.version));
    std::fs::copy(wasm, &tmp).with_context(|| format!("cannot copy {}", wasm.display()))?;
    std::fs::rename(&tmp, dir.join(format!("{}.wasm", m.version)))?;
    Ok(())
}

fn compile(g: &Guest, dest: &Path) -> anyhow::Result<()> {
    let root = root();
    match g.lang {
        Lang::Python => {
            let mut command = Command::new(venv().join("bin/componentize-py"));
            command.arg("-d").arg(root.join("wit"));
            if g.manifest.outbound_http {
                command
                    .arg("-d")
                    .arg(root.join("plugins/python/wit-http"))
                    .args(["-w", "eventflow:algorithm-http/algorithm-http@0.1.0"]);
            } else {
                command.args(["-w", "batch-algorithm"]);
            }
            run(command
                .args(["componentize", "eventflow.main", "-p"])
                .arg(root.join("plugins/python"))
                .arg("-p")
                .arg(&g.dir)
                .arg("-o")
                .arg(dest))
        }
        Lang::Js => {
            let mut command = Command::new("node");
            command
                .arg(root.join("plugins/js/build.mjs"))
                .arg(&g.dir)
                .arg(dest)
                .env("EVENTFLOW_NPM", npm_dir());
            if g.manifest.outbound_http {
                command.arg("--http");
            }
            run(&mut command)
        }
    }
}

/// The project's virtualenv, shared with the test servers.
pub fn venv() -> PathBuf {
    cache_dir().join("eventflow-venv")
}

fn npm_dir() -> PathBuf {
    cache_dir().join("eventflow-npm")
}

/// Installs the pinned tool for `lang` if it is not there yet.
fn ensure_tool(lang: Lang) -> anyhow::Result<()> {
    match lang {
        Lang::Python => ensure_componentize_py(),
        Lang::Js => ensure_componentize_js(),
    }
}

fn ensure_componentize_py() -> anyhow::Result<()> {
    let requirements = root().join("plugins/python/build-requirements.txt");
    let how = format!(
        "to build Python algorithms, install componentize-py with \
         `python3 -m venv {venv} && {venv}/bin/pip install -r {req}`",
        venv = venv().display(),
        req = requirements.display()
    );
    install_requirements(&requirements, "componentize-py").with_context(|| {
        format!("componentize-py is missing and could not be installed (offline?); {how}")
    })?;
    Ok(())
}

/// Installs `requirements` (a pip requirements file of the project) into the
/// project's virtualenv, creating it first, unless the same file was
/// installed last time. Returns the virtualenv's python.
pub fn install_requirements(requirements: &Path, what: &str) -> anyhow::Result<PathBuf> {
    let python = venv().join("bin/python");
    if !python.exists() {
        println!("xtask: creating a virtualenv at {}", venv().display());
        run(Command::new("python3").args(["-m", "venv"]).arg(venv()))?;
    }
    let wanted = std::fs::read_to_string(requirements)
        .with_context(|| format!("cannot read {}", requirements.display()))?;
    let name = requirements
        .file_name()
        .unwrap_or_default()
        .to_string_lossy();
    let stamp = venv().join(format!(".eventflow-{name}"));
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(python);
    }
    println!("xtask: installing {what} from {}", requirements.display());
    run(Command::new(&python)
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
        ])
        .arg(requirements))?;
    std::fs::write(&stamp, &wanted)?;
    Ok(python)
}

fn ensure_componentize_js() -> anyhow::Result<()> {
    let package = root().join("plugins/js/package.json");
    let lock = root().join("plugins/js/package-lock.json");
    let dir = npm_dir();
    let how = format!(
        "to build JavaScript algorithms, install Node.js 20 or later with npm, then \
         `mkdir -p {dir} && cp {package} {lock} {dir}/ && npm ci --prefix {dir}`",
        dir = dir.display(),
        package = package.display(),
        lock = lock.display()
    );
    let manifest = std::fs::read_to_string(&package)?;
    let locked = std::fs::read_to_string(&lock)?;
    // Both files pin: package.json the tools, package-lock.json everything
    // they pull in.
    let wanted = format!("{manifest}\n{locked}");
    let stamp = dir.join(".eventflow-package.json");
    if std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        return Ok(());
    }
    let node = Command::new("node").arg("--version").output();
    let major = node.ok().filter(|o| o.status.success()).and_then(|o| {
        let v = String::from_utf8_lossy(&o.stdout).trim().to_string();
        v.trim_start_matches('v')
            .split('.')
            .next()?
            .parse::<u32>()
            .ok()
    });
    match major {
        Some(m) if m >= 20 => {}
        Some(m) => bail!("Node.js {m} is too old (componentize-js needs 20 or later); {how}"),
        None => bail!("node is not installed; {how}"),
    }
    println!("xtask: installing componentize-js from plugins/js/package-lock.json");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("package.json"), &manifest)?;
    std::fs::write(dir.join("package-lock.json"), &locked)?;
    run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir))
    .with_context(|| {
        format!("componentize-js is missing and could not be installed (offline?); {how}")
    })?;
    std::fs::write(&stamp, &wanted)?;
    Ok(())
}

/// A hash of everything the component is built from: the language's inputs
/// and the algorithm's own files.
fn cache_key(g: &Guest) -> anyhow::Result<u64> {
    let mut files = g.lang.inputs(g.manifest.outbound_http);
    files.extend(files_in(&g.dir));
    let mut hash = Fnv::default();
    hash.write(format!("{:?}", g.lang).as_bytes());
    for f in files {
        let bytes = std::fs::read(&f).with_context(|| format!("cannot read {}", f.display()))?;
        hash.write(f.file_name().unwrap_or_default().as_encoded_bytes());
        hash.write(&(bytes.len() as u64).to_le_bytes());
        hash.write(&bytes);
    }
    Ok(hash.0)
}

/// The files directly in `dir`, sorted (caches and hidden files aside).
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .filter(|p| {
            !p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .starts_with('.')
        })
        .collect();
    files.sort();
    files
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// FNV-1a, 64-bit: stable across Rust versions, unlike `DefaultHasher`.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}
