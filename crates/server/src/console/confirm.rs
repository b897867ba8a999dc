//! Actions that cannot be taken back (delete, cancel, drain) ask first, in
//! plain HTML: the action's form posted without `confirm=yes` answers a page
//! that says what will happen, whose button posts the same form again with it.

use std::collections::BTreeMap;

use axum::response::{IntoResponse, Response};
use maud::html;

use super::layout::{self, Section};
use super::session::Session;

/// Whether a form was posted from its confirmation page.
pub fn confirmed(fields: &BTreeMap<String, String>) -> bool {
    fields.get("confirm").is_some_and(|v| v == "yes")
}

/// What a confirmation page asks.
pub struct Question<'a> {
    /// The question, as the page's title: `Delete pool main?`.
    pub title: &'a str,
    /// What will happen, in a sentence.
    pub consequence: &'a str,
    /// Where the form posts, with its fields (the CSRF token and
    /// `confirm=yes` are added).
    pub action: &'a str,
    pub fields: &'a [(&'a str, &'a str)],
    /// The button that does it: `Delete pool`.
    pub button: &'a str,
    /// The page to go back to instead.
    pub back: &'a str,
}

/// The page that asks `question`.
pub fn ask(session: &Session, section: Section, question: &Question<'_>) -> Response {
    let body = html! {
        p { (question.consequence) }
        div.actions {
            form method="post" action=(question.action) {
                (layout::csrf(session))
                @for (name, value) in question.fields {
                    input type="hidden" name=(name) value=(value);
                }
                input type="hidden" name="confirm" value="yes";
                button.danger type="submit" { (question.button) }
            }
            a href=(question.back) { "No, go back" }
        }
    };
    layout::page(session, section, question.title, body).into_response()
}

/// Asks before deleting the `kind` (`pool`, `tenant`) named `name`, whose
/// page is `/{kind}s/{name}`: what happens is `consequence`.
pub fn ask_delete(
    session: &Session,
    section: Section,
    kind: &str,
    name: &str,
    consequence: &str,
) -> Response {
    let back = format!("/{kind}s/{name}");
    let action = format!("{back}/delete");
    let title = format!("Delete {kind} {name}?");
    let button = format!("Delete {kind}");
    let question = Question {
        title: &title,
        consequence,
        action: &action,
        fields: &[],
        button: &button,
        back: &back,
    };
    ask(session, section, &question)
}
