//! What a `kubernetes` pool's section must be beyond its shape, checked when
//! the pool is applied: its tolerations read as Kubernetes tolerations and
//! its pod template as a PodTemplateSpec, with no field Kubernetes would
//! drop (a misspelt field is an error, not a silent no-op).

use corral_core::error::FieldError;
use corral_core::pool::PoolSpec;
use k8s_openapi::api::core::v1::{PodTemplateSpec, Toleration};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Every problem of `pool`'s tolerations and pod template, each with its
/// path under `kubernetes.`.
pub fn check(pool: &PoolSpec) -> Vec<FieldError> {
    let Some(section) = &pool.kubernetes else {
        return Vec::new();
    };
    let mut problems = Vec::new();
    for (i, toleration) in section.tolerations.iter().enumerate() {
        problems.extend(typed::<Toleration>(
            &format!("kubernetes.tolerations[{i}]"),
            toleration,
        ));
    }
    problems.extend(typed::<PodTemplateSpec>(
        "kubernetes.pod_template",
        &section.pod_template,
    ));
    problems
}

/// The problems of `value` read as a `T`: the first field that does not
/// read, or else every field that does not survive the round trip (unknown
/// to `T`).
fn typed<T: DeserializeOwned + Serialize>(
    path: &str,
    value: &Map<String, Value>,
) -> Vec<FieldError> {
    let value = Value::Object(value.clone());
    let read: T = match serde_path_to_error::deserialize(&value) {
        Ok(read) => read,
        Err(e) => {
            let at = e.path().to_string();
            let at = if at == "." {
                path.to_string()
            } else {
                format!("{path}.{at}")
            };
            return vec![FieldError::new(at, e.into_inner().to_string())];
        }
    };
    let back = match serde_json::to_value(&read) {
        Ok(back) => back,
        Err(e) => return vec![FieldError::new(path, e.to_string())],
    };
    let mut problems = Vec::new();
    dropped(path, &value, &back, &mut problems);
    problems
}

/// Notes each field of `given` that `kept` does not hold.
fn dropped(path: &str, given: &Value, kept: &Value, problems: &mut Vec<FieldError>) {
    match (given, kept) {
        (Value::Object(given), Value::Object(kept)) => {
            for (k, v) in given {
                let at = format!("{path}.{k}");
                match kept.get(k) {
                    Some(kept) => dropped(&at, v, kept, problems),
                    None if v.is_null() => {}
                    None => problems.push(FieldError::new(at, "unknown field")),
                }
            }
        }
        (Value::Array(given), Value::Array(kept)) => {
            for (i, (v, kept)) in given.iter().zip(kept).enumerate() {
                dropped(&format!("{path}[{i}]"), v, kept, problems);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn problems(section: Value) -> Vec<String> {
        let mut kubernetes = json!({"namespace": "ci", "image": "corral:1"});
        if let (Value::Object(base), Value::Object(extra)) = (&mut kubernetes, section) {
            base.extend(extra);
        }
        let pool = PoolSpec::parse(json!({
            "name": "k", "provider": "kubernetes", "capacity": "auto", "kubernetes": kubernetes,
        }))
        .expect("a pool of the right shape");
        check(&pool).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn tolerations_and_the_pod_template_read_as_kubernetes_types() {
        assert_eq!(
            problems(json!({
                "tolerations": [{"key": "ci", "operator": "Exists", "effect": "NoSchedule", "tolerationSeconds": 30}],
                "pod_template": {
                    "metadata": {"labels": {"team": "ci"}},
                    "spec": {"priorityClassName": "ci", "containers": [{"name": "agent",
                        "securityContext": {"privileged": true}, "resources": {"limits": {"example.com/fpga": "1"}}}]},
                },
            })),
            Vec::<String>::new()
        );
        let cases = [
            (
                json!({"tolerations": [{"key": "a"}, {"key": "b", "tolerationSeconds": "soon"}]}),
                "kubernetes.tolerations[1].tolerationSeconds: invalid type: string \"soon\", expected i64",
            ),
            (
                json!({"tolerations": [{"key": "a", "efect": "NoSchedule"}]}),
                "kubernetes.tolerations[0].efect: unknown field",
            ),
            (
                json!({"pod_template": {"spec": {"containerz": []}}}),
                "kubernetes.pod_template.spec.containerz: unknown field",
            ),
            (
                json!({"pod_template": {"spec": {"containers": [{"name": "agent", "imagePullPolicyy": "Always"}]}}}),
                "kubernetes.pod_template.spec.containers[0].imagePullPolicyy: unknown field",
            ),
            (
                json!({"pod_template": {"spec": {"priority": "high"}}}),
                "kubernetes.pod_template.spec.priority: invalid type: string \"high\", expected i32",
            ),
            (
                json!({"pod_template": {"kind": "Pod"}}),
                "kubernetes.pod_template.kind: unknown field",
            ),
        ];
        for (section, expected) in cases {
            assert_eq!(problems(section.clone()), [expected], "{section}");
        }
    }
}
