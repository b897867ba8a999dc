//! Throughput of the resource controller, on a generated world of 200 tenants
//! and 50 pools. Run with `cargo bench -p corral-core --bench controller`.
//!
//! Prints:
//! - (a) admissions per second of one `decide` on 100,000 queued runs with
//!   room for many thousands of them;
//! - (b) the time of one cycle for 10k, 100k and 1M queued runs with pools
//!   nearly full, to show that it follows the number of classes, not of runs;
//! - (c) the cost of `RunQueue` insert and remove per run, and of
//!   `admission_order` at 100k;
//! - (d) the incremental controller at 100k queued runs, pools nearly full:
//!   the full cycle beside the incremental one after nothing changed and
//!   after one run ended (its allocation released), each checked equal to
//!   the full decision on the same input.
//!
//! Generation is seeded: every run of the bench decides on the same input, and
//! a fingerprint of each outcome is printed so that a change meant to be
//! behaviour-preserving can be checked. `CORRAL_BENCH_DUMP=dir` also writes
//! each outcome in full to `dir`. `CORRAL_BENCH_REPS=n` sets the repetitions
//! (default 7): times are their median, with the fastest in parentheses (the
//! less disturbed by other work on the machine). `CORRAL_BENCH_ONLY=a`, `b`, `c` or `d` runs
//! one part and `CORRAL_BENCH_SIZES=100000` sets the queue lengths of (b) (for
//! profiling).

mod common;

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

use corral_core::clock::Timestamp;
use corral_core::controller::{
    AgentView, Controller, OpenAllocation, Outcome, Policy, PoolView, Snapshot, TenantView,
    admission_order, decide,
};
use corral_core::ids::{RunId, WorkerId};
use corral_core::money::Money;
use corral_core::pool::{PoolState, Price};
use corral_core::queue::{QueuedRun, RunQueue};
use corral_core::request::GroupRequest;
use corral_core::resources::Resources;
use corral_core::selector::{PlacementPolicy, PoolSelector};
use corral_core::tenant::{Quota, TenantSpec};

use common::reps;

const TENANTS: usize = 200;
const POOLS: usize = 50;
const GI: u64 = 1024;
const MINUTE: i64 = 60_000;
/// The time of every cycle.
const NOW: Timestamp = Timestamp(1_000_000_000_000);

/// splitmix64: small, seeded and good enough to draw a world.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

const ZONES: [&str; 4] = ["us-a", "us-b", "eu-a", "eu-b"];
const DRAINING: [usize; 3] = [7, 21, 44];
const STATIC: [usize; 2] = [13, 37];

fn is_gpu_pool(i: usize) -> bool {
    i.is_multiple_of(8)
}

/// The pools, empty. `scale` multiplies capacities (and static agents).
fn pools(scale: u64, max_workers: u32) -> Vec<PoolView> {
    let mut rng = Rng(7);
    (0..POOLS)
        .map(|i| {
            let mut labels = BTreeMap::from([
                ("zone".to_string(), ZONES[i % ZONES.len()].to_string()),
                ("os".to_string(), "linux".to_string()),
                (
                    "size".to_string(),
                    if i % 3 == 0 { "large" } else { "small" }.to_string(),
                ),
            ]);
            let cores = *rng.pick(&[64u64, 128, 256, 512]) * scale;
            let mut capacity = Resources::new(cores * 1000, cores * 4 * GI, 0);
            if is_gpu_pool(i) {
                labels.insert(
                    "gpu".to_string(),
                    if i % 16 == 0 { "a100" } else { "h100" }.to_string(),
                );
                capacity.gpu = 16 * scale;
            }
            let agents = STATIC.contains(&i).then(|| {
                (0..16 * scale)
                    .map(|a| AgentView {
                        id: WorkerId((i as i64) * 100_000 + a as i64),
                        capacity: Resources::new(32_000, 128 * GI, 0),
                        used: Resources::ZERO,
                    })
                    .collect::<Vec<_>>()
            });
            if let Some(agents) = &agents {
                capacity = agents
                    .iter()
                    .fold(Resources::ZERO, |acc, a| acc.saturating_add(&a.capacity));
            }
            PoolView {
                name: format!("pool-{i:02}"),
                state: if DRAINING.contains(&i) {
                    PoolState::Draining
                } else {
                    PoolState::Active
                },
                labels,
                price: Price {
                    cpu_hour: 0.02 + 0.01 * rng.range(0, 4) as f64,
                    memory_gib_hour: 0.002 + 0.001 * rng.range(0, 4) as f64,
                    gpu_hour: 1.0 + 0.5 * rng.range(0, 4) as f64,
                },
                capacity,
                max_workers,
                used: Resources::ZERO,
                workers: 0,
                elastic: agents.is_some(),
                agents,
                reserved: None,
            }
        })
        .collect()
}

fn pool_name(i: usize) -> String {
    format!("pool-{i:02}")
}

struct World {
    tenants: Vec<TenantView>,
    /// Per tenant, its shapes (the groups of a run).
    shapes: Vec<Vec<Vec<GroupRequest>>>,
    /// Cumulative weights to draw a tenant: a few tenants queue most runs.
    draw: Vec<f64>,
}

/// 200 tenants with varied weights, quotas, pool limits and allowed pools, and
/// 20 to 50 shapes of run each. `scale` multiplies quotas.
fn world(scale: u64) -> World {
    let mut rng = Rng(42);
    let mut tenants = Vec::with_capacity(TENANTS);
    let mut shapes = Vec::with_capacity(TENANTS);
    for i in 0..TENANTS {
        let mut spec = TenantSpec::unlimited(&format!("t-{i:03}"));
        spec.weight = *rng.pick(&[1, 1, 1, 2, 2, 4, 8]);
        let allowed: Option<Vec<usize>> = rng.chance(0.15).then(|| {
            let n = rng.range(10, 30) as usize;
            let start = rng.below(POOLS);
            (0..n).map(|k| (start + k * 3) % POOLS).collect()
        });
        spec.allowed_pools = allowed
            .as_ref()
            .map(|a| a.iter().map(|&p| pool_name(p)).collect());
        let mut view = TenantView::new(&spec, [0.0; 3]);
        view.recent = [
            rng.range(0, 200_000) as f64,
            rng.range(0, 800_000) as f64,
            rng.range(0, 4) as f64,
        ];
        if rng.chance(0.3) {
            let cores = rng.range(32, 256) * scale;
            view.quota = Quota {
                resources: Resources::new(cores * 1000, cores * 4 * GI, 8 * scale),
                runs: if rng.chance(0.5) {
                    rng.range(50, 500) * scale
                } else {
                    u64::MAX
                },
            };
        }
        if rng.chance(0.2) {
            for _ in 0..rng.range(1, 3) {
                let cores = rng.range(16, 64) * scale;
                view.pool_limits.insert(
                    pool_name(rng.below(POOLS)),
                    Quota {
                        resources: Resources::new(cores * 1000, u64::MAX, u64::MAX),
                        runs: rng.range(10, 50) * scale,
                    },
                );
            }
        }
        let usable: Vec<usize> = allowed.clone().unwrap_or_else(|| (0..POOLS).collect());
        let n = rng.range(20, 50) as usize;
        shapes.push((0..n).map(|_| shape(&mut rng, &usable)).collect());
        tenants.push(view);
    }
    let mut acc = 0.0;
    let draw = (0..TENANTS)
        .map(|i| {
            acc += 1.0 / ((i + 1) as f64).powf(0.8);
            acc
        })
        .collect();
    World {
        tenants,
        shapes,
        draw,
    }
}

fn group(rng: &mut Rng, index: u32, usable: &[usize]) -> GroupRequest {
    let cpu = *rng.pick(&[500, 500, 1000, 1000, 1000, 2000, 2000, 4000, 8000]);
    let memory = *rng.pick(&[512, 1024, 2048, 2048, 4096, 8192, 16384]);
    let mut resources = Resources::new(cpu, memory, 0);
    let mut selector = PoolSelector::default();
    match rng.below(20) {
        0..=8 => {}
        9..=12 => {
            selector
                .labels
                .insert("zone".into(), rng.pick(&ZONES).to_string());
        }
        13 | 14 => {
            selector
                .labels
                .insert("gpu".into(), rng.pick(&["a100", "h100"]).to_string());
            resources.gpu = rng.range(1, 2);
        }
        15 | 16 => selector.name = Some(pool_name(*rng.pick(usable))),
        17 | 18 => {
            selector.labels.insert("size".into(), "large".into());
            selector.placement =
                Some(*rng.pick(&[PlacementPolicy::Spread, PlacementPolicy::Cheapest]));
        }
        _ => {
            selector
                .labels
                .insert("zone".into(), rng.pick(&ZONES).to_string());
            selector.placement = Some(PlacementPolicy::Cheapest);
        }
    }
    GroupRequest {
        index,
        selector,
        resources,
        steps: vec![index as usize],
    }
}

fn shape(rng: &mut Rng, usable: &[usize]) -> Vec<GroupRequest> {
    let groups = if rng.chance(0.15) { 2 } else { 1 };
    (0..groups).map(|g| group(rng, g, usable)).collect()
}

impl World {
    fn tenant_index(&self, rng: &mut Rng) -> usize {
        let total = self.draw.last().copied().unwrap_or(1.0);
        let x = rng.unit() * total;
        self.draw.partition_point(|&c| c < x).min(TENANTS - 1)
    }

    /// `n` queued runs: skewed across tenants and their shapes, three
    /// priorities, enqueued over the last 20 minutes (most are past the
    /// default starvation threshold of 5 minutes), a few readmissions.
    fn runs(&self, n: usize, seed: u64) -> Vec<QueuedRun> {
        let mut rng = Rng(seed);
        (0..n)
            .map(|i| {
                let t = self.tenant_index(&mut rng);
                let shapes = &self.shapes[t];
                let s = rng.below(shapes.len()).min(rng.below(shapes.len()));
                let mut groups = shapes[s].clone();
                let readmit = rng.chance(0.005);
                if readmit && groups.len() > 1 {
                    groups.truncate(1);
                }
                let priority = match rng.below(20) {
                    0 => 100,
                    1..=5 => 10,
                    _ => 0,
                };
                QueuedRun {
                    id: RunId(i as i64 + 1),
                    tenant: self.tenants[t].name.clone(),
                    priority,
                    enqueued_at: NOW.plus_millis(-(rng.below(20 * MINUTE as usize) as i64) - 1),
                    groups,
                    readmit,
                    bound: Money::ZERO,
                }
            })
            .collect()
    }

    fn snapshot(&self, pools: Vec<PoolView>) -> Snapshot {
        Snapshot {
            pools: pools.into_iter().map(|p| (p.name.clone(), p)).collect(),
            tenants: self
                .tenants
                .iter()
                .map(|t| (t.name.clone(), t.clone()))
                .collect(),
        }
    }

    /// Open allocations that fill every pool (or agent) until less than two
    /// cores are free, held by tenants drawn as for runs.
    fn fill(&self, pools: &[PoolView]) -> Vec<OpenAllocation> {
        let mut rng = Rng(99);
        let mut open = Vec::new();
        let mut next_run = 1_000_000_000i64;
        let mut place =
            |rng: &mut Rng, pool: &str, free: &mut Resources, worker: Option<WorkerId>| {
                let mut misses = 0;
                while misses < 50 {
                    let want = Resources::new(
                        *rng.pick(&[500, 1000, 2000, 4000, 8000]),
                        *rng.pick(&[512, 1024, 2048, 4096, 8192]),
                        u64::from(free.gpu > 0),
                    );
                    if !want
                        .saturating_add(&Resources::new(1500, 0, 0))
                        .fits_in(free)
                    {
                        misses += 1;
                        continue;
                    }
                    *free = free.saturating_sub(&want);
                    let t = self.tenant_index(rng);
                    next_run += 1;
                    open.push(OpenAllocation {
                        run: RunId(next_run),
                        tenant: self.tenants[t].name.clone(),
                        pool: pool.to_string(),
                        resources: want,
                        worker,
                    });
                }
            };
        for p in pools {
            match &p.agents {
                Some(agents) => {
                    for a in agents {
                        let mut free = a.capacity;
                        place(&mut rng, &p.name, &mut free, Some(a.id));
                    }
                }
                None => {
                    let mut free = p.capacity;
                    place(&mut rng, &p.name, &mut free, None);
                }
            }
        }
        open
    }
}

fn queue_of(runs: &[QueuedRun]) -> RunQueue {
    let mut queue = RunQueue::new();
    for r in runs {
        queue.insert(r.clone());
    }
    queue
}

/// Times of repeated runs of one thing.
#[derive(Clone, Copy)]
struct Timing {
    median: Duration,
    min: Duration,
}

impl Timing {
    fn of(mut times: Vec<Duration>) -> Timing {
        times.sort();
        Timing {
            median: times[times.len() / 2],
            min: times[0],
        }
    }
}

/// Runs `f` `reps` times on what `setup` makes afresh each time (not timed);
/// the times and the last result, dropped untimed.
fn time_with<S, T>(
    reps: usize,
    mut setup: impl FnMut() -> S,
    mut f: impl FnMut(S) -> T,
) -> (Timing, T) {
    let mut times = Vec::with_capacity(reps);
    let mut last = None;
    for _ in 0..reps {
        let input = setup();
        let start = Instant::now();
        let out = f(input);
        times.push(start.elapsed());
        last = Some(out);
    }
    (Timing::of(times), last.expect("at least one repetition"))
}

fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> (Timing, T) {
    time_with(reps, || (), |()| f())
}

fn fingerprint(name: &str, outcome: &Outcome) -> String {
    let text = format!("{outcome:#?}");
    if let Ok(dir) = std::env::var("CORRAL_BENCH_DUMP") {
        let path = std::path::Path::new(&dir).join(format!("{name}.txt"));
        if let Err(e) = std::fs::write(&path, &text) {
            eprintln!("cannot write {}: {e}", path.display());
        }
    }
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// How many classes wait for each reason code, most first.
fn by_code(outcome: &Outcome) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for reason in outcome.waiting.values() {
        *counts.entry(format!("{:?}", reason.code)).or_default() += 1;
    }
    let mut counts: Vec<(String, usize)> = counts.into_iter().collect();
    counts.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let parts: Vec<String> = counts.iter().map(|(c, n)| format!("{c} {n}")).collect();
    parts.join(", ")
}

/// Whether part `part` is to run.
fn part(part: &str) -> bool {
    std::env::var("CORRAL_BENCH_ONLY").map_or(true, |only| only == part)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

/// The snapshot and queue a server has after applying `outcome`: admitted
/// runs hold allocations, rejected ones are gone.
fn applied(
    runs: &[QueuedRun],
    open: &mut Vec<OpenAllocation>,
    queue: &mut RunQueue,
    outcome: &Outcome,
) {
    for a in &outcome.admitted {
        let Some(run) = usize::try_from(a.run.0 - 1).ok().and_then(|i| runs.get(i)) else {
            continue;
        };
        queue.remove(a.run);
        for p in &a.placements {
            open.push(OpenAllocation {
                run: a.run,
                tenant: run.tenant.clone(),
                pool: p.pool.clone(),
                resources: p.resources,
                worker: p.worker,
            });
        }
    }
    for (run, _) in &outcome.rejected {
        queue.remove(*run);
    }
}

/// (d): the world of (b) at 100,000 queued runs. The controller is kept from
/// a first cycle; its decisions are applied; the cycles timed are the next
/// one with nothing changed, and the next one after one run ended.
fn incremental(reps: usize, policy: &Policy, fingerprints: &mut Vec<(String, String)>) {
    let n = std::env::var("CORRAL_BENCH_SIZES")
        .ok()
        .and_then(|v| {
            v.split(',')
                .filter_map(|n| n.trim().parse().ok())
                .next_back()
        })
        .unwrap_or(100_000);
    let normal = world(1);
    let empty = pools(1, 2_000);
    let mut open = normal.fill(&empty);
    let base = normal.snapshot(empty);
    let runs = normal.runs(n, 2);
    let mut queue = queue_of(&runs);
    let snapshot = |open: &[OpenAllocation]| {
        let mut snap = base.clone();
        snap.charge(open);
        snap
    };
    let mut controller = Controller::new();
    let first = controller.decide(&snapshot(&open), &queue, NOW, policy);
    applied(&runs, &mut open, &mut queue, &first);
    let steady = snapshot(&open);
    let classes = queue.classes().count();
    let settled = controller.decide(&steady, &queue, NOW, policy);
    let (t_full, full) = time(reps, || decide(&steady, &queue, NOW, policy));
    assert_eq!(
        settled, full,
        "the incremental controller decides as decide"
    );
    let (t_same, same) = time_with(
        reps,
        || controller.clone(),
        |mut c| {
            let outcome = c.decide(&steady, &queue, NOW, policy);
            (outcome, c.last_cycle(), c)
        },
    );
    assert_eq!(same.0, full, "nothing changed: the same decisions");
    let (t_copy, _) = time(reps, || full.clone());
    let limits: usize = full.waiting.values().map(|r| r.limits.len()).sum();
    let bytes: usize = full.waiting.values().map(|r| r.message.len()).sum();
    // One run ends: the one holding the middle allocation of a pool that is
    // not static (a static agent frees room only on itself).
    let ended = open
        .iter()
        .filter(|a| a.worker.is_none())
        .nth(open.len() / 3)
        .map(|a| a.run)
        .expect("allocations on pools that are not static");
    let after: Vec<OpenAllocation> = open.iter().filter(|a| a.run != ended).cloned().collect();
    let freed: Vec<&OpenAllocation> = open.iter().filter(|a| a.run == ended).collect();
    let after_snap = snapshot(&after);
    let (t_full_after, full_after) = time(reps, || decide(&after_snap, &queue, NOW, policy));
    let (t_one, one) = time_with(
        reps,
        || controller.clone(),
        |mut c| {
            let outcome = c.decide(&after_snap, &queue, NOW, policy);
            (outcome, c.last_cycle(), c)
        },
    );
    assert_eq!(one.0, full_after, "one run ended: the same decisions");
    println!();
    println!(
        "(d) incremental controller: {} queued runs in {classes} classes, pools nearly full",
        queue.len()
    );
    println!(
        "    full cycle                        {:>8.1} ms ({:.1})",
        ms(t_full.median),
        ms(t_full.min)
    );
    println!(
        "    copying its outcome               {:>8.1} ms ({:.1}): {} reasons, {limits} limits, {bytes} bytes of messages",
        ms(t_copy.median),
        ms(t_copy.min),
        full.waiting.len()
    );
    println!(
        "    incremental, nothing changed      {:>8.1} ms ({:.1}): {} verdicts reused, {} evaluated",
        ms(t_same.median),
        ms(t_same.min),
        same.1.reused,
        same.1.evaluated
    );
    println!(
        "    full cycle after one run ended    {:>8.1} ms ({:.1}): admitted {}",
        ms(t_full_after.median),
        ms(t_full_after.min),
        full_after.admitted.len()
    );
    println!(
        "    incremental, after one run ended  {:>8.1} ms ({:.1}): {} verdicts reused, {} evaluated (run {ended} freed {} in pool {})",
        ms(t_one.median),
        ms(t_one.min),
        one.1.reused,
        one.1.evaluated,
        freed.first().map(|a| a.resources).unwrap_or_default(),
        freed.first().map(|a| a.pool.as_str()).unwrap_or_default()
    );
    fingerprints.push(("d".into(), fingerprint("d", &one.0)));
}

fn main() {
    let reps = reps();
    let policy = Policy::default();
    let mut fingerprints: Vec<(String, String)> = Vec::new();
    println!(
        "corral-core controller bench: {TENANTS} tenants, {POOLS} pools ({} draining, {} static), one thread, median (min) of {reps}",
        DRAINING.len(),
        STATIC.len()
    );

    // (a) Admission throughput.
    if part("a") {
        let big = world(8);
        let runs = big.runs(100_000, 1);
        let queue = queue_of(&runs);
        let snap = big.snapshot(pools(8, 20_000));
        let (t, outcome) = time(reps, || decide(&snap, &queue, NOW, &policy));
        let classes = queue.classes().count();
        let admitted = outcome.admitted.len();
        let decisions = admitted + outcome.rejected.len() + outcome.waiting.len();
        println!();
        println!(
            "(a) admission throughput: {} queued runs in {classes} classes, room for many",
            queue.len()
        );
        println!(
            "    decide {:.1} ms ({:.1}): admitted {admitted}, rejected {}, classes waiting {}, reservations {}",
            ms(t.median),
            ms(t.min),
            outcome.rejected.len(),
            outcome.waiting.len(),
            outcome.reservations.len()
        );
        println!(
            "    {:.0} ({:.0}) admissions/s, {:.0} ({:.0}) decisions/s (admitted + rejected + classes waiting)",
            per_sec(admitted, t.median),
            per_sec(admitted, t.min),
            per_sec(decisions, t.median),
            per_sec(decisions, t.min),
        );
        println!("    classes waiting by reason: {}", by_code(&outcome));
        fingerprints.push(("a".into(), fingerprint("a", &outcome)));
    }

    // (b) Cycle time against queue length, pools nearly full.
    if part("b") || part("c") {
        let normal = world(1);
        let empty = pools(1, 2_000);
        let open = normal.fill(&empty);
        let mut snap = normal.snapshot(empty);
        snap.charge(&open);
        let free: Resources = snap.pools.values().fold(Resources::ZERO, |acc, p| {
            acc.saturating_add(&p.capacity.saturating_sub(&p.used))
        });
        if part("b") {
            println!();
            println!(
                "(b) one cycle with pools nearly full ({} open allocations, {free} free in all)",
                open.len()
            );
            println!(
                "    {:>9} {:>8} {:>10} {:>8} {:>10} {:>9} {:>9} {:>8} {:>8}",
                "queued",
                "classes",
                "cycle ms",
                "(min)",
                "ns/queued",
                "µs/class",
                "admitted",
                "rejected",
                "waiting"
            );
        }
        let sizes: Vec<usize> = std::env::var("CORRAL_BENCH_SIZES")
            .ok()
            .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
            .unwrap_or_else(|| vec![10_000, 100_000, 1_000_000]);
        let mut rows: Vec<(usize, usize, Timing)> = Vec::new();
        for n in sizes.into_iter().filter(|_| part("b")) {
            let runs = normal.runs(n, 2);
            let queue = queue_of(&runs);
            drop(runs);
            let classes = queue.classes().count();
            let (t, outcome) = time(reps, || decide(&snap, &queue, NOW, &policy));
            println!(
                "    {:>9} {:>8} {:>10.1} {:>8.1} {:>10.1} {:>9.2} {:>9} {:>8} {:>8}",
                n,
                classes,
                ms(t.median),
                ms(t.min),
                t.median.as_secs_f64() * 1e9 / n as f64,
                t.median.as_secs_f64() * 1e6 / classes as f64,
                outcome.admitted.len(),
                outcome.rejected.len(),
                outcome.waiting.len()
            );
            fingerprints.push((format!("b{n}"), fingerprint(&format!("b{n}"), &outcome)));
            rows.push((n, classes, t));
        }
        for pair in rows.windows(2) {
            let ((n0, c0, t0), (n1, c1, t1)) = (pair[0], pair[1]);
            println!(
                "    {n0} -> {n1} queued (x{:.0}): classes x{:.2}, cycle time x{:.2}",
                n1 as f64 / n0 as f64,
                c1 as f64 / c0 as f64,
                t1.median.as_secs_f64() / t0.median.as_secs_f64()
            );
        }

        // (c) Queue operations and admission order.
        if part("c") {
            let runs = normal.runs(100_000, 3);
            let n = runs.len();
            println!();
            println!("(c) queue operations at {n} queued runs");
            let (t_insert, queue) = time_with(
                reps,
                || runs.clone(),
                |batch| {
                    let mut q = RunQueue::new();
                    for r in batch {
                        q.insert(r);
                    }
                    q
                },
            );
            let mut order: Vec<RunId> = runs.iter().map(|r| r.id).collect();
            let mut rng = Rng(5);
            for i in (1..order.len()).rev() {
                order.swap(i, rng.below(i + 1));
            }
            let (t_remove, emptied) = time_with(
                reps,
                || queue.clone(),
                |mut q| {
                    for &id in &order {
                        q.remove(id);
                    }
                    q
                },
            );
            assert!(emptied.is_empty());
            let (t_order, positions) = time(reps, || admission_order(&snap, &queue));
            let ns = |d: Duration| d.as_secs_f64() * 1e9 / n as f64;
            println!(
                "    insert {:.0} ({:.0}) ns/run into an empty queue ({} classes at the end)",
                ns(t_insert.median),
                ns(t_insert.min),
                queue.classes().count()
            );
            println!(
                "    remove {:.0} ({:.0}) ns/run, in random order down to empty",
                ns(t_remove.median),
                ns(t_remove.min)
            );
            println!(
                "    admission_order {:.1} ({:.1}) ms, {:.0} ns/run, {} positions",
                ms(t_order.median),
                ms(t_order.min),
                ns(t_order.median),
                positions.len()
            );
            let mut h = DefaultHasher::new();
            positions.hash(&mut h);
            fingerprints.push(("order".into(), format!("{:016x}", h.finish())));
        }
    }

    // (d) The incremental controller.
    if part("d") {
        incremental(reps, &policy, &mut fingerprints);
    }

    println!();
    let prints: Vec<String> = fingerprints
        .iter()
        .map(|(n, f)| format!("{n}={f}"))
        .collect();
    println!("fingerprints: {}", prints.join(" "));
}
