//! A real browser for the console's tests: headless Debian Chromium driven
//! through chromedriver (WebDriver), with what the tests do in it (log in,
//! fill forms, run axe-core, take screenshots) and the runs they use.
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

use crate::harness::{Server, eventually, temp_dir};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// axe-core, vendored for these tests (the server does not serve it).
const AXE: &str = include_str!("../../../server/assets/vendor/axe.min.js");
/// The dashboards, over their default range.
pub(crate) const DASHBOARDS: &str = "/dashboards";
/// The viewports every page is checked at: a laptop's and a phone's.
pub(crate) const VIEWPORTS: [(u32, u32); 2] = [(1280, 800), (390, 844)];

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
pub(crate) struct Settings {
    /// Pages in their dark colours (`prefers-color-scheme: dark`).
    pub(crate) dark: bool,
    /// How long a page may take to load.
    pub(crate) page_load: Duration,
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
pub(crate) struct Browser {
    pub(crate) client: Client,
    pub(crate) base: String,
    /// What the window adds to the viewport, in width and height.
    frame: (u32, u32),
    driver: Driver,
}

impl Browser {
    pub(crate) async fn start(base: &str) -> Browser {
        Browser::start_with(base, Settings::default()).await
    }

    pub(crate) async fn start_with(base: &str, settings: Settings) -> Browser {
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
    pub(crate) async fn close(self) {
        let Browser { client, driver, .. } = self;
        client.close().await.expect("end the browser session");
        drop(driver);
    }

    pub(crate) async fn viewport(&self, width: u32, height: u32) {
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

    pub(crate) async fn js(&self, script: &str) -> Value {
        self.client
            .execute(script, vec![])
            .await
            .unwrap_or_else(|e| panic!("script {script:?}: {e}"))
    }

    pub(crate) async fn goto(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
    }

    /// The path (and query) of the page shown.
    pub(crate) async fn path(&self) -> String {
        let url = self.client.current_url().await.expect("the current URL");
        match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        }
    }

    /// What Chromium reported the page's Content-Security-Policy blocked
    /// since it loaded (the reports it keeps for a `ReportingObserver` that
    /// asks for them, `buffered`), each as the directive and what it blocked.
    pub(crate) async fn csp_violations(&self) -> Vec<String> {
        let answer = self
            .client
            .execute_async(
                r#"const done = arguments[arguments.length - 1];
                const seen = [];
                const note = (reports) => {
                  for (const r of reports) {
                    seen.push(`${r.body.effectiveDirective} blocked ${r.body.blockedURL || ""} ${r.body.sample || ""}`.trim());
                  }
                };
                const observer = new ReportingObserver(note, { types: ["csp-violation"], buffered: true });
                observer.observe();
                setTimeout(() => { note(observer.takeRecords()); observer.disconnect(); done(seen); }, 200);"#,
                vec![],
            )
            .await
            .expect("the page's CSP reports");
        answer
            .as_array()
            .expect("a list of reports")
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The HTTP status the page shown was answered with.
    pub(crate) async fn status(&self) -> u64 {
        let status = self
            .js("return performance.getEntriesByType('navigation')[0].responseStatus")
            .await;
        status.as_u64().expect("a status")
    }

    pub(crate) async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e,
            Err(e) => panic!(
                "no {css} on {}: {e}\n{}",
                self.path().await,
                self.text("body").await
            ),
        }
    }

    pub(crate) async fn text(&self, css: &str) -> String {
        let found = self.client.find(Locator::Css(css)).await;
        match found {
            Ok(e) => e.text().await.expect("an element's text"),
            Err(e) => panic!("no {css} on {}: {e}", self.path().await),
        }
    }

    pub(crate) async fn attr(&self, css: &str, name: &str) -> Option<String> {
        self.find(css).await.attr(name).await.expect("an attribute")
    }

    /// Types `value` into the field with id `id` (ids are field paths such as
    /// `capacity.memory`, hence the attribute selector).
    pub(crate) async fn fill(&self, id: &str, value: &str) {
        let field = self.find(&format!("[id=\"{id}\"]")).await;
        field.clear().await.expect("clear a field");
        field.send_keys(value).await.expect("type into a field");
    }

    /// Clicks `css` and waits until the page it leads to has loaded.
    pub(crate) async fn submit(&self, css: &str) {
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
    pub(crate) async fn login(&self, token: &str) {
        if !self.path().await.starts_with("/login") {
            self.goto("/login").await;
        }
        self.fill("token", token).await;
        self.submit("form.login button[type=submit]").await;
    }

    /// Runs axe-core on the page shown; its violations of impact serious or
    /// critical, each described on a line (id, help and the nodes' targets).
    pub(crate) async fn axe(&self) -> Vec<String> {
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
    pub(crate) async fn sideways(&self) -> Option<String> {
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
    pub(crate) async fn screenshot(&self, name: &str, (width, height): (u32, u32)) {
        let png = self.client.screenshot().await.expect("a screenshot");
        assert!(png.starts_with(b"\x89PNG"), "a screenshot is a PNG");
        let dir = screenshots_dir();
        std::fs::create_dir_all(&dir).expect("create the screenshots' folder");
        std::fs::write(dir.join(format!("{name}-{width}x{height}.png")), png)
            .expect("write a screenshot");
    }
}

/// `target/console-screenshots`, in the target folder this test was built in.
pub(crate) fn screenshots_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target folder")
        .join("console-screenshots")
}

/// A pipeline of one step that prints `first line`, waits until `go` is in
/// its workspace (a minute at most), then prints `second line`.
pub(crate) fn held_run(name: &str, tenant: &str, pool: &str) -> String {
    format!(
        "kind: Pipeline\nname: {name}\ntenant: {tenant}\nsteps:\n  - {{name: s, pool: {pool}, resources: {{cpu: 1, memory: 256Mi}}, run: 'echo first line; i=0; while [ ! -e go ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done; echo second line'}}\n"
    )
}

/// Team-a's held run on pool main, once it has printed its first line.
pub(crate) async fn printing_held_run(server: &Server) -> i64 {
    let held = id_of(&server.submit(&held_run("held", "team-a", "main")).await);
    server
        .wait_for_output(held, "first line", Duration::from_secs(20))
        .await;
    held
}

pub(crate) fn quick_run(name: &str, tenant: &str, pool: &str) -> String {
    format!(
        "kind: Pipeline\nname: {name}\ntenant: {tenant}\nsteps:\n  - {{name: s, pool: {pool}, resources: {{cpu: 1, memory: 256Mi}}, run: 'echo done'}}\n"
    )
}

pub(crate) fn id_of(run: &Value) -> i64 {
    run["id"].as_i64().expect("a run id")
}
