//! The console's pages for the operator's day, in a real browser: tokens made
//! and revoked, the audit log filtered and paged, the agents of a pool with
//! what each holds, the queue paged and read on a phone, the run page's
//! request, envelope, admission wait and step durations, and ten tabs of one
//! browser sharing its few connections to the server (HTTP/1.1 gives a
//! browser six), the stream passing to another tab when its holder closes.

use std::collections::BTreeSet;
use std::time::Duration;

use fantoccini::Locator;
use serde_json::Value;

use crate::browser::{Browser, Settings, held_run, id_of, printing_held_run, quick_run};
use crate::harness::{Server, StoreKind, eventually};

/// The texts of the elements `css` finds on the page shown, read at once (a
/// live region may be replaced between two reads).
async fn texts(browser: &Browser, css: &str) -> Vec<String> {
    let script = format!(
        "return [...document.querySelectorAll({})].map((e) => e.innerText.trim())",
        serde_json::to_string(css).expect("a string")
    );
    browser
        .js(&script)
        .await
        .as_array()
        .expect("texts")
        .iter()
        .map(|t| t.as_str().expect("a text").to_string())
        .collect()
}

/// The text of the one element `css` finds.
async fn text(browser: &Browser, css: &str) -> String {
    let found = texts(browser, css).await;
    assert_eq!(found.len(), 1, "one {css}: {found:?}");
    found[0].clone()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_token_made_in_the_console_shows_its_secret_once_and_works_until_revoked_there() {
    let server = Server::start("pages-tokens", StoreKind::Sqlite).await;
    let browser = Browser::start(&server.url).await;
    browser.viewport(1280, 800).await;
    browser.login(&server.admin_token).await;
    browser.goto("/tokens").await;
    assert_eq!(browser.text("main h1").await, "Tokens");

    // A name already taken: the form again with the error, the input kept.
    browser.fill("name", "admin").await;
    browser.fill("expires", "2h").await;
    browser.submit("form.stack button.primary").await;
    assert_eq!(browser.status().await, 422);
    assert!(
        browser.text("[id=\"name-error\"]").await.contains("admin"),
        "{}",
        browser.text("main").await
    );
    assert_eq!(
        browser.attr("[id=\"expires\"]", "value").await.as_deref(),
        Some("2h")
    );

    // A viewer token for an hour: its secret on the answer, not in its URL.
    browser.fill("name", "night-watch").await;
    browser.fill("expires", "1h").await;
    browser.submit("form.stack button.primary").await;
    assert_eq!(browser.status().await, 201);
    assert_eq!(browser.path().await, "/tokens", "no secret in the URL");
    let secret = browser
        .attr("#secret", "value")
        .await
        .expect("the secret is shown");
    assert!(secret.len() >= 32, "{secret}");
    let (status, pools) = server
        .send_as(&secret, "GET", "/api/v1/pools", "", None)
        .await;
    assert_eq!(status, 200, "the new token works: {pools}");
    let tokens: Vec<Value> = server.get("/api/v1/tokens").await;
    let made = tokens
        .iter()
        .find(|t| t["name"] == "night-watch")
        .expect("the token is listed");
    assert_eq!(made["role"], "viewer");
    assert!(made["expires_at"].is_string(), "{made}");
    // Listed without its secret, shown once only.
    browser.goto("/tokens").await;
    // The answer that carries a secret is never stored by the browser.
    let cache = browser
        .js(
            "const csrf = document.querySelector('input[name=csrf]').value;
             return fetch('/tokens', { method: 'POST', body: new URLSearchParams(
               { csrf, name: 'second', role: 'viewer' }) })
               .then((r) => r.status + ' ' + r.headers.get('cache-control'));",
        )
        .await;
    assert_eq!(cache, "201 no-store");

    let row = "tr[data-token='night-watch']";
    let listed = browser.text(row).await;
    assert!(listed.contains("viewer"), "{listed}");
    assert!(
        !browser.text("main").await.contains(&secret),
        "the list shows no secret"
    );

    // Revoke asks first: the token still works until confirmed.
    browser.submit(&format!("{row} form button")).await;
    assert_eq!(browser.text("main h1").await, "Revoke token night-watch?");
    let (status, _) = server
        .send_as(&secret, "GET", "/api/v1/pools", "", None)
        .await;
    assert_eq!(status, 200, "not revoked before the confirmation");
    browser
        .submit("form[action='/tokens/night-watch/revoke'] button.danger")
        .await;
    assert_eq!(browser.path().await, "/tokens?revoked=night-watch");
    let (status, body) = server
        .send_as(&secret, "GET", "/api/v1/pools", "", None)
        .await;
    assert_eq!(status, 401, "the revoked token is refused: {body}");
    let revoked = browser.text(row).await;
    assert!(
        browser
            .client
            .find_all(Locator::Css(&format!("{row} form")))
            .await
            .expect("forms")
            .is_empty(),
        "a revoked token has no revoke button: {revoked}"
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_audit_log_filters_by_object_and_pages() {
    let server = Server::start("pages-audit", StoreKind::Sqlite).await;
    server
        .apply("kind: Pool\nname: quiet\ncapacity: {cpu: 1, memory: 1Gi}\n")
        .await;
    for n in 1..=55 {
        server
            .apply(&format!(
                "kind: Pool\nname: busy\ncapacity: {{cpu: 1, memory: 1Gi}}\nmax_workers: {n}\n"
            ))
            .await;
    }
    server
        .apply("kind: Pool\nname: quiet\ncapacity: {cpu: 2, memory: 1Gi}\n")
        .await;
    let busy: Vec<Value> = server
        .get("/api/v1/audit?kind=pool&name=busy&order=newest")
        .await;
    assert_eq!(busy.len(), 55, "{busy:#?}");
    let ids = |entries: &[Value]| -> Vec<String> {
        entries.iter().map(|e| e["id"].to_string()).collect()
    };

    let browser = Browser::start(&server.url).await;
    browser.viewport(1280, 800).await;
    browser.login(&server.admin_token).await;
    // By object, newest first, fifty a page.
    browser.goto("/audit?kind=pool&name=busy").await;
    let rows = "#audit tbody tr";
    let page_ids = || async {
        let mut out = Vec::new();
        for row in browser
            .client
            .find_all(Locator::Css(rows))
            .await
            .expect("rows")
        {
            out.push(row.attr("data-id").await.expect("attr").expect("an id"));
        }
        out
    };
    assert_eq!(page_ids().await, ids(&busy[..50]));
    for object in texts(&browser, "#audit tbody tr td:nth-child(3)").await {
        assert_eq!(object, "pool busy");
    }
    // What changed, field by field.
    let newest = browser
        .text("#audit tbody tr:first-child td:nth-child(5)")
        .await;
    assert_eq!(newest, "max_workers: 54 → 55", "the newest change");
    // The next page has the rest; back again.
    browser.submit("nav.pager a[rel=next]").await;
    assert_eq!(page_ids().await, ids(&busy[50..]));
    assert!(
        browser
            .client
            .find_all(Locator::Css("nav.pager a[rel=next]"))
            .await
            .expect("links")
            .is_empty(),
        "the last page has no next"
    );
    browser.submit("nav.pager a[rel=prev]").await;
    assert_eq!(page_ids().await, ids(&busy[..50]));

    // Through the form: the other pool's entries only.
    browser.fill("name", "quiet").await;
    browser.submit("form.filters button").await;
    let quiet = texts(&browser, "#audit tbody tr td:nth-child(3)").await;
    assert_eq!(quiet, ["pool quiet", "pool quiet"], "{quiet:?}");
    let changed = browser
        .text("#audit tbody tr:first-child td:nth-child(5)")
        .await;
    assert_eq!(changed, "capacity.cpu: \"1\" → \"2\"");
    // A time range that ends before anything happened: nothing.
    browser
        .goto("/audit?name=quiet&until=2000-01-01T00:00:00Z")
        .await;
    assert_eq!(browser.text("main p.muted").await, "No entry.");
    // A bad time is shown next to its field.
    browser.goto("/audit?since=yesterday").await;
    assert_eq!(browser.status().await, 400);
    assert!(
        browser
            .text("[id=\"since-error\"]")
            .await
            .contains("yesterday")
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_page_lists_its_agents_and_what_each_holds() {
    let mut server = Server::start("pages-agents", StoreKind::Sqlite).await;
    let _agents = server.static_pool_of_two("metal").await;
    let run = id_of(&server.submit(&held_run("held", "t", "metal")).await);
    server
        .wait_for_output(run, "first line", Duration::from_secs(20))
        .await;
    let pool: Value = server.get("/api/v1/pools/metal").await;
    let holders: Vec<&Value> = pool["live_agents"]
        .as_array()
        .expect("live agents")
        .iter()
        .filter(|a| !a["holds"].as_array().expect("holds").is_empty())
        .collect();
    assert_eq!(holders.len(), 1, "{pool:#}");
    assert_eq!(holders[0]["holds"][0]["run_id"], run, "{pool:#}");
    let holder = holders[0]["name"].as_str().expect("a name").to_string();
    // Another tenant sees the agents, not what they hold for others.
    server.apply("kind: Tenant\nname: u\n").await;
    let other = server
        .create_token("team-u", "tenant", Some(("tenant", "u")))
        .await;
    let (status, seen) = server
        .send_as(&other, "GET", "/api/v1/pools/metal", "", None)
        .await;
    assert_eq!(status, 200, "{seen}");
    let agents = seen["live_agents"].as_array().expect("live agents");
    assert_eq!(agents.len(), 2, "{seen:#}");
    assert!(
        agents.iter().all(|a| a["holds"] == serde_json::json!([])),
        "{seen:#}"
    );

    let browser = Browser::start(&server.url).await;
    browser.viewport(1280, 800).await;
    browser.login(&server.admin_token).await;
    // The pool's page, then the page of every pool's agents narrowed to it.
    for (page, title) in [
        ("/pools/metal", "Pool metal"),
        ("/agents?pool=metal", "Agents of pool metal"),
    ] {
        browser.goto(page).await;
        assert_eq!(text(&browser, "main h1").await, title);
        let rows = texts(&browser, "table.agents tbody tr").await;
        assert_eq!(rows.len(), 2, "{page}: {rows:?}");
        for agent in ["left", "right"] {
            let row = text(&browser, &format!("tr[data-agent='{agent}']")).await;
            assert!(row.contains("2 cpu, 2 GiB"), "what {agent} offers: {row}");
            assert!(row.contains("ago"), "its last poll: {row}");
            let holds = text(&browser, &format!("tr[data-agent='{agent}'] td.holds")).await;
            if agent == holder {
                assert_eq!(
                    holds,
                    format!("run {run} (group 0) · tenant t · 1 cpu, 256 MiB"),
                    "{page}"
                );
            } else {
                assert_eq!(holds, "nothing", "{page}");
            }
        }
    }
    server.open_gate(run, "go");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_queue_pages_and_reads_as_cards_on_a_phone() {
    let server = Server::start("pages-queue", StoreKind::Sqlite).await;
    server
        .apply("kind: Pool\nname: main\ncapacity: {cpu: 2, memory: 4Gi}\n---\nkind: Tenant\nname: team-a\nquota: {cpu: 1}\n")
        .await;
    let held = printing_held_run(&server).await;
    let mut waiting = BTreeSet::new();
    for i in 0..55 {
        waiting.insert(id_of(
            &server
                .submit(&quick_run(&format!("w{i}"), "team-a", "main"))
                .await,
        ));
    }
    let last = *waiting.last().expect("runs");
    server.waits_with(last, "tenant_quota").await;

    let browser = Browser::start(&server.url).await;
    browser.viewport(1280, 800).await;
    browser.login(&server.admin_token).await;
    browser.goto("/queue").await;
    let shown = || async {
        let ids = browser
            .js("return [...document.querySelectorAll('#waiting td.run a')]
                   .map((a) => Number(a.getAttribute('href').replace('/runs/', '')))")
            .await;
        ids.as_array()
            .expect("ids")
            .iter()
            .map(|id| id.as_i64().expect("a run id"))
            .collect::<Vec<i64>>()
    };
    let first = shown().await;
    assert_eq!(first.len(), 50, "a page holds fifty runs");
    browser.submit("nav.pager a[rel=next]").await;
    assert_eq!(browser.path().await, "/queue?page=2");
    let second = shown().await;
    assert_eq!(second.len(), 5);
    let all: BTreeSet<i64> = first.iter().chain(&second).copied().collect();
    assert_eq!(all, waiting, "every waiting run once, over two pages");

    // On a phone: each run a card, its reason first; nothing scrolls sideways.
    browser.viewport(390, 844).await;
    browser.goto("/queue").await;
    assert_eq!(browser.sideways().await, None);
    let order = browser
        .js(
            "return [...document.querySelectorAll('#waiting tbody tr')].map((tr) => {
               const why = tr.querySelector('td.why').getBoundingClientRect();
               const run = tr.querySelector('td.run').getBoundingClientRect();
               return why.bottom <= run.top && why.right <= window.innerWidth;
             })",
        )
        .await;
    let order = order.as_array().expect("cards");
    assert_eq!(order.len(), 50);
    assert!(
        order.iter().all(|o| o == true),
        "the reason comes first, within the screen: {order:?}"
    );
    let reason = text(&browser, "#waiting tbody tr:first-child td.why").await;
    assert!(reason.starts_with("tenant_quota"), "{reason}");
    server.open_gate(held, "go");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_run_page_shows_its_request_envelope_admission_wait_and_step_durations() {
    let server = Server::start("pages-run", StoreKind::Sqlite).await;
    server
        .apply("kind: Pool\nname: main\ncapacity: {cpu: 4, memory: 4Gi}\n---\nkind: Tenant\nname: team-a\n")
        .await;
    // Two steps at once, then one after both: the envelope is the two.
    let run = id_of(
        &server
            .submit(
                "kind: Pipeline\nname: fan\ntenant: team-a\nsteps:\n  \
                 - {name: a, pool: main, resources: {cpu: 1, memory: 256Mi}, run: 'sleep 0.3'}\n  \
                 - {name: b, pool: main, resources: {cpu: 1, memory: 512Mi}, run: 'sleep 0.3'}\n  \
                 - {name: c, pool: main, needs: [a, b], resources: {cpu: 1, memory: 256Mi}, run: 'echo done'}\n",
            )
            .await,
    );
    let view = server.wait_run_ended(run, Duration::from_secs(30)).await;
    assert_eq!(view["state"], "succeeded", "{view:#}");
    assert_eq!(
        view["request"]["groups"][0]["resources"]["cpu_millis"], 2000,
        "{view:#}"
    );

    let browser = Browser::start(&server.url).await;
    browser.viewport(1280, 800).await;
    browser.login(&server.admin_token).await;
    browser.goto(&format!("/runs/{run}")).await;
    assert_eq!(
        texts(&browser, "#request tbody td.envelope").await,
        ["2 cpu, 768 MiB"]
    );
    let wait = browser.text("#admission-wait").await;
    assert!(
        wait.contains(" ms, admitted ") || wait.contains(" s, admitted "),
        "{wait}"
    );
    let durations = texts(&browser, "#steps td.duration").await;
    assert_eq!(durations.len(), 3);
    for d in &durations {
        assert!(
            d.ends_with(" ms") || d.ends_with(" s"),
            "a step's duration: {durations:?}"
        );
    }
    // Times are UTC in the HTML, shown local by the script (which keeps the
    // UTC time as the title).
    let times = browser
        .js(
            "return [...document.querySelectorAll('main time')].map((t) =>
               [t.getAttribute('datetime').endsWith('Z'), t.title === t.getAttribute('datetime')])",
        )
        .await;
    let times = times.as_array().expect("times");
    assert!(times.len() >= 3, "{times:?}");
    assert!(
        times.iter().all(|t| *t == serde_json::json!([true, true])),
        "{times:?}"
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ten_tabs_of_one_browser_all_load_and_follow_a_run_live() {
    let server = Server::start("pages-tabs", StoreKind::Sqlite).await;
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
    let page = format!("/runs/{held}");
    let mut windows = vec![browser.client.window().await.expect("the first window")];
    for _ in 1..10 {
        windows.push(
            browser
                .client
                .new_window(false)
                .await
                .expect("a new window")
                .handle,
        );
    }
    for (i, window) in windows.iter().enumerate() {
        browser
            .client
            .switch_to_window(window.clone())
            .await
            .expect("switch windows");
        if let Err(e) = browser.client.goto(&format!("{}{page}", server.url)).await {
            panic!(
                "window {} of 10 did not load {page} within 10 s ({e}): the windows \
                 before it hold the browser's six connections to the server",
                i + 1
            );
        }
        browser.js("window.__corralSamePage = true").await;
    }
    let log = "return document.querySelector('pre#log').textContent";
    for (i, window) in windows.iter().enumerate() {
        browser
            .client
            .switch_to_window(window.clone())
            .await
            .expect("switch windows");
        eventually(
            &format!("the log in window {}", i + 1),
            Duration::from_secs(20),
            || async {
                let text = browser.js(log).await;
                text.as_str()?.contains("first line").then_some(())
            },
        )
        .await;
    }
    // The first window, which holds the shared event stream (and a followed
    // log), closes: another takes over. The run ends: every window left
    // shows it, without a reload.
    browser
        .client
        .switch_to_window(windows[0].clone())
        .await
        .expect("switch windows");
    browser.client.close_window().await.expect("close a window");
    server.open_gate(held, "go");
    server.wait_run_ended(held, Duration::from_secs(30)).await;
    for (i, window) in windows.iter().enumerate().skip(1) {
        browser
            .client
            .switch_to_window(window.clone())
            .await
            .expect("switch windows");
        eventually(
            &format!("window {} to show the run succeeded", i + 1),
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
        assert_eq!(
            browser.js("return window.__corralSamePage === true").await,
            true,
            "window {} was not reloaded",
            i + 1
        );
        eventually(
            &format!("window {}'s log to end", i + 1),
            Duration::from_secs(20),
            || async {
                let text = browser.js(log).await;
                text.as_str()?.contains("second line").then_some(())
            },
        )
        .await;
    }
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn price_history_shows_each_price_of_a_pool_from_when_it_took_effect() {
    let server = Server::start("pages-prices", StoreKind::Sqlite).await;
    let pool = |cpu_hour: &str| {
        format!(
            "kind: Pool\nname: main\ncapacity: {{cpu: 2, memory: 4Gi}}\nprice: {{cpu_hour: {cpu_hour}, memory_gib_hour: 0.01}}\n"
        )
    };
    server.apply(&pool("0.5")).await;
    server.apply(&pool("0.75")).await;
    let history: Vec<Value> = server.get("/api/v1/prices").await;
    let main: Vec<&Value> = history.iter().filter(|p| p["pool"] == "main").collect();
    assert_eq!(main.len(), 2, "{history:#?}");

    let browser = Browser::start(&server.url).await;
    browser.viewport(1280, 800).await;
    browser.login(&server.admin_token).await;
    browser.goto("/prices").await;
    let rows = texts(&browser, "section[aria-labelledby='prices-main'] tbody tr").await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    assert!(
        rows[0].contains("current") && rows[0].contains("0.7500"),
        "the newest first: {rows:?}"
    );
    assert!(rows[1].contains("0.5000"), "{rows:?}");
    // Each from when it took effect, as the API has it.
    let effective = browser
        .js(
            "return [...document.querySelectorAll(\"section[aria-labelledby='prices-main'] time\")]
               .map((t) => t.getAttribute('datetime'))",
        )
        .await;
    let mut expected: Vec<&Value> = main.iter().map(|p| &p["at"]).collect();
    expected.reverse();
    assert_eq!(
        effective
            .as_array()
            .expect("times")
            .iter()
            .collect::<Vec<_>>(),
        expected
    );
    browser.close().await;
}
