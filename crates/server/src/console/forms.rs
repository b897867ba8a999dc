//! Forms as documents: a form's fields are named by their path in the
//! document (`capacity.memory`), so a form becomes the JSON document the API
//! takes, is validated by the same code, and an error's path names the field
//! it is shown next to. A form edits the stored document: what it does not
//! show is kept.

use std::collections::BTreeMap;

use corral_core::error::FieldError;
use serde_json::{Map, Value};

/// How a list that is empty is written in its field (no name or number
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
    /// Numbers separated by commas, as a list; `-` for an empty list.
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

/// A whole number as one (`-3` too, for the validation to say it must be 0
/// or more), else a fraction, else the text.
fn number(text: &str) -> Value {
    if let Ok(n) = text.parse::<u64>() {
        return Value::from(n);
    }
    if let Ok(n) = text.parse::<i64>() {
        return Value::from(n);
    }
    text.parse::<f64>()
        .ok()
        .and_then(serde_json::Number::from_f64)
        .map_or_else(|| Value::String(text.to_string()), Value::Number)
}

/// `base` with the fields' values (`paths` lists each field and its kind): a
/// field left empty takes its path out, as in a document that does not set
/// it; a field not written as its kind says keeps the base's value, and its
/// problem is returned.
pub fn merge(
    base: Value,
    fields: &BTreeMap<String, String>,
    paths: &[(&str, Kind)],
) -> (Value, Vec<FieldError>) {
    let Value::Object(mut doc) = base else {
        return (base, Vec::new());
    };
    let mut problems = Vec::new();
    for (path, kind) in paths {
        let Some(text) = fields.get(*path).filter(|t| !t.is_empty()) else {
            remove(&mut doc, path);
            continue;
        };
        match value(path, *kind, text) {
            Ok(value) => put(&mut doc, path, value),
            Err(problem) => problems.push(problem),
        }
    }
    (Value::Object(doc), problems)
}

/// A field's text as the value its kind makes.
fn value(path: &str, kind: Kind, text: &str) -> Result<Value, FieldError> {
    let list = |item: fn(&str) -> Value| -> Result<Value, FieldError> {
        if text == NONE {
            return Ok(Value::Array(Vec::new()));
        }
        let items: Vec<Value> = text
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(item)
            .collect();
        if items.is_empty() {
            return Err(FieldError::new(
                path,
                format!("write at least one, separated by commas, or {NONE} for none"),
            ));
        }
        Ok(Value::Array(items))
    };
    Ok(match kind {
        Kind::Text => Value::String(text.to_string()),
        Kind::Number => number(text),
        Kind::Bool => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => Value::String(text.to_string()),
        },
        Kind::Numbers => list(number)?,
        Kind::Names => list(|t| Value::String(t.to_string()))?,
        Kind::Pairs => pairs(path, text, |v| Value::String(v.to_string()))?,
        Kind::Table => {
            let mut rows = Map::new();
            for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
                let Some((name, rest)) = line.split_once(':') else {
                    return Err(FieldError::new(
                        path,
                        format!("{line:?} is not `name: key=value, key=value`"),
                    ));
                };
                rows.insert(name.trim().to_string(), pairs(path, rest, number)?);
            }
            Value::Object(rows)
        }
    })
}

/// Sets `path` (`a.b.c`) in `doc` to `value`, making the objects on the way.
fn put(doc: &mut Map<String, Value>, path: &str, value: Value) {
    let mut at = doc;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            at.insert(part.to_string(), value);
            return;
        }
        let entry = at
            .entry(part.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        let Value::Object(next) = entry else {
            return;
        };
        at = next;
    }
}

/// `key=value` pairs separated by commas, as an object of `value`s.
fn pairs(path: &str, text: &str, value: fn(&str) -> Value) -> Result<Value, FieldError> {
    let mut pairs = Map::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((k, v)) = pair.split_once('=') else {
            return Err(FieldError::new(
                path,
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

fn value_at<'a>(doc: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(doc, |at, part| at.get(part))
}

/// The text of `path` in a document, as a form field shows it.
pub fn text_at(doc: &Value, path: &str) -> String {
    value_at(doc, path).map(text_of).unwrap_or_default()
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

/// What each field shows of a document: its text, and an empty list as
/// [`NONE`] (an empty field means "not set").
pub fn shown(doc: &Value, paths: &[(&str, Kind)]) -> BTreeMap<String, String> {
    paths
        .iter()
        .map(|(path, kind)| {
            let empty_list = matches!(kind, Kind::Names | Kind::Numbers)
                && value_at(doc, path)
                    .and_then(Value::as_array)
                    .is_some_and(Vec::is_empty);
            let text = if empty_list {
                NONE.to_string()
            } else {
                text_at(doc, path)
            };
            (path.to_string(), text)
        })
        .collect()
}

/// A form's problems in words: each field's beside it, and those of no
/// field above the form.
#[derive(Debug, Default)]
pub struct Problems {
    by_field: BTreeMap<String, String>,
    pub general: Vec<String>,
}

impl Problems {
    /// Each problem under the field its path belongs to; one deeper in the
    /// field (`labels.os`) says where (`os: ...`), but not an item of a list,
    /// whose messages name their values.
    pub fn new(problems: Vec<FieldError>, paths: &[(&str, Kind)]) -> Problems {
        let mut found = Problems::default();
        for p in problems {
            let Some(field) = field_of(&p.path, paths) else {
                found.general.push(p.to_string());
                continue;
            };
            let within = p.path[field.len()..].trim_start_matches('.');
            let message = if within.is_empty() || within.starts_with('[') {
                p.message
            } else {
                format!("{within}: {}", p.message)
            };
            found
                .by_field
                .entry(field.to_string())
                .and_modify(|m| {
                    m.push_str("; ");
                    m.push_str(&message);
                })
                .or_insert(message);
        }
        found
    }

    /// What is wrong with `field`, if anything.
    pub fn of(&self, field: &str) -> Option<&str> {
        self.by_field.get(field).map(String::as_str)
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

    /// The document the fields make on their own.
    fn document(
        fields: &BTreeMap<String, String>,
        paths: &[(&str, Kind)],
    ) -> (Value, Vec<FieldError>) {
        merge(Value::Object(Map::new()), fields, paths)
    }

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
        let (doc, problems) = document(&form, &PATHS);
        assert_eq!(problems, []);
        assert_eq!(
            doc,
            serde_json::json!({"name": "a", "capacity": {"cpu": "500m"}, "max_workers": 3,
                "labels": {"os": "linux", "zone": "b"}})
        );
        assert_eq!(text_at(&doc, "capacity.cpu"), "500m");
        assert_eq!(text_at(&doc, "labels"), "os=linux, zone=b");
        assert_eq!(text_at(&doc, "missing.path"), "");
        // Not a number: kept as text for the validation to refuse.
        let (doc, _) = document(&fields(b"max_workers=many"), &PATHS);
        assert_eq!(doc["max_workers"], "many");
        let (doc, _) = document(&fields(b"max_workers=-3"), &PATHS);
        assert_eq!(doc["max_workers"], -3);
        let (doc, bad) = document(&fields(b"labels=oops&name=a"), &PATHS);
        assert_eq!(doc, serde_json::json!({"name": "a"}));
        assert_eq!(bad[0].path, "labels");
    }

    #[test]
    fn lists_and_tables_become_the_document_and_back() {
        let form = fields(
            b"allowed_pools=gpu%2C+cpu&pool_limits=gpu%3A+gpu%3D2%2C+memory%3D32Gi%0D%0Acpu%3A+runs%3D3",
        );
        let (doc, problems) = document(&form, &PATHS);
        assert_eq!(problems, []);
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
        let (none, _) = document(&fields(b"allowed_pools=-"), &PATHS);
        assert_eq!(none, serde_json::json!({"allowed_pools": []}));
        assert_eq!(shown(&none, &PATHS)["allowed_pools"], NONE);
        // Each field with its own problem, all at once.
        let (_, bad) = document(
            &fields(b"allowed_pools=%2C+&pool_limits=gpu+2&labels=oops"),
            &PATHS,
        );
        let paths: Vec<&str> = bad.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["labels", "allowed_pools", "pool_limits"]);
        let (_, bad) = document(&fields(b"pool_limits=gpu%3A+2"), &PATHS);
        assert_eq!(bad[0].path, "pool_limits");
    }

    #[test]
    fn a_form_keeps_what_it_does_not_show() {
        let base = serde_json::json!({"name": "a", "max_agent": {"cpu": "4"},
            "labels": {"os": "linux"}, "max_workers": 3});
        let mut form = shown(&base, &PATHS);
        let (doc, problems) = merge(base.clone(), &form, &PATHS);
        assert_eq!((doc, problems), (base.clone(), vec![]));
        form.insert("labels".into(), String::new());
        let (doc, _) = merge(base, &form, &PATHS);
        assert_eq!(
            doc,
            serde_json::json!({"name": "a", "max_agent": {"cpu": "4"}, "max_workers": 3})
        );
    }

    #[test]
    fn problems_are_shown_beside_their_fields() {
        let problems = Problems::new(
            vec![
                FieldError::new("labels.os", "the value contains a NUL byte"),
                FieldError::new("labels", "\"x\" is not key=value"),
                FieldError::new("allowed_pools[1]", "there is no pool \"b\""),
                FieldError::new("colour", "unknown field `colour`"),
            ],
            &PATHS,
        );
        assert_eq!(
            problems.of("labels"),
            Some("os: the value contains a NUL byte; \"x\" is not key=value")
        );
        assert_eq!(problems.of("allowed_pools"), Some("there is no pool \"b\""));
        assert_eq!(problems.general, ["colour: unknown field `colour`"]);
        assert!(problems.of("name").is_none());
    }

    #[test]
    fn an_error_path_finds_its_field() {
        assert_eq!(field_of("capacity.cpu", &PATHS), Some("capacity.cpu"));
        assert_eq!(field_of("labels.os", &PATHS), Some("labels"));
        assert_eq!(field_of("price", &PATHS), None);
        assert_eq!(field_of("pool_limits.gpu.cpu", &PATHS), Some("pool_limits"));
    }
}
