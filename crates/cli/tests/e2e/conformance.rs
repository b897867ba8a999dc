//! The OpenAPI document is the truth: schemathesis runs every operation of it
//! against a real server, with valid and invalid input, and finds no server
//! error and no answer (status, media type, body or header) the document does
//! not describe.

use std::path::{Path, PathBuf};

use crate::harness::{Scratch, Server, StoreKind};

const INSTALL: &str = "python3 -m venv target/ci-venv && \
    target/ci-venv/bin/pip install schemathesis==4.32.5 (what .ci/run does)";

/// The schemathesis executable: `$CORRAL_SCHEMATHESIS`, else the one `.ci/run`
/// installs in `target/ci-venv`, else `schemathesis` on the `PATH`.
fn schemathesis() -> PathBuf {
    if let Some(path) = std::env::var_os("CORRAL_SCHEMATHESIS") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "CORRAL_SCHEMATHESIS={} is not a file; install it with: {INSTALL}",
            path.display()
        );
        return path;
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/ci-venv/bin/schemathesis");
    if venv.is_file() {
        return venv;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join("schemathesis"))
        .find(|path| path.is_file())
        .unwrap_or_else(|| panic!("schemathesis is not installed; install it with: {INSTALL}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn every_operation_answers_as_the_openapi_document_says() {
    let schemathesis = schemathesis();
    let server = Server::start("conformance", StoreKind::Sqlite).await;
    // Something for the operations to act on: a static pool (with no agent,
    // so nothing placed there ever runs), a tenant, and a run of it. The
    // `local` pool of the first start goes: no run is placed on a pool whose
    // agents run on this machine unless schemathesis itself creates one, and
    // even then every step it submits runs `true` (conformance_hooks.py).
    let (status, body) = server.send("DELETE", "/api/v1/pools/local", "").await;
    assert_eq!(status, 204, "{body}");
    server
        .apply(
            "kind: Pool\nname: conformance\nprovider: static\n---\n\
             kind: Tenant\nname: conformance\nquota: {cpu: 1, memory: 1Gi, runs: 1}\n",
        )
        .await;
    server
        .submit(
            "kind: Pipeline\nname: probe\ntenant: conformance\nsteps:\n  - {name: probe, run: 'true'}\n",
        )
        .await;

    let tenant = server
        .create_token(
            "conformance-tenant",
            "tenant",
            Some(("tenant", "conformance")),
        )
        .await;

    let work = Scratch::new("conformance-schemathesis");
    let submissions = work.join("submissions.log");
    let tests = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e");
    // Every operation of the document, in every phase (examples, coverage,
    // fuzzing, stateful), with every check, as the admin and as a tenant. The
    // agent operations answer 403 to both tokens (they take a worker's
    // secret), so what they check is the guard; the engine's side of them has
    // its own e2e tests.
    for (who, token) in [("admin", &server.admin_token), ("tenant", &tenant)] {
        let output = tokio::process::Command::new(&schemathesis)
            .arg("--config-file")
            .arg(tests.join("conformance.toml"))
            .arg("run")
            .arg(format!("{}/api/v1/openapi.json", server.url))
            .args(["--url", &server.url])
            .args(["--header", &format!("Authorization: Bearer {token}")])
            .args(["--checks", "all"])
            .args(["--max-examples", "30"])
            .args(["--seed", "20261128"])
            .args(["--workers", "1"])
            .args(["--generation-database", "none"])
            .args(["--request-timeout", "30"])
            .arg("--no-color")
            .env("SCHEMATHESIS_HOOKS", tests.join("conformance_hooks.py"))
            .env("CORRAL_CONFORMANCE_LOG", &submissions)
            .current_dir(work.path())
            .kill_on_drop(true)
            .output()
            .await
            .expect("run schemathesis");
        assert!(
            output.status.success(),
            "schemathesis, with the {who} token, found answers the OpenAPI document does not describe ({}):\n{}\n{}\nserver log:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            server.log()
        );
    }
    let rewritten = std::fs::read_to_string(&submissions).unwrap_or_default();
    assert!(
        rewritten.lines().count() > 0,
        "the hook that makes submitted steps harmless saw no submission"
    );
}
