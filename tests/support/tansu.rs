//! tansu, a Kafka-protocol broker, on a free loopback port, and a small
//! Kafka client for the tests' own set-up and checks. `EVENTFLOW_TANSU`
//! names the binary (`cargo xtask test` sets it).
//!
//! [`shared`] starts one broker for the whole test binary, from a thread
//! that lives as long as the process: the broker gets SIGKILL when the
//! process exits (PR_SET_PDEATHSIG), so nothing is left behind.
//! [`Tansu::start`] starts one the test owns (and may stop and restart).

#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Header, Headers as _, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(port: u16) -> Child {
    let bin = std::env::var("EVENTFLOW_TANSU")
        .expect("EVENTFLOW_TANSU is not set: run the tests with `cargo xtask test`");
    let url = format!("tcp://127.0.0.1:{port}");
    let mut cmd = Command::new(bin);
    cmd.args([
        "broker",
        "--listener-url",
        &url,
        "--advertised-listener-url",
        &url,
    ])
    .args(["--storage-engine", "memory://tansu/"])
    .stdout(Stdio::null())
    .stderr(Stdio::null());
    // SAFETY: prctl is async-signal-safe; it asks the kernel to kill the
    // broker when the thread that started it ends.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd.spawn().expect("cannot start tansu");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "tansu did not start within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

/// The bootstrap address of the broker shared by this test binary.
pub fn shared() -> String {
    static SHARED: OnceLock<String> = OnceLock::new();
    SHARED
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let port = free_port();
                let mut child = spawn(port);
                tx.send(format!("127.0.0.1:{port}")).unwrap();
                let _ = child.wait();
            });
            rx.recv().unwrap()
        })
        .clone()
}

/// A broker owned by one test.
pub struct Tansu {
    child: Option<Child>,
    port: u16,
    /// `127.0.0.1:PORT`.
    pub bootstrap: String,
}

impl Tansu {
    /// Starts a broker.
    pub fn start() -> Self {
        let port = free_port();
        Self {
            child: Some(spawn(port)),
            port,
            bootstrap: format!("127.0.0.1:{port}"),
        }
    }

    /// Kills it.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port (empty: storage is in memory).
    pub fn restart(&mut self) {
        self.stop();
        self.child = Some(spawn(self.port));
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Creates topics with `partitions` partitions.
pub fn create_topics(bootstrap: &str, names: &[&str], partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let topics: Vec<NewTopic> = names
        .iter()
        .map(|n| NewTopic::new(n, partitions, TopicReplication::Fixed(1)))
        .collect();
    let results = runtime()
        .block_on(admin.create_topics(&topics, &AdminOptions::new()))
        .expect("create topics");
    for r in results {
        r.expect("create topic");
    }
}

/// A message to produce: payload and headers.
pub type Produced = (Vec<u8>, Vec<(String, Vec<u8>)>);

/// A producer for the tests' messages.
fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "30000")
        .create()
        .unwrap()
}

/// Produces messages to a topic.
pub fn produce(bootstrap: &str, topic: &str, messages: &[Produced]) {
    let producer = producer(bootstrap);
    runtime().block_on(async {
        for (i, (payload, headers)) in messages.iter().enumerate() {
            let mut h = OwnedHeaders::new();
            for (k, v) in headers {
                h = h.insert(Header {
                    key: k,
                    value: Some(v.as_slice()),
                });
            }
            let key = format!("k{i}");
            producer
                .send(
                    FutureRecord::to(topic)
                        .payload(payload)
                        .key(&key)
                        .headers(h),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produce");
        }
    });
}

/// Produces text messages.
pub fn produce_text(bootstrap: &str, topic: &str, bodies: &[String]) {
    let messages: Vec<Produced> = bodies
        .iter()
        .map(|b| (b.clone().into_bytes(), Vec::new()))
        .collect();
    produce(bootstrap, topic, &messages);
}

/// A consumed record: payload and headers.
pub struct Record {
    pub payload: Vec<u8>,
    pub headers: Vec<(String, String)>,
}

/// Reads every message of a topic from the beginning, waiting up to
/// `timeout` for at least `at_least`.
pub fn read_all(bootstrap: &str, topic: &str, at_least: usize, timeout: Duration) -> Vec<Record> {
    let deadline = Instant::now() + timeout;
    loop {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("group.id", format!("test-reader-{}", uuid::Uuid::new_v4()))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for t in metadata.topics() {
            for p in t.partitions() {
                tpl.add_partition_offset(t.name(), p.id(), Offset::Beginning)
                    .unwrap();
            }
        }
        consumer.assign(&tpl).unwrap();
        let mut out = Vec::new();
        let mut idle = 0;
        while idle < 6 {
            match consumer.poll(Duration::from_millis(500)) {
                Some(Ok(m)) => {
                    idle = 0;
                    let headers = m
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|x| {
                                    (
                                        x.key.to_string(),
                                        String::from_utf8_lossy(x.value.unwrap_or_default())
                                            .into_owned(),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    out.push(Record {
                        payload: m.payload().unwrap_or_default().to_vec(),
                        headers,
                    });
                }
                Some(Err(e)) => panic!("reading {topic}: {e}"),
                None => idle += 1,
            }
        }
        if out.len() >= at_least || Instant::now() > deadline {
            return out;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Produces text messages with the given record keys, one at a time.
pub fn produce_keyed(bootstrap: &str, topic: &str, messages: &[(String, String)]) {
    let producer = producer(bootstrap);
    runtime().block_on(async {
        for (key, body) in messages {
            producer
                .send(
                    FutureRecord::to(topic).payload(body).key(key),
                    Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("produce");
        }
    });
}
