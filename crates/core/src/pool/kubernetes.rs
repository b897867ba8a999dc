//! A `kubernetes` pool's section: where its pods go and how they look. Plain
//! data checked for its shape and bounds here; the server's provider checks
//! the parts written as in a pod spec (tolerations, the pod template) against
//! the Kubernetes types.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::FieldError;

/// The longest image reference.
pub const MAX_IMAGE: usize = 1024;
/// The most entries of `node_selector`.
pub const MAX_NODE_SELECTOR: usize = 32;
/// The most tolerations.
pub const MAX_TOLERATIONS: usize = 32;
/// The most image pull secrets.
pub const MAX_PULL_SECRETS: usize = 16;
/// The largest pod template, as compact JSON.
pub const MAX_TEMPLATE_BYTES: usize = 64 * 1024;
/// The deepest nesting of the pod template (the template itself is 1).
pub const MAX_TEMPLATE_DEPTH: usize = 16;

/// The extended resource GPUs are asked under when the pool names none.
pub const DEFAULT_GPU_RESOURCE: &str = "nvidia.com/gpu";

/// The `kubernetes:` section of a pool: the namespace its pods are created
/// in, the image holding `corral`, and what else each pod carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesPool {
    pub namespace: String,
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    /// As in a pod spec; checked against the Kubernetes type by the server.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Map<String, Value>>,
    /// Secret names, written `[name]` or `[{name: name}]` as in a pod spec.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "pull_secrets"
    )]
    pub image_pull_secrets: Vec<String>,
    /// A PodTemplateSpec (`metadata`, `spec`) each pod is merged over.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub pod_template: Map<String, Value>,
    /// The extended resource a worker's GPUs are requested as.
    #[serde(default = "default_gpu_resource")]
    pub gpu_resource: String,
}

fn default_gpu_resource() -> String {
    DEFAULT_GPU_RESOURCE.to_string()
}

impl KubernetesPool {
    /// Every problem of the section, each with its path under `kubernetes.`.
    pub fn problems(&self) -> Vec<FieldError> {
        let mut problems = Vec::new();
        let field = |name: &str| format!("kubernetes.{name}");
        if let Err(why) = dns_label(&self.namespace) {
            problems.push(FieldError::new(
                field("namespace"),
                format!("{:?} is not a namespace name: {why}", self.namespace),
            ));
        }
        if let Err(why) = image(&self.image) {
            problems.push(FieldError::new(field("image"), why));
        }
        if let Some(account) = &self.service_account
            && let Err(why) = dns_subdomain(account)
        {
            problems.push(FieldError::new(
                field("service_account"),
                format!("{account:?} is not a service account name: {why}"),
            ));
        }
        if self.node_selector.len() > MAX_NODE_SELECTOR {
            problems.push(FieldError::new(
                field("node_selector"),
                format!(
                    "{} labels, more than the {MAX_NODE_SELECTOR} allowed",
                    self.node_selector.len()
                ),
            ));
        }
        for (key, value) in self.node_selector.iter().take(MAX_NODE_SELECTOR) {
            let path = format!("kubernetes.node_selector.{}", key.escape_debug());
            if let Err(why) = label_key(key) {
                problems.push(FieldError::new(
                    path.clone(),
                    format!("{key:?} is not a label key: {why}"),
                ));
            }
            if let Err(why) = label_value(value) {
                problems.push(FieldError::new(
                    path,
                    format!("{value:?} is not a label value: {why}"),
                ));
            }
        }
        if self.tolerations.len() > MAX_TOLERATIONS {
            problems.push(FieldError::new(
                field("tolerations"),
                format!(
                    "{} tolerations, more than the {MAX_TOLERATIONS} allowed",
                    self.tolerations.len()
                ),
            ));
        }
        for (i, toleration) in self.tolerations.iter().enumerate() {
            if let Err(why) = bounded(toleration, 4, 4096) {
                problems.push(FieldError::new(format!("kubernetes.tolerations[{i}]"), why));
            }
        }
        if self.image_pull_secrets.len() > MAX_PULL_SECRETS {
            problems.push(FieldError::new(
                field("image_pull_secrets"),
                format!(
                    "{} secrets, more than the {MAX_PULL_SECRETS} allowed",
                    self.image_pull_secrets.len()
                ),
            ));
        }
        for (i, name) in self.image_pull_secrets.iter().enumerate() {
            if let Err(why) = dns_subdomain(name) {
                problems.push(FieldError::new(
                    format!("kubernetes.image_pull_secrets[{i}]"),
                    format!("{name:?} is not a secret name: {why}"),
                ));
            }
        }
        if let Err(why) = bounded(&self.pod_template, MAX_TEMPLATE_DEPTH, MAX_TEMPLATE_BYTES) {
            problems.push(FieldError::new(field("pod_template"), why));
        }
        if let Err(why) = extended_resource(&self.gpu_resource) {
            problems.push(FieldError::new(
                field("gpu_resource"),
                format!("{:?} is not a resource name: {why}", self.gpu_resource),
            ));
        }
        problems
    }
}

/// Reads `[name]` and `[{name: name}]` alike.
fn pull_secrets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    struct Names;
    impl<'de> Visitor<'de> for Names {
        type Value = Vec<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of secret names")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<String>, A::Error> {
            let mut names = Vec::new();
            while let Some(PullSecret(name)) = seq.next_element()? {
                names.push(name);
                if names.len() > MAX_PULL_SECRETS {
                    return Err(de::Error::custom(format!(
                        "more than the {MAX_PULL_SECRETS} secrets allowed"
                    )));
                }
            }
            Ok(names)
        }
    }
    d.deserialize_seq(Names)
}

/// One image pull secret: its name, or `{name: ...}`.
struct PullSecret(String);

impl<'de> Deserialize<'de> for PullSecret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<PullSecret, D::Error> {
        struct Secret;
        impl<'de> Visitor<'de> for Secret {
            type Value = PullSecret;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a secret name or a mapping with its name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PullSecret, E> {
                Ok(PullSecret(v.to_string()))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<PullSecret, A::Error> {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields)]
                struct Reference {
                    name: String,
                }
                let r = Reference::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(PullSecret(r.name))
            }
        }
        d.deserialize_any(Secret)
    }
}

/// Whether `value` nests at most `depth` deep and takes at most `bytes` as
/// compact JSON.
fn bounded(value: &Map<String, Value>, depth: usize, bytes: usize) -> Result<(), String> {
    fn deepest(value: &Value) -> usize {
        match value {
            Value::Object(map) => 1 + map.values().map(deepest).max().unwrap_or(0),
            Value::Array(items) => 1 + items.iter().map(deepest).max().unwrap_or(0),
            _ => 0,
        }
    }
    let nested = 1 + value.values().map(deepest).max().unwrap_or(0);
    if nested > depth {
        return Err(format!(
            "nests {nested} levels deep, more than the {depth} allowed"
        ));
    }
    let size = serde_json::to_vec(value).map_or(usize::MAX, |v| v.len());
    if size > bytes {
        return Err(format!(
            "takes {size} bytes as JSON, more than the {bytes} allowed"
        ));
    }
    Ok(())
}

/// An image reference: not empty, bounded, no spaces or control characters.
fn image(image: &str) -> Result<(), String> {
    if image.is_empty() {
        return Err(
            "is required (an image holding corral, e.g. registry.example/corral:0.4)".into(),
        );
    }
    if image.len() > MAX_IMAGE {
        return Err(format!("is longer than {MAX_IMAGE} characters"));
    }
    if let Some(c) = image.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{c:?} is not allowed in an image reference"));
    }
    Ok(())
}

/// A DNS-1123 label: 1 to 63 lowercase letters, digits and `-`, starting
/// and ending with a letter or digit.
pub fn dns_label(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("it is empty".into());
    }
    if name.len() > 63 {
        return Err("it is longer than 63 characters".into());
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(format!(
            "{c:?} is not allowed (lowercase letters, digits and '-')"
        ));
    }
    if name.starts_with('-') || name.ends_with('-') {
        return Err("it must start and end with a letter or digit".into());
    }
    Ok(())
}

/// A DNS-1123 subdomain: at most 253 characters, DNS-1123 labels joined by dots.
pub fn dns_subdomain(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err("it is longer than 253 characters".into());
    }
    name.split('.').try_for_each(dns_label)
}

/// A label key: an optional DNS subdomain prefix and `/`, then a name of 1
/// to 63 letters, digits, `-`, `_` and `.` starting and ending with a letter
/// or digit.
pub fn label_key(key: &str) -> Result<(), String> {
    let name = match key.split_once('/') {
        Some((prefix, name)) => {
            dns_subdomain(prefix).map_err(|why| format!("its prefix {prefix:?}: {why}"))?;
            name
        }
        None => key,
    };
    if name.is_empty() {
        return Err("its name is empty".into());
    }
    label_value(name)
}

/// A label value: empty, or 1 to 63 letters, digits, `-`, `_` and `.`
/// starting and ending with a letter or digit.
pub fn label_value(value: &str) -> Result<(), String> {
    if value.len() > 63 {
        return Err("it is longer than 63 characters".into());
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{c:?} is not allowed (letters, digits, '-', '_' and '.')"
        ));
    }
    let edge = |c: Option<char>| c.is_none_or(|c| c.is_ascii_alphanumeric());
    if !edge(value.chars().next()) || !edge(value.chars().last()) {
        return Err("it must start and end with a letter or digit".into());
    }
    Ok(())
}

/// An extended resource name: a domain, `/` and a name (`nvidia.com/gpu`),
/// outside the `kubernetes.io` domains.
fn extended_resource(name: &str) -> Result<(), String> {
    let Some((domain, _)) = name.split_once('/') else {
        return Err("an extended resource is a domain and a name, e.g. nvidia.com/gpu".into());
    };
    if domain == "kubernetes.io" || domain.ends_with(".kubernetes.io") {
        return Err("the kubernetes.io domains hold no extended resources".into());
    }
    label_key(name)
}
