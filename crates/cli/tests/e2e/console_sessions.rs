//! The console's sessions as a security review checks them, on the real
//! server: the cookie holds a random session id, never the token; logout and
//! the token's revocation end a session (a replayed cookie is refused, an open
//! event stream ends) and a restart does not; a login or logout posted from
//! another origin does nothing; `next` never leads off the site (in Chromium,
//! which is what read `/\` and tabs as another host); and every console
//! response carries the security headers, with a `__Host-`, `Secure` cookie
//! and HSTS under TLS. (Idle timeouts and lifetimes are unit tests of
//! `corral_server::sessions`, on an injected time.)

use std::process::Command;
use std::time::Duration;

use corral_core::access::Access;
use corral_server::console::{
    CONTENT_SECURITY_POLICY, SECURE_SESSION_COOKIE, SESSION_COOKIE, csrf_of, page_table,
};

use crate::browser::Browser;
use crate::harness::{BIN, Server, StoreKind};

/// A console session as its browser holds it.
pub(crate) struct Session {
    /// The session's id: the cookie's value.
    pub(crate) id: String,
    /// The CSRF token its forms carry.
    pub(crate) csrf: String,
    /// The cookie's name (`__Host-` under TLS).
    name: &'static str,
}

impl Session {
    /// The `Cookie` header that sends this session.
    pub(crate) fn cookie(&self) -> String {
        format!("{}={}", self.name, self.id)
    }
}

/// A client that does not follow redirects (a test reads them), trusting the
/// server's CA under TLS.
pub(crate) fn no_redirects(server: &Server) -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30));
    if let Some(ca) = &server.ca_cert {
        let pem = std::fs::read(ca).expect("read the test CA");
        let certs = reqwest::Certificate::from_pem_bundle(&pem).expect("PEM certificates");
        builder = builder.tls_certs_only(certs);
    }
    builder.build().expect("an HTTP client")
}

/// A login form posted with `token` and `headers`: the answer.
async fn post_login(
    server: &Server,
    token: &str,
    next: &str,
    headers: &[(&str, String)],
) -> reqwest::Response {
    let mut request = no_redirects(server)
        .post(format!("{}/login{next}", server.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("token={token}"));
    for (name, value) in headers {
        request = request.header(*name, value);
    }
    request.send().await.expect("a login")
}

fn set_cookie(answer: &reqwest::Response) -> Option<String> {
    answer
        .headers()
        .get("set-cookie")
        .map(|v| v.to_str().expect("an ASCII cookie").to_string())
}

fn location(answer: &reqwest::Response) -> String {
    answer
        .headers()
        .get("location")
        .map(|v| v.to_str().expect("an ASCII location").to_string())
        .unwrap_or_default()
}

/// Logs in with `token` as the login form does: the session of its cookie.
pub(crate) async fn login(server: &Server, token: &str) -> Session {
    let answer = post_login(server, token, "", &[]).await;
    assert_eq!(answer.status().as_u16(), 303, "a login with a valid token");
    let set = set_cookie(&answer).expect("a session cookie");
    let (name, rest) = set.split_once('=').expect("name=value");
    let name = [SESSION_COOKIE, SECURE_SESSION_COOKIE]
        .into_iter()
        .find(|n| *n == name)
        .unwrap_or_else(|| panic!("an unexpected cookie: {set}"));
    let id = rest.split(';').next().expect("a value").to_string();
    Session {
        csrf: csrf_of(&id),
        id,
        name,
    }
}

/// What a replayed cookie gets: a page's status and where it is sent, and a
/// form's status (deleting a pool that does not exist, with the session's
/// own CSRF token: a 404 while the session lives).
async fn replay(server: &Server, session: &Session) -> (u16, String, u16) {
    let http = no_redirects(server);
    let page = http
        .get(format!("{}/pools", server.url))
        .header("cookie", session.cookie())
        .send()
        .await
        .expect("a page");
    let form = http
        .post(format!("{}/pools/nope/delete", server.url))
        .header("cookie", session.cookie())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("csrf={}", session.csrf))
        .send()
        .await
        .expect("a form");
    (
        page.status().as_u16(),
        location(&page),
        form.status().as_u16(),
    )
}

/// Refused: the page sends the visitor to log in, the form is forbidden.
const REFUSED: (u16, &str, u16) = (303, "/login?next=%2Fpools", 403);

fn refused(answer: (u16, String, u16)) -> bool {
    (answer.0, answer.1.as_str(), answer.2) == REFUSED
}

/// An open `/events` stream of `session`, its first event read.
async fn events(server: &Server, session: &Session) -> reqwest::Response {
    let mut stream = no_redirects(server)
        .get(format!("{}/events", server.url))
        .header("cookie", session.cookie())
        .send()
        .await
        .expect("the event stream");
    assert_eq!(stream.status().as_u16(), 200);
    let first = stream
        .chunk()
        .await
        .expect("an event")
        .expect("the stream is open");
    assert!(
        String::from_utf8_lossy(&first).contains("event: change"),
        "{first:?}"
    );
    stream
}

/// Reads `stream` to its end: the server closes it (the bound only keeps a
/// broken server from hanging the test; it is not what is tested).
async fn ends(mut stream: reqwest::Response) {
    let end = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match stream.chunk().await {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => return,
            }
        }
    })
    .await;
    assert!(
        end.is_ok(),
        "the event stream goes on after its session ended"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cookie_holds_a_random_session_id_not_the_token() {
    let server = Server::start("sessions-cookie", StoreKind::Sqlite).await;
    let token = server.create_token("ops", "viewer", None).await;
    let answer = post_login(&server, &token, "", &[]).await;
    assert_eq!(answer.status().as_u16(), 303);
    let set = set_cookie(&answer).expect("a session cookie");
    let secret = token.strip_prefix("corral_").expect("a corral token");
    assert!(
        !set.contains(secret) && !set.contains(&token),
        "the token's secret is in the cookie: {set}"
    );
    let (pair, attributes) = set.split_once(';').expect("attributes");
    let id = pair
        .strip_prefix("corral_session=")
        .unwrap_or_else(|| panic!("{set}"));
    assert!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "a 256-bit id: {set}"
    );
    for attribute in ["Path=/", "HttpOnly", "SameSite=Strict"] {
        assert!(attributes.contains(attribute), "{attribute}: {set}");
    }
    assert!(
        !attributes.contains("Secure") && !attributes.contains("Domain"),
        "{set}"
    );
    // Each login opens a session of its own.
    let again = login(&server, &token).await;
    assert_ne!(again.id, id);
    // The session works in the console, and nowhere else: it is not a token.
    let session = Session {
        id: id.to_string(),
        csrf: csrf_of(id),
        name: SESSION_COOKIE,
    };
    assert_eq!(replay(&server, &session).await.0, 200);
    let (status, _) = server.send_as(id, "GET", "/api/v1/pools", "", None).await;
    assert_eq!(status, 401, "a session id used as a token");
    // Nor is a token a session.
    let token_as_cookie = Session {
        id: token.clone(),
        csrf: csrf_of(&token),
        name: SESSION_COOKIE,
    };
    assert!(refused(replay(&server, &token_as_cookie).await));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_replayed_cookie_is_refused_after_logout_and_revocation_and_its_event_stream_ends() {
    let mut server = Server::start("sessions-end", StoreKind::Sqlite).await;
    let http = no_redirects(&server);

    // Logout ends the session in the server, not only in the browser.
    let session = login(&server, &server.admin_token).await;
    assert_eq!(replay(&server, &session).await, (200, String::new(), 404));
    let stream = events(&server, &session).await;
    let logout = http
        .post(format!("{}/logout", server.url))
        .header("cookie", session.cookie())
        .send()
        .await
        .expect("a logout");
    assert_eq!(logout.status().as_u16(), 303);
    assert_eq!(location(&logout), "/login");
    let cleared = set_cookie(&logout).expect("the cookie cleared");
    assert!(
        cleared.starts_with("corral_session=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    assert!(refused(replay(&server, &session).await), "after logout");
    ends(stream).await;

    // Revoking the token ends every session opened with it: with the CLI,
    // and through the API.
    for (name, with_cli) in [("ops-cli", true), ("ops-api", false)] {
        let token = server.create_token(name, "admin", None).await;
        let sessions = [login(&server, &token).await, login(&server, &token).await];
        let other = login(&server, &server.admin_token).await;
        let stream = events(&server, &sessions[0]).await;
        if with_cli {
            let out = Command::new(BIN)
                .args(["token", "revoke", name])
                .env("CORRAL_SERVER", &server.url)
                .env("CORRAL_TOKEN", &server.admin_token)
                .output()
                .expect("corral token revoke");
            assert!(out.status.success(), "{out:?}");
        } else {
            let (status, body) = server
                .send("DELETE", &format!("/api/v1/tokens/{name}"), "")
                .await;
            assert!((200..300).contains(&status), "{status}: {body}");
        }
        for s in &sessions {
            assert!(refused(replay(&server, s).await), "{name} revoked");
        }
        ends(stream).await;
        assert_eq!(
            replay(&server, &other).await,
            (200, String::new(), 404),
            "another token's session goes on"
        );
    }

    // Sessions survive a restart; ended ones stay ended.
    let kept = login(&server, &server.admin_token).await;
    server.restart().await;
    assert_eq!(
        replay(&server, &kept).await,
        (200, String::new(), 404),
        "a session after a restart, its CSRF token too"
    );
    assert!(refused(replay(&server, &session).await));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_login_or_logout_posted_from_another_origin_does_nothing() {
    let server = Server::start("sessions-origin", StoreKind::Sqlite).await;
    let own = server.url.clone();
    let port: u16 = own
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("a port");
    let neighbour = format!("http://127.0.0.1:{}", port.wrapping_add(1));
    let foreign: Vec<Vec<(&str, String)>> = vec![
        vec![("origin", "http://evil.example".into())],
        // Same site, another port: another origin.
        vec![("origin", neighbour.clone())],
        vec![(
            "origin",
            format!("https://{}", own.trim_start_matches("http://")),
        )],
        vec![("origin", "null".into())],
        vec![("referer", "http://evil.example/login".into())],
        vec![("referer", format!("{neighbour}/"))],
        vec![
            ("origin", own.clone()),
            ("sec-fetch-site", "cross-site".into()),
        ],
    ];
    for headers in &foreign {
        let answer = post_login(&server, &server.admin_token, "", headers).await;
        assert_eq!(answer.status().as_u16(), 403, "a login with {headers:?}");
        assert_eq!(set_cookie(&answer), None, "a session from {headers:?}");
    }
    // From its own page, it logs in.
    for headers in [
        vec![("origin", own.clone())],
        vec![
            ("referer", format!("{own}/login?next=%2F")),
            ("sec-fetch-site", "same-origin".into()),
        ],
    ] {
        let answer = post_login(&server, &server.admin_token, "", &headers).await;
        assert_eq!(answer.status().as_u16(), 303, "a login with {headers:?}");
        assert!(set_cookie(&answer).is_some());
    }
    // A logout from elsewhere ends nothing.
    let session = login(&server, &server.admin_token).await;
    let http = no_redirects(&server);
    for headers in &foreign {
        let mut request = http
            .post(format!("{}/logout", server.url))
            .header("cookie", session.cookie());
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let answer = request.send().await.expect("a logout");
        assert_eq!(answer.status().as_u16(), 403, "a logout with {headers:?}");
    }
    assert_eq!(replay(&server, &session).await, (200, String::new(), 404));
}

/// `next` values that must not lead off the site, as they appear in the
/// login page's URL.
const OFFSITE: [&str; 16] = [
    "//evil.example/",
    "/\\evil.example/",
    "/%5Cevil.example/",
    "/%5cevil.example/",
    "/%255Cevil.example/",
    "/%09/evil.example/",
    "/%0A/evil.example/",
    "/%0D%0A/evil.example/",
    "/%2F/evil.example/",
    "/%2F%2Fevil.example/",
    "%2F%2Fevil.example/",
    "https://evil.example/",
    "https:evil.example",
    "javascript:alert(document.domain)",
    "JaVaScRiPt%3Aalert(1)",
    "/%20/evil.example/",
];

#[tokio::test(flavor = "multi_thread")]
async fn next_never_leads_off_the_site() {
    let server = Server::start("sessions-next", StoreKind::Sqlite).await;
    // The login's own redirect: to `/` for each, to the page for a path of the site.
    for next in OFFSITE {
        let answer = post_login(&server, &server.admin_token, &format!("?next={next}"), &[]).await;
        assert_eq!(answer.status().as_u16(), 303, "{next}");
        assert_eq!(location(&answer), "/", "next={next}");
    }
    let answer = post_login(&server, &server.admin_token, "?next=/pools", &[]).await;
    assert_eq!(location(&answer), "/pools");
    // In Chromium, through the login page as a person would: it stays here.
    let browser = Browser::start(&server.url).await;
    for next in OFFSITE {
        browser.goto(&format!("/login?next={next}")).await;
        browser.login(&server.admin_token).await;
        let url = browser.client.current_url().await.expect("the URL");
        assert_eq!(
            url.as_str(),
            format!("{}/", server.url),
            "after a login with next={next}"
        );
    }
    browser.goto("/login?next=/pools/local").await;
    browser.login(&server.admin_token).await;
    assert_eq!(browser.path().await, "/pools/local");
    // The detector of CSP violations sees one (pages themselves make none:
    // `every_page_passes_axe` checks each).
    assert_eq!(browser.csp_violations().await, Vec::<String>::new());
    browser
        .js("document.body.setAttribute('style', 'color: red'); return null")
        .await;
    let blocked = browser.csp_violations().await;
    assert!(
        blocked.iter().any(|b| b.starts_with("style-src")),
        "{blocked:?}"
    );
    // And one made while the page loaded, before any script of the test ran.
    browser
        .client
        .goto(
            "data:text/html,<meta http-equiv='Content-Security-Policy' content=\"style-src 'self'\">\
             <p style='color: red'>inline</p>",
        )
        .await
        .expect("a page with an inline style");
    let blocked = browser.csp_violations().await;
    assert!(
        blocked.iter().any(|b| b.starts_with("style-src")),
        "{blocked:?}"
    );
    browser.close().await;
}

/// Each console page's answers (a visitor with and without a session; a
/// form with and without its CSRF token), the login's, an asset's and an
/// error's: what lacks a security header, with the cookie the login set.
async fn missing_headers(server: &Server) -> (Vec<String>, String) {
    let answer = post_login(server, &server.admin_token, "", &[]).await;
    let set = set_cookie(&answer).expect("a session cookie");
    let session = login(server, &server.admin_token).await;
    let tls = server.ca_cert.is_some();
    let http = no_redirects(server);
    let mut asked: Vec<(String, reqwest::RequestBuilder)> = Vec::new();
    for page in page_table() {
        let path = page
            .path
            .replace("{id}", "987654")
            .replace("{file}", "console.css")
            .replace(
                "{name}",
                if page.method == "GET" {
                    "local"
                } else {
                    "nope"
                },
            );
        let url = format!("{}{path}", server.url);
        let with = |r: reqwest::RequestBuilder| r.header("cookie", session.cookie());
        match page.method {
            "GET" => {
                asked.push((format!("GET {path}"), with(http.get(&url))));
                if page.access != Access::Public {
                    asked.push((format!("GET {path} logged out"), http.get(&url)));
                }
            }
            _ if page.path == "/logout" || page.path == "/login" => {}
            _ => {
                let form = |csrf: &str| {
                    with(http.post(&url))
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(format!("csrf={csrf}&name=nope&capacity.memory=lots"))
                };
                asked.push((format!("POST {path}"), form(&session.csrf)));
                asked.push((format!("POST {path} forged"), form("00")));
            }
        }
    }
    asked.push((
        "a refused login".into(),
        http.post(format!("{}/login", server.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body("token=wrong"),
    ));
    asked.push((
        "a foreign login".into(),
        http.post(format!("{}/login", server.url))
            .header("origin", "http://evil.example")
            .body("token=wrong"),
    ));
    asked.push((
        "an unknown asset".into(),
        http.get(format!("{}/assets/nope.js", server.url)),
    ));
    asked.push((
        "a logout".into(),
        http.post(format!("{}/logout", server.url))
            .header("cookie", session.cookie()),
    ));
    let mut missing = Vec::new();
    for (what, request) in asked {
        let answer = request.send().await.expect("an answer");
        let status = answer.status().as_u16();
        let headers = answer.headers();
        let value = |name: &str| {
            headers
                .get(name)
                .map(|v| v.to_str().expect("ASCII").to_string())
        };
        let mut expected = vec![
            ("content-security-policy", Some(CONTENT_SECURITY_POLICY)),
            ("x-frame-options", Some("DENY")),
            ("x-content-type-options", Some("nosniff")),
            ("referrer-policy", Some("same-origin")),
            (
                "strict-transport-security",
                tls.then_some("max-age=31536000"),
            ),
        ];
        if !what.starts_with("GET /assets/") {
            expected.push(("cache-control", Some("no-store")));
        }
        for (name, want) in expected {
            let got = value(name);
            if got.as_deref() != want {
                missing.push(format!(
                    "{what} ({status}): {name} is {got:?}, not {want:?}"
                ));
            }
        }
    }
    for directive in [
        "default-src 'self'",
        "frame-ancestors 'none'",
        "form-action 'self'",
        "base-uri 'none'",
        "object-src 'none'",
    ] {
        assert!(CONTENT_SECURITY_POLICY.contains(directive), "{directive}");
    }
    (missing, set)
}

#[tokio::test(flavor = "multi_thread")]
async fn every_console_response_carries_the_security_headers() {
    let server = Server::start("sessions-headers", StoreKind::Sqlite).await;
    let (missing, cookie) = missing_headers(&server).await;
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    assert!(cookie.starts_with("corral_session="), "{cookie}");
}

#[tokio::test(flavor = "multi_thread")]
async fn under_tls_the_cookie_is_host_only_and_secure_and_hsts_is_sent() {
    let server = Server::start_tls("sessions-tls", StoreKind::Sqlite).await;
    let (missing, cookie) = missing_headers(&server).await;
    assert!(missing.is_empty(), "{}", missing.join("\n"));
    assert!(
        cookie.starts_with(&format!("{SECURE_SESSION_COOKIE}=")),
        "{cookie}"
    );
    let attributes: Vec<&str> = cookie.split(';').skip(1).map(str::trim).collect();
    for attribute in ["Path=/", "Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(attributes.contains(&attribute), "{attribute}: {cookie}");
    }
    assert!(
        !attributes.iter().any(|a| a.starts_with("Domain")),
        "{cookie}"
    );
    // The session works under its own name only.
    let session = login(&server, &server.admin_token).await;
    assert_eq!(replay(&server, &session).await, (200, String::new(), 404));
    let plain = Session {
        name: SESSION_COOKIE,
        ..session
    };
    assert!(refused(replay(&server, &plain).await));
}
