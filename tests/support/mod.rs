//! The end-to-end test harness: starts the real `eventflow` binary on a
//! configuration of the test's own, in a temporary directory, with the real
//! compiled algorithms, and talks to it through its CLI and admin API.
//!
//! The algorithms come from `EVENTFLOW_TEST_PLUGINS`, which `cargo xtask
//! test` builds and sets. Every server runs on 127.0.0.1 with a free port.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod helpers;
// Each test file uses some of these; the rest would warn in it.
#[allow(unused_imports)]
pub use helpers::{
    EMBEDDED_BROKER, assert_slow_key_held_back_only_itself, header, install_in, named_flow,
    one_flow, slow_key_first,
};

/// The installed test algorithms (`<owner>/<name>/<version>.wasm`).
pub fn test_plugins() -> PathBuf {
    match std::env::var_os("EVENTFLOW_TEST_PLUGINS") {
        Some(p) => PathBuf::from(p),
        None => panic!(
            "EVENTFLOW_TEST_PLUGINS is not set: run the tests with `cargo xtask test`, \
             which builds the test algorithms first"
        ),
    }
}

/// The compiled component of one test algorithm.
pub fn plugin_file(owner: &str, name: &str) -> PathBuf {
    test_plugins().join(owner).join(name).join("0.1.0.wasm")
}

/// The compiled component of a Python or JavaScript test algorithm, which
/// `cargo xtask test` builds into `EVENTFLOW_TEST_GUEST_PLUGINS` (apart from
/// the Rust ones, so that only the routers that use them compile them).
pub fn guest_plugin_file(owner: &str, name: &str) -> PathBuf {
    let dir = std::env::var_os("EVENTFLOW_TEST_GUEST_PLUGINS")
        .map(PathBuf::from)
        .expect("EVENTFLOW_TEST_GUEST_PLUGINS is not set: run the tests with `cargo xtask test`");
    let file = dir.join(owner).join(name).join("0.1.0.wasm");
    assert!(
        file.exists(),
        "{} is missing: `cargo xtask test` builds it when componentize-py and componentize-js \
         are available, and says above why it did not",
        file.display()
    );
    file
}

/// Polls `check` every 50 ms until it returns `Some`, or panics with `what`
/// after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A router under test, with its own directory.
pub struct Router {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    child: Option<Child>,
    log: PathBuf,
    starts: u32,
    env: Vec<(String, String)>,
}

/// Where the test algorithms come from.
pub enum Plugins {
    /// The shared, read-only test plugin directory.
    Shared,
    /// A private copy of these `(owner, name)` algorithms, which the test may
    /// change (hot reload).
    Copy(&'static [(&'static str, &'static str)]),
    /// A private directory of these Python and JavaScript `(owner, name)`
    /// algorithms (see [`guest_plugin_file`]).
    Guest(&'static [(&'static str, &'static str)]),
}

impl Router {
    /// Writes the configuration (the test's `body` after a `[router]` and
    /// `[admin]` section of the harness) and starts the router.
    pub fn start(body: &str) -> Self {
        Self::start_with(body, Plugins::Shared)
    }

    /// Like [`Router::start`], choosing the plugin directory.
    pub fn start_with(body: &str, plugins: Plugins) -> Self {
        let guest = matches!(plugins, Plugins::Guest(_));
        let mut r = Self::configure(body, plugins);
        if guest {
            r.share_compiled_code(false);
        }
        r.launch();
        if guest {
            r.share_compiled_code(true);
        }
        r
    }

    /// Python and JavaScript components take a minute each to compile in a
    /// debug build, so their compiled code is kept beside the test plugins
    /// (`test-compiled-guest`) across routers and runs: copied into the
    /// state directory before a start (`keep = false`) and back after it
    /// (`keep = true`). The router checks each entry's engine hash (it is in
    /// the file name) and recompiles what does not match.
    fn share_compiled_code(&self, keep: bool) {
        let guests = PathBuf::from(std::env::var_os("EVENTFLOW_TEST_GUEST_PLUGINS").unwrap());
        let shared = guests.with_file_name("test-compiled-guest");
        let ours = self.state_dir().join("compiled");
        let (from, to) = if keep {
            (&ours, &shared)
        } else {
            (&shared, &ours)
        };
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).into_iter().flatten().flatten() {
            let name = entry.file_name();
            let dest = to.join(&name);
            if !name.to_string_lossy().ends_with(".cwasm") || dest.exists() {
                continue;
            }
            // Two tests may keep the same entry at once: copy, then rename.
            let tmp = to.join(format!(
                ".{}.{}",
                name.to_string_lossy(),
                std::process::id()
            ));
            if std::fs::copy(entry.path(), &tmp).is_ok() {
                let _ = std::fs::rename(&tmp, &dest);
            }
        }
    }

    /// Writes the configuration without starting the router.
    pub fn configure(body: &str, plugins: Plugins) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("eventflow-test-")
            .tempdir()
            .expect("temp dir");
        let (list, source): (_, fn(&str, &str) -> PathBuf) = match plugins {
            Plugins::Shared => (None, plugin_file),
            Plugins::Copy(list) => (Some(list), plugin_file),
            Plugins::Guest(list) => (Some(list), guest_plugin_file),
        };
        let plugins_dir = match list {
            None => test_plugins(),
            Some(list) => {
                let p = dir.path().join("plugins");
                for (owner, name) in list {
                    let to = p.join(owner).join(name);
                    std::fs::create_dir_all(&to).unwrap();
                    std::fs::copy(source(owner, name), to.join("0.1.0.wasm")).unwrap();
                }
                p
            }
        };
        let config = dir.path().join("eventflow.toml");
        let r = Self {
            config,
            child: None,
            log: dir.path().join("router.log"),
            starts: 0,
            env: Vec::new(),
            dir,
        };
        r.write_config(body, &plugins_dir);
        r
    }

    fn write_config(&self, body: &str, plugins_dir: &Path) {
        let text = format!(
            "[router]\nplugins_dir = {:?}\ndata_dir = \"data\"\nstate_dir = \"state\"\nshutdown_grace_secs = 20\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n{body}",
            plugins_dir.display().to_string()
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Sets an environment variable for the router process (from the next
    /// launch on): credentials, say.
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_string(), value.to_string()));
    }

    /// Replaces the test's part of the configuration (for the next start).
    pub fn rewrite(&self, body: &str) {
        self.write_config(body, &self.plugins_dir());
    }

    /// The plugin directory in use.
    pub fn plugins_dir(&self) -> PathBuf {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let line = text.lines().find(|l| l.starts_with("plugins_dir")).unwrap();
        let quoted = line.split_once('=').unwrap().1.trim();
        PathBuf::from(serde_json::from_str::<String>(quoted).unwrap())
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    /// Starts (or restarts) the process and waits until its admin API
    /// answers and no algorithm is compiling any more, so that a test's
    /// messages find their flows running (a router loads its plugins in the
    /// background; [`Router::launch_without_waiting`] does not wait for it).
    pub fn launch(&mut self) {
        self.launch_without_waiting();
        // Generous: a Python or JavaScript component takes a minute to
        // compile in a debug build.
        let deadline = Instant::now() + Duration::from_secs(300);
        if !self.state_dir().join("admin.token").exists() {
            return;
        }
        loop {
            let (status, body) = self.http("GET", "/v1/plugins", None);
            let compiling = body["plugins"]
                .as_array()
                .is_some_and(|l| l.iter().any(|p| p["status"] == "compiling"));
            if status != 200 || !compiling {
                return;
            }
            self.exited_or_late(deadline, "load its plugins");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts (or restarts) the process and waits until its admin API
    /// answers, not for its plugins to load.
    pub fn launch_without_waiting(&mut self) {
        assert!(self.child.is_none(), "the router is already running");
        let _ = std::fs::remove_file(self.state_dir().join("admin.addr"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        self.starts += 1;
        use std::io::Write;
        let mut l = log.try_clone().unwrap();
        let _ = writeln!(l, "===== start {} =====", self.starts);
        let child = Command::new(env!("CARGO_BIN_EXE_eventflow"))
            .args(["run", "--config"])
            .arg(&self.config)
            .env("RUST_LOG", "info,eventflow=debug")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("cannot start eventflow");
        self.child = Some(child);
        let addr = self.state_dir().join("admin.addr");
        let deadline = Instant::now() + Duration::from_secs(300);
        while !addr.exists() {
            self.exited_or_late(deadline, "start");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Panics if the router exited or `deadline` passed while waiting for
    /// it to do `what`.
    fn exited_or_late(&mut self, deadline: Instant, what: &str) {
        if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
            panic!("the router exited at start ({status}):\n{}", self.log());
        }
        if Instant::now() > deadline {
            panic!("the router did not {what} within 300 s:\n{}", self.log());
        }
    }

    /// The router's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the router is not running").id()
    }

    /// The router's resident memory, in KiB (Linux).
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }

    /// Messages of an embedded topic, without consuming them (the first
    /// 1,000: the most one peek returns).
    /// Every message of a topic (up to the API's paging bound), a page of
    /// 1,000 at a time.
    pub fn peek(&self, broker: &str, topic: &str) -> Vec<Value> {
        let mut all = Vec::new();
        loop {
            let (status, body) = self.http(
                "GET",
                &format!(
                    "/v1/brokers/{broker}/topics/{topic}/messages?limit=1000&offset={}",
                    all.len()
                ),
                None,
            );
            assert_eq!(status, 200, "{body}");
            let page = body["messages"].as_array().unwrap().clone();
            let full = page.len() == 1000;
            all.extend(page);
            if !full {
                return all;
            }
        }
    }

    /// Whether the process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// `kill -9`: no chance to finish anything.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, then waits for the process to exit.
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the router is not running");
        let pid = child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!(
                    "the router did not stop within 60 s of SIGTERM:\n{}",
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Everything the router logged, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `eventflow ARGS --config <this router's config>`.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(env!("CARGO_BIN_EXE_eventflow"))
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("cannot run eventflow")
    }

    /// Runs the CLI and returns its stdout, panicking with stderr on failure.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "eventflow {args:?} failed: {}\n--- router log ---\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Calls the admin API: `method` `path` with an optional JSON body.
    pub fn http(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = format!("{}{path}", self.admin_url());
        http(method, &url, Some(&self.admin_token()), body)
    }

    /// Publishes messages (payloads) to a topic through the admin API.
    pub fn publish(&self, topic: &str, payloads: &[String]) {
        for chunk in payloads.chunks(500) {
            let messages: Vec<Value> = chunk.iter().map(|p| json!({ "payload": p })).collect();
            let (status, body) = self.http(
                "POST",
                "/v1/messages",
                Some(json!({ "topic": topic, "messages": messages })),
            );
            assert_eq!(status, 200, "publish failed: {body}");
        }
    }

    /// Whether the router answers its admin API.
    pub fn is_running_check(&self) -> bool {
        self.http("GET", "/v1/flows", None).0 == 200
    }

    /// The status report of one flow.
    pub fn flow(&self, name: &str) -> Value {
        self.listed("/v1/flows", "flows", "name", name)
    }

    /// The entry of `array` in the answer to `GET path` whose `field` is
    /// `value`; panics if the answer is not 200 or has no such entry.
    pub fn listed(&self, path: &str, array: &str, field: &str, value: &str) -> Value {
        let (status, body) = self.http("GET", path, None);
        assert_eq!(status, 200, "{body}");
        body[array]
            .as_array()
            .unwrap()
            .iter()
            .find(|entry| entry[field] == value)
            .cloned()
            .unwrap_or_else(|| panic!("no {field} {value} in {array} of {body}"))
    }

    /// The dead-letter envelopes of a flow.
    pub fn dead_letters(&self, flow: &str) -> Vec<Value> {
        let (status, body) = self.http(
            "GET",
            &format!("/v1/flows/{flow}/dead-letters?limit=100000"),
            None,
        );
        assert_eq!(status, 200, "{body}");
        body["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["envelope"].clone())
            .collect()
    }

    /// The original message ids of a flow's dead letters.
    pub fn peek_dead_letter_ids(&self, flow: &str) -> Vec<String> {
        self.dead_letters(flow)
            .iter()
            .map(|e| e["source"]["message_id"].as_str().unwrap().to_string())
            .collect()
    }

    /// The Prometheus text of the router.
    pub fn metrics(&self) -> String {
        http_text(&format!("{}/metrics", self.admin_url()))
    }

    /// A file of a data collection, if it exists.
    pub fn data_file(&self, path: &str) -> Option<Vec<u8>> {
        std::fs::read(self.data_dir().join(path)).ok()
    }

    /// Names of the files in a directory of the data directory.
    pub fn data_files(&self, dir: &str) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.data_dir().join(dir))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with(".eventflow-tmp-"))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(200).collect();
            eprintln!("--- last lines of the router log ---");
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// A tiny blocking HTTP/1.1 client, so tests need no async runtime.
pub fn http(method: &str, url: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
    let (status, text) = http_raw(method, url, token, body.map(|b| b.to_string()));
    let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, value)
}

fn http_text(url: &str) -> String {
    http_raw("GET", url, None, None).1
}

/// Sends one request and returns the status and body.
pub fn http_raw(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<String>,
) -> (u16, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut stream = std::net::TcpStream::connect(host).expect("connect to the admin API");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let body = body.unwrap_or_default();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let chunked = head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, body)
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n.min(rest.len())]);
        s = rest.get(n + 2..).unwrap_or("");
    }
    out
}

/// A component's `bytes` with a custom section appended: the same behaviour
/// under another file hash (a new version to the registry and the cache).
pub fn variant(bytes: &[u8], tag: &str) -> Vec<u8> {
    use wasm_encoder::Section;
    let mut out = bytes.to_vec();
    wasm_encoder::CustomSection {
        name: "eventflow-test-variant".into(),
        data: tag.as_bytes().into(),
    }
    .append_to(&mut out);
    out
}
