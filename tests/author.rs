//! The development loop of algorithm authors, with the real toolchains:
//! `eventflow new` + `build` + `invoke` for Rust, Python and JavaScript in a
//! clean directory outside the repository, `invoke` of what fails (exit code
//! and reason), and `deploy` to a running router (loaded, rejected).
//!
//! componentize-py and componentize-js are found where `cargo xtask test`
//! installs them. Compiled code of invoked components is kept beside the
//! test plugins across runs (`test-compiled-invoke`): a Python or
//! JavaScript component takes a minute to compile in a debug build.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;
use support::{Plugins, Router};

/// Runs `eventflow ARGS` in `dir`, with no configuration file there.
fn eventflow(dir: &Path, args: &[&str]) -> Output {
    let cache = support::test_plugins().with_file_name("test-compiled-invoke");
    Command::new(env!("CARGO_BIN_EXE_eventflow"))
        .args(args)
        .current_dir(dir)
        .env("EVENTFLOW_COMPILED_CACHE", cache)
        .env_remove("EVENTFLOW_CONFIG")
        .output()
        .expect("cannot run eventflow")
}

fn ok(dir: &Path, args: &[&str]) -> String {
    let out = eventflow(dir, args);
    assert!(
        out.status.success(),
        "eventflow {args:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// `new`, `build`, then `invoke` of the test input and of an input the
/// template rejects.
fn new_build_invoke(lang: &str, name: &str) {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    ok(
        dir,
        &["new", &format!("acme/{name}"), "--lang", lang, "project"],
    );
    assert!(dir.join("project/input.json").exists());
    let built = ok(dir, &["build", "project"]);
    let component = dir.join(format!("project/dist/acme/{name}/0.1.0.wasm"));
    assert!(
        built.contains(&format!("project/dist/acme/{name}/0.1.0.wasm")),
        "build does not say where the component went: {built}"
    );
    assert!(component.is_file(), "{} is missing", component.display());
    let wasm = component.to_str().unwrap();

    // The test input: stored, said so in the log, returned where.
    let data = dir.join("data");
    let report: Value = serde_json::from_str(&ok(
        dir,
        &[
            "invoke",
            wasm,
            "--data",
            "@project/input.json",
            "--data-dir",
            "data",
            "--json",
        ],
    ))
    .unwrap();
    let uri = format!("data://acme/{name}/hello.txt");
    assert_eq!(report["verdict"], "ok", "{report:#}");
    assert_eq!(report["algorithm"], format!("acme/{name}/0.1.0"));
    let output: Value = serde_json::from_str(report["output"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(output["stored"], uri.as_str());
    assert_eq!(report["data"][0]["uri"], uri.as_str(), "{report:#}");
    assert_eq!(report["data"][0]["change"], "written");
    assert_eq!(
        std::fs::read_to_string(data.join(format!("acme/{name}/hello.txt"))).unwrap(),
        format!("hello from acme/{name}")
    );
    let logs = report["logs"].to_string();
    assert!(
        logs.contains(&format!(
            "stored {} bytes",
            format!("hello from acme/{name}").len()
        )),
        "{logs}"
    );
    assert!(report["peak_memory_bytes"].as_u64().unwrap() > 0);
    assert!(report["duration_ms"].as_f64().unwrap() > 0.0);

    // The human form says the same.
    let text = ok(dir, &["invoke", wasm, "--data", "@project/input.json"]);
    assert!(text.contains("verdict:   ok"), "{text}");
    assert!(text.contains(&format!("written {uri}")), "{text}");

    // An input the algorithm rejects: exit code 1, the reason on stderr.
    let out = eventflow(dir, &["invoke", wasm, "--data", r#"{"filename": 1}"#]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("guest_reject"), "{stderr}");
    assert!(
        stderr.contains(r#"payload needs string fields "filename" and "data""#),
        "{stderr}"
    );
}

#[test]
fn a_new_rust_algorithm_builds_and_runs() {
    new_build_invoke("rust", "hello_rust");
}

#[test]
fn a_new_python_algorithm_builds_and_runs() {
    new_build_invoke("python", "hello_py");
}

#[test]
fn a_new_javascript_algorithm_builds_and_runs() {
    new_build_invoke("js", "hello_js");
}

/// A Python app that fetches `input["url"]` and returns status and body;
/// a refused request is rejected with its code.
const FETCH_PY: &str = r#"from eventflow import Reject
from eventflow.http import HttpError, fetch


def apply(input):
    try:
        reply = fetch(input["url"])
    except HttpError as e:
        raise Reject(f"refused: {e.code}")
    return {"status": reply.status, "body": reply.text()}
"#;

/// The same in JavaScript, an `async function` awaiting `fetch`.
const FETCH_JS: &str = r#"import { Reject } from "eventflow";

export async function apply(input) {
  let reply;
  try {
    reply = await fetch(input.url);
  } catch (e) {
    throw new Reject(`refused: ${e}`);
  }
  return { status: reply.status, body: await reply.text() };
}
"#;

/// A project with `outbound_http = true` builds for the world with
/// `wasi:http`, and `invoke` lets it call an origin only when `--allow`
/// names it (a loopback address, named exactly).
fn an_outbound_project_calls_what_invoke_allows(
    lang: &str,
    app: &str,
    source: &str,
    refused: &str,
) {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path();
    ok(dir, &["new", "acme/caller", "--lang", lang, "project"]);
    std::fs::write(dir.join("project").join(app), source).unwrap();
    let manifest = dir.join("project/algorithm.toml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    std::fs::write(&manifest, format!("{text}\noutbound_http = true\n")).unwrap();
    ok(dir, &["build", "project"]);
    let wasm = "project/dist/acme/caller/0.1.0.wasm";

    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        use std::io::{BufRead, BufReader, Write};
        for mut stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 2 {
                line.clear();
            }
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\nhello",
            );
        }
    });
    let input = format!(r#"{{"url": "{origin}/greeting"}}"#);

    let report: Value = serde_json::from_str(&ok(
        dir,
        &[
            "invoke", wasm, "--data", &input, "--allow", &origin, "--json",
        ],
    ))
    .unwrap();
    assert_eq!(report["verdict"], "ok", "{report:#}");
    let output: Value = serde_json::from_str(report["output"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(output, serde_json::json!({"status": 200, "body": "hello"}));

    let out = eventflow(dir, &["invoke", wasm, "--data", &input]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("refused: {refused}")), "{stderr}");
}

#[test]
fn a_python_project_that_calls_out_builds_and_reaches_only_allowed_origins() {
    an_outbound_project_calls_what_invoke_allows(
        "python",
        "app.py",
        FETCH_PY,
        "HTTP-request-denied",
    );
}

#[test]
fn a_javascript_project_that_calls_out_builds_and_reaches_only_allowed_origins() {
    an_outbound_project_calls_what_invoke_allows(
        "js",
        "app.js",
        FETCH_JS,
        "TypeError: NetworkError",
    );
}

#[test]
fn new_refuses_a_directory_that_is_not_empty_and_a_bad_name() {
    let work = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("x"), "").unwrap();
    let out = eventflow(work.path(), &["new", "acme/a", "--lang", "python", "."]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not empty"));
    let out = eventflow(work.path(), &["new", "acme/a.b", "--lang", "rust", "p"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot name a Rust crate"));
    assert!(!work.path().join("p").exists());
}

#[test]
fn invoke_passes_secrets_and_headers_and_shows_what_was_published() {
    let work = tempfile::tempdir().unwrap();
    let wasm = support::plugin_file("ezra", "transform");
    let report: Value = serde_json::from_str(&ok(
        work.path(),
        &[
            "invoke",
            wasm.to_str().unwrap(),
            "--data",
            r#"{"text": "hi"}"#,
            "--header",
            "k=v",
            "--secret",
            "TRANSFORM_TOPIC=elsewhere",
            "--json",
        ],
    ))
    .unwrap();
    assert_eq!(report["verdict"], "ok", "{report:#}");
    assert_eq!(report["published"][0]["topic"], "elsewhere", "{report:#}");
    let body: Value =
        serde_json::from_str(report["published"][0]["payload"]["text"].as_str().unwrap()).unwrap();
    assert_eq!(body["text"], "HI");
    assert_eq!(report["data"], Value::Array(vec![]));
}

#[test]
fn invoke_applies_the_sandbox_limits() {
    let work = tempfile::tempdir().unwrap();
    let wasm = support::plugin_file("test", "memory_bomb");
    let out = eventflow(
        work.path(),
        &["invoke", wasm.to_str().unwrap(), "--data", "{}", "--json"],
    );
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verdict"], "memory_limit", "{report:#}");
    // The configuration's flow limits apply: a flow allowing less memory.
    std::fs::write(
        work.path().join("eventflow.toml"),
        r#"
[[brokers]]
name = "local"
kind = "embedded"

[[topics]]
name = "in"
consumers = ["test/memory_bomb"]

[[flows]]
name = "bomb"
topic = "in"
algorithm = "test/memory_bomb"
timeout_secs = 0.5
limits = { max_memory_mib = 8 }
"#,
    )
    .unwrap();
    let out = eventflow(
        work.path(),
        &["invoke", wasm.to_str().unwrap(), "--data", "{}", "--json"],
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["verdict"], "memory_limit", "{report:#}");
    assert!(
        report["reason"]
            .as_str()
            .unwrap()
            .contains(&(8u64 << 20).to_string()),
        "{report:#}"
    );
    // A component that is not a component is refused with why.
    std::fs::write(work.path().join("junk.wasm"), b"not wasm").unwrap();
    let out = eventflow(
        work.path(),
        &["invoke", "junk.wasm", "--id", "a/b/1.0.0", "--data", "{}"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a WebAssembly component"));
}

#[test]
fn deploy_waits_for_the_router_and_says_loaded_or_rejected() {
    let router = Router::start_with(
        r#"
[[brokers]]
name = "local"
kind = "embedded"
"#,
        Plugins::Copy(&[("examples", "echo")]),
    );
    let echo = support::plugin_file("examples", "echo");
    let out = router.cli_ok(&["deploy", echo.to_str().unwrap(), "acme/deployed/1.0.0"]);
    assert!(out.contains("loaded acme/deployed/1.0.0"), "{out}");
    let file = router.plugins_dir().join("acme/deployed/1.0.0.wasm");
    assert_eq!(std::fs::read(&file).unwrap(), std::fs::read(&echo).unwrap());
    let leftovers: Vec<PathBuf> = std::fs::read_dir(file.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p != &file)
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    let broken = router.dir.path().join("broken.wasm");
    let bytes = std::fs::read(&echo).unwrap();
    std::fs::write(&broken, &bytes[..bytes.len() / 2]).unwrap();
    let out = router.cli(&["deploy", broken.to_str().unwrap(), "acme/deployed/1.0.1"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("rejected acme/deployed/1.0.1"), "{stdout}");
}
