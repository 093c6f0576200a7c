//! Data collections end to end, with the real binary and the example
//! algorithm `ezra/store_file`: a symlink inside the data directory never
//! leads an algorithm into another owner's tree, and a transient write
//! failure is retried (and succeeds later) instead of dead-lettered.

mod support;

use std::time::Duration;

use support::{Router, wait_for};

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

#[test]
fn a_data_write_over_quota_is_retried_and_succeeds_once_the_limit_is_raised() {
    // The write quota of 16 bytes is below the message's data: the
    // algorithm must retry (the operator may raise it), not reject.
    let limited = format!(
        "{STORE_FILE}\n[[algorithm_limits]]\nalgorithm = \"ezra/store_file/0.1.0\"\nmax_data_write_bytes = 16\n"
    );
    let router = Router::start(&limited);
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
    router.rewrite(STORE_FILE);
    let config = router.config.display().to_string();
    router.cli_ok(&["apply", "-f", &config]);
    let stored = wait_for("the stored file", Duration::from_secs(60), || {
        router.data_file("ezra/TestingEventFlow/later.txt")
    });
    assert_eq!(stored, b"written by ezra/store_file");
    assert!(router.dead_letters("store-files").is_empty());
    let log = router.log();
    let failure = log
        .lines()
        .find(|l| l.contains("Algorithm failed on a message"))
        .unwrap();
    assert!(failure.contains("quota"), "{failure}");
}
