//! The audit log, newest first, a page at a time: filtered by who, kind of
//! object, object name and time range, each entry with the fields its change
//! set, changed or removed (old and new value side by side).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use corral_api::AuditView;
use maud::{Markup, html};
use serde_json::Value;

use super::PageResult;
use super::layout::{self, Section};
use super::session::Session;
use crate::api::routes::{AUDIT_KINDS, audit_entries};
use crate::engine::Engine;

/// Entries on a page.
const PAGE: usize = 50;

/// The filters of the page, in the order of its form.
const FILTERS: [(&str, &str, &str); 4] = [
    ("who", "Who", "A token's name."),
    (
        "name",
        "Object name",
        "A pool, tenant or token, or a run's id.",
    ),
    (
        "since",
        "From",
        "RFC 3339 (2026-12-01T09:00:00Z) or an age (90m, 7d).",
    ),
    ("until", "Until", "The same; entries before it."),
];

/// One field of an object, flattened: its path and its value as JSON text.
fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let path = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&path, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// A change, field by field: (path, value before, value after); a field
/// missing on one side is `None` there.
type Change = (String, Option<String>, Option<String>);

fn changes(before: Option<&Value>, after: Option<&Value>) -> Vec<Change> {
    let fields = |v: Option<&Value>| {
        let mut out = BTreeMap::new();
        if let Some(v) = v {
            flatten("", v, &mut out);
        }
        out
    };
    let (mut old, new) = (fields(before), fields(after));
    let mut diff: Vec<Change> = new
        .into_iter()
        .filter_map(|(path, value)| match old.remove(&path) {
            Some(was) if was == value => None,
            was => Some((path, was, Some(value))),
        })
        .collect();
    diff.extend(old.into_iter().map(|(path, was)| (path, Some(was), None)));
    diff.sort();
    diff
}

fn diff(entry: &AuditView) -> Markup {
    let diff = changes(entry.before.as_ref(), entry.after.as_ref());
    html! {
        @if diff.is_empty() { span.muted { "no field changed" } }
        @else {
            ul.diff { @for (path, was, now) in &diff {
                li {
                    code { (if path.is_empty() { "value" } else { path }) } ": "
                    @match (was, now) {
                        (Some(was), Some(now)) => { del { (was) } " → " ins { (now) } },
                        (None, Some(now)) => { ins { (now) } },
                        (Some(was), None) => { del { (was) } " (removed)" },
                        (None, None) => {},
                    }
                }
            } }
        }
    }
}

/// The link to this page with `query`'s filters and `page` (`before` or
/// `after` an entry).
fn link(query: &BTreeMap<String, String>, page: (&str, i64)) -> String {
    let mut url = form_urlencoded::Serializer::for_suffix(String::from("/audit?"), "/audit?".len());
    for (k, v) in query {
        if !matches!(k.as_str(), "before" | "after") && !v.is_empty() {
            url.append_pair(k, v);
        }
    }
    url.append_pair(page.0, &page.1.to_string());
    url.finish()
}

pub async fn page(
    State(engine): State<Arc<Engine>>,
    Extension(session): Extension<Session>,
    Query(query): Query<BTreeMap<String, String>>,
) -> PageResult {
    let query: BTreeMap<String, String> =
        query.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    // One more than a page: whether there is another page that way.
    let mut asked = query.clone();
    asked.insert("limit".into(), (PAGE + 1).to_string());
    let newer_first = !query.contains_key("after");
    asked.insert(
        "order".into(),
        if newer_first { "newest" } else { "oldest" }.into(),
    );
    let (mut entries, error) = match audit_entries(&engine, &asked).await {
        Ok(entries) => (entries, None),
        Err(e) if e.status == StatusCode::BAD_REQUEST => (Vec::new(), Some(e)),
        Err(e) => return Err(e.into()),
    };
    let more = entries.len() > PAGE;
    entries.truncate(PAGE);
    if !newer_first {
        entries.reverse();
    }
    let paged = query.contains_key("before") || query.contains_key("after");
    let (newer, older) = match (entries.first(), entries.last()) {
        (Some(first), Some(last)) => (
            (if newer_first { paged } else { more }).then(|| link(&query, ("after", first.id))),
            (if newer_first { more } else { true }).then(|| link(&query, ("before", last.id))),
        ),
        _ => (None, None),
    };
    let field_error = |field: &str| {
        error
            .as_ref()
            .filter(|e| e.details.get("path").and_then(Value::as_str) == Some(field))
            .map(|e| e.message.as_str())
    };
    let value = |field: &str| query.get(field).map(String::as_str).unwrap_or("");
    let kinds: Vec<&str> = AUDIT_KINDS.to_vec();
    let body = html! {
        form.filters method="get" action="/audit" {
            (layout::field_with("kind", "Kind of object", field_error("kind"), html! {
                select #kind name="kind" {
                    option value="" { "any" }
                    @for k in &kinds { option value=(k) selected[value("kind") == *k] { (k) } }
                }
            }))
            @for (name, label, hint) in FILTERS {
                (layout::text_field(name, label, value(name), field_error(name), hint))
            }
            button type="submit" { "Filter" }
        }
        @if let Some(e) = &error {
            @if FILTERS.iter().all(|(f, _, _)| field_error(f).is_none()) && field_error("kind").is_none() {
                p.alert role="alert" { (e.message) }
            }
        }
        @if entries.is_empty() { p.muted { "No entry." } }
        @else {
            div.table-wrap tabindex="0" { table.cards #audit {
                thead { tr {
                    th scope="col" { "When" } th scope="col" { "Who" } th scope="col" { "Object" }
                    th scope="col" { "Action" } th scope="col" { "What changed" }
                } }
                tbody { @for e in &entries {
                    tr data-id=(e.id) {
                        td data-label="When" { (layout::time(&e.at)) }
                        td data-label="Who" { (e.who) }
                        td data-label="Object" { (e.kind) " " (e.name) }
                        td data-label="Action" { (e.action) }
                        td { (diff(e)) }
                    }
                } }
            } }
        }
        nav.pager aria-label="Pages of the audit log" {
            @if let Some(href) = &newer { a rel="prev" href=(href) { "← Newer" } }
            @if let Some(href) = &older { a rel="next" href=(href) { "Older →" } }
        }
    };
    let status = if error.is_some() {
        StatusCode::BAD_REQUEST
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        layout::page(&session, Section::Audit, "Audit log", body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::changes;

    #[test]
    fn a_change_lists_the_fields_set_changed_and_removed() {
        let before =
            json!({"name": "p", "capacity": {"cpu": "2", "memory": "4Gi"}, "labels": {"a": "1"}});
        let after =
            json!({"name": "p", "capacity": {"cpu": "4", "memory": "4Gi"}, "state": "draining"});
        let some = |s: &str| Some(s.to_string());
        assert_eq!(
            changes(Some(&before), Some(&after)),
            vec![
                ("capacity.cpu".into(), some("\"2\""), some("\"4\"")),
                ("labels.a".into(), some("\"1\""), None),
                ("state".into(), None, some("\"draining\"")),
            ]
        );
        assert!(changes(Some(&before), Some(&before)).is_empty());
        assert_eq!(changes(None, Some(&json!({"x": 1}))).len(), 1);
    }
}
