//! A worker's pod and its credential's Secret, built from its worker request
//! (pure functions), and what a pod's status says of why it is not up.
//!
//! The pod runs `corral agent` in its container `agent`, sized by the group's
//! envelope (requests equal to limits: Guaranteed QoS), labelled with its
//! pool, run, allocation and worker, and reads its one-time credential from a
//! Secret mounted as a file: the credential is never in the pod's spec or
//! environment, and the pod reaches no service account token.

use std::collections::BTreeMap;

use corral_core::pool::kubernetes::label_value as is_label_value;
use corral_core::resources::{format_cpu, format_memory};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::provider::{Problem, WorkerRequest};

/// The label every pod and Secret corral makes carries, and its value.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "corral");
/// The label selector of everything corral makes.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=corral";
pub const POOL_LABEL: &str = "corral.dev/pool";
pub const RUN_LABEL: &str = "corral.dev/run";
pub const ALLOCATION_LABEL: &str = "corral.dev/allocation";
pub const WORKER_LABEL: &str = "corral.dev/worker";
/// The agent's container.
pub const CONTAINER: &str = "agent";
/// Where the credential's Secret is mounted, and its file there.
pub const CREDENTIAL_DIR: &str = "/var/run/secrets/corral";
pub const CREDENTIAL_KEY: &str = "credential";
/// The certificates the agent trusts for the server besides the public roots
/// (the server's own, when it serves TLS), beside the credential.
pub const CA_KEY: &str = "ca.crt";
const CREDENTIAL_VOLUME: &str = "corral-credential";
/// Read by the owner only (0400).
const CREDENTIAL_MODE: i32 = 0o400;

/// The waiting reasons of a container that will not start by waiting longer.
const FATAL_WAITING: [&str; 4] = [
    "ErrImagePull",
    "ImagePullBackOff",
    "InvalidImageName",
    "CreateContainerConfigError",
];

/// The Secret holding the credential of pod `pod`.
pub fn secret_name(pod: &str) -> String {
    format!("{pod}-credential")
}

/// `text` as a label value: itself when it is one, else its letters, digits,
/// `-`, `_` and `.` (cut and trimmed to start and end with a letter or
/// digit) and a hash of the whole, so two names never share a value.
pub fn label_value(text: &str) -> String {
    if is_label_value(text).is_ok() {
        return text.to_string();
    }
    let digest = Sha256::digest(text.as_bytes());
    let hash = hex::encode(&digest[..5]);
    let kept: String = text
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(63 - hash.len() - 1)
        .collect();
    let head = kept.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if head.is_empty() {
        hash
    } else {
        format!("{head}-{hash}")
    }
}

/// The labels of a worker's pod and Secret.
pub fn labels(request: &WorkerRequest) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string()),
        (POOL_LABEL.to_string(), label_value(&request.pool.name)),
        (RUN_LABEL.to_string(), request.run.0.to_string()),
        (
            ALLOCATION_LABEL.to_string(),
            request.allocation.0.to_string(),
        ),
        (WORKER_LABEL.to_string(), request.name.clone()),
    ])
}

/// The pod of `request`, whose agent reaches the server at `server` (trusting
/// the certificates in its Secret's `ca.crt` too, with `ca`): corral's
/// fields over the pool's `pod_template` (the template fills what corral
/// does not set; containers, volumes and other named items are matched by
/// name). Fails when the pool has no `kubernetes` section or the merged pod
/// is not a pod.
pub fn pod_for(request: &WorkerRequest, server: &str, ca: bool) -> Result<Pod, String> {
    let Some(section) = &request.pool.kubernetes else {
        return Err(format!(
            "pool {} has no kubernetes section",
            request.pool.name
        ));
    };
    let template = &request.template;
    let resources = template.resources;
    let labels = labels(request);
    let worker_labels: Vec<String> = template
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let token_file = format!("{CREDENTIAL_DIR}/{CREDENTIAL_KEY}");
    let cpu = format_cpu(resources.cpu_millis);
    let memory = format_memory(resources.memory_mib);
    let gpu = resources.gpu.to_string();
    let worker_labels = worker_labels.join(",");
    let ca_file = format!("{CREDENTIAL_DIR}/{CA_KEY}");
    let trust = ca
        .then_some(["--ca-cert", ca_file.as_str()])
        .into_iter()
        .flatten();
    let command: Vec<&str> = [
        "corral",
        "agent",
        "--server",
        server,
        "--pool",
        &template.pool,
        "--name",
        &request.name,
        "--cpu",
        &cpu,
        "--memory",
        &memory,
        "--gpu",
        &gpu,
        "--labels",
        &worker_labels,
        "--token-file",
        &token_file,
        // The credential's directory is hidden from the agent's steps.
        "--hide",
        CREDENTIAL_DIR,
        "--ephemeral",
    ]
    .into_iter()
    .chain(trust)
    .collect();
    let mut limits = Map::new();
    limits.insert("cpu".into(), json!(format!("{}m", resources.cpu_millis)));
    limits.insert(
        "memory".into(),
        json!(format!("{}Mi", resources.memory_mib)),
    );
    if resources.gpu > 0 {
        limits.insert(
            section.gpu_resource.clone(),
            json!(resources.gpu.to_string()),
        );
    }
    let env: Vec<Value> = template
        .env
        .iter()
        .map(|(name, value)| json!({"name": name, "value": value}))
        .collect();
    let mut spec = json!({
        "restartPolicy": "Never",
        "automountServiceAccountToken": false,
        "containers": [{
            "name": CONTAINER,
            "image": section.image,
            "command": command,
            // Nothing is added to the agent's command line.
            "args": [],
            "env": env,
            "resources": {"requests": limits, "limits": limits},
            "volumeMounts": [{
                "name": CREDENTIAL_VOLUME,
                "mountPath": CREDENTIAL_DIR,
                "readOnly": true,
            }],
        }],
        "volumes": [{
            "name": CREDENTIAL_VOLUME,
            "secret": {"secretName": secret_name(&request.name), "defaultMode": CREDENTIAL_MODE},
        }],
    });
    if let Value::Object(fields) = &mut spec {
        if let Some(account) = &section.service_account {
            fields.insert("serviceAccountName".into(), json!(account));
        }
        if !section.node_selector.is_empty() {
            fields.insert("nodeSelector".into(), json!(section.node_selector));
        }
        if !section.tolerations.is_empty() {
            fields.insert("tolerations".into(), json!(section.tolerations));
        }
        if !section.image_pull_secrets.is_empty() {
            let names: Vec<Value> = section
                .image_pull_secrets
                .iter()
                .map(|name| json!({"name": name}))
                .collect();
            fields.insert("imagePullSecrets".into(), Value::Array(names));
        }
    }
    let ours = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": request.name, "namespace": section.namespace, "labels": labels},
        "spec": spec,
    });
    let mut theirs = Map::new();
    for key in ["metadata", "spec"] {
        if let Some(value) = section.pod_template.get(key) {
            theirs.insert(key.to_string(), value.clone());
        }
    }
    let merged = merge(ours, Value::Object(theirs), "");
    serde_json::from_value(merged).map_err(|e| {
        format!(
            "pool {}: its pod_template does not make a pod: {e}",
            request.pool.name
        )
    })
}

/// `ours` over `theirs`: objects merged key by key, lists of named objects
/// item by item by name (a container merged field by field, any other item
/// of ours taken whole), anything else ours.
fn merge(ours: Value, theirs: Value, key: &str) -> Value {
    match (ours, theirs) {
        (Value::Object(mut ours), Value::Object(theirs)) => {
            for (k, their) in theirs {
                let merged = match ours.remove(&k) {
                    Some(our) => merge(our, their, &k),
                    None => their,
                };
                ours.insert(k, merged);
            }
            Value::Object(ours)
        }
        (Value::Array(ours), Value::Array(theirs)) if named(&ours) && named(&theirs) => {
            let deep = matches!(key, "containers" | "initContainers");
            let mut theirs: Vec<Option<Value>> = theirs.into_iter().map(Some).collect();
            let mut items: Vec<Value> = ours
                .into_iter()
                .map(|our| {
                    let same = theirs
                        .iter_mut()
                        .find(|t| t.as_ref().is_some_and(|t| t["name"] == our["name"]))
                        .and_then(Option::take);
                    match same {
                        Some(their) if deep => merge(our, their, ""),
                        _ => our,
                    }
                })
                .collect();
            items.extend(theirs.into_iter().flatten());
            Value::Array(items)
        }
        (ours, _) => ours,
    }
}

/// Whether every item is an object with a string `name`.
fn named(items: &[Value]) -> bool {
    items
        .iter()
        .all(|i| i.get("name").is_some_and(Value::is_string))
}

/// The Secret of `request`'s credential (and of the certificates `ca` its
/// agent trusts for the server), owned by its pod (uid `pod_uid`) so that it
/// goes with the pod.
pub fn secret_for(
    request: &WorkerRequest,
    namespace: &str,
    pod_uid: &str,
    ca: Option<&[u8]>,
) -> Secret {
    let mut data = BTreeMap::from([(
        CREDENTIAL_KEY.to_string(),
        ByteString(request.credential.as_bytes().to_vec()),
    )]);
    if let Some(ca) = ca {
        data.insert(CA_KEY.to_string(), ByteString(ca.to_vec()));
    }
    Secret {
        metadata: ObjectMeta {
            name: Some(secret_name(&request.name)),
            namespace: Some(namespace.to_string()),
            labels: Some(labels(request)),
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: request.name.clone(),
                uid: pod_uid.to_string(),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        type_: Some("Opaque".into()),
        data: Some(data),
        ..Secret::default()
    }
}

/// Why `pod` is not up, if its status says: unschedulable (it may yet be
/// scheduled), a container image that cannot be pulled or a container that
/// cannot be made, or a pod that ended (evicted, OOM-killed, exited), which
/// will never come up. `pod NAME: MESSAGE`.
pub fn problem_of(pod: &Pod) -> Option<Problem> {
    let name = pod.metadata.name.as_deref().unwrap_or("?");
    let problem = |message: String, fatal: bool| {
        Some(Problem {
            message: format!("pod {name}: {message}"),
            fatal,
        })
    };
    if pod.metadata.deletion_timestamp.is_some() {
        return problem("is being deleted".into(), true);
    }
    let status = pod.status.as_ref()?;
    let containers = status.container_statuses.iter().flatten();
    match status.phase.as_deref() {
        Some("Succeeded") => return problem("ended: its agent exited".into(), true),
        Some("Failed") => {
            if status.reason.as_deref() == Some("Evicted") {
                let why = status.message.as_deref().unwrap_or("no reason given");
                return problem(format!("evicted: {why}"), true);
            }
            for c in containers.clone() {
                let Some(ended) = c.state.as_ref().and_then(|s| s.terminated.as_ref()) else {
                    continue;
                };
                let message = match ended.reason.as_deref() {
                    Some("OOMKilled") => format!(
                        "container {} was killed for using more memory than its limit (OOMKilled)",
                        c.name
                    ),
                    reason => format!(
                        "container {} exited with code {}{}",
                        c.name,
                        ended.exit_code,
                        reason.map(|r| format!(" ({r})")).unwrap_or_default()
                    ),
                };
                return problem(message, true);
            }
            let why = status
                .message
                .as_deref()
                .or(status.reason.as_deref())
                .unwrap_or("no reason given");
            return problem(format!("failed: {why}"), true);
        }
        _ => {}
    }
    // A container still being made (its image pulled, its volumes mounted)
    // is said, and waited for: a slow pull outlasts the spawn timeout.
    let mut starting = None;
    for c in containers {
        let Some(waiting) = c.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let Some(reason) = waiting.reason.as_deref() else {
            continue;
        };
        let detail = waiting
            .message
            .as_deref()
            .map(|m| format!(": {m}"))
            .unwrap_or_default();
        let message = format!("container {}: {reason}{detail}", c.name);
        if FATAL_WAITING.contains(&reason) {
            return problem(message, true);
        }
        starting.get_or_insert(message);
    }
    let unscheduled = status
        .conditions
        .iter()
        .flatten()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False");
    let Some(unscheduled) = unscheduled else {
        return starting.and_then(|message| problem(message, false));
    };
    let message = unscheduled
        .message
        .clone()
        .or_else(|| unscheduled.reason.clone())
        .unwrap_or_else(|| "not scheduled".into());
    problem(message, false)
}

#[cfg(test)]
mod tests {
    use corral_core::ids::{AllocationId, RunId};
    use corral_core::pool::PoolSpec;
    use corral_core::request::WorkerTemplate;
    use corral_core::resources::Resources;
    use k8s_openapi::api::core::v1::PodStatus;
    use serde_json::json;

    use super::*;

    /// A request for a worker of `resources` on a kubernetes pool named
    /// `pool` whose section is `section` merged over a plain one.
    pub(crate) fn request(pool: &str, resources: Resources, section: Value) -> WorkerRequest {
        let mut kubernetes = json!({"namespace": "ci", "image": "registry.example/corral:0.4"});
        if let (Value::Object(base), Value::Object(extra)) = (&mut kubernetes, section) {
            base.extend(extra);
        }
        let pool = PoolSpec::parse(json!({
            "name": pool, "provider": "kubernetes", "capacity": "auto",
            "labels": {"os": "linux"}, "kubernetes": kubernetes,
        }))
        .expect("a kubernetes pool");
        WorkerRequest {
            name: "box-7-0".into(),
            template: WorkerTemplate {
                pool: pool.name.clone(),
                resources,
                labels: pool.labels.clone(),
                env: BTreeMap::from([("CORRAL_POOL".to_string(), pool.name.clone())]),
            },
            pool,
            run: RunId(42),
            allocation: AllocationId(7),
            credential: "s3cret-credential".into(),
        }
    }

    fn pod_json(request: &WorkerRequest) -> Value {
        let pod = pod_for(request, "http://corral.example:7700", false).expect("a pod");
        serde_json::to_value(&pod).expect("serializes")
    }

    #[test]
    fn a_pod_runs_the_agent_sized_by_the_envelope_and_reads_its_credential_from_a_file() {
        let request = request(
            "box",
            Resources::new(1500, 4096, 0),
            json!({
                "service_account": "corral-worker", "node_selector": {"node-pool": "ci"},
                "tolerations": [{"key": "ci", "operator": "Exists", "effect": "NoSchedule"}],
                "image_pull_secrets": ["regcred"],
            }),
        );
        let pod = pod_json(&request);
        assert_eq!(pod["metadata"]["name"], "box-7-0");
        assert_eq!(pod["metadata"]["namespace"], "ci");
        assert_eq!(
            pod["metadata"]["labels"],
            json!({
                "app.kubernetes.io/managed-by": "corral", "corral.dev/pool": "box",
                "corral.dev/run": "42", "corral.dev/allocation": "7", "corral.dev/worker": "box-7-0",
            })
        );
        let spec = &pod["spec"];
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(spec["automountServiceAccountToken"], false);
        assert_eq!(spec["serviceAccountName"], "corral-worker");
        assert_eq!(spec["nodeSelector"], json!({"node-pool": "ci"}));
        assert_eq!(
            spec["tolerations"],
            json!([{"key": "ci", "operator": "Exists", "effect": "NoSchedule"}])
        );
        assert_eq!(spec["imagePullSecrets"], json!([{"name": "regcred"}]));
        let container = &spec["containers"][0];
        assert_eq!(spec["containers"].as_array().map(Vec::len), Some(1));
        assert_eq!(container["name"], "agent");
        assert_eq!(container["image"], "registry.example/corral:0.4");
        assert_eq!(
            container["command"],
            json!([
                "corral",
                "agent",
                "--server",
                "http://corral.example:7700",
                "--pool",
                "box",
                "--name",
                "box-7-0",
                "--cpu",
                "1500m",
                "--memory",
                "4Gi",
                "--gpu",
                "0",
                "--labels",
                "os=linux",
                "--token-file",
                "/var/run/secrets/corral/credential",
                "--hide",
                "/var/run/secrets/corral",
                "--ephemeral",
            ])
        );
        assert_eq!(
            container["env"],
            json!([{"name": "CORRAL_POOL", "value": "box"}])
        );
        let sized = json!({"cpu": "1500m", "memory": "4096Mi"});
        assert_eq!(
            container["resources"],
            json!({"requests": sized, "limits": sized})
        );
        assert_eq!(
            container["volumeMounts"],
            json!([{"name": "corral-credential", "mountPath": "/var/run/secrets/corral", "readOnly": true}])
        );
        assert_eq!(
            spec["volumes"],
            json!([{"name": "corral-credential",
                    "secret": {"secretName": "box-7-0-credential", "defaultMode": 256}}])
        );
        assert!(
            !pod.to_string().contains("s3cret"),
            "the credential is nowhere in the pod"
        );
    }

    #[test]
    fn gpus_are_asked_as_the_pools_extended_resource_only_when_wanted() {
        let pod = pod_json(&request("box", Resources::new(1000, 1024, 2), json!({})));
        let gpus = &pod["spec"]["containers"][0]["resources"];
        assert_eq!(gpus["limits"]["nvidia.com/gpu"], "2");
        assert_eq!(gpus["requests"]["nvidia.com/gpu"], "2");
        let amd = request(
            "box",
            Resources::new(1000, 1024, 1),
            json!({"gpu_resource": "amd.com/gpu"}),
        );
        let pod = pod_json(&amd);
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["limits"]["amd.com/gpu"],
            "1"
        );
        assert!(
            pod["spec"]["containers"][0]["resources"]["limits"]
                .get("nvidia.com/gpu")
                .is_none()
        );
        let none = pod_json(&request("box", Resources::new(1000, 1024, 0), json!({})));
        assert_eq!(
            none["spec"]["containers"][0]["resources"]["limits"],
            json!({"cpu": "1000m", "memory": "1024Mi"})
        );
    }

    #[test]
    fn the_pod_template_fills_what_corral_leaves_and_corral_wins_the_rest() {
        let template = json!({
            "metadata": {
                "labels": {"team": "ci", "corral.dev/run": "1"},
                "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
                "name": "other",
            },
            "spec": {
                "priorityClassName": "ci",
                "restartPolicy": "Always",
                "automountServiceAccountToken": true,
                "containers": [
                    {"name": "sidecar", "image": "proxy:1"},
                    {"name": "agent", "image": "evil:1", "args": ["--server", "http://evil"],
                     "securityContext": {"runAsNonRoot": true},
                     "env": [{"name": "CORRAL_POOL", "value": "evil"}, {"name": "EXTRA", "value": "1"}],
                     "resources": {"limits": {"cpu": "64", "example.com/fpga": "1"}}},
                ],
                "volumes": [{"name": "cache", "emptyDir": {}}],
            },
        });
        let request = request(
            "box",
            Resources::new(2000, 2048, 0),
            json!({"pod_template": template}),
        );
        let pod = pod_json(&request);
        let meta = &pod["metadata"];
        assert_eq!(meta["name"], "box-7-0");
        assert_eq!(meta["labels"]["team"], "ci");
        assert_eq!(meta["labels"]["corral.dev/run"], "42");
        assert_eq!(
            meta["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"],
            "false"
        );
        let spec = &pod["spec"];
        assert_eq!(spec["priorityClassName"], "ci");
        assert_eq!(spec["restartPolicy"], "Never");
        assert_eq!(spec["automountServiceAccountToken"], false);
        let names: Vec<&str> = spec["containers"]
            .as_array()
            .expect("containers")
            .iter()
            .filter_map(|c| c["name"].as_str())
            .collect();
        assert_eq!(names, ["agent", "sidecar"]);
        let agent = &spec["containers"][0];
        assert_eq!(agent["image"], "registry.example/corral:0.4");
        assert_eq!(agent["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            agent["args"],
            json!([]),
            "the agent's command line is corral's"
        );
        assert_eq!(
            agent["env"],
            json!([{"name": "CORRAL_POOL", "value": "box"}, {"name": "EXTRA", "value": "1"}])
        );
        assert_eq!(
            agent["resources"]["limits"],
            json!({"cpu": "2000m", "memory": "2048Mi", "example.com/fpga": "1"})
        );
        let volumes: Vec<&str> = spec["volumes"]
            .as_array()
            .expect("volumes")
            .iter()
            .filter_map(|v| v["name"].as_str())
            .collect();
        assert_eq!(volumes, ["corral-credential", "cache"]);
    }

    #[test]
    fn a_template_that_is_no_pod_is_an_error_naming_the_pool() {
        let bad = request(
            "box",
            Resources::new(1000, 1024, 0),
            json!({"pod_template": {"spec": {"priority": "high"}}}),
        );
        let err = pod_for(&bad, "http://x", false).expect_err("not a pod");
        assert!(
            err.starts_with("pool box: its pod_template does not make a pod"),
            "{err}"
        );
    }

    #[test]
    fn label_values_are_valid_and_distinct_for_any_pool_name() {
        assert_eq!(label_value("linux-small"), "linux-small");
        let long = format!("a{}", "b".repeat(62));
        assert_eq!(label_value(&long), long, "63 characters is a label value");
        let awkward = ["pool_", "pool-", "pool.", "_pool", "pool__", "-"];
        let mut seen = std::collections::BTreeSet::new();
        for name in awkward {
            let value = label_value(name);
            assert!(is_label_value(&value).is_ok(), "{name:?} -> {value:?}");
            assert!(value.len() <= 63, "{value:?}");
            assert!(seen.insert(value.clone()), "{name:?} -> {value:?} twice");
        }
        assert!(
            label_value("pool_").starts_with("pool-"),
            "{}",
            label_value("pool_")
        );
    }

    #[test]
    fn the_secret_holds_the_credential_and_belongs_to_the_pod() {
        let request = request("box", Resources::new(1000, 1024, 0), json!({}));
        let secret = secret_for(&request, "ci", "uid-1", None);
        assert_eq!(secret.metadata.name.as_deref(), Some("box-7-0-credential"));
        assert_eq!(secret.metadata.namespace.as_deref(), Some("ci"));
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
        assert_eq!(secret.metadata.labels, Some(labels(&request)));
        let owner = &secret.metadata.owner_references.as_ref().expect("owned")[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.uid.as_str()),
            ("Pod", "box-7-0", "uid-1")
        );
        let data = secret.data.expect("data");
        assert_eq!(data["credential"].0, b"s3cret-credential");
        assert_eq!(data.len(), 1, "no certificates for a plain HTTP server");
    }

    #[test]
    fn over_tls_the_agent_trusts_the_servers_certificate_from_its_secret() {
        let request = request("box", Resources::new(1000, 1024, 0), json!({}));
        let pem = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let data = secret_for(&request, "ci", "uid-1", Some(pem))
            .data
            .expect("data");
        assert_eq!(data[CA_KEY].0, pem);
        let pod = pod_for(&request, "https://corral.example:7700", true).expect("a pod");
        let container = &pod.spec.expect("a spec").containers[0];
        let command = container.command.clone().expect("a command");
        let at = command
            .iter()
            .position(|a| a == "--ca-cert")
            .expect("--ca-cert");
        assert_eq!(command[at + 1], "/var/run/secrets/corral/ca.crt");
        let plain = pod_for(&request, "http://corral.example:7700", false).expect("a pod");
        let command = plain.spec.expect("a spec").containers[0]
            .command
            .clone()
            .expect("a command");
        assert!(!command.iter().any(|a| a == "--ca-cert"), "{command:?}");
    }

    fn pod_with(status: Value) -> Pod {
        let status: PodStatus = serde_json::from_value(status).expect("a pod status");
        Pod {
            metadata: ObjectMeta {
                name: Some("box-7-0".into()),
                ..ObjectMeta::default()
            },
            status: Some(status),
            ..Pod::default()
        }
    }

    #[test]
    fn a_pods_status_tells_why_it_is_not_up() {
        let waiting = |reason: &str| {
            json!({"phase": "Pending", "containerStatuses": [{
                "name": "agent", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": reason, "message": "back-off pulling image \"x\""}}}]})
        };
        let terminated = |reason: &str, code: i32| {
            json!({"phase": "Failed", "containerStatuses": [{
                "name": "agent", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"terminated": {"reason": reason, "exitCode": code}}}]})
        };
        let cases: Vec<(Value, Option<(&str, bool)>)> = vec![
            (json!({"phase": "Running"}), None),
            (json!({"phase": "Pending"}), None),
            (
                json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False",
                    "reason": "Unschedulable", "message": "0/3 nodes are available: 3 Insufficient cpu."}]}),
                Some((
                    "pod box-7-0: 0/3 nodes are available: 3 Insufficient cpu.",
                    false,
                )),
            ),
            (
                json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}]}),
                None,
            ),
            (
                waiting("ImagePullBackOff"),
                Some((
                    "pod box-7-0: container agent: ImagePullBackOff: back-off pulling image \"x\"",
                    true,
                )),
            ),
            (
                waiting("ErrImagePull"),
                Some((
                    "pod box-7-0: container agent: ErrImagePull: back-off pulling image \"x\"",
                    true,
                )),
            ),
            (
                waiting("InvalidImageName"),
                Some((
                    "pod box-7-0: container agent: InvalidImageName: back-off pulling image \"x\"",
                    true,
                )),
            ),
            (
                waiting("CreateContainerConfigError"),
                Some((
                    "pod box-7-0: container agent: CreateContainerConfigError: back-off pulling image \"x\"",
                    true,
                )),
            ),
            (
                waiting("ContainerCreating"),
                Some((
                    "pod box-7-0: container agent: ContainerCreating: back-off pulling image \"x\"",
                    false,
                )),
            ),
            (
                json!({"phase": "Failed", "reason": "Evicted",
                    "message": "The node was low on resource: memory."}),
                Some((
                    "pod box-7-0: evicted: The node was low on resource: memory.",
                    true,
                )),
            ),
            (
                terminated("OOMKilled", 137),
                Some((
                    "pod box-7-0: container agent was killed for using more memory than its limit (OOMKilled)",
                    true,
                )),
            ),
            (
                terminated("Error", 3),
                Some((
                    "pod box-7-0: container agent exited with code 3 (Error)",
                    true,
                )),
            ),
            (
                json!({"phase": "Failed"}),
                Some(("pod box-7-0: failed: no reason given", true)),
            ),
            (
                json!({"phase": "Succeeded"}),
                Some(("pod box-7-0: ended: its agent exited", true)),
            ),
        ];
        for (status, expected) in cases {
            let found = problem_of(&pod_with(status.clone()));
            let found = found.as_ref().map(|p| (p.message.as_str(), p.fatal));
            assert_eq!(found, expected, "{status}");
        }
        let mut deleted = pod_with(json!({"phase": "Running"}));
        deleted.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-01-01T00:00:00Z".parse().expect("a time"),
            ));
        assert_eq!(
            problem_of(&deleted).map(|p| (p.message, p.fatal)),
            Some(("pod box-7-0: is being deleted".to_string(), true))
        );
        assert_eq!(problem_of(&Pod::default()), None, "no status yet");
    }
}
