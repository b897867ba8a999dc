//! The envelope of 1,000-step DAGs stays small in memory: its network is linear in steps and
//! edges, where the transitive closure it once used was quadratic. Heap bytes are counted by the
//! global allocator, so the figures are the same on every run (the time is in the bench).
//!
//! One test only: the allocator's counters are shared by the whole process, and tests running in
//! parallel would add to each other's peaks.

use corral_core::envelope::envelope;
use corral_core::resources::Resources;
use peak_alloc::PeakAlloc;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

#[global_allocator]
static HEAP: PeakAlloc = PeakAlloc;

const STEPS: usize = 1_000;
const LIMIT: usize = 50 * 1024 * 1024;

/// The peak heap `f` allocates above what was live before it, and its result.
fn peak_of<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = HEAP.current_usage();
    HEAP.reset_peak_usage();
    let out = f();
    (HEAP.peak_usage() - before, out)
}

/// Demands that differ per step and per dimension, so that each dimension has its own maximum.
fn demand(i: usize) -> Resources {
    let i = i as u64;
    Resources::new(100 + (i * 37) % 1000, 64 + (i * 101) % 4096, i % 3)
}

#[test]
fn envelopes_of_1000_step_dags_peak_under_50_mib() {
    // A chain: one step at a time, so the envelope is the largest step in each dimension.
    let demands: Vec<Resources> = (0..STEPS).map(demand).collect();
    let needs: Vec<(usize, usize)> = (1..STEPS).map(|i| (i, i - 1)).collect();
    let (peak, chain) = peak_of(|| envelope(&demands, &needs));
    let largest = demands
        .iter()
        .fold(Resources::ZERO, |acc, d| Resources::max(&acc, d));
    assert_eq!(chain, largest, "chain");
    assert_eq!(chain, Resources::new(1099, 4151, 2), "chain");
    assert!(peak < LIMIT, "chain: peak heap {peak} bytes");

    // A fan-in: 999 parallel steps, then one that needs them all. Its gpu outweighs theirs.
    let mut demands: Vec<Resources> = (0..STEPS - 1).map(demand).collect();
    demands.push(Resources::new(50_000, 1024, 5_000));
    let needs: Vec<(usize, usize)> = (0..STEPS - 1).map(|i| (STEPS - 1, i)).collect();
    let (peak, fan_in) = peak_of(|| envelope(&demands, &needs));
    let parallel = demands[..STEPS - 1]
        .iter()
        .fold(Resources::ZERO, |acc, d| acc.saturating_add(d));
    assert_eq!(
        fan_in,
        Resources::max(&parallel, &demands[STEPS - 1]),
        "fan-in"
    );
    assert!(parallel.cpu_millis > 50_000 && parallel.gpu < 5_000);
    assert_eq!(fan_in.gpu, 5_000, "fan-in: the last step's gpu");
    assert!(peak < LIMIT, "fan-in: peak heap {peak} bytes");

    // A random DAG: each step needs up to 3 earlier steps. Its envelope lies between the
    // largest step and the sum of all steps in every dimension.
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let demands: Vec<Resources> = (0..STEPS).map(demand).collect();
    let mut needs = Vec::new();
    for step in 1..STEPS {
        for _ in 0..rng.random_range(0..=3) {
            needs.push((step, rng.random_range(0..step)));
        }
    }
    let (peak, random) = peak_of(|| envelope(&demands, &needs));
    let sum = demands
        .iter()
        .fold(Resources::ZERO, |acc, d| acc.saturating_add(d));
    let largest = demands
        .iter()
        .fold(Resources::ZERO, |acc, d| Resources::max(&acc, d));
    assert!(
        largest.fits_in(&random) && random.fits_in(&sum),
        "random: {random:?}"
    );
    assert!(random != sum && random != largest, "random: {random:?}");
    assert!(peak < LIMIT, "random: peak heap {peak} bytes");
}
