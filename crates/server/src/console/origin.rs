//! Where a console request comes from, and where a login may send the visitor
//! next: a login or logout posted by another site is refused (login CSRF),
//! and `next` is a path of this site or nothing.

use axum::http::{HeaderMap, Uri, header};

/// The longest `next` a login keeps.
const MAX_NEXT_CHARS: usize = 512;

/// Whether a form was posted by a page of this server: `Sec-Fetch-Site`
/// is not `cross-site`, and the `Origin` header (else the `Referer`), when
/// the browser sends one, names this server as the request reached it
/// (its scheme and `Host`). A request that says nothing of where it comes
/// from (a script, `curl`) is let through: it carries no browser's cookies
/// it did not mean to send.
pub(super) fn same_origin(headers: &HeaderMap, uri: &Uri, tls: bool) -> bool {
    let text = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if text(header::HeaderName::from_static("sec-fetch-site"))
        .is_some_and(|site| site.eq_ignore_ascii_case("cross-site"))
    {
        return false;
    }
    let claimed = match (text(header::ORIGIN), headers.get(header::REFERER)) {
        (Some(origin), _) => origin.to_string(),
        (None, Some(referer)) => match referer.to_str().ok().and_then(origin_of) {
            Some(origin) => origin,
            None => return false,
        },
        (None, None) => return true,
    };
    let Some(host) = text(header::HOST).or_else(|| uri.authority().map(|a| a.as_str())) else {
        return false;
    };
    let scheme = if tls { "https" } else { "http" };
    claimed.eq_ignore_ascii_case(&format!("{scheme}://{host}"))
}

/// The origin (`scheme://host[:port]`) of an absolute URL.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    (!scheme.is_empty() && !authority.is_empty()).then(|| format!("{scheme}://{authority}"))
}

/// Where to go after logging in: `next` when it is a path of this site, else
/// `/`. It is decoded again until it no longer changes (encoded forms of
/// what follows are refused too), and refused when any form of it does not
/// start with a single `/`, or holds a backslash, a control character or
/// whitespace (browsers drop tabs and newlines from a URL, and read `\` as
/// `/`, so `/\evil.example` and `/<tab>/evil.example` are `//evil.example`).
/// What is kept is printable ASCII, as given.
pub(super) fn next_page(next: Option<&str>) -> String {
    next.filter(|n| n.len() <= MAX_NEXT_CHARS && is_site_path(n))
        .map_or_else(|| "/".to_string(), str::to_string)
}

fn is_site_path(next: &str) -> bool {
    if !next.bytes().all(|b| b.is_ascii_graphic()) {
        return false;
    }
    let mut form = next.to_string();
    // Each decoding makes it shorter, so this ends; a few rounds suffice for
    // anything a person would send.
    for _ in 0..4 {
        if !is_plain_path(&form) {
            return false;
        }
        let decoded: String = percent_decode(&form);
        if decoded == form {
            return true;
        }
        form = decoded;
    }
    false
}

/// A path that starts with one `/` and holds no backslash, control
/// character or whitespace.
fn is_plain_path(path: &str) -> bool {
    path.starts_with('/')
        && !path.starts_with("//")
        && !path
            .chars()
            .any(|c| c == '\\' || c.is_control() || c.is_whitespace())
}

/// `%XX` sequences decoded (as bytes; invalid UTF-8 replaced), the rest as is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let value = hex(h).unwrap_or(0) * 16 + hex(l).unwrap_or(0);
                out.push(u8::try_from(value).expect("two hex digits fit a byte"));
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_a_path_of_this_site_or_the_overview() {
        for kept in [
            "/",
            "/pools/a",
            "/dashboards?range=7d",
            "/runs/7/log",
            "/tenants/a%2Db",
        ] {
            assert_eq!(next_page(Some(kept)), kept);
        }
        for refused in [
            "//evil.example/",
            "/\\evil.example/",
            "/%5Cevil.example/",
            "/%5cevil.example/",
            "/%255Cevil.example/",
            "/%09/evil.example/",
            "/\t/evil.example/",
            "/%0A/evil.example",
            "/%2F/evil.example",
            "/%252F%252Fevil.example",
            "/%2F%2Fevil.example",
            "https://evil.example/",
            "https:evil.example",
            "javascript:alert(1)",
            "%2F%2Fevil.example",
            "\\\\evil.example",
            " /pools",
            "/pools a",
            "/pools/a%20b",
            "/p\u{e9}",
            "",
        ] {
            assert_eq!(next_page(Some(refused)), "/", "{refused:?}");
        }
        assert_eq!(next_page(None), "/");
        assert_eq!(next_page(Some(&format!("/{}", "a".repeat(600)))), "/");
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, value.parse().expect("a header value"));
        }
        headers
    }

    #[test]
    fn forms_from_other_origins_are_told_apart() {
        let uri: Uri = "/login".parse().expect("a uri");
        let host = ("host", "127.0.0.1:8080");
        let ok =
            |pairs: &[(&'static str, &str)], tls: bool| same_origin(&headers(pairs), &uri, tls);
        assert!(ok(&[host], false), "no word of where it comes from");
        assert!(ok(&[host, ("origin", "http://127.0.0.1:8080")], false));
        assert!(ok(&[host, ("origin", "https://127.0.0.1:8080")], true));
        assert!(!ok(&[host, ("origin", "http://127.0.0.1:8080")], true));
        assert!(!ok(&[host, ("origin", "http://127.0.0.1:8081")], false));
        assert!(!ok(&[host, ("origin", "http://evil.example")], false));
        assert!(!ok(&[host, ("origin", "null")], false));
        assert!(ok(
            &[host, ("referer", "http://127.0.0.1:8080/login?next=%2F")],
            false
        ));
        assert!(!ok(
            &[host, ("referer", "http://127.0.0.1:8081/login")],
            false
        ));
        assert!(!ok(&[host, ("referer", "not a url")], false));
        assert!(!ok(
            &[
                host,
                ("origin", "http://127.0.0.1:8080"),
                ("sec-fetch-site", "cross-site")
            ],
            false
        ));
        assert!(ok(
            &[
                host,
                ("origin", "http://127.0.0.1:8080"),
                ("sec-fetch-site", "same-origin")
            ],
            false
        ));
        assert!(
            !ok(&[("origin", "http://127.0.0.1:8080")], false),
            "no host"
        );
    }
}
