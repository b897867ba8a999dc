//! The HTTP API: bad input is refused with the field path and nothing stored;
//! pools and tenants have their CRUD; the OpenAPI document is served.

use serde_json::Value;

use crate::harness::{Server, StoreKind};

#[tokio::test(flavor = "multi_thread")]
async fn bad_pipelines_are_refused_with_the_field_path_and_not_stored() {
    let server = Server::start("badinput", StoreKind::Sqlite).await;
    let cases = [
        (
            "steps:\n  - {name: a, run: 'true', needs: [c]}\n  - {name: b, run: 'true', needs: [a]}\n  - {name: c, run: 'true', needs: [b]}\n",
            "steps",
            "cycle",
        ),
        (
            "steps:\n  - {name: a, run: 'true', needs: [nope]}\n",
            "steps[0].needs[0]",
            "unknown step",
        ),
        (
            "steps:\n  - {name: a, run: 'true'}\n  - {name: a, run: 'true'}\n",
            "steps[1].name",
            "duplicate",
        ),
        (
            "steps:\n  - {name: a, run: 'true', resources: {cpu: 2x}}\n",
            "steps[0].resources.cpu",
            "not a cpu quantity",
        ),
        (
            "steps:\n  - {name: a, run: 'true', resources: {memory: 4GB}}\n",
            "steps[0].resources.memory",
            "not a memory quantity",
        ),
        (
            "steps:\n  - {name: a, run: 'true', colour: red}\n",
            "steps[0].colour",
            "unknown field",
        ),
        (
            "steps:\n  - {name: a, run: 'true', resources: {cpu: -1}}\n",
            "steps[0].resources.cpu",
            "not a cpu quantity",
        ),
        (
            "steps:\n  - {name: a, run: 'true', resources: {cpu: 0}}\n",
            "steps[0].resources.cpu",
            "greater than zero",
        ),
        (
            "steps:\n  - {name: a, run: 'true', resources: {memory: 0Mi}}\n",
            "steps[0].resources.memory",
            "greater than zero",
        ),
        (
            "tenant: nobody\nsteps:\n  - {name: a, run: 'true'}\n",
            "tenant",
            "unknown tenant",
        ),
        ("steps: []\n", "steps", "at least one step"),
    ];
    for (steps, path, words) in cases {
        let doc = format!("kind: Pipeline\nname: bad\n{steps}");
        let (status, body) = server.send("POST", "/api/v1/runs", &doc).await;
        assert_eq!(status, 400, "{doc}: {body}");
        assert_eq!(body["error"]["code"], "invalid", "{body}");
        assert_eq!(body["error"]["details"]["path"], path, "{doc}: {body}");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(
            message.starts_with(path) && message.contains(words),
            "{doc}: {message}"
        );
    }
    // JSON is accepted as well, and its errors name the path the same way.
    let (status, body) = server
        .send(
            "POST",
            "/api/v1/runs",
            r#"{"name": "j", "steps": [{"name": "a", "run": "true", "timeout": "soon"}]}"#,
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["details"]["path"], "steps[0].timeout");
    let runs: Vec<Value> = server.get("/api/v1/runs").await;
    assert!(runs.is_empty(), "nothing is stored: {runs:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn pools_and_tenants_crud() {
    let server = Server::start("crud", StoreKind::Sqlite).await;
    // First start: a local pool and a default tenant.
    let pools: Vec<Value> = server.get("/api/v1/pools").await;
    assert_eq!(pools.len(), 1);
    assert_eq!(pools[0]["name"], "local");
    assert!(pools[0]["capacity"]["cpu_millis"].as_u64().expect("cpu") >= 1000);
    let tenants: Vec<Value> = server.get("/api/v1/tenants").await;
    assert_eq!(tenants[0]["name"], "default");

    let pool = r#"{"kind": "Pool", "name": "gpu", "capacity": {"cpu": 16, "memory": "64Gi", "gpu": 2},
                   "labels": {"gpu": "a100"}, "price": {"gpu_hour": 2.5}}"#;
    let (status, body) = server.send("POST", "/api/v1/pools", pool).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        body["capacity"],
        serde_json::json!({"cpu_millis": 16000, "memory_mib": 65536, "gpu": 2})
    );
    assert_eq!(body["state"], "active");
    let (status, _) = server.send("POST", "/api/v1/pools", pool).await;
    assert_eq!(status, 409, "creating twice conflicts");
    let (status, body) = server
        .send(
            "PUT",
            "/api/v1/pools/gpu",
            "name: gpu\ncapacity: {cpu: 8, memory: 32Gi}\nstate: draining\n",
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "draining");
    assert_eq!(body["capacity"]["cpu_millis"], 8000);
    let (status, body) = server
        .send(
            "PUT",
            "/api/v1/pools/gpu",
            "name: other\ncapacity: {cpu: 8, memory: 32Gi}\n",
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["details"]["path"], "name");
    let (status, body) = server
        .send(
            "PUT",
            "/api/v1/pools/gpu",
            "name: gpu\ncapacity: {cpu: 8}\n",
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["details"]["path"], "capacity.memory");
    let got: Value = server.get("/api/v1/pools/gpu").await;
    assert_eq!(
        got["capacity"]["cpu_millis"], 8000,
        "a refused update changes nothing"
    );
    let (status, _) = server.send("DELETE", "/api/v1/pools/gpu", "").await;
    assert_eq!(status, 204);
    let (status, body) = server.send("GET", "/api/v1/pools/gpu", "").await;
    assert_eq!(status, 404);
    assert_eq!(body["error"]["code"], "not_found");
    let (status, _) = server.send("DELETE", "/api/v1/pools/gpu", "").await;
    assert_eq!(status, 404);

    let (status, body) = server
        .send(
            "POST",
            "/api/v1/tenants",
            "kind: Tenant\nname: acme\nweight: 2\nquota: {cpu: 6, memory: 12Gi, runs: 10}\n",
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["quota"]["cpu_millis"], 6000);
    assert_eq!(body["quota"]["gpu"], Value::Null);
    let (status, body) = server
        .send("PUT", "/api/v1/tenants/acme", "name: acme\nweight: 0\n")
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["details"]["path"], "weight");
    let (status, body) = server
        .send(
            "POST",
            "/api/v1/apply",
            "kind: Tenant\nname: x\n---\nkind: Pool\nname: p\ncapacity: {cpu: 1x, memory: 1Gi}\n",
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"]["path"], "capacity.cpu");
    let (status, _) = server.send("GET", "/api/v1/tenants/x", "").await;
    assert_eq!(
        status, 404,
        "a manifest with an invalid document applies nothing"
    );
    let (status, _) = server.send("DELETE", "/api/v1/tenants/acme", "").await;
    assert_eq!(status, 204);
    let (status, body) = server.send("GET", "/api/v1/runs?state=bogus", "").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["details"]["path"], "state");
    let (status, body) = server
        .send("GET", "/api/v1/allocations?colour=red", "")
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["details"]["path"], "colour");
}

#[tokio::test(flavor = "multi_thread")]
async fn serves_an_openapi_document_of_the_api() {
    let server = Server::start("openapi", StoreKind::Sqlite).await;
    let doc: Value = server.get("/api/v1/openapi.json").await;
    assert!(doc["openapi"].as_str().expect("version").starts_with("3."));
    for path in [
        "/api/v1/pools",
        "/api/v1/pools/{name}",
        "/api/v1/tenants/{name}",
        "/api/v1/runs",
        "/api/v1/runs/{id}",
        "/api/v1/runs/{id}/cancel",
        "/api/v1/runs/{id}/logs",
        "/api/v1/allocations",
        "/api/v1/agents/{worker}/poll",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} is documented");
    }
    assert!(doc["components"]["schemas"]["RunView"].is_object());
    assert!(doc["components"]["schemas"]["AllocationView"].is_object());
}
