//! The kubelet: pods run as local processes with their env and mounted secrets, image
//! pulls, deletes, evictions, OOM kills, logs.

use super::*;

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
    let message = |pod: &Pod| {
        let state = pod
            .status
            .as_ref()?
            .container_statuses
            .as_ref()?
            .first()?
            .state
            .clone()?;
        state.waiting?.message
    };
    assert_eq!(
        message(&waiting).as_deref(),
        Some("MountVolume.SetUp failed for volume \"cred\" : secret \"late\" not found")
    );
    let without_key: Secret =
        serde_json::from_value(json!({"metadata": {"name": "late"}, "data": {"other": "eA=="}}))
            .expect("a secret");
    let created = fixture
        .secrets()
        .create(&PostParams::default(), &without_key)
        .await
        .expect("created");
    let waiting = fixture
        .wait_pod("early", |p| {
            message(p).is_some_and(|m| m.contains("non-existent secret key"))
        })
        .await;
    assert_eq!(
        waiting_reason(&waiting).as_deref(),
        Some("ContainerCreating")
    );
    let mut with_key = created;
    with_key.data = Some(BTreeMap::from([(
        "k".to_owned(),
        k8s_openapi::ByteString(b"secret".to_vec()),
    )]));
    fixture
        .secrets()
        .replace("late", &PostParams::default(), &with_key)
        .await
        .expect("replaced");
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
