//! Reading user documents: YAML (one or many documents) or JSON, each with a
//! `kind`, into typed specs whose errors name the field path.
//!
//! JSON is read as YAML (it is a subset), so both go through one parser and one budget
//! ([`MANIFEST_DEPTH`], [`MANIFEST_ALIAS_EVENTS`] and serde-saphyr's default node and event
//! counts): an alias bomb ("billion laughs") or a document nested thousands of levels deep is
//! refused early, with no deep recursion and no large allocation.

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::{FieldError, FieldErrors};
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

/// How deeply a manifest may nest mappings and sequences. A pipeline needs about six levels.
pub const MANIFEST_DEPTH: usize = 32;

/// How many parser events aliases (`*name`) may replay in one manifest, in all. Sharing an
/// anchored `env` among a thousand steps takes some thousands; a "billion laughs" takes
/// billions and stops here. This bound is what keeps aliases cheap, so the ratio of aliases to
/// anchors is not limited: one anchor may well be used by every step.
pub const MANIFEST_ALIAS_EVENTS: usize = 100_000;

/// The parser's options for manifests: serde-saphyr's defaults with the bounds above.
fn manifest_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_depth: MANIFEST_DEPTH,
            flow_nesting_limit: MANIFEST_DEPTH,
            enforce_alias_anchor_ratio: false,
        },
        alias_limits: serde_saphyr::alias_limits! {
            max_total_replayed_events: MANIFEST_ALIAS_EVENTS,
        },
    }
}

/// Whether the parser stopped at one of the manifest's bounds (rather than at a syntax error).
/// The scanner stops deep flow nesting (`[[[[...`) itself, as a parse error.
fn is_over_budget(mut error: &serde_saphyr::Error) -> bool {
    use serde_saphyr::granit_parser::ErrorKind;
    use serde_saphyr::{Error, ExternalMessageSource};
    loop {
        match error {
            Error::WithSnippet { error: inner, .. } | Error::AliasError { error: inner, .. } => {
                error = inner;
            }
            Error::Budget { .. }
            | Error::AliasReplayLimitExceeded { .. }
            | Error::AliasExpansionLimitExceeded { .. }
            | Error::AliasReplayStackDepthExceeded { .. } => return true,
            Error::ExternalMessage { source, .. } => {
                return matches!(
                    source.as_ref(),
                    ExternalMessageSource::Parser(scan)
                        if matches!(scan.kind(), ErrorKind::RecursionLimitExceeded)
                );
            }
            _ => return false,
        }
    }
}

/// Parses text holding one or more YAML documents (JSON is accepted as YAML)
/// into untyped values. Empty documents are dropped.
pub fn parse_values(text: &str) -> Result<Vec<Value>, FieldError> {
    let values: Vec<Value> = serde_saphyr::from_multiple_with_options(text, manifest_options())
        .map_err(|e| {
            let message = if is_over_budget(&e) {
                format!(
                    "more than a manifest may hold (at most {MANIFEST_DEPTH} levels of nesting, \
                     {MANIFEST_ALIAS_EVENTS} parser events replayed by aliases): {e}"
                )
            } else {
                format!("not valid YAML or JSON: {e}")
            };
            FieldError::new("document", message)
        })?;
    Ok(values.into_iter().filter(|v| !v.is_null()).collect())
}

/// Deserializes a value into `T`, naming the failing field by its path
/// (prefixed with `prefix` when the value sits inside a larger document).
pub fn from_value<T: DeserializeOwned>(value: Value, prefix: &str) -> Result<T, FieldError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let path = match (prefix.is_empty(), inner == ".") {
            (true, true) => String::new(),
            (true, false) => inner,
            (false, true) => prefix.to_string(),
            (false, false) => format!("{prefix}.{inner}"),
        };
        let message = e.into_inner().to_string();
        match missing_field(&message) {
            Some(field) if path.is_empty() => FieldError::new(field, "is required"),
            Some(field) => FieldError::new(format!("{path}.{field}"), "is required"),
            None if path.is_empty() => FieldError::new("document", plain(&message)),
            None => FieldError::new(path, plain(&message)),
        }
    })
}

/// The most problems reported for one document; past it, the rest wait for
/// the next try.
pub const MAX_PROBLEMS: usize = 50;

/// A key of a path into a document.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    Field(String),
    Index(usize),
}

fn path_text(prefix: &str, keys: &[Key]) -> String {
    let mut path = prefix.to_string();
    for key in keys {
        match key {
            Key::Field(name) if path.is_empty() => path.push_str(name),
            Key::Field(name) => {
                path.push('.');
                path.push_str(name);
            }
            Key::Index(i) => path.push_str(&format!("[{i}]")),
        }
    }
    if path.is_empty() {
        "document".to_string()
    } else {
        path
    }
}

/// The keys of a path serde gave, if each is a field or an index.
fn keys_of(path: &serde_path_to_error::Path) -> Option<Vec<Key>> {
    use serde_path_to_error::Segment;
    path.iter()
        .map(|s| match s {
            Segment::Map { key } => Some(Key::Field(key.clone())),
            Segment::Seq { index } => Some(Key::Index(*index)),
            Segment::Enum { .. } | Segment::Unknown => None,
        })
        .collect()
}

/// Takes the value at `keys` out of `value`; whether there was one.
fn take_out(value: &mut Value, keys: &[Key]) -> bool {
    let Some((last, parents)) = keys.split_last() else {
        return false;
    };
    let mut at = value;
    for key in parents {
        let next = match (key, at) {
            (Key::Field(name), Value::Object(map)) => map.get_mut(name),
            (Key::Index(i), Value::Array(items)) => items.get_mut(*i),
            _ => None,
        };
        match next {
            Some(next) => at = next,
            None => return false,
        }
    }
    match (last, at) {
        (Key::Field(name), Value::Object(map)) => map.remove(name).is_some(),
        _ => false,
    }
}

/// The field a serde message says is missing: ``missing field `monthly` ``.
fn missing_field(message: &str) -> Option<&str> {
    message
        .strip_prefix("missing field `")
        .and_then(|rest| rest.strip_suffix('`'))
}

/// Reads a document into `T` and checks it with `check`, finding every
/// problem rather than the first: a field that does not fit is noted and
/// left out (a list with it, as a whole), and the rest read again, so the
/// other fields are still checked; `check` then looks at what was read, its
/// problems with fields already noted left out. Returns what was read, when
/// anything could be, and the problems (at most [`MAX_PROBLEMS`]).
pub fn read_all<T: DeserializeOwned>(
    mut value: Value,
    check: impl FnOnce(&T) -> Vec<FieldError>,
) -> (Option<T>, Vec<FieldError>) {
    let mut problems = Vec::new();
    let mut left_out: Vec<String> = Vec::new();
    while problems.len() < MAX_PROBLEMS {
        let e = match serde_path_to_error::deserialize::<_, T>(&value) {
            Ok(read) => {
                let covered = |path: &str| {
                    left_out.iter().any(|out| {
                        path == out
                            || path.starts_with(&format!("{out}."))
                            || path.starts_with(&format!("{out}["))
                    })
                };
                problems.extend(check(&read).into_iter().filter(|p| !covered(&p.path)));
                problems.truncate(MAX_PROBLEMS);
                return (Some(read), problems);
            }
            Err(e) => e,
        };
        let Some(mut keys) = keys_of(e.path()) else {
            let path = e.path().to_string();
            problems.push(FieldError::new(path, plain(&e.into_inner().to_string())));
            break;
        };
        let message = e.into_inner().to_string();
        if let Some(field) = missing_field(&message) {
            let mut at = keys.clone();
            at.push(Key::Field(field.to_string()));
            let path = path_text("", &at);
            if !left_out.contains(&path) {
                problems.push(FieldError::new(path, "is required"));
            }
        } else {
            problems.push(FieldError::new(path_text("", &keys), plain(&message)));
            // A bad item of a list: the list goes, whose other items keep
            // their places for what reads the rest.
            if let Some(i) = keys.iter().position(|k| matches!(k, Key::Index(_))) {
                keys.truncate(i);
            }
        }
        if !take_out(&mut value, &keys) {
            break;
        }
        left_out.push(path_text("", &keys));
    }
    (None, problems)
}

/// serde's words for a value of the wrong kind, in plain ones:
/// ``invalid type: floating point `-3.0`, expected u32`` becomes
/// `must be a whole number from 0 to 4294967295, not -3.0`; other messages
/// are kept.
fn plain(message: &str) -> String {
    if let Some(rest) = message.strip_prefix("unknown variant ")
        && let Some((given, expected)) = rest.split_once(", expected ")
    {
        let expected = expected.strip_prefix("one of ").unwrap_or(expected);
        return format!("must be {expected}, not {given}");
    }
    let Some((given, expected)) = message
        .strip_prefix("invalid type: ")
        .or_else(|| message.strip_prefix("invalid value: "))
        .and_then(|rest| rest.split_once(", expected "))
    else {
        return message.to_string();
    };
    let whole = |max: u64| format!("a whole number from 0 to {max}");
    let expected = match expected {
        "u8" => whole(u8::MAX.into()),
        "u16" => whole(u16::MAX.into()),
        "u32" => whole(u32::MAX.into()),
        "u64" | "usize" => "a whole number, 0 or more".to_string(),
        "i8" | "i16" | "i32" | "i64" | "isize" => "a whole number".to_string(),
        "f32" | "f64" => "a number".to_string(),
        "a string" | "a borrowed string" => "text".to_string(),
        "a boolean" => "true or false".to_string(),
        "a sequence" => "a list".to_string(),
        e if e == "a map" || e.starts_with("struct ") => "a mapping of fields".to_string(),
        other => other.to_string(),
    };
    let given = [
        "floating point ",
        "integer ",
        "boolean ",
        "string ",
        "char ",
    ]
    .iter()
    .find_map(|kind| given.strip_prefix(kind))
    .map(|v| v.trim_matches('`').to_string())
    .unwrap_or_else(|| match given {
        "map" => "a mapping".to_string(),
        "sequence" => "a list".to_string(),
        "unit value" | "null" => "nothing (null)".to_string(),
        other => other.to_string(),
    });
    format!("must be {expected}, not {given}")
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

/// Parses one typed document, with every problem of a pool or a tenant.
pub fn parse_document(value: Value, index: usize) -> Result<Document, FieldErrors> {
    let (kind, rest) = take_kind(value, index)?;
    let doc = match kind.as_deref() {
        Some("Pool") => Document::Pool(PoolSpec::parse(rest)?),
        Some("Tenant") => Document::Tenant(TenantSpec::parse(rest)?),
        Some("Pipeline") => Document::Pipeline(PipelineSpec::parse(rest)?),
        Some(other) => {
            return Err(FieldError::new(
                "kind",
                format!("unknown kind {other:?} (expected Pool, Tenant or Pipeline)"),
            )
            .into());
        }
        None => {
            return Err(
                FieldError::new("kind", "missing (expected Pool, Tenant or Pipeline)").into(),
            );
        }
    };
    Ok(doc)
}

/// Parses a whole manifest of typed documents, with the problems of all of
/// them (at most [`MAX_PROBLEMS`]).
pub fn parse_documents(text: &str) -> Result<Vec<Document>, FieldErrors> {
    let mut documents = Vec::new();
    let mut problems = Vec::new();
    for (i, value) in parse_values(text)?.into_iter().enumerate() {
        match parse_document(value, i) {
            Ok(doc) => documents.push(doc),
            Err(e) => problems.extend(e.into_vec()),
        }
    }
    problems.truncate(MAX_PROBLEMS);
    FieldErrors::check(Some(documents), problems)
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const OVER_BUDGET: &str = "more than a manifest may hold (at most 32 levels of nesting, 100000 parser events replayed by aliases): ";

    /// Nine anchors, each a list of nine aliases of the one before: 9^9 strings once expanded.
    fn billion_laughs() -> String {
        let mut text =
            String::from("kind: Pipeline\nl0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..9 {
            let aliases = vec![format!("*l{}", i - 1); 9].join(", ");
            text.push_str(&format!("l{i}: &l{i} [{aliases}]\n"));
        }
        text
    }

    #[test]
    fn serdes_words_become_plain_ones() {
        let cases = [
            (
                json!({"steps": [{"name": "a"}]}),
                "steps[0].run: is required",
            ),
            (json!({"name": 5, "steps": []}), "name: must be text, not 5"),
            (
                json!({"name": "p", "steps": {}}),
                "steps: must be a list, not a mapping",
            ),
            (
                json!({"name": "p", "steps": [{"name": "a", "run": "x", "retries": -1}]}),
                "steps[0].retries: must be a whole number from 0 to 4294967295, not -1",
            ),
        ];
        for (value, expected) in cases {
            let err = from_value::<PipelineSpec>(value.clone(), "").expect_err("invalid");
            assert_eq!(err.to_string(), expected, "{value}");
        }
    }

    #[test]
    fn every_problem_is_read_and_the_rest_kept() {
        use crate::tenant::TenantSpec;
        // A bad item leaves its list out; a bad required field, its object.
        let (spec, problems) = TenantSpec::read(json!({"name": "acme", "weight": "heavy",
            "allowed_pools": ["a", 7, true], "budget": {"monthly": "x", "alert_at": [0.5]},
            "quota": {"runs": 2}}));
        let found: Vec<String> = problems.iter().map(ToString::to_string).collect();
        assert_eq!(
            found,
            [
                "allowed_pools[1]: must be text, not 7",
                "budget.monthly: must be an amount of money, a number such as 500 or 12.5, not \"x\"",
                "weight: must be a whole number from 0 to 4294967295, not \"heavy\"",
            ]
        );
        let spec = spec.expect("the rest is read");
        assert_eq!(
            (spec.allowed_pools, spec.budget, spec.quota.runs),
            (None, None, Some(2))
        );
        // Without its name, a document cannot be read, but its problems are found.
        let (spec, problems) = TenantSpec::read(json!({"weight": 0, "colour": 1}));
        assert!(spec.is_none());
        let paths: Vec<&str> = problems.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(paths, ["colour", "name"]);
    }

    #[test]
    fn an_alias_bomb_is_refused() {
        let err = parse_documents(&billion_laughs())
            .expect_err("alias bomb")
            .first()
            .clone();
        assert_eq!(err.path, "document");
        assert!(err.message.starts_with(OVER_BUDGET), "{err}");
        assert!(err.message.contains("alias replay limit exceeded"), "{err}");
    }

    #[test]
    fn shared_anchors_within_the_budget_are_expanded() {
        let mut text = String::from(
            "kind: Pipeline\nname: p\nsteps:\n  - {name: s0, run: x, env: &common {A: '1', B: '2'}}\n",
        );
        for i in 1..1000 {
            text.push_str(&format!("  - {{name: s{i}, run: x, env: *common}}\n"));
        }
        match parse_documents(&text).expect("valid").as_slice() {
            [Document::Pipeline(spec)] => assert_eq!(spec.steps[999].env["B"], "2"),
            other => panic!("expected one pipeline, got {other:?}"),
        }
    }

    #[test]
    fn deep_yaml_flow_nesting_is_refused() {
        let text = format!(
            "kind: Pipeline\nname: {}x{}\n",
            "[".repeat(10_000),
            "]".repeat(10_000)
        );
        let err = parse_documents(&text).expect_err("deep").first().clone();
        assert_eq!(err.path, "document");
        assert!(err.message.starts_with(OVER_BUDGET), "{err}");
        assert!(err.message.contains("recursion limit exceeded"), "{err}");
    }

    #[test]
    fn deep_yaml_block_nesting_is_refused() {
        let text: String = (0..10_000)
            .map(|depth| format!("{}k:\n", " ".repeat(depth.min(200))))
            .collect();
        let text = format!("kind: Pipeline\nname:\n{text}");
        let err = parse_documents(&text).expect_err("deep").first().clone();
        assert_eq!(err.path, "document");
        assert!(err.message.starts_with(OVER_BUDGET), "{err}");
        assert!(err.message.contains("Depth"), "{err}");
    }

    #[test]
    fn deep_json_is_refused() {
        for (open, close) in [("[", "]"), ("{\"a\": ", "}")] {
            let text = format!(
                "{{\"kind\": \"Pipeline\", \"name\": {}1{}}}",
                open.repeat(10_000),
                close.repeat(10_000)
            );
            let err = parse_documents(&text).expect_err("deep").first().clone();
            assert_eq!(err.path, "document", "{open}");
            assert!(err.message.starts_with(OVER_BUDGET), "{open}: {err}");
        }
    }

    #[test]
    fn nesting_up_to_the_budget_is_read() {
        let depth = MANIFEST_DEPTH - 1;
        let text = format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
        assert_eq!(parse_values(&text).expect("within budget").len(), 1);
        let text = format!(
            "{}1{}",
            "[".repeat(MANIFEST_DEPTH + 1),
            "]".repeat(MANIFEST_DEPTH + 1)
        );
        let err = parse_values(&text).expect_err("one level too deep");
        assert!(err.message.starts_with(OVER_BUDGET), "{err}");
        let err = parse_values("a: [1, 2").expect_err("syntax");
        assert!(err.message.starts_with("not valid YAML or JSON"), "{err}");
    }
}
