//! ResourceRequest and WorkerTemplate: what a run asks of the controller, and
//! the worker shape that serves each of its groups.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::envelope::StepOrder;
use crate::pipeline::Pipeline;
use crate::resources::Resources;
use crate::selector::PoolSelector;

/// One group of a run: the steps sharing a pool selector, served by one worker
/// whose resources are the group's envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRequest {
    pub index: u32,
    /// The pools the group may run on.
    pub selector: PoolSelector,
    pub resources: Resources,
    /// Indices of the group's steps in the pipeline, in increasing order.
    pub steps: Vec<usize>,
}

/// A run's request: the gang of its groups, all admitted or none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceRequest {
    pub groups: Vec<GroupRequest>,
}

impl ResourceRequest {
    /// Derives the request of a pipeline: its steps grouped by pool selector (in
    /// order of first appearance), each group's resources its envelope.
    ///
    /// Grouping takes `O(n log g)` for `n` steps in `g` groups. The step order is built once
    /// (linear in steps + needs) and each group of more than one step costs one envelope over
    /// it, so the whole is linear in steps + needs for a bounded number of groups (see
    /// `Limits::max_selectors`).
    pub fn for_pipeline(pipeline: &Pipeline) -> ResourceRequest {
        let steps = &pipeline.spec.steps;
        let any_pool = PoolSelector::default();
        let mut numbers: BTreeMap<&PoolSelector, usize> = BTreeMap::new();
        let mut groups: Vec<(&PoolSelector, Vec<usize>)> = Vec::new();
        for (i, step) in steps.iter().enumerate() {
            let selector = step.pool.as_ref().unwrap_or(&any_pool);
            let g = *numbers.entry(selector).or_insert_with(|| {
                groups.push((selector, Vec::new()));
                groups.len() - 1
            });
            groups[g].1.push(i);
        }
        let edges: Vec<(usize, usize)> = pipeline
            .needs
            .iter()
            .enumerate()
            .flat_map(|(i, deps)| deps.iter().map(move |&d| (i, d)))
            .collect();
        // Built for the first group of more than one step, if any.
        let mut order: Option<StepOrder> = None;
        let groups = groups
            .into_iter()
            .enumerate()
            .map(|(g, (selector, members))| {
                let resources = if let [only] = members.as_slice() {
                    steps[*only].resources()
                } else {
                    // Steps outside the group weigh nothing but still order the DAG.
                    let mut demands = vec![Resources::ZERO; steps.len()];
                    for &i in &members {
                        demands[i] = steps[i].resources();
                    }
                    order
                        .get_or_insert_with(|| StepOrder::new(steps.len(), &edges))
                        .envelope(&demands)
                };
                GroupRequest {
                    index: u32::try_from(g).unwrap_or(u32::MAX),
                    selector: selector.clone(),
                    resources,
                    steps: members,
                }
            })
            .collect();
        ResourceRequest { groups }
    }

    /// The sum of all groups, saturating (only compared against limits).
    pub fn total(&self) -> Resources {
        self.groups
            .iter()
            .fold(Resources::ZERO, |acc, g| acc.saturating_add(&g.resources))
    }

    /// The group that runs step `step`, in `O(g log n)` for `g` groups.
    pub fn group_of(&self, step: usize) -> Option<u32> {
        self.groups
            .iter()
            .find(|g| g.steps.binary_search(&step).is_ok())
            .map(|g| g.index)
    }
}

/// The shape of a worker to provision for one group of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerTemplate {
    pub pool: String,
    pub resources: Resources,
    pub labels: BTreeMap<String, String>,
    pub env: BTreeMap<String, String>,
}

impl WorkerTemplate {
    /// The template for a group placed on `pool` with `labels`. Its env names the
    /// pool only: a warm worker serves many runs, which get their own env per step.
    pub fn for_group(
        group: &GroupRequest,
        pool: &str,
        labels: &BTreeMap<String, String>,
    ) -> WorkerTemplate {
        WorkerTemplate {
            pool: pool.to_string(),
            resources: group.resources,
            labels: labels.clone(),
            env: BTreeMap::from([("CORRAL_POOL".to_string(), pool.to_string())]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limits::Limits;
    use crate::manifest::{Document, parse_documents};
    use crate::manifest::{from_value, parse_single};
    use crate::pipeline::{PipelineSpec, Priority, StepSpec};
    use crate::resources::ResourceSpec;

    fn pipeline(yaml: &str) -> Pipeline {
        let docs = parse_documents(yaml).expect("valid yaml");
        match docs.into_iter().next() {
            Some(Document::Pipeline(spec)) => spec.compile().expect("valid pipeline"),
            other => panic!("expected a pipeline, got {other:?}"),
        }
    }

    #[test]
    fn design_example_envelope() {
        let p = pipeline(
            r#"
kind: Pipeline
name: build-and-test
tenant: acme
steps:
  - {name: build, run: "make build", resources: {cpu: 2, memory: 4Gi}}
  - {name: unit, run: "make test", needs: [build], resources: {cpu: 2, memory: 2Gi}}
  - {name: lint, run: "make lint", needs: [build], resources: {cpu: 1, memory: 1Gi}}
"#,
        );
        let request = ResourceRequest::for_pipeline(&p);
        assert_eq!(request.groups.len(), 1);
        assert_eq!(request.groups[0].resources, Resources::new(3000, 4096, 0));
        assert_eq!(request.groups[0].selector, PoolSelector::default());
        let labels = BTreeMap::from([("os".to_string(), "linux".to_string())]);
        let template = WorkerTemplate::for_group(&request.groups[0], "linux", &labels);
        assert_eq!(template.resources, Resources::new(3000, 4096, 0));
        assert_eq!(template.pool, "linux");
        assert_eq!(template.labels, labels);
        assert_eq!(template.env["CORRAL_POOL"], "linux");
    }

    #[test]
    fn groups_by_pool_selector() {
        let p = pipeline(
            r#"
kind: Pipeline
name: split
steps:
  - {name: a, run: "true", pool: gpu, resources: {cpu: 1, memory: 1Gi, gpu: 1}}
  - {name: b, run: "true", resources: {cpu: 2, memory: 1Gi}}
  - {name: c, run: "true", pool: gpu, needs: [b], resources: {cpu: 1, memory: 1Gi, gpu: 1}}
"#,
        );
        let request = ResourceRequest::for_pipeline(&p);
        assert_eq!(request.groups.len(), 2);
        assert_eq!(request.groups[0].selector, PoolSelector::named("gpu"));
        // a and c may overlap (c waits for b only).
        assert_eq!(request.groups[0].resources, Resources::new(2000, 2048, 2));
        assert_eq!(request.groups[0].steps, vec![0, 2]);
        assert_eq!(request.groups[1].resources, Resources::new(2000, 1024, 0));
        assert_eq!(request.group_of(1), Some(1));
        assert_eq!(request.total(), Resources::new(4000, 3072, 2));
    }

    #[test]
    fn groups_of_parallel_chains() {
        // Two chains of 10,000 steps, each on its own pool, and one step on the first pool
        // again at the end of the second chain.
        let mut steps = Vec::new();
        for (chain, pool) in [("a", "x"), ("b", "y")] {
            for i in 0..10_000u64 {
                steps.push(StepSpec {
                    name: format!("{chain}{i}"),
                    run: "true".into(),
                    needs: (i > 0)
                        .then(|| format!("{chain}{}", i - 1))
                        .into_iter()
                        .collect(),
                    resources: ResourceSpec {
                        cpu: Some(1000 + i % 7),
                        memory: Some(100 + i % 13),
                        gpu: None,
                    },
                    pool: Some(PoolSelector::named(pool)),
                    env: BTreeMap::new(),
                    timeout: None,
                    retries: 0,
                });
            }
        }
        let mut last = steps[0].clone();
        last.name = "last".into();
        last.needs = vec!["b9999".into()];
        steps.push(last);
        let spec = PipelineSpec {
            name: "p".into(),
            tenant: "t".into(),
            priority: Priority::default(),
            steps,
            matrix: Default::default(),
        };
        let limits = Limits {
            max_steps: 20_001,
            ..Limits::default()
        };
        let request = ResourceRequest::for_pipeline(&spec.compile_with(&limits).expect("valid"));
        assert_eq!(request.groups.len(), 2);
        // "last" runs alongside the whole of chain a.
        assert_eq!(request.groups[0].resources, Resources::new(2006, 212, 0));
        assert_eq!(request.groups[1].resources, Resources::new(1006, 112, 0));
        assert_eq!(request.groups[0].steps.len(), 10_001);
        assert_eq!(request.group_of(20_000), Some(0));
        assert_eq!(request.group_of(10_000), Some(1));
        assert_eq!(request.group_of(20_001), None);
    }

    #[test]
    fn one_group_per_distinct_selector() {
        let steps = (0..2_000)
            .map(|i| {
                format!(
                    "  - {{name: s{i}, run: x, pool: {{labels: {{n: v{}}}}}, resources: {{cpu: {}}}}}\n",
                    i / 2,
                    i + 1
                )
            })
            .collect::<String>();
        let limits = Limits {
            max_steps: 2_000,
            max_selectors: 1_000,
            ..Limits::default()
        };
        let doc = format!("kind: Pipeline\nname: p\nsteps:\n{steps}");
        let value = parse_single(&doc, "Pipeline").expect("valid yaml");
        let spec: PipelineSpec = from_value(value, "").expect("a pipeline");
        let p = spec.compile_with(&limits).expect("valid");
        let request = ResourceRequest::for_pipeline(&p);
        assert_eq!(request.groups.len(), 1_000);
        for (g, group) in request.groups.iter().enumerate() {
            assert_eq!(group.steps, vec![2 * g, 2 * g + 1]);
            let label = BTreeMap::from([("n".to_string(), format!("v{g}"))]);
            assert_eq!(group.selector.labels, label);
            let cpu = 1000 * (2 * g as u64 + 1) + 1000 * (2 * g as u64 + 2);
            assert_eq!(group.resources, Resources::new(cpu, 512, 0));
            assert_eq!(request.group_of(2 * g + 1), Some(group.index));
        }
    }
}
