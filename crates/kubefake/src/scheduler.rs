//! The scheduler: binds each pending pod to a node that is schedulable, matches its
//! `nodeSelector` and has room for its requests, or says why none does in the
//! scheduler's words.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Node, Pod, PodCondition, PodStatus};

use crate::quantity::parse_milli;
use crate::state::{Key, State, now};

/// Amounts by resource name, in thousandths.
pub(crate) type Amounts = BTreeMap<String, i128>;

/// What a pod requests: the sum of its containers' requests (a limit stands for a
/// missing request, as the API server defaults it).
pub(crate) fn requests(pod: &Pod) -> Amounts {
    let mut total = Amounts::new();
    for container in pod.spec.iter().flat_map(|spec| &spec.containers) {
        let resources = container.resources.as_ref();
        let mut asked: BTreeMap<&String, &str> = BTreeMap::new();
        for (name, quantity) in resources
            .and_then(|r| r.limits.as_ref())
            .into_iter()
            .flatten()
        {
            asked.insert(name, &quantity.0);
        }
        for (name, quantity) in resources
            .and_then(|r| r.requests.as_ref())
            .into_iter()
            .flatten()
        {
            asked.insert(name, &quantity.0);
        }
        for (name, quantity) in asked {
            *total.entry(name.clone()).or_default() += parse_milli(quantity).unwrap_or(0);
        }
    }
    total
}

/// Whether a pod has ended (its resources are free again).
pub(crate) fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

fn allocatable(node: &Node) -> Amounts {
    node.status
        .as_ref()
        .and_then(|status| status.allocatable.as_ref())
        .into_iter()
        .flatten()
        .map(|(name, quantity)| (name.clone(), parse_milli(&quantity.0).unwrap_or(0)))
        .collect()
}

/// Sets a pod condition; says whether it changed.
pub(crate) fn set_condition(
    pod: &mut Pod,
    kind: &str,
    status: &str,
    reason: Option<&str>,
    message: Option<&str>,
) -> bool {
    let conditions = pod
        .status
        .get_or_insert_with(PodStatus::default)
        .conditions
        .get_or_insert_with(Vec::new);
    let wanted = |condition: &PodCondition| {
        condition.status == status
            && condition.reason.as_deref() == reason
            && condition.message.as_deref() == message
    };
    match conditions.iter_mut().find(|c| c.type_ == kind) {
        Some(condition) if wanted(condition) => false,
        Some(condition) => {
            if condition.status != status {
                condition.last_transition_time = Some(now());
            }
            condition.status = status.to_owned();
            condition.reason = reason.map(str::to_owned);
            condition.message = message.map(str::to_owned);
            true
        }
        None => {
            conditions.push(PodCondition {
                type_: kind.to_owned(),
                status: status.to_owned(),
                reason: reason.map(str::to_owned),
                message: message.map(str::to_owned),
                last_transition_time: Some(now()),
                ..PodCondition::default()
            });
            true
        }
    }
}

/// Why `node` cannot take a pod with `selector` and `asked`, given what is `used` on it;
/// empty when it can.
fn problems(
    node: &Node,
    selector: Option<&BTreeMap<String, String>>,
    asked: &Amounts,
    used: &Amounts,
) -> Vec<String> {
    if node.spec.as_ref().and_then(|spec| spec.unschedulable) == Some(true) {
        return vec!["node(s) were unschedulable".to_owned()];
    }
    let labels = node.metadata.labels.as_ref();
    let matches = selector
        .into_iter()
        .flatten()
        .all(|(key, value)| labels.and_then(|l| l.get(key)) == Some(value));
    if !matches {
        return vec!["node(s) didn't match Pod's node affinity/selector".to_owned()];
    }
    let room = allocatable(node);
    asked
        .iter()
        .filter(|(name, amount)| {
            let free =
                room.get(*name).copied().unwrap_or(0) - used.get(*name).copied().unwrap_or(0);
            **amount > 0 && **amount > free
        })
        .map(|(name, _)| format!("Insufficient {name}"))
        .collect()
}

/// The scheduler's message when no node fits: `0/2 nodes are available: 1 Insufficient
/// cpu, 1 node(s) were unschedulable.`
fn unschedulable_message(nodes: usize, reasons: &BTreeMap<String, usize>) -> String {
    if nodes == 0 {
        return "no nodes available to schedule pods".to_owned();
    }
    let mut counted: Vec<String> = reasons
        .iter()
        .map(|(reason, n)| format!("{n} {reason}"))
        .collect();
    counted.sort();
    format!("0/{nodes} nodes are available: {}.", counted.join(", "))
}

/// Binds the pending pods that fit, oldest first; marks the others unschedulable.
pub(crate) fn schedule(state: &mut State) {
    let mut used: BTreeMap<String, Amounts> = BTreeMap::new();
    let mut pending: Vec<(u64, Key)> = Vec::new();
    for (key, entry) in &state.pods {
        let node = entry
            .pod
            .spec
            .as_ref()
            .and_then(|spec| spec.node_name.clone());
        match node {
            Some(node) if !is_terminal(&entry.pod) => {
                let on_node = used.entry(node).or_default();
                for (name, amount) in requests(&entry.pod) {
                    *on_node.entry(name).or_default() += amount;
                }
            }
            Some(_) => {}
            None if entry.pod.metadata.deletion_timestamp.is_none() => {
                pending.push((entry.created, key.clone()))
            }
            None => {}
        }
    }
    pending.sort();
    for (_, key) in pending {
        let Some(entry) = state.pods.get_mut(&key) else {
            continue;
        };
        let asked = requests(&entry.pod);
        let selector = entry
            .pod
            .spec
            .as_ref()
            .and_then(|spec| spec.node_selector.clone());
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        let mut chosen = None;
        for (name, node) in &state.nodes {
            let node_used = used.get(name).cloned().unwrap_or_default();
            let found = problems(node, selector.as_ref(), &asked, &node_used);
            if found.is_empty() {
                chosen = Some(name.clone());
                break;
            }
            for reason in found {
                *reasons.entry(reason).or_default() += 1;
            }
        }
        let changed = match chosen {
            Some(node) => {
                let on_node = used.entry(node.clone()).or_default();
                for (name, amount) in &asked {
                    *on_node.entry(name.clone()).or_default() += amount;
                }
                if let Some(spec) = entry.pod.spec.as_mut() {
                    spec.node_name = Some(node);
                }
                set_condition(&mut entry.pod, "PodScheduled", "True", None, None);
                true
            }
            None => {
                let message = unschedulable_message(state.nodes.len(), &reasons);
                set_condition(
                    &mut entry.pod,
                    "PodScheduled",
                    "False",
                    Some("Unschedulable"),
                    Some(&message),
                )
            }
        };
        if changed {
            state.pod_changed(&key, "MODIFIED");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::unschedulable_message;

    #[test]
    fn the_message_counts_reasons_in_order() {
        let reasons = BTreeMap::from([
            ("node(s) were unschedulable".to_owned(), 1),
            ("Insufficient cpu".to_owned(), 1),
        ]);
        assert_eq!(
            unschedulable_message(2, &reasons),
            "0/2 nodes are available: 1 Insufficient cpu, 1 node(s) were unschedulable."
        );
        assert_eq!(
            unschedulable_message(0, &BTreeMap::new()),
            "no nodes available to schedule pods"
        );
    }
}
