//! The router's files, end to end with the real binary: secrets encrypted
//! at rest and a private state directory, damaged store files refused with
//! one line naming them (or moved aside when asked), an embedded broker that
//! recovers by itself from a full disk, and a compiled-code cache that keeps
//! only what loaded versions use.

#[path = "support/damage.rs"]
mod damage;
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use damage::{DAMAGES, damage};
use serde_json::json;
use support::{Plugins, Router, variant, wait_for};

/// An embedded broker with a topic nobody consumes: what is published stays.
const QUEUED: &str = r#"
[[brokers]]
name = "local"
kind = "embedded"

[[topics]]
name = "parked"
"#;

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn secrets_are_encrypted_at_rest_and_the_state_directory_is_private() {
    let mut router = Router::start(QUEUED);
    let value = "correct-horse-battery-staple-4711";
    let (status, body) = router.http(
        "PUT",
        "/v1/algorithms/ezra/store_file/secrets/API_KEY",
        Some(json!({ "value": value })),
    );
    assert!(status < 300, "{status} {body}");
    router.publish("parked", &["hello".to_string()]);
    let state = router.state_dir();
    // While running: the directory and every file in it are private.
    assert_eq!(mode(&state), 0o700);
    for entry in walk(&state) {
        let expected = if entry.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&entry), expected, "{}", entry.display());
    }
    assert!(state.join("secret.key").exists());
    router.stop();
    let bytes = std::fs::read(state.join("state.redb")).unwrap();
    assert!(
        !contains(&bytes, value.as_bytes()),
        "the secret is in state.redb in plaintext"
    );
    // The value is still there for the algorithm after a restart.
    router.launch();
    let (status, body) = router.http("GET", "/v1/algorithms/ezra/store_file/secrets", None);
    assert_eq!(status, 200, "{body}");
    assert!(body.to_string().contains("API_KEY"), "{body}");
    router.stop();
    // With another key, the state does not start (and says which key).
    let key = state.join("secret.key");
    let good = std::fs::read(&key).unwrap();
    std::fs::write(&key, [9u8; 32]).unwrap();
    let (failed, output) = run_once(&router.config, &state, &[]);
    assert!(failed, "started with the wrong key:\n{output}");
    assert!(
        output.contains("do not match the key") && output.contains("secret.key"),
        "{output}"
    );
    std::fs::write(&key, good).unwrap();
    // With the key kept elsewhere (EVENTFLOW_SECRET_KEY_FILE), it starts
    // and creates no key in the state directory.
    std::fs::rename(
        state.join("secret.key"),
        router.dir.path().join("elsewhere.key"),
    )
    .unwrap();
    router.set_env(
        "EVENTFLOW_SECRET_KEY_FILE",
        &router
            .dir
            .path()
            .join("elsewhere.key")
            .display()
            .to_string(),
    );
    router.launch();
    assert!(!state.join("secret.key").exists());
    router.stop();
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

/// Runs `eventflow run` on `state` until it exits or has clearly started
/// (60 s). Returns (exited unsuccessfully, everything it wrote).
fn run_once(config: &Path, state: &Path, extra: &[&str]) -> (bool, String) {
    // A stopped router leaves its address file behind; only a new one says
    // this start got as far as serving.
    let _ = std::fs::remove_file(state.join("admin.addr"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_eventflow"))
        .args(["run", "--config"])
        .arg(config)
        .arg("--state")
        .arg(state)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let failed = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break !status.success();
        }
        if Instant::now() > deadline || state.join("admin.addr").exists() {
            let _ = child.kill();
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_file(state.join("admin.addr"));
    (failed, text)
}

/// A stopped router's state with API-made changes and queued messages.
fn populated_state() -> Router {
    let mut router = Router::start(QUEUED);
    let (status, body) = router.http("POST", "/v1/tokens", Some(json!({ "owner": "ezra" })));
    assert!(status < 300, "{status} {body}");
    let (status, body) = router.http(
        "PUT",
        "/v1/brokers/local/topics/made-by-api",
        Some(json!({ "consumers": ["ezra/store_file"] })),
    );
    assert!(status < 300, "{status} {body}");
    let payloads: Vec<String> = (0..QUEUED_MESSAGES)
        .map(|i| format!("message {i} {}", "x".repeat(200)))
        .collect();
    router.publish("parked", &payloads);
    router.stop();
    router
}

/// Messages [`populated_state`] leaves on `parked`.
const QUEUED_MESSAGES: usize = 1000;

/// What is missing of [`populated_state`]'s content in the running
/// `router`: the API-made token and topic (state.redb) and the queued
/// messages (the broker file). Empty when all is there.
fn missing_content(router: &Router) -> Vec<String> {
    let mut missing = Vec::new();
    let (_, tokens) = router.http("GET", "/v1/tokens", None);
    let owners = tokens.to_string();
    if !owners.contains("\"ezra\"") {
        missing.push(format!("the token of owner ezra: {tokens}"));
    }
    let (_, topics) = router.http("GET", "/v1/brokers/local/topics", None);
    let declared = topics["topics"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|t| t["name"] == "made-by-api" && t["declared"] == true);
    if !declared {
        missing.push(format!("the topic made-by-api: {topics}"));
    }
    let queued = router.peek("local", "parked").len();
    if queued != QUEUED_MESSAGES {
        missing.push(format!(
            "queued messages: {queued} of {QUEUED_MESSAGES} on parked"
        ));
    }
    missing
}

fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(status.success());
}

/// The largest segment file of the embedded broker's log in `dir`.
fn largest_segment(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .expect("the broker has a segment")
}

#[test]
fn damaged_store_files_stop_the_start_with_one_line_naming_them() {
    let router = populated_state();
    // The check of what must survive finds everything in an undamaged copy.
    {
        let mut copy = Router::configure(QUEUED, Plugins::Shared);
        let _ = std::fs::remove_dir_all(copy.state_dir());
        copy_dir(&router.state_dir(), &copy.state_dir());
        copy.launch();
        let missing = missing_content(&copy);
        copy.stop();
        assert!(missing.is_empty(), "{missing:?}");
    }
    let mut failures = Vec::new();
    // The broker's segment that holds the queued messages.
    let segment = largest_segment(&router.state_dir().join("broker-local"))
        .strip_prefix(router.state_dir())
        .unwrap()
        .to_path_buf();
    for file in [Path::new("state.redb"), segment.as_path()] {
        for how in DAMAGES {
            let file = file.display();
            // A router of its own on a copy of the populated state.
            let mut copy = Router::configure(QUEUED, Plugins::Shared);
            let state = copy.state_dir();
            let _ = std::fs::remove_dir_all(&state);
            copy_dir(&router.state_dir(), &state);
            let path = state.join(file.to_string());
            damage(&path, how);
            let (failed, output) = run_once(&copy.config, &state, &[]);
            if output.contains("panicked") {
                failures.push(format!("{file} {how}: panicked:\n{output}"));
                continue;
            }
            if failed {
                // A refusal: one line naming the file and the way out.
                let errors: Vec<&str> =
                    output.lines().filter(|l| l.starts_with("error:")).collect();
                let ok = errors.len() == 1
                    && errors[0].contains(&path.display().to_string())
                    && errors[0].contains("--move-damaged-aside");
                if !ok {
                    failures.push(format!("{file} {how}: refused unclearly:\n{output}"));
                }
                continue;
            }
            // It started (garbage that lands in a file's free pages is no
            // damage: redb never reads it). Then everything that was there
            // before must still be there.
            copy.launch();
            let missing = missing_content(&copy);
            copy.stop();
            if !missing.is_empty() {
                failures.push(format!(
                    "{file} {how}: started without {}:\n{output}",
                    missing.join("; ")
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n---\n"));
}

#[test]
fn move_damaged_aside_starts_fresh_and_says_so() {
    let mut router = populated_state();
    let broker = largest_segment(&router.state_dir().join("broker-local"));
    damage(&broker, "zero");
    let (failed, output) = run_once(&router.config, &router.state_dir(), &[]);
    assert!(failed, "started on an empty broker file:\n{output}");
    // The file is untouched by the refusal.
    assert_eq!(std::fs::metadata(&broker).unwrap().len(), 0);
    damage(&router.state_dir().join("state.redb"), "head");
    let (failed, output) = run_once(
        &router.config,
        &router.state_dir(),
        &["--move-damaged-aside"],
    );
    assert!(!failed, "{output}");
    let aside: Vec<String> = std::fs::read_dir(router.state_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".damaged-"))
        .collect();
    assert_eq!(aside.len(), 2, "{aside:?}\n{output}");
    assert!(aside.iter().any(|n| n.starts_with("broker-local.damaged-")));
    assert!(aside.iter().any(|n| n.starts_with("state.redb.damaged-")));
    assert_eq!(
        output.matches("Moved a damaged store file aside").count(),
        2,
        "{output}"
    );
    router.launch();
    assert!(router.peek("local", "parked").is_empty());
    router.stop();
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

#[test]
fn a_full_disk_makes_the_embedded_broker_not_ready_once_and_it_recovers_without_restart() {
    let Some(fs) = Tmpfs::mount("8m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let broker_file = fs.0.path().join("broker");
    let mut router = Router::start(&format!(
        r#"
[[brokers]]
name = "local"
kind = "embedded"
path = {:?}

[[topics]]
name = "parked"

[[topics]]
name = "work"
consumers = ["examples/echo"]

[[flows]]
name = "echo"
topic = "work"
algorithm = "examples/echo"
"#,
        broker_file.display().to_string()
    ));
    let flow = |router: &Router| {
        let f = router.flow("echo");
        let error = f["last_error"][1].as_str().unwrap_or_default().to_string();
        (
            f["state"].as_str().unwrap_or_default().to_string(),
            error,
            f,
        )
    };
    wait_for("the flow to run", Duration::from_secs(30), || {
        (flow(&router).0 == "running").then_some(())
    });
    assert_eq!(router.ready().0, 200, "{}", router.ready().1);
    let mut accepted = 0usize;
    router.publish("parked", &["first".to_string()]);
    accepted += 1;
    // Fill the file system, then publish until the broker cannot write.
    {
        use std::io::Write;
        let mut f = std::fs::File::create(fs.0.path().join("filler")).unwrap();
        let block = vec![1u8; 64 << 10];
        while f.write_all(&block).and_then(|_| f.sync_all()).is_ok() {}
    }
    let big = "y".repeat(60 << 10);
    let mut refused = false;
    for _ in 0..300 {
        let (status, _) = router.http(
            "POST",
            "/v1/messages",
            Some(json!({ "topic": "parked", "messages": [{ "payload": big }] })),
        );
        if status == 200 {
            accepted += 1;
        } else {
            refused = true;
            break;
        }
    }
    assert!(refused, "publishing never failed on a full disk");
    // More attempts while full: still refused, still one log line.
    for _ in 0..20 {
        let (status, _) = router.http(
            "POST",
            "/v1/messages",
            Some(json!({ "topic": "parked", "messages": [{ "payload": "z" }] })),
        );
        assert_ne!(status, 200);
    }
    // The flow on that broker says it is not running normally, and why
    // (in the API and in `eventflow flows list`), without anyone asking
    // `/readyz` first.
    let (state, error, report) = wait_for(
        "the flow to report the outage",
        Duration::from_secs(10),
        || {
            // A receive failure sets the state a moment before the error.
            let (state, error, report) = flow(&router);
            (state != "running" && !error.is_empty()).then_some((state, error, report))
        },
    );
    // `degraded` (or `disconnected`, should receiving fail), never a
    // state that says all is well.
    assert!(
        ["degraded", "disconnected"].contains(&state.as_str()),
        "{report}"
    );
    assert!(
        error.contains(&broker_file.display().to_string()),
        "{report}"
    );
    let listed = router.cli_ok(&["flows", "list", "--json"]);
    let flows: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
    assert!(
        flows.iter().any(|f| f["state"] == state.as_str()
            && f["last_error"]
                .to_string()
                .contains(&broker_file.display().to_string())),
        "{listed}"
    );
    let table = router.cli_ok(&["flows", "list"]);
    assert!(
        table
            .lines()
            .any(|l| l.contains(&format!(" {state} "))
                && l.contains(&broker_file.display().to_string())),
        "{table}"
    );
    let (status, body) = router.ready();
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["brokers"][0]["state"], "down", "{body}");
    let reason = body["brokers"][0]["error"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&broker_file.display().to_string()),
        "{body}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let log = router.log();
    let errors = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("store cannot write"))
        .count();
    assert_eq!(errors, 1, "{log}");

    std::fs::remove_file(fs.0.path().join("filler")).unwrap();
    let freed = Instant::now();
    wait_for(
        "the broker to be ready again",
        Duration::from_secs(15),
        || (router.ready().0 == 200).then_some(()),
    );
    assert!(freed.elapsed() < Duration::from_secs(10));
    wait_for("the flow to run again", Duration::from_secs(10), || {
        (flow(&router).0 == "running").then_some(())
    });
    router.publish("parked", &["after".to_string()]);
    accepted += 1;
    assert_eq!(router.peek("local", "parked").len(), accepted);
    router.stop();
    drop(fs);
}

#[test]
fn the_compiled_cache_keeps_only_what_loaded_versions_use() {
    let mut router = Router::configure("", Plugins::Copy(&[("examples", "echo")]));
    let dir = router.plugins_dir().join("examples/echo");
    let original = std::fs::read(dir.join("0.1.0.wasm")).unwrap();
    for i in 1..=5 {
        std::fs::write(
            dir.join(format!("0.2.{i}.wasm")),
            variant(&original, &i.to_string()),
        )
        .unwrap();
    }
    router.launch();
    let cache = router.state_dir().join("compiled");
    let entries = || {
        std::fs::read_dir(&cache)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".cwasm")
            })
            .count()
    };
    assert_eq!(entries(), 6);
    // Deleting versions deletes their compiled code, without a restart.
    for i in 1..=5 {
        std::fs::remove_file(dir.join(format!("0.2.{i}.wasm"))).unwrap();
    }
    wait_for("the cache to shrink", Duration::from_secs(20), || {
        (entries() == 1).then_some(())
    });
    router.stop();
    // What an earlier version left behind goes at the next start.
    std::fs::write(
        cache.join(format!("{}-0000000000000000.cwasm", "ab".repeat(32))),
        b"x",
    )
    .unwrap();
    router.launch();
    assert_eq!(entries(), 1);
    router.stop();
}

/// A state directory the previous version wrote (its embedded broker kept
/// topics in one redb file, `broker-local.redb`): 100 messages with
/// headers on `parked`, made by that version's binary and kept in
/// tests/fixtures/previous-version with what its API listed.
#[test]
fn a_state_directory_of_the_previous_version_is_migrated_without_losing_a_message() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/previous-version");
    let expected: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(fixtures.join("parked.json")).unwrap()).unwrap();
    let mut router = Router::configure(QUEUED, Plugins::Shared);
    let state = router.state_dir();
    std::fs::create_dir_all(&state).unwrap();
    let unzipped = Command::new("gzip")
        .arg("-dc")
        .arg(fixtures.join("broker-local.redb.gz"))
        .output()
        .unwrap();
    assert!(unzipped.status.success());
    std::fs::write(state.join("broker-local.redb"), &unzipped.stdout).unwrap();
    let listed = |router: &Router| -> Vec<serde_json::Value> {
        router
            .peek("local", "parked")
            .into_iter()
            .map(|m| {
                json!({
                    "id": m["id"], "payload": m["payload"],
                    "headers": m["headers"], "enqueued_at": m["enqueued_at"],
                })
            })
            .collect()
    };
    for round in 0..2 {
        router.launch();
        assert_eq!(listed(&router), expected, "round {round}");
        router.stop();
    }
    let names: Vec<String> = std::fs::read_dir(&state)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(state.join("broker-local").is_dir(), "{names:?}");
    assert!(!state.join("broker-local.redb").exists(), "{names:?}");
    assert!(
        names
            .iter()
            .any(|n| n.starts_with("broker-local.redb.migrated-")),
        "{names:?}"
    );
    // Migrated once, and said so.
    let log = router.log();
    assert_eq!(
        log.matches("Migrated the embedded broker's store").count(),
        1,
        "{log}"
    );
    // Messages are consumed normally after the upgrade.
    let mut router2 = Router::configure(
        &format!(
            "{QUEUED}consumers = [\"examples/echo\"]\n\n[[topics]]\nname = \"out\"\npublishers = [\"examples/echo\"]\n\n[[flows]]\nname = \"drain\"\ntopic = \"parked\"\nalgorithm = \"examples/echo\"\noutput_topic = \"out\"\n"
        ),
        Plugins::Shared,
    );
    let _ = std::fs::remove_dir_all(router2.state_dir());
    copy_dir(&state, &router2.state_dir());
    router2.launch();
    wait_for(
        "the migrated messages to be consumed",
        Duration::from_secs(60),
        || (router2.peek("local", "out").len() == expected.len()).then_some(()),
    );
    assert!(router2.peek("local", "parked").is_empty());
    router2.stop();
}
