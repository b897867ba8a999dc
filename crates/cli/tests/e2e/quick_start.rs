//! The README's quick start, run as written: a real server, its local agents and
//! the CLI, with `corral` on the PATH.

use std::path::Path;
use std::process::Command;

use crate::harness::{BIN, Server, StoreKind, workspace_root};

/// The first `sh` block under the README's "## Quick start" heading.
fn quick_start_script() -> String {
    let readme = std::fs::read_to_string(workspace_root().join("README.md")).expect("README.md");
    let section = readme
        .split("## Quick start")
        .nth(1)
        .expect("the README has a quick start");
    let block = section
        .split("```sh\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the quick start has a sh block");
    block.to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn readme_quick_start_works() {
    let server = Server::start("quickstart", StoreKind::Sqlite).await;
    let script = quick_start_script();
    assert!(script.contains("corral submit examples/build-and-test.yaml --follow"));
    let bin_dir = Path::new(BIN).parent().expect("bin dir");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The script runs as a user would, from a directory holding the examples,
    // beside the server's data directory `./.corral`: the CLI finds the admin
    // token the server's first start wrote there, with nothing set.
    let work = crate::harness::Scratch::new("quickstart-cwd");
    std::os::unix::fs::symlink(&server.data_dir, work.join(".corral")).expect("link .corral");
    std::os::unix::fs::symlink(workspace_root().join("examples"), work.join("examples"))
        .expect("link examples");
    let out = Command::new("bash")
        .args(["-euo", "pipefail", "-c", &script])
        .current_dir(work.path())
        .env("PATH", path)
        .env("CORRAL_SERVER", &server.url)
        .env_remove("CORRAL_TOKEN")
        .output()
        .expect("run the quick start");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "quick start failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nserver:\n{}",
        server.log()
    );
    for expected in [
        "pool linux-small created",
        "tenant acme created",
        "build | built out/main.c",
        "unit | unit tests passed",
        "lint | lint clean",
        "build-and-test  acme",
        "State:     succeeded",
        "rejected, as expected",
    ] {
        assert!(
            stdout.contains(expected),
            "{expected:?} missing from\n{stdout}\nstderr:\n{stderr}"
        );
    }
    assert!(stderr.contains("run 1 succeeded"), "{stderr}");
    assert!(
        stderr.contains("run 2 rejected: larger than tenant acme's quota: needs cpu 64 (quota 2), memory 256Gi (quota 4Gi)"),
        "{stderr}"
    );
    let run = server.run(1).await;
    assert_eq!(run["state"], "succeeded");
}
