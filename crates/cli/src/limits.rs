//! `corral server`'s bounds on what comes in, each a flag with a default.

use std::time::Duration;

use corral_core::limits::Limits;
use corral_core::resources::{Resources, parse_cpu, parse_memory};
use corral_server::engine::OutputLimits;
use corral_server::http::HttpLimits;

use crate::parse_duration;

#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Limits")]
pub struct LimitArgs {
    /// Largest request body, e.g. 1Mi.
    #[arg(long, default_value = "1Mi", value_parser = parse_size)]
    max_body: u64,
    /// Time a client has to send a request's headers.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    header_timeout: Duration,
    /// Time a client has to send a request's body.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    body_timeout: Duration,
    /// Open connections at most; more are closed at once [default: 4096, or
    /// the open-file limit less 256 if that is lower].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Open connections from one client address at most [default: a
    /// sixteenth of --max-connections].
    #[arg(long)]
    max_connections_per_address: Option<usize>,
    /// Places under --max-connections that only addresses holding fewer than
    /// 4 connections may take, so agents and health probes get in while
    /// others hoard [default: an eighth of --max-connections].
    #[arg(long)]
    reserved_connections: Option<usize>,
    /// Largest chunk of output an agent may send in one call, e.g. 256Ki.
    #[arg(long, default_value = "256Ki", value_parser = parse_size)]
    max_log_chunk: u64,
    /// Output kept per attempt; past it the output is cut with a marker line
    /// and the step goes on.
    #[arg(long, default_value = "64Mi", value_parser = parse_size)]
    max_output: u64,
    /// Output kept per run, all its steps and attempts together; past it the
    /// server stores a marker line and drops the rest.
    #[arg(long, default_value = "1Gi", value_parser = parse_size)]
    max_run_output: u64,
    /// The most an agent may declare, as cpu=N,memory=Q,gpu=N; a pool's
    /// `max_agent` may lower it.
    #[arg(long, default_value = "cpu=1024,memory=16Ti,gpu=64", value_parser = parse_capacity)]
    max_agent: Resources,
    /// Steps a pipeline may have.
    #[arg(long, default_value_t = Limits::default().max_steps)]
    max_steps: usize,
    /// Distinct pool selectors a pipeline may use (groups of a run).
    #[arg(long, default_value_t = Limits::default().max_selectors)]
    max_selectors: usize,
    /// Bytes of a step's `run` text (Linux takes at most 131071).
    #[arg(long, default_value_t = Limits::default().max_command_bytes)]
    max_command_bytes: usize,
    /// Bytes a step's `env` adds to its environment.
    #[arg(long, default_value_t = Limits::default().max_env_bytes)]
    max_env_bytes: usize,
    /// Runs one submit may make: a matrix's combinations times `count`.
    #[arg(long, default_value_t = Limits::default().max_runs_per_submit)]
    max_runs_per_submit: usize,
    /// How long a lost worker is kept in the store before it is deleted.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    lost_worker_retention: Duration,
    /// The longest a step may run, e.g. 24h: the timeout of a step that sets
    /// none (enforced by its agent) and the largest a step may set. A hard
    /// budget admits runs on it.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    max_step_duration: Duration,
}

impl LimitArgs {
    /// The connection caps: those given, the others sized from the global
    /// cap, itself sized from the open-file limit (raised to its hard limit).
    pub fn http(&self) -> HttpLimits {
        let open_files = corral_server::http::raise_open_files_limit();
        let sized = match self.max_connections {
            Some(max) => HttpLimits {
                max_connections: max,
                max_connections_per_address: max / 16,
                reserved_connections: max / 8,
                ..HttpLimits::default()
            },
            None => HttpLimits::sized_for(open_files),
        };
        HttpLimits {
            max_body_bytes: usize::try_from(self.max_body).unwrap_or(usize::MAX),
            header_timeout: self.header_timeout,
            body_timeout: self.body_timeout,
            max_connections_per_address: self
                .max_connections_per_address
                .unwrap_or(sized.max_connections_per_address),
            reserved_connections: self
                .reserved_connections
                .unwrap_or(sized.reserved_connections),
            ..sized
        }
    }

    pub fn output(&self) -> OutputLimits {
        OutputLimits {
            max_chunk_bytes: usize::try_from(self.max_log_chunk).unwrap_or(usize::MAX),
            max_output_bytes: self.max_output,
            max_run_output_bytes: self.max_run_output,
        }
    }

    pub fn lost_worker_retention(&self) -> Duration {
        self.lost_worker_retention
    }

    pub fn max_agent(&self) -> Resources {
        self.max_agent
    }

    /// The bounds on pipelines, checked against what Linux accepts.
    pub fn pipeline(&self) -> anyhow::Result<Limits> {
        let limits = Limits {
            max_steps: self.max_steps,
            max_selectors: self.max_selectors,
            max_command_bytes: self.max_command_bytes,
            max_env_bytes: self.max_env_bytes,
            max_step_secs: self.max_step_duration.as_secs(),
            max_runs_per_submit: self.max_runs_per_submit,
            ..Limits::default()
        };
        limits
            .validate()
            .map_err(|e| anyhow::anyhow!("--{}: {}", e.path.replace('_', "-"), e.message))?;
        Ok(limits)
    }
}

/// A size in bytes: `512`, `64Ki`, `1Mi`, `2Gi`.
fn parse_size(text: &str) -> Result<u64, String> {
    let (digits, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, ""),
    };
    let shift = match unit {
        "" => 0,
        "Ki" => 10,
        "Mi" => 20,
        "Gi" => 30,
        _ => {
            return Err(format!(
                "{text:?} is not a size (examples: 512, 64Ki, 1Mi, 2Gi)"
            ));
        }
    };
    digits
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| format!("{text:?} is not a size (examples: 512, 64Ki, 1Mi, 2Gi)"))
}

/// `cpu=64,memory=256Gi,gpu=8`; a dimension left out is not limited.
fn parse_capacity(text: &str) -> Result<Resources, String> {
    let mut limit = Resources::new(u64::MAX, u64::MAX, u64::MAX);
    for pair in text.split(',').filter(|p| !p.trim().is_empty()) {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("{pair:?} is not key=value"))?;
        let value = value.trim();
        match key.trim() {
            "cpu" => limit.cpu_millis = parse_cpu(value).map_err(|e| format!("cpu: {e}"))?,
            "memory" => {
                limit.memory_mib = parse_memory(value).map_err(|e| format!("memory: {e}"))?;
            }
            "gpu" => {
                limit.gpu = value
                    .parse()
                    .map_err(|_| format!("gpu: {value:?} is not a count"))?;
            }
            other => return Err(format!("{other:?} is not cpu, memory or gpu")),
        }
    }
    Ok(limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_capacities_parse_or_say_why_not() {
        assert_eq!(parse_size("1Mi"), Ok(1 << 20));
        assert_eq!(parse_size("512"), Ok(512));
        assert!(parse_size("1MB").expect_err("1MB").contains("not a size"));
        assert!(parse_size("99999999999Gi").is_err());
        let cap = parse_capacity("cpu=64,memory=256Gi").expect("capacity");
        assert_eq!(
            (cap.cpu_millis, cap.memory_mib, cap.gpu),
            (64_000, 256 * 1024, u64::MAX)
        );
        assert!(parse_capacity("disk=1").expect_err("disk").contains("disk"));
    }
}
