//! A full disk: with the data directory and the server's log on a small
//! tmpfs that fills up, writes answer 503 and reads work; once space is freed,
//! work resumes without a restart and nothing earlier is lost.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Server, eventually, temp_dir};

/// A tmpfs mounted for the test, unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: PathBuf, size: &str) -> Tmpfs {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
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

/// Writes a file until the filesystem is full.
fn fill(path: &Path) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).expect("filler");
    let block = vec![b'x'; 64 * 1024];
    while file.write_all(&block).is_ok() {}
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

#[tokio::test(flavor = "multi_thread")]
async fn a_full_disk_answers_503_and_work_resumes_once_space_is_freed() {
    let dir = temp_dir("disk");
    let _tmpfs = Tmpfs::mount(dir.clone(), "48m");
    let server = Server::start_in(dir.clone(), &[]).await;
    server.apply(CLUSTER).await;
    let before = server.submit(&pipeline("before")).await["id"]
        .as_i64()
        .expect("id");
    let ended = server.wait_run_ended(before, Duration::from_secs(60)).await;
    assert_eq!(ended["state"], "succeeded", "{ended:#}");

    let filler = dir.join("filler");
    fill(&filler);
    // A write fails cleanly, with the envelope and a message that says why.
    let (status, body) = server
        .send("POST", "/api/v1/runs", &pipeline("during"))
        .await;
    assert_eq!(status, 503, "{body:#}");
    assert_eq!(body["error"]["code"], "unavailable", "{body:#}");
    // Reads work; readiness says the store cannot write.
    let runs: Vec<Value> = server.get("/api/v1/runs").await;
    assert_eq!(runs.len(), 1);
    let (status, health) = server.get_text("/healthz").await;
    assert_eq!(status, 503, "{health}");

    std::fs::remove_file(&filler).expect("free space");
    eventually(
        "the store to be ready again",
        Duration::from_secs(10),
        || async { (server.get_text("/healthz").await.0 == 200).then_some(()) },
    )
    .await;
    let after = server.submit(&pipeline("after")).await["id"]
        .as_i64()
        .expect("id");
    let ended = server.wait_run_ended(after, Duration::from_secs(60)).await;
    assert_eq!(ended["state"], "succeeded", "{ended:#}");
    // Nothing acknowledged before was lost.
    assert_eq!(server.run(before).await["state"], "succeeded");
    let (_, logs) = server
        .get_text(&format!("/api/v1/runs/{before}/logs"))
        .await;
    assert_eq!(logs, "say | before one\nsay | before two\n");
    let (_, logs) = server.get_text(&format!("/api/v1/runs/{after}/logs")).await;
    assert_eq!(logs, "say | after one\nsay | after two\n");
}
