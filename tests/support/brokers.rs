//! The four broker kinds behind one interface, for the conformance suite:
//! each starts its server (the embedded broker needs none; Kafka is tansu,
//! SQS is moto, Service Bus is the protocol double), creates its topics or
//! queues, gives the router's `[[brokers]]` and `[[topics]]` blocks, and
//! publishes and reads back with the broker's own client (the embedded
//! broker through the router's API: it has no other).
//!
//! A server that is not installed fails the test loudly, as in the
//! broker-specific tests: `EVENTFLOW_TANSU` and `EVENTFLOW_MOTO_SERVER` must
//! be set (`cargo xtask test` sets them).

#![allow(dead_code)]

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;

use crate::moto::Moto;
use crate::servicebus_server::{QueueSpec, ServiceBusServer};
use crate::support::{Plugins, Router};
use crate::tansu;

/// The broker kinds the router supports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Embedded,
    Kafka,
    Sqs,
    ServiceBus,
}

impl Kind {
    /// The kind as the dead-letter envelope's `source.kind` names it.
    pub fn envelope_kind(self) -> &'static str {
        match self {
            Kind::Embedded => "embedded",
            Kind::Kafka => "kafka",
            Kind::Sqs => "sqs",
            Kind::ServiceBus => "servicebus",
        }
    }

    /// How long the slowest of its consumers may take to start receiving
    /// (tansu's first consumer-group join takes about 20 s).
    pub fn join(self) -> Duration {
        match self {
            Kind::Kafka => Duration::from_secs(120),
            _ => Duration::from_secs(30),
        }
    }
}

/// A SAS key the Service Bus double accepts.
const SB_KEY: &str = "c2VjcmV0LWtleS1mb3ItdGVzdHM=";

enum Server {
    Embedded,
    Kafka { bootstrap: String },
    Sqs { moto: Moto },
    ServiceBus { server: ServiceBusServer },
}

/// One broker under test, with its topics created.
pub struct Broker {
    pub kind: Kind,
    server: Server,
    /// Topic name → the broker's address for it.
    addresses: HashMap<String, String>,
    /// SQS reads delete what they receive: what was read so far, per topic.
    read: RefCell<HashMap<String, Vec<String>>>,
}

fn unique(name: &str) -> String {
    format!("{name}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

impl Broker {
    /// Starts the broker (Kafka: the test binary's shared tansu) and creates
    /// these topics. Redelivery is quick where the broker has a timeout for
    /// it: SQS queues have a 3 s visibility timeout, Service Bus queues a
    /// 2 s lock.
    pub fn start(kind: Kind, topics: &[&str]) -> Self {
        Self::start_with_lease(kind, topics, Duration::from_secs(3), Duration::from_secs(2))
    }

    /// [`Broker::start`] with an SQS visibility timeout of `visibility` and
    /// a Service Bus lock of `lock`, for a test that must not see a lease
    /// run out on a loaded machine (whole seconds).
    pub fn start_with_lease(
        kind: Kind,
        topics: &[&str],
        visibility: Duration,
        lock: Duration,
    ) -> Self {
        let mut addresses = HashMap::new();
        let server = match kind {
            Kind::Embedded => {
                for t in topics {
                    addresses.insert(t.to_string(), t.to_string());
                }
                Server::Embedded
            }
            Kind::Kafka => {
                let bootstrap = tansu::shared();
                for t in topics {
                    addresses.insert(t.to_string(), unique(t));
                }
                let names: Vec<&str> = topics.iter().map(|t| addresses[*t].as_str()).collect();
                tansu::create_topics(&bootstrap, &names, 2);
                Server::Kafka { bootstrap }
            }
            Kind::Sqs => {
                let moto = Moto::start();
                for t in topics {
                    let url = moto.queue(
                        t,
                        &[(
                            QueueAttributeName::VisibilityTimeout,
                            visibility.as_secs().to_string(),
                        )],
                    );
                    addresses.insert(t.to_string(), url);
                }
                Server::Sqs { moto }
            }
            Kind::ServiceBus => {
                let specs: Vec<QueueSpec> = topics
                    .iter()
                    .map(|t| QueueSpec {
                        name: t.to_string(),
                        lock_duration: lock,
                        max_delivery_count: 10,
                    })
                    .collect();
                for t in topics {
                    addresses.insert(t.to_string(), t.to_string());
                }
                let server = ServiceBusServer::start(
                    "eventflow-test",
                    "RootManageSharedAccessKey",
                    SB_KEY,
                    &specs,
                );
                Server::ServiceBus { server }
            }
        };
        Self {
            kind,
            server,
            addresses,
            read: RefCell::new(HashMap::new()),
        }
    }

    /// The router's name for the broker connection.
    pub fn name(&self) -> &'static str {
        match self.kind {
            Kind::Embedded => "local",
            Kind::Kafka => "kafka",
            Kind::Sqs => "aws",
            Kind::ServiceBus => "sb",
        }
    }

    /// The broker's own name for a topic (a Kafka topic, a queue URL).
    pub fn address(&self, topic: &str) -> &str {
        &self.addresses[topic]
    }

    /// The `[[brokers]]` block.
    pub fn broker_config(&self) -> String {
        match &self.server {
            Server::Embedded => "[[brokers]]\nname = \"local\"\nkind = \"embedded\"\n".into(),
            // A short session: a group member killed with -9 is replaced in
            // seconds, not librdkafka's default 45.
            Server::Kafka { bootstrap } => format!(
                "[[brokers]]\nname = \"kafka\"\nkind = \"kafka\"\nbootstrap_servers = \"{bootstrap}\"\nproperties = {{ \"session.timeout.ms\" = \"6000\", \"heartbeat.interval.ms\" = \"1000\" }}\n"
            ),
            Server::Sqs { moto } => moto.broker(),
            Server::ServiceBus { server } => format!(
                "[[brokers]]\nname = \"sb\"\nkind = \"servicebus\"\nconnection_string = {{ env = \"SB_CONNECTION\" }}\nendpoint = \"{}\"\nreceive_wait_secs = 1\n",
                server.url
            ),
        }
    }

    /// A `[[topics]]` block for one of the broker's topics, with the
    /// algorithms (`owner/name`) that may consume from and publish to it.
    pub fn topic(&self, name: &str, consumers: &[&str], publishers: &[&str]) -> String {
        let list = |l: &[&str]| {
            l.iter()
                .map(|a| format!("{a:?}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        format!(
            "[[topics]]\nname = \"{name}\"\nbroker = \"{}\"\naddress = {:?}\nconsumers = [{}]\npublishers = [{}]\n",
            self.name(),
            self.addresses[name],
            list(consumers),
            list(publishers),
        )
    }

    /// Writes the configuration (this broker's block, `extra_brokers`, then
    /// `body`: topics and flows) and starts a router with the broker's
    /// credentials in its environment.
    pub fn router_with(&self, extra_brokers: &str, body: &str) -> Router {
        let config = format!("{}\n{extra_brokers}\n{body}", self.broker_config());
        let mut router = Router::configure(&config, Plugins::Shared);
        match &self.server {
            Server::Sqs { .. } => crate::moto::credentials(&mut router),
            Server::ServiceBus { server } => {
                router.set_env("SB_CONNECTION", &server.connection_string(SB_KEY))
            }
            Server::Embedded | Server::Kafka { .. } => {}
        }
        router.launch();
        router
    }

    /// [`Broker::router_with`] with no other broker.
    pub fn router(&self, body: &str) -> Router {
        self.router_with("", body)
    }

    /// Publishes text messages to a topic with the broker's own client (the
    /// embedded broker's through the router's API).
    pub fn publish(&self, router: &Router, topic: &str, bodies: &[String]) {
        let address = &self.addresses[topic];
        match &self.server {
            Server::Embedded => router.publish(topic, bodies),
            Server::Kafka { bootstrap } => tansu::produce_text(bootstrap, address, bodies),
            Server::Sqs { moto } => moto.send(address, bodies),
            Server::ServiceBus { server } => {
                for b in bodies {
                    server.send(address, b);
                }
            }
        }
    }

    /// Every message that reached a topic (payloads, as text), waiting up to
    /// `timeout` for at least `at_least`; what there is after the timeout
    /// otherwise. Reads do not disturb each other: an SQS read deletes what
    /// it receives, so the broker remembers it for the next.
    pub fn read(
        &self,
        router: &Router,
        topic: &str,
        at_least: usize,
        timeout: Duration,
    ) -> Vec<String> {
        let address = &self.addresses[topic];
        let deadline = Instant::now() + timeout;
        match &self.server {
            Server::Kafka { bootstrap } => tansu::read_all(bootstrap, address, at_least, timeout)
                .into_iter()
                .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
                .collect(),
            Server::Sqs { moto } => {
                let mut read = self.read.borrow_mut();
                let seen = read.entry(topic.to_string()).or_default();
                let more = at_least.saturating_sub(seen.len());
                let got = moto.drain(
                    address,
                    more,
                    deadline.saturating_duration_since(Instant::now()),
                );
                seen.extend(got.iter().map(|m| m.body().unwrap_or_default().to_string()));
                seen.clone()
            }
            Server::Embedded | Server::ServiceBus { .. } => loop {
                let got = self.peek(router, topic);
                if got.len() >= at_least || Instant::now() > deadline {
                    return got;
                }
                std::thread::sleep(Duration::from_millis(100));
            },
        }
    }

    fn peek(&self, router: &Router, topic: &str) -> Vec<String> {
        match &self.server {
            Server::Embedded => router
                .peek(self.name(), topic)
                .iter()
                .map(|m| m["payload"].as_str().unwrap_or_default().to_string())
                .collect(),
            Server::ServiceBus { server } => server
                .messages(&self.addresses[topic])
                .iter()
                .map(|m| String::from_utf8_lossy(&m.body).into_owned())
                .collect(),
            _ => unreachable!("peek is for the embedded broker and Service Bus"),
        }
    }

    /// How many messages a consumed topic still holds, in flight ones
    /// included; `None` where the broker cannot say (Kafka keeps messages
    /// and moves the group's offsets instead).
    pub fn remaining(&self, router: &Router, topic: &str) -> Option<usize> {
        match &self.server {
            Server::Kafka { .. } => None,
            Server::Embedded | Server::ServiceBus { .. } => Some(self.peek(router, topic).len()),
            Server::Sqs { moto } => {
                let attributes = moto.block_on(async {
                    moto.client()
                        .get_queue_attributes()
                        .queue_url(&self.addresses[topic])
                        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                        .send()
                        .await
                        .unwrap()
                });
                let count = |a: QueueAttributeName| -> usize {
                    attributes
                        .attributes()
                        .and_then(|m| m.get(&a))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                };
                Some(
                    count(QueueAttributeName::ApproximateNumberOfMessages)
                        + count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
                )
            }
        }
    }
}
