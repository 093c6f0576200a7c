use std::os::unix::fs::PermissionsExt;

use redb::{Database, ReadableDatabase, TableHandle};

use super::*;

fn rec(reason: &str, attempt: u32) -> FailureRecord {
    FailureRecord {
        reason: reason.into(),
        detail: "d".into(),
        attempt,
        at: "t".into(),
        algorithm: "a".into(),
    }
}

#[test]
fn keeps_first_and_last_across_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = StateStore::open(dir.path(), &StateOptions::default()).unwrap();
        s.record_failure("f", "m", rec("trap", 1)).unwrap();
        let h = s.record_failure("f", "m", rec("timeout", 2)).unwrap();
        assert_eq!(h.first.reason, "trap");
        assert_eq!(h.last.reason, "timeout");
        s.flush().unwrap();
    }
    let s = StateStore::open(dir.path(), &StateOptions::default()).unwrap();
    let h = s.failures("f", "m").unwrap().unwrap();
    assert_eq!((h.first.attempt, h.last.attempt), (1, 2));
    s.forget("f", "m").unwrap();
    assert!(s.failures("f", "m").unwrap().is_none());
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

const VALUE: &str = "s3cr3t-value-that-must-not-leak";

#[test]
fn secret_values_are_encrypted_in_the_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = StateStore::open(dir.path(), &StateOptions::default()).unwrap();
        s.set_secret("ezra/a", "TOKEN", VALUE).unwrap();
        s.set_secret("_router", "sqs-key", "router-credential-xyz")
            .unwrap();
        s.flush().unwrap();
    }
    let bytes = std::fs::read(dir.path().join(STATE_FILE)).unwrap();
    assert!(!contains(&bytes, VALUE.as_bytes()));
    assert!(!contains(&bytes, b"router-credential-xyz"));
    let s = StateStore::open(dir.path(), &StateOptions::default()).unwrap();
    let mut all = s.all_secrets().unwrap();
    all.sort();
    assert_eq!(
        all,
        vec![
            (
                "_router".into(),
                "sqs-key".into(),
                "router-credential-xyz".into()
            ),
            ("ezra/a".into(), "TOKEN".into(), VALUE.into()),
        ]
    );
}

#[test]
fn the_state_directory_and_its_files_are_private_even_on_old_installs() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // What an earlier version left: world-readable everything.
    std::fs::create_dir_all(state.join("compiled")).unwrap();
    std::fs::write(state.join("broker-local.redb"), b"x").unwrap();
    std::fs::write(state.join("compiled/abc.cwasm"), b"x").unwrap();
    for p in [&state, &state.join("compiled")] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    for f in ["broker-local.redb", "compiled/abc.cwasm"] {
        std::fs::set_permissions(state.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let _s = StateStore::open(&state, &StateOptions::default()).unwrap();
    assert_eq!(mode(&state), 0o700);
    assert_eq!(mode(&state.join("compiled")), 0o700);
    for f in [
        STATE_FILE,
        "secret.key",
        "broker-local.redb",
        "compiled/abc.cwasm",
    ] {
        assert_eq!(mode(&state.join(f)), 0o600, "{f}");
    }
}

#[test]
fn plaintext_secrets_of_an_earlier_version_are_encrypted_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STATE_FILE);
    {
        // The earlier layout: values in plaintext in `secrets`.
        let db = Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(PLAINTEXT_SECRETS)
            .unwrap()
            .insert(("ezra/a", "TOKEN"), VALUE)
            .unwrap();
        tx.open_table(META)
            .unwrap()
            .insert("seed", "digest")
            .unwrap();
        tx.commit().unwrap();
    }
    assert!(contains(&std::fs::read(&path).unwrap(), VALUE.as_bytes()));
    {
        let s = StateStore::open(dir.path(), &StateOptions::default()).unwrap();
        assert_eq!(
            s.all_secrets().unwrap(),
            vec![("ezra/a".into(), "TOKEN".into(), VALUE.into())]
        );
        assert!(!s.has_plaintext_secrets().unwrap());
        // Everything else survives the rewrite.
        let tx = s.db.begin_read().unwrap();
        let meta = tx.open_table(META).unwrap();
        assert_eq!(meta.get("seed").unwrap().unwrap().value(), "digest");
    }
    let bytes = std::fs::read(&path).unwrap();
    assert!(
        !contains(&bytes, VALUE.as_bytes()),
        "plaintext left in the file"
    );
    assert_eq!(mode(&path), 0o600);
    // And again: nothing to convert, same values.
    let s = StateStore::open(dir.path(), &StateOptions::default()).unwrap();
    assert_eq!(s.all_secrets().unwrap()[0].2, VALUE);
}

#[test]
fn rotating_the_key_reencrypts_every_secret() {
    let dir = tempfile::tempdir().unwrap();
    let options = StateOptions::default();
    {
        let s = StateStore::open(dir.path(), &options).unwrap();
        s.set_secret("ezra/a", "TOKEN", VALUE).unwrap();
    }
    let old_key = std::fs::read(dir.path().join("secret.key")).unwrap();
    let tables = || {
        let db = Database::open(dir.path().join(STATE_FILE)).unwrap();
        let tx = db.begin_read().unwrap();
        let mut names: Vec<String> = tx
            .list_tables()
            .unwrap()
            .map(|t| t.name().to_string())
            .collect();
        names.sort();
        names
    };
    let before = tables();
    // In place.
    let r = rotate_key(dir.path(), &options, None).unwrap();
    // The rewrite copies every table (one it forgot lost the rollouts'
    // serving versions).
    assert_eq!(tables(), before);
    assert_eq!(r.secrets, 1);
    assert_eq!(r.key_file, dir.path().join("secret.key"));
    assert_ne!(
        std::fs::read(dir.path().join("secret.key")).unwrap(),
        old_key
    );
    assert!(!dir.path().join("secret.key.new").exists());
    let s = StateStore::open(dir.path(), &options).unwrap();
    assert_eq!(s.all_secrets().unwrap()[0].2, VALUE);
    drop(s);
    // To a key file elsewhere: the old key no longer opens the secrets.
    let elsewhere = dir.path().join("elsewhere.key");
    rotate_key(dir.path(), &options, Some(&elsewhere)).unwrap();
    assert!(StateStore::open(dir.path(), &options).is_err());
    let moved = StateOptions {
        key_file: Some(elsewhere),
        ..StateOptions::default()
    };
    let s = StateStore::open(dir.path(), &moved).unwrap();
    assert_eq!(s.all_secrets().unwrap()[0].2, VALUE);
}

#[test]
fn another_key_is_refused_naming_the_key_file() {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = StateStore::open(dir.path(), &StateOptions::default()).unwrap();
        s.set_secret("ezra/a", "TOKEN", VALUE).unwrap();
    }
    let other = dir.path().join("other.key");
    std::fs::write(&other, [7u8; 32]).unwrap();
    let options = StateOptions {
        key_file: Some(other.clone()),
        ..StateOptions::default()
    };
    let Err(e) = StateStore::open(dir.path(), &options) else {
        panic!("opened with the wrong key");
    };
    let e = format!("{e:#}");
    assert!(e.contains(&other.display().to_string()), "{e}");
    assert!(e.contains("ezra/a/TOKEN"), "{e}");
    // A configured key file that does not exist is not created.
    let options = StateOptions {
        key_file: Some(dir.path().join("missing.key")),
        ..StateOptions::default()
    };
    assert!(StateStore::open(dir.path(), &options).is_err());
    assert!(!dir.path().join("missing.key").exists());
}

/// A store with some content, then damaged by `damage`.
fn damaged_store(how: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    {
        let s = StateStore::open(dir.path(), &StateOptions::default()).unwrap();
        for i in 0..200 {
            s.add_token(
                &format!("hash{i}"),
                &TokenInfo {
                    id: format!("t{i}"),
                    owner: "ezra".into(),
                    created_at: "now".into(),
                },
            )
            .unwrap();
        }
    }
    let path = dir.path().join(STATE_FILE);
    damage::damage(&path, how);
    (dir, path)
}

#[test]
fn damaged_state_files_are_errors_naming_the_file_never_panics_nor_empty_starts() {
    for how in damage::DAMAGES {
        let (dir, path) = damaged_store(how);
        let result =
            std::panic::catch_unwind(|| StateStore::open(dir.path(), &StateOptions::default()));
        let Ok(result) = result else {
            panic!("{how}: panicked");
        };
        match result {
            // Garbage only in free pages is no damage: then everything
            // the store held is still there.
            Ok(s) => {
                assert!(
                    matches!(how, "middle" | "tail"),
                    "{how}: opened a damaged file"
                );
                assert_eq!(
                    s.tokens().unwrap().len(),
                    200,
                    "{how}: opened with tokens lost"
                );
            }
            Err(e) => {
                let e = format!("{e:#}");
                assert!(e.contains(&path.display().to_string()), "{how}: {e}");
                assert!(e.contains("--move-damaged-aside"), "{how}: {e}");
                assert!(!e.contains('\n'), "{how}: {e}");
            }
        }
    }
}

#[test]
fn a_damaged_file_moves_aside_only_when_asked() {
    let (dir, path) = damaged_store("zero");
    let options = StateOptions {
        damaged: Damaged::MoveAside,
        ..StateOptions::default()
    };
    let s = StateStore::open(dir.path(), &options).unwrap();
    assert!(s.tokens().unwrap().is_empty());
    let aside: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("state.redb.damaged-"))
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::metadata(dir.path().join(&aside[0])).unwrap().len(),
        0
    );
    assert!(std::fs::metadata(&path).unwrap().len() > 0);
}

/// The serving versions of rollouts are kept for the flows that still
/// declare one, on the same algorithm, and forgotten with the declaration
/// that removes them (a deleted flow, a removed rollout, another algorithm).
#[test]
fn a_declaration_change_forgets_the_serving_versions_of_rollouts_it_removes() {
    let dir = tempfile::tempdir().unwrap();
    let s = StateStore::open(dir.path(), &StateOptions::default()).unwrap();
    let serving = |algorithm: &str| RolloutServing {
        algorithm: algorithm.into(),
        version: "0.1.0".parse().unwrap(),
    };
    for flow in ["kept", "deleted", "moved"] {
        s.set_rollout_serving(flow, &serving("o/a")).unwrap();
    }
    let rollouts = [
        ("kept".to_string(), "o/a".to_string()),
        ("moved".to_string(), "o/b".to_string()),
    ];
    s.set_desired(&serde_json::json!({}), None, &rollouts)
        .unwrap();
    assert_eq!(s.rollout_serving("kept").unwrap(), Some(serving("o/a")));
    assert_eq!(s.rollout_serving("deleted").unwrap(), None);
    assert_eq!(s.rollout_serving("moved").unwrap(), None);
    s.set_desired(&serde_json::json!({}), None, &[]).unwrap();
    assert_eq!(s.rollout_serving("kept").unwrap(), None);
}

#[test]
fn declarations_of_the_first_format_keep_a_kafka_flows_partition_order() {
    let dir = tempfile::tempdir().unwrap();
    let flows = serde_json::json!({ "flows": [
        { "name": "k", "ordering": "none" },
        { "name": "e", "ordering": "key" },
    ] });
    {
        // What the first format stored: every flow's ordering, no format.
        let s = StateStore::open(dir.path(), &StateOptions::default()).unwrap();
        let tx = s.db.begin_write().unwrap();
        tx.open_table(META)
            .unwrap()
            .insert("desired", flows.to_string().as_str())
            .unwrap();
        tx.commit().unwrap();
    }
    let s = StateStore::open(dir.path(), &StateOptions::default()).unwrap();
    let (read, _) = s.desired::<serde_json::Value>().unwrap().unwrap();
    assert_eq!(
        read,
        serde_json::json!({ "flows": [{ "name": "k" }, { "name": "e", "ordering": "key" }] })
    );
    // Written again, an explicit "none" is kept: it means no order now.
    s.set_desired(&flows, None, &[]).unwrap();
    assert_eq!(s.desired::<serde_json::Value>().unwrap().unwrap().0, flows);
}
