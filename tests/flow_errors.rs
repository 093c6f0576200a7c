//! Errors that repeat for every message do not drown the operator: they are
//! logged a few times an interval with a count, and a flow's last error is
//! one short line. Against moto's SQS server, where a dead-letter queue that
//! does not exist once gave 687 ERROR lines for 60 messages.

#[path = "support/moto.rs"]
mod moto;
mod support;

use std::time::{Duration, Instant};

use moto::Moto;
use support::{Plugins, Router, wait_for};

fn topic(name: &str, url: &str, consumers: &str, publishers: &str) -> String {
    format!(
        "[[topics]]\nname = \"{name}\"\naddress = \"{url}\"\nconsumers = [{consumers}]\npublishers = [{publishers}]\n"
    )
}

#[test]
fn a_missing_dead_letter_queue_is_logged_a_few_times_an_interval_with_a_count() {
    let moto = Moto::start();
    let incoming = moto.queue("rejected", &[]);
    let missing = format!("{}/123456789012/no-such-dlq", moto.url);
    let mut router = Router::configure(
        &format!(
            "{}\n{}{}[[flows]]\nname = \"rejects\"\ntopic = \"in\"\nalgorithm = \"test/always_reject\"\ndead_letter_topic = \"dlq\"\nconcurrency = 16\n[flows.retry]\nbackoff = \"fixed\"\nbase_ms = 100\n",
            moto.broker(),
            topic("in", &incoming, "\"test/always_reject\"", ""),
            topic("dlq", &missing, "", "\"test/always_reject\""),
        ),
        Plugins::Shared,
    );
    moto::credentials(&mut router);
    router.launch();
    let bodies: Vec<String> = (0..60).map(|i| format!("{{\"n\": {i}}}")).collect();
    moto.send(&incoming, &bodies);

    // Every message fails, cannot be dead-lettered and comes back, again
    // and again.
    let started = Instant::now();
    wait_for(
        "many failed dead-letter publishes",
        Duration::from_secs(90),
        || (router.flow("rejects")["received"].as_u64().unwrap() >= 180).then_some(()),
    );
    std::thread::sleep(Duration::from_secs(12).saturating_sub(started.elapsed()));
    let elapsed = started.elapsed().as_secs_f64();
    let log = router.log();
    let errors: Vec<&str> = log.lines().filter(|l| l.contains(" ERROR ")).collect();
    let intervals = (elapsed / 10.0).ceil() + 1.0;
    assert!(
        errors.len() as f64 <= 2.0 * intervals,
        "{} ERROR lines in {elapsed:.0} s:\n{}",
        errors.len(),
        errors.join("\n")
    );
    let counted = errors.iter().any(|l| {
        l.split_whitespace()
            .filter_map(|f| f.strip_prefix("suppressed="))
            .any(|n| n.parse::<u64>().is_ok_and(|n| n > 0))
    });
    assert!(
        counted,
        "no line counts the repeats:\n{}",
        errors.join("\n")
    );
    assert!(
        router
            .metrics()
            .contains("eventflow_log_lines_suppressed_total{flow=\"rejects\"}"),
        "no suppressed-lines metric"
    );

    // The flow's last error is one short line that still says what is
    // wrong (it alternates with the algorithm's rejections).
    let last = wait_for(
        "the dead-letter error as the last error",
        Duration::from_secs(30),
        || {
            let last = router.flow("rejects")["last_error"][1]
                .as_str()?
                .to_string();
            last.contains("dead-letter").then_some(last)
        },
    );
    assert!(!last.contains('\n') && !last.contains('\r'), "{last:?}");
    assert!(last.chars().count() <= 300, "{} chars: {last}", last.len());
    assert!(last.contains("no-such-dlq"), "{last}");
    // `eventflow status` gives the flow one line.
    let status = router.cli_ok(&["status"]);
    for line in status.lines() {
        assert!(
            ["broker ", "FLOW ", "rejects "]
                .iter()
                .any(|p| line.starts_with(p)),
            "a stray line in the status: {line:?}\n{status}"
        );
    }
}
