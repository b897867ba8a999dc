//! The HTTP API: core/v1 pods, secrets and nodes at their real paths, with the real
//! query parameters and JSON shapes; lists and watches; discovery; bearer-token auth.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodStatus, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{DeleteOptions, ObjectMeta};
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::Shared;
use crate::kubelet::{MAX_GRACE, signal};
use crate::scheduler::set_condition;
use crate::state::{Key, Kill, Kind, PodEntry, lock, now};
use crate::status::ApiError;
use crate::validate::{Cause, check_pod, check_secret, typed};
use crate::watch::list_or_watch;

/// The most pods, and the most secrets, the fake keeps.
const MAX_OBJECTS: usize = 10_000;

/// The Kubernetes version the fake says it is.
const MINOR: &str = "37";

pub(crate) type Answer = Result<Response, ApiError>;
type Params = Query<BTreeMap<String, String>>;

/// The router of the fake API server.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/api", get(api_versions))
        .route("/api/v1", get(api_resources))
        .route("/apis", get(api_groups))
        .route("/api/v1/pods", get(list_all_pods))
        .route("/api/v1/secrets", get(list_all_secrets))
        .route(
            "/api/v1/namespaces/{ns}/pods",
            get(list_pods).post(create_pod),
        )
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}",
            get(get_pod).delete(delete_pod),
        )
        .route("/api/v1/namespaces/{ns}/pods/{name}/log", get(pod_log))
        .route(
            "/api/v1/namespaces/{ns}/secrets",
            get(list_secrets).post(create_secret),
        )
        .route(
            "/api/v1/namespaces/{ns}/secrets/{name}",
            get(get_secret).put(replace_secret).delete(delete_secret),
        )
        .route("/api/v1/nodes", get(list_nodes))
        .route("/api/v1/nodes/{name}", get(get_node))
        .fallback(|request: Request| async move { ApiError::no_route(request.uri().path()) })
        .method_not_allowed_fallback(|| async { ApiError::method_not_allowed() })
        .layer(middleware::from_fn_with_state(shared.clone(), guard))
        .with_state(shared)
}

/// Logs every request, then lets through those with the cluster's bearer token.
async fn guard(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let target = request.uri().path_and_query().map_or_else(
        || request.uri().path().to_owned(),
        |p| p.as_str().to_owned(),
    );
    lock(&shared.state).log_request((request.method().to_string(), target));
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    if bearer != Some(shared.token.as_str()) {
        return ApiError::unauthorized().into_response();
    }
    next.run(request).await
}

pub(crate) fn json(code: StatusCode, value: &impl serde::Serialize) -> Response {
    (code, axum::Json(value)).into_response()
}

async fn version() -> Response {
    json(
        StatusCode::OK,
        &json!({
            "major": "1", "minor": MINOR, "gitVersion": format!("v1.{MINOR}.0-corral-kubefake"),
            "gitCommit": "0000000000000000000000000000000000000000", "gitTreeState": "clean",
            "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.25", "compiler": "gc", "platform": "linux/amd64"
        }),
    )
}

async fn api_versions() -> Response {
    json(
        StatusCode::OK,
        &json!({"kind": "APIVersions", "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]}),
    )
}

async fn api_groups() -> Response {
    json(
        StatusCode::OK,
        &json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": []}),
    )
}

async fn api_resources() -> Response {
    let resource = |name: &str, kind: &str, namespaced: bool, verbs: &[&str]| json!({"name": name, "singularName": kind.to_lowercase(), "namespaced": namespaced, "kind": kind, "verbs": verbs});
    json(
        StatusCode::OK,
        &json!({"kind": "APIResourceList", "groupVersion": "v1", "resources": [
            resource("pods", "Pod", true, &["create", "delete", "get", "list", "watch"]),
            resource("pods/log", "Pod", true, &["get"]),
            resource("secrets", "Secret", true, &["create", "delete", "get", "list", "update", "watch"]),
            resource("nodes", "Node", false, &["get", "list", "watch"]),
        ]}),
    )
}

/// Reads a JSON body.
fn body_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|error| {
        ApiError::bad_request(format!(
            "the body of the request could not be read as JSON: {error}"
        ))
    })
}

/// The name a refused body gave, for its `Status`.
fn named(body: &Value) -> String {
    body.pointer("/metadata/name")
        .or_else(|| body.pointer("/metadata/generateName"))
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned()
}

/// Refuses a body naming another namespace than its path.
fn same_namespace(sent: Option<&String>, ns: &str) -> Result<(), ApiError> {
    match sent {
        Some(sent) if !sent.is_empty() && sent != ns => Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        )),
        _ => Ok(()),
    }
}

/// The pod's QoS class, as the API server computes it.
fn qos_class(spec: &PodSpec) -> &'static str {
    let mut any = false;
    let mut guaranteed = true;
    for container in &spec.containers {
        let resources = container.resources.as_ref();
        let requests = resources
            .and_then(|r| r.requests.clone())
            .unwrap_or_default();
        let limits = resources.and_then(|r| r.limits.clone()).unwrap_or_default();
        any |= !requests.is_empty() || !limits.is_empty();
        for name in ["cpu", "memory"] {
            let limit = limits.get(name);
            let request = requests.get(name).or(limit);
            if limit.is_none() || request.map(|q| &q.0) != limit.map(|q| &q.0) {
                guaranteed = false;
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// The metadata a create must leave to the server: a `resourceVersion` is refused, as
/// the API server refuses it.
fn unset_on_create(meta: &ObjectMeta) -> Vec<Cause> {
    match meta.resource_version.as_deref() {
        Some(rv) if !rv.is_empty() => vec![Cause {
            field: "metadata.resourceVersion".to_owned(),
            message: format!("Invalid value: {rv:?}: must be empty on create"),
            reason: "FieldValueInvalid",
        }],
        _ => Vec::new(),
    }
}

async fn create_pod(
    State(shared): State<Arc<Shared>>,
    Path(ns): Path<String>,
    body: Bytes,
) -> Answer {
    let body = body_json(&body)?;
    let invalid = |causes: &[_]| ApiError::invalid("Pod", "pods", &named(&body), causes);
    let mut pod: Pod = typed(&body).map_err(|causes| invalid(&causes))?;
    same_namespace(pod.metadata.namespace.as_ref(), &ns)?;
    let mut causes = check_pod(&pod);
    causes.extend(unset_on_create(&pod.metadata));
    if !causes.is_empty() {
        return Err(invalid(&causes));
    }
    let mut state = lock(&shared.state);
    if state.pods.len() >= MAX_OBJECTS {
        return Err(ApiError::too_many("pods", MAX_OBJECTS));
    }
    state.stamp_new(&mut pod.metadata);
    let name = pod.metadata.name.clone().unwrap_or_default();
    let key = (ns.clone(), name.clone());
    if state.pods.contains_key(&key) {
        return Err(ApiError::already_exists("pods", &name));
    }
    pod.metadata.namespace = Some(ns.clone());
    pod.metadata.resource_version = None;
    pod.metadata.deletion_timestamp = None;
    pod.metadata.deletion_grace_period_seconds = None;
    pod.metadata.managed_fields = None;
    let spec = pod.spec.get_or_insert_with(PodSpec::default);
    spec.restart_policy
        .get_or_insert_with(|| "Always".to_owned());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.scheduler_name
        .get_or_insert_with(|| "default-scheduler".to_owned());
    spec.service_account_name
        .get_or_insert_with(|| "default".to_owned());
    let qos = qos_class(spec);
    pod.status = Some(PodStatus {
        phase: Some("Pending".to_owned()),
        qos_class: Some(qos.to_owned()),
        ..PodStatus::default()
    });
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let dir = shared
        .work_dir
        .join("pods")
        .join(format!("{ns}_{name}_{uid}"));
    std::fs::create_dir_all(&dir).map_err(|error| {
        ApiError::bad_request(format!(
            "the fake kubelet cannot make {}: {error}",
            dir.display()
        ))
    })?;
    let created = state.rv() + 1;
    state.pods.insert(
        key.clone(),
        PodEntry {
            pod,
            created,
            dir,
            processes: Vec::new(),
            kill: None,
            pull_failed: None,
        },
    );
    state.pods_created += 1;
    state.pod_changed(&key, "ADDED");
    let pod = &state.pods[&key].pod;
    Ok(json(StatusCode::CREATED, pod))
}

async fn get_pod(
    State(shared): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
) -> Answer {
    let state = lock(&shared.state);
    let entry = state
        .pods
        .get(&(ns, name.clone()))
        .ok_or_else(|| ApiError::not_found("pods", &name))?;
    Ok(json(StatusCode::OK, &entry.pod))
}

/// The grace period a delete asked for: the query's, else the body's, else the pod's;
/// capped.
fn grace(
    params: &BTreeMap<String, String>,
    options: Option<&DeleteOptions>,
    pod: &Pod,
) -> Result<Duration, ApiError> {
    let seconds = match params.get("gracePeriodSeconds") {
        Some(text) => Some(text.parse::<i64>().map_err(|_| {
            ApiError::bad_request(format!(
                "gracePeriodSeconds: {text:?} is not a number of seconds"
            ))
        })?),
        None => options.and_then(|o| o.grace_period_seconds),
    }
    .or_else(|| {
        pod.spec
            .as_ref()
            .and_then(|spec| spec.termination_grace_period_seconds)
    })
    .unwrap_or(30);
    Ok(Duration::from_secs(u64::try_from(seconds).unwrap_or(0)).min(MAX_GRACE))
}

/// Reads a DELETE's optional `DeleteOptions` body and checks its `preconditions`.
fn delete_options(
    body: &Bytes,
    uid: Option<&String>,
    resource: &str,
    name: &str,
) -> Result<Option<DeleteOptions>, ApiError> {
    if body.is_empty() {
        return Ok(None);
    }
    let value = body_json(body)?;
    let options: DeleteOptions = typed(&value)
        .map_err(|causes| ApiError::invalid("DeleteOptions", resource, name, &causes))?;
    if let Some(wanted) = options.preconditions.as_ref().and_then(|p| p.uid.as_ref())
        && Some(wanted) != uid
    {
        return Err(ApiError::conflict(resource, name));
    }
    Ok(Some(options))
}

async fn delete_pod(
    State(shared): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
    Query(params): Params,
    body: Bytes,
) -> Answer {
    let key = (ns, name.clone());
    let mut state = lock(&shared.state);
    let entry = state
        .pods
        .get_mut(&key)
        .ok_or_else(|| ApiError::not_found("pods", &name))?;
    let options = delete_options(&body, entry.pod.metadata.uid.as_ref(), "pods", &name)?;
    let grace = grace(&params, options.as_ref(), &entry.pod)?;
    if entry.pod.metadata.deletion_timestamp.is_some() {
        return Ok(json(StatusCode::OK, &entry.pod));
    }
    if entry.running().next().is_none() {
        let pod = entry.pod.clone();
        state.remove_pod(&key);
        return Ok(json(StatusCode::OK, &pod));
    }
    entry.pod.metadata.deletion_timestamp = Some(now());
    entry.pod.metadata.deletion_grace_period_seconds = i64::try_from(grace.as_secs()).ok();
    entry.kill.get_or_insert(Kill::Deleted);
    set_condition(
        &mut entry.pod,
        "DisruptionTarget",
        "True",
        Some("TerminationByKubelet"),
        None,
    );
    signal(entry, nix::sys::signal::Signal::SIGTERM);
    let uid = entry.pod.metadata.uid.clone();
    state.pod_changed(&key, "MODIFIED");
    let pod = state.pods[&key].pod.clone();
    tokio::spawn(finish_delete(shared.clone(), key, uid, grace));
    Ok(json(StatusCode::OK, &pod))
}

/// Waits for a deleted pod's processes to end (SIGKILL after the grace period), then
/// removes it and the secrets it owns.
async fn finish_delete(shared: Arc<Shared>, key: Key, uid: Option<String>, grace: Duration) {
    let killed_at = Instant::now() + grace;
    let give_up = killed_at + MAX_GRACE;
    let mut killed = false;
    loop {
        {
            let mut state = lock(&shared.state);
            let Some(entry) = state.pods.get(&key).filter(|e| e.pod.metadata.uid == uid) else {
                return;
            };
            let now = Instant::now();
            if entry.running().next().is_none() || now >= give_up {
                state.remove_pod(&key);
                return;
            }
            if !killed && now >= killed_at {
                signal(entry, nix::sys::signal::Signal::SIGKILL);
                killed = true;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn pod_log(
    State(shared): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
    Query(params): Params,
) -> Answer {
    let (dir, container) = {
        let state = lock(&shared.state);
        let entry = state
            .pods
            .get(&(ns, name.clone()))
            .ok_or_else(|| ApiError::not_found("pods", &name))?;
        let first = entry
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.containers.first())
            .map(|c| c.name.clone());
        let container = params
            .get("container")
            .cloned()
            .or(first)
            .unwrap_or_default();
        if entry.processes.is_empty() {
            return Err(ApiError::bad_request(format!(
                "container {container:?} in pod {name:?} is waiting to start"
            )));
        }
        (entry.dir.clone(), container)
    };
    let mut text = Vec::new();
    for stream in ["stdout", "stderr"] {
        text.extend(std::fs::read(dir.join(format!("{container}.{stream}"))).unwrap_or_default());
    }
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], text).into_response())
}

/// Applies `stringData` over `data` and the default type, as the API server stores a
/// secret.
fn normalize_secret(secret: &mut Secret) {
    if let Some(strings) = secret.string_data.take() {
        let data = secret.data.get_or_insert_with(BTreeMap::new);
        for (key, value) in strings {
            data.insert(key, k8s_openapi::ByteString(value.into_bytes()));
        }
    }
    secret.type_.get_or_insert_with(|| "Opaque".to_owned());
}

/// Reads and checks a secret body for `ns`.
fn secret_body(body: &Bytes, ns: &str) -> Result<Secret, ApiError> {
    let body = body_json(body)?;
    let invalid = |causes: &[_]| ApiError::invalid("Secret", "secrets", &named(&body), causes);
    let secret: Secret = typed(&body).map_err(|causes| invalid(&causes))?;
    same_namespace(secret.metadata.namespace.as_ref(), ns)?;
    let causes = check_secret(&secret);
    if !causes.is_empty() {
        return Err(invalid(&causes));
    }
    Ok(secret)
}

async fn create_secret(
    State(shared): State<Arc<Shared>>,
    Path(ns): Path<String>,
    body: Bytes,
) -> Answer {
    let mut secret = secret_body(&body, &ns)?;
    let causes = unset_on_create(&secret.metadata);
    if !causes.is_empty() {
        let name = secret.metadata.name.clone().unwrap_or_default();
        return Err(ApiError::invalid("Secret", "secrets", &name, &causes));
    }
    let mut state = lock(&shared.state);
    if state.secrets.len() >= MAX_OBJECTS {
        return Err(ApiError::too_many("secrets", MAX_OBJECTS));
    }
    state.stamp_new(&mut secret.metadata);
    let name = secret.metadata.name.clone().unwrap_or_default();
    let key = (ns.clone(), name.clone());
    if state.secrets.contains_key(&key) {
        return Err(ApiError::already_exists("secrets", &name));
    }
    secret.metadata.namespace = Some(ns);
    secret.metadata.managed_fields = None;
    normalize_secret(&mut secret);
    state.secrets.insert(key.clone(), secret);
    state.secret_changed(&key, "ADDED");
    Ok(json(StatusCode::CREATED, &state.secrets[&key]))
}

async fn get_secret(
    State(shared): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
) -> Answer {
    let state = lock(&shared.state);
    let secret = state
        .secrets
        .get(&(ns, name.clone()))
        .ok_or_else(|| ApiError::not_found("secrets", &name))?;
    Ok(json(StatusCode::OK, secret))
}

async fn replace_secret(
    State(shared): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Answer {
    let mut secret = secret_body(&body, &ns)?;
    if secret.metadata.name.as_deref() != Some(name.as_str()) {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            secret.metadata.name.clone().unwrap_or_default()
        )));
    }
    let key = (ns.clone(), name.clone());
    let mut state = lock(&shared.state);
    let old = state
        .secrets
        .get(&key)
        .ok_or_else(|| ApiError::not_found("secrets", &name))?;
    if secret
        .metadata
        .resource_version
        .as_ref()
        .is_some_and(|rv| Some(rv) != old.metadata.resource_version.as_ref())
    {
        return Err(ApiError::conflict("secrets", &name));
    }
    normalize_secret(&mut secret);
    if secret.type_ != old.type_ {
        let cause = Cause {
            field: "type".to_owned(),
            message: "Invalid value: field is immutable".to_owned(),
            reason: "FieldValueInvalid",
        };
        return Err(ApiError::invalid("Secret", "secrets", &name, &[cause]));
    }
    if old.immutable == Some(true) && (secret.data != old.data || secret.immutable != Some(true)) {
        let cause = Cause {
            field: "data".to_owned(),
            message: "Forbidden: field is immutable when `immutable` is set".to_owned(),
            reason: "FieldValueForbidden",
        };
        return Err(ApiError::invalid("Secret", "secrets", &name, &[cause]));
    }
    secret.metadata.namespace = Some(ns);
    secret.metadata.uid = old.metadata.uid.clone();
    secret.metadata.creation_timestamp = old.metadata.creation_timestamp.clone();
    secret.metadata.managed_fields = None;
    state.secrets.insert(key.clone(), secret);
    state.secret_changed(&key, "MODIFIED");
    Ok(json(StatusCode::OK, &state.secrets[&key]))
}

async fn delete_secret(
    State(shared): State<Arc<Shared>>,
    Path((ns, name)): Path<(String, String)>,
    body: Bytes,
) -> Answer {
    let key = (ns, name.clone());
    let mut state = lock(&shared.state);
    let secret = state
        .secrets
        .get(&key)
        .ok_or_else(|| ApiError::not_found("secrets", &name))?;
    let uid = secret.metadata.uid.clone();
    delete_options(&body, uid.as_ref(), "secrets", &name)?;
    state.secret_changed(&key, "DELETED");
    Ok(json(
        StatusCode::OK,
        &json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
            "details": {"name": name, "kind": "secrets", "uid": uid}}),
    ))
}

async fn get_node(State(shared): State<Arc<Shared>>, Path(name): Path<String>) -> Answer {
    let state = lock(&shared.state);
    let node = state
        .nodes
        .get(&name)
        .ok_or_else(|| ApiError::not_found("nodes", &name))?;
    Ok(json(StatusCode::OK, node))
}

async fn list_pods(
    State(shared): State<Arc<Shared>>,
    Path(ns): Path<String>,
    Query(params): Params,
) -> Answer {
    list_or_watch(shared, Kind::Pod, Some(ns), &params)
}

async fn list_all_pods(State(shared): State<Arc<Shared>>, Query(params): Params) -> Answer {
    list_or_watch(shared, Kind::Pod, None, &params)
}

async fn list_secrets(
    State(shared): State<Arc<Shared>>,
    Path(ns): Path<String>,
    Query(params): Params,
) -> Answer {
    list_or_watch(shared, Kind::Secret, Some(ns), &params)
}

async fn list_all_secrets(State(shared): State<Arc<Shared>>, Query(params): Params) -> Answer {
    list_or_watch(shared, Kind::Secret, None, &params)
}

async fn list_nodes(State(shared): State<Arc<Shared>>, Query(params): Params) -> Answer {
    list_or_watch(shared, Kind::Node, None, &params)
}
