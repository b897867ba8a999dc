//! One writer per store: a second `corral server` on the data directory, or on
//! the PostgreSQL database, of a running one is refused at start, with a
//! message naming the store and the server that holds it, and a non-zero exit;
//! the first one keeps serving.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{BIN, Server, StoreKind, temp_dir};

/// Starts another `corral server` and waits for it to exit: its exit code and
/// what it printed. One still running after 30 s is killed (by its own pid)
/// and fails the test.
fn second_server(data_dir: &Path, database_url: Option<&str>) -> (Option<i32>, String) {
    let log = data_dir.with_extension("second.log");
    let mut cmd = Command::new(BIN);
    cmd.arg("server")
        .arg("--listen")
        .arg("127.0.0.1:0")
        .arg("--data-dir")
        .arg(data_dir)
        .env("CORRAL_LOG", "info,sqlx=warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("the second server's log"));
    if let Some(url) = database_url {
        cmd.arg("--database-url").arg(url);
    }
    let mut child = cmd.spawn().expect("spawn the second server");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the second server") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "a second server on the same store was not refused: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let printed = std::fs::read_to_string(&log).expect("the second server's log");
    let _ = std::fs::remove_file(&log);
    (status.code(), printed)
}

fn pipeline(name: &str) -> String {
    format!(
        "kind: Pipeline\nname: {name}\nsteps:\n  - name: say\n    run: echo {name}\n    resources: {{cpu: 100m, memory: 16Mi}}\n"
    )
}

/// The second server is refused, naming `store` and the first server; the
/// first one still takes and runs work.
async fn refused_while_the_first_serves(
    first: &Server,
    data_dir: &Path,
    url: Option<&str>,
    store: &str,
) {
    let (code, printed) = second_server(data_dir, url);
    assert!(
        code.is_some_and(|c| c != 0),
        "refused with a non-zero exit, not {code:?}: {printed}"
    );
    assert!(
        printed.contains("is held by another corral server"),
        "{printed}"
    );
    assert!(
        printed.contains(store),
        "names the store {store}: {printed}"
    );
    assert!(
        printed.contains(&format!("corral server pid {}", first.pid())),
        "names the server holding it: {printed}"
    );
    let id = first.submit(&pipeline("still-serving")).await["id"]
        .as_i64()
        .expect("id");
    let run = first.wait_run_ended(id, Duration::from_secs(60)).await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_server_on_a_sqlite_data_dir_is_refused() {
    let first = Server::start("one-writer", StoreKind::Sqlite).await;
    let dir = first.data_dir.clone();
    refused_while_the_first_serves(&first, &dir, None, &dir.display().to_string()).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_server_on_a_postgres_database_is_refused() {
    let store = StoreKind::postgres("onewriter").await;
    let StoreKind::Postgres(url) = &store else {
        unreachable!("a PostgreSQL store")
    };
    let url = url.clone();
    let database = url.rsplit('/').next().expect("a database name").to_string();
    let first = Server::start("one-writer-pg", store).await;
    // Another data directory: the database alone refuses it.
    let other = temp_dir("one-writer-pg-second");
    refused_while_the_first_serves(&first, &other, Some(&url), &database).await;
    let _ = std::fs::remove_dir_all(&other);
}
