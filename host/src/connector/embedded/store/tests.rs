use std::path::Path;
use std::time::Instant;

use super::super::log;
use super::*;
use crate::message::{InboundMessage, OutboundMessage};

fn msg(body: &str) -> OutboundMessage {
    OutboundMessage {
        payload: body.as_bytes().to_vec(),
        headers: vec![("k".into(), "v".into())],
    }
}

const LEASE: Duration = Duration::from_secs(30);
const WAIT: Duration = Duration::from_millis(50);

#[tokio::test]
async fn a_peek_stops_at_its_byte_budget() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.redb")).unwrap();
    let big = "x".repeat(1000);
    store
        .publish("t", (0..10).map(|_| msg(&big)).collect())
        .await
        .unwrap();
    assert_eq!(store.peek("t", 100).unwrap().len(), 10);
    // The first message always comes back; the budget stops the rest.
    assert_eq!(store.peek_bounded("t", 100, 2500).unwrap().len(), 3);
    assert_eq!(store.peek_bounded("t", 100, 1).unwrap().len(), 1);
}

#[tokio::test]
async fn publish_receive_ack_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.redb")).unwrap();
    store.publish("t", vec![msg("a"), msg("b")]).await.unwrap();
    let got = store.receive("t", 10, LEASE, WAIT).await.unwrap();
    let bodies: Vec<_> = got.iter().map(|(m, _)| m.payload.clone()).collect();
    assert_eq!(bodies, vec![b"a".to_vec(), b"b".to_vec()]);
    assert_eq!(got[0].0.attempt, 1);
    assert_eq!(got[0].0.headers, vec![("k".to_string(), "v".to_string())]);
    // Leased messages are not handed out twice.
    assert!(
        store
            .receive("t", 10, LEASE, WAIT)
            .await
            .unwrap()
            .is_empty()
    );
    for (_, lease) in &got {
        store.ack(lease).await.unwrap();
    }
    assert!(store.peek("t", 10).unwrap().is_empty());
}

#[tokio::test]
async fn release_redelivers_after_the_delay_with_a_higher_count() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.redb")).unwrap();
    store.publish("t", vec![msg("a")]).await.unwrap();
    let (_, lease) = store.receive("t", 1, LEASE, WAIT).await.unwrap().remove(0);
    store
        .release(&lease, Duration::from_millis(300))
        .await
        .unwrap();
    assert!(store.receive("t", 1, LEASE, WAIT).await.unwrap().is_empty());
    let again = store
        .receive("t", 1, LEASE, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(again[0].0.attempt, 2);
    // The first lease is stale now.
    assert!(matches!(
        store.ack(&lease).await,
        Err(StoreError::LeaseLost { .. })
    ));
}

#[tokio::test]
async fn an_expired_lease_redelivers() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.redb")).unwrap();
    store.publish("t", vec![msg("a")]).await.unwrap();
    store
        .receive("t", 1, Duration::from_millis(100), WAIT)
        .await
        .unwrap();
    let again = store
        .receive("t", 1, LEASE, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].0.attempt, 2);
}

#[tokio::test]
async fn reopening_keeps_counts_and_frees_leases_but_not_delays() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    {
        let store = Store::open(&path).unwrap();
        store
            .publish("t", vec![msg("leased"), msg("delayed")])
            .await
            .unwrap();
        let got = store.receive("t", 2, LEASE, WAIT).await.unwrap();
        store
            .release(&got[1].1, Duration::from_secs(3600))
            .await
            .unwrap();
    }
    let store = reopen(&path);
    let got = store.receive("t", 2, LEASE, WAIT).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].0.payload, b"leased");
    assert_eq!(got[0].0.attempt, 2);
    assert_eq!(store.peek("t", 10).unwrap().len(), 2);
}

/// A copy of the lock's descriptor (what a child process forked by another
/// thread holds until its exec) does not keep a dropped store's directory
/// locked.
#[tokio::test]
async fn a_dropped_store_unlocks_even_when_its_lock_descriptor_was_copied() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s");
    let store = Store::open(&path).unwrap();
    let copy = store.shared._lock.try_clone().unwrap();
    drop(store);
    let reopened = Store::open(&path);
    drop(copy);
    assert!(reopened.is_ok(), "{:?}", reopened.err());
}

/// Reopens `path`: a dropped store has released its lock (its writer is
/// joined on drop), so this succeeds at once.
fn reopen(path: &Path) -> Store {
    Store::open(path).unwrap()
}

/// The receive counts, sorted.
fn attempts(got: &[(InboundMessage, Lease)]) -> Vec<u32> {
    let mut a: Vec<u32> = got.iter().map(|(m, _)| m.attempt).collect();
    a.sort();
    a
}

fn payloads(got: &[(InboundMessage, Lease)]) -> Vec<Vec<u8>> {
    got.iter().map(|(m, _)| m.payload.clone()).collect()
}

#[tokio::test]
async fn receiving_commits_once_per_block_not_per_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.redb")).unwrap();
    let n = 1000;
    store
        .publish("t", (0..n).map(|i| msg(&i.to_string())).collect())
        .await
        .unwrap();
    let before = store.commits();
    let mut leases = Vec::new();
    while leases.len() < n {
        let got = store.receive("t", 100, LEASE, WAIT).await.unwrap();
        assert!(!got.is_empty());
        leases.extend(got.into_iter().map(|(_, l)| l));
    }
    // One commit moved the receive mark past all of them.
    assert_eq!(store.commits() - before, 1);
    // Extending a lease commits nothing either.
    store.extend(&leases[0], LEASE).await.unwrap();
    assert_eq!(store.commits() - before, 1);
    store.ack(&leases[0]).await.unwrap();
    assert_eq!(store.commits() - before, 2);
}

#[tokio::test]
async fn settle_writes_the_outputs_and_deletes_the_input_in_one_commit() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    {
        let store = Store::open(&path).unwrap();
        store.publish("in", vec![msg("a"), msg("b")]).await.unwrap();
        let got = store.receive("in", 2, LEASE, WAIT).await.unwrap();
        let before = store.commits();
        store
            .settle(
                &got[0].1,
                vec![
                    ("out".into(), vec![msg("a1"), msg("a2")]),
                    ("other".into(), vec![msg("a3")]),
                ],
            )
            .await
            .unwrap();
        assert_eq!(store.commits() - before, 1);
        // Settled once: a second settle of the same lease writes nothing.
        assert!(matches!(
            store
                .settle(&got[0].1, vec![("out".into(), vec![msg("again")])])
                .await,
            Err(StoreError::LeaseLost { .. })
        ));
        let out = store.receive("out", 10, LEASE, WAIT).await.unwrap();
        assert_eq!(payloads(&out), vec![b"a1".to_vec(), b"a2".to_vec()]);
        assert_eq!(store.peek("other", 10).unwrap().len(), 1);
    }
    // After a crash: the input is gone for good, the outputs are there.
    let store = reopen(&path);
    let left = store.peek("in", 10).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].payload, b"b");
    assert_eq!(store.peek("out", 10).unwrap().len(), 2);
}

#[tokio::test]
async fn a_crash_counts_one_more_receive_below_the_mark_and_a_close_none() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    {
        let store = Store::open(&path).unwrap();
        store
            .publish("t", vec![msg("a"), msg("b"), msg("c")])
            .await
            .unwrap();
        let got = store.receive("t", 1, LEASE, WAIT).await.unwrap();
        assert_eq!(got[0].0.attempt, 1);
        // Dropped without a close: a crash.
    }
    let store = reopen(&path);
    // "a" was being handled: its receive counts. "b" and "c" were below
    // the mark too (it is moved a block at a time): one receive more.
    let got = store.receive("t", 3, LEASE, WAIT).await.unwrap();
    assert_eq!(attempts(&got), vec![2, 2, 2]);
    // A receive after a crash is counted again at the next crash.
    drop(store);
    let store = reopen(&path);
    let got = store.receive("t", 3, LEASE, WAIT).await.unwrap();
    assert_eq!(attempts(&got), vec![3, 3, 3]);
    // A clean close writes the exact counts: nothing extra next time.
    store.release(&got[2].1, Duration::ZERO).await.unwrap();
    store.close().await.unwrap();
    drop(store);
    let store = reopen(&path);
    let got = store.receive("t", 3, LEASE, WAIT).await.unwrap();
    assert_eq!(attempts(&got), vec![4, 4, 4]);
    // Messages published after the mark was last moved count nothing.
    store.publish("t", vec![msg("d")]).await.unwrap();
    store.close().await.unwrap();
    drop(store);
    let store = reopen(&path);
    store.publish("t", vec![msg("e")]).await.unwrap();
    let got = store.receive("t", 10, LEASE, WAIT).await.unwrap();
    assert_eq!(attempts(&got), vec![1, 1, 5, 5, 5]);
}

#[tokio::test]
async fn remove_by_id_deletes_one_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.redb")).unwrap();
    let ids = store.publish("t", vec![msg("a"), msg("b")]).await.unwrap();
    assert!(store.remove_by_id("t", &ids[0]).await.unwrap());
    assert!(!store.remove_by_id("t", &ids[0]).await.unwrap());
    let left = store.peek("t", 10).unwrap();
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].id, ids[1]);
}

/// A small tmpfs, unmounted on drop.
struct Tmpfs(tempfile::TempDir);

impl Tmpfs {
    /// `None` where mounting is not permitted (not root).
    fn mount(size: &str) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Self(dir))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.0.path())
            .status();
    }
}

/// Fills the file system of `dir` with `dir/filler` until it is full.
fn fill(dir: &Path) {
    use std::io::Write;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let block = vec![1u8; 64 << 10];
    while f.write_all(&block).and_then(|_| f.sync_all()).is_ok() {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_makes_the_store_unavailable_then_it_recovers_by_itself() {
    let Some(fs) = Tmpfs::mount("6m") else {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    };
    let path = fs.0.path().join("s.redb");
    let store = Store::open(&path).unwrap();
    let mut published = store.publish("t", vec![msg("before")]).await.unwrap();
    fill(fs.0.path());
    // Writes fail once redb runs out of space in its file.
    let big = OutboundMessage {
        payload: vec![7u8; 64 << 10],
        headers: Vec::new(),
    };
    let mut failed = None;
    for _ in 0..200 {
        match store.publish("t", vec![big.clone()]).await {
            Ok(ids) => published.extend(ids),
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let failed = failed.expect("writes never failed on a full disk");
    assert!(matches!(failed, StoreError::Unavailable { .. }), "{failed}");
    let health = store.health().unwrap_err();
    assert!(health.contains(&path.display().to_string()), "{health}");
    // While unavailable: writes fail at once, receives wait and get nothing.
    assert!(matches!(
        store.publish("t", vec![msg("during")]).await,
        Err(StoreError::Unavailable { .. })
    ));
    assert!(
        store
            .receive("t", 10, LEASE, WAIT)
            .await
            .unwrap()
            .is_empty()
    );
    // Still unavailable after a few reopen attempts while the disk is full.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(store.health().is_err());

    std::fs::remove_file(fs.0.path().join("filler")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.health().is_err() {
        assert!(Instant::now() < deadline, "did not recover within 10 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    published.extend(store.publish("t", vec![msg("after")]).await.unwrap());
    // Nothing acknowledged was lost; everything is received.
    let got = store
        .receive("t", 1000, LEASE, WAIT)
        .await
        .unwrap()
        .into_iter()
        .map(|(m, _)| m.id)
        .collect::<Vec<_>>();
    assert_eq!(got, published);
}

fn small(dir: &Path) -> Store {
    let options = StoreOptions {
        segment_bytes: 4096,
        ..StoreOptions::default()
    };
    Store::open_with(dir, &options).unwrap()
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    files.sort();
    files
}

#[tokio::test]
async fn segments_roll_and_go_once_their_messages_are_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let store = small(&path);
    let body = "x".repeat(300);
    for _ in 0..100 {
        store.publish("t", vec![msg(&body)]).await.unwrap();
    }
    // 100 × ~330 bytes in segments of 4 KiB.
    assert!(store.segments() >= 8, "{}", store.segments());
    for (_, lease) in store.receive("t", 1000, LEASE, WAIT).await.unwrap() {
        store.ack(&lease).await.unwrap();
    }
    // The next roll deletes every segment whose messages are all gone.
    for _ in 0..20 {
        let (_, lease) = {
            store.publish("t", vec![msg(&body)]).await.unwrap();
            store.receive("t", 1, LEASE, WAIT).await.unwrap().remove(0)
        };
        store.ack(&lease).await.unwrap();
    }
    assert!(store.segments() <= 2, "{}", store.segments());
    // The cleaner thread unlinks the files soon after.
    let deadline = Instant::now() + Duration::from_secs(10);
    while segment_files(&path).len() != store.segments() {
        assert!(Instant::now() < deadline, "{:?}", segment_files(&path));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until `path` exists.
async fn appears(path: &Path) -> std::fs::Metadata {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(meta) = std::fs::metadata(path) {
            return meta;
        }
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_roll_takes_the_segment_the_cleaner_prepared_and_a_leftover_is_harmless() {
    use std::os::unix::fs::MetadataExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let tmp = |id: u64| log::ahead_path(&path, id);
    let mut published = Vec::new();
    let body = "x".repeat(300);
    {
        let store = small(&path);
        // Segment 1 is the active one; 2 is prepared once 1 is a quarter
        // full (4 messages of 300 bytes), its space written with zeros.
        for _ in 0..4 {
            published.extend(store.publish("t", vec![msg(&body)]).await.unwrap());
        }
        let prepared = appears(&tmp(2)).await.ino();
        // Filled and synced before it is handed over.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(std::fs::metadata(tmp(2)).unwrap().len(), 4096);
        while store.segments() < 2 {
            published.extend(store.publish("t", vec![msg(&body)]).await.unwrap());
        }
        // The roll renamed the prepared file into place (the same inode);
        // its frames overwrite the zeros, the file does not grow.
        let rolled = std::fs::metadata(path.join(log::segment_name(2))).unwrap();
        assert_eq!(rolled.ino(), prepared);
        assert_eq!(rolled.len(), 4096);
        // The cleaner prepares the one after once 2 is a quarter full.
        for _ in 0..4 {
            published.extend(store.publish("t", vec![msg(&body)]).await.unwrap());
        }
        appears(&tmp(3)).await;
    }
    // The prepared file left behind by the drop is not a segment, and the
    // zeros after segment 2's last frame are not a message: cut off.
    let store = small(&path);
    let second = std::fs::metadata(path.join(log::segment_name(2))).unwrap();
    assert!(second.len() < 4096, "{} bytes", second.len());
    let names: Vec<_> = segment_files(&path)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, [1, 2, 3].map(log::segment_name));
    let got: Vec<_> = store
        .receive("t", 1000, LEASE, WAIT)
        .await
        .unwrap()
        .into_iter()
        .map(|(m, _)| m.id)
        .collect();
    assert_eq!(got, published);
}

#[tokio::test]
async fn a_message_left_alone_is_copied_forward_and_the_log_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    {
        let store = small(&path);
        store
            .publish("parked", vec![msg("stays"), msg("stays too")])
            .await
            .unwrap();
        let (_, lease) = store
            .receive("parked", 1, LEASE, WAIT)
            .await
            .unwrap()
            .remove(0);
        store.release(&lease, Duration::ZERO).await.unwrap();
        let body = "y".repeat(500);
        for _ in 0..1000 {
            store.publish("t", vec![msg(&body)]).await.unwrap();
            let (_, lease) = store.receive("t", 1, LEASE, WAIT).await.unwrap().remove(0);
            store.ack(&lease).await.unwrap();
            assert!(store.segments() <= 8, "{} segments", store.segments());
        }
        // The parked messages were moved: the first segment is gone (a
        // close waits for the cleaner).
        store.close().await.unwrap();
        assert!(!path.join(log::segment_name(1)).exists());
    }
    let store = small(&path);
    let got = store.peek("parked", 10).unwrap();
    let bodies: Vec<_> = got.iter().map(|m| m.payload.clone()).collect();
    assert_eq!(bodies, vec![b"stays".to_vec(), b"stays too".to_vec()]);
    // The count written by the release moved with the message.
    assert_eq!(got[0].attempt, 1);
    assert_eq!(got[0].headers, vec![("k".to_string(), "v".to_string())]);
    assert!(store.peek("t", 10).unwrap().is_empty());
}

#[test]
fn a_roll_that_cannot_wait_for_the_cleaner_never_shares_its_file() {
    // The cleaner is still writing zeros into segment 2 prepared ahead when
    // the writer creates segment 2 itself: what the cleaner writes next
    // must not land in the segment the writer uses.
    let dir = tempfile::tempdir().unwrap();
    let cleaners = log::prepare_segment(&log::ahead_path(dir.path(), 2), 2, 0).unwrap();
    let mut first = Vec::new();
    log::put_next(&mut first, "t", 7);
    let (writers, len) = log::create_segment(dir.path(), 2, &first).unwrap();
    use std::os::unix::fs::FileExt;
    cleaners
        .write_all_at(&[0u8; 4096], log::HEADER_BYTES)
        .unwrap();
    drop((cleaners, writers));
    let mut nexts = Vec::new();
    let replayed = log::replay(dir.path(), 2, true, |r, _| {
        if let log::Record::Next(topic, next) = r {
            nexts.push((topic.to_string(), next));
        }
    })
    .unwrap();
    assert_eq!(nexts, [("t".to_string(), 7)]);
    assert_eq!(replayed.good_len, len);
}

#[test]
fn a_scan_behind_a_large_torn_frame_in_a_prepared_segment_is_quick() {
    // 1 MiB of a torn frame's bytes (random), then the zeros of a prepared
    // segment: about one position in 50 reads as a length that fits in
    // them, and without the cheap check each would be checksummed over
    // tens of MiB (a minute or more in all).
    let dir = tempfile::tempdir().unwrap();
    let path = log::ahead_path(dir.path(), 1);
    let file = log::prepare_segment(&path, 1, 64 << 20).unwrap();
    let mut torn = vec![0u8; 1 << 20];
    let mut x: u32 = 0x9e37_79b9;
    for b in torn.iter_mut() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *b = x as u8;
    }
    torn[..4].copy_from_slice(&((8u32 << 20).to_le_bytes()));
    *torn.last_mut().unwrap() = 1;
    use std::os::unix::fs::FileExt;
    file.write_all_at(&torn, log::HEADER_BYTES).unwrap();
    std::fs::rename(&path, dir.path().join(log::segment_name(1))).unwrap();
    let started = Instant::now();
    let replayed = log::replay(dir.path(), 1, true, |_, _| {}).unwrap();
    assert_eq!(replayed.good_len, log::HEADER_BYTES);
    assert_eq!(replayed.torn, torn.len() as u64);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_torn_last_frame_is_cut_off_but_damage_elsewhere_stops_the_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    {
        let store = small(&path);
        for i in 0..3 {
            store
                .publish("t", vec![msg(&format!("m{i}"))])
                .await
                .unwrap();
        }
    }
    // A frame a crash cut short at the end of the newest segment.
    let newest = segment_files(&path).pop().unwrap();
    let good = std::fs::metadata(&newest).unwrap().len();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&newest)
            .unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9]).unwrap();
        // In a segment prepared ahead, zeros follow it.
        f.write_all(&[0; 4000]).unwrap();
    }
    {
        let store = small(&path);
        assert_eq!(store.peek("t", 10).unwrap().len(), 3);
        assert_eq!(std::fs::metadata(&newest).unwrap().len(), good);
    }
    // The same segment, no longer the newest, cut short: damage.
    let mut bytes = std::fs::read(&newest).unwrap();
    bytes.truncate(bytes.len() - 1);
    std::fs::write(&newest, &bytes).unwrap();
    let refused = |path: &Path, file: &Path| {
        let Err(e) = Store::open(path) else {
            panic!("opened a damaged log");
        };
        let e = e.to_string();
        assert!(e.contains(&file.display().to_string()), "{e}");
        assert!(e.contains("--move-damaged-aside"), "{e}");
    };
    refused(&path, &newest);
    // A garbled byte in the middle of a frame: damage.
    bytes.push(0);
    let at = bytes.len() - 8;
    bytes[at] ^= 0xff;
    std::fs::write(&newest, &bytes).unwrap();
    refused(&path, &newest);
    // Moving it aside starts empty and keeps the damaged directory.
    let options = StoreOptions {
        damaged: Damaged::MoveAside,
        ..StoreOptions::default()
    };
    let store = Store::open_with(&path, &options).unwrap();
    assert!(store.peek("t", 10).unwrap().is_empty());
    let aside = std::fs::read_dir(dir.path())
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with("log.damaged-")
        })
        .count();
    assert_eq!(aside, 1);
}

#[tokio::test]
async fn a_second_store_on_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _store = Store::open(dir.path()).unwrap();
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::Locked { .. })
    ));
}
