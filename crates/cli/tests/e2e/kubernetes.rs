//! `kubernetes` pools against the fake API server of `corral-kubefake`, which
//! speaks the real HTTP API and acts as a kubelet: each worker is a pod whose
//! container (the real `corral agent`) the fake runs as a local process with the
//! pod's environment and its secret volume mounted. The server is the real
//! binary, started with `--kubeconfig`; agents reach it at its own address.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use corral_kubefake::{FakeCluster, Options};
use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use crate::browser::Browser;
use crate::harness::{BIN, Server, StoreKind, check_history, corral, eventually, temp_dir};

/// A fake cluster with one node of `cpu` cores and 16Gi labelled `node-pool:
/// ci`, and the kubeconfig that reaches it, in `dir`.
async fn cluster(dir: &Path, cpu: &str) -> (FakeCluster, String) {
    let bin_dir = Path::new(BIN).parent().expect("the binary's directory");
    let fake = FakeCluster::start(Options {
        bin_dir: bin_dir.to_path_buf(),
        work_dir: dir.join("pods"),
    })
    .await;
    fake.add_node(
        "node-1",
        labels(&[("node-pool", "ci")]),
        resources(cpu, "16Gi"),
    );
    let kubeconfig = dir.join("kubeconfig");
    fake.write_kubeconfig(&kubeconfig);
    (fake, kubeconfig.display().to_string())
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn resources(cpu: &str, memory: &str) -> BTreeMap<String, String> {
    labels(&[("cpu", cpu), ("memory", memory)])
}

/// A server of `label` whose `kubernetes` pools are on the cluster of
/// `kubeconfig`; idle workers retire after a second.
async fn server(label: &str, kubeconfig: &str, store: StoreKind) -> Server {
    Server::start_with(
        label,
        store,
        &["--kubeconfig", kubeconfig, "--idle-ttl", "1"],
    )
    .await
}

/// A `kubernetes` pool named `name` of `capacity` on the nodes labelled
/// `node-pool: ci`.
fn pool(name: &str, capacity: &str, extra: &str) -> String {
    format!(
        "kind: Pool\nname: {name}\nprovider: kubernetes\ncapacity: {capacity}\n{extra}kubernetes:\n  namespace: corral-workers\n  image: registry.example/corral:test\n  node_selector: {{node-pool: ci}}\n"
    )
}

/// The pool `k8s` (4 cpu, 8Gi) and the tenant `t`.
async fn apply_k8s(server: &Server) {
    server
        .apply(&format!(
            "{}---\nkind: Tenant\nname: t\n",
            pool("k8s", "{cpu: 4, memory: 8Gi}", "")
        ))
        .await;
}

fn step(name: &str, pool: &str, cpu: &str, run: &str) -> String {
    format!(
        "  - {{name: {name}, run: '{run}', pool: {pool}, resources: {{cpu: {cpu}, memory: 256Mi}}}}\n"
    )
}

async fn submit(server: &Server, name: &str, tenant: &str, steps: &str) -> i64 {
    let yaml = format!("kind: Pipeline\nname: {name}\ntenant: {tenant}\nsteps:\n{steps}");
    let run = server.submit(&yaml).await;
    run["id"].as_i64().unwrap_or_else(|| panic!("{run:#}"))
}

/// The pods of run `id`, by the label the provider puts on them.
fn pods_of(fake: &FakeCluster, id: i64) -> Vec<Pod> {
    let run = id.to_string();
    fake.pods()
        .into_iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get("corral.dev/run"))
                == Some(&run)
        })
        .collect()
}

/// A cpu quantity in millicores: `1`, `1500m`.
fn millicores(q: &str) -> u64 {
    match q.strip_suffix('m') {
        Some(m) => m.parse().expect("millicores"),
        None => q.parse::<u64>().expect("cores") * 1000,
    }
}

/// A memory quantity in MiB: `256Mi`, `1Gi`.
fn mebibytes(q: &str) -> u64 {
    match (q.strip_suffix("Mi"), q.strip_suffix("Gi")) {
        (Some(m), _) => m.parse().expect("MiB"),
        (_, Some(g)) => g.parse::<u64>().expect("GiB") * 1024,
        _ => panic!("a memory quantity in Mi or Gi: {q}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pipeline_on_a_kubernetes_pool_runs_in_a_pod_shaped_by_its_envelope() {
    let dir = temp_dir("kube-run");
    let (fake, kubeconfig) = cluster(&dir, "8").await;
    let server = server("kube-run-server", &kubeconfig, StoreKind::Sqlite).await;
    apply_k8s(&server).await;
    // Two steps at once: the envelope is their sum, 1500m and 512Mi.
    let steps = format!(
        "{}{}",
        step("a", "k8s", "1", "echo hello from a pod; sleep 3"),
        step("b", "k8s", "500m", "echo and from b; sleep 3"),
    );
    let id = submit(&server, "in-pod", "t", &steps).await;

    // While it runs: one pod, requests = limits = the envelope, and the
    // credential only in its Secret, owned by the pod.
    let pod = eventually("the run's pod", Duration::from_secs(30), || async {
        pods_of(&fake, id).pop()
    })
    .await;
    let name = pod.metadata.name.clone().expect("a name");
    let spec = pod.spec.clone().expect("a spec");
    assert_eq!(spec.containers.len(), 1);
    let limits = spec.containers[0].resources.clone().expect("resources");
    for set in [
        limits.requests.clone().expect("requests"),
        limits.limits.clone().expect("limits"),
    ] {
        assert_eq!(millicores(&set["cpu"].0), 1500, "{set:?}");
        assert_eq!(mebibytes(&set["memory"].0), 512, "{set:?}");
        assert_eq!(set.len(), 2, "no GPU asked: {set:?}");
    }
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    assert_eq!(spec.automount_service_account_token, Some(false));
    let secret = eventually("the pod's secret", Duration::from_secs(30), || async {
        fake.secrets().into_iter().find(|s| {
            s.metadata
                .owner_references
                .as_ref()
                .is_some_and(|o| o.iter().any(|o| o.kind == "Pod" && o.name == name))
        })
    })
    .await;
    let credential = secret
        .data
        .as_ref()
        .and_then(|d| d.values().next())
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .expect("the credential");
    assert!(credential.len() >= 16, "a real credential");
    let everything = serde_json::to_string(&pod).expect("json");
    assert!(
        !everything.contains(credential.trim()),
        "the pod's spec holds no credential: {everything}"
    );

    let done = server.wait_run_ended(id, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let (_, logs) = server.get_text(&format!("/api/v1/runs/{id}/logs")).await;
    assert!(
        logs.contains("hello from a pod") && logs.contains("and from b"),
        "{logs}"
    );
    assert_eq!(fake.pods_created(), 1, "one pod for the one group");

    // Its worker retires; its pod and the pod's secret go.
    eventually(
        "the pod and its secret gone",
        Duration::from_secs(60),
        || async { (fake.pods().is_empty() && fake.secrets().is_empty()).then_some(()) },
    )
    .await;
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unschedulable_pod_is_why_its_run_waits_until_the_cluster_has_room() {
    let dir = temp_dir("kube-unschedulable");
    // The node is smaller than the pool says it may use.
    let (fake, kubeconfig) = cluster(&dir, "1").await;
    let server = server("kube-unschedulable-server", &kubeconfig, StoreKind::Sqlite).await;
    apply_k8s(&server).await;
    let id = submit(
        &server,
        "big",
        "t",
        &step("s", "k8s", "2", "echo scheduled"),
    )
    .await;
    let reason = eventually("the Kubernetes reason", Duration::from_secs(30), || async {
        let run = server.run(id).await;
        (run["reason"]["code"] == "worker_pending").then_some(run)
    })
    .await;
    assert_eq!(reason["state"], "provisioning", "{reason:#}");
    let message = reason["reason"]["message"].as_str().expect("message");
    assert!(
        message.starts_with("pod ") && message.contains("Insufficient cpu"),
        "{message}"
    );
    let described = corral(&server, &["describe", "run", &id.to_string()]);
    let text = String::from_utf8_lossy(&described.stdout);
    assert!(described.status.success(), "{described:?}");
    assert!(text.contains("Insufficient cpu"), "{text}");
    let browser = Browser::start(&server.url).await;
    browser.login(&server.admin_token).await;
    browser.goto(&format!("/runs/{id}")).await;
    let page = browser.text("main").await;
    assert!(page.contains("Insufficient cpu"), "{page}");
    browser.close().await;

    // Room appears: the same pod is scheduled and the run proceeds.
    fake.add_node(
        "node-2",
        labels(&[("node-pool", "ci")]),
        resources("8", "16Gi"),
    );
    let done = server.wait_run_ended(id, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    assert_eq!(fake.pods_created(), 1, "waited for, not replaced");
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_killed_while_pods_run_adopts_them_after_its_restart() {
    let dir = temp_dir("kube-crash");
    let (fake, kubeconfig) = cluster(&dir, "8").await;
    let mut server = server("kube-crash-server", &kubeconfig, StoreKind::Sqlite).await;
    apply_k8s(&server).await;
    let id = submit(
        &server,
        "long",
        "t",
        &step("s", "k8s", "1", "echo started; sleep 6; echo finished"),
    )
    .await;
    server
        .wait_for_output(id, "started", Duration::from_secs(60))
        .await;
    let (_, logs) = server.get_text(&format!("/api/v1/runs/{id}/logs")).await;
    assert!(!logs.contains("finished"), "killed mid-step: {logs}");
    server.kill9();
    server.restart().await;
    let done = server.wait_run_ended(id, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let attempts = done["steps"][0]["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 1, "the same pod finished it: {done:#}");
    assert_eq!(fake.pods_created(), 1, "no second pod for the allocation");
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn quotas_budgets_and_gangs_hold_across_a_kubernetes_and_a_local_pool() {
    let dir = temp_dir("kube-mixed");
    let (fake, kubeconfig) = cluster(&dir, "8").await;
    let server = server("kube-mixed-server", &kubeconfig, StoreKind::Sqlite).await;
    // One cpu-second costs 1.00 on either pool.
    let price = "price: {cpu_hour: 3600}\n";
    server
        .apply(&format!(
            "{}---\nkind: Pool\nname: host\ncapacity: {{cpu: 2, memory: 4Gi}}\n{price}---\nkind: Tenant\nname: capped\nquota: {{cpu: 2}}\n---\nkind: Tenant\nname: open\n---\nkind: Tenant\nname: lean\nbudget: {{monthly: 18, enforce: hard}}\n",
            pool("kube", "{cpu: 2, memory: 4Gi}", price)
        ))
        .await;
    let hold = "echo held; exec sleep 97";

    // The quota is summed across both pools.
    let a = submit(&server, "a", "capped", &step("s", "kube", "1", hold)).await;
    let b = submit(&server, "b", "capped", &step("s", "host", "1", hold)).await;
    for id in [a, b] {
        server
            .wait_for_output(id, "held", Duration::from_secs(60))
            .await;
    }
    let c = submit(&server, "c", "capped", &step("s", "kube", "1", "true")).await;
    let r = server.waits_with(c, "tenant_quota").await;
    assert_eq!(r["message"], "tenant capped: cpu 2/2 in use, run needs 1");

    // A gang across both: the local group has no room, so neither is held.
    let gang = format!(
        "{}{}",
        step("in-pod", "kube", "1", "echo in a pod"),
        step("on-host", "host", "2", "echo on the host")
    );
    let g = submit(&server, "gang", "open", &gang).await;
    let r = server.waits_with(g, "gang_partner_full").await;
    assert!(
        r["message"]
            .as_str()
            .is_some_and(|m| m.contains("pool host: cpu 1/2 in use, run needs 2")),
        "{r:#}"
    );
    assert_eq!(pods_of(&fake, g).len(), 0, "no pod while the gang waits");

    // A hard budget admits on upper bounds on either pool: a step of one cpu
    // with a 5 s timeout may cost 10.00 (its timeout and 5 s of slack); a
    // second cannot fit in 18.00 beside it, and fits once it has ended.
    let bounded = |pool: &str| {
        format!(
            "  - {{name: s, run: 'echo spent; sleep 2', timeout: 5s, pool: {pool}, resources: {{cpu: 1, memory: 256Mi}}}}\n"
        )
    };
    let first = submit(&server, "first", "lean", &bounded("kube")).await;
    server
        .wait_for_output(first, "spent", Duration::from_secs(60))
        .await;
    let second = submit(&server, "second", "lean", &bounded("host")).await;
    server.waits_with(second, "tenant_budget").await;

    // The holders end: the gang is admitted whole, a pod and a local agent.
    for id in [a, b] {
        let (status, body) = server
            .send("POST", &format!("/api/v1/runs/{id}/cancel"), "")
            .await;
        assert_eq!(status, 200, "{body:#}");
    }
    let done = server.wait_run_ended(g, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let pools: Vec<&str> = done["allocations"]
        .as_array()
        .expect("allocations")
        .iter()
        .map(|a| a["pool"].as_str().expect("pool"))
        .collect();
    assert_eq!(pools, vec!["kube", "host"], "{done:#}");
    for id in [c, first, second] {
        let done = server.wait_run_ended(id, Duration::from_secs(60)).await;
        assert_eq!(done["state"], "succeeded", "{done:#}");
    }

    // Never more than the quota, nor a pool's capacity, at any instant.
    let allocations: Vec<Value> = server.get("/api/v1/allocations?limit=1000").await;
    let peak = check_history(
        &allocations,
        "capped",
        2000,
        &[("kube", 2000), ("host", 2000)],
    );
    assert_eq!(peak, 2000);
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_pod_oom_killed_under_its_step_is_why_the_step_ran_again_on_another() {
    let dir = temp_dir("kube-oom");
    let (fake, kubeconfig) = cluster(&dir, "8").await;
    let server = Server::start_with(
        "kube-oom-server",
        StoreKind::Sqlite,
        &["--kubeconfig", &kubeconfig, "--heartbeat-timeout", "3"],
    )
    .await;
    apply_k8s(&server).await;
    // The first attempt is killed with its pod; the second, on a new pod, ends.
    let id = submit(
        &server,
        "killed",
        "t",
        &step("s", "k8s", "1", "echo attempt; sleep 4; echo survived"),
    )
    .await;
    server
        .wait_for_output(id, "attempt", Duration::from_secs(60))
        .await;
    let first = pods_of(&fake, id).pop().expect("the run's pod");
    let namespace = first.metadata.namespace.clone().expect("a namespace");
    let name = first.metadata.name.clone().expect("a name");
    fake.oom_kill(&namespace, &name);

    let done = server.wait_run_ended(id, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    let attempts = done["steps"][0]["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{done:#}");
    assert_eq!(attempts[0]["state"], "lost");
    let error = attempts[0]["error"].as_str().expect("an error");
    assert!(
        error.starts_with("worker lost: pod ") && error.contains("OOMKilled"),
        "{error}"
    );
    assert_eq!(attempts[1]["state"], "succeeded");
    assert_eq!(fake.pods_created(), 2, "a new pod for the retry");
    fake.shutdown().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn over_tls_agents_in_pods_trust_the_servers_certificate() {
    let dir = temp_dir("kube-tls");
    let (fake, kubeconfig) = cluster(&dir, "8").await;
    let server = Server::start_tls_with(
        "kube-tls-server",
        StoreKind::Sqlite,
        &["--kubeconfig", &kubeconfig],
    )
    .await;
    assert!(server.url.starts_with("https://"));
    apply_k8s(&server).await;
    let id = submit(&server, "tls", "t", &step("s", "k8s", "1", "echo over tls")).await;
    let done = server.wait_run_ended(id, Duration::from_secs(60)).await;
    assert_eq!(done["state"], "succeeded", "{done:#}");
    server
        .wait_for_output(id, "over tls", Duration::from_secs(10))
        .await;
    fake.shutdown().await;
}
