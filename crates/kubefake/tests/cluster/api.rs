//! The HTTP API: auth, validation, conflicts, selectors, secrets.

use super::*;

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

    let versioned = json!({"metadata": {"name": "s", "resourceVersion": "7"}});
    let (code, status) = fixture
        .raw(
            "POST",
            &format!("/api/v1/namespaces/{NS}/secrets"),
            Some(&versioned),
            true,
        )
        .await;
    assert_eq!(code, 422, "{status}");
    assert_eq!(
        status["details"]["causes"][0]["field"],
        "metadata.resourceVersion"
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
