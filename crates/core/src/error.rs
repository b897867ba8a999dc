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

/// Every problem found in one document, in the order found; never empty. It
/// reads as its first problem (the summary an error's message carries).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct FieldErrors(Vec<FieldError>);

impl FieldErrors {
    /// The problems, if there is one.
    pub fn new(problems: Vec<FieldError>) -> Option<FieldErrors> {
        (!problems.is_empty()).then_some(FieldErrors(problems))
    }

    /// `value` when nothing is wrong with it, else every problem.
    pub fn check<T>(value: Option<T>, problems: Vec<FieldError>) -> Result<T, FieldErrors> {
        match (value, FieldErrors::new(problems)) {
            (_, Some(problems)) => Err(problems),
            (Some(value), None) => Ok(value),
            (None, None) => Err(FieldError::new("document", "could not be read").into()),
        }
    }

    /// The first problem.
    pub fn first(&self) -> &FieldError {
        self.0
            .first()
            .expect("never empty: made only with a problem")
    }

    /// Every problem.
    pub fn all(&self) -> &[FieldError] {
        &self.0
    }

    pub fn into_vec(self) -> Vec<FieldError> {
        self.0
    }
}

impl std::fmt::Display for FieldErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.first().fmt(f)
    }
}

impl std::error::Error for FieldErrors {}

impl From<FieldError> for FieldErrors {
    fn from(e: FieldError) -> Self {
        FieldErrors(vec![e])
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
