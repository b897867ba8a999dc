//! Label selectors (`k=v`, `k==v`, `k!=v`, `k`, `!k`, `k in (a,b)`, `k notin (a,b)`) and
//! field selectors (`path=v`, `path==v`, `path!=v`), as the API server reads them from a
//! list's or watch's query, evaluated on an object as it is served.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::validate::{label_key_problem, label_value_problem};

/// The longest selector the fake reads.
const MAX_SELECTOR: usize = 4096;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
}

/// A label selector: every requirement must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LabelSelector(Vec<Requirement>);

impl LabelSelector {
    /// Parses a selector, or says what is wrong with it in the API server's words.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_SELECTOR {
            return Err(format!(
                "labelSelector: longer than {MAX_SELECTOR} characters"
            ));
        }
        let mut requirements = Vec::new();
        for term in split_top_level(text)? {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            requirements.push(parse_requirement(term)?);
        }
        Ok(Self(requirements))
    }

    /// Whether an object's labels (`metadata.labels`, possibly absent) satisfy it.
    pub(crate) fn matches(&self, object: &Value) -> bool {
        let labels = object.pointer("/metadata/labels");
        let get = |key: &str| {
            labels
                .and_then(|labels| labels.get(key))
                .and_then(Value::as_str)
        };
        self.0.iter().all(|requirement| match requirement {
            Requirement::Equals(key, value) => get(key) == Some(value),
            Requirement::NotEquals(key, value) => get(key) != Some(value),
            Requirement::Exists(key) => get(key).is_some(),
            Requirement::NotExists(key) => get(key).is_none(),
            Requirement::In(key, values) => get(key).is_some_and(|v| values.contains(v)),
            Requirement::NotIn(key, values) => !get(key).is_some_and(|v| values.contains(v)),
        })
    }
}

/// Splits on the commas outside parentheses.
fn split_top_level(text: &str) -> Result<Vec<&str>, String> {
    let mut terms = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (at, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth = depth.checked_sub(1).ok_or_else(|| {
                    format!("unable to parse requirement: unmatched ')' in {text:?}")
                })?;
            }
            ',' if depth == 0 => {
                terms.push(&text[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(format!(
            "unable to parse requirement: unclosed '(' in {text:?}"
        ));
    }
    terms.push(&text[start..]);
    Ok(terms)
}

fn parse_requirement(term: &str) -> Result<Requirement, String> {
    if let Some(key) = term.strip_prefix('!') {
        return Ok(Requirement::NotExists(checked_key(key.trim())?));
    }
    if let Some(open) = term.find('(') {
        let inside = term[open + 1..].strip_suffix(')').ok_or_else(|| {
            format!("unable to parse requirement: {term:?} does not end with ')'")
        })?;
        let mut words = term[..open].split_whitespace();
        let (Some(key), Some(operator), None) = (words.next(), words.next(), words.next()) else {
            return Err(format!(
                "unable to parse requirement: {term:?}: expected `key in (values)`"
            ));
        };
        let key = checked_key(key)?;
        let values = inside
            .split(',')
            .map(|value| checked_value(value.trim()))
            .collect::<Result<BTreeSet<_>, _>>()?;
        return match operator {
            "in" => Ok(Requirement::In(key, values)),
            "notin" => Ok(Requirement::NotIn(key, values)),
            other => Err(format!(
                "unable to parse requirement: unknown operator {other:?}"
            )),
        };
    }
    for (operator, make) in [
        (
            "!=",
            Requirement::NotEquals as fn(String, String) -> Requirement,
        ),
        ("==", Requirement::Equals),
        ("=", Requirement::Equals),
    ] {
        if let Some((key, value)) = term.split_once(operator) {
            return Ok(make(checked_key(key.trim())?, checked_value(value.trim())?));
        }
    }
    if term.contains(char::is_whitespace) {
        return Err(format!("unable to parse requirement: {term:?}"));
    }
    Ok(Requirement::Exists(checked_key(term)?))
}

fn checked_key(key: &str) -> Result<String, String> {
    match label_key_problem(key) {
        None => Ok(key.to_owned()),
        Some(problem) => Err(format!("invalid label key {key:?}: {problem}")),
    }
}

fn checked_value(value: &str) -> Result<String, String> {
    match label_value_problem(value) {
        None => Ok(value.to_owned()),
        Some(problem) => Err(format!("invalid label value {value:?}: {problem}")),
    }
}

/// A field selector: every term must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct FieldSelector(Vec<(String, bool, String)>);

impl FieldSelector {
    /// Parses a selector over the fields `supported` (the API server's field labels of
    /// the kind, as dotted paths), or says what is wrong with it.
    pub(crate) fn parse(text: &str, supported: &[&str]) -> Result<Self, String> {
        if text.len() > MAX_SELECTOR {
            return Err(format!(
                "fieldSelector: longer than {MAX_SELECTOR} characters"
            ));
        }
        let mut terms = Vec::new();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (field, equal, value) = if let Some((f, v)) = term.split_once("!=") {
                (f, false, v)
            } else if let Some((f, v)) = term.split_once("==") {
                (f, true, v)
            } else if let Some((f, v)) = term.split_once('=') {
                (f, true, v)
            } else {
                return Err(format!(
                    "invalid selector: {term:?}; can't understand {term:?}"
                ));
            };
            let field = field.trim();
            if !supported.contains(&field) {
                return Err(format!("field label not supported: {field}"));
            }
            terms.push((field.to_owned(), equal, value.trim().to_owned()));
        }
        Ok(Self(terms))
    }

    /// Whether an object, as served, satisfies it (an absent field reads as empty, a
    /// boolean as `true`/`false`).
    pub(crate) fn matches(&self, object: &Value) -> bool {
        self.0.iter().all(|(field, equal, value)| {
            let pointer = format!("/{}", field.replace('.', "/"));
            let actual = match object.pointer(&pointer) {
                Some(Value::String(text)) => text.clone(),
                Some(Value::Bool(flag)) => flag.to_string(),
                Some(Value::Number(number)) => number.to_string(),
                _ if field == "spec.unschedulable" => "false".to_owned(),
                _ => String::new(),
            };
            (actual == *value) == *equal
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{FieldSelector, LabelSelector};

    fn object(labels: serde_json::Value) -> serde_json::Value {
        json!({"metadata": {"name": "p", "labels": labels}, "status": {"phase": "Running"}})
    }

    #[test]
    fn label_selectors_match_as_the_api_server_does() {
        let pod = object(json!({"app": "web", "tier": "front"}));
        let bare = object(json!({}));
        let cases = [
            ("app=web", true, false),
            ("app==web", true, false),
            ("app!=web", false, true),
            ("app!=db", true, true),
            ("app", true, false),
            ("!app", false, true),
            ("app in (web, db)", true, false),
            ("app notin (web,db)", false, true),
            ("app=web,tier=front", true, false),
            ("app=web,tier=back", false, false),
            ("app in (db),tier", false, false),
            ("", true, true),
        ];
        for (text, on_pod, on_bare) in cases {
            let selector = LabelSelector::parse(text).expect("a valid selector");
            assert_eq!(selector.matches(&pod), on_pod, "{text} on labelled pod");
            assert_eq!(selector.matches(&bare), on_bare, "{text} on bare pod");
        }
    }

    #[test]
    fn bad_label_selectors_are_refused() {
        for text in [
            "app in (web",
            "a b",
            "-app=x",
            "app=-x",
            "app)=x",
            "app so (x)",
        ] {
            assert!(LabelSelector::parse(text).is_err(), "{text}");
        }
    }

    #[test]
    fn field_selectors_match_supported_fields() {
        let fields = ["metadata.name", "status.phase", "spec.nodeName"];
        let pod = object(json!({}));
        let matches = |text: &str| {
            FieldSelector::parse(text, &fields)
                .expect("a valid selector")
                .matches(&pod)
        };
        assert!(matches("metadata.name=p"));
        assert!(matches("status.phase==Running,metadata.name!=q"));
        assert!(!matches("status.phase!=Running"));
        assert!(matches("spec.nodeName="));
        let refused = FieldSelector::parse("spec.hostname=x", &fields).expect_err("unsupported");
        assert!(refused.contains("spec.hostname"), "{refused}");
    }
}
