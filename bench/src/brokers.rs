//! B7: the router against raw broker clients, on the same local servers in
//! the same run: a plain rdkafka consume-and-produce loop on tansu, a plain
//! SDK receive-and-delete loop on moto. Each is skipped, saying why, when
//! its server is not installed (`cargo xtask bench` installs both).

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
}

/// B7's results; a stage that could not run says why.
#[derive(Debug, Serialize)]
pub struct Brokers {
    /// Kafka (tansu).
    pub kafka: Result<Pair, String>,
    /// SQS (moto).
    pub sqs: Result<Pair, String>,
}

/// B7.
pub async fn b7(o: &crate::Options) -> Brokers {
    let limit = Duration::from_secs(o.pick(120, 600));
    let kafka = match std::env::var("EVENTFLOW_TANSU") {
        Ok(bin) => match tokio::time::timeout(limit, kafka(o, &bin)).await {
            Ok(r) => r.map_err(|e| format!("{e:#}")),
            Err(_) => Err(format!("did not finish within {limit:?}")),
        },
        Err(_) => {
            Err("skipped: EVENTFLOW_TANSU is not set (run through `cargo xtask bench`)".into())
        }
    };
    eprintln!("  kafka: {kafka:?}");
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
    Brokers { kafka, sqs }
}

/// A server process killed on drop (and when this process dies).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .map(|l| l.local_addr().map(|a| a.port()).unwrap_or(0))
        .unwrap_or(0)
}

fn start(bin: &str, args: &[String], port: u16) -> anyhow::Result<Server> {
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

async fn kafka(o: &crate::Options, bin: &str) -> anyhow::Result<Pair> {
    let n = o.pick(2_000usize, 20_000);
    let port = free_port();
    let url = format!("tcp://127.0.0.1:{port}");
    let _server = start(
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
    let bootstrap = format!("127.0.0.1:{port}");
    eprintln!("  kafka: tansu on {bootstrap}; creating topics");
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()?;
    let topics: Vec<NewTopic> = ["raw-in", "raw-out", "r-in", "r-out"]
        .iter()
        .map(|t| NewTopic::new(t, 4, TopicReplication::Fixed(1)))
        .collect();
    for r in admin.create_topics(&topics, &AdminOptions::new()).await? {
        r.map_err(|(t, e)| anyhow::anyhow!("create {t}: {e}"))?;
    }
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .create()?;
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
    // The raw loop: consume, produce the copy (8 in flight), store the offset.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", "raw-loop")
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.offset.store", "false")
        .create()?;
    consumer.subscribe(&["raw-in"])?;
    let mut first: Option<Instant> = None;
    let mut raw_cpu_start = crate::disk::process_cpu();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    let mut done = 0usize;
    let mut received = 0usize;
    let deadline = Instant::now() + Duration::from_secs(600);
    while done < n {
        anyhow::ensure!(Instant::now() < deadline, "the raw loop stalled at {done}");
        if in_flight.len() >= 8 || (received >= n && !in_flight.is_empty()) {
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
            raw_cpu_start = crate::disk::process_cpu();
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
    let raw_cpu = crate::disk::process_cpu().saturating_sub(raw_cpu_start);
    // The producer's and consumer's threads are part of the raw loop's cost;
    // drop them so they do not count against the router.
    drop(consumer);
    drop(producer);

    eprintln!("  kafka: raw loop {raw:.0}/s; the router starts");
    // The router: the same work through a flow with concurrency 8.
    let body = format!(
        r#"
[[brokers]]
name = "kafka"
kind = "kafka"
bootstrap_servers = "{bootstrap}"

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
concurrency = 8
"#
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
    let router_cpu_start = crate::disk::process_cpu();
    let already = bed.settled("p");
    bed.wait_settled("p", n as u64, Duration::from_secs(600))
        .await?;
    let router_cpu = crate::disk::process_cpu().saturating_sub(router_cpu_start);
    let router = (n as u64 - already) as f64 / first.elapsed().as_secs_f64();
    bed.router.shutdown().await;
    let per_message = |cpu: Duration, messages: u64| {
        (messages > 0).then(|| cpu.as_secs_f64() * 1e6 / messages as f64)
    };
    Ok(Pair {
        messages: n,
        router,
        raw,
        ratio: router / raw,
        router_cpu_us: per_message(router_cpu, n as u64 - already),
        raw_cpu_us: per_message(raw_cpu, n as u64),
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
    })
}
