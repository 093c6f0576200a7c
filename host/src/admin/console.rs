//! The web console, served at [`PATH`] on the admin listener: static pages
//! (plain ES modules, no build step) embedded in the binary, which talk to
//! the `/v1` API with the bearer token the user signs in with. The console
//! holds no privilege of its own: every change is an API call the control
//! plane authorizes like any other.
//!
//! Every asset is sent with a Content-Security-Policy that allows only this
//! origin's scripts and styles (no inline code) and forbids framing.

use axum::Router as Http;
use axum::extract::Path as UrlPath;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// Where the console is served.
pub const PATH: &str = "/ui";

/// The policy every console response carries: scripts, styles, images and
/// API calls from this origin only, nothing inline, never in a frame.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The embedded assets: name, content type, content.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../console/index.html"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../console/style.css"),
    ),
    ("app.js", JS, include_str!("../../console/app.js")),
    ("api.js", JS, include_str!("../../console/api.js")),
    ("dom.js", JS, include_str!("../../console/dom.js")),
    ("brokers.js", JS, include_str!("../../console/brokers.js")),
    ("topics.js", JS, include_str!("../../console/topics.js")),
    ("queues.js", JS, include_str!("../../console/queues.js")),
    ("live.js", JS, include_str!("../../console/live.js")),
    ("plugins.js", JS, include_str!("../../console/plugins.js")),
    (
        "icon.svg",
        "image/svg+xml",
        include_str!("../../console/icon.svg"),
    ),
];

const JS: &str = "text/javascript; charset=utf-8";

/// The console's routes, merged beside the API's (they are not part of the
/// API or its OpenAPI document, and need no token: the pages are public,
/// the data behind them is not).
pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> Http<S> {
    Http::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route("/ui/", get(|| async { asset("index.html") }))
        .route(
            "/ui/{file}",
            get(|UrlPath(file): UrlPath<String>| async move { asset(&file) }),
        )
}

/// One asset with the console's security headers, or a 404.
fn asset(name: &str) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return (StatusCode::NOT_FOUND, "no such file in the console").into_response();
    };
    let mut response = (*body).into_response();
    let headers = response.headers_mut();
    let fixed = [
        (header::CONTENT_TYPE, *content_type),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-cache"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedded(file: &str) -> bool {
        ASSETS
            .iter()
            .any(|(n, _, _)| file == format!("/ui/{n}") || file == format!("./{n}"))
    }

    /// Every file the page and its modules load is embedded, and nothing
    /// renders HTML or uses inline code the policy would block.
    #[test]
    fn the_page_loads_only_embedded_assets_without_inline_code() {
        for (name, _, body) in ASSETS {
            assert!(!body.contains("innerHTML"), "{name} renders HTML");
            assert!(!body.contains("style=\""), "{name} has an inline style");
            assert!(!body.contains("<script>"), "{name} has an inline script");
            let refs = ["src=\"", "href=\"", "from \""]
                .into_iter()
                .flat_map(|marker| body.split(marker).skip(1));
            for r in refs {
                let file = &r[..r.find('"').unwrap()];
                if file.starts_with('/') || file.starts_with("./") {
                    assert!(embedded(file), "{name} loads {file}, which is not embedded");
                }
            }
        }
        assert_eq!(asset("nope.js").status(), StatusCode::NOT_FOUND);
        let page = asset("index.html");
        assert_eq!(page.headers()[header::X_FRAME_OPTIONS], "DENY");
        assert!(CONTENT_SECURITY_POLICY.contains("frame-ancestors 'none'"));
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    }
}
