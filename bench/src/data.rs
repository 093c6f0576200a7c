//! B8 data collections: the cost of one `data::put` of 1 KiB on a bucket
//! (moto's S3 on loopback) against the local backend (temporary file,
//! fsync, rename, fsync of the directory), sequential puts through the
//! router's own `Collections`, so each is durable when it returns.

use std::time::{Duration, Instant};

use eventflow::data::{Collections, DataConfig, DataUri};
use eventflow::secret::SecretRef;
use hdrhistogram::Histogram;
use serde::Serialize;

/// One backend's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct PutCost {
    /// Puts made.
    pub puts: usize,
    /// Bytes per put.
    pub bytes: usize,
    /// Puts per second, one at a time.
    pub puts_per_sec: f64,
    /// Median latency of one put, in microseconds.
    pub p50_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
}

/// B8's result.
#[derive(Debug, Clone, Serialize)]
pub struct DataPuts {
    /// The data directory.
    pub local: Result<PutCost, String>,
    /// A bucket of moto's S3.
    pub s3: Result<PutCost, String>,
}

/// B8.
pub async fn b8(o: &crate::Options) -> DataPuts {
    let n = o.pick(50usize, 500);
    let local = async {
        let dir = tempfile::tempdir()?;
        let collections = Collections::open(dir.path())?;
        puts(&collections, n).await
    }
    .await
    .map_err(|e: anyhow::Error| format!("{e:#}"));
    eprintln!("  local: {local:?}");
    let s3 = match std::env::var("EVENTFLOW_MOTO_SERVER") {
        Ok(bin) => s3(&bin, n).await.map_err(|e| format!("{e:#}")),
        Err(_) => Err(
            "skipped: EVENTFLOW_MOTO_SERVER is not set (run through `cargo xtask bench`)".into(),
        ),
    };
    eprintln!("  s3: {s3:?}");
    DataPuts { local, s3 }
}

async fn s3(bin: &str, n: usize) -> anyhow::Result<PutCost> {
    let port = crate::brokers::free_port();
    let args = ["-H", "127.0.0.1", "-p", &port.to_string()].map(String::from);
    let _server = crate::brokers::start(bin, &args, port)?;
    create_bucket(port, "bench")?;
    let testing = || Some(SecretRef::Value("testing".into()));
    let config = DataConfig {
        backend: "s3://bench/data".into(),
        region: Some("us-east-1".into()),
        endpoint_url: Some(format!("http://127.0.0.1:{port}")),
        access_key_id: testing(),
        secret_access_key: testing(),
        ..DataConfig::default()
    };
    let collections = config.open(std::path::Path::new("unused"), None)?;
    puts(&collections, n).await
}

/// moto creates a bucket on an unsigned `PUT /<bucket>`.
fn create_bucket(port: u16, name: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        stream,
        "PUT /{name} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    anyhow::ensure!(
        response.starts_with("HTTP/1.1 200"),
        "cannot create bucket {name}: {}",
        response.lines().next().unwrap_or_default()
    );
    Ok(())
}

/// `n` sequential puts of 1 KiB, each to its own file, after one warm-up.
async fn puts(collections: &Collections, n: usize) -> anyhow::Result<PutCost> {
    const BYTES: usize = 1024;
    let contents = vec![0x5au8; BYTES];
    let uri = |i: usize| DataUri::parse(&format!("data://bench/puts/{i}.bin"));
    collections.put(&uri(n)?, contents.clone()).await?;
    let mut latency = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        collections.put(&uri(i)?, contents.clone()).await?;
        latency.record(t.elapsed().as_micros() as u64)?;
    }
    Ok(PutCost {
        puts: n,
        bytes: BYTES,
        puts_per_sec: n as f64 / started.elapsed().as_secs_f64(),
        p50_us: latency.value_at_quantile(0.5),
        p99_us: latency.value_at_quantile(0.99),
    })
}

/// The report's section.
pub fn markdown(b8: &DataPuts) -> String {
    let mut s = String::from(
        "\n## B8 data collections (`data::put` of 1 KiB, one at a time, durable when it returns)\n\n| backend | puts/s | p50 | p99 |\n|---|---|---|---|\n",
    );
    for (name, cost) in [("local (fsync)", &b8.local), ("S3 (moto)", &b8.s3)] {
        match cost {
            Ok(c) => s.push_str(&format!(
                "| {name} | {:.0} | {} µs | {} µs |\n",
                c.puts_per_sec, c.p50_us, c.p99_us
            )),
            Err(why) => s.push_str(&format!("| {name} | {why} | - | - |\n")),
        }
    }
    s
}
