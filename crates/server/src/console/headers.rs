//! The headers every console response carries, whatever answered it (a page,
//! an error, the login, an asset, a redirect): a Content-Security-Policy that
//! lets the page load only this server's files and be framed by nobody, the
//! older framing and sniffing protections beside it, no referrer sent
//! elsewhere, nothing kept by caches but the assets (a page's CSRF token must
//! not outlive it), and HSTS when served over TLS.

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

/// No inline script or style (pages move styles to classes; data for charts
/// is in `type="application/json"` blocks, which are not run), no plugin, no
/// `<base>`, forms posted only here, framed by no one.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'; object-src 'none'";

/// A year, the usual HSTS lifetime.
const STRICT_TRANSPORT_SECURITY: &str = "max-age=31536000";

/// Adds the console's security headers to a response; `tls` says whether the
/// server serves TLS.
pub async fn secure(State(tls): State<bool>, request: Request, next: Next) -> Response {
    let asset = request.uri().path().starts_with("/assets/");
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    let set = |headers: &mut axum::http::HeaderMap, name: HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    );
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "same-origin");
    // Assets say how long they keep; everything else, the event stream's
    // `no-cache` included, is not stored at all.
    if !asset || !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
    if tls {
        set(
            headers,
            header::STRICT_TRANSPORT_SECURITY,
            STRICT_TRANSPORT_SECURITY,
        );
    }
    response
}
