//! The web console in a real browser: headless Chromium, driven through
//! chromedriver (WebDriver), against a real `corral server` and its local
//! agents. A person's paths through it (log in, fill the forms and read their
//! errors, watch a run's log follow, find its cost), what a tenant may not see
//! or do, and every page checked with axe-core at a desktop and a phone size,
//! with screenshots kept under `target/console-screenshots/`.
//!
//! Chromium and chromedriver must be installed (`.ci/run` installs them): the
//! tests fail, never skip, without them.

use std::time::Duration;

use fantoccini::Locator;
use serde_json::Value;

use crate::browser::{
    Browser, DASHBOARDS, Settings, VIEWPORTS, held_run, id_of, printing_held_run, quick_run,
};
use crate::harness::{Server, StoreKind, eventually};

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_makes_a_pool_and_a_quota_then_follows_a_run_to_its_cost() {
    let server = Server::start("console-admin", StoreKind::Sqlite).await;
    server.apply("kind: Tenant\nname: team-a\n").await;
    let browser = Browser::start(&server.url).await;
    browser.viewport(1280, 800).await;

    // Log in with the admin token: the overview.
    browser.goto("/pools").await;
    assert_eq!(browser.path().await, "/login?next=%2Fpools");
    browser.login(&server.admin_token).await;
    assert_eq!(
        browser.path().await,
        "/pools",
        "login returns to the page asked for"
    );
    browser.goto("/").await;
    assert_eq!(browser.text("main h1").await, "Overview");
    assert_eq!(
        browser
            .attr("nav a[href='/']", "aria-current")
            .await
            .as_deref(),
        Some("page")
    );

    // A pool with a memory that is not a quantity: the form again, the error
    // next to that field, what was typed kept.
    browser.goto("/pools/new").await;
    browser.fill("name", "browser").await;
    browser.fill("capacity.cpu", "2").await;
    browser.fill("capacity.memory", "lots").await;
    // A high price, so that a run of seconds costs more than a cent.
    browser.fill("price.cpu_hour", "3600").await;
    browser.submit("form.stack button.primary").await;
    assert_eq!(browser.status().await, 422);
    let error = browser.text("[id=\"capacity.memory-error\"]").await;
    assert!(error.contains("lots"), "the error names the value: {error}");
    let memory = "[id=\"capacity.memory\"]";
    assert_eq!(
        browser.attr(memory, "aria-invalid").await.as_deref(),
        Some("true")
    );
    assert_eq!(
        browser.attr(memory, "aria-describedby").await.as_deref(),
        Some("capacity.memory-error")
    );
    let invalid = browser
        .client
        .find_all(Locator::Css(".field.invalid"))
        .await
        .expect("invalid fields");
    assert_eq!(invalid.len(), 1, "only the memory field is in error");
    assert_eq!(
        browser.attr("[id=\"name\"]", "value").await.as_deref(),
        Some("browser")
    );
    assert_eq!(
        browser
            .attr("[id=\"capacity.cpu\"]", "value")
            .await
            .as_deref(),
        Some("2")
    );
    // Corrected: the pool's page.
    browser.fill("capacity.memory", "4Gi").await;
    browser.submit("form.stack button.primary").await;
    assert_eq!(browser.path().await, "/pools/browser?saved=1");
    assert_eq!(browser.text("main h1").await, "Pool browser");
    assert_eq!(browser.text("p.notice").await, "Saved.");
    assert_eq!(
        browser
            .attr(".bar[aria-label^='cpu:']", "aria-label")
            .await
            .as_deref(),
        Some("cpu: 0 allocated, 0 reserved, 2 free of 2")
    );
    let pool: Value = server.get("/api/v1/pools/browser").await;
    assert_eq!(pool["capacity"]["memory_mib"], 4096, "{pool:#}");

    // The tenant's quota, through its page's form.
    browser.goto("/tenants/team-a").await;
    browser.fill("quota.cpu", "1").await;
    browser.submit("form.stack button.primary").await;
    assert_eq!(browser.path().await, "/tenants/team-a?saved=1");
    assert_eq!(browser.text("p.notice").await, "Saved.");
    assert_eq!(
        browser
            .attr(".bar[aria-label^='cpu:']", "aria-label")
            .await
            .as_deref(),
        Some("cpu: 0 allocated, 0 reserved, 1 free of 1")
    );
    assert_eq!(
        browser.attr("[id=\"quota.cpu\"]", "value").await.as_deref(),
        Some("1")
    );
    let tenant: Value = server.get("/api/v1/tenants/team-a").await;
    assert_eq!(tenant["quota"]["cpu_millis"], 1000, "{tenant:#}");
    // No pool at all, kept as such through a later save of the form.
    browser.fill("allowed_pools", "-").await;
    browser.submit("form.stack button.primary").await;
    browser.submit("form.stack button.primary").await;
    let tenant: Value = server.get("/api/v1/tenants/team-a").await;
    assert_eq!(tenant["allowed_pools"], serde_json::json!([]), "{tenant:#}");
    assert_eq!(
        browser
            .attr("[id=\"allowed_pools\"]", "value")
            .await
            .as_deref(),
        Some("-")
    );
    // Its pools and a limit in one of them: a bad quantity is shown next to
    // the field, a good one saved.
    browser.fill("allowed_pools", "browser").await;
    browser.fill("pool_limits", "browser: memory=lots").await;
    browser.submit("form.stack button.primary").await;
    let error = browser.text("[id=\"pool_limits-error\"]").await;
    assert!(error.contains("memory"), "{error}");
    browser
        .fill("pool_limits", "browser: memory=2Gi, runs=2")
        .await;
    browser.submit("form.stack button.primary").await;
    assert_eq!(browser.path().await, "/tenants/team-a?saved=1");
    let tenant: Value = server.get("/api/v1/tenants/team-a").await;
    assert_eq!(
        tenant["allowed_pools"],
        serde_json::json!(["browser"]),
        "{tenant:#}"
    );
    assert_eq!(
        (
            &tenant["pool_limits"]["browser"]["memory_mib"],
            &tenant["pool_limits"]["browser"]["runs"]
        ),
        (&2048.into(), &2.into()),
        "{tenant:#}"
    );
    assert_eq!(
        tenant["quota"]["cpu_millis"], 1000,
        "the quota is kept: {tenant:#}"
    );

    // A run holds the quota; a second waits behind it, and the queue says why.
    let held = id_of(&server.submit(&held_run("held", "team-a", "browser")).await);
    server.admitted(held).await;
    let behind = id_of(
        &server
            .submit(&quick_run("behind", "team-a", "browser"))
            .await,
    );
    let row = format!("//tr[td/a[@href='/runs/{behind}']]//span[@class='reason']/code");
    eventually(
        "the queue to show why the second run waits",
        Duration::from_secs(20),
        || async {
            browser.goto("/queue").await;
            let code = browser.client.find(Locator::XPath(&row)).await.ok()?;
            (code.text().await.ok()? == "tenant_quota").then_some(())
        },
    )
    .await;

    // The held run's page: its log follows, without a reload.
    browser.goto(&format!("/runs/{held}")).await;
    browser.js("window.__corralSamePage = true").await;
    let log = || async {
        browser
            .js("return document.querySelector('pre#log').textContent")
            .await
            .as_str()
            .expect("the log's text")
            .to_string()
    };
    eventually(
        "the first line in the page",
        Duration::from_secs(20),
        || async { log().await.contains("first line").then_some(()) },
    )
    .await;
    assert!(
        !log().await.contains("second line"),
        "the step waits for the test"
    );
    server.open_gate(held, "go");
    eventually(
        "the second line in the page",
        Duration::from_secs(20),
        || async { log().await.contains("second line").then_some(()) },
    )
    .await;
    eventually(
        "the log to end with the run",
        Duration::from_secs(20),
        || async {
            (browser
                .js("return document.querySelector('pre#log').dataset.ended")
                .await
                == "true")
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        browser.js("return window.__corralSamePage === true").await,
        true,
        "the page was not reloaded"
    );
    // The run's state refreshes in place too.
    eventually(
        "the page to show the run succeeded",
        Duration::from_secs(20),
        || async {
            browser
                .client
                .find(Locator::Css("#run .badge.state-succeeded"))
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;

    // Its cost on the dashboards, as the usage report has it.
    for id in [held, behind] {
        let run = server.wait_run_ended(id, Duration::from_secs(30)).await;
        assert_eq!(run["state"], "succeeded", "{run:#}");
    }
    let report: Value = server.get("/api/v1/usage?by=tenant").await;
    let cost = report["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .find(|r| r["key"]["tenant"] == "team-a")
        .map(|r| r["usage"]["cost"].as_f64().expect("a cost"))
        .unwrap_or_else(|| panic!("team-a in {report:#}"));
    assert!(
        cost >= 0.01,
        "seconds at 3600 a cpu-hour cost cents at least: {cost}"
    );
    browser.goto(DASHBOARDS).await;
    let cell = browser
        .client
        .find(Locator::XPath(
            "//section[h3[starts-with(normalize-space(.), 'By tenant')]]//tr[td[1][normalize-space(.)='team-a']]/td[5]",
        ))
        .await
        .unwrap_or_else(|e| panic!("team-a in the By tenant table: {e}"));
    assert_eq!(cell.text().await.expect("a cell"), format!("{cost:.2}"));
    // Each run's own cost in the list of recent runs: together, the tenant's.
    browser.goto("/queue").await;
    let mut listed = 0.0;
    for id in [held, behind] {
        let cell = browser
            .client
            .find(Locator::XPath(&format!(
                "//*[@id='recent']//tr[td/a[@href='/runs/{id}']]/td[5]"
            )))
            .await
            .unwrap_or_else(|e| panic!("run {id} in the recent runs: {e}"));
        let text = cell.text().await.expect("a cell");
        listed += text
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("run {id}'s cost {text:?}"));
    }
    assert!(
        (listed - cost).abs() < 0.011,
        "the runs' costs {listed} make the tenant's {cost}"
    );
    browser.goto(DASHBOARDS).await;
    // Both runs' admission waits, as the API has them.
    let (status, waits) = server
        .send_as(
            &server.admin_token,
            "GET",
            "/api/v1/history/waits?from=24h",
            "",
            None,
        )
        .await;
    assert_eq!(status, 200, "{waits}");
    let team = &waits["tenants"][0];
    assert_eq!(
        (&team["tenant"], &team["runs"]),
        (&"team-a".into(), &2.into()),
        "{waits:#}"
    );
    let row = browser
        .client
        .find(Locator::XPath(
            "//section[h3[starts-with(normalize-space(.), 'Admission wait by tenant')]]//tr[td[1][normalize-space(.)='team-a']]",
        ))
        .await
        .unwrap_or_else(|e| panic!("team-a in the admission wait table: {e}"));
    let admitted = row.find(Locator::XPath("td[2]")).await.expect("a cell");
    assert_eq!(admitted.text().await.expect("a cell"), "2");
    let mut shown = Vec::new();
    for data in row.find_all(Locator::Css("td data")).await.expect("cells") {
        let value = data.attr("value").await.expect("a value").expect("a value");
        shown.push(value.parse::<f64>().expect("seconds"));
    }
    let seconds = |p: &str| team[p].as_f64().expect("a percentile");
    assert_eq!(shown, vec![seconds("p50_seconds"), seconds("p99_seconds")]);
    // Both tables as CSV, downloaded with the session.
    let page = &browser;
    let csv = |path: &str| {
        let script = format!("return fetch('{path}').then(r => r.text())");
        async move { page.js(&script).await.as_str().expect("text").to_string() }
    };
    assert_eq!(
        csv("/dashboards/waits.csv").await,
        format!(
            "tenant,runs,p50_seconds,p99_seconds\nteam-a,2,{:.3},{:.3}\n",
            seconds("p50_seconds"),
            seconds("p99_seconds")
        )
    );
    let usage = csv("/dashboards/usage.csv?by=tenant").await;
    assert!(
        usage.lines().any(|l| l.starts_with("team-a,")),
        "team-a in the usage CSV: {usage}"
    );

    browser.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_sees_only_its_runs_and_forged_forms_are_refused() {
    let server = Server::start("console-tenant", StoreKind::Sqlite).await;
    server
        .apply(
            "kind: Pool\nname: shared\ncapacity: {cpu: 4, memory: 4Gi}\n---\nkind: Tenant\nname: alpha\n---\nkind: Tenant\nname: beta\n",
        )
        .await;
    let token = server
        .create_token("team-alpha", "tenant", Some(("tenant", "alpha")))
        .await;
    let own = id_of(&server.submit(&held_run("own", "alpha", "shared")).await);
    let other = id_of(&server.submit(&held_run("other", "beta", "shared")).await);
    for id in [own, other] {
        server
            .wait_for_output(id, "first line", Duration::from_secs(20))
            .await;
    }
    let browser = Browser::start(&server.url).await;
    browser.viewport(1280, 800).await;
    browser.login(&token).await;
    assert_eq!(browser.path().await, "/");
    assert_eq!(browser.text("main h1").await, "Overview");

    // The session is a random id, not the token, in a cookie scripts cannot read.
    let cookie = browser
        .client
        .get_named_cookie("corral_session")
        .await
        .expect("the session cookie");
    let session = cookie.value().to_string();
    assert_ne!(session, token);
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    let scripts_see = browser.js("return document.cookie").await;
    assert!(
        !scripts_see
            .as_str()
            .unwrap_or_default()
            .contains("corral_session"),
        "{scripts_see}"
    );

    // Its own run, with the form that cancels it; not the other tenant's.
    browser.goto(&format!("/runs/{own}")).await;
    assert_eq!(browser.status().await, 200);
    let csrf = browser
        .attr(
            &format!("form[action='/runs/{own}/cancel'] input[name=csrf]"),
            "value",
        )
        .await
        .expect("the cancel form's CSRF token");
    // Another tenant's run is not found, exactly as a run that does not exist.
    browser.goto(&format!("/runs/{other}")).await;
    assert_eq!(browser.status().await, 404);
    assert_eq!(
        browser.client.title().await.expect("title"),
        "Not found · corral"
    );
    assert_eq!(browser.text("main h1").await, "Not found");
    browser.goto("/queue").await;
    let listed = browser
        .client
        .find_all(Locator::Css(&format!("a[href='/runs/{other}']")))
        .await
        .expect("links");
    assert!(listed.is_empty(), "the queue lists another tenant's run");

    // Forms posted from elsewhere, with the session's cookie but not its CSRF
    // token, are refused, and change nothing.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTP client");
    let post = |path: String, cookie: Option<&str>, body: String| {
        let mut request = http
            .post(format!("{}{path}", server.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some(session) = cookie {
            request = request.header("cookie", format!("corral_session={session}"));
        }
        async move {
            let answer = request.send().await.expect("a POST");
            (
                answer.status().as_u16(),
                answer.text().await.expect("a body"),
            )
        }
    };
    let cancel = format!("/runs/{own}/cancel");
    let forged = [
        ("no csrf field", Some(session.as_str()), String::new()),
        (
            "an empty csrf field",
            Some(session.as_str()),
            "csrf=".to_string(),
        ),
        (
            "a wrong csrf field",
            Some(session.as_str()),
            format!("csrf={}", "0".repeat(64)),
        ),
        ("no session", None, format!("csrf={csrf}")),
    ];
    for (what, cookie, body) in forged {
        let (status, page) = post(cancel.clone(), cookie, body).await;
        assert_eq!(status, 403, "a cancel with {what}: {page}");
    }
    // Another tenant's run, even with this session's own token.
    let (status, page) = post(
        format!("/runs/{other}/cancel"),
        Some(&session),
        format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(status, 404, "cancelling another tenant's run: {page}");
    // Its log is not found either.
    let log = http
        .get(format!("{}/runs/{other}/log", server.url))
        .header("cookie", format!("corral_session={session}"))
        .send()
        .await
        .expect("a GET");
    assert_eq!(log.status().as_u16(), 404);
    for id in [own, other] {
        assert_eq!(server.run(id).await["state"], "running", "run {id} goes on");
    }
    // The same form with the page's CSRF token is taken: the refusals above
    // were for the token alone.
    let (status, page) = post(cancel, Some(&session), format!("csrf={csrf}&confirm=yes")).await;
    assert_eq!(status, 303, "a cancel from the console's own form: {page}");
    let run = server.wait_run_ended(own, Duration::from_secs(20)).await;
    assert_eq!(run["state"], "cancelled", "{run:#}");
    assert_eq!(server.run(other).await["state"], "running");

    server.open_gate(other, "go");
    browser.close().await;
}

/// Every page, logged out and in, at each viewport: no serious or critical
/// axe-core violation, nothing its Content-Security-Policy blocked, and a
/// screenshot of each (`-dark` in its name when `dark`).
async fn every_page_passes_axe(dark: bool) {
    let server = Server::start("console-axe", StoreKind::Sqlite).await;
    server
        .apply(
            "kind: Pool\nname: main\ncapacity: {cpu: 2, memory: 4Gi}\nprice: {cpu_hour: 0.5, memory_gib_hour: 0.05}\n---\nkind: Tenant\nname: team-a\nquota: {cpu: 1}\nbudget: {monthly: 100}\n",
        )
        .await;
    let held = printing_held_run(&server).await;
    let waiting = id_of(&server.submit(&quick_run("waiting", "team-a", "main")).await);
    server.waits_with(waiting, "tenant_quota").await;

    let browser = Browser::start_with(
        &server.url,
        Settings {
            dark,
            ..Settings::default()
        },
    )
    .await;
    let scheme = if dark { "dark" } else { "light" };
    assert_eq!(
        browser
            .js("return matchMedia('(prefers-color-scheme: dark)').matches")
            .await,
        dark,
        "the browser asks for {scheme} colours"
    );
    // Each page as a person opens it at each size (the error page as they
    // make it: a pool form with a memory that is not a quantity).
    let run = format!("/runs/{held}");
    let pages = [
        ("login", "/login"),
        ("overview", "/"),
        ("pools", "/pools"),
        ("pool", "/pools/main"),
        ("new-pool", "/pools/new"),
        ("new-pool-error", "/pools/new"),
        ("delete-pool-confirm", "/pools/main"),
        ("tenants", "/tenants"),
        ("tenant", "/tenants/team-a"),
        ("new-tenant", "/tenants/new"),
        ("queue", "/queue"),
        ("run", &run),
        ("dashboards", DASHBOARDS),
        ("agents", "/agents"),
        ("prices", "/prices"),
        ("tokens", "/tokens"),
        ("token-created", "/tokens"),
        ("revoke-token", "/tokens"),
        ("audit", "/audit"),
    ];
    let mut failures = Vec::new();
    for (name, path) in pages {
        if name == "overview" {
            browser.login(&server.admin_token).await;
        }
        for size in VIEWPORTS {
            browser.viewport(size.0, size.1).await;
            browser.goto(path).await;
            let mut status = 200;
            if name == "new-pool-error" {
                browser.fill("name", "typo").await;
                browser.fill("capacity.memory", "lots").await;
                browser.submit("form.stack button.primary").await;
                status = 422;
            }
            if name == "delete-pool-confirm" {
                browser
                    .submit("form[action='/pools/main/delete'] button")
                    .await;
            }
            // A token made at this size, then asked to be revoked.
            let token = format!("axe-{}", size.0);
            if name == "token-created" {
                browser.fill("name", &token).await;
                browser.submit("form.stack button.primary").await;
                status = 201;
            }
            if name == "revoke-token" {
                browser
                    .submit(&format!("tr[data-token='{token}'] form button"))
                    .await;
            }
            assert_eq!(browser.status().await, status, "{name}: {path}");
            let at = format!(
                "{name} ({path}) at {}x{} in {scheme} colours",
                size.0, size.1
            );
            for violation in browser.axe().await {
                failures.push(format!("{at}: {violation}"));
            }
            for blocked in browser.csp_violations().await {
                failures.push(format!("{at}: the CSP blocked {blocked}"));
            }
            // WCAG 1.4.10 (reflow): the page scrolls down only; wide tables
            // scroll in their own box.
            if let Some(overflow) = browser.sideways().await {
                failures.push(format!(
                    "{at}: scrolls sideways (reflow, WCAG 1.4.10): {overflow}"
                ));
            }
            let file = if dark {
                format!("{name}-dark")
            } else {
                name.to_string()
            };
            browser.screenshot(&file, size).await;
        }
    }

    server.open_gate(held, "go");
    browser.close().await;
    assert!(
        failures.is_empty(),
        "{} serious or critical accessibility problems (axe-core, reflow):\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn every_page_passes_axe_at_desktop_and_phone_sizes() {
    every_page_passes_axe(false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_page_passes_axe_in_dark_colours_too() {
    every_page_passes_axe(true).await;
}

/// The dashboards over each range they offer, with a second pool and a
/// second tenant beside the built-in ones, as on any server in use.
#[tokio::test(flavor = "multi_thread")]
async fn the_dashboards_answer_every_range() {
    let server = Server::start("console-ranges", StoreKind::Sqlite).await;
    server
        .apply("kind: Pool\nname: main\ncapacity: {cpu: 2, memory: 4Gi}\n---\nkind: Tenant\nname: team-a\n")
        .await;
    // A fresh server's first samples are in every range, the hours and days
    // not rolled up yet included: the API's answer for 30 days has them...
    for range in ["7d", "30d"] {
        eventually(
            &format!("the pool's samples in the last {range}"),
            Duration::from_secs(30),
            || async {
                let answer: Value = server
                    .get(&format!(
                        "/api/v1/history?series=pool.utilization.cpu&pool=main&from={range}"
                    ))
                    .await;
                let points = answer["series"][0]["points"].as_array().cloned();
                points.is_some_and(|p| !p.is_empty()).then_some(())
            },
        )
        .await;
    }
    let browser = Browser::start(&server.url).await;
    browser.login(&server.admin_token).await;
    let mut failures = Vec::new();
    for range in ["1h", "24h", "7d", "30d"] {
        let path = format!("/dashboards?range={range}");
        browser.goto(&path).await;
        let status = browser.status().await;
        if status != 200 {
            failures.push(format!("{path}: {status}: {}", browser.text("main").await));
        }
        // ... and so do the dashboards: a chart, not "No samples".
        let charted = browser
            .js("return document.querySelector('script[data-chart=\"cpu-utilization\"]') !== null")
            .await;
        if charted != Value::Bool(true) {
            failures.push(format!(
                "{path}: no cpu utilization chart: {}",
                browser.text("main").await
            ));
        }
    }
    browser.goto("/dashboards").await;
    let status = browser.status().await;
    if status != 200 {
        failures.push(format!(
            "/dashboards: {status}: {}",
            browser.text("main").await
        ));
    }
    browser.close().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A person narrows the window (or turns a tablet) on the dashboards: the
/// charts drawn for the wide window shrink with it, and the page does not
/// scroll sideways.
#[tokio::test(flavor = "multi_thread")]
async fn charts_shrink_when_the_window_narrows() {
    let server = Server::start("console-narrow", StoreKind::Sqlite).await;
    server
        .apply("kind: Pool\nname: main\ncapacity: {cpu: 2, memory: 4Gi}\n---\nkind: Tenant\nname: team-a\n")
        .await;
    let run = id_of(&server.submit(&quick_run("sampled", "team-a", "main")).await);
    server.wait_run_ended(run, Duration::from_secs(30)).await;
    let browser = Browser::start(&server.url).await;
    browser.login(&server.admin_token).await;
    browser.viewport(1280, 800).await;
    browser.goto(DASHBOARDS).await;
    let charts = "return document.querySelectorAll('.plot canvas').length";
    eventually(
        "the dashboards' charts",
        Duration::from_secs(10),
        || async { (browser.js(charts).await.as_u64() >= Some(1)).then_some(()) },
    )
    .await;
    browser.viewport(390, 844).await;
    // The charts follow their boxes through a ResizeObserver: give it time.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let overflow = loop {
        let overflow = browser.sideways().await;
        if overflow.is_none() || std::time::Instant::now() >= deadline {
            break overflow;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let widths = browser
        .js("return [...document.querySelectorAll('.plot')].map((p) => p.clientWidth + '/' + (p.querySelector('canvas') || {}).width)")
        .await;
    assert!(
        overflow.is_none(),
        "narrowed from 1280 to 390 px wide, the dashboards scroll sideways: {}; \
         each plot's width/its canvas's width: {widths}",
        overflow.unwrap_or_default()
    );
    browser.close().await;
}

/// Chromium keeps a page left behind in its back/forward cache, and the
/// console's pages hold streams open (`/events` on every live page, the
/// followed log on a run's page): if a page kept so still holds them, a few
/// pages later HTTP/1.1's six connections to the server are all held and the
/// next page waits for one. With the cache on, as browsers ship, every page
/// must load promptly however a person goes from page to page.
#[tokio::test(flavor = "multi_thread")]
async fn pages_left_behind_do_not_hold_the_connections_of_the_next() {
    let server = Server::start("console-bfcache", StoreKind::Sqlite).await;
    server
        .apply("kind: Pool\nname: main\ncapacity: {cpu: 2, memory: 4Gi}\n---\nkind: Tenant\nname: team-a\n")
        .await;
    let held = printing_held_run(&server).await;
    let browser = Browser::start_with(
        &server.url,
        Settings {
            page_load: Duration::from_secs(10),
            ..Settings::default()
        },
    )
    .await;
    browser.login(&server.admin_token).await;
    let run = format!("/runs/{held}");
    let tour = [
        "/",
        "/pools",
        "/pools/main",
        "/pools/new",
        "/tenants",
        "/tenants/team-a",
        "/queue",
        &run,
        DASHBOARDS,
        "/queue",
        &run,
        "/",
    ];
    let mut visited = Vec::new();
    for path in tour {
        let started = std::time::Instant::now();
        if let Err(e) = browser
            .client
            .goto(&format!("{}{path}", browser.base))
            .await
        {
            panic!(
                "{path} did not load within 10 s after {visited:?} ({e}): the pages left \
                 behind in the back/forward cache still hold their /events and log streams, \
                 so no connection to the server is free (console.js should close its \
                 EventSource and abort its log fetch on pagehide, and open them again on \
                 a pageshow that is persisted)"
            );
        }
        visited.push(format!("{path} in {} ms", started.elapsed().as_millis()));
    }
    server.open_gate(held, "go");
    browser.close().await;
}

/// The overview answers "who is blocked, and by what" at a glance: tenants
/// held back come first, with what holds them and their budget's health in
/// words; a tenant's page says the same, with the forecast's basis.
#[tokio::test(flavor = "multi_thread")]
async fn the_overview_puts_tenants_in_trouble_first() {
    let server = Server::start("console-trouble", StoreKind::Sqlite).await;
    server
        .apply(
            "kind: Pool\nname: main\ncapacity: {cpu: 2, memory: 4Gi}\nprice: {cpu_hour: 0.5}\n---\nkind: Tenant\nname: aaa-calm\nbudget: {monthly: 100}\n---\nkind: Tenant\nname: team-a\nquota: {cpu: 1}\nbudget: {monthly: 100}\n",
        )
        .await;
    let held = printing_held_run(&server).await;
    let waiting = id_of(&server.submit(&quick_run("waiting", "team-a", "main")).await);
    server.waits_with(waiting, "tenant_quota").await;

    let browser = Browser::start(&server.url).await;
    browser.login(&server.admin_token).await;
    browser.goto("/").await;
    let first_row = browser.text("#overview table tbody tr:first-child").await;
    assert!(
        first_row.starts_with("team-a")
            && first_row.contains("quota 1")
            && first_row.contains("ok"),
        "the held-back tenant first, with what holds it: {first_row}"
    );
    let calm = browser.text("#overview table tbody tr:nth-child(2)").await;
    assert!(calm.starts_with("aaa-calm"), "{calm}");

    browser.goto("/tenants/team-a").await;
    let facts = browser.text("#tenant dl.facts").await;
    for words in [
        "Blocked by",
        "quota 1",
        "Budget health",
        "a day (the spend of the last",
        "Reaches its budget",
    ] {
        assert!(
            facts.contains(words),
            "{words:?} on the tenant's page: {facts}"
        );
    }
    server.open_gate(held, "go");
    browser.close().await;
}
