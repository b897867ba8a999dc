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
//! The maximum-weight antichain is computed with the weighted form of Dilworth's theorem: it equals
//! the total weight minus the maximum flow of a bipartite network built from the transitive
//! closure (see [`max_weight_antichain`]). This is polynomial, unlike enumerating antichains, and
//! comfortably fast for the few hundred steps a pipeline may have.

use std::collections::VecDeque;

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
    let order = Closure::new(demands.len(), needs);
    let dimension = |weight: fn(&Resources) -> u64| {
        let weights: Vec<u64> = demands.iter().map(weight).collect();
        saturate(max_weight_antichain(&weights, &order))
    };
    Resources {
        cpu_millis: dimension(|r| r.cpu_millis),
        memory_mib: dimension(|r| r.memory_mib),
        gpu: dimension(|r| r.gpu),
    }
}

/// Converts a `u128` sum back to `u64`, saturating at `u64::MAX`.
fn saturate(value: u128) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

/// The strict partial order of a DAG ("is an ancestor of"), stored as one bitset per node.
struct Closure {
    /// Number of 64-bit words per row.
    words: usize,
    /// `descendants[u]` has bit `v` set iff `u` must finish before `v` starts (transitively).
    descendants: Vec<Vec<u64>>,
}

impl Closure {
    /// Builds the transitive closure of the DAG given by `needs` (`(step, dependency)` pairs).
    fn new(n: usize, needs: &[(usize, usize)]) -> Self {
        let words = n.div_ceil(64);
        let mut dependents = vec![Vec::new(); n];
        let mut pending = vec![0usize; n];
        for &(step, dependency) in needs {
            dependents[dependency].push(step);
            pending[step] += 1;
        }

        // Kahn's algorithm; duplicate edges are counted and released consistently.
        let mut topo = Vec::with_capacity(n);
        let mut ready: VecDeque<usize> = (0..n).filter(|&v| pending[v] == 0).collect();
        while let Some(u) = ready.pop_front() {
            topo.push(u);
            for &v in &dependents[u] {
                pending[v] -= 1;
                if pending[v] == 0 {
                    ready.push_back(v);
                }
            }
        }
        debug_assert_eq!(topo.len(), n, "the step graph must be acyclic");

        // In reverse topological order every dependent's row is complete before it is merged.
        let mut descendants = vec![vec![0u64; words]; n];
        for &u in topo.iter().rev() {
            let mut row = vec![0u64; words];
            for &v in &dependents[u] {
                row[v / 64] |= 1 << (v % 64);
                for (word, &bits) in row.iter_mut().zip(&descendants[v]) {
                    *word |= bits;
                }
            }
            descendants[u] = row;
        }
        Self { words, descendants }
    }

    /// Whether `u` is a strict ancestor of `v`.
    fn precedes(&self, u: usize, v: usize) -> bool {
        debug_assert!(v / 64 < self.words);
        self.descendants[u][v / 64] & (1 << (v % 64)) != 0
    }
}

/// The maximum total weight of an antichain of `order`, with `weights[v]` the weight of node `v`.
///
/// By the weighted Dilworth theorem this is `sum(w) - maxflow` in the bipartite network
/// `source -> L_v` (capacity `w(v)`), `R_v -> sink` (capacity `w(v)`) and `L_u -> R_v`
/// (unbounded capacity) whenever `u` strictly precedes `v`. Zero-weight nodes cannot carry flow,
/// so they are left out of the network (they still take part in the order through the closure).
fn max_weight_antichain(weights: &[u64], order: &Closure) -> u128 {
    let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    let nodes: Vec<usize> = (0..weights.len()).filter(|&v| weights[v] > 0).collect();
    let k = nodes.len();
    if k == 0 {
        return 0;
    }

    // Vertex layout: source, sink, then L_i = 2 + i and R_i = 2 + k + i for the i-th node.
    let (source, sink) = (0, 1);
    let mut network = FlowNetwork::new(2 + 2 * k);
    for (i, &v) in nodes.iter().enumerate() {
        let w = u128::from(weights[v]);
        network.add_edge(source, 2 + i, w);
        network.add_edge(2 + k + i, sink, w);
    }
    let mut has_pairs = false;
    for (i, &u) in nodes.iter().enumerate() {
        for (j, &v) in nodes.iter().enumerate() {
            if order.precedes(u, v) {
                network.add_edge(2 + i, 2 + k + j, u128::MAX);
                has_pairs = true;
            }
        }
    }
    if !has_pairs {
        return total;
    }
    total - network.max_flow(source, sink)
}

/// A residual edge of [`FlowNetwork`]; its reverse edge is at index `id ^ 1`.
struct Edge {
    to: usize,
    capacity: u128,
}

/// A flow network solved with Dinic's algorithm.
struct FlowNetwork {
    edges: Vec<Edge>,
    adjacency: Vec<Vec<usize>>,
    level: Vec<Option<usize>>,
    next_edge: Vec<usize>,
}

impl FlowNetwork {
    fn new(vertices: usize) -> Self {
        Self {
            edges: Vec::new(),
            adjacency: vec![Vec::new(); vertices],
            level: vec![None; vertices],
            next_edge: vec![0; vertices],
        }
    }

    fn add_edge(&mut self, from: usize, to: usize, capacity: u128) {
        self.adjacency[from].push(self.edges.len());
        self.edges.push(Edge { to, capacity });
        self.adjacency[to].push(self.edges.len());
        self.edges.push(Edge {
            to: from,
            capacity: 0,
        });
    }

    /// The maximum flow from `source` to `sink`. Saturates rather than overflowing, which cannot
    /// happen when the source's outgoing capacities sum to at most `u128::MAX`.
    fn max_flow(&mut self, source: usize, sink: usize) -> u128 {
        let mut flow: u128 = 0;
        while self.build_levels(source, sink) {
            self.next_edge.fill(0);
            loop {
                let pushed = self.augment(source, sink, u128::MAX);
                if pushed == 0 {
                    break;
                }
                flow = flow.saturating_add(pushed);
            }
        }
        flow
    }

    /// Breadth-first search over residual edges; returns whether `sink` is reachable.
    fn build_levels(&mut self, source: usize, sink: usize) -> bool {
        self.level.fill(None);
        self.level[source] = Some(0);
        let mut queue = VecDeque::from([(source, 0)]);
        while let Some((u, depth)) = queue.pop_front() {
            for &id in &self.adjacency[u] {
                let edge = &self.edges[id];
                if edge.capacity > 0 && self.level[edge.to].is_none() {
                    self.level[edge.to] = Some(depth + 1);
                    queue.push_back((edge.to, depth + 1));
                }
            }
        }
        self.level[sink].is_some()
    }

    /// Pushes up to `limit` units along one level-increasing path from `u` to `sink`.
    ///
    /// Recursion depth is bounded by the level of the sink, which is small for the bipartite
    /// networks built here (at most the number of vertices in general).
    fn augment(&mut self, u: usize, sink: usize, limit: u128) -> u128 {
        if u == sink {
            return limit;
        }
        let Some(depth) = self.level[u] else {
            return 0;
        };
        while self.next_edge[u] < self.adjacency[u].len() {
            let id = self.adjacency[u][self.next_edge[u]];
            let (to, capacity) = (self.edges[id].to, self.edges[id].capacity);
            if capacity > 0 && self.level[to] == Some(depth + 1) {
                let pushed = self.augment(to, sink, limit.min(capacity));
                if pushed > 0 {
                    self.edges[id].capacity -= pushed;
                    let reverse = &mut self.edges[id ^ 1].capacity;
                    *reverse = reverse.saturating_add(pushed);
                    return pushed;
                }
            }
            self.next_edge[u] += 1;
        }
        0
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

    /// Reference implementation: enumerate every subset, keep the antichains.
    fn brute_force(demands: &[Resources], needs: &[(usize, usize)]) -> Resources {
        let n = demands.len();
        let mut dependencies = vec![Vec::new(); n];
        for &(step, dependency) in needs {
            dependencies[step].push(dependency);
        }
        // ancestor[v][u]: u must finish before v starts.
        let mut ancestor = vec![vec![false; n]; n];
        for (v, row) in ancestor.iter_mut().enumerate() {
            let mut stack = dependencies[v].clone();
            while let Some(u) = stack.pop() {
                if !row[u] {
                    row[u] = true;
                    stack.extend(&dependencies[u]);
                }
            }
        }
        let mut best = [0u128; 3];
        for mask in 0u32..(1 << n) {
            let members: Vec<usize> = (0..n).filter(|&i| mask & (1 << i) != 0).collect();
            let antichain = members
                .iter()
                .all(|&a| members.iter().all(|&b| !ancestor[a][b]));
            if !antichain {
                continue;
            }
            let mut sum = [0u128; 3];
            for &i in &members {
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
