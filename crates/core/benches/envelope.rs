//! Time and peak heap of envelopes of large step DAGs. Run with
//! `cargo bench -p corral-core --bench envelope`.
//!
//! For each shape at 1,000 and 10,000 steps, prints the median (and fastest) time of one
//! `envelope` over `CORRAL_BENCH_REPS` runs (default 7), and the peak heap it allocates above
//! what was live before it (counted by the global allocator, so deterministic). Shapes:
//! - chain: each step needs the one before;
//! - fan-in: all steps but the last are independent, the last needs them all;
//! - random: each step needs up to 3 earlier steps drawn at random (seeded);
//! - random-local: each step needs up to 3 of the 50 steps before it (deeper, wider antichains).
//!
//! Demands are drawn at random (seeded), some of them zero. The envelope is printed as well, so
//! that a change meant to keep results can be checked.
//!
//! Then the core's part of a submit, on 1,000-step pipelines: `compile_with` (validation and
//! the DAG) and `ResourceRequest::for_pipeline` (groups and their envelopes), for a chain on one
//! pool and for steps on 1,000 distinct pool selectors, rejected under the default limits and
//! accepted when the limits allow them.

mod common;

use std::time::{Duration, Instant};

use corral_core::envelope::envelope;
use corral_core::limits::Limits;
use corral_core::pipeline::{PipelineSpec, Priority, StepSpec};
use corral_core::request::ResourceRequest;
use corral_core::resources::{ResourceSpec, Resources};
use corral_core::selector::PoolSelector;
use peak_alloc::PeakAlloc;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use common::reps;

#[global_allocator]
static HEAP: PeakAlloc = PeakAlloc;

/// A DAG: one demand per step and `(step, dependency)` edges.
type Dag = (Vec<Resources>, Vec<(usize, usize)>);

fn demands(n: usize, rng: &mut ChaCha8Rng) -> Vec<Resources> {
    (0..n)
        .map(|_| {
            Resources::new(
                rng.random_range(1..=64) * 250,
                rng.random_range(1..=64) * 128,
                u64::from(rng.random_bool(0.1)),
            )
        })
        .collect()
}

fn chain(n: usize, rng: &mut ChaCha8Rng) -> Dag {
    (demands(n, rng), (1..n).map(|i| (i, i - 1)).collect())
}

fn fan_in(n: usize, rng: &mut ChaCha8Rng) -> Dag {
    (demands(n, rng), (0..n - 1).map(|i| (n - 1, i)).collect())
}

/// Each step needs up to 3 steps drawn among the `window` steps before it.
fn random(n: usize, window: usize, rng: &mut ChaCha8Rng) -> Dag {
    let mut needs = Vec::new();
    for step in 1..n {
        for _ in 0..rng.random_range(0..=3) {
            needs.push((step, step - rng.random_range(1..=step.min(window))));
        }
    }
    (demands(n, rng), needs)
}

/// A pipeline of `n` steps, a chain or independent steps each on a pool of its own.
fn pipeline(n: usize, chain: bool) -> PipelineSpec {
    let steps = (0..n)
        .map(|i| StepSpec {
            name: format!("s{i}"),
            run: "make".into(),
            needs: if chain && i > 0 {
                vec![format!("s{}", i - 1)]
            } else {
                Vec::new()
            },
            resources: ResourceSpec::default(),
            pool: (!chain).then(|| PoolSelector::named(&format!("pool-{i}"))),
            env: Default::default(),
            timeout: None,
            retries: 0,
        })
        .collect();
    PipelineSpec {
        name: "bench".into(),
        tenant: "default".into(),
        priority: Priority::default(),
        steps,
        matrix: Default::default(),
    }
}

/// Runs `f` `reps` times on what `setup` makes afresh each time (neither timed nor counted):
/// the median and fastest time, the peak heap above what was live before a run, and the last
/// result.
fn measure_with<S, T>(
    reps: usize,
    mut setup: impl FnMut() -> S,
    mut f: impl FnMut(S) -> T,
) -> (Duration, Duration, usize, T) {
    let mut times = Vec::with_capacity(reps);
    let mut peak = 0;
    let mut last = None;
    for _ in 0..reps {
        drop(last.take());
        let input = setup();
        let before = HEAP.current_usage();
        HEAP.reset_peak_usage();
        let start = Instant::now();
        let out = f(input);
        times.push(start.elapsed());
        peak = peak.max(HEAP.peak_usage() - before);
        last = Some(out);
    }
    times.sort();
    let last = last.expect("at least one repetition");
    (times[times.len() / 2], times[0], peak, last)
}

fn measure<T>(reps: usize, mut f: impl FnMut() -> T) -> (Duration, Duration, usize, T) {
    measure_with(reps, || (), |()| f())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() {
    let reps = reps();
    println!("corral-core envelope bench: one thread, median (fastest) of {reps}");
    println!(
        "{:>14} {:>7} {:>7} {:>10} {:>9} {:>12} {:>10}  envelope",
        "shape", "steps", "edges", "ms", "(min)", "peak bytes", "peak MiB"
    );
    for n in [1_000, 10_000] {
        let shapes: [(&str, Dag); 4] = [
            ("chain", chain(n, &mut ChaCha8Rng::seed_from_u64(1))),
            ("fan-in", fan_in(n, &mut ChaCha8Rng::seed_from_u64(2))),
            ("random", random(n, n, &mut ChaCha8Rng::seed_from_u64(3))),
            (
                "random-local",
                random(n, 50, &mut ChaCha8Rng::seed_from_u64(4)),
            ),
        ];
        for (name, (demands, needs)) in shapes {
            let (median, min, peak, result) = measure(reps, || envelope(&demands, &needs));
            println!(
                "{name:>14} {n:>7} {:>7} {:>10.3} {:>9.3} {peak:>12} {:>10.2}  {result}",
                needs.len(),
                ms(median),
                ms(min),
                mib(peak),
            );
        }
    }

    println!();
    println!(
        "{:>40} {:>10} {:>9} {:>12}  outcome",
        "submit path (1,000 steps)", "ms", "(min)", "peak bytes"
    );
    let default = Limits::default();
    let roomy = Limits {
        max_selectors: 1_000,
        ..Limits::default()
    };
    for (name, spec, limits) in [
        ("chain, one pool", pipeline(1_000, true), default),
        ("1,000 selectors", pipeline(1_000, false), default),
        ("1,000 selectors allowed", pipeline(1_000, false), roomy),
    ] {
        let (median, min, peak, compiled) =
            measure_with(reps, || spec.clone(), |spec| spec.compile_with(&limits));
        let outcome = match &compiled {
            Ok(p) => format!("compiled, {} steps", p.spec.steps.len()),
            Err(e) => format!("rejected: {e}"),
        };
        println!(
            "{:>40} {:>10.3} {:>9.3} {peak:>12}  {outcome}",
            format!("compile: {name}"),
            ms(median),
            ms(min),
        );
        if let Ok(p) = compiled {
            let (median, min, peak, request) = measure(reps, || ResourceRequest::for_pipeline(&p));
            println!(
                "{:>40} {:>10.3} {:>9.3} {peak:>12}  {} groups, total {}",
                format!("for_pipeline: {name}"),
                ms(median),
                ms(min),
                request.groups.len(),
                request.total(),
            );
        }
    }
}
