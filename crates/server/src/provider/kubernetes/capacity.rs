//! The capacity of a `capacity: auto` pool (a pure function of nodes and
//! pods): the allocatable resources of the Ready, schedulable nodes its pods
//! may go to (matching its node selector, their NoSchedule and NoExecute
//! taints tolerated), minus what the other pods bound to them request.

use std::collections::{BTreeMap, BTreeSet};

use corral_core::pool::PoolSpec;
use corral_core::resources::{MAX_QUANTITY, Resources};
use k8s_openapi::api::core::v1::{Node, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::pod::{MANAGED_BY, POOL_LABEL, label_value};

/// A Kubernetes quantity (`1500m`, `2`, `7.5Gi`, `128974848`, `1e3`, `64M`)
/// as a number of wholes; `None` when it is not one.
pub fn quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    let split = q
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '+' | '-')))
        .unwrap_or(q.len());
    let (number, suffix) = q.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e => {
            let exponent: i32 = e.strip_prefix(['e', 'E'])?.parse().ok()?;
            10f64.powi(exponent)
        }
    };
    let value = number * scale;
    value.is_finite().then_some(value)
}

type ResourceList = BTreeMap<String, Quantity>;

/// The resources of `list` in corral's units (millicores, MiB, GPUs under
/// `gpu`), each rounded by `round` and bounded.
fn resources_of(list: &ResourceList, gpu: &str, round: fn(f64) -> f64) -> Resources {
    let amount = |name: &str, unit: f64| {
        list.get(name).and_then(|q| quantity(&q.0)).map_or(0, |v| {
            round((v * unit).max(0.0)).min(MAX_QUANTITY as f64) as u64
        })
    };
    Resources::new(
        amount("cpu", 1000.0),
        amount("memory", 1.0 / (1024.0 * 1024.0)),
        amount(gpu, 1.0),
    )
}

/// What `pod` asks of its node: its containers' requests (a container's
/// limits where it has no requests), or its largest init container's when
/// larger, plus its overhead; requests rounded up.
pub fn requests_of(pod: &Pod, gpu: &str) -> Resources {
    let Some(spec) = &pod.spec else {
        return Resources::ZERO;
    };
    let of = |c: &k8s_openapi::api::core::v1::Container| {
        c.resources
            .as_ref()
            .and_then(|r| r.requests.as_ref().or(r.limits.as_ref()))
            .map_or(Resources::ZERO, |list| resources_of(list, gpu, f64::ceil))
    };
    let running = spec
        .containers
        .iter()
        .fold(Resources::ZERO, |sum, c| sum.saturating_add(&of(c)));
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .fold(Resources::ZERO, |top, c| Resources::max(&top, &of(c)));
    let overhead = spec
        .overhead
        .as_ref()
        .map_or(Resources::ZERO, |list| resources_of(list, gpu, f64::ceil));
    Resources::max(&running, &init).saturating_add(&overhead)
}

/// Whether `toleration` tolerates `taint`, as the scheduler decides.
fn tolerates(toleration: &Toleration, taint: &Taint) -> bool {
    let effect = toleration.effect.as_deref().unwrap_or("");
    if !effect.is_empty() && effect != taint.effect {
        return false;
    }
    let key = toleration.key.as_deref().unwrap_or("");
    match toleration.operator.as_deref().unwrap_or("Equal") {
        "Exists" => key.is_empty() || key == taint.key,
        _ => {
            key == taint.key
                && toleration.value.as_deref().unwrap_or("") == taint.value.as_deref().unwrap_or("")
        }
    }
}

/// Whether `pool`'s pods may be placed on `node`: Ready, schedulable,
/// labelled as the pool's node selector asks, and every taint that keeps
/// pods off tolerated.
fn serves(node: &Node, selector: &BTreeMap<String, String>, tolerations: &[Toleration]) -> bool {
    let labels = node.metadata.labels.as_ref();
    let selected = selector
        .iter()
        .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v));
    let spec = node.spec.as_ref();
    let schedulable = spec.and_then(|s| s.unschedulable) != Some(true);
    let tolerated = spec
        .and_then(|s| s.taints.as_ref())
        .into_iter()
        .flatten()
        .filter(|t| matches!(t.effect.as_str(), "NoSchedule" | "NoExecute"))
        .all(|t| tolerations.iter().any(|tol| tolerates(tol, t)));
    let ready = node
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .into_iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    selected && schedulable && tolerated && ready
}

/// Whether `pod` is one of `pool`'s workers (whose use is the pool's own).
fn is_worker_of(pod: &Pod, pool: &str) -> bool {
    let labels = pod.metadata.labels.as_ref();
    let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
    label(MANAGED_BY.0) == Some(MANAGED_BY.1) && label(POOL_LABEL) == Some(&label_value(pool))
}

/// The capacity of `pool` on `nodes` with `pods` running: the allocatable
/// cpu, memory and GPUs (under the pool's `gpu_resource`) of the nodes its
/// pods may go to, minus the requests of the pods bound to them that have
/// not ended and are not the pool's own workers. Zero for a pool without a
/// `kubernetes` section.
pub fn auto_capacity(pool: &PoolSpec, nodes: &[Node], pods: &[Pod]) -> Resources {
    let Some(section) = &pool.kubernetes else {
        return Resources::ZERO;
    };
    let gpu = section.gpu_resource.as_str();
    // Checked when the pool was applied; one that does not read tolerates nothing.
    let tolerations: Vec<Toleration> = section
        .tolerations
        .iter()
        .filter_map(|t| serde_json::from_value(serde_json::Value::Object(t.clone())).ok())
        .collect();
    let mut serving = BTreeSet::new();
    let mut total = Resources::ZERO;
    for node in nodes {
        if !serves(node, &section.node_selector, &tolerations) {
            continue;
        }
        if let Some(name) = &node.metadata.name {
            serving.insert(name.as_str());
        }
        let allocatable = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref())
            .map_or(Resources::ZERO, |list| resources_of(list, gpu, f64::floor));
        total = total.saturating_add(&allocatable);
    }
    let taken = pods
        .iter()
        .filter(|p| {
            let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            node.is_some_and(|n| serving.contains(n))
                && !matches!(phase, Some("Succeeded" | "Failed"))
                && !is_worker_of(p, &pool.name)
        })
        .fold(Resources::ZERO, |sum, p| {
            sum.saturating_add(&requests_of(p, gpu))
        });
    total.saturating_sub(&taken)
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    #[test]
    fn quantities_read_as_kubernetes_writes_them() {
        let cases = [
            ("1500m", Some(1.5)),
            ("2", Some(2.0)),
            ("0.5", Some(0.5)),
            ("4Gi", Some(4.0 * 1024.0 * 1024.0 * 1024.0)),
            ("512Mi", Some(512.0 * 1024.0 * 1024.0)),
            ("128974848", Some(128_974_848.0)),
            ("129M", Some(129e6)),
            ("1e3", Some(1000.0)),
            ("1E-3", Some(0.001)),
            ("100k", Some(100_000.0)),
            ("250u", Some(0.00025)),
            ("", None),
            ("Gi", None),
            ("2x", None),
            ("1.2.3", None),
        ];
        for (text, expected) in cases {
            assert_eq!(quantity(text), expected, "{text:?}");
        }
    }

    fn node(name: &str, labels: Value, allocatable: Value, extra: Value) -> Node {
        let mut node = json!({
            "metadata": {"name": name, "labels": labels},
            "spec": {},
            "status": {"allocatable": allocatable, "conditions": [{"type": "Ready", "status": "True"}]},
        });
        merge(&mut node, extra);
        serde_json::from_value(node).expect("a node")
    }

    fn merge(into: &mut Value, extra: Value) {
        match (into, extra) {
            (Value::Object(into), Value::Object(extra)) => {
                for (k, v) in extra {
                    match into.get_mut(&k) {
                        Some(at) if v.is_object() => merge(at, v),
                        _ => {
                            into.insert(k, v);
                        }
                    }
                }
            }
            (into, extra) => *into = extra,
        }
    }

    fn pod(node: &str, labels: Value, requests: Value, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p", "labels": labels},
            "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"requests": requests}}]},
            "status": {"phase": phase},
        }))
        .expect("a pod")
    }

    #[test]
    fn auto_capacity_is_what_the_pools_nodes_have_left_for_it() {
        let pool = PoolSpec::parse(json!({
            "name": "ci_pool", "provider": "kubernetes", "capacity": "auto",
            "kubernetes": {
                "namespace": "ci", "image": "corral:1", "node_selector": {"node-pool": "ci"},
                "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "ci", "effect": "NoSchedule"}],
            },
        }))
        .expect("a pool");
        let ci = json!({"node-pool": "ci"});
        let room = json!({"cpu": "4", "memory": "8Gi", "nvidia.com/gpu": "2"});
        let nodes = [
            node("a", ci.clone(), room.clone(), json!({})),
            node(
                "tainted-tolerated",
                ci.clone(),
                json!({"cpu": "3900m", "memory": "1Gi"}),
                json!({"spec": {"taints": [{"key": "dedicated", "value": "ci", "effect": "NoSchedule"}]}}),
            ),
            node(
                "tainted",
                ci.clone(),
                room.clone(),
                json!({"spec": {"taints": [{"key": "gpu", "effect": "NoExecute"}]}}),
            ),
            node(
                "soft-taint",
                ci.clone(),
                json!({"cpu": "1", "memory": "1Gi"}),
                json!({"spec": {"taints": [{"key": "x", "effect": "PreferNoSchedule"}]}}),
            ),
            node(
                "other-pool",
                json!({"node-pool": "web"}),
                room.clone(),
                json!({}),
            ),
            node(
                "cordoned",
                ci.clone(),
                room.clone(),
                json!({"spec": {"unschedulable": true}}),
            ),
            node(
                "not-ready",
                ci.clone(),
                room.clone(),
                json!({"status": {"conditions": [{"type": "Ready", "status": "False"}]}}),
            ),
        ];
        let ours = json!({"app.kubernetes.io/managed-by": "corral", "corral.dev/pool": label_value("ci_pool")});
        let theirs = json!({"app.kubernetes.io/managed-by": "corral", "corral.dev/pool": "web"});
        let mut with_init = pod("a", json!({}), json!({"cpu": "100m"}), "Running");
        if let Some(spec) = with_init.spec.as_mut() {
            spec.init_containers = serde_json::from_value(
                json!([{"name": "init", "resources": {"requests": {"cpu": "1", "memory": "100Mi"}}}]),
            )
            .expect("init containers");
        }
        let pods = [
            pod(
                "a",
                json!({}),
                json!({"cpu": "500m", "memory": "1Gi", "nvidia.com/gpu": "1"}),
                "Running",
            ),
            pod(
                "a",
                theirs,
                json!({"cpu": "250m", "memory": "256Mi"}),
                "Pending",
            ),
            pod("a", ours, json!({"cpu": "3", "memory": "4Gi"}), "Running"),
            pod(
                "a",
                json!({}),
                json!({"cpu": "2", "memory": "2Gi"}),
                "Succeeded",
            ),
            pod(
                "a",
                json!({}),
                json!({"cpu": "2", "memory": "2Gi"}),
                "Failed",
            ),
            pod("other-pool", json!({}), json!({"cpu": "1"}), "Running"),
            pod(
                "tainted-tolerated",
                json!({}),
                json!({"memory": "1000.5Ki"}),
                "Running",
            ),
            with_init,
        ];
        // Nodes a, tainted-tolerated and soft-taint: 8.9 cores, 10Gi, 2 gpus;
        // less 0.5 + 0.25 + 1 (the init container's) cores, 1Gi + 256Mi +
        // 100Mi + 1Mi (1000.5Ki, rounded up) and 1 gpu.
        assert_eq!(
            auto_capacity(&pool, &nodes, &pods),
            Resources::new(8900 - 500 - 250 - 1000, 10 * 1024 - 1024 - 256 - 100 - 1, 1)
        );
        let crowded = [pod("a", json!({}), json!({"cpu": "64"}), "Running")];
        assert_eq!(
            auto_capacity(&pool, &nodes[..1], &crowded),
            Resources::new(0, 8192, 2),
            "never below zero"
        );
    }
}
