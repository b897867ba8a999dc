//! `corral sim FILE`: runs the real controller over a simulated workload with a
//! virtual clock (see `corral_core::sim`) and prints what each tenant and pool
//! got. Nothing is contacted; the same file and seed always print the same.

use anyhow::{Result, anyhow};
use corral_core::sim::{SimSpec, simulate};

use crate::output::{Format, structured};

/// Prints the report; fails when the controller broke an invariant.
pub fn run(file: &str, format: Format) -> Result<std::process::ExitCode> {
    let text = crate::read_input(file)?;
    let spec = SimSpec::from_yaml(&text).map_err(|e| anyhow!("{file}: {e}"))?;
    let report = simulate(&spec).map_err(|e| anyhow!("{file}: {e}"))?;
    match structured(&report, format)? {
        Some(text) => print!("{text}"),
        None => print!("{report}"),
    }
    Ok(if report.violations.is_empty() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}
