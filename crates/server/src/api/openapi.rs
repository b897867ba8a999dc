//! What the OpenAPI document says besides each handler's own annotation: the
//! error answers every operation shares, and the schemas of the documents (Pool,
//! Tenant, Pipeline) that bodies carry as YAML or JSON.

use std::borrow::Cow;

use axum::http::StatusCode;
use corral_core::limits::Limits;
use corral_core::matrix;
use corral_core::pool::MAX_PRICE;
use corral_core::resources::MAX_QUANTITY;
use corral_core::tenant::{MAX_ALERT_AT, MAX_ALERTS, MAX_MONTHLY};
use serde_json::json;
use utoipa::openapi::path::Operation;
use utoipa::openapi::{Content, Header, OpenApi, Ref, RefOr, Response, Schema};
use utoipa::{Modify, PartialSchema, ToSchema};

/// A name of a pool, tenant, token or step: 1 to 63 letters, digits, `-`, `_`
/// or `.`, starting with a letter or digit (`corral_core::error::check_name`).
pub const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$";

/// Adds to every operation the error answers that come from what it takes
/// rather than from what it does: 400 for a bad parameter or body, 401 and 403
/// from the guard unless it is public, 413 and 415 for a body; and gives every
/// answer a description.
pub struct ErrorResponses;

impl Modify for ErrorResponses {
    fn modify(&self, doc: &mut OpenApi) {
        let public = doc.security.is_none();
        for item in doc.paths.paths.values_mut() {
            for operation in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                add_errors(operation, public);
            }
        }
    }
}

fn add_errors(operation: &mut Operation, document_public: bool) {
    let has_params = operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
    let has_body = operation.request_body.is_some();
    // A public operation says so with an empty security requirement.
    let public = match &operation.security {
        Some(requirements) => requirements
            .iter()
            .all(|r| serde_json::to_value(r).is_ok_and(|v| v == json!({}))),
        None => document_public,
    };
    let mut shared = Vec::new();
    if has_params || has_body {
        shared.push((
            StatusCode::BAD_REQUEST,
            "Invalid input: `details.path` names the parameter or field",
        ));
    }
    if !public {
        shared.push((
            StatusCode::UNAUTHORIZED,
            "No valid bearer token (with `WWW-Authenticate: Bearer`)",
        ));
        shared.push((StatusCode::FORBIDDEN, "The token's role may not do this"));
    }
    if has_body {
        shared.push((
            StatusCode::PAYLOAD_TOO_LARGE,
            "The body is larger than the server's limit (1 MiB by default)",
        ));
        shared.push((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "The body is neither `application/json` nor `application/yaml`",
        ));
    }
    let responses = &mut operation.responses.responses;
    for (status, description) in shared {
        let mut response = error_response(description);
        if status == StatusCode::UNAUTHORIZED {
            let mut header = Header::new(String::schema());
            header.description = Some("`Bearer`".into());
            response
                .headers
                .insert("WWW-Authenticate".into(), RefOr::T(header));
        }
        responses
            .entry(status.as_str().to_string())
            .or_insert(RefOr::T(response));
    }
    for (status, response) in responses.iter_mut() {
        if let RefOr::T(response) = response
            && response.description.is_empty()
        {
            response.description = status
                .parse::<u16>()
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .and_then(|s| s.canonical_reason())
                .unwrap_or("Answer")
                .to_string();
        }
    }
}

fn error_response(description: &str) -> Response {
    let mut response = Response::new(description);
    response.content.insert(
        "application/json".into(),
        RefOr::T(Content::new(Some(Ref::from_schema_name("ErrorBody")))),
    );
    response
}

/// Builds a schema from its JSON form.
fn schema(value: serde_json::Value) -> RefOr<Schema> {
    RefOr::T(serde_json::from_value(value).expect("a hand-written schema is valid"))
}

fn name_schema(description: &str) -> serde_json::Value {
    json!({"type": "string", "pattern": NAME_PATTERN, "description": description})
}

/// `cpu`, `memory` and `gpu`, each at least `least` (`gpu` a count; `cpu` and
/// `memory` quantities such as 1.5, 500m, 512Mi or 4Gi).
fn resources_schema(description: &str, least: u64) -> serde_json::Value {
    json!({
        "type": "object",
        "description": description,
        "additionalProperties": false,
        "properties": {
            "cpu": {"type": ["number", "string"]},
            "memory": {"type": "string", "description": "With its unit: Mi, Gi or Ti"},
            "gpu": {"type": "integer", "minimum": least, "maximum": MAX_QUANTITY},
        },
    })
}

/// A tenant's limits: `cpu` and `memory` quantities, counts of `gpu` and
/// `runs`; a field left out is unlimited.
fn quota_schema() -> serde_json::Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "cpu": {"type": ["number", "string"]},
            "memory": {"type": "string", "description": "With its unit: Mi, Gi or Ti"},
            "gpu": {"type": "integer", "minimum": 0, "maximum": u64::MAX},
            "runs": {"type": "integer", "minimum": 0, "maximum": u64::MAX},
        },
    })
}

fn price_schema() -> serde_json::Value {
    let price = json!({"type": "number", "minimum": 0, "maximum": MAX_PRICE});
    json!({
        "type": "object",
        "description": "Money per resource-hour, zero (left out) to 1,000,000",
        "additionalProperties": false,
        "properties": {"cpu_hour": price, "memory_gib_hour": price, "gpu_hour": price},
    })
}

/// A document of a kind: `kind`, if given, must be `kind`.
fn kind_schema(kind: &str, required: bool) -> serde_json::Value {
    let mut schema = json!({"type": "string", "enum": [kind]});
    if !required {
        schema["description"] = json!(format!("`{kind}`; may be left out"));
    }
    schema
}

fn pool_schema(kind_required: bool) -> serde_json::Value {
    let mut required = vec!["name"];
    if kind_required {
        required.push("kind");
    }
    json!({
        "type": "object",
        "description": "A Pool. A `local` pool needs `capacity.cpu` and `capacity.memory` \
            above zero; a `static` pool has no written capacity; a `kubernetes` pool needs \
            its `kubernetes` section and a server with a Kubernetes provider, and its \
            capacity is written or `auto`.",
        "additionalProperties": false,
        "required": required,
        "properties": {
            "kind": kind_schema("Pool", kind_required),
            "name": name_schema("The pool's name"),
            "provider": {"type": "string", "enum": ["local", "static", "kubernetes"]},
            "capacity": {"anyOf": [
                resources_schema("`cpu` (2, 1.5, 500m), `memory` (512Mi, 4Gi), `gpu`", 0),
                {"type": "string", "enum": ["auto"], "description": "Sized from the cluster's nodes (kubernetes pools)"},
            ]},
            "kubernetes": kubernetes_schema(),
            "max_workers": {"type": "integer", "minimum": 1, "maximum": u32::MAX},
            "max_agent": resources_schema("The most one agent may declare: `cpu`, `memory`, `gpu`, each above zero", 1),
            "labels": {
                "type": "object",
                "propertyNames": {"type": "string", "pattern": NAME_PATTERN},
                "additionalProperties": {"type": "string", "pattern": "^[A-Za-z0-9._-]{0,63}$"},
            },
            "price": price_schema(),
            "state": {"type": "string", "enum": ["active", "draining", "disabled"]},
            "require_confinement": {"type": "boolean", "description": "Refuse agents that cannot confine their steps"},
        },
    })
}

/// A `kubernetes` pool's section, with the bounds `corral_core::pool::kubernetes` checks.
fn kubernetes_schema() -> serde_json::Value {
    use corral_core::pool::kubernetes as k;
    let dns_label = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";
    let object = json!({"type": "object"});
    json!({
        "type": "object",
        "description": "Where a kubernetes pool's pods go: its namespace, the image holding corral, \
            and what else each pod carries (tolerations and the pod template as in a pod spec).",
        "additionalProperties": false,
        "required": ["namespace", "image"],
        "properties": {
            "namespace": {"type": "string", "pattern": dns_label},
            "image": {"type": "string", "minLength": 1, "maxLength": k::MAX_IMAGE},
            "service_account": {"type": "string", "maxLength": 253},
            "node_selector": {
                "type": "object",
                "maxProperties": k::MAX_NODE_SELECTOR,
                "additionalProperties": {"type": "string", "maxLength": 63},
            },
            "tolerations": {"type": "array", "maxItems": k::MAX_TOLERATIONS, "items": object},
            "image_pull_secrets": {
                "type": "array",
                "maxItems": k::MAX_PULL_SECRETS,
                "items": {"anyOf": [
                    {"type": "string", "maxLength": 253},
                    {"type": "object", "required": ["name"], "additionalProperties": false,
                     "properties": {"name": {"type": "string", "maxLength": 253}}},
                ]},
            },
            "pod_template": {
                "type": "object",
                "description": "A PodTemplateSpec (`metadata`, `spec`) each pod is merged over",
            },
            "gpu_resource": {"type": "string", "description": "Default nvidia.com/gpu"},
        },
    })
}

fn tenant_schema(kind_required: bool) -> serde_json::Value {
    let mut required = vec!["name"];
    if kind_required {
        required.push("kind");
    }
    json!({
        "type": "object",
        "description": "A Tenant. Quotas are `cpu`, `memory`, `gpu` and `runs`; a field left out is unlimited.",
        "additionalProperties": false,
        "required": required,
        "properties": {
            "kind": kind_schema("Tenant", kind_required),
            "name": name_schema("The tenant's name"),
            "weight": {"type": "integer", "minimum": 1, "maximum": u32::MAX},
            "quota": quota_schema(),
            "allowed_pools": {
                "type": ["array", "null"],
                "items": {"type": "string", "pattern": NAME_PATTERN},
            },
            "pool_limits": {
                "type": "object",
                "propertyNames": {"type": "string", "pattern": NAME_PATTERN},
                "additionalProperties": quota_schema(),
            },
            "budget": {
                "type": ["object", "null"],
                "description": "Money per UTC calendar month; `hard` holds back runs that would pass it, `soft` only alerts. Each `alert_at` fraction alerts once a month.",
                "additionalProperties": false,
                "required": ["monthly"],
                "properties": {
                    "monthly": {
                        "type": "number",
                        "description": "Rounded to the micro-unit, which must not be zero",
                        "minimum": 0.000_000_5,
                        "maximum": MAX_MONTHLY.to_units_f64(),
                    },
                    "enforce": {"type": "string", "enum": ["soft", "hard"]},
                    "alert_at": {
                        "type": "array",
                        "maxItems": MAX_ALERTS,
                        "uniqueItems": true,
                        "items": {"type": "number", "exclusiveMinimum": 0, "maximum": MAX_ALERT_AT},
                    },
                },
            },
        },
    })
}

/// A Pool document, as the body of a pool's creation or replacement.
pub struct PoolDocument;

impl PartialSchema for PoolDocument {
    fn schema() -> RefOr<Schema> {
        schema(pool_schema(false))
    }
}

impl ToSchema for PoolDocument {
    fn name() -> Cow<'static, str> {
        "PoolDocument".into()
    }
}

/// A Tenant document, as the body of a tenant's creation or replacement.
pub struct TenantDocument;

impl PartialSchema for TenantDocument {
    fn schema() -> RefOr<Schema> {
        schema(tenant_schema(false))
    }
}

impl ToSchema for TenantDocument {
    fn name() -> Cow<'static, str> {
        "TenantDocument".into()
    }
}

/// A Pipeline document, the body of a submission.
pub struct PipelineDocument;

impl PartialSchema for PipelineDocument {
    fn schema() -> RefOr<Schema> {
        schema(json!({
            "type": "object",
            "description": "A Pipeline. Its steps form a DAG by `needs`; its `tenant` \
                (`default` when left out) and the pools its steps name must exist.",
            "additionalProperties": false,
            "required": ["name", "steps"],
            "properties": {
                "kind": kind_schema("Pipeline", false),
                "name": name_schema("The pipeline's name"),
                "tenant": name_schema("The tenant; `default` when left out"),
                "priority": {
                    "description": "A priority class (`low`, `normal`, `high` by default) or a number",
                    "type": ["integer", "string"],
                    "minimum": i32::MIN,
                    "maximum": i32::MAX,
                },
                "steps": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": false,
                        "required": ["name", "run"],
                        "properties": {
                            "name": name_schema("The step's name"),
                            "run": {"type": "string", "description": "Run with `sh -c`"},
                            "needs": {"type": "array", "items": {"type": "string", "pattern": NAME_PATTERN}},
                            "resources": {"type": "object", "description": "`cpu`, `memory`, `gpu`"},
                            "pool": {
                                "type": ["string", "object", "null"],
                                "description": "A pool's name, or `{labels, placement}`",
                            },
                            "env": {"type": "object", "additionalProperties": {"type": "string"}},
                            "timeout": {
                                "type": ["integer", "string"],
                                "minimum": 0,
                                "description": "Seconds, or a duration such as 90s, 10m, 1h30m",
                            },
                            "retries": {"type": "integer", "minimum": 0, "maximum": u32::MAX},
                        },
                    },
                },
                "matrix": {
                    "type": "object",
                    "description": "Axes of values: one run per combination (at most 10,000 by default), each step seeing its values as `CORRAL_MATRIX_<AXIS>`",
                    "maxProperties": Limits::default().max_matrix_axes,
                    "propertyNames": {"type": "string", "pattern": format!("^[A-Za-z][A-Za-z0-9_]{{0,{}}}$", matrix::MAX_AXIS_NAME - 1)},
                    "additionalProperties": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": Limits::default().max_runs_per_submit,
                        "uniqueItems": true,
                        "items": {"type": ["string", "integer", "boolean"], "maxLength": matrix::MAX_VALUE_BYTES},
                    },
                },
            },
        }))
    }
}

impl ToSchema for PipelineDocument {
    fn name() -> Cow<'static, str> {
        "PipelineDocument".into()
    }
}

/// One document of a manifest: a Pool or a Tenant, with its `kind`. In YAML a
/// manifest holds several, separated by `---`.
pub struct ManifestDocument;

impl PartialSchema for ManifestDocument {
    /// One of the two, told apart by `kind` (which each requires); the body's
    /// own `oneOf` (null: an empty manifest, which applies nothing) stays
    /// unambiguous, since either is an object.
    fn schema() -> RefOr<Schema> {
        schema(json!({
            "description": "A Pool or a Tenant document, with its `kind` (see PoolDocument and TenantDocument)",
            "oneOf": [pool_schema(true), tenant_schema(true)],
        }))
    }
}

impl ToSchema for ManifestDocument {
    fn name() -> Cow<'static, str> {
        "ManifestDocument".into()
    }
}

/// The body of a token's creation: its role decides which of `tenant` and
/// `pool` it takes (`corral_core::access::Role::parse`).
pub struct TokenRequest;

impl PartialSchema for TokenRequest {
    /// One object schema per kind of role, whole (a `oneOf` beside an
    /// object's own properties is not kept by the schema model).
    fn schema() -> RefOr<Schema> {
        let name = json!({"type": "string", "pattern": NAME_PATTERN});
        let absent = json!({"type": "null"});
        let token = |roles: &[&str],
                     description: &str,
                     tenant: &serde_json::Value,
                     pool: &serde_json::Value| {
            let mut required = vec!["name", "role"];
            if tenant == &name {
                required.push("tenant");
            }
            if pool == &name {
                required.push("pool");
            }
            json!({
                "type": "object",
                "description": description,
                "additionalProperties": false,
                "required": required,
                "properties": {
                    "name": name_schema("The token's name"),
                    "role": {"type": "string", "enum": roles},
                    "tenant": tenant,
                    "pool": pool,
                    "expires": {
                        "type": ["string", "null"],
                        "description": "How long the token lives, 1s to 3660d, e.g. `30d` or `12h`; forever when left out",
                    },
                },
            })
        };
        schema(json!({
            "description": "A token to create. The secret is in the answer, once.",
            "oneOf": [
                token(&["admin", "viewer"], "An admin or viewer token", &absent, &absent),
                token(&["tenant"], "A token bound to a tenant", &name, &absent),
                token(&["agent"], "An agent token, bound to a static pool", &absent, &name),
            ],
        }))
    }
}

impl ToSchema for TokenRequest {
    fn name() -> Cow<'static, str> {
        "TokenCreate".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_declares_the_errors_it_shares() {
        let doc = super::super::routes::openapi_document();
        let mut seen = 0;
        for (path, item) in &doc.paths.paths {
            for (method, operation) in [
                ("get", &item.get),
                ("put", &item.put),
                ("post", &item.post),
                ("delete", &item.delete),
            ] {
                let Some(operation) = operation else { continue };
                seen += 1;
                let statuses: Vec<&str> = operation
                    .responses
                    .responses
                    .keys()
                    .map(String::as_str)
                    .collect();
                let public = path == "/healthz";
                for status in ["401", "403"] {
                    assert_eq!(
                        statuses.contains(&status),
                        !public,
                        "{method} {path}: {statuses:?}"
                    );
                }
                let has_body = operation.request_body.is_some();
                for status in ["413", "415"] {
                    assert_eq!(
                        statuses.contains(&status),
                        has_body,
                        "{method} {path}: {statuses:?}"
                    );
                }
                if has_body || operation.parameters.is_some() {
                    assert!(statuses.contains(&"400"), "{method} {path}: {statuses:?}");
                }
                for response in operation.responses.responses.values() {
                    let RefOr::T(response) = response else {
                        panic!("{method} {path}: a response by reference")
                    };
                    assert!(!response.description.is_empty(), "{method} {path}");
                }
            }
        }
        assert_eq!(seen, super::super::routes::route_table().len() - 1);
    }

    #[test]
    fn names_in_paths_follow_the_name_rule() {
        use utoipa::openapi::path::ParameterIn;
        let doc = super::super::routes::openapi_document();
        let mut names = 0;
        for (path, item) in &doc.paths.paths {
            for operation in [&item.get, &item.put, &item.post, &item.delete]
                .into_iter()
                .flatten()
            {
                for parameter in operation.parameters.iter().flatten() {
                    let RefOr::T(parameter) = parameter else {
                        panic!("{path}: a parameter by reference")
                    };
                    if parameter.name != "name" || parameter.parameter_in != ParameterIn::Path {
                        continue;
                    }
                    names += 1;
                    let Some(RefOr::T(Schema::Object(schema))) = &parameter.schema else {
                        panic!("{path}: name has no schema")
                    };
                    assert_eq!(schema.pattern.as_deref(), Some(NAME_PATTERN), "{path}");
                }
            }
        }
        assert_eq!(
            names, 9,
            "pools and tenants: get, put, delete; tokens: delete; a tenant's summary; a pipeline's recommendation"
        );
    }

    #[test]
    fn the_smallest_budget_is_the_smallest_that_does_not_round_to_zero() {
        use corral_core::money::Money;
        let tenant = tenant_schema(false);
        let least = tenant["properties"]["budget"]["properties"]["monthly"]["minimum"]
            .as_f64()
            .expect("budget.monthly has a minimum");
        assert!(Money::from_units(least).expect("in range") > Money::ZERO);
        let below = f64::from_bits(least.to_bits() - 1);
        assert_eq!(Money::from_units(below).expect("in range"), Money::ZERO);
    }

    #[test]
    fn document_bodies_are_json_or_yaml() {
        let doc = super::super::routes::openapi_document();
        let submit = doc.paths.paths["/api/v1/runs"]
            .post
            .as_ref()
            .expect("submit");
        let Some(RefOr::T(body)) = &submit.request_body else {
            panic!("submit takes a body")
        };
        let types: Vec<&str> = body.content.keys().map(String::as_str).collect();
        assert_eq!(types, ["application/json", "application/yaml"]);
    }
}
