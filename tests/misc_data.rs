//! Data collections end to end, with the real binary and the example
//! algorithm `ezra/store_file`: a symlink inside the data directory never
//! leads an algorithm into another owner's tree, and a transient write
//! failure is retried (and succeeds later) instead of dead-lettered.
//!
//! What does not depend on where collections are kept runs on both
//! backends, the data directory and a bucket of moto's S3: the algorithm's
//! writes and `eventflow data get|ls`, the URI checks, the write quota.

#[path = "support/moto.rs"]
mod moto;
mod support;

use std::path::Path;
use std::time::Duration;

use moto::Moto;
use support::{Plugins, Router, wait_for};

/// Where the router keeps its data collections.
#[derive(Debug, Clone, Copy)]
enum Backend {
    /// `[data] backend = "local"`: the data directory.
    Local,
    /// A bucket of moto's S3, under a prefix.
    S3,
}

const BUCKET: &str = "collections";
const PREFIX: &str = "fleet/data";

/// A router on one backend, and moto when that is S3.
struct Setup {
    router: Router,
    /// The `[data]` section of the configuration.
    data: String,
    moto: Option<Moto>,
}

impl Setup {
    /// Starts a router of `body` on `backend`. S3 credentials come from a
    /// file (`{ file = .. }`), so `eventflow data` reads them as well.
    fn start(backend: Backend, body: &str) -> Self {
        let Backend::S3 = backend else {
            return Self {
                router: Router::start(body),
                data: String::new(),
                moto: None,
            };
        };
        let moto = Moto::start();
        moto.bucket(BUCKET);
        let mut router = Router::configure(body, Plugins::Shared);
        let key = router.dir.path().join("s3-key");
        std::fs::write(&key, "testing\n").unwrap();
        let data = format!(
            "[data]\nbackend = \"s3://{BUCKET}/{PREFIX}\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\naccess_key_id = {{ file = {k:?} }}\nsecret_access_key = {{ file = {k:?} }}\n\n",
            moto.url,
            k = key.display().to_string()
        );
        router.rewrite(&format!("{data}{body}"));
        router.launch();
        Self {
            router,
            data,
            moto: Some(moto),
        }
    }

    /// Replaces the test's part of the configuration, keeping the backend.
    fn rewrite(&self, body: &str) {
        self.router.rewrite(&format!("{}{body}", self.data));
    }

    /// Every stored file, by its path in the collections, with contents.
    fn stored(&self) -> Vec<(String, Vec<u8>)> {
        match &self.moto {
            Some(moto) => moto
                .objects(BUCKET)
                .into_iter()
                .map(|(key, bytes)| {
                    let path = key.strip_prefix(&format!("{PREFIX}/"));
                    (
                        path.expect("an object outside the prefix").to_string(),
                        bytes,
                    )
                })
                .collect(),
            None => {
                let mut files = Vec::new();
                walk(&self.router.data_dir(), "", &mut files);
                files.sort();
                files
            }
        }
    }
}

fn walk(dir: &Path, at: &str, files: &mut Vec<(String, Vec<u8>)>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = format!("{at}{}", entry.file_name().to_string_lossy());
        if entry.file_type().unwrap().is_dir() {
            walk(&entry.path(), &format!("{name}/"), files);
        } else {
            files.push((name, std::fs::read(entry.path()).unwrap()));
        }
    }
}

/// The quickstart's flow, with a dead-letter topic.
const STORE_FILE: &str = r#"
[[brokers]]
name = "local"
kind = "embedded"

[[topics]]
name = "incoming"
consumers = ["ezra/store_file"]

[[topics]]
name = "dlq"
publishers = ["ezra/store_file"]

[[flows]]
name = "store-files"
topic = "incoming"
algorithm = "ezra/store_file/0.1.0"
dead_letter_topic = "dlq"
max_receives = 3
"#;

fn message(name: &str) -> String {
    format!(r#"{{"filename": "{name}", "data": "written by ezra/store_file"}}"#)
}

fn names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn a_symlink_to_another_owners_collection_or_tree_is_refused() {
    let router = Router::start(STORE_FILE);
    let data = router.data_dir();
    std::fs::create_dir_all(data.join("mallory/c")).unwrap();
    std::fs::write(data.join("mallory/c/secret.txt"), b"mallory's").unwrap();

    // The issue's link: ezra's collection is mallory's (relative, inside
    // the data directory).
    std::fs::create_dir_all(data.join("ezra")).unwrap();
    std::os::unix::fs::symlink("../mallory/c", data.join("ezra/TestingEventFlow")).unwrap();
    router.publish("incoming", &[message("via-collection.txt")]);
    wait_for("the first dead letter", Duration::from_secs(30), || {
        (router.dead_letters("store-files").len() == 1).then_some(())
    });

    // Then ezra's whole directory is a link to mallory's.
    std::fs::remove_file(data.join("ezra/TestingEventFlow")).unwrap();
    std::fs::remove_dir(data.join("ezra")).unwrap();
    std::fs::create_dir_all(data.join("mallory/TestingEventFlow")).unwrap();
    std::os::unix::fs::symlink("mallory", data.join("ezra")).unwrap();
    router.publish("incoming", &[message("via-owner.txt")]);
    let letters = wait_for("the second dead letter", Duration::from_secs(30), || {
        let l = router.dead_letters("store-files");
        (l.len() == 2).then_some(l)
    });

    for letter in &letters {
        assert_eq!(letter["last_failure"]["reason"], "guest_reject", "{letter}");
        let detail = letter["last_failure"]["detail"].as_str().unwrap();
        assert!(detail.contains("InvalidUri"), "{detail}");
        assert!(detail.contains("symbolic link"), "{detail}");
    }
    assert_eq!(names(&data.join("mallory/c")), ["secret.txt"]);
    assert!(names(&data.join("mallory/TestingEventFlow")).is_empty());
    assert_eq!(
        std::fs::read(data.join("mallory/c/secret.txt")).unwrap(),
        b"mallory's"
    );
}

fn a_data_write_over_quota_is_retried_and_succeeds_once_the_limit_is_raised(backend: Backend) {
    // The write quota of 16 bytes is below the message's data: the
    // algorithm must retry (the operator may raise it), not reject.
    let limited = format!(
        "{STORE_FILE}\n[[algorithm_limits]]\nalgorithm = \"ezra/store_file/0.1.0\"\nmax_data_write_bytes = 16\n"
    );
    let setup = Setup::start(backend, &limited);
    let router = &setup.router;
    router.publish("incoming", &[message("later.txt")]);
    wait_for("the first failed attempt", Duration::from_secs(30), || {
        router
            .log()
            .contains("Algorithm failed on a message")
            .then_some(())
    });
    assert!(
        router.dead_letters("store-files").is_empty(),
        "dead-lettered on the first attempt: {:?}",
        router.dead_letters("store-files")
    );
    // The operator raises the limit; the next attempt writes the file.
    setup.rewrite(STORE_FILE);
    let config = router.config.display().to_string();
    router.cli_ok(&["apply", "-f", &config]);
    let stored = wait_for("the stored file", Duration::from_secs(60), || {
        let out = router.cli(&["data", "get", "data://ezra/TestingEventFlow/later.txt"]);
        out.status.success().then_some(out.stdout)
    });
    assert_eq!(stored, b"written by ezra/store_file");
    assert_eq!(
        setup.stored(),
        [(
            "ezra/TestingEventFlow/later.txt".to_string(),
            stored.clone()
        )]
    );
    assert!(router.dead_letters("store-files").is_empty());
    let log = router.log();
    let failure = log
        .lines()
        .find(|l| l.contains("Algorithm failed on a message"))
        .unwrap();
    assert!(failure.contains("quota"), "{failure}");
}

#[test]
fn a_data_write_over_quota_is_retried_and_succeeds_once_the_limit_is_raised_local() {
    a_data_write_over_quota_is_retried_and_succeeds_once_the_limit_is_raised(Backend::Local);
}

#[test]
fn a_data_write_over_quota_is_retried_and_succeeds_once_the_limit_is_raised_s3() {
    a_data_write_over_quota_is_retried_and_succeeds_once_the_limit_is_raised(Backend::S3);
}

fn the_algorithm_writes_and_the_cli_reads(backend: Backend) {
    let setup = Setup::start(backend, STORE_FILE);
    let router = &setup.router;
    router.publish(
        "incoming",
        &[
            message("some-new-file.txt"),
            r#"{"filename": "sub/f.txt", "data": "nested"}"#.to_string(),
        ],
    );
    for (uri, contents) in [
        (
            "data://ezra/TestingEventFlow/some-new-file.txt",
            &b"written by ezra/store_file"[..],
        ),
        ("data://ezra/TestingEventFlow/sub/f.txt", b"nested"),
    ] {
        let stored = wait_for(uri, Duration::from_secs(30), || {
            let out = router.cli(&["data", "get", uri]);
            out.status.success().then_some(out.stdout)
        });
        assert_eq!(stored, contents, "{uri}");
    }
    let listing = router.cli_ok(&["data", "ls", "data://ezra/TestingEventFlow"]);
    assert_eq!(
        listing.lines().collect::<Vec<_>>(),
        ["some-new-file.txt", "sub/"]
    );
    let listing = router.cli_ok(&["data", "ls", "data://ezra/TestingEventFlow/sub/"]);
    assert_eq!(listing.trim(), "f.txt");
    assert!(
        router
            .cli_ok(&["data", "ls", "data://ezra/nothing-yet"])
            .is_empty()
    );
    let out = router.cli(&["data", "get", "data://ezra/TestingEventFlow/missing"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
    let names: Vec<String> = setup.stored().into_iter().map(|(n, _)| n).collect();
    assert_eq!(
        names,
        [
            "ezra/TestingEventFlow/some-new-file.txt",
            "ezra/TestingEventFlow/sub/f.txt"
        ]
    );
    assert!(router.dead_letters("store-files").is_empty());
}

#[test]
fn the_algorithm_writes_and_the_cli_reads_local() {
    the_algorithm_writes_and_the_cli_reads(Backend::Local);
}

#[test]
fn the_algorithm_writes_and_the_cli_reads_s3() {
    the_algorithm_writes_and_the_cli_reads(Backend::S3);
}

/// File names that would leave the collection `ezra/TestingEventFlow`.
const ESCAPES: &[&str] = &[
    "../../etc/passwd",
    "../../mallory/c/f",
    "a/../../../x",
    "a//b",
    "/absolute",
    "%2e%2e/%2e%2e/mallory/c/f",
    "a%2fb",
    "a\\..\\b",
    ".eventflow-tmp-x",
];

fn an_escaping_data_uri_is_refused(backend: Backend) {
    let setup = Setup::start(backend, STORE_FILE);
    let router = &setup.router;
    let messages: Vec<String> = ESCAPES
        .iter()
        .map(|name| serde_json::json!({"filename": name, "data": "x"}).to_string())
        .collect();
    router.publish("incoming", &messages);
    let letters = wait_for("a dead letter each", Duration::from_secs(60), || {
        let l = router.dead_letters("store-files");
        (l.len() == ESCAPES.len()).then_some(l)
    });
    for letter in &letters {
        assert_eq!(letter["last_failure"]["reason"], "guest_reject", "{letter}");
        let detail = letter["last_failure"]["detail"].as_str().unwrap();
        assert!(detail.contains("InvalidUri"), "{detail}");
    }
    for uri in [
        "data://ezra/TestingEventFlow/../../etc/passwd",
        "data://ezra/../mallory/c",
        "data://ezra/TestingEventFlow//etc",
        "data://ezra/TestingEventFlow/%2e%2e/x",
    ] {
        for command in ["get", "ls"] {
            let out = router.cli(&["data", command, uri]);
            assert_eq!(out.status.code(), Some(1), "{command} {uri}");
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("invalid data URI"), "{command} {uri}: {err}");
        }
    }
    assert!(setup.stored().is_empty(), "{:?}", setup.stored());
}

#[test]
fn an_escaping_data_uri_is_refused_local() {
    an_escaping_data_uri_is_refused(Backend::Local);
}

#[test]
fn an_escaping_data_uri_is_refused_s3() {
    an_escaping_data_uri_is_refused(Backend::S3);
}

/// Plugins from a bucket, for a fleet: three routers with the same `[plugins]`
/// bucket (each with its own embedded broker). `eventflow deploy` through
/// one of them uploads the component and all load it; a truncated upload
/// of the same version is rejected by all while the content loaded before
/// keeps serving; a deleted object takes the version away from all.
#[test]
fn plugins_from_a_bucket_go_live_on_every_router_and_a_bad_upload_is_refused() {
    const KEY: &str = "fleet/plugins/examples/echo/0.1.0.wasm";
    let moto = Moto::start();
    moto.bucket(BUCKET);
    let creds = tempfile::tempdir().unwrap();
    let key = creds.path().join("s3-key");
    std::fs::write(&key, "testing\n").unwrap();
    let body = format!(
        "[plugins]\nbackend = \"s3://{BUCKET}/fleet/plugins\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\naccess_key_id = {{ file = {k:?} }}\nsecret_access_key = {{ file = {k:?} }}\n\n{}",
        moto.url,
        support::one_flow("echo", "examples/echo", "max_receives = 1"),
        k = key.display().to_string()
    );
    let start = || {
        let mut router = Router::configure(&body, Plugins::Shared);
        // The harness writes `[router]`; list the bucket every 0.5 s.
        let text = std::fs::read_to_string(&router.config).unwrap();
        let text = text.replacen("[router]\n", "[router]\nplugins_poll_secs = 0.5\n", 1);
        std::fs::write(&router.config, text).unwrap();
        router.launch();
        router
    };
    let routers = [start(), start(), start()];
    // A plugin directory on the command line cannot stand in for the bucket.
    let refused = routers[0].cli(&["run", "--plugins", "elsewhere"]);
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("plugins come from the bucket"),
        "{said}"
    );
    let echo = support::plugin_file("examples", "echo");
    let bytes = std::fs::read(&echo).unwrap();
    let hash = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(&bytes))
    };

    // Deployed through the first router: uploaded, and loaded by all three.
    let deployed = routers[0].cli_ok(&["deploy", echo.to_str().unwrap(), "examples/echo/0.1.0"]);
    assert!(
        deployed.contains("loaded examples/echo/0.1.0"),
        "{deployed}"
    );
    let objects = moto.objects(BUCKET);
    assert_eq!(
        objects.len(),
        1,
        "{:?}",
        objects.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    assert_eq!((objects[0].0.as_str(), &objects[0].1), (KEY, &bytes));
    for (i, router) in routers.iter().enumerate() {
        wait_for("the version to load", Duration::from_secs(60), || {
            (listed(router)?["hash"] == hash.as_str()).then_some(())
        });
        router.publish("in", &[format!("to router {i}")]);
        wait_for("the echo", Duration::from_secs(60), || {
            router
                .peek("local", "out")
                .iter()
                .any(|m| m["payload"] == format!("to router {i}").as_str())
                .then_some(())
        });
    }

    // A truncated upload of the same version: refused by all three, and the
    // content loaded before keeps serving.
    let half = creds.path().join("half.wasm");
    std::fs::write(&half, &bytes[..bytes.len() / 2]).unwrap();
    let out = routers[0].cli(&["deploy", half.to_str().unwrap(), "examples/echo/0.1.0"]);
    let said =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("rejected examples/echo/0.1.0"),
        "{said}"
    );
    for (i, router) in routers.iter().enumerate() {
        wait_for("the rejection", Duration::from_secs(60), || {
            (listed(router)?["status"] == "rejected").then_some(())
        });
        router.publish("in", &[format!("after the bad upload {i}")]);
        let out = wait_for("the echo", Duration::from_secs(60), || {
            router
                .peek("local", "out")
                .into_iter()
                .find(|m| m["payload"] == format!("after the bad upload {i}").as_str())
        });
        assert_eq!(
            support::header(&out, "eventflow-component-hash"),
            Some(hash.as_str()),
            "{out}"
        );
    }

    // Deleted from the bucket: gone from all three, and the flow waits.
    moto.delete_object(BUCKET, KEY);
    for router in &routers {
        wait_for("the flow to pause", Duration::from_secs(60), || {
            (router.flow("echo")["state"] == "waiting_for_plugin").then_some(())
        });
        assert!(router.log().contains("Plugin downloaded from the bucket."));
    }
}

/// `examples/echo/0.1.0` in a router's plugin listing, if it is there yet.
fn listed(router: &Router) -> Option<serde_json::Value> {
    let (status, body) = router.http("GET", "/v1/plugins", None);
    assert_eq!(status, 200, "{body}");
    body["plugins"]
        .as_array()?
        .iter()
        .find(|p| p["algorithm"] == "examples/echo/0.1.0")
        .cloned()
}
