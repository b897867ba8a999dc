//! The scheduler: pods wait for a node with room, in the scheduler's words.

use super::*;

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
