//! Resource envelopes of step DAGs.
//!
//! A pipeline is a DAG of steps, each with a resource demand. Steps that do not depend on each
//! other (directly or transitively) may run at the same time, so the *envelope* of a pipeline is
//! the worst-case concurrent demand: per resource dimension, the largest total demand of any set
//! of steps that can all be running at once.
//!
//! A set of steps can all be running at once exactly when none of them is an ancestor of another,
//! i.e. when the set is an *antichain* of the DAG's partial order. The envelope is therefore the
//! maximum-weight antichain, computed separately for cpu, memory and gpu (the peaks of different
//! dimensions may come from different antichains, which keeps the envelope a safe upper bound).
//!
//! # Method
//!
//! By the weighted form of Dilworth's theorem, the maximum weight of an antichain equals the
//! minimum number of chains (paths of the order, which may pass through steps without counting
//! them) needed to cover every step `v` at least `w(v)` times. That is a minimum flow with lower
//! bounds on the DAG itself, so its network is linear in steps + edges, with no transitive
//! closure: split each step `v` into `v_in -> v_out` with lower bound `w(v)` and no upper bound,
//! add `s -> v_in` and `v_out -> t` for every step and `u_out -> v_in` for every edge (`u` needed
//! by `v`), all unbounded. Paths through a step may exceed its weight, so a chain of the network
//! may skip steps, which is what covering the *transitive* order needs.
//!
//! The minimum flow is found by cancelling as much as possible of a feasible flow: the maximum
//! flow from `t` to `s` in its residual network, whose arcs are `t -> v_out` and `v_in -> s`
//! (what the flow sends from `v` to `t` and from `s` to `v`), `v_out -> v_in` (the flow through
//! `v` above `w(v)`), `v_in -> u_out` (the flow on each edge) and, unbounded, `v_in -> v_out` and
//! `u_out -> v_in`. So the envelope is the feasible flow's value less that maximum flow.
//!
//! - The feasible flow is built greedily in topological order (`StepOrder::feasible_flow`); it
//!   is already minimal for chains and fan-ins (in-trees), and when its value is the heaviest
//!   single step nothing is left to cancel.
//! - The maximum flow is Dinic's algorithm: breadth-first levels, then a blocking flow found
//!   depth-first with an explicit stack, so a long chain cannot overflow the call stack.
//! - The network has `2n + 2` vertices and `3n + e` arcs (and their reverses), stored in
//!   compressed adjacency arrays; it is built once per DAG, and [`StepOrder`] keeps it for the
//!   envelopes of the several groups of one pipeline. Its size is linear in steps + edges;
//!   the time is that of a few Dinic phases in practice (the bench `envelope` prints figures).

use crate::resources::Resources;

/// The envelope of a DAG of steps: per resource dimension, the peak concurrent demand when the
/// steps run as the DAG allows, i.e. the maximum, over all antichains (sets of steps none of which
/// is an ancestor of another), of the summed demand. Computed independently for cpu, memory and gpu.
///
/// `demands[i]` is the demand of step `i`. Each pair `(step, dependency)` in `needs` means that
/// `dependency` must finish before `step` starts. The graph must be acyclic and every index must
/// be in range (callers validate the pipeline first); duplicate edges are allowed.
///
/// Sums are computed without overflow; a result that does not fit in a `u64` saturates to
/// `u64::MAX`.
pub fn envelope(demands: &[Resources], needs: &[(usize, usize)]) -> Resources {
    StepOrder::new(demands.len(), needs).envelope(demands)
}

/// The order of a DAG of steps, as the flow network the envelope is computed on; built once and
/// used for the envelopes of several demands over the same steps (one per group of a run).
pub struct StepOrder {
    steps: usize,
    /// The steps, each after every step it needs.
    topological: Vec<usize>,
    /// The edges into step `v` (positions in `needs`) are `into[first_into[v]..first_into[v + 1]]`.
    first_into: Vec<usize>,
    into: Vec<usize>,
    /// The dependency of each edge.
    dependency: Vec<usize>,
    /// Per step, the edge from it to the step that needs it and comes last in `topological`.
    last_out: Vec<Option<usize>>,
    network: Network,
}

impl StepOrder {
    /// The order of `steps` steps where each `(step, dependency)` of `needs` means that
    /// `dependency` must finish before `step` starts; as for [`envelope`], acyclic and in range.
    pub fn new(steps: usize, needs: &[(usize, usize)]) -> StepOrder {
        let (first_into, into) = compressed(steps, needs.iter().map(|&(step, _)| step));
        let (first_out, out) = compressed(steps, needs.iter().map(|&(_, dependency)| dependency));

        // Kahn's algorithm; duplicate edges are counted and released consistently.
        let mut pending: Vec<usize> = (0..steps)
            .map(|v| first_into[v + 1] - first_into[v])
            .collect();
        let mut topological: Vec<usize> = (0..steps).filter(|&v| pending[v] == 0).collect();
        let mut i = 0;
        while let Some(&u) = topological.get(i) {
            i += 1;
            for &k in &out[first_out[u]..first_out[u + 1]] {
                let v = needs[k].0;
                pending[v] -= 1;
                if pending[v] == 0 {
                    topological.push(v);
                }
            }
        }
        debug_assert_eq!(topological.len(), steps, "the step graph must be acyclic");
        let mut last_out = vec![None; steps];
        for &v in &topological {
            for &k in &into[first_into[v]..first_into[v + 1]] {
                last_out[needs[k].1] = Some(k);
            }
        }

        // The arcs of the cancelling network, in an order `feasible_flow` relies on: pair `v` is
        // `t -> v_out`, pair `n + v` is `v_in -> s`, pair `2n + v` is `v_in -> v_out`, and pair
        // `3n + k` is the `k`-th edge, `u_out -> v_in`.
        let mut arcs = Vec::with_capacity(3 * steps + needs.len());
        arcs.extend((0..steps).map(|v| (SOURCE, step_out(v))));
        arcs.extend((0..steps).map(|v| (step_in(v), SINK)));
        arcs.extend((0..steps).map(|v| (step_in(v), step_out(v))));
        arcs.extend(
            needs
                .iter()
                .map(|&(step, dependency)| (step_out(dependency), step_in(step))),
        );
        StepOrder {
            steps,
            topological,
            first_into,
            into,
            dependency: needs.iter().map(|&(_, dependency)| dependency).collect(),
            last_out,
            network: Network::new(2 * steps + 2, &arcs),
        }
    }

    /// The envelope of `demands` (one per step) under this order; see [`envelope`].
    ///
    /// # Panics
    ///
    /// If `demands` does not have one entry per step of the order.
    pub fn envelope(&self, demands: &[Resources]) -> Resources {
        assert_eq!(
            demands.len(),
            self.steps,
            "one demand per step of the order"
        );
        let dimension = |weight: fn(&Resources) -> u64| {
            let weights: Vec<u128> = demands.iter().map(|d| u128::from(weight(d))).collect();
            saturate(self.max_weight_antichain(&weights))
        };
        Resources {
            cpu_millis: dimension(|r| r.cpu_millis),
            memory_mib: dimension(|r| r.memory_mib),
            gpu: dimension(|r| r.gpu),
        }
    }

    /// The maximum total weight of an antichain, `weights[v]` being the weight of step `v`: the
    /// value of a feasible flow less what can be cancelled of it (see the module's documentation).
    fn max_weight_antichain(&self, weights: &[u128]) -> u128 {
        let (value, mut capacity) = self.feasible_flow(weights);
        // A single step is an antichain, so a flow of the heaviest step's weight is minimal.
        if weights
            .iter()
            .max()
            .is_none_or(|&heaviest| heaviest == value)
        {
            return value;
        }
        value - self.network.max_flow(&mut capacity)
    }

    /// A feasible flow, greedy in topological order: a step takes the flow left at the steps it
    /// needs (all of it from a step it is the last to need, else what its weight calls for), and
    /// draws from `s` what is still missing. Exact on chains and in-trees, close elsewhere, so
    /// the max-flow that follows has little to cancel. Returns the flow's value and the residual
    /// capacities of the cancelling network.
    fn feasible_flow(&self, weights: &[u128]) -> (u128, Vec<u128>) {
        let n = self.steps;
        // Per step: the flow through it, what it draws from `s`, what is left of it for `t`.
        let mut through = vec![0u128; n];
        let mut drawn = vec![0u128; n];
        let mut left = vec![0u128; n];
        let mut on_edge = vec![0u128; self.dependency.len()];
        for &v in &self.topological {
            let edges = &self.into[self.first_into[v]..self.first_into[v + 1]];
            let is_last = |k: usize| self.last_out[self.dependency[k]] == Some(k);
            let mut taken: u128 = 0;
            for (k, all) in edges
                .iter()
                .filter(|&&k| is_last(k))
                .map(|&k| (k, true))
                .chain(edges.iter().filter(|&&k| !is_last(k)).map(|&k| (k, false)))
            {
                let u = self.dependency[k];
                let amount = if all {
                    left[u]
                } else {
                    left[u].min(weights[v].saturating_sub(taken))
                };
                left[u] -= amount;
                on_edge[k] = amount;
                taken += amount;
            }
            through[v] = taken.max(weights[v]);
            drawn[v] = through[v] - taken;
            left[v] = through[v];
        }

        // The residual network: what `v` draws from `s` and leaves for `t` can be cancelled, and
        // so can the flow through `v` above its weight and the flow on each edge; the arcs of the
        // original network have no upper bound.
        let mut capacity = vec![0u128; self.network.head.len()];
        let mut set = |pair: usize, forward: u128, backward: u128| {
            let arc = self.network.forward[pair];
            capacity[arc] = forward;
            capacity[self.network.reverse[arc]] = backward;
        };
        for v in 0..n {
            set(v, left[v], 0);
            set(n + v, drawn[v], 0);
            set(2 * n + v, UNBOUNDED, through[v] - weights[v]);
        }
        for (k, &flow) in on_edge.iter().enumerate() {
            set(3 * n + k, UNBOUNDED, flow);
        }
        (drawn.iter().sum(), capacity)
    }
}

/// Groups the positions of `keys` (each below `n`) by key: the positions with key `v` are
/// `items[first[v]..first[v + 1]]`, in increasing order.
fn compressed(n: usize, keys: impl Iterator<Item = usize> + Clone) -> (Vec<usize>, Vec<usize>) {
    let mut first = vec![0usize; n + 1];
    for key in keys.clone() {
        first[key + 1] += 1;
    }
    for v in 0..n {
        first[v + 1] += first[v];
    }
    let mut fill = first.clone();
    let mut items = vec![0usize; first[n]];
    for (position, key) in keys.enumerate() {
        items[fill[key]] = position;
        fill[key] += 1;
    }
    (first, items)
}

/// Converts a `u128` sum back to `u64`, saturating at `u64::MAX`.
fn saturate(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// The capacity of the arcs that have no upper bound. Flows never come near it: they are at most
/// the sum of the weights (below `2^64` per step), and an arc and its reverse keep the sum of
/// their initial capacities, so no capacity can overflow.
const UNBOUNDED: u128 = u128::MAX / 2;
/// The source of the cancelling flow, the original network's `t`.
const SOURCE: usize = 0;
/// The sink of the cancelling flow, the original network's `s`.
const SINK: usize = 1;
/// A vertex not (or no longer) in the level graph.
const UNREACHED: usize = usize::MAX;

/// The vertex `v_out` of step `v`.
fn step_out(v: usize) -> usize {
    2 + 2 * v
}

/// The vertex `v_in` of step `v`.
fn step_in(v: usize) -> usize {
    3 + 2 * v
}

/// A flow network in compressed adjacency form: the arcs leaving vertex `u` are the positions
/// `first[u]..first[u + 1]`, so scanning them reads `head`, `reverse` and the capacities in order.
/// Capacities are kept by the caller, by arc.
struct Network {
    first: Vec<usize>,
    /// The vertex each arc goes to.
    head: Vec<usize>,
    /// The arc going back along each arc, which carries its residual capacity.
    reverse: Vec<usize>,
    /// The arc made of the `i`-th `(from, to)` given to [`Network::new`].
    forward: Vec<usize>,
}

impl Network {
    /// A network of `vertices` vertices and the arcs `(from, to)`, each with its reverse.
    fn new(vertices: usize, arcs: &[(usize, usize)]) -> Network {
        // Arc `2i` is the i-th pair's forward arc, `2i + 1` its reverse; `order` places them.
        let (first, order) = compressed(vertices, arcs.iter().flat_map(|&(from, to)| [from, to]));
        let mut position = vec![0usize; order.len()];
        for (at, &arc) in order.iter().enumerate() {
            position[arc] = at;
        }
        let head = order
            .iter()
            .map(|&arc| {
                let (from, to) = arcs[arc / 2];
                if arc % 2 == 0 { to } else { from }
            })
            .collect();
        let reverse = order.iter().map(|&arc| position[arc ^ 1]).collect();
        let forward = position.iter().step_by(2).copied().collect();
        Network {
            first,
            head,
            reverse,
            forward,
        }
    }

    /// The maximum flow from [`SOURCE`] to [`SINK`] under `capacity`, which is left residual.
    fn max_flow(&self, capacity: &mut [u128]) -> u128 {
        let vertices = self.first.len() - 1;
        let mut level = vec![UNREACHED; vertices];
        let mut next = vec![0usize; vertices];
        let mut queue = Vec::with_capacity(vertices);
        let mut path = Vec::new();
        let mut flow: u128 = 0;
        while self.levels(capacity, &mut level, &mut queue) {
            next.copy_from_slice(&self.first[..vertices]);
            flow += self.blocking_flow(capacity, &mut level, &mut next, &mut path);
        }
        flow
    }

    /// Breadth-first levels over arcs with capacity left, up to the sink's; whether it is reached.
    fn levels(&self, capacity: &[u128], level: &mut [usize], queue: &mut Vec<usize>) -> bool {
        level.fill(UNREACHED);
        level[SOURCE] = 0;
        queue.clear();
        queue.push(SOURCE);
        let mut i = 0;
        while let Some(&u) = queue.get(i) {
            i += 1;
            if level[u] >= level[SINK] {
                // Vertices at or past the sink's level cannot be on a shortest path to it.
                break;
            }
            let arcs = self.first[u]..self.first[u + 1];
            for (&v, &left) in self.head[arcs.clone()].iter().zip(&capacity[arcs]) {
                if left > 0 && level[v] == UNREACHED {
                    level[v] = level[u] + 1;
                    queue.push(v);
                }
            }
        }
        level[SINK] != UNREACHED
    }

    /// Saturates every shortest path of the level graph; returns the flow added.
    ///
    /// Depth-first with an explicit `path` of arcs; `next[u]` is the first arc of `u` not yet
    /// found useless, and a vertex from which the sink cannot be reached any more
    /// leaves the level graph.
    fn blocking_flow(
        &self,
        capacity: &mut [u128],
        level: &mut [usize],
        next: &mut [usize],
        path: &mut Vec<usize>,
    ) -> u128 {
        let mut flow: u128 = 0;
        let mut u = SOURCE;
        path.clear();
        loop {
            if u == SINK {
                let pushed = path.iter().map(|&a| capacity[a]).min().unwrap_or(0);
                for &a in path.iter() {
                    capacity[a] -= pushed;
                    capacity[self.reverse[a]] += pushed;
                }
                flow += pushed;
                // Resume from the tail of the first arc the push saturated.
                let saturated = path
                    .iter()
                    .position(|&a| capacity[a] == 0)
                    .unwrap_or(path.len());
                path.truncate(saturated);
                u = path.last().map_or(SOURCE, |&a| self.head[a]);
                continue;
            }
            let end = self.first[u + 1];
            while next[u] < end {
                let a = next[u];
                if capacity[a] > 0 && level[self.head[a]] == level[u] + 1 {
                    break;
                }
                next[u] += 1;
            }
            if next[u] < end {
                let a = next[u];
                path.push(a);
                u = self.head[a];
            } else {
                level[u] = UNREACHED;
                let Some(a) = path.pop() else {
                    return flow;
                };
                u = self.head[self.reverse[a]];
                next[u] += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn r(cpu_millis: u64, memory_mib: u64, gpu: u64) -> Resources {
        Resources::new(cpu_millis, memory_mib, gpu)
    }

    #[test]
    fn design_example() {
        // build; unit needs build; lint needs build.
        let demands = [r(2000, 4096, 0), r(2000, 2048, 0), r(1000, 1024, 0)];
        let needs = [(1, 0), (2, 0)];
        assert_eq!(envelope(&demands, &needs), r(3000, 4096, 0));
    }

    #[test]
    fn empty_pipeline_is_zero() {
        assert_eq!(envelope(&[], &[]), Resources::ZERO);
    }

    #[test]
    fn single_step_is_its_demand() {
        assert_eq!(envelope(&[r(500, 256, 1)], &[]), r(500, 256, 1));
    }

    #[test]
    fn chain_is_per_dimension_max() {
        let demands = [r(1000, 8192, 0), r(4000, 512, 0), r(2000, 1024, 2)];
        let needs = [(1, 0), (2, 1)];
        assert_eq!(envelope(&demands, &needs), r(4000, 8192, 2));
    }

    #[test]
    fn independent_steps_sum() {
        let demands = [r(1000, 8192, 0), r(4000, 512, 0), r(2000, 1024, 2)];
        assert_eq!(envelope(&demands, &[]), r(7000, 9728, 2));
    }

    #[test]
    fn diamond() {
        // a -> {b, c} -> d: only {b, c} can overlap, unless a or d alone is larger.
        let demands = [
            r(8000, 100, 0),
            r(1000, 2000, 1),
            r(2000, 3000, 1),
            r(500, 6000, 0),
        ];
        let needs = [(1, 0), (2, 0), (3, 1), (3, 2)];
        assert_eq!(envelope(&demands, &needs), r(8000, 6000, 2));
    }

    #[test]
    fn transitive_and_duplicate_edges() {
        // c needs b needs a, plus a redundant c needs a given twice; d is independent.
        let demands = [r(1, 1, 1), r(2, 2, 2), r(3, 3, 3), r(10, 0, 5)];
        let needs = [(1, 0), (2, 1), (2, 0), (2, 0)];
        assert_eq!(envelope(&demands, &needs), r(13, 3, 8));
    }

    #[test]
    fn huge_demands_saturate() {
        let big = r(u64::MAX, u64::MAX - 1, u64::MAX / 2 + 1);
        assert_eq!(envelope(&[big, big], &[]), r(u64::MAX, u64::MAX, u64::MAX));
        assert_eq!(envelope(&[big, big], &[(1, 0)]), big);
        assert_eq!(
            envelope(&[big, big, r(1, 1, 1)], &[(1, 0)]),
            r(u64::MAX, u64::MAX, u64::MAX / 2 + 2)
        );
    }

    #[test]
    fn large_layered_pipeline() {
        // Ten layers of twenty independent steps, each layer separated from the next by a
        // barrier step (needs the whole previous layer, needed by the whole next layer),
        // alongside an independent chain of 80 steps: 200 + 9 + 80 = 289 steps.
        const LAYERS: u64 = 10;
        const WIDTH: u64 = 20;
        const CHAIN: u64 = 80;
        let mut demands = Vec::new();
        let mut needs = Vec::new();
        let mut previous_barrier = None;
        let mut layer_sums = Vec::new();
        for layer in 0..LAYERS {
            let start = demands.len();
            let mut sum = Resources::ZERO;
            for j in 0..WIDTH {
                // Layer 6 is the widest in cpu, layer 2 in memory.
                let cpu = if layer == 6 { 300 } else { 100 } + j;
                let mem = if layer == 2 { 1024 } else { 256 };
                let step = r(cpu, mem, layer % 2);
                sum = r(
                    sum.cpu_millis + step.cpu_millis,
                    sum.memory_mib + step.memory_mib,
                    sum.gpu + step.gpu,
                );
                if let Some(barrier) = previous_barrier {
                    needs.push((demands.len(), barrier));
                }
                demands.push(step);
            }
            layer_sums.push(sum);
            if layer + 1 < LAYERS {
                let barrier = demands.len();
                demands.push(r(50, 64, 0));
                needs.extend((start..barrier).map(|s| (barrier, s)));
                previous_barrier = Some(barrier);
            }
        }
        let chain_start = demands.len();
        for i in 0..CHAIN {
            if i > 0 {
                needs.push((demands.len(), demands.len() - 1));
            }
            demands.push(r(10 + i, 32, u64::from(i == 40)));
        }
        assert_eq!(demands.len(), 289);
        assert_eq!(chain_start, 209);

        // Layer 6: sum_{j<20} (300 + j) = 6190 cpu, 20 * 256 memory, no gpu (even layer).
        // Layer 2: 20 * 1024 = 20480 memory. Odd layers: 20 gpu. The chain adds its largest
        // element per dimension: 89 cpu, 32 memory, 1 gpu.
        assert_eq!(layer_sums[6].cpu_millis, 6190);
        assert_eq!(envelope(&demands, &needs), r(6190 + 89, 20480 + 32, 20 + 1));
    }

    /// Reference implementation: enumerate every subset of at most 16 steps, keep the antichains.
    fn brute_force(demands: &[Resources], needs: &[(usize, usize)]) -> Resources {
        let n = demands.len();
        assert!(n <= 16, "brute force is for small DAGs");
        // comparable[v]: the steps that are ancestors or descendants of v, as a bitmask.
        let mut ancestors = vec![0u32; n];
        loop {
            let mut changed = false;
            for &(step, dependency) in needs {
                let grown = ancestors[step] | ancestors[dependency] | 1 << dependency;
                changed |= grown != ancestors[step];
                ancestors[step] = grown;
            }
            if !changed {
                break;
            }
        }
        let mut comparable = ancestors.clone();
        for (v, &up) in ancestors.iter().enumerate() {
            for (u, row) in comparable.iter_mut().enumerate() {
                if up & 1 << u != 0 {
                    *row |= 1 << v;
                }
            }
        }
        let mut best = [0u128; 3];
        for mask in 0u32..(1 << n) {
            let members = (0..n).filter(|&i| mask & 1 << i != 0);
            if members.clone().any(|i| comparable[i] & mask != 0) {
                continue;
            }
            let mut sum = [0u128; 3];
            for i in members {
                sum[0] += u128::from(demands[i].cpu_millis);
                sum[1] += u128::from(demands[i].memory_mib);
                sum[2] += u128::from(demands[i].gpu);
            }
            for (b, s) in best.iter_mut().zip(sum) {
                *b = (*b).max(s);
            }
        }
        r(saturate(best[0]), saturate(best[1]), saturate(best[2]))
    }

    /// Many small random DAGs, the same ones on every run: up to 12 steps, a fifth of demands
    /// zero, some edges given twice and some implied by others, some demands near `u64::MAX`.
    #[test]
    fn matches_brute_force_on_seeded_dags() {
        use rand::rngs::ChaCha8Rng;
        use rand::{RngExt, SeedableRng};

        let mut rng = ChaCha8Rng::seed_from_u64(0x5eed);
        let mut cancelled = 0;
        for case in 0..3000 {
            let n = rng.random_range(0..=12usize);
            let huge = case % 10 == 0;
            let amount = |rng: &mut ChaCha8Rng| match rng.random_range(0..5) {
                0 => 0,
                _ if huge => u64::MAX - rng.random_range(0..3u64),
                _ => rng.random_range(1..1000u64),
            };
            let demands: Vec<Resources> = (0..n)
                .map(|_| r(amount(&mut rng), amount(&mut rng), amount(&mut rng)))
                .collect();
            let density = rng.random_range(0.0..0.6);
            let mut needs = Vec::new();
            for step in 1..n {
                for dependency in 0..step {
                    if rng.random_bool(density) {
                        needs.push((step, dependency));
                        if rng.random_bool(0.1) {
                            needs.push((step, dependency));
                        }
                    }
                }
            }
            // Relabel so that the edges do not always point to lower indices.
            let mut label: Vec<usize> = (0..n).collect();
            for i in (1..n).rev() {
                label.swap(i, rng.random_range(0..=i));
            }
            let mut relabelled = vec![Resources::ZERO; n];
            for (v, &d) in demands.iter().enumerate() {
                relabelled[label[v]] = d;
            }
            let needs: Vec<(usize, usize)> =
                needs.iter().map(|&(s, d)| (label[s], label[d])).collect();
            let expected = brute_force(&relabelled, &needs);
            let sum = relabelled
                .iter()
                .fold(Resources::ZERO, |acc, d| acc.saturating_add(d));
            cancelled += usize::from(expected != sum);
            assert_eq!(
                envelope(&relabelled, &needs),
                expected,
                "case {case}: demands {relabelled:?}, needs {needs:?}"
            );
        }
        // The order mattered in most cases: the test is not only about sums.
        assert!(
            cancelled > 1500,
            "only {cancelled} cases below the plain sum"
        );
    }

    /// One order, several weightings: the groups of a run share the network.
    #[test]
    fn step_order_is_reused_across_demands() {
        // a -> b, a -> c, independent d.
        let order = StepOrder::new(4, &[(1, 0), (2, 0)]);
        let full = [r(5, 1, 0), r(2, 1, 1), r(2, 1, 1), r(1, 1, 0)];
        assert_eq!(order.envelope(&full), r(6, 3, 2));
        let only_a_and_b = [r(5, 1, 0), r(2, 1, 1), Resources::ZERO, Resources::ZERO];
        assert_eq!(order.envelope(&only_a_and_b), r(5, 1, 1));
        let only_b_c_d = [Resources::ZERO, r(2, 1, 1), r(2, 1, 1), r(1, 1, 0)];
        assert_eq!(order.envelope(&only_b_c_d), r(5, 3, 2));
        assert_eq!(
            order.envelope(&full),
            r(6, 3, 2),
            "no state kept between calls"
        );
    }

    fn dag() -> impl Strategy<Value = (Vec<Resources>, Vec<(usize, usize)>)> {
        (1usize..=10).prop_flat_map(|n| {
            // Zero demands are common in practice (no gpu), so make them likely here too.
            let amount = || prop_oneof![1 => Just(0u64), 3 => 0u64..10_000];
            let demand =
                (amount(), amount(), amount()).prop_map(|(cpu, mem, gpu)| r(cpu, mem, gpu));
            let edges = prop::collection::vec((0..n, 0..n), 0..=30).prop_map(|pairs| {
                pairs
                    .into_iter()
                    .filter(|(a, b)| a != b)
                    .map(|(a, b)| (a.max(b), a.min(b)))
                    .collect::<Vec<_>>()
            });
            (prop::collection::vec(demand, n), edges)
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn matches_brute_force((demands, needs) in dag()) {
            prop_assert_eq!(envelope(&demands, &needs), brute_force(&demands, &needs));
        }
    }
}
