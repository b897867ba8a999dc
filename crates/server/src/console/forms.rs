//! Forms as documents: a form's fields are named by their path in the
//! document (`capacity.memory`), so a form becomes the JSON document the API
//! takes, is validated by the same code, and an error's path names the field
//! it is shown next to.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// How a list of names that is empty is written in its field (no name
/// starts with it).
pub const NONE: &str = "-";

/// A form as posted: each field once (the last wins), `csrf` left out.
pub fn fields(body: &[u8]) -> BTreeMap<String, String> {
    form_urlencoded::parse(body)
        .filter(|(k, _)| k != "csrf")
        .map(|(k, v)| (k.into_owned(), v.trim().to_string()))
        .collect()
}

/// How a field's text goes into the document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// As text (quantities such as `500m` or `16Gi`, names, states).
    Text,
    /// As a number when it reads as one; else as text, which the document's
    /// validation then refuses with the field's path.
    Number,
    /// `key=value` pairs separated by commas, as an object.
    Pairs,
    /// Numbers separated by commas, as a list.
    Numbers,
    /// Names separated by commas, as a list; `-` for an empty list.
    Names,
    /// One line per name, `name: key=value, key=value`, as an object of
    /// objects (numbers as numbers).
    Table,
    /// `true` or `false`, as a boolean; anything else as text, which the
    /// document's validation refuses with the field's path.
    Bool,
}

fn number(text: &str) -> Value {
    match text.parse::<u64>() {
        Ok(n) => Value::from(n),
        Err(_) => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or_else(|| Value::String(text.to_string()), Value::Number),
    }
}

/// The document the fields make: `paths` lists each field and its kind; empty
/// fields are left out, as in a document that does not set them.
pub fn document(
    fields: &BTreeMap<String, String>,
    paths: &[(&str, Kind)],
) -> Result<Value, (String, String)> {
    merge(Value::Object(Map::new()), fields, paths)
}

/// `base` with the fields' values: a field left empty takes its path out.
pub fn merge(
    base: Value,
    fields: &BTreeMap<String, String>,
    paths: &[(&str, Kind)],
) -> Result<Value, (String, String)> {
    let Value::Object(mut doc) = base else {
        return Ok(base);
    };
    for (path, kind) in paths {
        let Some(text) = fields.get(*path).filter(|t| !t.is_empty()) else {
            remove(&mut doc, path);
            continue;
        };
        let value = match kind {
            Kind::Text => Value::String(text.clone()),
            Kind::Number => number(text),
            Kind::Bool => match text.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                _ => Value::String(text.clone()),
            },
            Kind::Numbers => Value::Array(
                text.split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(number)
                    .collect(),
            ),
            Kind::Names if text == NONE => Value::Array(Vec::new()),
            Kind::Names => {
                let names: Vec<Value> = text
                    .split(',')
                    .map(str::trim)
                    .filter(|t| !t.is_empty())
                    .map(|t| Value::String(t.to_string()))
                    .collect();
                if names.is_empty() {
                    return Err((
                        path.to_string(),
                        format!("name at least one, separated by commas, or write {NONE} for none"),
                    ));
                }
                Value::Array(names)
            }
            Kind::Pairs => pairs(path, text, |v| Value::String(v.to_string()))?,
            Kind::Table => {
                let mut rows = Map::new();
                for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                    let Some((name, rest)) = line.split_once(':') else {
                        return Err((
                            path.to_string(),
                            format!("{line:?} is not `name: key=value, key=value`"),
                        ));
                    };
                    rows.insert(name.trim().to_string(), pairs(path, rest, number)?);
                }
                Value::Object(rows)
            }
        };
        let mut at = &mut doc;
        let mut parts = path.split('.').peekable();
        while let Some(part) = parts.next() {
            if parts.peek().is_none() {
                at.insert(part.to_string(), value);
                break;
            }
            let entry = at
                .entry(part.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(next) = entry else {
                break;
            };
            at = next;
        }
    }
    Ok(Value::Object(doc))
}

/// `key=value` pairs separated by commas, as an object of `value`s.
fn pairs(path: &str, text: &str, value: fn(&str) -> Value) -> Result<Value, (String, String)> {
    let mut pairs = Map::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err((
                path.to_string(),
                format!("{pair:?} is not key=value (pairs are separated by commas)"),
            ));
        };
        pairs.insert(k.trim().to_string(), value(v.trim()));
    }
    Ok(Value::Object(pairs))
}

fn remove(doc: &mut Map<String, Value>, path: &str) {
    match path.split_once('.') {
        None => {
            doc.remove(path);
        }
        Some((head, rest)) => {
            if let Some(Value::Object(inner)) = doc.get_mut(head) {
                remove(inner, rest);
            }
        }
    }
}

/// The text of `path` in a document, as a form field shows it.
pub fn text_at(doc: &Value, path: &str) -> String {
    let mut at = doc;
    for part in path.split('.') {
        match at.get(part) {
            Some(v) => at = v,
            None => return String::new(),
        }
    }
    text_of(at)
}

/// A value as a field shows it: lists separated by commas, objects as
/// `key=value` pairs, objects of objects one `name: pairs` line each.
fn text_of(value: &Value) -> String {
    match value {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items.iter().map(text_of).collect::<Vec<_>>().join(", "),
        Value::Object(rows) if rows.values().all(Value::is_object) && !rows.is_empty() => rows
            .iter()
            .map(|(name, row)| format!("{name}: {}", text_of(row)))
            .collect::<Vec<_>>()
            .join("\n"),
        Value::Object(pairs) => pairs
            .iter()
            .map(|(k, v)| format!("{k}={}", text_of(v)))
            .collect::<Vec<_>>()
            .join(", "),
        other => other.to_string(),
    }
}

/// The field an error's path belongs to: the longest field path it starts with.
pub fn field_of<'a>(path: &str, paths: &[(&'a str, Kind)]) -> Option<&'a str> {
    paths
        .iter()
        .map(|(p, _)| *p)
        .filter(|p| {
            path == *p || path.starts_with(&format!("{p}.")) || path.starts_with(&format!("{p}["))
        })
        .max_by_key(|p| p.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATHS: [(&str, Kind); 6] = [
        ("name", Kind::Text),
        ("capacity.cpu", Kind::Text),
        ("max_workers", Kind::Number),
        ("labels", Kind::Pairs),
        ("allowed_pools", Kind::Names),
        ("pool_limits", Kind::Table),
    ];

    #[test]
    fn fields_become_the_document_and_back() {
        let form =
            fields(b"name=a&capacity.cpu=500m&max_workers=3&labels=os%3Dlinux%2C+zone%3Db&csrf=x");
        assert!(!form.contains_key("csrf"));
        let doc = document(&form, &PATHS).expect("document");
        assert_eq!(
            doc,
            serde_json::json!({"name": "a", "capacity": {"cpu": "500m"}, "max_workers": 3,
                "labels": {"os": "linux", "zone": "b"}})
        );
        assert_eq!(text_at(&doc, "capacity.cpu"), "500m");
        assert_eq!(text_at(&doc, "labels"), "os=linux, zone=b");
        assert_eq!(text_at(&doc, "missing.path"), "");
        // Not a number: kept as text for the validation to refuse.
        let doc = document(&fields(b"max_workers=many"), &PATHS).expect("document");
        assert_eq!(doc["max_workers"], "many");
        let bad = document(&fields(b"labels=oops"), &PATHS).expect_err("not pairs");
        assert_eq!(bad.0, "labels");
    }

    #[test]
    fn lists_and_tables_become_the_document_and_back() {
        let form = fields(
            b"allowed_pools=gpu%2C+cpu&pool_limits=gpu%3A+gpu%3D2%2C+memory%3D32Gi%0D%0Acpu%3A+runs%3D3",
        );
        let doc = document(&form, &PATHS).expect("document");
        assert_eq!(
            doc,
            serde_json::json!({"allowed_pools": ["gpu", "cpu"],
                "pool_limits": {"gpu": {"gpu": 2, "memory": "32Gi"}, "cpu": {"runs": 3}}})
        );
        assert_eq!(text_at(&doc, "allowed_pools"), "gpu, cpu");
        assert_eq!(
            text_at(&doc, "pool_limits"),
            "cpu: runs=3\ngpu: gpu=2, memory=32Gi"
        );
        // An empty list has its own word; a list of no name is refused.
        let none = document(&fields(b"allowed_pools=-"), &PATHS).expect("document");
        assert_eq!(none, serde_json::json!({"allowed_pools": []}));
        let bad = document(&fields(b"allowed_pools=%2C+"), &PATHS).expect_err("no name");
        assert_eq!(bad.0, "allowed_pools");
        let bad = document(&fields(b"pool_limits=gpu+2"), &PATHS).expect_err("no colon");
        assert_eq!(bad.0, "pool_limits");
        let bad = document(&fields(b"pool_limits=gpu%3A+2"), &PATHS).expect_err("not pairs");
        assert_eq!(bad.0, "pool_limits");
    }

    #[test]
    fn an_error_path_finds_its_field() {
        assert_eq!(field_of("capacity.cpu", &PATHS), Some("capacity.cpu"));
        assert_eq!(field_of("labels.os", &PATHS), Some("labels"));
        assert_eq!(field_of("price", &PATHS), None);
        assert_eq!(field_of("pool_limits.gpu.cpu", &PATHS), Some("pool_limits"));
    }
}
