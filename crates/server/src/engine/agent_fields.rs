//! Bounds on every field an agent sends, checked before anything else reads
//! them: a registration's pool, name, instance, incarnation and labels, a
//! poll's list of running attempts, a report's error text and measured usage,
//! an agent's confinement. A value past
//! its bound is refused (400) with the field and the bound, and never echoed
//! back whole. Log chunks are bounded where they are stored (`logs.rs`), and
//! capacities against the pool's and the server's `max_agent`.

use corral_api::{AttemptUsage, PollRequest, RegisterRequest, ReportRequest};
use corral_core::error::{FieldError, check_name};
use corral_core::selector::check_label;
use corral_store::Measured;

/// Bytes of an instance or incarnation id (the agent makes ids of 32 or so).
pub const MAX_ID_BYTES: usize = 128;
/// Bytes of a name, a label's key or value.
pub const MAX_NAME_BYTES: usize = 63;
/// Labels of one agent.
pub const MAX_LABELS: usize = 64;
/// Attempts a poll may say are running (far more than any agent runs).
pub const MAX_RUNNING: usize = 10_000;
/// Bytes of a report's error text.
pub const MAX_ERROR_BYTES: usize = 4096;
/// Seconds of cpu or throttling one attempt may report (31,700 years).
pub const MAX_MEASURED_SECONDS: f64 = 1e12;

/// `text` is at most `max` bytes, or the refusal says so with its length.
fn bounded(path: &str, text: &str, max: usize) -> Result<(), FieldError> {
    if text.len() > max {
        return Err(FieldError::new(
            path,
            format!("{} bytes; at most {max} are allowed", text.len()),
        ));
    }
    Ok(())
}

/// An instance or incarnation: 1 to [`MAX_ID_BYTES`] letters, digits, '-',
/// '_' or '.'.
fn check_id(path: &str, id: &str) -> Result<(), FieldError> {
    bounded(path, id, MAX_ID_BYTES)?;
    let valid = !id.is_empty()
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !valid {
        return Err(FieldError::new(
            path,
            format!("{id:?} is not an id (1 to {MAX_ID_BYTES} letters, digits, '-', '_' or '.')"),
        ));
    }
    Ok(())
}

pub fn check_register(req: &RegisterRequest) -> Result<(), FieldError> {
    bounded("pool", &req.pool, MAX_NAME_BYTES)?;
    check_name("pool", &req.pool)?;
    bounded("name", &req.name, MAX_NAME_BYTES)?;
    check_name("name", &req.name)?;
    if let Some(instance) = &req.instance {
        check_id("instance", instance)?;
    }
    if let Some(incarnation) = &req.incarnation {
        check_id("incarnation", incarnation)?;
    }
    if req.labels.len() > MAX_LABELS {
        return Err(FieldError::new(
            "labels",
            format!(
                "{} labels; at most {MAX_LABELS} are allowed",
                req.labels.len()
            ),
        ));
    }
    for (key, value) in &req.labels {
        bounded("labels", key, MAX_NAME_BYTES)
            .map_err(|e| FieldError::new(e.path, format!("a key of {}", e.message)))?;
        check_label("labels", key, value)?;
    }
    if let Some(c) = &req.confinement {
        if !matches!(c.cgroup.as_str(), "v2" | "v1" | "none") {
            return Err(FieldError::new(
                "confinement.cgroup",
                "must be one of v2, v1, none",
            ));
        }
        bounded("confinement.user", &c.user, MAX_NAME_BYTES)?;
        if c.user.is_empty()
            || !c
                .user
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "._- ".contains(ch))
        {
            return Err(FieldError::new(
                "confinement.user",
                "must be letters, digits, '.', '_', '-' or spaces",
            ));
        }
    }
    Ok(())
}

pub fn check_poll(req: &PollRequest) -> Result<(), FieldError> {
    if req.running.len() > MAX_RUNNING {
        return Err(FieldError::new(
            "running",
            format!(
                "{} attempts; at most {MAX_RUNNING} are allowed",
                req.running.len()
            ),
        ));
    }
    Ok(())
}

pub fn check_report(req: &ReportRequest) -> Result<(), FieldError> {
    bounded("outcome", &req.outcome, MAX_NAME_BYTES)?;
    if let Some(error) = &req.error {
        bounded("error", error, MAX_ERROR_BYTES)?;
    }
    if let Some(u) = &req.usage {
        for (path, seconds) in [
            ("usage.cpu_seconds", u.cpu_seconds),
            ("usage.throttled_seconds", u.throttled_seconds),
        ] {
            if !(seconds.is_finite() && (0.0..=MAX_MEASURED_SECONDS).contains(&seconds)) {
                return Err(FieldError::new(
                    path,
                    format!("must be a number of seconds from 0 to {MAX_MEASURED_SECONDS:e}"),
                ));
            }
        }
    }
    Ok(())
}

/// What an agent measured, as the store keeps it: seconds in microseconds.
pub fn measured(u: &AttemptUsage) -> Measured {
    let micros = |seconds: f64| (seconds * 1e6).round() as u64;
    Measured {
        cpu_micros: micros(u.cpu_seconds),
        memory_peak_bytes: u.memory_peak_bytes,
        throttled_micros: micros(u.throttled_seconds),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use corral_api::ResourcesView;

    use super::*;

    fn register() -> RegisterRequest {
        RegisterRequest {
            pool: "linux".into(),
            name: "a-1".into(),
            instance: Some("19a7c-2f".into()),
            incarnation: Some("0f".repeat(16)),
            capacity: ResourcesView {
                cpu_millis: 1000,
                memory_mib: 1024,
                gpu: 0,
            },
            labels: BTreeMap::from([("os".into(), "linux".into())]),
            confinement: None,
        }
    }

    #[test]
    fn each_registration_field_is_bounded_and_named() {
        check_register(&register()).expect("a valid registration");
        let huge = "x".repeat(1 << 20);
        type Set = fn(&mut RegisterRequest, String);
        let cases: [(&str, Set); 6] = [
            ("pool", |r, v| r.pool = v),
            ("name", |r, v| r.name = v),
            ("instance", |r, v| r.instance = Some(v)),
            ("incarnation", |r, v| r.incarnation = Some(v)),
            ("labels", |r, v| {
                r.labels.insert(v, "x".into());
            }),
            ("labels.os", |r, v| {
                r.labels.insert("os".into(), v);
            }),
        ];
        for (field, set) in cases {
            let mut req = register();
            set(&mut req, huge.clone());
            let e = check_register(&req).expect_err(field);
            assert_eq!(e.path, field);
            assert!(e.message.len() < 200, "{field}: {}", e.message);
        }
        let mut many = register();
        many.labels = (0..=MAX_LABELS)
            .map(|i| (format!("k{i}"), "v".into()))
            .collect();
        let e = check_register(&many).expect_err("too many labels");
        assert_eq!(
            (e.path.as_str(), e.message.as_str()),
            ("labels", "65 labels; at most 64 are allowed")
        );
        let mut odd = register();
        odd.instance = Some("a b".into());
        assert_eq!(check_register(&odd).expect_err("a space").path, "instance");
    }

    #[test]
    fn polls_and_reports_are_bounded() {
        let poll = PollRequest {
            running: vec![1; MAX_RUNNING + 1],
            wait_ms: 0,
        };
        assert_eq!(check_poll(&poll).expect_err("too many").path, "running");
        let report = ReportRequest {
            outcome: "failed".into(),
            exit_code: Some(1),
            error: Some("e".repeat(MAX_ERROR_BYTES + 1)),
            usage: None,
        };
        let e = check_report(&report).expect_err("too long");
        assert_eq!(
            (e.path.as_str(), e.message.as_str()),
            ("error", "4097 bytes; at most 4096 are allowed")
        );
    }
}
