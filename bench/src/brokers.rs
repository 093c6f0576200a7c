//! B7: the router against raw broker clients, on the same local servers in
//! the same run: a plain rdkafka consume-and-produce loop on tansu, a plain
//! SDK receive-and-delete loop on moto. Each is skipped, saying why, when
//! its server is not installed (`cargo xtask bench` installs both).
//!
//! Kafka runs twice, each time on a fresh tansu: at [`KafkaSetting::TUNED`]
//! (linger.ms 1, 64 messages in flight), where tansu is not what limits the
//! router, and at [`DEFAULTS`] (librdkafka's linger.ms of 5 ms, 8 in
//! flight), the setting that capped both loops at about 1,250 msgs/s: every
//! produce waits out the linger, so a loop with 8 messages in flight
//! finishes at most 8 per linger plus round trip. Fetch settings do not
//! matter here (the consumers drain a backlog, so a fetch never waits).

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

use crate::pipeline::{bed, kib};

/// The router and a raw client side by side.
#[derive(Debug, Serialize)]
pub struct Pair {
    /// Messages per run.
    pub messages: usize,
    /// Messages per second through the router.
    pub router: f64,
    /// Messages per second through the raw client loop.
    pub raw: f64,
    /// `router / raw`.
    pub ratio: f64,
    /// CPU time (user + system, every thread of this process: the router's
    /// runtime and its broker client's) per message through the router, in
    /// microseconds, from its first message settled to its last. Kafka only.
    pub router_cpu_us: Option<f64>,
    /// The same for the raw loop, from its first message received.
    pub raw_cpu_us: Option<f64>,
    /// The server's own CPU time (tansu's process) per message over the
    /// router's run, in microseconds. Kafka only.
    pub router_server_cpu_us: Option<f64>,
    /// The same over the raw loop's run.
    pub raw_server_cpu_us: Option<f64>,
    /// How the clients were set (Kafka only).
    pub kafka_setting: Option<KafkaSetting>,
}

/// B7's results; a stage that could not run says why.
#[derive(Debug, Serialize)]
pub struct Brokers {
    /// Kafka (tansu), at [`KafkaSetting::TUNED`]: the target's numbers.
    pub kafka: Result<Pair, String>,
    /// Kafka (tansu) at [`DEFAULTS`], the setting B7 used before, to show
    /// what capped it.
    pub kafka_defaults: Result<Pair, String>,
    /// SQS (moto).
    pub sqs: Result<Pair, String>,
}

/// B7.
pub async fn b7(o: &crate::Options) -> Brokers {
    let limit = Duration::from_secs(o.pick(120, 600));
    let kafka_at = |setting: KafkaSetting| async move {
        match std::env::var("EVENTFLOW_TANSU") {
            Ok(bin) => match tokio::time::timeout(limit, kafka(o, &bin, setting)).await {
                Ok(r) => r.map_err(|e| format!("{e:#}")),
                Err(_) => Err(format!("did not finish within {limit:?}")),
            },
            Err(_) => {
                Err("skipped: EVENTFLOW_TANSU is not set (run through `cargo xtask bench`)".into())
            }
        }
    };
    let kafka = kafka_at(KafkaSetting::TUNED).await;
    eprintln!("  kafka: {kafka:?}");
    let kafka_defaults = kafka_at(DEFAULTS).await;
    eprintln!("  kafka (defaults): {kafka_defaults:?}");
    let sqs = match std::env::var("EVENTFLOW_MOTO_SERVER") {
        Ok(bin) => match tokio::time::timeout(limit, sqs(o, &bin)).await {
            Ok(r) => r.map_err(|e| format!("{e:#}")),
            Err(_) => Err(format!("did not finish within {limit:?}")),
        },
        Err(_) => Err(
            "skipped: EVENTFLOW_MOTO_SERVER is not set (run through `cargo xtask bench`)".into(),
        ),
    };
    eprintln!("  sqs: {sqs:?}");
    Brokers {
        kafka,
        kafka_defaults,
        sqs,
    }
}

/// A server process killed on drop (and when this process dies).
pub(crate) struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .map(|l| l.local_addr().map(|a| a.port()).unwrap_or(0))
        .unwrap_or(0)
}

pub(crate) fn start(bin: &str, args: &[String], port: u16) -> anyhow::Result<Server> {
    let mut cmd = Command::new(bin);
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::null());
    // SAFETY: prctl is async-signal-safe.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let server = Server(cmd.spawn()?);
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "{bin} did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(server)
}

/// How a Kafka run sets its clients: both loops alike.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct KafkaSetting {
    /// The producers' `linger.ms`; `None` leaves librdkafka's default (5 ms).
    pub linger_ms: Option<u32>,
    /// Messages in flight: the raw loop's produces awaiting their acks; the
    /// router flow's `concurrency` (with `in_flight_per_partition` at least
    /// its share of the topic's partitions).
    pub in_flight: usize,
}

impl KafkaSetting {
    /// The setting the target is measured at: linger.ms 1 and 64 in
    /// flight, so neither the producer's wait nor a small window caps the
    /// loops (see [`DEFAULTS`]).
    pub const TUNED: Self = Self {
        linger_ms: Some(1),
        in_flight: 64,
    };

    /// One line.
    pub fn describe(&self) -> String {
        format!(
            "linger.ms {}, {} in flight",
            self.linger_ms
                .map_or("5 (librdkafka's default)".to_string(), |l| l.to_string()),
            self.in_flight
        )
    }
}

/// The setting B7 used before: librdkafka's default linger.ms (5 ms) and 8
/// in flight (the router's default concurrency). Each message then waits
/// about 5 ms for its produce batch to leave, so both loops stop near
/// 8 / (5 ms + a round trip), about 1,250/s, whatever the server.
pub const DEFAULTS: KafkaSetting = KafkaSetting {
    linger_ms: None,
    in_flight: 8,
};

/// Partitions of each benchmark topic.
const PARTITIONS: usize = 4;

/// CPU time (user + system) of another process so far, from `/proc`.
fn process_cpu_of(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // The fields after the command name (which may hold spaces) in
    // parentheses; utime and stime are the 14th and 15th of the line.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Duration::from_secs_f64((ticks(11) + ticks(12)) as f64 / hz)
}

/// CPU time of this process and of the server, from a start.
struct CpuMeter {
    server: u32,
    own: Duration,
    theirs: Duration,
}

impl CpuMeter {
    fn start(server: u32) -> Self {
        Self {
            server,
            own: crate::disk::process_cpu(),
            theirs: process_cpu_of(server),
        }
    }

    /// (this process, the server) per message since the start, in µs.
    fn per_message(&self, messages: u64) -> (Option<f64>, Option<f64>) {
        let per = |cpu: Duration| (messages > 0).then(|| cpu.as_secs_f64() * 1e6 / messages as f64);
        (
            per(crate::disk::process_cpu().saturating_sub(self.own)),
            per(process_cpu_of(self.server).saturating_sub(self.theirs)),
        )
    }
}

async fn kafka(o: &crate::Options, bin: &str, setting: KafkaSetting) -> anyhow::Result<Pair> {
    let n = o.pick(2_000usize, 20_000);
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let server = start(
        bin,
        &[
            "broker".into(),
            "--listener-url".into(),
            url.clone(),
            "--advertised-listener-url".into(),
            url,
            "--storage-engine".into(),
            "memory://tansu/".into(),
        ],
        port,
    )?;
    let server_pid = server.0.id();
    let bootstrap = format!("127.0.0.1:{port}");
    eprintln!(
        "  kafka ({}): tansu on {bootstrap}; creating topics",
        setting.describe()
    );
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;
    let topics: Vec<NewTopic> = ["raw-in", "raw-out", "r-in", "r-out"]
        .iter()
        .map(|t| NewTopic::new(t, PARTITIONS as i32, TopicReplication::Fixed(1)))
        .collect();
    for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("create {t}: {e}"))?;
    }
    let mut producer = ClientConfig::new();
    producer
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all");
    if let Some(linger) = setting.linger_ms {
        producer.set("linger.ms", linger.to_string());
    }
    let producer: FutureProducer = producer.create()?;
    for topic in ["raw-in", "r-in"] {
        let sends = (0..n).map(|i| {
            let p = kib(i);
            let key = format!("k{i}");
            let producer = producer.clone();
            async move {
                producer
                    .send(
                        FutureRecord::to(topic).payload(&p).key(&key),
                        Duration::from_secs(30),
                    )
                    .await
                    .map_err(|(e, _)| e)
            }
        });
        for r in futures::stream::iter(sends)
            .buffer_unordered(256)
            .collect::<Vec<_>>()
            .await
        {
            r?;
        }
    }

    eprintln!("  kafka: {n} messages produced to each input; the raw loop starts");
    // The raw loop: consume, produce the copy (`in_flight` at once), store
    // the offset.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "raw-loop")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.offset.store", "false")
        .create()?;
    consumer.subscribe(&["raw-in"])?;
    let mut first: Option<Instant> = None;
    let mut raw_meter = CpuMeter::start(server_pid);
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut done = 0usize;
    let mut received = 0usize;
    let deadline = Instant::now() + Duration::from_secs(600);
    while done < n {
        anyhow::ensure!(Instant::now() < deadline, "the raw loop stalled at {done}");
        if in_flight.len() >= setting.in_flight || (received >= n && !in_flight.is_empty()) {
            if let Some(r) = in_flight.next().await {
                let (partition, offset): (i32, i64) = r?;
                consumer.store_offset("raw-in", partition, offset)?;
                done += 1;
            }
            continue;
        }
        let m = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await;
        let Ok(m) = m else { continue };
        let m = m?;
        if first.is_none() {
            first = Some(Instant::now());
            raw_meter = CpuMeter::start(server_pid);
        }
        received += 1;
        let (partition, offset) = (m.partition(), m.offset());
        let body = m.payload().unwrap_or_default().to_vec();
        let key = m.key().unwrap_or_default().to_vec();
        let producer = producer.clone();
        in_flight.push(async move {
            producer
                .send(
                    FutureRecord::to("raw-out").payload(&body).key(&key),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|(e, _)| anyhow::anyhow!("{e}"))?;
            anyhow::Ok((partition, offset))
        });
    }
    let raw = n as f64 / first.map(|f| f.elapsed().as_secs_f64()).unwrap_or(f64::MAX);
    let (raw_cpu_us, raw_server_cpu_us) = raw_meter.per_message(n as u64);
    // The producer's and consumer's threads are part of the raw loop's cost;
    // drop them so they do not count against the router.
    drop(consumer);
    drop(producer);

    eprintln!("  kafka: raw loop {raw:.0}/s; the router starts");
    // The router: the same work through a flow with `in_flight` concurrency.
    let properties = setting
        .linger_ms
        .map(|l| format!("properties = {{ \"linger.ms\" = \"{l}\" }}\n"))
        .unwrap_or_default();
    let depth = setting.in_flight.div_ceil(PARTITIONS).max(8);
    let body = format!(
        r#"
[[brokers]]
name = "kafka"
kind = "kafka"
bootstrap_servers = "{bootstrap}"
{properties}
[[topics]]
name = "in"
address = "r-in"
consumers = ["examples/echo"]

[[topics]]
name = "out"
address = "r-out"
publishers = ["examples/echo"]

[[flows]]
name = "p"
topic = "in"
algorithm = "examples/echo/0.1.0"
output_topic = "out"
concurrency = {concurrency}

[flows.consumer]
in_flight_per_partition = {depth}
"#,
        concurrency = setting.in_flight,
    );
    let bed = bed(Some(&o.plugins), &body).await?;
    let started = Instant::now();
    while bed.settled("p") == 0 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(180),
            "the router's flow never started"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let first = Instant::now();
    let router_meter = CpuMeter::start(server_pid);
    let already = bed.settled("p");
    bed.wait_settled("p", n as u64, Duration::from_secs(600))
        .await?;
    let measured = n as u64 - already;
    let (router_cpu_us, router_server_cpu_us) = router_meter.per_message(measured);
    let router = measured as f64 / first.elapsed().as_secs_f64();
    bed.router.shutdown().await;
    drop(server);
    Ok(Pair {
        messages: n,
        router,
        raw,
        ratio: router / raw,
        router_cpu_us,
        raw_cpu_us,
        router_server_cpu_us,
        raw_server_cpu_us,
        kafka_setting: Some(setting),
    })
}

async fn sqs(o: &crate::Options, bin: &str) -> anyhow::Result<Pair> {
    // moto serves a few dozen messages a second and slows down as a queue
    // grows (3,000 did not drain within the stage's 600 s).
    let n = o.pick(300usize, 1_000);
    let port = free_port();
    let _server = start(
        bin,
        &[
            "-H".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ],
        port,
    )?;
    let endpoint = format!("http://127.0.0.1:{port}");
    // SAFETY: set before any thread reads the environment for credentials.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    }
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .endpoint_url(&endpoint)
        .load()
        .await;
    let client = aws_sdk_sqs::Client::new(&sdk);
    let mut urls = Vec::new();
    for q in ["raw", "router"] {
        let url = client
            .create_queue()
            .queue_name(q)
            .send()
            .await?
            .queue_url()
            .unwrap_or_default()
            .to_string();
        for chunk in (0..n).collect::<Vec<_>>().chunks(10) {
            let entries: Vec<_> = chunk
                .iter()
                .map(|i| {
                    aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                        .id(format!("m{i}"))
                        .message_body(String::from_utf8(kib(*i)).unwrap_or_default())
                        .build()
                })
                .collect::<Result<_, _>>()?;
            client
                .send_message_batch()
                .queue_url(&url)
                .set_entries(Some(entries))
                .send()
                .await?;
        }
        urls.push(url);
    }

    // The raw loop: two receivers, each receive 10 then delete them.
    let started = Instant::now();
    let done = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..2 {
        let (client, url, done) = (client.clone(), urls[0].clone(), done.clone());
        workers.push(tokio::spawn(async move {
            while done.load(std::sync::atomic::Ordering::Relaxed) < n {
                let out = client
                    .receive_message()
                    .queue_url(&url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .send()
                    .await?;
                let messages = out.messages.unwrap_or_default();
                if messages.is_empty() {
                    continue;
                }
                let entries: Vec<_> = messages
                    .iter()
                    .enumerate()
                    .map(|(i, m)| {
                        aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                            .id(format!("d{i}"))
                            .receipt_handle(m.receipt_handle().unwrap_or_default())
                            .build()
                    })
                    .collect::<Result<_, _>>()?;
                client
                    .delete_message_batch()
                    .queue_url(&url)
                    .set_entries(Some(entries))
                    .send()
                    .await?;
                done.fetch_add(messages.len(), std::sync::atomic::Ordering::Relaxed);
            }
            anyhow::Ok(())
        }));
    }
    for w in workers {
        w.await??;
    }
    let raw = n as f64 / started.elapsed().as_secs_f64();
    eprintln!("  sqs: raw loop {raw:.0}/s; the router starts");

    let body = format!(
        r#"
[[brokers]]
name = "aws"
kind = "sqs"
region = "us-east-1"
endpoint_url = "{endpoint}"
wait_time_secs = 1

[[topics]]
name = "in"
address = "{}"
consumers = ["examples/echo"]

[[flows]]
name = "p"
topic = "in"
algorithm = "examples/echo/0.1.0"
concurrency = 10
enabled = false
"#,
        urls[1]
    );
    let router = bed(Some(&o.plugins), &body)
        .await?
        .enable_and_drain(n)
        .await?;
    Ok(Pair {
        messages: n,
        router,
        raw,
        ratio: router / raw,
        router_cpu_us: None,
        raw_cpu_us: None,
        router_server_cpu_us: None,
        raw_server_cpu_us: None,
        kafka_setting: None,
    })
}
