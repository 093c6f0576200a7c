//! An HTTP proxy in front of moto that plays an IAM policy: it forwards the
//! SQS actions it allows and answers every other one with SQS's
//! `AccessDenied`, recording each action asked for. moto itself cannot
//! enforce a policy on one queue's actions without IAM set-up the tests have
//! no client for; this answers exactly what a queue-owner role would.

#![allow(dead_code)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

/// The actions of the platform's queue-owner role on a consumed queue, and
/// `SendMessage` for published ones (batch calls are authorised by the
/// single action).
pub const QUEUE_OWNER_ROLE: &[&str] = &[
    "ReceiveMessage",
    "DeleteMessage",
    "DeleteMessageBatch",
    "ChangeMessageVisibility",
    "ChangeMessageVisibilityBatch",
    "GetQueueAttributes",
    "SendMessage",
    "SendMessageBatch",
];

/// A running proxy; its threads end with the test process.
pub struct RoleProxy {
    /// `http://127.0.0.1:PORT`, the endpoint to give the router.
    pub url: String,
    seen: Arc<Mutex<Vec<String>>>,
    denied: Arc<Mutex<Vec<String>>>,
}

impl RoleProxy {
    /// Listens on a free port and forwards allowed actions to `upstream`
    /// (`http://127.0.0.1:PORT`).
    pub fn start(upstream: &str, allowed: &[&str]) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let upstream = upstream.strip_prefix("http://").unwrap().to_string();
        let allowed: Arc<HashSet<String>> =
            Arc::new(allowed.iter().map(|a| a.to_string()).collect());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let denied = Arc::new(Mutex::new(Vec::new()));
        let (s, d) = (seen.clone(), denied.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let (upstream, allowed, s, d) =
                    (upstream.clone(), allowed.clone(), s.clone(), d.clone());
                std::thread::spawn(move || {
                    let _ = serve(client, &upstream, &allowed, &s, &d);
                });
            }
        });
        Self { url, seen, denied }
    }

    /// Every action asked for so far, in order.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// The actions refused so far.
    pub fn denied(&self) -> Vec<String> {
        self.denied.lock().unwrap().clone()
    }
}

/// One request per client connection: read it, answer or forward it with
/// `Connection: close`, relay the answer, close.
fn serve(
    client: TcpStream,
    upstream: &str,
    allowed: &HashSet<String>,
    seen: &Mutex<Vec<String>>,
    denied: &Mutex<Vec<String>>,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(client.try_clone()?);
    let mut head = Vec::new();
    let mut length = 0usize;
    let mut target = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if lower.starts_with("x-amz-target:") {
            // `AmazonSQS.ListQueues`
            target = line
                .split_once(':')
                .and_then(|(_, v)| v.trim().rsplit('.').next().map(str::to_string));
        }
        if lower.starts_with("connection:") {
            continue;
        }
        head.push(line);
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    // The query protocol names the action in the form body.
    let action = target.or_else(|| {
        String::from_utf8_lossy(&body)
            .split('&')
            .find_map(|kv| kv.strip_prefix("Action=").map(str::to_string))
    });
    let action = action.unwrap_or_else(|| "?".into());
    seen.lock().unwrap().push(action.clone());
    let mut client = client;
    if !allowed.contains(&action) {
        denied.lock().unwrap().push(action.clone());
        let message = format!(
            "{{\"__type\":\"com.amazon.coral.service#AccessDeniedException\",\"message\":\"User: arn:aws:sts::123456789012:assumed-role/READ_SQS/eventflow is not authorized to perform: sqs:{action} because no identity-based policy allows the sqs:{action} action\"}}"
        );
        write!(
            client,
            "HTTP/1.1 400 Bad Request\r\nContent-Type: application/x-amz-json-1.0\r\nx-amzn-query-error: AccessDenied;Sender\r\nx-amzn-RequestId: proxy\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{message}",
            message.len()
        )?;
        return Ok(());
    }
    let mut up = TcpStream::connect(upstream)?;
    for line in &head {
        up.write_all(line.as_bytes())?;
    }
    up.write_all(b"Connection: close\r\n\r\n")?;
    up.write_all(&body)?;
    let mut answer = Vec::new();
    up.read_to_end(&mut answer)?;
    client.write_all(&answer)?;
    client.shutdown(std::net::Shutdown::Both)
}
