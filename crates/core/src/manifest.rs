//! Reading user documents: YAML (one or many documents) or JSON, each with a
//! `kind`, into typed specs whose errors name the field path.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::FieldError;
use crate::pipeline::PipelineSpec;
use crate::pool::PoolSpec;
use crate::tenant::TenantSpec;

/// One document of a manifest.
#[derive(Debug, Clone, PartialEq)]
pub enum Document {
    Pool(PoolSpec),
    Tenant(TenantSpec),
    Pipeline(PipelineSpec),
}

/// Parses text holding one or more YAML documents (JSON is accepted as YAML)
/// into untyped values. Empty documents are dropped.
pub fn parse_values(text: &str) -> Result<Vec<Value>, FieldError> {
    let values: Vec<Value> = serde_saphyr::from_multiple(text)
        .map_err(|e| FieldError::new("document", format!("not valid YAML or JSON: {e}")))?;
    Ok(values.into_iter().filter(|v| !v.is_null()).collect())
}

/// Deserializes a value into `T`, naming the failing field by its path
/// (prefixed with `prefix` when the value sits inside a larger document).
pub fn from_value<T: DeserializeOwned>(value: Value, prefix: &str) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let path = match (prefix.is_empty(), inner == ".") {
            (true, true) => "document".to_string(),
            (true, false) => inner,
            (false, true) => prefix.to_string(),
            (false, false) => format!("{prefix}.{inner}"),
        };
        FieldError::new(path, e.into_inner().to_string())
    })
}

/// Splits `kind` off a document and returns it with the remaining fields.
fn take_kind(value: Value, index: usize) -> Result<(Option<String>, Value), FieldError> {
    let Value::Object(mut map) = value else {
        return Err(FieldError::new(
            format!("documents[{index}]"),
            "expected a mapping with a kind (Pool, Tenant or Pipeline)",
        ));
    };
    let kind = match map.remove("kind") {
        None => None,
        Some(Value::String(k)) => Some(k),
        Some(other) => {
            return Err(FieldError::new(
                "kind",
                format!("expected a string, found {other}"),
            ));
        }
    };
    Ok((kind, Value::Object(map)))
}

/// Parses one typed document.
pub fn parse_document(value: Value, index: usize) -> Result<Document, FieldError> {
    let (kind, rest) = take_kind(value, index)?;
    let doc = match kind.as_deref() {
        Some("Pool") => Document::Pool(PoolSpec::parse(rest)?),
        Some("Tenant") => Document::Tenant(TenantSpec::parse(rest)?),
        Some("Pipeline") => Document::Pipeline(PipelineSpec::parse(rest)?),
        Some(other) => {
            return Err(FieldError::new(
                "kind",
                format!("unknown kind {other:?} (expected Pool, Tenant or Pipeline)"),
            ));
        }
        None => {
            return Err(FieldError::new(
                "kind",
                "missing (expected Pool, Tenant or Pipeline)",
            ));
        }
    };
    Ok(doc)
}

/// Parses a whole manifest of typed documents.
pub fn parse_documents(text: &str) -> Result<Vec<Document>, FieldError> {
    parse_values(text)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| parse_document(v, i))
        .collect()
}

/// Parses a single spec of a known kind; a `kind` field, if present, must match.
pub fn parse_single(text: &str, expected: &str) -> Result<Value, FieldError> {
    let mut values = parse_values(text)?;
    if values.len() != 1 {
        return Err(FieldError::new(
            "document",
            format!(
                "expected exactly one {expected} document, found {}",
                values.len()
            ),
        ));
    }
    let (kind, rest) = take_kind(values.remove(0), 0)?;
    match kind {
        Some(k) if k != expected => Err(FieldError::new(
            "kind",
            format!("expected {expected}, found {k:?}"),
        )),
        _ => Ok(rest),
    }
}
