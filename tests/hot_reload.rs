//! Operators drop algorithms into the plugin directory and they go live
//! without a restart: swaps under load, truncated files, deletion and
//! restoration. Real binary, embedded broker, a private plugin directory.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{Plugins, Router, header, install_in, one_flow, variant, wait_for};

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn echo() -> Vec<u8> {
    std::fs::read(support::plugin_file("examples", "echo")).unwrap()
}

/// Deploys by overwriting in place in several slow writes, as a careless
/// copy would.
fn deploy_in_pieces(dir: &Path, version: &str, bytes: &[u8]) {
    let mut f = std::fs::File::create(dir.join(format!("{version}.wasm"))).unwrap();
    for chunk in bytes.chunks(bytes.len() / 4 + 1) {
        f.write_all(chunk).unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(40));
    }
}

/// One flow `swap` of `algorithm` (`test/swap`, pinned or not).
fn config(algorithm: &str) -> String {
    one_flow("swap", algorithm, "concurrency = 8\nmax_receives = 3")
}

/// A router whose plugin directory holds `test/swap/0.1.0` = echo (tagged).
fn router_with_swap(algorithm: &str) -> (Router, std::path::PathBuf, Vec<u8>) {
    let router = Router::configure(&config(algorithm), Plugins::Copy(&[]));
    let dir = router.plugins_dir().join("test/swap");
    let first = variant(&echo(), "v0");
    install_in(&dir, "0.1.0", &first);
    let mut router = router;
    router.launch();
    (router, dir, first)
}

fn hashes_of_outputs(router: &Router) -> BTreeMap<String, usize> {
    let mut seen = BTreeMap::new();
    for m in router.peek("local", "out") {
        *seen
            .entry(
                header(&m, "eventflow-component-hash")
                    .unwrap_or("none")
                    .to_string(),
            )
            .or_insert(0) += 1;
    }
    seen
}

#[test]
fn swapping_twenty_times_under_load_loses_nothing_and_every_output_names_its_code() {
    let (router, dir, first) = router_with_swap("test/swap/0.1.0");
    let mut deployed: BTreeSet<String> = BTreeSet::from([sha256(&first)]);

    // 1,000 messages a second for 30 seconds, in batches of 50 every 50 ms,
    // while the version's content is replaced 20 times (every 1.5 s): half
    // by rename, half by slow in-place writes that the watcher sees half done.
    let total = 30_000;
    let started = Instant::now();
    let mut sent = 0;
    let mut swaps = 0;
    while sent < total {
        let due = (started.elapsed().as_millis() as usize).min(30_000) * total / 30_000;
        if due > sent {
            let batch: Vec<String> = (sent..due.min(sent + 500))
                .map(|i| format!("m{i:05}"))
                .collect();
            router.publish("in", &batch);
            sent += batch.len();
        }
        if swaps < 20 && started.elapsed() >= Duration::from_millis(1500 * (swaps as u64 + 1)) {
            swaps += 1;
            let next = variant(&echo(), &format!("v{swaps}"));
            deployed.insert(sha256(&next));
            if swaps % 2 == 0 {
                install_in(&dir, "0.1.0", &next);
            } else {
                deploy_in_pieces(&dir, "0.1.0", &next);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(swaps, 20);

    let outputs = wait_for("30,000 outputs", Duration::from_secs(300), || {
        let out = router.peek("local", "out");
        (out.len() >= total).then_some(out)
    });
    let got: BTreeSet<&str> = outputs
        .iter()
        .map(|m| m["payload"].as_str().unwrap())
        .collect();
    assert_eq!(got.len(), total, "some messages are missing");
    assert!(
        router.dead_letters("swap").is_empty(),
        "no message may fail during swaps"
    );
    for m in &outputs {
        let hash = header(m, "eventflow-component-hash").expect("hash header");
        assert!(
            deployed.contains(hash),
            "an output names code that was never deployed: {hash}"
        );
        assert_eq!(header(m, "eventflow-algorithm"), Some("test/swap@0.1.0"));
    }
    let seen = hashes_of_outputs(&router);
    assert!(
        seen.len() >= 10,
        "outputs came from only {} versions: {seen:?}",
        seen.len()
    );
    // The last content serves at the end.
    let last = sha256(&variant(&echo(), "v20"));
    router.publish("in", &["after".into()]);
    wait_for(
        "the output of the last version",
        Duration::from_secs(30),
        || {
            router
                .peek("local", "out")
                .iter()
                .any(|m| {
                    m["payload"] == "after" && header(m, "eventflow-component-hash") == Some(&last)
                })
                .then_some(())
        },
    );
}

#[test]
fn a_truncated_file_is_rejected_and_the_old_version_keeps_serving() {
    let (router, dir, first) = router_with_swap("test/swap");
    let first_hash = sha256(&first);
    let good = variant(&echo(), "v1");

    // A new version arrives truncated; then the current version is
    // overwritten with a truncated copy of itself.
    install_in(&dir, "0.2.0", &good[..good.len() / 2]);
    install_in(&dir, "0.1.0", &first[..first.len() / 3]);
    wait_for("both rejections", Duration::from_secs(30), || {
        let list = router.cli_ok(&["plugins", "list", "--json"]);
        let list: Value = serde_json::from_str(&list).unwrap();
        let rejected = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["status"] == "rejected")
            .count();
        (rejected == 2).then_some(())
    });
    router.publish("in", &["still here".into()]);
    let out = wait_for("an output", Duration::from_secs(30), || {
        router.peek("local", "out").into_iter().next()
    });
    assert_eq!(
        header(&out, "eventflow-component-hash"),
        Some(first_hash.as_str())
    );
    assert!(router.log().contains("Plugin file rejected"));
    assert!(
        router
            .metrics()
            .contains("eventflow_plugin_rejections_total")
    );

    // Completing the copy brings the new version in.
    install_in(&dir, "0.2.0", &good);
    let good_hash = sha256(&good);
    wait_for("0.2.0 to load", Duration::from_secs(30), || {
        let list = router.cli_ok(&["plugins", "list", "--json"]);
        list.contains(&good_hash).then_some(())
    });
    router.publish("in", &["new".into()]);
    wait_for("the new version's output", Duration::from_secs(30), || {
        router
            .peek("local", "out")
            .iter()
            .any(|m| {
                m["payload"] == "new" && header(m, "eventflow-component-hash") == Some(&good_hash)
            })
            .then_some(())
    });
}

#[test]
fn deleting_pauses_a_pinned_flow_and_restoring_resumes_it() {
    let (router, dir, first) = router_with_swap("test/swap/0.1.0");
    router.publish("in", &["before".into()]);
    wait_for("the first output", Duration::from_secs(30), || {
        (router.peek("local", "out").len() == 1).then_some(())
    });

    std::fs::remove_file(dir.join("0.1.0.wasm")).unwrap();
    wait_for("the flow to pause", Duration::from_secs(30), || {
        (router.flow("swap")["state"] == "waiting_for_plugin").then_some(())
    });
    let waiting: Vec<String> = (0..20).map(|i| format!("waiting {i}")).collect();
    router.publish("in", &waiting);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        router.peek("local", "in").len(),
        20,
        "the messages wait in the broker"
    );
    assert_eq!(router.peek("local", "out").len(), 1);
    assert!(
        router.dead_letters("swap").is_empty(),
        "waiting messages are not failed"
    );

    install_in(&dir, "0.1.0", &first);
    wait_for("the waiting messages", Duration::from_secs(30), || {
        (router.peek("local", "out").len() == 21).then_some(())
    });
    assert_eq!(router.flow("swap")["state"], "running");
}

#[test]
fn a_flow_following_the_latest_switches_up_and_falls_back() {
    let (router, dir, first) = router_with_swap("test/swap");
    let second = variant(&echo(), "second");
    install_in(&dir, "0.2.0", &second);
    let by_version = |payload: &str| {
        router.publish("in", &[payload.to_string()]);
        let m = wait_for("an output", Duration::from_secs(30), || {
            router
                .peek("local", "out")
                .into_iter()
                .find(|m| m["payload"] == payload)
        });
        header(&m, "eventflow-algorithm").unwrap().to_string()
    };
    wait_for("0.2.0 to serve", Duration::from_secs(30), || {
        router
            .cli_ok(&["plugins", "list"])
            .lines()
            .any(|l| l.starts_with("test/swap/0.2.0 ") && l.contains(" ok "))
            .then_some(())
    });
    assert_eq!(by_version("a"), "test/swap@0.2.0");
    std::fs::remove_file(dir.join("0.2.0.wasm")).unwrap();
    wait_for("0.2.0 to go", Duration::from_secs(30), || {
        (!router
            .cli_ok(&["plugins", "list"])
            .contains("test/swap/0.2.0"))
        .then_some(())
    });
    assert_eq!(by_version("b"), "test/swap@0.1.0");
    let _ = first;
}

#[test]
fn compiled_code_is_reused_across_restarts() {
    let (mut router, _dir, _first) = router_with_swap("test/swap/0.1.0");
    assert!(router.stop().success());
    router.launch();
    let log = router.log();
    let second_start = log.split("===== start 2 =====").nth(1).unwrap();
    let line = second_start
        .lines()
        .find(|l| l.contains("Algorithm loaded") && l.contains("test/swap/0.1.0"))
        .expect("a load line");
    assert!(
        line.contains("from_cache") && line.contains("true"),
        "{line}"
    );
}
