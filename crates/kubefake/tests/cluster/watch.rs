//! Watches: raw events, 410 from a too old version, kube-runtime's watcher.

use super::*;

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

#[tokio::test]
async fn a_node_watch_ends_at_its_timeout() {
    let fixture = Fixture::new("node-watch").await;
    fixture.node("n1", "4", &[("pool", "ci")]);
    let watch = fixture.raw(
        "GET",
        "/api/v1/nodes?watch=true&timeoutSeconds=1&labelSelector=pool%3Dci",
        None,
        true,
    );
    let (code, body) = tokio::time::timeout(PATIENCE, watch)
        .await
        .expect("the watch ends");
    assert_eq!(code, 200);
    let body = body
        .as_str()
        .map(str::to_owned)
        .unwrap_or_else(|| body.to_string());
    assert!(
        body.contains("\"type\":\"ADDED\"") && body.contains("\"name\":\"n1\""),
        "{body}"
    );
}
