//! What provisioning looks at, kept as writes are applied: the open
//! allocations that no worker serves yet, and the worker requests asked of
//! providers for them. A cycle's provisioning costs the unbound allocations
//! and the requests, never a scan of every run.

use std::collections::BTreeMap;

use corral_core::ids::{AllocationId, RunId};
use corral_store::{WorkerRequestRecord, Write};

use crate::provider::Problem;

/// An open allocation without a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnboundAllocation {
    pub id: AllocationId,
    pub pool: String,
}

/// The unbound allocations, by run and group, and the worker requests.
#[derive(Debug, Default)]
pub struct Unbound {
    allocations: BTreeMap<(RunId, u32), UnboundAllocation>,
    requests: BTreeMap<String, WorkerRequestRecord>,
    /// The name of each allocation's request.
    by_allocation: BTreeMap<AllocationId, String>,
    /// What its provider said last of a request's worker that is not up; in
    /// memory only, as a restarted server hears it again.
    problems: BTreeMap<String, Problem>,
}

impl Unbound {
    /// Follows one write: an allocation opened without a worker is unbound
    /// until it is bound or closed (a run's end closes its allocations).
    pub fn apply(&mut self, write: &Write) {
        match write {
            Write::PutAllocation(a) if a.closed_at.is_none() && a.worker_id.is_none() => {
                self.allocations.insert(
                    (a.run_id, a.group),
                    UnboundAllocation {
                        id: a.id,
                        pool: a.pool.clone(),
                    },
                );
            }
            // Bound or closed: only this allocation of its group, not a
            // later one (a stale write never takes a successor out).
            Write::PutAllocation(a)
                if self
                    .allocations
                    .get(&(a.run_id, a.group))
                    .is_some_and(|u| u.id == a.id) =>
            {
                self.allocations.remove(&(a.run_id, a.group));
            }
            Write::PutWorkerRequest(r) => {
                self.by_allocation.insert(r.allocation_id, r.name.clone());
                self.requests.insert(r.name.clone(), r.clone());
            }
            Write::DeleteWorkerRequest(name) => {
                self.problems.remove(name);
                if let Some(r) = self.requests.remove(name)
                    && self.by_allocation.get(&r.allocation_id) == Some(name)
                {
                    self.by_allocation.remove(&r.allocation_id);
                }
            }
            _ => {}
        }
    }

    /// The unbound allocations, by run and group.
    pub fn allocations(&self) -> impl Iterator<Item = (RunId, u32, &UnboundAllocation)> {
        self.allocations
            .iter()
            .map(|((run, group), a)| (*run, *group, a))
    }

    /// Whether `allocation` still waits for a worker.
    pub fn waits(&self, run: RunId, group: u32, allocation: AllocationId) -> bool {
        self.allocations
            .get(&(run, group))
            .is_some_and(|a| a.id == allocation)
    }

    /// Every worker request, by name.
    pub fn requests(&self) -> impl Iterator<Item = &WorkerRequestRecord> {
        self.requests.values()
    }

    /// The request of worker `name`.
    pub fn request(&self, name: &str) -> Option<&WorkerRequestRecord> {
        self.requests.get(name)
    }

    /// The request made for `allocation`, if any.
    pub fn request_for(&self, allocation: AllocationId) -> Option<&WorkerRequestRecord> {
        self.requests.get(self.by_allocation.get(&allocation)?)
    }

    /// Why request `name`'s worker is not up, as its provider said last.
    pub fn problem(&self, name: &str) -> Option<&Problem> {
        self.problems.get(name)
    }

    /// Notes what the provider says of request `name`'s worker (nothing: it
    /// has no problem); kept only while the request is.
    pub fn set_problem(&mut self, name: &str, problem: Option<Problem>) {
        match problem {
            Some(p) if self.requests.contains_key(name) => {
                self.problems.insert(name.to_string(), p);
            }
            _ => {
                self.problems.remove(name);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use corral_core::clock::Timestamp;
    use corral_core::resources::Resources;
    use corral_store::{AllocationRecord, WorkerRequestState};

    use super::*;

    fn allocation(id: i64, run: i64, group: u32) -> AllocationRecord {
        AllocationRecord {
            id: AllocationId(id),
            run_id: RunId(run),
            group,
            tenant: "t".into(),
            pool: "p".into(),
            resources: Resources::new(1000, 1024, 0),
            worker_id: None,
            opened_at: Timestamp(0),
            closed_at: None,
        }
    }

    fn request(name: &str, allocation: i64) -> WorkerRequestRecord {
        WorkerRequestRecord {
            name: name.into(),
            allocation_id: AllocationId(allocation),
            run_id: RunId(1),
            group: 0,
            pool: "p".into(),
            reference: None,
            state: WorkerRequestState::Pending,
            deadline: Timestamp(10),
            attempts: 1,
            generation: 0,
            spawn_hash: String::new(),
            created_at: Timestamp(0),
            updated_at: Timestamp(0),
        }
    }

    #[test]
    fn allocations_are_unbound_from_their_opening_until_bound_or_closed() {
        let mut unbound = Unbound::default();
        for a in [
            allocation(1, 1, 0),
            allocation(2, 1, 1),
            allocation(3, 2, 0),
        ] {
            unbound.apply(&Write::PutAllocation(a));
        }
        let ids = |u: &Unbound| u.allocations().map(|(_, _, a)| a.id.0).collect::<Vec<_>>();
        assert_eq!(ids(&unbound), vec![1, 2, 3]);
        let mut bound = allocation(1, 1, 0);
        bound.worker_id = Some(corral_core::ids::WorkerId(9));
        unbound.apply(&Write::PutAllocation(bound));
        assert_eq!(ids(&unbound), vec![2, 3]);
        // A stale close of an earlier allocation of the group leaves its
        // successor alone.
        let mut closed = allocation(7, 2, 0);
        closed.closed_at = Some(Timestamp(5));
        unbound.apply(&Write::PutAllocation(closed));
        assert!(unbound.waits(RunId(2), 0, AllocationId(3)));
        let mut ended = allocation(2, 1, 1);
        ended.closed_at = Some(Timestamp(6));
        unbound.apply(&Write::PutAllocation(ended));
        assert_eq!(ids(&unbound), vec![3]);
    }

    #[test]
    fn requests_are_found_by_name_and_by_allocation_until_deleted() {
        let mut unbound = Unbound::default();
        unbound.apply(&Write::PutWorkerRequest(request("p-1-0", 1)));
        unbound.apply(&Write::PutWorkerRequest(request("p-2-0", 2)));
        assert_eq!(
            unbound
                .request_for(AllocationId(1))
                .map(|r| r.name.as_str()),
            Some("p-1-0")
        );
        // The next generation of allocation 1 replaces the first.
        unbound.apply(&Write::PutWorkerRequest(request("p-1-1", 1)));
        unbound.apply(&Write::DeleteWorkerRequest("p-1-0".into()));
        assert_eq!(
            unbound
                .request_for(AllocationId(1))
                .map(|r| r.name.as_str()),
            Some("p-1-1")
        );
        unbound.apply(&Write::DeleteWorkerRequest("p-1-1".into()));
        assert!(unbound.request_for(AllocationId(1)).is_none());
        assert!(unbound.request("p-2-0").is_some());
        assert_eq!(unbound.requests().count(), 1);
    }
}
