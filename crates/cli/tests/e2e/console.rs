//! The web console in a real browser: headless Chromium, driven through
//! chromedriver (WebDriver), against a real `corral server` and its local
//! agents. A person's paths through it (log in, fill the forms and read their
//! errors, watch a run's log follow, find its cost), what a tenant may not see
//! or do, and every page checked with axe-core at a desktop and a phone size,
//! with screenshots kept under `target/console-screenshots/`.
//!
//! Chromium and chromedriver must be installed (`.ci/run` installs them): the
//! tests fail, never skip, without them.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use fantoccini::wd::TimeoutConfiguration;
use fantoccini::{Client, ClientBuilder, Locator};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::harness::{Server, StoreKind, eventually, temp_dir};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// axe-core, vendored for these tests (the server does not serve it).
const AXE: &str = include_str!("../../../server/assets/vendor/axe.min.js");
/// The dashboards, over their default range.
const DASHBOARDS: &str = "/dashboards";
/// The viewports every page is checked at: a laptop's and a phone's.
const VIEWPORTS: [(u32, u32); 2] = [(1280, 800), (390, 844)];

/// A chromedriver process this test started, with the browser profile it
/// uses; killed with its process group (it and the Chromium it launched) when
/// dropped, a failing test included.
struct Driver {
    child: Child,
    dir: PathBuf,
    url: String,
}

impl Driver {
    async fn start() -> Driver {
        for (path, package) in [(CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")] {
            assert!(
                Path::new(path).exists(),
                "{path} is missing: the console's browser tests need it \
                 (apt-get install {package}; .ci/run installs it when missing)"
            );
        }
        let dir = temp_dir("chromedriver");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port for chromedriver");
        let mut cmd = Command::new(CHROMEDRIVER);
        cmd.arg(format!("--port={port}"))
            .arg(format!(
                "--log-path={}",
                dir.join("chromedriver.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd.spawn().expect("spawn chromedriver");
        let mut driver = Driver {
            child,
            dir,
            url: format!("http://127.0.0.1:{port}"),
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let child = &mut driver.child;
        eventually(
            "chromedriver to accept connections",
            Duration::from_secs(20),
            || {
                let exited = child.try_wait().expect("chromedriver's status");
                assert!(exited.is_none(), "chromedriver exited: {exited:?}");
                std::future::ready(
                    TcpStream::connect_timeout(&addr, Duration::from_millis(200))
                        .is_ok()
                        .then_some(()),
                )
            },
        )
        .await;
        driver
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("chromedriver.log")).unwrap_or_default()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let group = i32::try_from(self.child.id()).expect("pid fits");
        let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
        let _ = self.child.wait();
        if !std::thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// How a browser session starts.
struct Settings {
    /// Pages in their dark colours (`prefers-color-scheme: dark`).
    dark: bool,
    /// How long a page may take to load.
    page_load: Duration,
}

impl Default for Settings {
    fn default() -> Settings {
        Settings {
            dark: false,
            page_load: Duration::from_secs(30),
        }
    }
}

/// One headless Chromium session on a server's console.
struct Browser {
    client: Client,
    base: String,
    /// What the window adds to the viewport, in width and height.
    frame: (u32, u32),
    driver: Driver,
}

impl Browser {
    async fn start(base: &str) -> Browser {
        Browser::start_with(base, Settings::default()).await
    }

    async fn start_with(base: &str, settings: Settings) -> Browser {
        let driver = Driver::start().await;
        let profile = driver.dir.join("profile");
        let mut args = vec![
            "--headless".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            format!("--user-data-dir={}", profile.display()),
            "--window-size=1280,800".into(),
        ];
        if settings.dark {
            args.push("--force-dark-mode".into());
        }
        let caps = json!({
            "browserName": "chrome",
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        });
        let Value::Object(caps) = caps else {
            unreachable!("a JSON object")
        };
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&driver.url)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "start a Chromium session: {e}\nchromedriver log:\n{}",
                    driver.log()
                )
            });
        client
            .update_timeouts(TimeoutConfiguration::new(
                Some(Duration::from_secs(30)),
                Some(settings.page_load),
                Some(Duration::ZERO),
            ))
            .await
            .expect("set the session's timeouts");
        let mut browser = Browser {
            client,
            base: base.to_string(),
            frame: (0, 0),
            driver,
        };
        // Headless Chromium sizes the window, not the viewport: measure what
        // the window adds once, so that viewports come out exact.
        let sizes = browser
            .js("return [window.outerWidth - window.innerWidth, window.outerHeight - window.innerHeight]")
            .await;
        let extra = |i: usize| u32::try_from(sizes[i].as_i64().expect("a size")).unwrap_or(0);
        browser.frame = (extra(0), extra(1));
        browser
    }

    /// Ends the session (Chromium quits); the driver goes when dropped.
    async fn close(self) {
        let Browser { client, driver, .. } = self;
        client.close().await.expect("end the browser session");
        drop(driver);
    }

    async fn viewport(&self, width: u32, height: u32) {
        self.client
            .set_window_size(width + self.frame.0, height + self.frame.1)
            .await
            .expect("set the window size");
        eventually(
            &format!("a {width}x{height} viewport"),
            Duration::from_secs(5),
            || async {
                let v = self
                    .js("return [window.innerWidth, window.innerHeight]")
                    .await;
                (v == json!([width, height])).then_some(())
            },
        )
        .await;
    }

    async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script {script:?}: {e}"))
    }

    async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
    }

    /// The path (and query) of the page shown.
    async fn path(&self) -> String {
        let url = self.client.current_url().await.expect("the current URL");
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        }
    }

    /// The HTTP status the page shown was answered with.
    async fn status(&self) -> u64 {
        let status = self
            .js("return performance.getEntriesByType('navigation')[0].responseStatus")
            .await;
        status.as_u64().expect("a status")
    }

    async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e,
            Err(e) => panic!(
                "no {css} on {}: {e}\n{}",
                self.path().await,
                self.text("body").await
            ),
        }
    }

    async fn text(&self, css: &str) -> String {
        let found = self.client.find(Locator::Css(css)).await;
        match found {
            Ok(e) => e.text().await.expect("an element's text"),
            Err(e) => panic!("no {css} on {}: {e}", self.path().await),
        }
    }

    async fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.find(css).await.attr(name).await.expect("an attribute")
    }

    /// Types `value` into the field with id `id` (ids are field paths such as
    /// `capacity.memory`, hence the attribute selector).
    async fn fill(&self, id: &str, value: &str) {
        let field = self.find(&format!("[id=\"{id}\"]")).await;
        field.clear().await.expect("clear a field");
        field.send_keys(value).await.expect("type into a field");
    }

    /// Clicks `css` and waits until the page it leads to has loaded.
    async fn submit(&self, css: &str) {
        self.js("window.__corralOldPage = true").await;
        self.find(css).await.click().await.expect("click");
        eventually(
            &format!("the page after clicking {css}"),
            Duration::from_secs(20),
            || async {
                let done = self
                    .client
                    .execute(
                        "return !window.__corralOldPage && document.readyState === 'complete'",
                        vec![],
                    )
                    .await;
                // While the new page comes, a script may find no document.
                (done.ok() == Some(Value::Bool(true))).then_some(())
            },
        )
        .await;
    }

    /// Logs in with `token` on the login page shown, or on `/login`.
    async fn login(&self, token: &str) {
        if !self.path().await.starts_with("/login") {
            self.goto("/login").await;
        }
        self.fill("token", token).await;
        self.submit("form.login button[type=submit]").await;
    }

    /// Runs axe-core on the page shown; its violations of impact serious or
    /// critical, each described on a line (id, help and the nodes' targets).
    async fn axe(&self) -> Vec<String> {
        if self.js("return typeof window.axe").await != "object" {
            self.client
                .execute(AXE, vec![])
                .await
                .expect("inject axe-core");
        }
        let answer = self
            .client
            .execute_async(
                r#"const done = arguments[arguments.length - 1];
                axe.run(document, { resultTypes: ["violations"] }).then(
                  (r) => done({ passes: r.passes.length, violations: r.violations.map((v) => ({
                    id: v.id, impact: v.impact, help: v.help,
                    nodes: v.nodes.map((n) => ({ target: n.target, html: n.html, summary: n.failureSummary })),
                  })) }),
                  (e) => done({ error: String(e) }));"#,
                vec![],
            )
            .await
            .expect("run axe-core");
        assert!(answer["error"].is_null(), "axe-core failed: {answer}");
        // A page that passes no rule at all was not checked.
        assert!(
            answer["passes"].as_u64().unwrap_or(0) >= 10,
            "axe-core checked {} rules only on {}",
            answer["passes"],
            self.path().await
        );
        let mut serious = Vec::new();
        for v in answer["violations"].as_array().expect("violations") {
            let impact = v["impact"].as_str().unwrap_or("none");
            let nodes: Vec<String> = v["nodes"]
                .as_array()
                .expect("nodes")
                .iter()
                .map(|n| format!("{} {}", n["target"], n["html"].as_str().unwrap_or_default()))
                .collect();
            let line = format!(
                "{} ({impact}): {}; nodes: {}",
                v["id"].as_str().unwrap_or_default(),
                v["help"].as_str().unwrap_or_default(),
                nodes.join(" | ")
            );
            if matches!(impact, "serious" | "critical") {
                serious.push(line);
            } else {
                eprintln!("axe, {impact}, on {}: {line}", self.path().await);
            }
        }
        serious
    }

    /// How the page scrolls sideways, if it does: its width, the viewport's,
    /// and the elements that stick out.
    async fn sideways(&self) -> Option<String> {
        let overflow = self
            .js("const root = document.documentElement;
                 if (root.scrollWidth <= root.clientWidth) return null;
                 const wide = [...document.body.querySelectorAll('*')]
                   .filter((e) => e.getBoundingClientRect().right > root.clientWidth + 1)
                   .map((e) => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '')
                     + (typeof e.className === 'string' && e.className.trim()
                        ? '.' + e.className.trim().split(/\\s+/).join('.') : ''));
                 return root.scrollWidth + 'px wide in a ' + root.clientWidth
                   + 'px viewport (scroll bar aside): ' + wide.slice(0, 8).join(', ');")
            .await;
        overflow.as_str().map(str::to_string)
    }

    /// Saves the viewport as `target/console-screenshots/{name}-{w}x{h}.png`.
    async fn screenshot(&self, name: &str, (width, height): (u32, u32)) {
        let png = self.client.screenshot().await.expect("a screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir).expect("create the screenshots' folder");
        std::fs::write(dir.join(format!("{name}-{width}x{height}.png")), png)
            .expect("write a screenshot");
    }
}

/// `target/console-screenshots`, in the target folder this test was built in.
fn screenshots_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target folder")
        .join("console-screenshots")
}

/// A pipeline of one step that prints `first line`, waits until `go` is in
/// its workspace (a minute at most), then prints `second line`.
fn held_run(name: &str, tenant: &str, pool: &str) -> String {
    format!(
        "kind: Pipeline\nname: {name}\ntenant: {tenant}\nsteps:\n  - {{name: s, pool: {pool}, resources: {{cpu: 1, memory: 256Mi}}, run: 'echo first line; i=0; while [ ! -e go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; echo second line'}}\n"
    )
}

/// Team-a's held run on pool main, once it has printed its first line.
async fn printing_held_run(server: &Server) -> i64 {
    let held = id_of(&server.submit(&held_run("held", "team-a", "main")).await);
    server
        .wait_for_output(held, "first line", Duration::from_secs(20))
        .await;
    held
}

fn quick_run(name: &str, tenant: &str, pool: &str) -> String {
    format!(
        "kind: Pipeline\nname: {name}\ntenant: {tenant}\nsteps:\n  - {{name: s, pool: {pool}, resources: {{cpu: 1, memory: 256Mi}}, run: 'echo done'}}\n"
    )
}

fn id_of(run: &Value) -> i64 {
    run["id"].as_i64().expect("a run id")
}

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

    // The session is the token, in a cookie scripts cannot read.
    let cookie = browser
        .client
        .get_named_cookie("corral_session")
        .await
        .expect("the session cookie");
    assert_eq!(cookie.value(), token);
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
        if let Some(token) = cookie {
            request = request.header("cookie", format!("corral_session={token}"));
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
        ("no csrf field", Some(token.as_str()), String::new()),
        (
            "an empty csrf field",
            Some(token.as_str()),
            "csrf=".to_string(),
        ),
        (
            "a wrong csrf field",
            Some(token.as_str()),
            format!("csrf={}", "0".repeat(32)),
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
        Some(&token),
        format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(status, 404, "cancelling another tenant's run: {page}");
    // Its log is not found either.
    let log = http
        .get(format!("{}/runs/{other}/log", server.url))
        .header("cookie", format!("corral_session={token}"))
        .send()
        .await
        .expect("a GET");
    assert_eq!(log.status().as_u16(), 404);
    for id in [own, other] {
        assert_eq!(server.run(id).await["state"], "running", "run {id} goes on");
    }
    // The same form with the page's CSRF token is taken: the refusals above
    // were for the token alone.
    let (status, page) = post(cancel, Some(&token), format!("csrf={csrf}")).await;
    assert_eq!(status, 303, "a cancel from the console's own form: {page}");
    let run = server.wait_run_ended(own, Duration::from_secs(20)).await;
    assert_eq!(run["state"], "cancelled", "{run:#}");
    assert_eq!(server.run(other).await["state"], "running");

    server.open_gate(other, "go");
    browser.close().await;
}

/// Every page, logged out and in, at each viewport: no serious or critical
/// axe-core violation, and a screenshot of each (`-dark` in its name when
/// `dark`).
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
        ("tenants", "/tenants"),
        ("tenant", "/tenants/team-a"),
        ("queue", "/queue"),
        ("run", &run),
        ("dashboards", DASHBOARDS),
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
            assert_eq!(browser.status().await, status, "{name}: {path}");
            let at = format!(
                "{name} ({path}) at {}x{} in {scheme} colours",
                size.0, size.1
            );
            for violation in browser.axe().await {
                failures.push(format!("{at}: {violation}"));
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
