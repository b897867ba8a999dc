//! Errors of the core: a spec that does not hold, named by its field path.

use serde::Serialize;

/// A user input that is not valid, with the path of the offending field, e.g.
/// `steps[2].resources.cpu`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{path}: {message}")]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl FieldError {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Checks a name used as an identifier (pool, tenant, pipeline, step): 1 to 63
/// characters of letters, digits, `-`, `_` and `.`, starting with a letter or digit.
pub fn check_name(path: &str, name: &str) -> Result<(), FieldError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if valid {
        Ok(())
    } else {
        Err(FieldError::new(
            path,
            format!(
                "{name:?} is not a valid name (1 to 63 letters, digits, '-', '_' or '.', starting with a letter or digit)"
            ),
        ))
    }
}
