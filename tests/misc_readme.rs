//! The README's control-plane walkthrough, run as written by bash against the
//! real binary, from its own example configuration
//! (`examples/walkthrough/eventflow.toml`): every step must succeed and leave
//! one flow on `incoming`, which then stores a message.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::{http, test_plugins, wait_for};

fn repo_root() -> PathBuf {
    // Read at run time: a test binary left in a shared target directory by
    // another checkout must read this checkout's README.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The first ```sh block after the line that starts with `heading`.
fn sh_block_after(readme: &str, heading: &str) -> String {
    let start = readme
        .find(heading)
        .unwrap_or_else(|| panic!("the README has no {heading:?}"));
    let rest = &readme[start..];
    let open = rest.find("```sh\n").expect("a ```sh block") + "```sh\n".len();
    let close = rest[open..].find("```").expect("the end of the block");
    rest[open..open + close].to_string()
}

/// Kills the router the walkthrough started in the background.
struct Background(Option<u32>);

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            let _ = Command::new("kill").arg(pid.to_string()).status();
        }
    }
}

#[test]
fn the_control_plane_walkthrough_runs_as_written_on_its_example_config() {
    let root = repo_root();
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let block = sh_block_after(&readme, "The platform's walkthrough");
    assert!(
        block.contains("EVENTFLOW_CONFIG=examples/walkthrough/eventflow.toml"),
        "{block}"
    );

    // A scratch copy of the example, with the test algorithms as plugins.
    let dir = tempfile::tempdir().unwrap();
    let example =
        std::fs::read_to_string(root.join("examples/walkthrough/eventflow.toml")).unwrap();
    let config = example.replace(
        "plugins_dir = \"../quickstart/plugins\"",
        &format!("plugins_dir = {:?}", test_plugins().display().to_string()),
    );
    assert_ne!(config, example, "the example's plugins_dir line changed");
    let example_dir = dir.path().join("examples/walkthrough");
    std::fs::create_dir_all(&example_dir).unwrap();
    std::fs::write(example_dir.join("eventflow.toml"), config).unwrap();
    let state = example_dir.join("state");

    // The block as written, except the build (xtask has built everything)
    // and that bash waits for the router it starts in the background.
    let mut script = String::from("set -euo pipefail\n");
    for line in block.lines() {
        if line.starts_with("cargo ") {
            continue;
        }
        if line.starts_with("eventflow run &") {
            script.push_str(
                "eventflow run >router.log 2>&1 &\necho $! >router.pid\n\
                 for _ in $(seq 1200); do [ -s examples/walkthrough/state/admin.addr ] && break; sleep 0.1; done\n\
                 [ -s examples/walkthrough/state/admin.addr ]\n",
            );
            continue;
        }
        script.push_str(line);
        script.push('\n');
    }
    assert!(script.contains("router.pid"), "the block starts no router");
    let bin = Path::new(env!("CARGO_BIN_EXE_eventflow")).parent().unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap());
    let out = Command::new("bash")
        .arg("-c")
        .arg(&script)
        .current_dir(dir.path())
        .env("PATH", path)
        .env_remove("EVENTFLOW_CONFIG")
        .env_remove("EVENTFLOW_TOKEN")
        .output()
        .expect("bash");
    let _router = Background(
        std::fs::read_to_string(dir.path().join("router.pid"))
            .ok()
            .and_then(|p| p.trim().parse().ok()),
    );
    let log = std::fs::read_to_string(dir.path().join("router.log")).unwrap_or_default();
    assert!(
        out.status.success(),
        "a walkthrough step failed:\n--- stderr ---\n{}\n--- stdout ---\n{}\n--- router log ---\n{log}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.trim() == "API_KEY"),
        "secrets list: {stdout}"
    );

    // One flow on `incoming`, the walkthrough's, disabled, on `latest`.
    let base = format!(
        "http://{}",
        std::fs::read_to_string(state.join("admin.addr"))
            .unwrap()
            .trim()
    );
    let token = std::fs::read_to_string(state.join("admin.token")).unwrap();
    let api = |method: &str, path: &str, body: Option<Value>| {
        http(method, &format!("{base}{path}"), Some(token.trim()), body)
    };
    let (status, body) = api("GET", "/v1/flows", None);
    assert_eq!(status, 200, "{body}");
    let flows = body["flows"].as_array().unwrap();
    assert_eq!(flows.len(), 1, "{body}");
    assert_eq!(flows[0]["name"], "ezra-store_file-incoming", "{body}");
    assert_eq!(flows[0]["spec"]["topic"], "incoming", "{body}");
    assert_eq!(flows[0]["spec"]["enabled"], false, "{body}");
    assert_eq!(flows[0]["spec"]["version"], "latest", "{body}");
    assert_eq!(
        flows[0]["spec"]["dead_letter_topic"], "incoming-dlq",
        "{body}"
    );

    // The set-up works: enabled again, it stores a message.
    let (status, body) = api(
        "PATCH",
        "/v1/flows/ezra-store_file-incoming",
        Some(json!({ "enabled": true })),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = api(
        "POST",
        "/v1/messages",
        Some(json!({
            "topic": "incoming",
            "payload": r#"{"filename": "walkthrough.txt", "data": "hello"}"#,
        })),
    );
    assert_eq!(status, 200, "{body}");
    let stored = example_dir.join("data/ezra/TestingEventFlow/walkthrough.txt");
    let contents = wait_for("the stored file", Duration::from_secs(30), || {
        std::fs::read(&stored).ok()
    });
    assert_eq!(contents, b"hello");

    // The dead-letter topic was declared without a grant for the
    // algorithm: the router writes dead letters itself.
    let (status, body) = api("GET", "/v1/brokers/local/topics", None);
    assert_eq!(status, 200, "{body}");
    let dlq = body["topics"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == "incoming-dlq"))
        .cloned()
        .unwrap_or_else(|| panic!("no topic incoming-dlq: {body}"));
    let granted = |list: &str| {
        dlq[list].as_array().is_some_and(|l| {
            l.iter()
                .any(|a| a.as_str().unwrap_or("").starts_with("ezra/"))
        })
    };
    assert!(
        !granted("publishers") && !granted("dead_letter_publishers"),
        "{dlq}"
    );
    let (status, body) = api(
        "POST",
        "/v1/messages",
        Some(json!({ "topic": "incoming", "payload": "not JSON" })),
    );
    assert_eq!(status, 200, "{body}");
    wait_for("the dead letter", Duration::from_secs(30), || {
        let (status, body) = api(
            "GET",
            "/v1/flows/ezra-store_file-incoming/dead-letters",
            None,
        );
        (status == 200
            && body["dead_letters"]
                .as_array()
                .is_some_and(|d| !d.is_empty()))
        .then_some(())
    });
}
