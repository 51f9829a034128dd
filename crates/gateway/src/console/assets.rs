//! The console's files, compiled into the binary (no CDN, no build step, nothing fetched at run
//! time), and the security headers every console response carries.
//!
//! The policy allows scripts, styles and connections to this origin only, no inline script or
//! style, no framing, no plugins, no form submission, and requires Trusted Types with no policy
//! defined: assigning a string to `innerHTML` (or any other HTML sink) throws in the browser, so
//! user text can only ever reach the page as text.

use axum::Router;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// The Content-Security-Policy of every console response.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self'; connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'; require-trusted-types-for 'script'; \
    trusted-types 'none'";

/// Every file of the app: URL path under `/console/`, content type, content.
pub const FILES: &[(&str, &str, &str)] = &[
    (
        "",
        "text/html; charset=utf-8",
        include_str!("../../console/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/app.js"),
    ),
    (
        "api.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/api.js"),
    ),
    (
        "dom.js",
        "text/javascript; charset=utf-8",
        include_str!("../../console/dom.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../console/style.css"),
    ),
    (
        "favicon.svg",
        "image/svg+xml",
        include_str!("../../console/favicon.svg"),
    ),
];

/// Sets the console's security headers on a response.
pub fn secure(headers: &mut HeaderMap) {
    let set = |h: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        h.insert(name, HeaderValue::from_static(value));
    };
    set(headers, header::CONTENT_SECURITY_POLICY, CSP);
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(
        headers,
        header::HeaderName::from_static("cross-origin-opener-policy"),
        "same-origin",
    );
    set(
        headers,
        header::HeaderName::from_static("cross-origin-resource-policy"),
        "same-origin",
    );
    set(
        headers,
        header::HeaderName::from_static("permissions-policy"),
        "camera=(), microphone=(), geolocation=(), payment=(), usb=()",
    );
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
}

fn file(content_type: &'static str, body: &'static str) -> Response {
    let mut response = (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, content_type),
            // Small files; revalidating on every load keeps a rolled-out fix from being masked.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response();
    secure(response.headers_mut());
    response
}

/// The routes serving [`FILES`], and `/console` redirecting to `/console/` so the app's
/// relative URLs resolve under it.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    let mut router = Router::new().route(
        "/console",
        get(|| async {
            let mut r = Redirect::permanent("/console/").into_response();
            secure(r.headers_mut());
            r
        }),
    );
    for &(path, content_type, body) in FILES {
        router = router.route(
            &format!("/console/{path}"),
            get(move || async move { file(content_type, body) }),
        );
    }
    router
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_forbids_inline_code_framing_and_html_sinks() {
        for directive in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "object-src 'none'",
            "frame-ancestors 'none'",
            "form-action 'none'",
            "require-trusted-types-for 'script'",
        ] {
            assert!(CSP.contains(directive), "{directive}");
        }
        assert!(
            !CSP.contains("unsafe"),
            "no 'unsafe-inline' or 'unsafe-eval'"
        );
        assert!(HeaderValue::from_str(CSP).is_ok());
    }

    /// ` on<letters>=`: an inline event handler attribute.
    fn has_inline_handler(html: &str) -> bool {
        html.match_indices(" on").any(|(i, _)| {
            let rest = &html[i + 3..];
            let name_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
            name_len > 0 && rest[name_len..].trim_start().starts_with('=')
        })
    }

    #[test]
    fn the_app_has_no_inline_script_or_style_and_loads_nothing_from_elsewhere() {
        for (path, _, body) in FILES {
            if path.is_empty() {
                assert!(!body.contains("<script>"), "inline script in index.html");
                assert!(!body.contains("<style"), "inline style in index.html");
                assert!(
                    !body.contains("style="),
                    "inline style attribute in index.html"
                );
                assert!(
                    !has_inline_handler(body),
                    "inline event handler in index.html"
                );
            }
            assert!(
                !body.contains("http://") && !body.contains("https://") || path.ends_with(".svg"),
                "{path} refers to another origin"
            );
            assert!(
                !body.contains("innerHTML")
                    && !body.contains("outerHTML")
                    && !body.contains("insertAdjacentHTML")
                    && !body.contains("document.write"),
                "{path} uses an HTML sink"
            );
        }
    }
}
