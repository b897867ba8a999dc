//! Rendering stored log chunks as the text users read.

use corral_store::{LogChunk, RunDetail};

/// Joins a run's chunks step by step and attempt by attempt. With `prefixed`,
/// every line carries its step's name (`build | ...`); a step's later attempts
/// are introduced by a `--- attempt N ---` line.
pub fn render(detail: &RunDetail, chunks: &[LogChunk], prefixed: bool) -> String {
    let mut out = String::new();
    for step in &detail.steps {
        let attempts: Vec<_> = detail
            .attempts
            .iter()
            .filter(|a| a.step_idx == step.idx)
            .collect();
        for attempt in &attempts {
            let text: String = chunks
                .iter()
                .filter(|c| c.attempt_id == attempt.id)
                .map(|c| c.data.as_str())
                .collect();
            if attempts.len() > 1 {
                let header = format!("--- attempt {} ---\n", attempt.number);
                push(&mut out, &header, prefixed.then_some(step.name.as_str()));
            }
            push(&mut out, &text, prefixed.then_some(step.name.as_str()));
        }
    }
    out
}

fn push(out: &mut String, text: &str, prefix: Option<&str>) {
    match prefix {
        None => out.push_str(text),
        Some(name) => {
            for line in text.split_inclusive('\n') {
                out.push_str(name);
                out.push_str(" | ");
                out.push_str(line);
            }
            if !text.is_empty() && !text.ends_with('\n') {
                out.push('\n');
            }
        }
    }
}
