//! A full disk: with the data directory and the server's log on a small
//! tmpfs that fills up, writes answer 503 (and go on answering it while the
//! disk stays full) and reads work; once space is freed, work resumes without
//! a restart; and after a `kill -9` and a restart every run ever acknowledged
//! is there with its steps and output, and every acknowledged change with its
//! audit entry. The same of a PostgreSQL database that stops taking writes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Server, StoreKind, eventually, temp_dir};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: PathBuf, size: &str) -> Tmpfs {
        let out = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(&dir)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs and needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        // The mount point, once it is one no more.
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Writes a file until the filesystem is full, to its last byte.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("filler");
    for size in [64 * 1024, 4096, 1] {
        let block = vec![b'x'; size];
        while file.write_all(&block).is_ok() {}
    }
    let _ = file.sync_all();
}

const CLUSTER: &str = r#"
kind: Pool
name: tiny
capacity: {cpu: 1, memory: 1Gi}
---
kind: Tenant
name: frugal
quota: {cpu: 1}
"#;

fn pipeline(name: &str) -> String {
    format!(
        "kind: Pipeline\nname: {name}\ntenant: frugal\nsteps:\n  - name: say\n    run: echo {name} one; echo {name} two\n    resources: {{cpu: 500m, memory: 64Mi}}\n"
    )
}

/// A change of the tenant's weight: audited when it is acknowledged.
fn reweigh(weight: u32) -> String {
    format!("kind: Tenant\nname: frugal\nquota: {{cpu: 1}}\nweight: {weight}\n")
}

/// What the server acknowledged: runs (by name) and tenant weights.
#[derive(Default)]
struct Acknowledged {
    runs: Vec<(i64, String)>,
    weights: Vec<u32>,
}

impl Acknowledged {
    /// Submits `name`; its id is recorded if the answer is 201. The status.
    async fn submit(&mut self, server: &Server, name: &str) -> u16 {
        let (status, body) = server.send("POST", "/api/v1/runs", &pipeline(name)).await;
        match status {
            201 => self
                .runs
                .push((body["id"].as_i64().expect("an id"), name.to_string())),
            503 => assert_eq!(body["error"]["code"], "unavailable", "{body:#}"),
            _ => panic!("submit {name}: {status}: {body:#}"),
        }
        status
    }

    /// Changes the tenant's weight; recorded if the answer is 200. The status.
    async fn reweigh(&mut self, server: &Server, weight: u32) -> u16 {
        let (status, body) = server.send("POST", "/api/v1/apply", &reweigh(weight)).await;
        match status {
            200 => self.weights.push(weight),
            503 => assert_eq!(body["error"]["code"], "unavailable", "{body:#}"),
            _ => panic!("apply weight {weight}: {status}: {body:#}"),
        }
        status
    }

    /// Once writes are taken again: submits `after-{first}` to `after-9` and
    /// one more change (each must be taken), waits for every acknowledged run
    /// to succeed, then `kill -9`s and restarts the server and checks it all.
    async fn finish(&mut self, server: &mut Server, first: usize) {
        for i in first..10 {
            assert_eq!(self.submit(server, &format!("after-{i}")).await, 201);
        }
        assert_eq!(self.reweigh(server, 3).await, 200);
        for (id, name) in &self.runs {
            let ended = server.wait_run_ended(*id, Duration::from_secs(120)).await;
            assert_eq!(ended["state"], "succeeded", "{name}: {ended:#}");
        }
        server.restart().await;
        self.check(server).await;
    }

    /// Every acknowledged run is there, ended, with its step and its output;
    /// every acknowledged change with its audit entry; and no other run.
    async fn check(&self, server: &Server) {
        for (id, name) in &self.runs {
            let run = server.run(*id).await;
            assert_eq!(run["pipeline"], name.as_str(), "{run:#}");
            assert_eq!(run["state"], "succeeded", "{run:#}");
            assert_eq!(run["steps"][0]["name"], "say", "{run:#}");
            let (_, logs) = server.get_text(&format!("/api/v1/runs/{id}/logs")).await;
            assert_eq!(logs, format!("say | {name} one\nsay | {name} two\n"));
        }
        let audit: Vec<Value> = server.get("/api/v1/audit?kind=tenant").await;
        for weight in &self.weights {
            assert!(
                audit
                    .iter()
                    .any(|a| a["name"] == "frugal" && a["after"]["weight"] == *weight),
                "the change to weight {weight} is audited: {audit:#?}"
            );
        }
        let runs: Vec<Value> = server.get("/api/v1/runs").await;
        assert_eq!(runs.len(), self.runs.len(), "{runs:#?}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_refuses_writes_and_loses_nothing_acknowledged() {
    let dir = temp_dir("disk");
    let _tmpfs = Tmpfs::mount(dir.clone(), "48m");
    let mut server = Server::start_in(dir.clone(), &[]).await;
    server.apply(CLUSTER).await;
    let mut acked = Acknowledged::default();
    assert_eq!(acked.submit(&server, "before").await, 201);
    assert_eq!(acked.reweigh(&server, 2).await, 200);
    let before = acked.runs[0].0;
    let ended = server.wait_run_ended(before, Duration::from_secs(60)).await;
    assert_eq!(ended["state"], "succeeded", "{ended:#}");

    let filler = dir.join("filler");
    fill(&filler);
    // A write fails cleanly, with the envelope and a message that says why.
    assert_eq!(acked.submit(&server, "full-0").await, 503);
    // Reads work; readiness says the store cannot write: to anyone, without
    // details; to an admin, with the store's error.
    let runs: Vec<Value> = server.get("/api/v1/runs").await;
    assert_eq!(runs.len(), 1);
    let (status, health) = server.send_as("", "GET", "/healthz", "", None).await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health, serde_json::json!({"status": "unavailable"}));
    let (status, health) = server.send("GET", "/healthz", "").await;
    assert_eq!(status, 503, "{health}");
    assert!(health["store_error"].is_string(), "{health}");
    // Writes go on failing while the disk is full: none answered is lost
    // later (the writer is never left inside a failed transaction that later
    // batches would land in).
    for i in 1..40 {
        let status = acked.submit(&server, &format!("full-{i}")).await;
        assert_eq!(status, 503, "full-{i} while the disk is full");
        if i % 10 == 0 {
            let weight = 10 + i;
            assert_eq!(acked.reweigh(&server, weight).await, 503, "weight {weight}");
        }
    }

    std::fs::remove_file(&filler).expect("free space");
    eventually(
        "the store to be ready again",
        Duration::from_secs(10),
        || async { (server.get_text("/healthz").await.0 == 200).then_some(()) },
    )
    .await;
    // Everything acknowledged is on disk.
    acked.finish(&mut server, 0).await;
}

/// PostgreSQL stops taking writes: every transaction of its database becomes
/// read-only, and its connections are ended (as a failover to a standby
/// does). A revoked privilege would not do: the tests connect as a superuser,
/// whom no privilege binds; `default_transaction_read_only` binds everyone.
#[tokio::test(flavor = "multi_thread")]
async fn a_read_only_postgres_refuses_writes_and_loses_nothing_acknowledged() {
    let store = StoreKind::postgres("readonly").await;
    let StoreKind::Postgres(url) = &store else {
        unreachable!("a PostgreSQL store")
    };
    let url = url.clone();
    let mut server = Server::start_with("readonly", store, &[]).await;
    server.apply(CLUSTER).await;
    let mut acked = Acknowledged::default();
    assert_eq!(acked.submit(&server, "before").await, 201);
    assert_eq!(acked.reweigh(&server, 2).await, 200);

    corral_store::testing::set_read_only(&url, true).await;
    for i in 0..20 {
        assert_eq!(
            acked.submit(&server, &format!("read-only-{i}")).await,
            503,
            "read-only-{i} while the database takes no writes"
        );
        if i % 10 == 0 {
            assert_eq!(acked.reweigh(&server, 10 + i).await, 503);
        }
    }
    let (status, health) = server.send_as("", "GET", "/healthz", "", None).await;
    assert_eq!(status, 503, "{health}");
    assert_eq!(health, serde_json::json!({"status": "unavailable"}));

    corral_store::testing::set_read_only(&url, false).await;
    eventually(
        "the store to be ready again",
        Duration::from_secs(10),
        || async { (server.get_text("/healthz").await.0 == 200).then_some(()) },
    )
    .await;
    // The first write after may fail once more: the server's writer lock is
    // taken again and its state reloaded before it writes.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while acked.submit(&server, "after-0").await != 201 {
        assert!(
            std::time::Instant::now() < deadline,
            "writes are taken again within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    acked.finish(&mut server, 1).await;
}
