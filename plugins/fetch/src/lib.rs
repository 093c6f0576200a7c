//! Sends the HTTP requests its input describes over `wasi:http` and
//! outputs, for each, the status and body or the error the host gave, as
//! JSON: `{"results": [{"status": 200, "body": "..."} | {"error": "..."}]}`.
//!
//! Input: `{"url": "http://host:port/path", "method": "POST", "body": "...",
//! "repeat": 3, "follow": true}` (all but `url` optional; `follow` follows
//! redirects, as a browser's `fetch` would, each hop a new request), or
//! `{"requests": [..]}` of those. Tests use it to check which requests the router lets through.

use eventflow_sdk::{Failure, Guest, Message, reject};
use serde_json::{Value, json};
use wasip2::http::outgoing_handler;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingBody, Method, OutgoingBody, OutgoingRequest, Scheme,
};
use wasip2::io::streams::StreamError;

struct Fetch;

impl Guest for Fetch {
    fn apply(msg: Message) -> Result<Option<Vec<u8>>, Failure> {
        let doc: Value = serde_json::from_slice(&msg.payload)
            .map_err(|e| reject(format!("payload is not JSON: {e}")))?;
        let requests = match doc.get("requests").and_then(Value::as_array) {
            Some(list) => list.clone(),
            None => vec![doc],
        };
        let mut results = Vec::new();
        for r in &requests {
            let repeat = r.get("repeat").and_then(Value::as_u64).unwrap_or(1);
            for _ in 0..repeat {
                results.push(match follow(r) {
                    Ok((status, body)) => json!({"status": status, "body": body}),
                    Err(error) => json!({"error": error}),
                });
            }
        }
        Ok(Some(json!({"results": results}).to_string().into_bytes()))
    }
}

/// Sends one request, and with `follow` the requests its redirects ask for.
fn follow(r: &Value) -> Result<(u16, String), String> {
    let mut url = r
        .get("url")
        .and_then(Value::as_str)
        .ok_or("no url")?
        .to_string();
    let hops = if r.get("follow").and_then(Value::as_bool) == Some(true) {
        5
    } else {
        0
    };
    for _ in 0..hops {
        match fetch(r, &url)? {
            (status, location) if (300..400).contains(&status) && location.contains("://") => {
                url = location;
            }
            done => return Ok(done),
        }
    }
    fetch(r, &url)
}

/// Sends one request; the status and body (the `Location` of a redirect),
/// or what went wrong.
fn fetch(r: &Value, url: &str) -> Result<(u16, String), String> {
    let (scheme, rest) = url.split_once("://").ok_or("no scheme")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    let method = match r.get("method").and_then(Value::as_str).unwrap_or("GET") {
        "POST" => Method::Post,
        _ => Method::Get,
    };
    let scheme = match scheme {
        "https" => Scheme::Https,
        "http" => Scheme::Http,
        other => Scheme::Other(other.to_string()),
    };
    request.set_method(&method).map_err(|_| "bad method")?;
    request
        .set_scheme(Some(&scheme))
        .map_err(|_| "bad scheme")?;
    request
        .set_authority(Some(authority))
        .map_err(|_| "bad authority")?;
    request
        .set_path_with_query(Some(path))
        .map_err(|_| "bad path")?;
    let body = request.body().map_err(|_| "no body")?;
    let response = outgoing_handler::handle(request, None).map_err(|e| code(&e))?;
    if let Some(data) = r.get("body").and_then(Value::as_str) {
        let stream = body.write().map_err(|_| "no body stream")?;
        for chunk in data.as_bytes().chunks(4096) {
            if let Err(e) = stream.blocking_write_and_flush(chunk) {
                drop(stream);
                return Err(stream_error(e));
            }
        }
        drop(stream);
    }
    OutgoingBody::finish(body, None).map_err(|e| code(&e))?;
    response.subscribe().block();
    let incoming = response
        .get()
        .ok_or("no response")?
        .map_err(|_| "response taken twice")?
        .map_err(|e| code(&e))?;
    let status = incoming.status();
    if (300..400).contains(&status) {
        let location = incoming.headers().get("location");
        let location = location
            .first()
            .map(|l| String::from_utf8_lossy(l).into_owned());
        return Ok((status, location.unwrap_or_default()));
    }
    let body = incoming.consume().map_err(|_| "no response body")?;
    let text = read_all(&body)?;
    drop(body);
    Ok((status, text))
}

/// The whole body, as text.
fn read_all(body: &IncomingBody) -> Result<String, String> {
    let stream = body.stream().map_err(|_| "no body stream")?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 << 10) {
            Ok(chunk) => bytes.extend(chunk),
            Err(StreamError::Closed) => break,
            Err(e) => return Err(stream_error(e)),
        }
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn stream_error(e: StreamError) -> String {
    match e {
        StreamError::Closed => "closed".into(),
        StreamError::LastOperationFailed(err) => match wasip2::http::types::http_error_code(&err) {
            Some(c) => code(&c),
            None => err.to_debug_string(),
        },
    }
}

/// The error's WIT name, e.g. `HTTP-request-denied` as `HttpRequestDenied`.
fn code(e: &ErrorCode) -> String {
    let debug = format!("{e:?}");
    debug.trim_start_matches("ErrorCode::").to_string()
}

eventflow_sdk::export_algorithm!(Fetch);
