//! The console's forms in a real browser: a pool or tenant saved unchanged
//! stays unchanged (nothing the form does not show is lost, nothing is
//! audited), every problem of a form is shown beside its field with what was
//! typed kept, pools that do not exist are refused, actions that cannot be
//! taken back ask first and say why when refused, and tenants are created and
//! deleted.

use std::time::Duration;

use fantoccini::Locator;
use serde_json::{Value, json};

use crate::browser::{Browser, printing_held_run};
use crate::harness::{Server, StoreKind};

/// A pool and a tenant with every field set.
const EVERY_FIELD: &str = "kind: Pool
name: full
provider: local
capacity: {cpu: 2500m, memory: 6Gi, gpu: 2}
max_workers: 3
labels: {os: linux, zone: b}
price: {cpu_hour: 0.04, memory_gib_hour: 0.005, gpu_hour: 2.5}
max_agent: {cpu: 4, memory: 8Gi, gpu: 1}
require_confinement: true
---
kind: Pool
name: metal
provider: static
state: draining
---
kind: Tenant
name: full
weight: 3
quota: {cpu: 4, memory: 8Gi, gpu: 2, runs: 5}
allowed_pools: [full, metal]
pool_limits: {full: {cpu: 1, memory: 2Gi, gpu: 1, runs: 2}, metal: {runs: 1}}
budget: {monthly: 250.5, enforce: hard, alert_at: [0.5, 0.9, 1.2]}
";

async fn audit_ids(server: &Server) -> Vec<i64> {
    let entries: Vec<Value> = server.get("/api/v1/audit").await;
    let mut ids: Vec<i64> = entries
        .iter()
        .map(|e| e["id"].as_i64().expect("an id"))
        .collect();
    ids.sort_unstable();
    ids
}

/// The audit entries not among `before`.
async fn audited_since(server: &Server, before: &[i64]) -> Vec<Value> {
    let entries: Vec<Value> = server.get("/api/v1/audit").await;
    entries
        .into_iter()
        .filter(|e| !before.contains(&e["id"].as_i64().expect("an id")))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pool_and_a_tenant_saved_unchanged_through_their_forms_stay_unchanged() {
    let server = Server::start("forms-unchanged", StoreKind::Sqlite).await;
    server.apply(EVERY_FIELD).await;
    let pools = ["full", "metal"];
    let mut before = Vec::new();
    for pool in &pools {
        before.push(server.get::<Value>(&format!("/api/v1/pools/{pool}")).await);
    }
    let tenant: Value = server.get("/api/v1/tenants/full").await;
    let audited = audit_ids(&server).await;
    let browser = Browser::start(&server.url).await;
    browser.viewport(1280, 800).await;
    browser.login(&server.admin_token).await;

    for pool in &pools {
        browser.goto(&format!("/pools/{pool}")).await;
        browser.submit("form.stack button.primary").await;
        assert_eq!(browser.path().await, format!("/pools/{pool}?saved=1"));
    }
    browser.goto("/tenants/full").await;
    browser.submit("form.stack button.primary").await;
    assert_eq!(browser.path().await, "/tenants/full?saved=1");

    for (pool, before) in pools.iter().zip(&before) {
        let after: Value = server.get(&format!("/api/v1/pools/{pool}")).await;
        assert_eq!(&after, before, "pool {pool} saved unchanged");
    }
    let after: Value = server.get("/api/v1/tenants/full").await;
    assert_eq!(after, tenant, "tenant saved unchanged (updated_at too)");
    assert_eq!(
        audited_since(&server, &audited).await,
        Vec::<Value>::new(),
        "an unchanged save audits nothing"
    );

    // One field changed: the audit entry's before and after differ in it alone.
    browser.goto("/pools/full").await;
    browser.fill("max_workers", "4").await;
    browser.submit("form.stack button.primary").await;
    assert_eq!(browser.path().await, "/pools/full?saved=1");
    let entries = audited_since(&server, &audited).await;
    assert_eq!(entries.len(), 1, "{entries:#?}");
    let entry = &entries[0];
    assert_eq!(
        (&entry["kind"], &entry["name"]),
        (&json!("pool"), &json!("full"))
    );
    let mut expected = entry["before"].clone();
    expected["max_workers"] = json!(4);
    assert_eq!(entry["after"], expected, "{entry:#}");
    assert_eq!(
        entry["after"]["max_agent"],
        json!({"cpu": "4", "memory": "8Gi", "gpu": 1}),
        "{entry:#}"
    );
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn every_problem_of_a_form_is_shown_beside_its_field_with_the_input_kept() {
    let server = Server::start("forms-problems", StoreKind::Sqlite).await;
    let browser = Browser::start(&server.url).await;
    browser.viewport(1280, 800).await;
    browser.login(&server.admin_token).await;

    browser.goto("/pools/new").await;
    let typed = [
        ("name", "bad name"),
        ("capacity.cpu", "2"),
        ("capacity.memory", "lots"),
        ("max_workers", "-3"),
        ("labels", "oops"),
        ("price.gpu_hour", "-1"),
    ];
    for (field, value) in typed {
        browser.fill(field, value).await;
    }
    browser.submit("form.stack button.primary").await;
    assert_eq!(browser.status().await, 422);
    let invalid = browser
        .client
        .find_all(Locator::Css(".field.invalid"))
        .await
        .expect("fields in error");
    assert_eq!(invalid.len(), 5, "five fields in error");
    let expected = [
        ("name", "is not a valid name"),
        ("capacity.memory", "\"lots\" is not a memory quantity"),
        (
            "max_workers",
            "must be a whole number from 0 to 4294967295, not -3",
        ),
        ("labels", "\"oops\" is not key=value"),
        ("price.gpu_hour", "-1 is not a price"),
    ];
    for (field, words) in expected {
        let message = browser.text(&format!("[id=\"{field}-error\"]")).await;
        assert!(message.contains(words), "{field}: {message}");
        assert!(!message.contains("invalid type"), "{field}: {message}");
        let input = format!("[id=\"{field}\"]");
        assert_eq!(
            browser.attr(&input, "aria-describedby").await.as_deref(),
            Some(format!("{field}-error").as_str())
        );
    }
    for (field, value) in typed {
        assert_eq!(
            browser
                .attr(&format!("[id=\"{field}\"]"), "value")
                .await
                .as_deref(),
            Some(value),
            "{field} keeps what was typed"
        );
    }

    // The API reports them all too: the first in the message, each in details.
    let (status, body) = server
        .send(
            "POST",
            "/api/v1/pools",
            "kind: Pool\nname: bad name\ncapacity: {cpu: 2, memory: lots}\nmax_workers: -3\nlabels: {os: lin ux}\nprice: {gpu_hour: -1}\n",
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let errors = body["error"]["details"]["errors"]
        .as_array()
        .expect("errors");
    let paths: Vec<&str> = errors
        .iter()
        .map(|e| e["path"].as_str().expect("a path"))
        .collect();
    assert_eq!(
        paths,
        [
            "capacity.memory",
            "max_workers",
            "name",
            "labels.os",
            "price.gpu_hour"
        ],
        "{body:#}"
    );
    assert_eq!(
        body["error"]["message"],
        format!(
            "{}: {}",
            errors[0]["path"].as_str().unwrap_or_default(),
            errors[0]["message"].as_str().unwrap_or_default()
        )
    );
    assert_eq!(body["error"]["details"]["path"], "capacity.memory");
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn pools_that_do_not_exist_are_refused_with_their_field_unless_the_apply_makes_them() {
    let server = Server::start("forms-unknown-pools", StoreKind::Sqlite).await;
    server
        .apply("kind: Pool\nname: main\ncapacity: {cpu: 1, memory: 1Gi}\n---\nkind: Tenant\nname: t\nallowed_pools: [main]\n")
        .await;

    // The API: each unknown pool with its field.
    let (status, body) = server
        .send(
            "PUT",
            "/api/v1/tenants/t",
            "kind: Tenant\nname: t\nallowed_pools: [main, typo]\npool_limits: {tpyo: {runs: 1}}\n",
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        body["error"]["details"]["errors"],
        json!([
            {"path": "allowed_pools[1]", "message": "there is no pool \"typo\""},
            {"path": "pool_limits.tpyo", "message": "there is no pool \"tpyo\""},
        ]),
        "{body:#}"
    );
    // An apply is checked whole before anything is applied: the pool it
    // makes counts, in any order; one it does not make refuses all of it.
    let (status, body) = server
        .send(
            "POST",
            "/api/v1/apply",
            "kind: Pool\nname: early\nprovider: static\n---\nkind: Tenant\nname: u\nallowed_pools: [early, nowhere]\n",
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"]["path"], "allowed_pools[1]");
    let (status, _) = server.send("GET", "/api/v1/pools/early", "").await;
    assert_eq!(status, 404, "nothing of a refused apply is applied");
    server
        .apply("kind: Tenant\nname: u\nallowed_pools: [later]\npool_limits: {later: {runs: 1}}\n---\nkind: Pool\nname: later\nprovider: static\n")
        .await;
    let u: Value = server.get("/api/v1/tenants/u").await;
    assert_eq!(u["allowed_pools"], json!(["later"]), "{u:#}");

    // The form: the typo beside its field, what was typed kept, nothing saved.
    let browser = Browser::start(&server.url).await;
    browser.viewport(1280, 800).await;
    browser.login(&server.admin_token).await;
    browser.goto("/tenants/t").await;
    browser.fill("allowed_pools", "main, typo").await;
    browser.fill("quota.gpu", "-1").await;
    browser.submit("form.stack button.primary").await;
    assert_eq!(browser.status().await, 422);
    let error = browser.text("[id=\"allowed_pools-error\"]").await;
    assert_eq!(error, "there is no pool \"typo\"");
    let error = browser.text("[id=\"quota.gpu-error\"]").await;
    assert_eq!(error, "must be a whole number, 0 or more, not -1");
    assert_eq!(
        browser
            .attr("[id=\"allowed_pools\"]", "value")
            .await
            .as_deref(),
        Some("main, typo")
    );
    let t: Value = server.get("/api/v1/tenants/t").await;
    assert_eq!(t["allowed_pools"], json!(["main"]), "{t:#}");
    browser.close().await;
}

/// Clicks `button` and answers the confirmation page it leads to, checking
/// its question: the page's one `button.danger` posts the action again.
async fn confirm(browser: &Browser, button: &str, question: &str) {
    browser.submit(button).await;
    assert_eq!(browser.status().await, 200);
    assert_eq!(browser.text("main h1").await, question);
    browser.submit("main form button.danger").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_cancel_and_drain_ask_first_and_a_refusal_says_why() {
    let server = Server::start("forms-confirm", StoreKind::Sqlite).await;
    server
        .apply("kind: Pool\nname: main\ncapacity: {cpu: 2, memory: 4Gi}\n---\nkind: Tenant\nname: team-a\n")
        .await;
    let held = printing_held_run(&server).await;
    let browser = Browser::start(&server.url).await;
    browser.viewport(1280, 800).await;
    browser.login(&server.admin_token).await;

    // Drain: asked first; going back changes nothing.
    browser.goto("/pools/main").await;
    let drain = "form[action='/pools/main/state']:has(input[value=draining]) button";
    browser.submit(drain).await;
    assert_eq!(browser.text("main h1").await, "Drain pool main?");
    let pool: Value = server.get("/api/v1/pools/main").await;
    assert_eq!(pool["state"], "active", "asking changes nothing");
    browser.submit("main a[href='/pools/main']").await;
    assert_eq!(browser.path().await, "/pools/main");
    confirm(&browser, drain, "Drain pool main?").await;
    assert_eq!(browser.path().await, "/pools/main?saved=1");
    let pool: Value = server.get("/api/v1/pools/main").await;
    assert_eq!(pool["state"], "draining");

    // A pool and a tenant holding a run's allocations: their deletes are
    // refused with the API's reason.
    let delete = "form[action='/pools/main/delete'] button";
    confirm(&browser, delete, "Delete pool main?").await;
    assert_eq!(browser.status().await, 409);
    assert_eq!(browser.text("main h1").await, "Pool main was not deleted");
    let reason = browser.text("main p").await;
    assert_eq!(
        reason,
        "pool main has 1 open allocation(s); delete it when they are released"
    );
    browser.goto("/tenants/team-a").await;
    confirm(
        &browser,
        "form[action='/tenants/team-a/delete'] button",
        "Delete tenant team-a?",
    )
    .await;
    assert_eq!(browser.status().await, 409);
    assert_eq!(
        browser.text("main h1").await,
        "Tenant team-a was not deleted"
    );
    assert!(browser.text("main p").await.contains("open allocation"));

    // Cancel: asked first, the run goes on until confirmed.
    browser.goto(&format!("/runs/{held}")).await;
    let cancel = format!("form[action='/runs/{held}/cancel'] button");
    browser.submit(&cancel).await;
    assert_eq!(browser.text("main h1").await, format!("Cancel run {held}?"));
    assert_eq!(server.run(held).await["state"], "running");
    browser.goto(&format!("/runs/{held}")).await;
    confirm(&browser, &cancel, &format!("Cancel run {held}?")).await;
    assert_eq!(browser.path().await, format!("/runs/{held}"));
    let run = server.wait_run_ended(held, Duration::from_secs(20)).await;
    assert_eq!(run["state"], "cancelled", "{run:#}");

    // Released, the pool is deleted once confirmed.
    browser.goto("/pools/main").await;
    confirm(&browser, delete, "Delete pool main?").await;
    assert_eq!(browser.path().await, "/pools");
    let (status, _) = server.send("GET", "/api/v1/pools/main", "").await;
    assert_eq!(status, 404);
    browser.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_is_created_and_deleted_in_the_console() {
    let server = Server::start("forms-tenants", StoreKind::Sqlite).await;
    let browser = Browser::start(&server.url).await;
    browser.viewport(1280, 800).await;
    browser.login(&server.admin_token).await;

    browser.goto("/tenants").await;
    browser.submit("main a[href='/tenants/new']").await;
    assert_eq!(browser.text("main h1").await, "New tenant");
    browser.fill("name", "newcomer").await;
    browser.fill("quota.cpu", "2").await;
    browser.fill("allowed_pools", "local").await;
    browser.fill("budget.monthly", "40").await;
    browser.submit("form.stack button.primary").await;
    assert_eq!(browser.path().await, "/tenants/newcomer?saved=1");
    let tenant: Value = server.get("/api/v1/tenants/newcomer").await;
    assert_eq!(tenant["quota"]["cpu_millis"], 2000, "{tenant:#}");
    assert_eq!(tenant["allowed_pools"], json!(["local"]), "{tenant:#}");
    assert_eq!(tenant["budget"]["monthly"], 40.0, "{tenant:#}");

    // A name taken is refused beside the name.
    browser.goto("/tenants/new").await;
    browser.fill("name", "newcomer").await;
    browser.submit("form.stack button.primary").await;
    assert_eq!(browser.status().await, 422);
    assert_eq!(
        browser.text("[id=\"name-error\"]").await,
        "tenant newcomer already exists"
    );

    browser.goto("/tenants/newcomer").await;
    confirm(
        &browser,
        "form[action='/tenants/newcomer/delete'] button",
        "Delete tenant newcomer?",
    )
    .await;
    assert_eq!(browser.path().await, "/tenants");
    let (status, _) = server.send("GET", "/api/v1/tenants/newcomer", "").await;
    assert_eq!(status, 404);
    let listed = browser
        .client
        .find_all(Locator::Css("a[href='/tenants/newcomer']"))
        .await
        .expect("links");
    assert!(listed.is_empty(), "the list no longer has it");
    browser.close().await;
}
