//! The web console (`/ui`) in a real browser: headless Chromium driven over
//! WebDriver (`support/chromium.rs`) against a real router, one browser per
//! test, the tests in parallel. Screenshots of each page go to
//! `<target>/tmp/console-screenshots` (the README's are copies).
//!
//! Needs Debian's `chromium` and `chromium-driver`, which `cargo xtask test`
//! installs when they are missing.

#[path = "support/chromium.rs"]
mod chromium;
mod support;

use std::path::PathBuf;
use std::time::Duration;

use chromium::{Browser, PATIENCE};
use serde_json::json;
use support::{Plugins, Router, wait_for};

/// A browser on `router`'s console.
struct Console<'a> {
    browser: Browser,
    router: &'a Router,
}

impl std::ops::Deref for Console<'_> {
    type Target = Browser;
    fn deref(&self) -> &Browser {
        &self.browser
    }
}

impl<'a> Console<'a> {
    fn open(router: &'a Router) -> Self {
        Console {
            browser: Browser::open(),
            router,
        }
    }

    /// Loads a page of the console: `page` is the part after `/ui/`.
    fn visit(&self, page: &str) {
        let base = self.router.admin_url();
        self.browser.goto(&format!("{base}/ui/{page}"));
    }

    /// Signs in with `token` on the sign-in page.
    fn sign_in(&self, token: &str) {
        self.visit("");
        self.type_in("#sign-in input[name=token]", token);
        self.click("#sign-in button[type=submit]");
        self.wait_contains("#who", "Signed in as");
    }

    fn sign_in_as_admin(&self) {
        self.sign_in(&self.router.admin_token());
    }

    /// Saves a screenshot of the page as a test artefact, once the fonts
    /// are in and the page has painted.
    fn screenshot(&self, name: &str) {
        self.execute_async(
            "const done = arguments[0];
             document.fonts.ready.then(() => requestAnimationFrame(() => done(true)));",
            vec![],
        );
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
        self.browser.screenshot(&dir, name);
    }
}

/// The platform's walkthrough, entirely in the browser: the admin connects a
/// broker, declares topics, grants an algorithm and creates an owner token;
/// the owner enables the queue for 0.1.0 with a dead-letter topic, sees a
/// message in the live rates and a failing one in the dead letters, and
/// replays it. After each step the API holds what the page did.
#[test]
fn the_platform_walkthrough_in_the_browser() {
    let router = Router::start("");
    let page = Console::open(&router);

    // A wrong token is refused, with the API's reason.
    page.visit("");
    page.screenshot("sign-in");
    page.type_in("#sign-in input[name=token]", "not-a-token");
    page.click("#sign-in button[type=submit]");
    page.wait_contains("#sign-in .error", "invalid token");
    assert!(page.text("#who").is_empty());
    // The refused token's 401 is the only console error so far.
    let errors = page.console_errors();
    assert!(errors.iter().all(|e| e.contains("401")), "{errors:?}");

    // The admin: a broker connection.
    page.sign_in_as_admin();
    page.click("#nav-brokers");
    page.type_in("#broker-create input[name=name]", "local");
    page.select("#broker-create select[name=kind]", "embedded");
    page.click("#broker-create button[type=submit]");
    page.wait_contains("#broker-list", "local");
    page.wait_contains("#broker-list", "embedded");
    let (status, broker) = router.http("GET", "/v1/brokers/local", None);
    assert_eq!(
        (status, &broker["kind"]),
        (200, &json!("embedded")),
        "{broker}"
    );
    page.screenshot("broker-manager");

    grant_topics(&page);

    // The broker's view lists its topics.
    page.visit("#/brokers/local");
    page.wait_contains("main", "incoming-dlq");
    page.screenshot("broker-view");

    let owner_token = create_owner_token(&page);
    page.click("#sign-out");
    page.find("#sign-in");

    // The member: enable the queue for 0.1.0 with the dead-letter topic.
    page.sign_in(&owner_token);
    page.wait_contains("#who", "owner ezra");
    page.visit("#/queues/ezra/store_file");
    let queue = "#queues article[data-topic='incoming']";
    page.type_in(&format!("{queue} input[name=version]"), "0.1.0");
    page.select(
        &format!("{queue} select[name=dead_letter_topic]"),
        "incoming-dlq",
    );
    page.click(&format!("{queue} button[type=submit]"));
    let flow = "ezra-store_file-incoming";
    page.wait_contains(queue, flow);
    page.wait_contains(queue, "incoming-dlq");
    let (status, declared) = router.http("GET", &format!("/v1/flows/{flow}"), None);
    assert_eq!(status, 200, "{declared}");
    assert_eq!(declared["version"], "0.1.0", "{declared}");
    assert_eq!(declared["dead_letter_topic"], "incoming-dlq", "{declared}");
    page.screenshot("queues");
    secrets_by_name_only(&page);
    wait_for("the flow to run", PATIENCE, || {
        (router.flow(flow)["state"] == "running").then_some(())
    });

    live_rates_and_dead_letters(&page, flow);

    page.click("#nav-plugins");
    let row = page.wait_contains("#plugin-list", "ezra/store_file/0.1.0");
    assert!(row.contains(flow), "{row}");
    page.screenshot("plugins");

    // The admin deletes the connection: the confirmation names the flow it
    // disables, and only then is the connection gone.
    page.click("#sign-out");
    page.sign_in_as_admin();
    page.click("#nav-brokers");
    let listed = page.wait_contains("#broker-list", flow);
    assert!(listed.contains("local"), "{listed}");
    page.click("#broker-list button.danger");
    page.wait_contains("#confirm-list", flow);
    page.click("#confirm-no");
    assert_eq!(router.http("GET", "/v1/brokers/local", None).0, 200);
    page.click("#broker-list button.danger");
    page.wait_contains("#confirm-list", flow);
    page.click("#confirm-yes");
    page.wait_contains("#notice", "Deleted connection local");
    assert_eq!(router.http("GET", "/v1/brokers/local", None).0, 404);
    let errors = page.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:?}");
}

/// The member sets a secret on the Queues page: it is listed by name, its
/// value is never on the page, and it is deleted after a confirmation.
fn secrets_by_name_only(page: &Console) {
    const VALUE: &str = "s3cr3t-value-never-shown";
    page.type_in("#secrets input[name=secret]", "API_KEY");
    page.type_in("#secrets input[name=value]", VALUE);
    page.click("#secrets button[type=submit]");
    page.wait_contains("#secrets table", "API_KEY");
    let (status, names) = page
        .router
        .http("GET", "/v1/algorithms/ezra/store_file/secrets", None);
    assert_eq!((status, &names["secrets"]), (200, &json!(["API_KEY"])));
    let shown = page.execute(
        "return document.body.innerText + [...document.querySelectorAll('input')].map(i => i.value).join(' ');",
        vec![],
    );
    assert!(!shown.to_string().contains(VALUE), "{shown}");
    page.click("#secrets table button.danger");
    page.wait_contains("#confirm-text", "Delete secret API_KEY");
    page.click("#confirm-yes");
    page.wait_contains("#secrets", "No secrets.");
    let (_, names) = page
        .router
        .http("GET", "/v1/algorithms/ezra/store_file/secrets", None);
    assert_eq!(names["secrets"], json!([]), "{names}");
}

/// The admin declares `incoming` and `incoming-dlq` and lets
/// `ezra/store_file` consume the first and publish to the second.
fn grant_topics(page: &Console) {
    page.click("#nav-topics");
    for topic in ["incoming", "incoming-dlq"] {
        page.type_in("#declare-topic input[name=topic]", topic);
        page.click("#declare-topic button[type=submit]");
        page.find(&format!("article[data-topic='{topic}']"));
    }
    let incoming = "article[data-topic='incoming']";
    page.type_in(
        &format!("{incoming} input[name=algorithm]"),
        "ezra/store_file",
    );
    page.click(&format!("{incoming} button[type=submit]"));
    page.wait_contains(incoming, "ezra/store_file");
    let dlq = "article[data-topic='incoming-dlq']";
    page.type_in(&format!("{dlq} input[name=algorithm]"), "ezra/store_file");
    page.click(&format!("{dlq} input[name=consume]"));
    page.click(&format!("{dlq} input[name=publish]"));
    page.click(&format!("{dlq} button[type=submit]"));
    page.wait_contains(dlq, "ezra/store_file");
    page.screenshot("topics");

    let (status, listing) = page.router.http("GET", "/v1/brokers/local/topics", None);
    assert_eq!(status, 200, "{listing}");
    let topic = |name: &str| {
        listing["topics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no topic {name}: {listing}"))
    };
    let grant = json!(["ezra/store_file"]);
    assert_eq!(topic("incoming")["consumers"], grant, "{listing}");
    assert_eq!(topic("incoming")["publishers"], json!([]), "{listing}");
    assert_eq!(topic("incoming-dlq")["consumers"], json!([]), "{listing}");
    assert_eq!(topic("incoming-dlq")["publishers"], grant, "{listing}");
}

/// The admin creates an owner token for ezra; the page shows it once.
fn create_owner_token(page: &Console) -> String {
    page.click("#nav-tokens");
    page.type_in("main input[name=owner]", "ezra");
    page.click("main form button[type=submit]");
    let token = page.find("#created-token").prop("value");
    let token = token.as_str().unwrap().to_string();
    assert!(token.len() > 20, "{token:?}");
    page.wait_contains("#token-list", "ezra");
    page.screenshot("tokens");
    let (status, tokens) = page.router.http("GET", "/v1/tokens", None);
    assert_eq!(status, 200, "{tokens}");
    assert_eq!(tokens["tokens"][0]["owner"], "ezra", "{tokens}");
    token
}

/// A good message shows in the live rates, a bad one in the dead letters,
/// from where it is replayed (and fails again).
fn live_rates_and_dead_letters(page: &Console, flow: &str) {
    let router = page.router;
    page.click("#nav-live");
    let card = format!("article[data-flow='{flow}']");
    page.wait_contains(&card, "running");
    router.publish(
        "incoming",
        &[json!({"filename": "console.txt", "data": "from the console"}).to_string()],
    );
    page.wait_text(&format!("{card} .received"), "1 received", |t| t == "1");
    page.wait_text(&format!("{card} .succeeded"), "1 processed", |t| t == "1");
    // One message over the last minute is a rate of about 0.02/s, and the
    // chart, scaled to it, draws the in and ok lines (#2b5797, #2e7d32; ok
    // covers in when every message succeeds) up to its top: pixels of those
    // colours in its upper half, where a zero rate never draws.
    page.wait_text(&format!("{card} .rate-in"), "a rate above 0", |t| {
        t.parse::<f64>().is_ok_and(|r| r > 0.0)
    });
    wait_for("the chart to draw a rate line", PATIENCE, || {
        let drawn = page.execute(
            "const c = document.querySelector(arguments[0] + ' canvas.chart');
             const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
             const colours = [[43, 87, 151], [46, 125, 50]];
             let n = 0;
             for (let i = 0; i < d.length / 2; i += 4) {
               if (d[i + 3] > 100 && colours.some(([r, g, b]) =>
                 Math.abs(d[i] - r) < 40 && Math.abs(d[i + 1] - g) < 40 && Math.abs(d[i + 2] - b) < 40)) n++;
             }
             return n;",
            vec![json!(card)],
        );
        (drawn.as_i64().unwrap_or(0) > 0).then_some(())
    });
    let hash = page.text(&format!("{card} .hash"));
    assert!(hash.starts_with("Component "), "{hash}");
    assert_eq!(
        router
            .data_file("ezra/TestingEventFlow/console.txt")
            .unwrap(),
        b"from the console"
    );
    router.publish("incoming", &["not json".to_string()]);
    page.wait_text(&format!("{card} .dead-lettered"), "1 dead letter", |t| {
        t == "1"
    });
    page.screenshot("live-flows");
    page.click(&format!("{card} button"));
    page.wait_contains("#dead-letters", "not json");
    page.wait_contains("#dead-letters", "payload is not JSON");
    page.screenshot("dead-letters");
    page.click("#dead-letters button.replay");
    page.wait_contains("#notice", "Replayed");
    // The replayed message fails again: a second dead letter.
    page.wait_text(&format!("{card} .dead-lettered"), "2 dead letters", |t| {
        t == "2"
    });
    // The replayed letter left the list; its new failure is in it.
    assert_eq!(router.dead_letters(flow).len(), 1);
}

/// An owner token is not offered the Broker Manager, topics or tokens, and
/// the API refuses it when it forces a broker creation from the page.
#[test]
fn an_owner_token_sees_no_broker_manager_and_is_refused() {
    let router = Router::start(
        "[[brokers]]\nname = \"local\"\nkind = \"embedded\"\n\n[[topics]]\nname = \"in\"\nconsumers = [\"ezra/store_file\"]\n",
    );
    let (status, created) = router.http("POST", "/v1/tokens", Some(json!({"owner": "ezra"})));
    assert_eq!(status, 200, "{created}");
    // `eventflow run` says where the console is.
    let base = router.admin_url();
    assert!(
        router.log().contains(&format!("{base}/ui/")),
        "{}",
        router.log()
    );
    let page = Console::open(&router);
    // Signed in with the keyboard alone: the token typed, then Enter.
    page.visit("");
    let token = created["token"].as_str().unwrap();
    page.type_in("#sign-in input[name=token]", &format!("{token}\u{E007}"));
    page.wait_contains("#who", "owner ezra");
    let nav = page.text("#nav");
    assert!(
        nav.contains("Queues") && nav.contains("Live flows") && nav.contains("Plugins"),
        "{nav}"
    );
    for name in ["brokers", "topics", "tokens"] {
        assert!(
            !page.exists(&format!("#nav-{name}")),
            "{name} offered: {nav}"
        );
    }
    // Going to the page by hand shows no Broker Manager either.
    page.visit("#/brokers");
    page.wait_contains("main h1", "Queues");
    assert!(!page.exists("#broker-create"));
    page.screenshot("owner-queues");
    // Forcing the call from the page, with the page's own token: refused.
    let answer = page.execute_async(
        r#"const done = arguments[0];
           import("/ui/api.js").then(({ api }) =>
             api("POST", "/v1/brokers", { name: "evil", kind: "embedded" }))
           .then(() => done("created"), (e) => done(`${e.status} ${e.message}`));"#,
        vec![],
    );
    let answer = answer.as_str().unwrap();
    assert!(
        answer.starts_with("403") && answer.contains("admin token"),
        "{answer}"
    );
    assert_eq!(router.http("GET", "/v1/brokers/evil", None).0, 404);
}

/// The page carries its security headers, loads with no console error
/// under the CSP, and renders hostile values as text: a topic name with
/// markup (refused by the API, whose message is shown as text), a topic
/// address and a dead-lettered payload with markup.
#[test]
fn values_render_as_text_under_the_csp() {
    const HOSTILE: &str = "<img src=x onerror=alert(1)>";
    let router = Router::start(
        "[[brokers]]\nname = \"local\"\nkind = \"embedded\"\n\n[[topics]]\nname = \"in\"\nconsumers = [\"test/always_reject\"]\n\n[[topics]]\nname = \"dlq\"\n\n[[topics]]\nname = \"marked\"\n\n[[flows]]\nname = \"rejects\"\ntopic = \"in\"\nalgorithm = \"test/always_reject\"\ndead_letter_topic = \"dlq\"\n",
    );
    let head = response_head(&router, "/ui/");
    for header in [
        "content-security-policy: default-src 'none'; script-src 'self'",
        "frame-ancestors 'none'",
        "x-frame-options: deny",
        "x-content-type-options: nosniff",
    ] {
        assert!(
            head.to_ascii_lowercase().contains(header),
            "{header} missing:\n{head}"
        );
    }
    assert!(!head.contains("unsafe-inline"), "{head}");
    let (status, body) = router.http(
        "PUT",
        "/v1/brokers/local/topics/marked",
        Some(json!({"address": HOSTILE})),
    );
    assert_eq!(status, 200, "{body}");
    router.publish("in", &[HOSTILE.to_string()]);
    wait_for("the dead letter", PATIENCE, || {
        (router.dead_letters("rejects").len() == 1).then_some(())
    });

    let page = Console::open(&router);
    page.sign_in_as_admin();
    let errors = page.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:?}");

    // The name is refused by the API; its message shows the name as text.
    page.click("#nav-topics");
    page.type_in("#declare-topic input[name=topic]", HOSTILE);
    page.click("#declare-topic button[type=submit]");
    page.wait_contains("#notice", HOSTILE);
    let errors = page.console_errors();
    assert!(
        errors.iter().all(|e| e.contains("400")),
        "only the refused name is an error: {errors:?}"
    );
    page.wait_contains("article[data-topic='marked']", HOSTILE);
    page.screenshot("hostile-names");
    page.visit("#/live/rejects");
    page.wait_contains("#dead-letters", HOSTILE);
    assert_eq!(images(&page), 0, "markup from the API became elements");
    let errors = page.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:?}");

    // At a phone's width the pages still work, with nothing wider than
    // the window (no sideways scrolling); likewise at 1280 px.
    for (width, height) in [(390, 844), (1280, 800)] {
        page.set_window_size(width, height);
        // Each page once its content has come from the API.
        for (nav, content) in [
            ("#nav-plugins", "#plugin-list tbody tr"),
            ("#nav-live", "#live article"),
            ("#nav-brokers", "#broker-list tbody tr"),
            ("#nav-topics", "main article[data-topic]"),
        ] {
            page.click(nav);
            page.find(content);
            let overflow = page.execute(
                "return document.documentElement.scrollWidth - document.documentElement.clientWidth;",
                vec![],
            );
            assert!(
                overflow.as_i64().unwrap_or(1) <= 0,
                "{nav} at {width} px is {overflow} px wider than the window"
            );
        }
        if width == 390 {
            page.click("#nav-plugins");
            page.wait_contains("#plugin-list", "test/always_reject");
            page.screenshot("phone-plugins");
        }
    }
}

/// `<img>` elements on the page (the console itself has none).
fn images(page: &Console) -> i64 {
    page.execute("return document.querySelectorAll('img').length;", vec![])
        .as_i64()
        .unwrap()
}

/// While a version compiles in the background, the Plugins page says so and
/// the flow that needs it shows what it waits for; the page updates by
/// itself when the version has loaded.
#[test]
fn the_plugins_page_shows_a_version_compiling() {
    let mut router = Router::configure(
        "[[brokers]]\nname = \"local\"\nkind = \"embedded\"\n\n[[topics]]\nname = \"incoming-python\"\nconsumers = [\"ezra/store_file_py\"]\n\n[[flows]]\nname = \"python\"\ntopic = \"incoming-python\"\nalgorithm = \"ezra/store_file_py/0.1.0\"\n",
        Plugins::Guest(&[("ezra", "store_file_py")]),
    );
    // No compiled code is shared with this router: the Python component
    // compiles from scratch, a minute in a debug build.
    router.launch_without_waiting();
    let python = "ezra/store_file_py/0.1.0";
    let page = Console::open(&router);
    page.sign_in_as_admin();
    page.click("#nav-plugins");
    let row = "#plugin-list tbody tr:first-child";
    let shown = page.wait_contains(row, python);
    assert!(shown.contains("compiling"), "{shown}");
    assert!(page.exists("#plugin-list .status.compiling"));
    page.screenshot("plugins-compiling");

    page.click("#nav-live");
    let card = page.wait_contains("article[data-flow='python']", "waiting_for_plugin");
    assert!(
        card.contains("version 0.1.0 of ezra/store_file_py is compiling"),
        "{card}"
    );
    assert_eq!(router.plugin(python)["status"], "compiling");

    // Once compiled, the Plugins page shows it loaded, without a reload.
    page.click("#nav-plugins");
    page.find("#plugin-list .status.compiling");
    wait_for(
        "the Python version to load",
        Duration::from_secs(600),
        || (router.plugin(python)["status"] == "ok").then_some(()),
    );
    wait_for("the page to show it loaded", PATIENCE, || {
        page.exists("#plugin-list .status.ok").then_some(())
    });
    assert!(!page.exists("#plugin-list .status.compiling"));
    assert!(page.text(row).contains("python"), "{}", page.text(row));
}

/// The status line and headers of a GET.
fn response_head(router: &Router, path: &str) -> String {
    use std::io::{Read, Write};
    let base = router.admin_url();
    let host = base.strip_prefix("http://").unwrap();
    let mut stream = std::net::TcpStream::connect(host).unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, _) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    head.to_string()
}

/// A flow's canary and shadow are on its live card: the canary's version,
/// state, share and numbers, the shadow's runs and agreement.
#[test]
fn the_live_page_shows_a_flows_canary_and_shadow() {
    let mut router = Router::configure(
        &format!(
            "{}{}",
            support::EMBEDDED_BROKER,
            support::named_flow(
                "mirror",
                "test/mirror/0.1.0",
                "canary = { version = \"0.2.0\", percent = 50 }\nshadow = { version = \"0.3.0\" }"
            )
        ),
        Plugins::Copy(&[]),
    );
    for version in ["0.1.0", "0.2.0", "0.3.0"] {
        router.deploy("mirror", version, "examples", "echo");
    }
    router.launch();
    // Until the shadow has compared an output (on a loaded machine its
    // budget may skip the first messages).
    let mut sent = 0;
    wait_for("a shadow comparison", PATIENCE, || {
        let flow = router.flow("mirror");
        if flow["shadow"]["compared"].as_u64().unwrap_or(0) > 0 {
            return Some(());
        }
        let batch: Vec<String> = (sent..sent + 10).map(|i| format!("message {i}")).collect();
        router.publish("mirror-in", &batch);
        sent += 10;
        std::thread::sleep(Duration::from_millis(500));
        None
    });

    let page = Console::open(&router);
    page.sign_in_as_admin();
    page.click("#nav-live");
    let card = "article[data-flow='mirror']";
    let canary = page.wait_contains(&format!("{card} .rollout"), "Canary 0.2.0");
    assert!(canary.contains("canary, 50 % of the messages"), "{canary}");
    let shadow = page.wait_contains(&format!("{card} .shadow"), "Shadow 0.3.0");
    assert!(shadow.contains("running"), "{shadow}");
    // The shadow is an identical echo: whatever it compared, it agreed.
    page.wait_text(&format!("{card} .shadow"), "a shadow comparison", |t| {
        t.contains("100.0 % agreement")
    });
    page.screenshot("live-rollout");
    let errors = page.console_errors();
    assert!(errors.is_empty(), "console errors: {errors:?}");
}
