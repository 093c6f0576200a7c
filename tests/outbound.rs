//! Algorithms' outgoing HTTP (`wasi:http`): only to granted origins, never
//! to a private address a grant does not name, never to the admin API, and
//! within the invocation's limits. Real binary, embedded broker, the
//! `test/fetch` algorithm, and small HTTP servers of the test on 127.0.0.1.

mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Plugins, Router, one_flow, wait_for};

/// A tiny HTTP/1.1 server: `/hello` answers `hello`, `/big` 64 KiB,
/// `/slow` after 5 s, `/redirect?to=URL` a 302 to URL, `/echo` the request
/// head it received, `/count` the length of the body it received,
/// `/customers/c42` a JSON record (other customers 404).
/// It records every request line and head.
struct Server {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Server {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let log = log.clone();
                std::thread::spawn(move || serve(stream, &log));
            }
        });
        Self { port, seen }
    }

    fn url(&self, host: &str, path: &str) -> String {
        format!("http://{host}:{}{path}", self.port)
    }

    fn requests(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(stream: TcpStream, log: &Mutex<Vec<String>>) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut head = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        head.push_str(&line);
    }
    let mut body = vec![0; length];
    let _ = reader.read_exact(&mut body);
    log.lock().unwrap().push(head.clone());
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
    let (status, extra, body) = match path.split_once('?').map_or(path.as_str(), |p| p.0) {
        "/hello" => ("200 OK", String::new(), "hello".to_string()),
        "/big" => ("200 OK", String::new(), "x".repeat(64 << 10)),
        "/slow" => {
            std::thread::sleep(Duration::from_secs(5));
            ("200 OK", String::new(), "late".to_string())
        }
        "/redirect" => {
            let to = path.split_once("?to=").map(|p| p.1).unwrap_or("/");
            ("302 Found", format!("location: {to}\r\n"), String::new())
        }
        "/echo" => ("200 OK", String::new(), head.clone()),
        "/count" => ("200 OK", String::new(), body.len().to_string()),
        "/customers/c42" => (
            "200 OK",
            "content-type: application/json\r\n".to_string(),
            r#"{"name": "Ada", "tier": "gold"}"#.to_string(),
        ),
        "/upload" => {
            // Late, so the client has tried to send the whole body first.
            std::thread::sleep(Duration::from_millis(500));
            ("200 OK", String::new(), "uploaded".to_string())
        }
        _ => ("404 Not Found", String::new(), String::new()),
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\n{extra}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
}

/// [`one_flow`] of `algorithm` with `flow_extra`, and a grant of
/// `origins` to it.
fn granted_flow(flow: &str, algorithm: &str, origins: &[String], flow_extra: &str) -> String {
    let origins: Vec<String> = origins.iter().map(|o| format!("{o:?}")).collect();
    format!(
        "{}\n[[outbound]]\nalgorithm = \"{algorithm}\"\norigins = [{}]\n",
        one_flow(flow, algorithm, flow_extra),
        origins.join(", ")
    )
}

/// A flow of `test/fetch` from `in` to `out`, the grant, and the flow's
/// limits.
fn config(origins: &[String], limits: &str) -> String {
    granted_flow(
        "fetch",
        "test/fetch",
        origins,
        &format!("max_receives = 1\n\n[flows.limits]\n{limits}"),
    )
}

/// Runs `test/fetch` on `input` and returns its results.
fn fetch(router: &Router, input: Value) -> Vec<Value> {
    let before = router.peek("local", "out").len();
    router.publish("in", &[input.to_string()]);
    let out = wait_for("the fetch output", Duration::from_secs(60), || {
        let out = router.peek("local", "out");
        (out.len() > before).then(|| out[before].clone())
    });
    let doc: Value = serde_json::from_str(out["payload"].as_str().unwrap()).unwrap();
    doc["results"].as_array().unwrap().clone()
}

fn one(router: &Router, url: &str) -> Value {
    fetch(router, json!({ "url": url })).remove(0)
}

fn assert_denied(result: &Value, what: &str) {
    assert_eq!(result["error"], "HttpRequestDenied", "{what}: {result}");
}

#[test]
fn only_granted_origins_at_public_or_named_addresses_are_reachable() {
    let granted = Server::start();
    let by_name = Server::start();
    let router = Router::start(&config(
        &[
            granted.url("127.0.0.1", ""),
            format!("http://localhost:{}", by_name.port),
        ],
        "",
    ));

    // Allowed: the origin names the address itself.
    let ok = one(&router, &granted.url("127.0.0.1", "/hello"));
    assert_eq!(ok["status"], 200, "{ok}");
    assert_eq!(ok["body"], "hello");

    // The trace continues into the called service.
    let echo = one(&router, &granted.url("127.0.0.1", "/echo"));
    let head = echo["body"].as_str().unwrap().to_ascii_lowercase();
    assert!(head.contains("traceparent: 00-"), "{head}");

    // Not granted: another port, another scheme, another name for the
    // same address.
    assert_denied(
        &one(&router, &by_name.url("127.0.0.1", "/hello")),
        "an ungranted port",
    );
    assert_denied(
        &one(
            &router,
            &format!("https://127.0.0.1:{}/hello", granted.port),
        ),
        "https",
    );
    assert_denied(
        &one(&router, &granted.url("localhost", "/hello")),
        "an ungranted name",
    );
    assert_denied(&one(&router, "http://example.com/"), "an ungranted host");

    // Granted by name, but the name resolves to loopback, which no grant
    // names: denied before connecting.
    assert_denied(
        &one(&router, &by_name.url("localhost", "/hello")),
        "localhost",
    );
    // The cloud metadata address, in any spelling.
    assert_denied(
        &one(&router, "http://169.254.169.254/latest/meta-data"),
        "metadata",
    );
    assert_denied(
        &one(&router, "http://[::ffff:a9fe:a9fe]/latest/meta-data"),
        "metadata, IPv6",
    );
    // An IPv6 spelling of loopback at the port granted only by name.
    assert_denied(
        &one(
            &router,
            &format!("http://[::ffff:127.0.0.1]:{}/hello", by_name.port),
        ),
        "IPv4-mapped loopback",
    );
    assert!(by_name.requests().is_empty(), "{:?}", by_name.requests());

    // A redirect comes back to the algorithm; following it is a new request,
    // checked again.
    let to = by_name.url("localhost", "/hello");
    let hop = one(
        &router,
        &granted.url("127.0.0.1", &format!("/redirect?to={to}")),
    );
    assert_eq!(hop["status"], 302, "{hop}");
    let followed = fetch(
        &router,
        json!({ "url": granted.url("127.0.0.1", &format!("/redirect?to={to}")), "follow": true }),
    );
    assert_denied(&followed[0], "a redirect to a denied origin");
    let meta = "http://169.254.169.254/latest/meta-data";
    let followed = fetch(
        &router,
        json!({ "url": granted.url("127.0.0.1", &format!("/redirect?to={meta}")), "follow": true }),
    );
    assert_denied(&followed[0], "a redirect to the metadata address");
    assert!(by_name.requests().is_empty(), "{:?}", by_name.requests());

    let metrics = router.metrics();
    assert!(
        metrics.contains(r#"eventflow_outbound_requests_total{algorithm="test/fetch",host="127.0.0.1",status="2xx"}"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            r#"eventflow_outbound_denied_total{algorithm="test/fetch",reason="not_public"}"#
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("eventflow_outbound_request_duration_seconds"),
        "{metrics}"
    );
}

#[test]
fn the_admin_api_is_never_reachable_even_when_granted_by_address() {
    let granted = Server::start();
    let router = Router::start(&config(&[granted.url("127.0.0.1", "")], ""));
    let addr = std::fs::read_to_string(router.state_dir().join("admin.addr")).unwrap();
    let admin = format!("http://{}", addr.trim());
    let out = router.cli_ok(&["outbound", "allow", "test/fetch", &admin]);
    assert!(out.contains("allowed"), "{out}");
    let listed = router.cli_ok(&["outbound", "list", "test/fetch"]);
    assert!(listed.contains(&admin), "{listed}");
    assert_denied(&one(&router, &format!("{admin}/v1/flows")), "the admin API");
    assert_denied(
        &one(&router, &format!("{admin}/metrics")),
        "the admin metrics",
    );

    // Denying an origin again takes effect at once.
    router.cli_ok(&[
        "outbound",
        "deny",
        "test/fetch",
        &granted.url("127.0.0.1", ""),
    ]);
    assert_denied(
        &one(&router, &granted.url("127.0.0.1", "/hello")),
        "a denied origin",
    );
    let (status, body) = router.http("GET", "/v1/outbound", None);
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["grants"][0]["origins"], json!([admin]), "{body}");
    let (status, body) = router.http(
        "POST",
        "/v1/algorithms/test/fetch/outbound",
        Some(json!({ "origin": "ftp://example.com" })),
    );
    assert_eq!(status, 400, "{body}");
}

#[test]
fn request_count_size_and_time_are_limited() {
    let server = Server::start();
    let router = Router::start(&config(
        &[server.url("127.0.0.1", "")],
        "max_http_requests = 3\nmax_http_response_bytes = 10000\nmax_http_request_bytes = 1000\nhttp_timeout_secs = 1",
    ));
    let hello = server.url("127.0.0.1", "/hello");
    let results = fetch(&router, json!({ "url": hello, "repeat": 4 }));
    assert!(
        results[..3].iter().all(|r| r["status"] == 200),
        "{results:?}"
    );
    assert_eq!(results[3]["error"], "ConnectionLimitReached", "{results:?}");
    // The count is per invocation.
    assert_eq!(one(&router, &hello)["status"], 200);

    // The stream error the algorithm reads carries the host's message.
    let big = one(&router, &server.url("127.0.0.1", "/big"));
    let error = big["error"].as_str().unwrap_or("");
    assert!(error.contains("body size exceeds limit: 10000"), "{big}");
    let sent = fetch(
        &router,
        json!({ "url": server.url("127.0.0.1", "/upload"), "method": "POST", "body": "y".repeat(5000) }),
    );
    assert!(sent[0]["error"].is_string(), "{sent:?}");
    let small = fetch(
        &router,
        json!({ "url": server.url("127.0.0.1", "/upload"), "method": "POST", "body": "y".repeat(500) }),
    );
    assert_eq!(small[0]["body"], "uploaded", "{small:?}");

    let started = std::time::Instant::now();
    let slow = one(&router, &server.url("127.0.0.1", "/slow"));
    assert_eq!(slow["error"], "ConnectionTimeout", "{slow}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[test]
fn without_a_grant_every_request_is_denied() {
    let server = Server::start();
    let body = config(&[], "").replace(
        "[[outbound]]\nalgorithm = \"test/fetch\"\norigins = []\n",
        "",
    );
    let router = Router::start(&body);
    assert_denied(
        &one(&router, &server.url("127.0.0.1", "/hello")),
        "no grant",
    );
    assert!(server.requests().is_empty());
}

/// The Python example `ezra/enrich_py` (plugins/enrich_py, built with
/// componentize-py for the world that imports `wasi:http`) calls a REST
/// service through `eventflow.http.fetch`: granted, it enriches the event;
/// a 404 dead-letters it; once the origin is denied, the router refuses the
/// request and the algorithm rejects the message with the router's reason.
#[test]
fn the_python_enrich_example_calls_a_granted_service_and_is_refused_once_denied() {
    let refused = enrich_example("enrich_py");
    assert_eq!(
        refused["last_failure"]["reason"], "guest_reject",
        "{refused}"
    );
    let detail = refused["last_failure"]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(
        detail.starts_with("the router refused the request")
            && detail.ends_with("HTTP-request-denied"),
        "{refused}"
    );
}

/// The JavaScript example `ezra/enrich_js` (plugins/enrich_js), built with
/// componentize-js's defaults (`fetch` over wasi:http, which the router
/// accepts) and an `async function apply` awaiting `fetch`: the same
/// walk as the Python one. StarlingMonkey's `fetch` rejects a refused
/// request with the same TypeError as an unreachable service, so the
/// example retries it, and with one receive allowed it is dead-lettered
/// with that reason.
#[test]
fn the_javascript_enrich_example_fetches_from_a_granted_service_and_is_refused_once_denied() {
    let refused = enrich_example("enrich_js");
    assert_eq!(
        refused["last_failure"]["reason"], "guest_retry",
        "{refused}"
    );
    let detail = refused["last_failure"]["detail"]
        .as_str()
        .unwrap_or_default();
    assert!(
        detail.contains("unreachable or refused by the router") && detail.contains("NetworkError"),
        "{refused}"
    );
}

/// Runs example `ezra/<name>` against a customer service granted by
/// address: an event is enriched (the request carries the accept header),
/// an unknown customer is rejected, and after `eventflow outbound deny` no
/// request reaches the service and the router counts the refusal. Returns
/// the refused message's dead letter.
fn enrich_example(name: &'static str) -> Value {
    let plugin: &'static [(&str, &str)] = match name {
        "enrich_py" => &[("ezra", "enrich_py")],
        _ => &[("ezra", "enrich_js")],
    };
    let algorithm = format!("ezra/{name}");
    let service = Server::start();
    let origin = service.url("127.0.0.1", "");
    let router = Router::start_with(
        &granted_flow(
            "enrich",
            &algorithm,
            std::slice::from_ref(&origin),
            "max_receives = 1",
        ),
        Plugins::Guest(plugin),
    );
    let (status, body) = router.http(
        "PUT",
        &format!("/v1/algorithms/{algorithm}/secrets/ENRICH_URL"),
        Some(json!({"value": service.url("127.0.0.1", "/customers")})),
    );
    assert_eq!(status, 200, "{body}");
    let letter = |needle: &str| {
        wait_for(needle, Duration::from_secs(120), || {
            router
                .dead_letters("enrich")
                .into_iter()
                .find(|l| l["payload"].as_str().unwrap_or("").contains(needle))
        })
    };

    router.publish("in", &[json!({"customer": "c42", "order": 7}).to_string()]);
    let out = wait_for("the enriched event", Duration::from_secs(120), || {
        router.peek("local", "out").into_iter().next()
    });
    let event: Value = serde_json::from_str(out["payload"].as_str().unwrap()).unwrap();
    assert_eq!(
        event,
        json!({"customer": "c42", "order": 7, "customer_record": {"name": "Ada", "tier": "gold"}})
    );
    let asked = service.requests();
    assert!(
        asked[0].starts_with("GET /customers/c42 HTTP/1.1")
            && asked[0]
                .to_ascii_lowercase()
                .contains("accept: application/json"),
        "{asked:?}"
    );

    router.publish("in", &[json!({"customer": "nobody"}).to_string()]);
    let unknown = letter("nobody");
    assert_eq!(
        unknown["last_failure"]["reason"], "guest_reject",
        "{unknown}"
    );
    assert_eq!(
        unknown["last_failure"]["detail"], "unknown customer 'nobody'",
        "{unknown}"
    );

    let denied = router.cli_ok(&["outbound", "deny", &algorithm, &origin]);
    assert!(denied.contains("denied"), "{denied}");
    let before = service.requests().len();
    router.publish(
        "in",
        &[json!({"customer": "c42", "after": "deny"}).to_string()],
    );
    let refused = letter("deny");
    assert_eq!(
        service.requests().len(),
        before,
        "the denied request reached the service"
    );
    let metrics = router.metrics();
    let counted = format!(
        r#"eventflow_outbound_denied_total{{algorithm="{algorithm}",reason="not_granted"}}"#
    );
    assert!(metrics.contains(&counted), "{metrics}");
    refused
}

/// Regression: the Python SDK wrote a request body in 64 KiB calls, over
/// the 4096 bytes wasi:io's blocking-write-and-flush takes: any body longer
/// than that trapped the algorithm. Bodies go in 4 KiB writes, with a
/// content-length; a reply over the flow's limit is an `HttpError` with
/// the router's reason.
#[test]
fn a_python_request_body_larger_than_one_stream_write_arrives_whole() {
    let service = Server::start();
    let origin = service.url("127.0.0.1", "");
    let router = Router::start_with(
        &granted_flow(
            "py",
            "test/py_behaviours",
            &[origin],
            "max_receives = 1\n[flows.limits]\nmax_http_response_bytes = 1000",
        ),
        Plugins::Guest(&[("test", "py_behaviours")]),
    );
    router.publish(
        "in",
        &[
            json!({"do": "fetch", "url": service.url("127.0.0.1", "/count"), "method": "POST", "body_bytes": 100_000}).to_string(),
            json!({"do": "fetch", "url": service.url("127.0.0.1", "/big")}).to_string(),
        ],
    );
    let out = wait_for("the fetches' outputs", Duration::from_secs(120), || {
        let out = router.peek("local", "out");
        (out.len() == 2).then_some(out)
    });
    let mut replies: Vec<Value> = out
        .iter()
        .map(|m| serde_json::from_str(m["payload"].as_str().unwrap()).unwrap())
        .collect();
    replies.sort_by_key(|r| r.to_string());
    assert_eq!(replies[0], json!({"status": 200, "body": "100000"}));
    // The stream error names no HTTP error code; it carries the host's
    // message.
    assert_eq!(replies[1]["error"], "internal-error", "{replies:?}");
    let detail = replies[1]["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("body size exceeds limit: 1000"),
        "{replies:?}"
    );
    assert!(router.dead_letters("py").is_empty());
}
