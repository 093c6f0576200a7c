//! Headless Chromium for the console tests: Debian's `chromedriver` on a
//! free port of 127.0.0.1, driven over W3C WebDriver (JSON over HTTP) with
//! the harness's blocking HTTP client. A dozen commands are all the tests
//! use, so no WebDriver crate: fantoccini pulls in `syn` features that make
//! every proc-macro, and so the whole workspace, rebuild.
//!
//! Every wait is explicit: [`Browser::find`] and friends poll until the
//! element is there (or [`PATIENCE`] runs out), never a fixed sleep.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{Value, json};

use crate::support::wait_for;

/// How long a page may take to show something: the machine is slow and
/// shared, and the live page polls every 1.5 s.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// The key under which WebDriver returns an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A WebDriver error: its `error` code (`no such element`, `stale element
/// reference`, ...) and message.
#[derive(Debug)]
pub struct DriverError {
    pub error: String,
    pub message: String,
}

/// One headless Chromium session with its own chromedriver and profile.
/// Dropping it ends the session and kills the driver's process group
/// (chromedriver and the browser it started), also when a test panics.
pub struct Browser {
    driver: Child,
    url: String,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and a session with a 1280 px
    /// wide window, logging the browser console.
    pub fn open() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group, so that Drop can stop the browser too.
            .process_group(0)
            .spawn()
            .expect("cannot start chromedriver: install chromium-driver (cargo xtask test does)");
        let profile = tempfile::tempdir().unwrap();
        let mut browser = Browser {
            driver,
            url: format!("http://127.0.0.1:{port}"),
            _profile: profile,
        };
        wait_for("chromedriver to listen", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--window-size=1280,1000".into(),
            format!("--user-data-dir={}", browser._profile.path().display()),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args },
            "goog:loggingPrefs": { "browser": "ALL" },
        }}});
        let session = browser
            .command("POST", "/session", Some(caps))
            .expect("cannot open a browser session");
        let id = session["sessionId"].as_str().unwrap();
        browser.url = format!("{}/session/{id}", browser.url);
        browser
    }

    /// One WebDriver command on this session (`path` relative to it; the
    /// whole path for `POST /session`); returns its `value`.
    fn command(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, DriverError> {
        let body = body.or_else(|| (method == "POST").then(|| json!({})));
        let (status, text) = request(method, &format!("{}{path}", self.url), body);
        let answer: Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("chromedriver answered {status} {text:?}: {e}"));
        let value = answer["value"].clone();
        if status == 200 {
            return Ok(value);
        }
        Err(DriverError {
            error: value["error"].as_str().unwrap_or_default().to_string(),
            message: value["message"].as_str().unwrap_or_default().to_string(),
        })
    }

    fn expect(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        self.command(method, path, body)
            .unwrap_or_else(|e| panic!("WebDriver {method} {path}: {}: {}", e.error, e.message))
    }

    /// Loads `url`.
    pub fn goto(&self, url: &str) {
        self.expect("POST", "/url", Some(json!({ "url": url })));
    }

    /// The first element matching `css` now, if any.
    pub fn try_find(&self, css: &str) -> Option<Element<'_>> {
        let found = self.command(
            "POST",
            "/element",
            Some(json!({"using": "css selector", "value": css})),
        );
        found.ok().map(|v| Element {
            browser: self,
            id: v[ELEMENT].as_str().unwrap().to_string(),
        })
    }

    /// Waits for an element matching `css`.
    pub fn find(&self, css: &str) -> Element<'_> {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Some(e) = self.try_find(css) {
                return e;
            }
            assert!(Instant::now() < deadline, "no element {css} on the page");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Whether an element matches `css` now.
    pub fn exists(&self, css: &str) -> bool {
        let all = self.expect(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        );
        !all.as_array().unwrap().is_empty()
    }

    /// Clicks the element, retrying while the page redraws it (a stale or
    /// not yet interactable element).
    pub fn click(&self, css: &str) {
        self.retry(&format!("click {css}"), || self.find(css).click());
    }

    /// Replaces the text of an input.
    pub fn type_in(&self, css: &str, text: &str) {
        self.retry(&format!("type into {css}"), || {
            let input = self.find(css);
            input.clear()?;
            input.send_keys(text)
        });
    }

    /// Chooses the option of value `value` in a select.
    pub fn select(&self, css: &str, value: &str) {
        let option = format!("{css} option[value={}]", json!(value));
        self.click(&option);
    }

    fn retry(&self, what: &str, mut action: impl FnMut() -> Result<(), DriverError>) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let error = match action() {
                Ok(()) => return,
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "cannot {what}: {}: {}",
                error.error,
                error.message
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The text of the first element matching `css`, or "" when none does.
    pub fn text(&self, css: &str) -> String {
        self.try_find(css)
            .and_then(|e| e.text().ok())
            .unwrap_or_default()
    }

    /// Waits until the text of `css` satisfies `check`, and returns it.
    pub fn wait_text(&self, css: &str, what: &str, check: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let text = self.text(css);
            if check(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{css} never showed {what}; it shows {text:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the text of `css` contains `needle`, and returns it.
    pub fn wait_contains(&self, css: &str, needle: &str) -> String {
        self.wait_text(css, needle, |t| t.contains(needle))
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        let body = json!({ "script": script, "args": args });
        self.expect("POST", "/execute/sync", Some(body))
    }

    /// Runs `script`, which calls `arguments[arguments.length - 1]` with its
    /// result when done.
    pub fn execute_async(&self, script: &str, args: Vec<Value>) -> Value {
        let body = json!({ "script": script, "args": args });
        self.expect("POST", "/execute/async", Some(body))
    }

    /// Resizes the window.
    pub fn set_window_size(&self, width: u32, height: u32) {
        let rect = json!({ "width": width, "height": height });
        self.expect("POST", "/window/rect", Some(rect));
    }

    /// Saves a PNG of the viewport to `dir/name.png`.
    pub fn screenshot(&self, dir: &Path, name: &str) {
        std::fs::create_dir_all(dir).unwrap();
        let png = self.expect("GET", "/screenshot", None);
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }

    /// The browser console's messages of level SEVERE (script errors, CSP
    /// violations, failed requests) since the last call: chromedriver's own
    /// log command, which W3C WebDriver does not have.
    pub fn console_errors(&self) -> Vec<String> {
        let log = self.expect("POST", "/se/log", Some(json!({"type": "browser"})));
        log.as_array()
            .unwrap()
            .iter()
            .filter(|e| e["level"] == "SEVERE")
            .map(|e| e["message"].as_str().unwrap_or_default().to_string())
            .collect()
    }
}

impl Drop for Browser {
    /// Ends the session, which closes the browser and its helpers (crash
    /// handlers run in process groups of their own), then kills the driver's
    /// group in case that did not work. Nothing here may panic: it also runs
    /// while a failed test unwinds.
    fn drop(&mut self) {
        use std::io::{Read, Write};
        let session = self.url.strip_prefix("http://").and_then(|rest| {
            let (host, path) = rest.split_once('/')?;
            Some((host.to_string(), path.to_string()))
        });
        if let Some((host, path)) = session
            && let Ok(mut stream) = std::net::TcpStream::connect(&host)
        {
            let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
            let _ = write!(
                stream,
                "DELETE /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
            );
            let _ = stream.read_to_end(&mut Vec::new());
        }
        // SAFETY: kill(2) on the process group this Browser started.
        unsafe {
            libc::kill(-(self.driver.id() as i32), libc::SIGKILL);
        }
        let _ = self.driver.wait();
    }
}

/// An element of the page, valid until the page redraws it.
pub struct Element<'a> {
    browser: &'a Browser,
    id: String,
}

impl Element<'_> {
    fn path(&self, what: &str) -> String {
        format!("/element/{}/{what}", self.id)
    }

    /// Clicks it (scrolled into view first by the driver).
    pub fn click(&self) -> Result<(), DriverError> {
        self.browser.command("POST", &self.path("click"), None)?;
        Ok(())
    }

    /// Empties an input.
    pub fn clear(&self) -> Result<(), DriverError> {
        self.browser.command("POST", &self.path("clear"), None)?;
        Ok(())
    }

    /// Types `text` into it.
    pub fn send_keys(&self, text: &str) -> Result<(), DriverError> {
        let body = json!({ "text": text });
        self.browser
            .command("POST", &self.path("value"), Some(body))?;
        Ok(())
    }

    /// Its rendered text.
    pub fn text(&self) -> Result<String, DriverError> {
        let text = self.browser.command("GET", &self.path("text"), None)?;
        Ok(text.as_str().unwrap_or_default().to_string())
    }

    /// A DOM property (`value` of an input, say); null when it has none.
    pub fn prop(&self, name: &str) -> Value {
        self.browser
            .expect("GET", &self.path(&format!("property/{name}")), None)
    }
}

/// One HTTP/1.1 request to chromedriver, reading the answer by its
/// Content-Length: chromedriver keeps the connection open after answering
/// even when asked to close it, so reading to the end would wait for the
/// read timeout.
fn request(method: &str, url: &str, body: Option<Value>) -> (u16, String) {
    use std::io::{BufRead, BufReader, Read, Write};
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest.split_once('/').expect("a path");
    let mut stream = std::net::TcpStream::connect(host).expect("connect to chromedriver");
    stream
        .set_read_timeout(Some(Duration::from_secs(120)))
        .unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    write!(
        stream,
        "{method} /{path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
    }
    let mut answer = vec![0; length];
    reader.read_exact(&mut answer).unwrap();
    (status, String::from_utf8(answer).unwrap())
}
