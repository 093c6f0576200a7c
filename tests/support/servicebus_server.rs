//! A protocol test double of Azure Service Bus's REST API, for the tests: no
//! Service Bus emulator can be installed offline. It is small, in memory,
//! and follows Microsoft's REST reference for the calls the
//! `azure_messaging_servicebus` crate makes:
//!
//! - send: `POST /{queue}/messages` (body, `BrokerProperties`, custom
//!   properties as headers) → 201;
//! - peek-lock: `POST /{queue}/messages/head?timeout=N` → 201 with the body,
//!   `BrokerProperties` (`LockToken`, `SequenceNumber`, `DeliveryCount`,
//!   `LockedUntilUtc`, ...), the custom properties and a `Location` to settle
//!   with; 204 when nothing arrives within the timeout;
//! - complete: `DELETE /{queue}/messages/{id}/{lock}`; unlock (abandon):
//!   `PUT`; renew the lock: `POST` → 200, or 404 for a lock that is gone;
//! - an expired lock makes the message available again; the next delivery
//!   counts one more;
//! - a message whose delivery count has reached the queue's max delivery
//!   count moves to `{queue}/$deadletterqueue` instead of being delivered
//!   again;
//! - every call needs a valid `SharedAccessSignature` (HMAC-SHA256 of the
//!   URL-encoded resource and expiry under the key named by `skn`): 401
//!   otherwise.
//!
//! Not modelled: sessions, topics and subscriptions, scheduled messages,
//! TTL expiry, duplicate detection, the management API.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Router as Http;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A queue's settings.
#[derive(Clone, Debug)]
pub struct QueueSpec {
    /// The queue's name.
    pub name: String,
    /// How long a peek-lock lasts.
    pub lock_duration: Duration,
    /// Deliveries before the message moves to the dead-letter queue.
    pub max_delivery_count: u32,
}

impl QueueSpec {
    /// A queue with a 30 s lock and ten deliveries.
    pub fn new(name: &str) -> Self {
        Self {
            name: name.into(),
            lock_duration: Duration::from_secs(30),
            max_delivery_count: 10,
        }
    }
}

/// A message as the double stores it.
#[derive(Clone, Debug)]
pub struct StoredMessage {
    pub id: String,
    pub body: Vec<u8>,
    pub properties: Vec<(String, String)>,
    pub content_type: Option<String>,
    pub sequence_number: i64,
    pub enqueued: SystemTime,
    pub delivery_count: u32,
    lock: Option<(String, Instant)>,
}

#[derive(Default)]
struct Queue {
    spec: Option<QueueSpec>,
    messages: VecDeque<StoredMessage>,
}

#[derive(Default)]
struct Namespace {
    queues: HashMap<String, Queue>,
    next_sequence: i64,
}

struct Shared {
    namespace: String,
    key_name: String,
    key: String,
    state: Mutex<Namespace>,
}

/// The running double; stops when dropped.
pub struct ServiceBusServer {
    /// `http://127.0.0.1:PORT`
    pub url: String,
    shared: Arc<Shared>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ServiceBusServer {
    fn drop(&mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

const DEAD_LETTER_SUFFIX: &str = "/$deadletterqueue";

impl ServiceBusServer {
    /// Starts the double for namespace `namespace` with one shared access
    /// key and these queues (each also gets its dead-letter queue).
    pub fn start(namespace: &str, key_name: &str, key: &str, queues: &[QueueSpec]) -> Self {
        let mut ns = Namespace::default();
        for q in queues {
            ns.queues.insert(
                q.name.clone(),
                Queue {
                    spec: Some(q.clone()),
                    ..Default::default()
                },
            );
            let mut dlq = QueueSpec::new(&format!("{}{DEAD_LETTER_SUFFIX}", q.name));
            dlq.max_delivery_count = u32::MAX;
            ns.queues.insert(
                dlq.name.clone(),
                Queue {
                    spec: Some(dlq),
                    ..Default::default()
                },
            );
        }
        let shared = Arc::new(Shared {
            namespace: namespace.into(),
            key_name: key_name.into(),
            key: key.into(),
            state: Mutex::new(ns),
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app_state = shared.clone();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let app = Http::new()
                    .route("/{*rest}", post(post_any).put(put_any).delete(delete_any))
                    .with_state(app_state);
                axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = rx.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Self {
            url: format!("http://{addr}"),
            shared,
            shutdown: Some(tx),
            thread: Some(thread),
        }
    }

    /// The namespace connection string for `key`.
    pub fn connection_string(&self, key: &str) -> String {
        format!(
            "Endpoint=sb://{}.servicebus.windows.net/;SharedAccessKeyName={};SharedAccessKey={key}",
            self.shared.namespace, self.shared.key_name
        )
    }

    /// Enqueues a message, as a client would.
    pub fn send(&self, queue: &str, body: &str) {
        let mut ns = self.shared.state.lock().unwrap();
        enqueue(
            &mut ns,
            queue,
            body.as_bytes().to_vec(),
            Vec::new(),
            None,
            None,
        )
        .expect("the queue exists");
    }

    /// The messages of a queue (`name/$deadletterqueue` for its DLQ).
    pub fn messages(&self, queue: &str) -> Vec<StoredMessage> {
        let ns = self.shared.state.lock().unwrap();
        ns.queues
            .get(queue)
            .map(|q| q.messages.iter().cloned().collect())
            .unwrap_or_default()
    }
}

fn enqueue(
    ns: &mut Namespace,
    queue: &str,
    body: Vec<u8>,
    properties: Vec<(String, String)>,
    content_type: Option<String>,
    message_id: Option<String>,
) -> Result<(), StatusCode> {
    ns.next_sequence += 1;
    let seq = ns.next_sequence;
    let q = ns.queues.get_mut(queue).ok_or(StatusCode::NOT_FOUND)?;
    q.messages.push_back(StoredMessage {
        id: message_id.unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string()),
        body,
        properties,
        content_type,
        sequence_number: seq,
        enqueued: SystemTime::now(),
        delivery_count: 0,
        lock: None,
    });
    Ok(())
}

fn error(status: StatusCode, detail: &str) -> Response {
    (
        status,
        format!(
            "<Error><Code>{}</Code><Detail>{detail}</Detail></Error>",
            status.as_u16()
        ),
    )
        .into_response()
}

/// Checks the SAS token: the signature over `sr\nse` with the key named by
/// `skn`, and the expiry.
fn authorized(shared: &Shared, headers: &HeaderMap) -> Result<(), &'static str> {
    let unauthorized = |why: &'static str| Err(why);
    let Some(token) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("SharedAccessSignature "))
    else {
        return unauthorized("missing SharedAccessSignature");
    };
    let fields: HashMap<String, String> = url::form_urlencoded::parse(token.as_bytes())
        .into_owned()
        .collect();
    let (Some(sr), Some(sig), Some(se), Some(skn)) = (
        fields.get("sr"),
        fields.get("sig"),
        fields.get("se"),
        fields.get("skn"),
    ) else {
        return unauthorized("malformed SharedAccessSignature");
    };
    if *skn != shared.key_name {
        return unauthorized("unknown SharedAccessKeyName");
    }
    let expiry: u64 = se.parse().unwrap_or(0);
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if expiry < now {
        return unauthorized("expired token");
    }
    let encoded_sr: String = url::form_urlencoded::byte_serialize(sr.as_bytes()).collect();
    let mut mac = Hmac::<Sha256>::new_from_slice(shared.key.as_bytes()).unwrap();
    mac.update(format!("{encoded_sr}\n{se}").as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    if expected != *sig {
        return unauthorized("InvalidSignature: the token's signature does not match");
    }
    Ok(())
}

/// `queue/messages[/head | /{id}/{lock}]`, with queue names that may
/// contain `/` (the dead-letter queue).
enum Target {
    Messages(String),
    Head(String),
    Locked(String, String, String),
}

fn target(rest: &str) -> Option<Target> {
    let (queue, tail) = rest.split_once("/messages")?;
    let parts: Vec<&str> = tail.split('/').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [] => Some(Target::Messages(queue.into())),
        ["head"] => Some(Target::Head(queue.into())),
        [id, lock] => Some(Target::Locked(queue.into(), (*id).into(), (*lock).into())),
        _ => None,
    }
}

/// Headers that are HTTP's, not custom properties.
fn is_standard_header(name: &str) -> bool {
    matches!(
        name,
        "authorization"
            | "content-type"
            | "content-length"
            | "host"
            | "brokerproperties"
            | "accept"
            | "accept-encoding"
            | "user-agent"
            | "connection"
            | "transfer-encoding"
            | "x-ms-version"
    )
}

async fn post_any(
    State(shared): State<Arc<Shared>>,
    Path(rest): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(why) = authorized(&shared, &headers) {
        return error(StatusCode::UNAUTHORIZED, why);
    }
    match target(&rest) {
        Some(Target::Messages(queue)) => {
            let broker: serde_json::Value = headers
                .get("brokerproperties")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| serde_json::from_str(v).ok())
                .unwrap_or_default();
            let properties: Vec<(String, String)> = headers
                .iter()
                .filter(|(k, _)| !is_standard_header(k.as_str()))
                .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
                .collect();
            let content_type = headers
                .get("content-type")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            let mut ns = shared.state.lock().unwrap();
            match enqueue(
                &mut ns,
                &queue,
                body.to_vec(),
                properties,
                content_type,
                broker["MessageId"].as_str().map(str::to_string),
            ) {
                Ok(()) => StatusCode::CREATED.into_response(),
                Err(s) => error(s, &format!("queue {queue} does not exist")),
            }
        }
        Some(Target::Head(queue)) => {
            let wait = query
                .get("timeout")
                .and_then(|t| t.parse::<u64>().ok())
                .unwrap_or(60);
            let deadline = Instant::now() + Duration::from_secs(wait);
            loop {
                match lock_next(&shared, &queue) {
                    Err(s) => return error(s, &format!("queue {queue} does not exist")),
                    Ok(Some(r)) => return r,
                    Ok(None) if Instant::now() >= deadline => {
                        return StatusCode::NO_CONTENT.into_response();
                    }
                    Ok(None) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        }
        Some(Target::Locked(queue, id, lock)) => {
            // Renew the lock.
            let mut ns = shared.state.lock().unwrap();
            let Some(q) = ns.queues.get_mut(&queue) else {
                return error(StatusCode::NOT_FOUND, "no such queue");
            };
            let duration = q.spec.as_ref().map(|s| s.lock_duration).unwrap_or_default();
            match find_locked(q, &id, &lock) {
                Some(m) => {
                    m.lock = Some((lock, Instant::now() + duration));
                    StatusCode::OK.into_response()
                }
                None => error(StatusCode::GONE, "the lock was lost"),
            }
        }
        None => error(StatusCode::NOT_FOUND, "no such resource"),
    }
}

fn find_locked<'a>(q: &'a mut Queue, id: &str, lock: &str) -> Option<&'a mut StoredMessage> {
    let now = Instant::now();
    q.messages.iter_mut().find(|m| {
        m.id == id && matches!(&m.lock, Some((token, until)) if token == lock && *until > now)
    })
}

/// Locks the first available message, moving exhausted ones to the DLQ.
fn lock_next(shared: &Shared, queue: &str) -> Result<Option<Response>, StatusCode> {
    let mut ns = shared.state.lock().unwrap();
    let now = Instant::now();
    let q = ns.queues.get_mut(queue).ok_or(StatusCode::NOT_FOUND)?;
    let spec = q.spec.clone().expect("queues have specs");
    let mut dead = Vec::new();
    let mut picked = None;
    let mut i = 0;
    while i < q.messages.len() {
        let available = match &q.messages[i].lock {
            None => true,
            Some((_, until)) => *until <= now,
        };
        if !available {
            i += 1;
            continue;
        }
        if q.messages[i].delivery_count >= spec.max_delivery_count {
            dead.push(q.messages.remove(i).expect("index is in range"));
            continue;
        }
        picked = Some(i);
        break;
    }
    let response = picked.map(|i| {
        let m = &mut q.messages[i];
        let token = uuid::Uuid::new_v4().to_string();
        let until = now + spec.lock_duration;
        m.lock = Some((token.clone(), until));
        m.delivery_count += 1;
        let locked_until = SystemTime::now() + spec.lock_duration;
        let broker = serde_json::json!({
            "DeliveryCount": m.delivery_count,
            "EnqueuedSequenceNumber": 0,
            "EnqueuedTimeUtc": rfc2822(m.enqueued),
            "LockToken": token,
            "LockedUntilUtc": rfc2822(locked_until),
            "MessageId": m.id,
            "SequenceNumber": m.sequence_number,
            "State": "Active",
            "TimeToLive": 922337203685.4775,
        });
        let mut headers = HeaderMap::new();
        headers.insert(
            "brokerproperties",
            HeaderValue::from_str(&broker.to_string()).unwrap(),
        );
        headers.insert(
            "location",
            HeaderValue::from_str(&format!(
                "https://{}.servicebus.windows.net/{queue}/messages/{}/{token}",
                shared.namespace, m.id
            ))
            .unwrap(),
        );
        if let Some(ct) = &m.content_type {
            headers.insert("content-type", HeaderValue::from_str(ct).unwrap());
        }
        for (k, v) in &m.properties {
            if let (Ok(name), Ok(value)) = (
                axum::http::HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                headers.insert(name, value);
            }
        }
        (StatusCode::CREATED, headers, m.body.clone()).into_response()
    });
    if !dead.is_empty() {
        let dlq = format!("{queue}{DEAD_LETTER_SUFFIX}");
        for mut m in dead {
            m.lock = None;
            m.delivery_count = 0;
            if let Some(d) = ns.queues.get_mut(&dlq) {
                d.messages.push_back(m);
            }
        }
    }
    Ok(response)
}

fn rfc2822(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
    time::OffsetDateTime::from_unix_timestamp(secs)
        .unwrap()
        .format(&time::format_description::well_known::Rfc2822)
        .unwrap()
}

async fn put_any(
    State(shared): State<Arc<Shared>>,
    Path(rest): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(why) = authorized(&shared, &headers) {
        return error(StatusCode::UNAUTHORIZED, why);
    }
    let Some(Target::Locked(queue, id, lock)) = target(&rest) else {
        return error(StatusCode::NOT_FOUND, "no such resource");
    };
    let mut ns = shared.state.lock().unwrap();
    let Some(q) = ns.queues.get_mut(&queue) else {
        return error(StatusCode::NOT_FOUND, "no such queue");
    };
    match find_locked(q, &id, &lock) {
        Some(m) => {
            m.lock = None;
            StatusCode::OK.into_response()
        }
        None => error(StatusCode::GONE, "the lock was lost"),
    }
}

async fn delete_any(
    State(shared): State<Arc<Shared>>,
    Path(rest): Path<String>,
    headers: HeaderMap,
) -> Response {
    if let Err(why) = authorized(&shared, &headers) {
        return error(StatusCode::UNAUTHORIZED, why);
    }
    let Some(Target::Locked(queue, id, lock)) = target(&rest) else {
        return error(StatusCode::NOT_FOUND, "no such resource");
    };
    let mut ns = shared.state.lock().unwrap();
    let Some(q) = ns.queues.get_mut(&queue) else {
        return error(StatusCode::NOT_FOUND, "no such queue");
    };
    let now = Instant::now();
    let before = q.messages.len();
    q.messages.retain(|m| {
        !(m.id == id && matches!(&m.lock, Some((token, until)) if *token == lock && *until > now))
    });
    if q.messages.len() < before {
        StatusCode::OK.into_response()
    } else {
        error(StatusCode::GONE, "the lock was lost")
    }
}
