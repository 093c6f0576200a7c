//! moto's SQS (and S3) server on a free loopback port, and an SDK client
//! for the tests' own set-up and checks. `EVENTFLOW_MOTO_SERVER` names the
//! `moto_server` executable (`cargo xtask test` sets it).

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_sqs::Client;
use aws_sdk_sqs::types::QueueAttributeName;

/// A running moto server; stopped on drop.
pub struct Moto {
    child: Child,
    port: u16,
    env: Vec<(String, String)>,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
    rt: tokio::runtime::Runtime,
    client: Client,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Moto {
    /// Starts a server.
    pub fn start() -> Self {
        Self::start_with_env(&[])
    }

    /// Starts a server with extra environment variables.
    pub fn start_with_env(env: &[(&str, &str)]) -> Self {
        let server = std::env::var("EVENTFLOW_MOTO_SERVER")
            .expect("EVENTFLOW_MOTO_SERVER is not set: run the tests with `cargo xtask test`");
        let _ = server;
        let port = free_port();
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let child = spawn(port, &env);
        let url = format!("http://127.0.0.1:{port}");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(client_for(&url, "testing", "testing"));
        Self {
            child,
            port,
            env,
            url,
            rt,
            client,
        }
    }

    /// Stops the server (the broker goes down).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port (with no queues: moto keeps them in
    /// memory).
    pub fn restart(&mut self) {
        self.child = spawn(self.port, &self.env);
    }

    /// Runs a future on the test's runtime.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// The SDK client.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Creates a queue with attributes; returns its URL.
    pub fn queue(&self, name: &str, attributes: &[(QueueAttributeName, String)]) -> String {
        self.block_on(async {
            let mut req = self.client.create_queue().queue_name(name);
            for (k, v) in attributes {
                req = req.attributes(k.clone(), v.clone());
            }
            req.send().await.unwrap().queue_url().unwrap().to_string()
        })
    }

    /// The ARN of a queue.
    pub fn arn(&self, url: &str) -> String {
        self.block_on(async {
            let out = self
                .client
                .get_queue_attributes()
                .queue_url(url)
                .attribute_names(QueueAttributeName::QueueArn)
                .send()
                .await
                .unwrap();
            out.attributes().unwrap()[&QueueAttributeName::QueueArn].clone()
        })
    }

    /// Sends text messages.
    pub fn send(&self, url: &str, bodies: &[String]) {
        self.block_on(async {
            for b in bodies {
                self.client
                    .send_message()
                    .queue_url(url)
                    .message_body(b)
                    .send()
                    .await
                    .unwrap();
            }
        })
    }

    /// Sends text messages `(group, body)` to a FIFO queue, each with its
    /// message group and a deduplication id of its own.
    pub fn send_grouped(&self, url: &str, messages: &[(String, String)]) {
        self.block_on(async {
            for (i, (group, body)) in messages.iter().enumerate() {
                self.client
                    .send_message()
                    .queue_url(url)
                    .message_body(body)
                    .message_group_id(group)
                    .message_deduplication_id(format!("m{i}"))
                    .send()
                    .await
                    .unwrap();
            }
        })
    }

    /// Receives and deletes every message of a queue, waiting up to
    /// `timeout` for at least `at_least`.
    pub fn drain(
        &self,
        url: &str,
        at_least: usize,
        timeout: Duration,
    ) -> Vec<aws_sdk_sqs::types::Message> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        loop {
            let batch = self.block_on(async {
                self.client
                    .receive_message()
                    .queue_url(url)
                    .max_number_of_messages(10)
                    .wait_time_seconds(1)
                    .message_attribute_names("All")
                    .message_system_attribute_names(
                        aws_sdk_sqs::types::MessageSystemAttributeName::All,
                    )
                    .send()
                    .await
                    .unwrap()
                    .messages
                    .unwrap_or_default()
            });
            for m in &batch {
                self.block_on(
                    self.client
                        .delete_message()
                        .queue_url(url)
                        .receipt_handle(m.receipt_handle().unwrap())
                        .send(),
                )
                .unwrap();
            }
            got.extend(batch);
            if got.len() >= at_least || Instant::now() > deadline {
                return got;
            }
        }
    }

    /// Creates an S3 bucket (moto takes an unsigned request).
    pub fn bucket(&self, name: &str) {
        let (status, body) =
            crate::support::http_raw("PUT", &format!("{}/{name}", self.url), None, None);
        assert_eq!(status, 200, "cannot create bucket {name}: {body}");
    }

    /// Every object of a bucket: key and contents, sorted by key.
    pub fn objects(&self, bucket: &str) -> Vec<(String, Vec<u8>)> {
        use futures::TryStreamExt;
        use object_store::{ObjectStore, ObjectStoreExt};
        let store = self.s3(bucket);
        self.block_on(async {
            let metas: Vec<_> = store.list(None).try_collect().await.unwrap();
            let mut objects = Vec::new();
            for m in metas {
                let bytes = store.get(&m.location).await.unwrap().bytes().await;
                objects.push((m.location.to_string(), bytes.unwrap().to_vec()));
            }
            objects.sort();
            objects
        })
    }

    /// Deletes an object of a bucket.
    pub fn delete_object(&self, bucket: &str, key: &str) {
        use object_store::ObjectStoreExt;
        let store = self.s3(bucket);
        self.block_on(store.delete(&object_store::path::Path::from(key)))
            .unwrap();
    }

    /// A client of a bucket of this server.
    fn s3(&self, bucket: &str) -> object_store::aws::AmazonS3 {
        object_store::aws::AmazonS3Builder::new()
            .with_bucket_name(bucket)
            .with_endpoint(&self.url)
            .with_allow_http(true)
            .with_region("us-east-1")
            .with_access_key_id("testing")
            .with_secret_access_key("testing")
            .build()
            .unwrap()
    }

    /// A broker connection named `aws` for this server.
    pub fn broker(&self) -> String {
        format!(
            "[[brokers]]\nname = \"aws\"\nkind = \"sqs\"\nregion = \"us-east-1\"\nendpoint_url = \"{}\"\nwait_time_secs = 1\n",
            self.url
        )
    }
}

fn spawn(port: u16, env: &[(String, String)]) -> Child {
    let server = std::env::var("EVENTFLOW_MOTO_SERVER")
        .expect("EVENTFLOW_MOTO_SERVER is not set: run the tests with `cargo xtask test`");
    let child = Command::new(server)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("cannot start moto_server");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto did not start within 30 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

/// An SDK client for `url` with these credentials.
pub async fn client_for(url: &str, key: &str, secret: &str) -> Client {
    let creds = aws_sdk_sqs::config::Credentials::new(key, secret, None, None, "test");
    let config = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(creds)
        .build();
    Client::from_conf(config)
}

/// The router environment for moto: fake credentials, no instance metadata.
pub fn credentials(router: &mut crate::support::Router) {
    router.set_env("AWS_ACCESS_KEY_ID", "testing");
    router.set_env("AWS_SECRET_ACCESS_KEY", "testing");
    router.set_env("AWS_EC2_METADATA_DISABLED", "true");
}
