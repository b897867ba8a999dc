//! The fake cluster driven through kube-rs, as corral's provider drives a real one, and
//! through raw HTTP where the exact answer matters.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use corral_kubefake::{FakeCluster, Options};
use futures_util::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{DeleteParams, ListParams, PostParams, WatchEvent, WatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const NS: &str = "corral-workers";

/// How long a test waits for the cluster before failing (a bound, not a measure).
const PATIENCE: Duration = Duration::from_secs(20);

struct Fixture {
    cluster: FakeCluster,
    client: Client,
    dir: PathBuf,
    _cleanup: Cleanup,
}

impl Fixture {
    async fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("kubefake-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("bin")).expect("a test dir");
        let cluster = FakeCluster::start(Options {
            bin_dir: dir.join("bin"),
            work_dir: dir.join("work"),
        })
        .await;
        let kubeconfig = dir.join("kubeconfig");
        cluster.write_kubeconfig(&kubeconfig);
        let config = Kubeconfig::read_from(&kubeconfig).expect("the fake's kubeconfig reads");
        let config = Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
            .await
            .expect("the fake's kubeconfig is usable");
        let client = Client::try_from(config).expect("a client for the fake");
        Self {
            cluster,
            client,
            _cleanup: Cleanup(dir.clone()),
            dir,
        }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.client.clone(), NS)
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), NS)
    }

    fn node(&self, name: &str, cpu: &str, labels: &[(&str, &str)]) {
        let labels = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let allocatable = BTreeMap::from([
            ("cpu".to_owned(), cpu.to_owned()),
            ("memory".to_owned(), "8Gi".to_owned()),
        ]);
        self.cluster.add_node(name, labels, allocatable);
    }

    /// Sends a raw request; returns the status code and the JSON body.
    async fn raw(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        token: bool,
    ) -> (u16, Value) {
        let address = self.cluster.url().trim_start_matches("http://").to_owned();
        let mut stream = tokio::net::TcpStream::connect(&address)
            .await
            .expect("the fake listens");
        let body = body.map(Value::to_string).unwrap_or_default();
        let auth = if token {
            format!("Authorization: Bearer {}\r\n", self.cluster.token())
        } else {
            String::new()
        };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: {address}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("the request is sent");
        let mut answer = String::new();
        stream.read_to_string(&mut answer).await.expect("an answer");
        let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
        let code = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("a status code");
        (
            code,
            serde_json::from_str(body).unwrap_or(Value::String(body.to_owned())),
        )
    }

    /// Waits until the pod satisfies `done`; returns it.
    async fn wait_pod(&self, name: &str, done: impl Fn(&Pod) -> bool) -> Pod {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let pod = self.pods().get(name).await.expect("the pod exists");
            if done(&pod) {
                return pod;
            }
            assert!(
                Instant::now() < deadline,
                "pod {name} never got there: {:?}",
                pod.status
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the pod is gone.
    async fn wait_gone(&self, name: &str) {
        let deadline = Instant::now() + PATIENCE;
        while self.pods().get_opt(name).await.expect("a get").is_some() {
            assert!(Instant::now() < deadline, "pod {name} was never removed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Removes a test's directory when the test ends.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pod(name: &str, script: &str, extra: Value) -> Pod {
    let mut value = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "corral"}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "agent", "image": "corral:test", "command": ["sh", "-c", script]}]
        }
    });
    merge(&mut value, extra);
    serde_json::from_value(value).expect("a pod")
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(into), Value::Object(from)) => {
            for (key, value) in from {
                merge(into.entry(key).or_insert(Value::Null), value);
            }
        }
        (Value::Array(into), Value::Array(from)) if into.len() == from.len() => {
            for (into, from) in into.iter_mut().zip(from) {
                merge(into, from);
            }
        }
        (into, from) => *into = from,
    }
}

fn phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

fn waiting_reason(pod: &Pod) -> Option<String> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

fn pod_dir(fixture: &Fixture, pod: &Pod) -> PathBuf {
    let name = pod.metadata.name.as_deref().expect("a name");
    let uid = pod.metadata.uid.as_deref().expect("a uid");
    fixture
        .dir
        .join("work")
        .join("pods")
        .join(format!("{NS}_{name}_{uid}"))
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn a_pod_reads_its_mounted_secret_and_succeeds() {
    let fixture = Fixture::new("secret").await;
    fixture.node("n1", "4", &[]);
    let mut watch = fixture
        .pods()
        .watch(&WatchParams::default().labels("app=corral"), "0")
        .await
        .expect("a watch")
        .boxed();
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "cred"}, "stringData": {"key": "one-time"}
    }))
    .expect("a secret");
    fixture
        .secrets()
        .create(&PostParams::default(), &secret)
        .await
        .expect("the secret is created");
    let script = "cat /var/run/x/key > \"$HOME/out\" && env > \"$HOME/env\" && stat -c %a /var/run/x/key > \"$HOME/mode\" && ! touch /var/run/x/new";
    let spec = pod(
        "reader",
        "unused",
        json!({"spec": {
            "volumes": [{"name": "cred", "secret": {"secretName": "cred", "defaultMode": 256}}],
            "containers": [{"name": "agent", "image": "corral:test", "command": ["sh", "-c"], "args": [script],
                "env": [
                    {"name": "POD", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                    {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
                    {"name": "GREETING", "value": "hi $(POD)"}
                ],
                "volumeMounts": [{"name": "cred", "mountPath": "/var/run/x", "readOnly": true}]}]
        }}),
    );
    fixture
        .pods()
        .create(&PostParams::default(), &spec)
        .await
        .expect("the pod is created");

    let mut phases = Vec::new();
    let deadline = Instant::now() + PATIENCE;
    while phases.last().map(String::as_str) != Some("Succeeded") {
        assert!(
            Instant::now() < deadline,
            "the pod never succeeded: {phases:?}"
        );
        let event = tokio::time::timeout(PATIENCE, watch.try_next())
            .await
            .expect("an event in time");
        match event.expect("a watch event").expect("the watch goes on") {
            WatchEvent::Added(pod) => phases.push(format!("ADDED {}", phase(&pod))),
            WatchEvent::Modified(pod) => {
                let phase = phase(&pod).to_owned();
                if phase == "Failed" {
                    let stderr =
                        std::fs::read_to_string(pod_dir(&fixture, &pod).join("agent.stderr"));
                    panic!("the pod failed: {stderr:?} {:?}", pod.status);
                }
                if phases.last() != Some(&phase) {
                    phases.push(phase);
                }
            }
            WatchEvent::Bookmark(_) => {}
            other => panic!("unexpected event {other:?}"),
        }
    }
    assert_eq!(phases, ["ADDED Pending", "Pending", "Running", "Succeeded"]);

    let done = fixture.pods().get("reader").await.expect("the pod");
    let dir = pod_dir(&fixture, &done);
    assert_eq!(
        std::fs::read_to_string(dir.join("out")).expect("the pod wrote out"),
        "one-time"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("mode")).expect("the pod wrote the mode"),
        "400\n"
    );
    assert!(
        !Path::new("/var/run/x").exists(),
        "the mount point was made on the host"
    );
    let env = std::fs::read_to_string(dir.join("env")).expect("the pod wrote its env");
    for expected in [
        "POD=reader",
        "NODE=n1",
        "GREETING=hi reader",
        "HOSTNAME=reader",
    ] {
        assert!(
            env.lines().any(|line| line == expected),
            "{expected} not in {env}"
        );
    }
    let bin = fixture.dir.join("bin");
    assert!(
        env.lines()
            .any(|line| line.starts_with(&format!("PATH={}:", bin.display()))),
        "{env}"
    );
    assert!(
        env.lines()
            .any(|line| line == format!("HOME={}", dir.display())),
        "{env}"
    );
    let terminated = done
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|s| s[0].clone());
    let terminated = terminated
        .and_then(|s| s.state)
        .and_then(|s| s.terminated)
        .expect("terminated");
    assert_eq!(
        (terminated.exit_code, terminated.reason.as_deref()),
        (0, Some("Completed"))
    );
    assert!(fixture.cluster.pids().is_empty());
    assert_eq!(fixture.cluster.pods_created(), 1);
}

#[tokio::test]
async fn requests_need_the_token() {
    let fixture = Fixture::new("token").await;
    let (code, status) = fixture
        .raw("GET", "/api/v1/namespaces/x/pods", None, false)
        .await;
    assert_eq!(
        (code, status["kind"].as_str(), status["reason"].as_str()),
        (401, Some("Status"), Some("Unauthorized"))
    );
    let seen = fixture.cluster.requests_seen();
    assert_eq!(
        seen,
        [("GET".to_owned(), "/api/v1/namespaces/x/pods".to_owned())]
    );
}

#[tokio::test]
async fn an_unknown_field_is_refused_naming_it() {
    let fixture = Fixture::new("unknown").await;
    let body = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "i", "comand": ["true"]}]}
    });
    let path = format!("/api/v1/namespaces/{NS}/pods");
    let (code, status) = fixture.raw("POST", &path, Some(&body), true).await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (422, Some("Invalid")),
        "{status}"
    );
    let message = status["message"].as_str().expect("a message");
    assert!(message.contains("spec.containers[0].comand"), "{message}");
    assert_eq!(
        status["details"]["causes"][0]["field"],
        "spec.containers[0].comand"
    );

    let wrong_namespace = json!({"metadata": {"name": "p", "namespace": "other"}, "spec": {"containers": [{"name": "c", "image": "i"}]}});
    let (code, status) = fixture
        .raw("POST", &path, Some(&wrong_namespace), true)
        .await;
    assert_eq!(
        (code, status["reason"].as_str()),
        (400, Some("BadRequest")),
        "{status}"
    );

    let no_secret_name = json!({"metadata": {"name": "p"}, "spec": {
        "containers": [{"name": "c", "image": "i"}], "volumes": [{"name": "v", "secret": {}}]}});
    let (code, status) = fixture
        .raw("POST", &path, Some(&no_secret_name), true)
        .await;
    assert_eq!(code, 422, "{status}");
    assert_eq!(
        status["details"]["causes"][0]["field"],
        "spec.volumes[0].secret.secretName"
    );
    assert_eq!(fixture.cluster.pods_created(), 0);
    assert!(fixture.cluster.pods().is_empty());
}

#[tokio::test]
async fn a_duplicate_create_is_a_conflict() {
    let fixture = Fixture::new("duplicate").await;
    let spec = pod("twice", "true", json!({}));
    fixture
        .pods()
        .create(&PostParams::default(), &spec)
        .await
        .expect("the first create");
    let error = fixture
        .pods()
        .create(&PostParams::default(), &spec)
        .await
        .expect_err("a second create");
    let kube::Error::Api(status) = error else {
        panic!("not an API error: {error}");
    };
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "AlreadyExists")
    );
    assert_eq!(status.message, "pods \"twice\" already exists");
    let missing = fixture.pods().get("nobody").await.expect_err("no such pod");
    assert!(
        matches!(missing, kube::Error::Api(status) if status.code == 404 && status.reason == "NotFound")
    );
    assert_eq!(fixture.cluster.pods_created(), 1);
}

fn scheduled_message(pod: &Pod) -> Option<String> {
    let conditions = pod.status.as_ref()?.conditions.as_ref()?;
    let scheduled = conditions.iter().find(|c| c.type_ == "PodScheduled")?;
    scheduled.message.clone()
}

#[tokio::test]
async fn a_pod_waits_for_room_and_starts_when_it_appears() {
    let fixture = Fixture::new("schedule").await;
    fixture.node("small", "1", &[("pool", "ci")]);
    fixture.node("cordoned", "8", &[("pool", "ci")]);
    fixture.cluster.cordon("cordoned", true);
    fixture.node("elsewhere", "8", &[("pool", "other")]);
    let spec = pod(
        "big",
        "sleep 1000",
        json!({"spec": {"nodeSelector": {"pool": "ci"}, "containers": [{"name": "agent", "image": "corral:test",
            "resources": {"requests": {"cpu": "2", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "1Gi"}}}]}}),
    );
    fixture
        .pods()
        .create(&PostParams::default(), &spec)
        .await
        .expect("created");
    let expected = "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) were unschedulable.";
    let waiting = fixture
        .wait_pod("big", |p| scheduled_message(p).is_some())
        .await;
    assert_eq!(scheduled_message(&waiting).as_deref(), Some(expected));
    assert_eq!(phase(&waiting), "Pending");
    assert_eq!(
        waiting.status.as_ref().and_then(|s| s.qos_class.as_deref()),
        Some("Guaranteed")
    );

    fixture.cluster.cordon("cordoned", false);
    let running = fixture.wait_pod("big", |p| phase(p) == "Running").await;
    assert_eq!(
        running.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some("cordoned")
    );

    let second = pod(
        "second",
        "sleep 1000",
        json!({"spec": {"nodeSelector": {"pool": "ci"}, "containers": [{"name": "agent",
        "image": "corral:test", "resources": {"requests": {"cpu": "7"}}}]}}),
    );
    fixture
        .pods()
        .create(&PostParams::default(), &second)
        .await
        .expect("created");
    let waiting = fixture
        .wait_pod("second", |p| scheduled_message(p).is_some())
        .await;
    assert_eq!(
        scheduled_message(&waiting).as_deref(),
        Some(
            "0/3 nodes are available: 1 node(s) didn't match Pod's node affinity/selector, 2 Insufficient cpu."
        )
    );
    fixture
        .pods()
        .delete("big", &DeleteParams::default().grace_period(0))
        .await
        .expect("deleted");
    fixture.wait_pod("second", |p| phase(p) == "Running").await;
    assert_eq!(fixture.cluster.pids().len(), 1);
}

#[tokio::test]
async fn a_failing_image_pull_backs_off_until_it_works() {
    let fixture = Fixture::new("image").await;
    fixture.node("n1", "4", &[]);
    fixture.cluster.fail_image_pull("corral:missing", true);
    let spec = pod(
        "puller",
        "sleep 1000",
        json!({"spec": {"containers": [{"name": "agent", "image": "corral:missing"}]}}),
    );
    let mut events = fixture
        .pods()
        .watch(&WatchParams::default(), "0")
        .await
        .expect("a watch")
        .boxed();
    fixture
        .pods()
        .create(&PostParams::default(), &spec)
        .await
        .expect("created");
    let mut reasons: Vec<String> = Vec::new();
    let mut message = None;
    while reasons.last().map(String::as_str) != Some("ImagePullBackOff") {
        let next = tokio::time::timeout(PATIENCE, events.try_next())
            .await
            .expect("an event in time");
        if let WatchEvent::Added(pod) | WatchEvent::Modified(pod) =
            next.expect("an event").expect("not the end")
            && let Some(reason) = waiting_reason(&pod)
            && reasons.last() != Some(&reason)
        {
            let state = pod
                .status
                .and_then(|s| s.container_statuses)
                .and_then(|s| s[0].state.clone());
            message = state.and_then(|s| s.waiting).and_then(|w| w.message);
            reasons.push(reason);
        }
    }
    assert_eq!(reasons, ["ErrImagePull", "ImagePullBackOff"]);
    assert_eq!(
        message.as_deref(),
        Some("Back-off pulling image \"corral:missing\"")
    );
    assert!(fixture.cluster.pids().is_empty());
    fixture.cluster.fail_image_pull("corral:missing", false);
    fixture.wait_pod("puller", |p| phase(p) == "Running").await;
}

#[tokio::test]
async fn a_pod_waits_for_its_secret() {
    let fixture = Fixture::new("wait-secret").await;
    fixture.node("n1", "4", &[]);
    let spec = pod(
        "early",
        "cat /etc/corral/token",
        json!({"spec": {
        "volumes": [{"name": "cred", "secret": {"secretName": "late", "items": [{"key": "k", "path": "token"}]}}],
        "containers": [{"name": "agent", "image": "corral:test", "volumeMounts": [{"name": "cred", "mountPath": "/etc/corral"}]}]}}),
    );
    fixture
        .pods()
        .create(&PostParams::default(), &spec)
        .await
        .expect("created");
    let waiting = fixture
        .wait_pod("early", |p| waiting_reason(p).is_some())
        .await;
    assert_eq!(
        waiting_reason(&waiting).as_deref(),
        Some("ContainerCreating")
    );
    let secret: Secret =
        serde_json::from_value(json!({"metadata": {"name": "late"}, "data": {"k": "c2VjcmV0"}}))
            .expect("a secret");
    fixture
        .secrets()
        .create(&PostParams::default(), &secret)
        .await
        .expect("created");
    let done = fixture
        .wait_pod("early", |p| phase(p) == "Succeeded" || phase(p) == "Failed")
        .await;
    assert_eq!(phase(&done), "Succeeded");
    let out =
        std::fs::read_to_string(pod_dir(&fixture, &done).join("agent.stdout")).expect("stdout");
    assert_eq!(out, "secret");
    assert!(
        !Path::new("/etc/corral").exists(),
        "the mount point was made on the host"
    );
}

#[tokio::test]
async fn delete_kills_the_process_and_collects_the_owned_secret() {
    let fixture = Fixture::new("delete").await;
    fixture.node("n1", "4", &[]);
    let spec = pod(
        "stubborn",
        "trap '' TERM; while :; do sleep 0.1; done",
        json!({}),
    );
    let created = fixture
        .pods()
        .create(&PostParams::default(), &spec)
        .await
        .expect("created");
    let uid = created.metadata.uid.clone().expect("a uid");
    let owned: Secret = serde_json::from_value(json!({"metadata": {"name": "stubborn-cred", "ownerReferences": [
        {"apiVersion": "v1", "kind": "Pod", "name": "stubborn", "uid": uid}]}, "stringData": {"token": "x"}}))
    .expect("a secret");
    let kept: Secret =
        serde_json::from_value(json!({"metadata": {"name": "kept"}})).expect("a secret");
    fixture
        .secrets()
        .create(&PostParams::default(), &owned)
        .await
        .expect("created");
    fixture
        .secrets()
        .create(&PostParams::default(), &kept)
        .await
        .expect("created");
    fixture
        .wait_pod("stubborn", |p| phase(p) == "Running")
        .await;
    let pids = fixture.cluster.pids();
    assert_eq!(pids.len(), 1);
    assert!(alive(pids[0]));

    let answer = fixture
        .pods()
        .delete("stubborn", &DeleteParams::default().grace_period(1))
        .await
        .expect("deleted");
    let deleting = answer.left().expect("the pod, being deleted");
    assert!(deleting.metadata.deletion_timestamp.is_some());
    fixture.wait_gone("stubborn").await;
    assert!(!alive(pids[0]), "the process outlived its pod");
    assert!(fixture.cluster.pids().is_empty());
    let names: Vec<String> = fixture
        .cluster
        .secrets()
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    assert_eq!(names, ["kept"]);
    let requests = fixture.cluster.requests_seen();
    assert!(requests.iter().any(|(method, path)| method == "DELETE"
        && path.starts_with(&format!("/api/v1/namespaces/{NS}/pods/stubborn"))));
}

#[tokio::test]
async fn eviction_and_oom_kills_fail_the_pod() {
    let fixture = Fixture::new("kills").await;
    fixture.node("n1", "4", &[]);
    for name in ["evicted", "oom"] {
        fixture
            .pods()
            .create(&PostParams::default(), &pod(name, "sleep 1000", json!({})))
            .await
            .expect("created");
        fixture.wait_pod(name, |p| phase(p) == "Running").await;
    }
    fixture.cluster.evict(NS, "evicted");
    fixture.cluster.oom_kill(NS, "oom");
    let evicted = fixture.wait_pod("evicted", |p| phase(p) == "Failed").await;
    let status = evicted.status.expect("a status");
    assert_eq!(status.reason.as_deref(), Some("Evicted"));
    assert_eq!(
        status.message.as_deref(),
        Some("The node was low on resource: memory.")
    );
    let oom = fixture.wait_pod("oom", |p| phase(p) == "Failed").await;
    let terminated = oom
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|s| s[0].state.clone())
        .and_then(|s| s.terminated);
    let terminated = terminated.expect("terminated");
    assert_eq!(
        (terminated.exit_code, terminated.reason.as_deref()),
        (137, Some("OOMKilled"))
    );
    assert!(fixture.cluster.pids().is_empty());
}

#[tokio::test]
async fn a_watch_from_a_too_old_version_is_gone() {
    let fixture = Fixture::new("gone").await;
    let (_, list) = fixture
        .raw(
            "GET",
            &format!("/api/v1/namespaces/{NS}/secrets"),
            None,
            true,
        )
        .await;
    let start = list["metadata"]["resourceVersion"]
        .as_str()
        .expect("a list version")
        .to_owned();
    for at in 0..1001 {
        let secret = json!({"metadata": {"name": format!("s{at}")}});
        let (code, _) = fixture
            .raw(
                "POST",
                &format!("/api/v1/namespaces/{NS}/secrets"),
                Some(&secret),
                true,
            )
            .await;
        assert_eq!(code, 201);
    }
    let mut events = fixture
        .secrets()
        .watch(&WatchParams::default(), &start)
        .await
        .expect("a watch")
        .boxed();
    let first = tokio::time::timeout(PATIENCE, events.try_next())
        .await
        .expect("an event in time");
    match first.expect("an event").expect("not the end") {
        WatchEvent::Error(status) => assert_eq!(status.code, 410),
        other => panic!("expected a 410 error, got {other:?}"),
    }
}

#[tokio::test]
async fn lists_honour_label_and_field_selectors() {
    let fixture = Fixture::new("selectors").await;
    let labelled = |name: &str, labels: Value| {
        pod(name, "sleep 1000", json!({"metadata": {"labels": labels}}))
    };
    for (name, labels) in [
        ("a", json!({"corral.dev/run": "1", "tier": "x"})),
        ("b", json!({"corral.dev/run": "2"})),
        ("c", json!({"corral.dev/run": "3", "tier": "y"})),
    ] {
        fixture
            .pods()
            .create(&PostParams::default(), &labelled(name, labels))
            .await
            .expect("created");
    }
    let names = |selector: &'static str, fields: &'static str| {
        let pods = fixture.pods();
        async move {
            let params = ListParams::default().labels(selector).fields(fields);
            let list = pods.list(&params).await.expect("a list");
            list.items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(names("corral.dev/run=2", "").await, ["b"]);
    assert_eq!(names("corral.dev/run in (1,3),tier!=y", "").await, ["a"]);
    assert_eq!(names("!tier", "").await, ["b"]);
    assert_eq!(names("tier,corral.dev/run notin (1)", "").await, ["c"]);
    assert_eq!(names("", "metadata.name=c").await, ["c"]);
    assert_eq!(
        names("tier", "status.phase=Pending,metadata.name!=a").await,
        ["c"]
    );
    let all: Api<Pod> = Api::all(fixture.client.clone());
    assert_eq!(
        all.list(&ListParams::default().labels("tier=x"))
            .await
            .expect("a list")
            .items
            .len(),
        1
    );
    let (code, status) = fixture
        .raw(
            "GET",
            &format!("/api/v1/namespaces/{NS}/pods?labelSelector=a%20in%20(b"),
            None,
            true,
        )
        .await;
    assert_eq!((code, status["reason"].as_str()), (400, Some("BadRequest")));
}

/// Waits for the first object of `stream` that satisfies `done`.
async fn first_applied<S>(stream: &mut S, done: impl Fn(&Pod) -> bool) -> Pod
where
    S: futures_util::Stream<Item = Result<Pod, kube::runtime::watcher::Error>> + Unpin,
{
    loop {
        let next = tokio::time::timeout(PATIENCE, stream.try_next())
            .await
            .expect("an event in time");
        let pod = next.expect("the watcher goes on").expect("not the end");
        if done(&pod) {
            return pod;
        }
    }
}

#[tokio::test]
async fn kube_runtimes_watcher_follows_pods() {
    use kube::runtime::{WatchStreamExt, watcher};
    let fixture = Fixture::new("watcher").await;
    fixture.node("n1", "4", &[]);
    fixture
        .pods()
        .create(
            &PostParams::default(),
            &pod("before", "sleep 1000", json!({})),
        )
        .await
        .expect("created");
    for config in [
        watcher::Config::default(),
        watcher::Config::default().streaming_lists(),
    ] {
        let mut applied = watcher(fixture.pods(), config.labels("app=corral"))
            .applied_objects()
            .boxed();
        let before = first_applied(&mut applied, |p| {
            p.metadata.name.as_deref() == Some("before")
        })
        .await;
        assert!(before.metadata.resource_version.is_some());
        let name = format!("after-{}", fixture.cluster.pods_created());
        fixture
            .pods()
            .create(&PostParams::default(), &pod(&name, "sleep 1000", json!({})))
            .await
            .expect("created");
        let running = first_applied(&mut applied, |p| {
            p.metadata.name.as_deref() == Some(name.as_str()) && phase(p) == "Running"
        })
        .await;
        assert_eq!(
            running.spec.as_ref().and_then(|s| s.node_name.as_deref()),
            Some("n1")
        );
    }
    let requests = fixture.cluster.requests_seen();
    assert!(
        requests
            .iter()
            .any(|(_, path)| path.contains("sendInitialEvents=true")),
        "{requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|(_, path)| path.contains("watch=true") && !path.contains("sendInitialEvents")),
        "{requests:?}"
    );
}

#[tokio::test]
async fn a_watch_with_a_field_selector_sees_pods_come_and_go() {
    let fixture = Fixture::new("field-watch").await;
    fixture.node("n1", "4", &[]);
    let params = WatchParams::default()
        .fields("status.phase=Running")
        .timeout(30);
    let mut events = fixture
        .pods()
        .watch(&params, "0")
        .await
        .expect("a watch")
        .boxed();
    fixture
        .pods()
        .create(
            &PostParams::default(),
            &pod("brief", "sleep 0.3", json!({})),
        )
        .await
        .expect("created");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let next = tokio::time::timeout(PATIENCE, events.try_next())
            .await
            .expect("an event in time");
        match next.expect("an event").expect("not the end") {
            WatchEvent::Added(pod) => seen.push(format!("ADDED {}", phase(&pod))),
            WatchEvent::Modified(pod) => seen.push(format!("MODIFIED {}", phase(&pod))),
            WatchEvent::Deleted(pod) => seen.push(format!("DELETED {}", phase(&pod))),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(status) => panic!("a watch error: {status:?}"),
        }
    }
    assert_eq!(seen, ["ADDED Running", "DELETED Succeeded"]);
}

/// Whether a process is gone or only waits to be reaped.
fn ended(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(") ")
        .is_none_or(|(_, rest)| rest.starts_with('Z'))
}

/// The live processes of the process group `leader` leads.
fn process_group(leader: u32) -> Vec<u32> {
    let leader = leader.to_string();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let fields: Vec<&str> = stat
                .rsplit_once(") ")
                .map(|(_, rest)| rest.split(' ').collect())
                .unwrap_or_default();
            fields.first() != Some(&"Z") && fields.get(2) == Some(&leader.as_str())
        })
        .collect()
}

#[tokio::test]
async fn dropping_the_cluster_kills_its_processes() {
    let fixture = Fixture::new("drop").await;
    fixture.node("n1", "4", &[]);
    fixture
        .pods()
        .create(
            &PostParams::default(),
            &pod("lingering", "sleep 1000 & sleep 1000", json!({})),
        )
        .await
        .expect("created");
    fixture
        .wait_pod("lingering", |p| phase(p) == "Running")
        .await;
    let pids = fixture.cluster.pids();
    assert_eq!(pids.len(), 1);
    let deadline = Instant::now() + PATIENCE;
    let mut group = process_group(pids[0]);
    while group.len() < 2 {
        assert!(
            Instant::now() < deadline,
            "the pod's process group: {group:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
        group = process_group(pids[0]);
    }
    let Fixture { cluster, .. } = fixture;
    drop(cluster);
    let deadline = Instant::now() + PATIENCE;
    while !group.iter().all(|pid| ended(*pid)) {
        assert!(
            Instant::now() < deadline,
            "processes outlived the cluster: {group:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn secrets_are_replaced_from_their_latest_version_and_deleted() {
    let fixture = Fixture::new("secrets").await;
    let generated: Secret = serde_json::from_value(
        json!({"metadata": {"generateName": "cred-"}, "stringData": {"a": "1"}}),
    )
    .expect("a secret");
    let created = fixture
        .secrets()
        .create(&PostParams::default(), &generated)
        .await
        .expect("created");
    let name = created.metadata.name.clone().expect("a generated name");
    assert!(
        name.starts_with("cred-") && name.len() > "cred-".len(),
        "{name}"
    );
    assert_eq!(created.type_.as_deref(), Some("Opaque"));
    assert!(created.string_data.is_none());
    assert_eq!(
        created
            .data
            .as_ref()
            .and_then(|d| d.get("a"))
            .map(|b| b.0.as_slice()),
        Some(b"1".as_slice())
    );

    let mut newer = created.clone();
    newer.data = Some(BTreeMap::from([(
        "a".to_owned(),
        k8s_openapi::ByteString(b"2".to_vec()),
    )]));
    let replaced = fixture
        .secrets()
        .replace(&name, &PostParams::default(), &newer)
        .await
        .expect("replaced");
    assert_ne!(
        replaced.metadata.resource_version,
        created.metadata.resource_version
    );
    assert_eq!(replaced.metadata.uid, created.metadata.uid);
    let stale = fixture
        .secrets()
        .replace(&name, &PostParams::default(), &newer)
        .await
        .expect_err("a stale version");
    assert!(
        matches!(stale, kube::Error::Api(status) if status.code == 409 && status.reason == "Conflict")
    );

    let deleted = fixture
        .secrets()
        .delete(&name, &DeleteParams::default())
        .await
        .expect("deleted");
    let status = deleted
        .right()
        .expect("a Status, as for any object deleted at once");
    assert_eq!(
        status.status,
        Some(kube::core::response::StatusSummary::Success)
    );
    assert!(
        fixture
            .secrets()
            .get_opt(&name)
            .await
            .expect("a get")
            .is_none()
    );
    assert!(fixture.cluster.secrets().is_empty());
}

#[tokio::test]
async fn a_pods_log_is_its_output() {
    let fixture = Fixture::new("log").await;
    fixture.node("n1", "4", &[]);
    let spec = pod("talker", "echo hello; echo oops >&2; exit 3", json!({}));
    fixture
        .pods()
        .create(&PostParams::default(), &spec)
        .await
        .expect("created");
    let failed = fixture.wait_pod("talker", |p| phase(p) == "Failed").await;
    let terminated = failed
        .status
        .and_then(|s| s.container_statuses)
        .and_then(|s| s[0].state.clone())
        .and_then(|s| s.terminated);
    let terminated = terminated.expect("terminated");
    assert_eq!(
        (terminated.exit_code, terminated.reason.as_deref()),
        (3, Some("Error"))
    );
    let log = fixture
        .pods()
        .logs("talker", &kube::api::LogParams::default())
        .await
        .expect("a log");
    assert_eq!(log, "hello\noops\n");
}

#[tokio::test]
async fn the_environment_is_exactly_the_containers() {
    let fixture = Fixture::new("env").await;
    fixture.node("n1", "4", &[]);
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": "s"}, "stringData": {"k": "from-secret"}}),
    )
    .expect("a secret");
    fixture
        .secrets()
        .create(&PostParams::default(), &secret)
        .await
        .expect("created");
    let spec = pod(
        "plain",
        "unused",
        json!({"spec": {"containers": [{"name": "agent", "image": "corral:test", "command": ["env"],
        "env": [
            {"name": "A", "value": "1"},
            {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}
        ]}]}}),
    );
    fixture
        .pods()
        .create(&PostParams::default(), &spec)
        .await
        .expect("created");
    let done = fixture
        .wait_pod("plain", |p| phase(p) == "Succeeded" || phase(p) == "Failed")
        .await;
    assert_eq!(phase(&done), "Succeeded");
    let out =
        std::fs::read_to_string(pod_dir(&fixture, &done).join("agent.stdout")).expect("stdout");
    let mut names: Vec<&str> = out
        .lines()
        .filter_map(|line| line.split_once('=').map(|(name, _)| name))
        .collect();
    names.sort_unstable();
    assert_eq!(
        names,
        ["A", "HOME", "HOSTNAME", "IP", "NS", "PATH", "S"],
        "{out}"
    );
    for expected in ["A=1", &format!("NS={NS}"), "IP=127.0.0.1", "S=from-secret"] {
        assert!(
            out.lines().any(|line| line == expected),
            "{expected} not in {out}"
        );
    }
}

#[tokio::test]
async fn commands_are_found_in_the_image_first() {
    let fixture = Fixture::new("image-bin").await;
    fixture.node("n1", "4", &[]);
    let program = fixture.dir.join("bin").join("corral");
    std::fs::write(&program, "#!/bin/sh\necho \"image corral $*\"\n")
        .expect("a program in the image");
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("executable");
    let spec = pod(
        "agent",
        "unused",
        json!({"spec": {"containers": [{"name": "agent", "image": "corral:test",
        "command": ["corral"], "args": ["agent", "--server", "http://x"]}]}}),
    );
    fixture
        .pods()
        .create(&PostParams::default(), &spec)
        .await
        .expect("created");
    let done = fixture
        .wait_pod("agent", |p| phase(p) == "Succeeded" || phase(p) == "Failed")
        .await;
    let out =
        std::fs::read_to_string(pod_dir(&fixture, &done).join("agent.stdout")).expect("stdout");
    assert_eq!(out, "image corral agent --server http://x\n");
    let missing = pod(
        "missing",
        "unused",
        json!({"spec": {"containers": [{"name": "agent", "image": "corral:test",
        "command": ["no-such-program-anywhere"]}]}}),
    );
    fixture
        .pods()
        .create(&PostParams::default(), &missing)
        .await
        .expect("created");
    let failed = fixture
        .wait_pod("missing", |p| {
            phase(p) == "Succeeded" || phase(p) == "Failed"
        })
        .await;
    assert_eq!(phase(&failed), "Failed");
}
