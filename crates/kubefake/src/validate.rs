//! What the API server refuses: a body that is not a valid object of its kind (every
//! field must survive a round trip through the k8s-openapi type, so an unknown or
//! misspelt field is named), names that are not DNS-1123, labels that are not label
//! keys and values, and the pod and secret rules corral could break.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Container, Pod, Secret};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::quantity::parse_milli;

/// The most data a secret holds, as the API server bounds it.
const MAX_SECRET_BYTES: usize = 1024 * 1024;

/// One problem with a field of a submitted object, as a `Status` cause.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cause {
    /// The field's path, `spec.containers[0].image`.
    pub field: String,
    /// The problem, in the API server's words.
    pub message: String,
    /// The cause's reason: `FieldValueRequired`, `FieldValueInvalid`...
    pub reason: &'static str,
}

impl Cause {
    fn required(field: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: "Required value".to_owned(),
            reason: "FieldValueRequired",
        }
    }

    fn invalid(field: impl Into<String>, value: &str, problem: impl std::fmt::Display) -> Self {
        Self {
            field: field.into(),
            message: format!("Invalid value: {value:?}: {problem}"),
            reason: "FieldValueInvalid",
        }
    }

    fn unknown(field: String, key: &str) -> Self {
        Self {
            message: format!("unknown field {key:?}"),
            field,
            reason: "FieldValueUnknown",
        }
    }
}

/// Reads a body as a `T`, refusing it when a field does not survive the round trip
/// (deserialized, serialized back, compared with what was sent, nulls and empty
/// collections aside).
pub(crate) fn typed<T: DeserializeOwned + Serialize>(body: &Value) -> Result<T, Vec<Cause>> {
    let value: T = serde_path_to_error::deserialize(body).map_err(|error| {
        let field = error.path().to_string();
        vec![Cause {
            message: error.inner().to_string(),
            field,
            reason: "FieldValueInvalid",
        }]
    })?;
    let back = serde_json::to_value(&value).map_err(|error| {
        vec![Cause {
            field: String::new(),
            message: format!("cannot be serialized back: {error}"),
            reason: "FieldValueInvalid",
        }]
    })?;
    let mut causes = Vec::new();
    compare(body, &back, "", &mut causes);
    if causes.is_empty() {
        Ok(value)
    } else {
        Err(causes)
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::Object(map) => map.is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn compare(sent: &Value, back: &Value, path: &str, causes: &mut Vec<Cause>) {
    match (sent, back) {
        (Value::Object(sent), Value::Object(back)) => {
            for (key, value) in sent {
                let field = join(path, key);
                match back.get(key) {
                    Some(typed) => compare(value, typed, &field, causes),
                    None if is_empty(value) => {}
                    None => causes.push(Cause::unknown(field, key)),
                }
            }
        }
        (Value::Array(sent), Value::Array(back)) if sent.len() == back.len() => {
            for (at, (value, typed)) in sent.iter().zip(back).enumerate() {
                compare(value, typed, &format!("{path}[{at}]"), causes);
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (sent, _) if is_empty(sent) => {}
        (sent, back) if sent == back => {}
        (sent, back) => causes.push(Cause {
            field: path.to_owned(),
            message: format!("Invalid value: {sent}: read as {back}"),
            reason: "FieldValueInvalid",
        }),
    }
}

/// Why a name is not a DNS-1123 subdomain, if it is not.
pub(crate) fn subdomain_problem(name: &str) -> Option<String> {
    if name.len() > 253 {
        return Some("must be no more than 253 characters".to_owned());
    }
    if name.is_empty() || name.split('.').any(|label| label_problem(label).is_some()) {
        return Some(
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".to_owned(),
        );
    }
    None
}

/// Why a name is not a DNS-1123 label, if it is not.
pub(crate) fn label_problem(name: &str) -> Option<String> {
    let bytes = name.as_bytes();
    let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if name.len() > 63 {
        return Some("must be no more than 63 characters".to_owned());
    }
    let valid = !bytes.is_empty()
        && bytes.first().is_some_and(alnum)
        && bytes.last().is_some_and(alnum)
        && bytes.iter().all(|b| alnum(b) || *b == b'-');
    (!valid).then(|| {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character".to_owned()
    })
}

fn qualified_name_ok(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && name.len() <= 63
        && bytes.first().is_some_and(u8::is_ascii_alphanumeric)
        && bytes.last().is_some_and(u8::is_ascii_alphanumeric)
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Why a label key (`[prefix/]name`) is not valid, if it is not.
pub(crate) fn label_key_problem(key: &str) -> Option<String> {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(problem) = prefix.and_then(subdomain_problem) {
        return Some(format!("prefix part {problem}"));
    }
    (!qualified_name_ok(name)).then(|| {
        "name part must consist of alphanumeric characters, '-', '_' or '.', must start and end with an alphanumeric character, and be at most 63 characters".to_owned()
    })
}

/// Why a label value is not valid, if it is not.
pub(crate) fn label_value_problem(value: &str) -> Option<String> {
    (!value.is_empty() && !qualified_name_ok(value)).then(|| {
        "a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', must start and end with an alphanumeric character, and be at most 63 characters".to_owned()
    })
}

fn check_labels(field: &str, labels: Option<&BTreeMap<String, String>>, causes: &mut Vec<Cause>) {
    for (key, value) in labels.into_iter().flatten() {
        if let Some(problem) = label_key_problem(key) {
            causes.push(Cause::invalid(field, key, problem));
        }
        if let Some(problem) = label_value_problem(value) {
            causes.push(Cause::invalid(format!("{field}[{key}]"), value, problem));
        }
    }
}

/// The metadata checks every kind shares: the name (or `generateName`), its labels and
/// annotations' keys.
fn check_metadata(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    causes: &mut Vec<Cause>,
) {
    match (&meta.name, &meta.generate_name) {
        (Some(name), _) => {
            if let Some(problem) = subdomain_problem(name) {
                causes.push(Cause::invalid("metadata.name", name, problem));
            }
        }
        (None, Some(prefix)) => {
            if prefix.len() > 247
                || !prefix.is_empty() && subdomain_problem(&format!("{prefix}x")).is_some()
            {
                causes.push(Cause::invalid(
                    "metadata.generateName",
                    prefix,
                    "not a DNS-1123 subdomain prefix",
                ));
            }
        }
        (None, None) => causes.push(Cause::required("metadata.name")),
    }
    check_labels("metadata.labels", meta.labels.as_ref(), causes);
    for key in meta.annotations.iter().flatten().map(|(key, _)| key) {
        if let Some(problem) = label_key_problem(key) {
            causes.push(Cause::invalid("metadata.annotations", key, problem));
        }
    }
}

fn check_env_name(field: &str, name: &str, causes: &mut Vec<Cause>) {
    let ok = !name.is_empty()
        && name.len() <= 256
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !ok {
        causes.push(Cause::invalid(field, name, "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit"));
    }
}

/// The field paths a `fieldRef` may name in the fake.
pub(crate) const FIELD_REFS: [&str; 6] = [
    "metadata.name",
    "metadata.namespace",
    "metadata.uid",
    "spec.nodeName",
    "spec.serviceAccountName",
    "status.podIP",
];

fn check_container(
    field: &str,
    container: &Container,
    volumes: &BTreeSet<&str>,
    causes: &mut Vec<Cause>,
) {
    if container.name.is_empty() {
        causes.push(Cause::required(format!("{field}.name")));
    } else if let Some(problem) = label_problem(&container.name) {
        causes.push(Cause::invalid(
            format!("{field}.name"),
            &container.name,
            problem,
        ));
    }
    if container
        .image
        .as_deref()
        .is_none_or(|image| image.trim().is_empty())
    {
        causes.push(Cause::required(format!("{field}.image")));
    }
    let resources = container.resources.as_ref();
    let requests = resources.and_then(|r| r.requests.as_ref());
    let limits = resources.and_then(|r| r.limits.as_ref());
    for (kind, map) in [("requests", requests), ("limits", limits)] {
        for (resource, quantity) in map.into_iter().flatten() {
            let at = format!("{field}.resources.{kind}[{resource}]");
            if !matches!(resource.as_str(), "cpu" | "memory" | "ephemeral-storage")
                && (!resource.contains('/') || label_key_problem(resource).is_some())
            {
                causes.push(Cause::invalid(
                    &at,
                    resource,
                    "must be a standard resource type or fully qualified",
                ));
            }
            match parse_milli(&quantity.0) {
                None => causes.push(Cause::invalid(&at, &quantity.0, "quantities must match the regular expression '^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$'")),
                Some(milli) if milli < 0 => causes.push(Cause::invalid(&at, &quantity.0, "must be greater than or equal to 0")),
                Some(_) => {}
            }
        }
    }
    for (resource, request) in requests.into_iter().flatten() {
        let limit = limits
            .and_then(|l| l.get(resource))
            .and_then(|q| parse_milli(&q.0));
        if let (Some(limit), Some(asked)) = (limit, parse_milli(&request.0))
            && asked > limit
        {
            causes.push(Cause::invalid(
                format!("{field}.resources.requests"),
                &request.0,
                format!("must be less than or equal to {resource} limit"),
            ));
        }
    }
    for (at, env) in container.env.iter().flatten().enumerate() {
        let env_field = format!("{field}.env[{at}]");
        check_env_name(&format!("{env_field}.name"), &env.name, causes);
        if let Some(source) = &env.value_from {
            let sources = [
                source.field_ref.is_some(),
                source.secret_key_ref.is_some(),
                source.config_map_key_ref.is_some(),
                source.resource_field_ref.is_some(),
                source.file_key_ref.is_some(),
            ];
            if sources.iter().filter(|s| **s).count() != 1 || env.value.is_some() {
                causes.push(Cause::invalid(
                    format!("{env_field}.valueFrom"),
                    "",
                    "may not have more than one field specified at a time",
                ));
            }
            if let Some(reference) = &source.field_ref
                && !FIELD_REFS.contains(&reference.field_path.as_str())
            {
                causes.push(Cause {
                    field: format!("{env_field}.valueFrom.fieldRef.fieldPath"),
                    message: format!(
                        "Unsupported value: {:?}: supported values: {}",
                        reference.field_path,
                        FIELD_REFS.join(", ")
                    ),
                    reason: "FieldValueNotSupported",
                });
            }
            if let Some(reference) = &source.secret_key_ref {
                if reference.name.is_empty() {
                    causes.push(Cause::required(format!(
                        "{env_field}.valueFrom.secretKeyRef.name"
                    )));
                }
                if reference.key.is_empty() {
                    causes.push(Cause::required(format!(
                        "{env_field}.valueFrom.secretKeyRef.key"
                    )));
                }
            }
        }
    }
    let mut paths = BTreeSet::new();
    for (at, mount) in container.volume_mounts.iter().flatten().enumerate() {
        let mount_field = format!("{field}.volumeMounts[{at}]");
        if !volumes.contains(mount.name.as_str()) {
            causes.push(Cause {
                field: format!("{mount_field}.name"),
                message: format!("Not found: {:?}", mount.name),
                reason: "FieldValueNotFound",
            });
        }
        if mount.mount_path.is_empty() {
            causes.push(Cause::required(format!("{mount_field}.mountPath")));
        } else if !mount.mount_path.starts_with('/')
            || mount.mount_path.split('/').any(|part| part == "..")
        {
            causes.push(Cause::invalid(
                format!("{mount_field}.mountPath"),
                &mount.mount_path,
                "must be an absolute path without '..'",
            ));
        } else if !paths.insert(mount.mount_path.trim_end_matches('/')) {
            causes.push(Cause::invalid(
                format!("{mount_field}.mountPath"),
                &mount.mount_path,
                "must be unique",
            ));
        }
        if let Some(sub) = &mount.sub_path
            && (sub.starts_with('/') || sub.split('/').any(|part| part == ".."))
        {
            causes.push(Cause::invalid(
                format!("{mount_field}.subPath"),
                sub,
                "must be a relative path without '..'",
            ));
        }
    }
}

/// Checks a pod as the API server would before storing it.
pub(crate) fn check_pod(pod: &Pod) -> Vec<Cause> {
    let mut causes = Vec::new();
    check_metadata(&pod.metadata, &mut causes);
    let Some(spec) = &pod.spec else {
        causes.push(Cause::required("spec"));
        return causes;
    };
    let mut volumes = BTreeSet::new();
    for (at, volume) in spec.volumes.iter().flatten().enumerate() {
        let field = format!("spec.volumes[{at}]");
        if let Some(problem) = label_problem(&volume.name) {
            causes.push(Cause::invalid(
                format!("{field}.name"),
                &volume.name,
                problem,
            ));
        } else if !volumes.insert(volume.name.as_str()) {
            causes.push(Cause {
                field: format!("{field}.name"),
                message: format!("Duplicate value: {:?}", volume.name),
                reason: "FieldValueDuplicate",
            });
        }
        if let Some(secret) = &volume.secret {
            match &secret.secret_name {
                None => causes.push(Cause::required(format!("{field}.secret.secretName"))),
                Some(name) => {
                    if let Some(problem) = subdomain_problem(name) {
                        causes.push(Cause::invalid(
                            format!("{field}.secret.secretName"),
                            name,
                            problem,
                        ));
                    }
                }
            }
            if secret
                .default_mode
                .is_some_and(|mode| !(0..=0o777).contains(&mode))
            {
                causes.push(Cause::invalid(
                    format!("{field}.secret.defaultMode"),
                    "",
                    "must be a number between 0 and 0777 (octal)",
                ));
            }
            for (item_at, item) in secret.items.iter().flatten().enumerate() {
                let item_field = format!("{field}.secret.items[{item_at}]");
                if item.key.is_empty() {
                    causes.push(Cause::required(format!("{item_field}.key")));
                }
                if item.path.is_empty()
                    || item.path.starts_with('/')
                    || item.path.split('/').any(|part| part == "..")
                {
                    causes.push(Cause::invalid(
                        format!("{item_field}.path"),
                        &item.path,
                        "must be a relative path without '..'",
                    ));
                }
                if item.mode.is_some_and(|mode| !(0..=0o777).contains(&mode)) {
                    causes.push(Cause::invalid(
                        format!("{item_field}.mode"),
                        "",
                        "must be a number between 0 and 0777 (octal)",
                    ));
                }
            }
        }
        if let Some(limit) = volume
            .empty_dir
            .as_ref()
            .and_then(|dir| dir.size_limit.as_ref())
            && parse_milli(&limit.0).is_none()
        {
            causes.push(Cause::invalid(
                format!("{field}.emptyDir.sizeLimit"),
                &limit.0,
                "not a quantity",
            ));
        }
    }
    if spec.containers.is_empty() {
        causes.push(Cause::required("spec.containers"));
    }
    let mut names = BTreeSet::new();
    for (at, container) in spec.containers.iter().enumerate() {
        check_container(
            &format!("spec.containers[{at}]"),
            container,
            &volumes,
            &mut causes,
        );
        if !container.name.is_empty() && !names.insert(container.name.as_str()) {
            causes.push(Cause {
                field: format!("spec.containers[{at}].name"),
                message: format!("Duplicate value: {:?}", container.name),
                reason: "FieldValueDuplicate",
            });
        }
    }
    if spec
        .init_containers
        .as_ref()
        .is_some_and(|init| !init.is_empty())
    {
        causes.push(Cause {
            field: "spec.initContainers".to_owned(),
            message: "Forbidden: the fake kubelet does not run init containers".to_owned(),
            reason: "FieldValueForbidden",
        });
    }
    if let Some(policy) = &spec.restart_policy
        && !matches!(policy.as_str(), "Always" | "OnFailure" | "Never")
    {
        causes.push(Cause {
            field: "spec.restartPolicy".to_owned(),
            message: format!("Unsupported value: {policy:?}: supported values: \"Always\", \"OnFailure\", \"Never\""),
            reason: "FieldValueNotSupported",
        });
    }
    check_labels(
        "spec.nodeSelector",
        spec.node_selector.as_ref(),
        &mut causes,
    );
    if let Some(account) = &spec.service_account_name
        && let Some(problem) = subdomain_problem(account)
    {
        causes.push(Cause::invalid("spec.serviceAccountName", account, problem));
    }
    causes
}

/// Checks a secret as the API server would before storing it.
pub(crate) fn check_secret(secret: &Secret) -> Vec<Cause> {
    let mut causes = Vec::new();
    check_metadata(&secret.metadata, &mut causes);
    let mut total = 0;
    let keys = secret
        .data
        .iter()
        .flatten()
        .map(|(key, value)| (key, value.0.len()))
        .chain(
            secret
                .string_data
                .iter()
                .flatten()
                .map(|(key, value)| (key, value.len())),
        );
    for (key, size) in keys {
        total += size;
        let ok = !key.is_empty()
            && key.len() <= 253
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !ok {
            causes.push(Cause::invalid(
                format!("data[{key}]"),
                key,
                "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
            ));
        }
    }
    if total > MAX_SECRET_BYTES {
        causes.push(Cause {
            field: "data".to_owned(),
            message: format!("Too long: must have at most {MAX_SECRET_BYTES} bytes"),
            reason: "FieldValueTooLong",
        });
    }
    causes
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    use super::{check_pod, label_key_problem, subdomain_problem, typed};

    #[test]
    fn a_misspelt_field_is_named() {
        let body = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "labels": {}},
            "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicy": "Never", "comand": ["x"]}]}
        });
        let causes = typed::<Pod>(&body).expect_err("comand is no field");
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(causes[0].field, "spec.containers[0].comand");
    }

    #[test]
    fn a_mistyped_field_is_named() {
        let body =
            json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": 3}]}});
        let causes = typed::<Pod>(&body).expect_err("an image is a string");
        assert_eq!(causes[0].field, "spec.containers[0].image");
    }

    #[test]
    fn pod_rules_are_checked() {
        let body = json!({
            "metadata": {"name": "Bad_Name", "labels": {"ok": "-no"}},
            "spec": {
                "containers": [{"name": "c", "resources": {"requests": {"cpu": "2x"}}}],
                "volumes": [{"name": "v", "secret": {}}]
            }
        });
        let pod: Pod = typed(&body).expect("well-formed");
        let fields: Vec<String> = check_pod(&pod).into_iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            [
                "metadata.name",
                "metadata.labels[ok]",
                "spec.volumes[0].secret.secretName",
                "spec.containers[0].image",
                "spec.containers[0].resources.requests[cpu]",
            ]
        );
    }

    #[test]
    fn a_pod_needs_containers_with_names_and_images() {
        let empty: Pod = typed(&json!({"metadata": {"name": "p"}, "spec": {"containers": []}}))
            .expect("well-formed");
        let fields: Vec<String> = check_pod(&empty).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["spec.containers"]);
        let unnamed: Pod =
            typed(&json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": ""}]}}))
                .expect("well-formed");
        let fields: Vec<String> = check_pod(&unnamed).into_iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            ["spec.containers[0].name", "spec.containers[0].image"]
        );
        let no_spec: Pod = typed(&json!({"metadata": {"name": "p"}})).expect("well-formed");
        let fields: Vec<String> = check_pod(&no_spec).into_iter().map(|c| c.field).collect();
        assert_eq!(fields, ["spec"]);
    }

    #[test]
    fn names_and_keys() {
        assert!(subdomain_problem("corral-42-1.a").is_none());
        assert!(subdomain_problem("Corral").is_some());
        assert!(subdomain_problem("-a").is_some());
        assert!(label_key_problem("corral.dev/run").is_none());
        assert!(label_key_problem("Corral.dev/run").is_some());
        assert!(label_key_problem("a/").is_some());
    }
}
