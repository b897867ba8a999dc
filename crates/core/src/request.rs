//! ResourceRequest and WorkerTemplate: what a run asks of the controller, and
//! the worker shape that serves each of its groups.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::envelope::envelope;
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
    /// Indices of the group's steps in the pipeline.
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
    pub fn for_pipeline(pipeline: &Pipeline) -> ResourceRequest {
        let selector_of = |s: &crate::pipeline::StepSpec| s.pool.clone().unwrap_or_default();
        let mut selectors: Vec<PoolSelector> = Vec::new();
        for step in &pipeline.spec.steps {
            let selector = selector_of(step);
            if !selectors.contains(&selector) {
                selectors.push(selector);
            }
        }
        let edges: Vec<(usize, usize)> = pipeline
            .needs
            .iter()
            .enumerate()
            .flat_map(|(i, deps)| deps.iter().map(move |&d| (i, d)))
            .collect();
        let groups = selectors
            .into_iter()
            .enumerate()
            .map(|(g, selector)| {
                // Steps outside the group weigh nothing but still order the DAG.
                let demands: Vec<Resources> = pipeline
                    .spec
                    .steps
                    .iter()
                    .map(|s| {
                        if selector_of(s) == selector {
                            s.resources()
                        } else {
                            Resources::ZERO
                        }
                    })
                    .collect();
                GroupRequest {
                    index: u32::try_from(g).unwrap_or(u32::MAX),
                    steps: (0..pipeline.spec.steps.len())
                        .filter(|&i| selector_of(&pipeline.spec.steps[i]) == selector)
                        .collect(),
                    selector,
                    resources: envelope(&demands, &edges),
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

    /// The group that runs step `step`.
    pub fn group_of(&self, step: usize) -> Option<u32> {
        self.groups
            .iter()
            .find(|g| g.steps.contains(&step))
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
    use crate::manifest::{Document, parse_documents};

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
}
