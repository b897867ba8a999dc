//! Provisioning behind the [`Provider`] trait: a provider creates, deletes and
//! lists the workers of the pools it serves, and nothing else (the agents it
//! starts register themselves through the protocol). The engine holds one per
//! kind of pool (`local`, `static`) and calls it only from its provisioning
//! worker, never under its lock nor on a request's path.
//!
//! Implementations: [`local::LocalProvider`] spawns `corral agent` processes on
//! the server's host, `kubernetes::KubernetesProvider` (with the feature
//! `kubernetes`) creates a pod per worker, [`operated::OperatedProvider`] does
//! nothing (a static pool's operators start its agents), and
//! [`fake::FakeProvider`] is an in-memory provider for tests that can be told
//! to fail or hang.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use corral_core::error::FieldError;
use corral_core::ids::{AllocationId, RunId};
use corral_core::pool::{PoolSpec, Provider as PoolProvider};
use corral_core::request::WorkerTemplate;
use corral_core::resources::Resources;

pub mod fake;
#[cfg(feature = "kubernetes")]
pub mod kubernetes;
pub mod local;
pub mod operated;

pub use local::LocalProvider;

/// A worker to create: its name (a DNS-1123 label, the same for every create
/// of one request), its shape, the pool as applied, the run and allocation it
/// serves, and the one-time credential its agent registers with.
#[derive(Clone)]
pub struct WorkerRequest {
    pub name: String,
    pub template: WorkerTemplate,
    pub pool: PoolSpec,
    pub run: RunId,
    pub allocation: AllocationId,
    pub credential: String,
}

impl std::fmt::Debug for WorkerRequest {
    /// Everything but the credential, which no log may hold.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerRequest")
            .field("name", &self.name)
            .field("template", &self.template)
            .field("run", &self.run)
            .field("allocation", &self.allocation)
            .finish_non_exhaustive()
    }
}

/// A worker a provider holds: its name, the provider's reference to it, and
/// why it is not up, when the provider can tell.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Existing {
    pub name: String,
    pub reference: String,
    pub problem: Option<Problem>,
}

/// Why a worker the provider holds is not up, in the provider's words
/// (`pod corral-42-1: 0/3 nodes are available: 3 Insufficient cpu.`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Problem {
    pub message: String,
    /// It will never come up (it ended, or its image cannot be pulled): its
    /// request is replaced, as a lost worker's step is run again.
    pub fatal: bool,
}

/// Why a provider could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// The provider is not ready for work yet (the server's URL is not known).
    #[error("{0}")]
    NotReady(String),
    /// A failure a fake provider was told to give.
    #[error("{0}")]
    Injected(String),
    /// A Kubernetes API call failed: what was asked, and the answer.
    #[cfg(feature = "kubernetes")]
    #[error("{what}: {source}")]
    Kubernetes { what: String, source: kube::Error },
    /// The Kubernetes client configuration cannot be used.
    #[cfg(feature = "kubernetes")]
    #[error("kubernetes config: {0}")]
    KubeConfig(String),
    /// The worker cannot be described to the provider (a pool's pod
    /// template that does not make a pod).
    #[cfg(feature = "kubernetes")]
    #[error("{0}")]
    Spec(String),
}

/// Creates, deletes and lists workers. `create` is idempotent by name: a
/// worker of that name that exists already is the one created, so a request
/// created again after a restart never makes two.
#[async_trait]
pub trait Provider: Send + Sync {
    /// Whether it creates workers for allocations; a static pool's agents are
    /// started by its operators, and its allocations wait for them.
    fn provisions(&self) -> bool;

    /// Creates the worker (or finds it, by name) and returns its reference.
    async fn create(&self, request: &WorkerRequest) -> Result<String, ProviderError>;

    /// Deletes the worker of `reference`; one that is gone already is no error.
    async fn delete(&self, reference: &str) -> Result<(), ProviderError>;

    /// The workers it holds now for `pools` (the pools of its kind), by
    /// name: what a restarted server reconciles its worker requests with.
    async fn list(&self, pools: &[PoolSpec]) -> Result<Vec<Existing>, ProviderError>;

    /// Whether `list` is kept current by a watch (cheap to call), so the
    /// provisioning worker reads it every second for workers' problems.
    fn watches(&self) -> bool {
        false
    }

    /// The capacity a pool whose spec says `capacity: auto` has now; `None`
    /// when this provider does not size pools.
    async fn capacity(&self, _pool: &PoolSpec) -> Result<Option<Resources>, ProviderError> {
        Ok(None)
    }

    /// What is wrong with `pool` for this provider beyond what the pool's
    /// own checks find, each problem with its field; checked when the pool
    /// is applied.
    fn check(&self, _pool: &PoolSpec) -> Vec<FieldError> {
        Vec::new()
    }
}

/// The provider of each kind of pool; a pool of a kind without one
/// (`kubernetes` on a server built without it, or without a cluster) cannot
/// be applied.
#[derive(Clone, Default)]
pub struct Providers {
    by_kind: BTreeMap<&'static str, (PoolProvider, Arc<dyn Provider>)>,
}

impl Providers {
    /// `local` pools on `local`, `static` ones operated by hand.
    pub fn standard(local: Arc<local::LocalProvider>) -> Providers {
        Providers::default()
            .with(PoolProvider::Local, local)
            .with(PoolProvider::Static, Arc::new(operated::OperatedProvider))
    }

    /// These providers, with `provider` serving the pools of `kind`.
    pub fn with(mut self, kind: PoolProvider, provider: Arc<dyn Provider>) -> Providers {
        self.by_kind.insert(kind_name(kind), (kind, provider));
        self
    }

    /// The provider of pools of `kind`.
    pub fn of(&self, kind: PoolProvider) -> Option<&Arc<dyn Provider>> {
        self.by_kind.get(kind_name(kind)).map(|(_, p)| p)
    }

    /// Every kind with its provider.
    pub fn all(&self) -> impl Iterator<Item = (PoolProvider, &Arc<dyn Provider>)> {
        self.by_kind.values().map(|(k, p)| (*k, p))
    }
}

/// The name of a kind of pool, as written in its `provider`.
pub fn kind_name(kind: PoolProvider) -> &'static str {
    match kind {
        PoolProvider::Local => "local",
        PoolProvider::Static => "static",
        PoolProvider::Kubernetes => "kubernetes",
    }
}

/// The name of the worker of an allocation's `generation`-th request: the
/// pool's name (lowercased, other characters than letters and digits as `-`,
/// cut to fit), the allocation and the generation. A DNS-1123 label (at most
/// 63 lowercase letters, digits and `-`, starting and ending with a letter or
/// digit) for every pool name, as a Kubernetes pod's name must be; the same
/// for every create of one request, and another for the next request.
pub fn worker_name(pool: &str, allocation: AllocationId, generation: u32) -> String {
    let suffix = format!("-{}-{generation}", allocation.0.unsigned_abs());
    let room = 63 - suffix.len();
    let head: String = pool
        .chars()
        .map(|c| match c {
            'a'..='z' | '0'..='9' => c,
            'A'..='Z' => c.to_ascii_lowercase(),
            _ => '-',
        })
        .collect();
    let head = head.trim_start_matches('-');
    // ASCII now, so any byte is a character boundary.
    let head = head[..head.len().min(room)].trim_end_matches('-');
    let head = if head.is_empty() { "worker" } else { head };
    format!("{head}{suffix}")
}

#[cfg(test)]
mod tests {
    use corral_core::error::check_name;
    use corral_core::ids::AllocationId;
    use proptest::prelude::*;

    use super::worker_name;

    /// A DNS-1123 label, as Kubernetes checks a pod's name.
    fn is_dns_label(name: &str) -> bool {
        let bytes = name.as_bytes();
        !bytes.is_empty()
            && bytes.len() <= 63
            && bytes
                .iter()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
            && bytes[0].is_ascii_alphanumeric()
            && bytes[bytes.len() - 1].is_ascii_alphanumeric()
    }

    #[test]
    fn worker_names_are_dns_labels_for_awkward_pool_names() {
        let longest = format!("p{}", "-".repeat(62));
        let cases = [
            ("local", 7, 0, "local-7-0"),
            ("GPU_Pool.eu", 12, 3, "gpu-pool-eu-12-3"),
            ("_x", 1, 0, "x-1-0"),
            ("---", 1, 0, "worker-1-0"),
            (longest.as_str(), 5, 1, "p-5-1"),
            ("Z", i64::MIN, u32::MAX, "z-9223372036854775808-4294967295"),
        ];
        for (pool, allocation, generation, expected) in cases {
            let name = worker_name(pool, AllocationId(allocation), generation);
            assert_eq!(name, expected, "{pool:?}");
            assert!(is_dns_label(&name), "{name:?}");
        }
        let long = worker_name(&"a".repeat(63), AllocationId(i64::MAX), u32::MAX);
        assert_eq!(long.len(), 63);
        assert!(is_dns_label(&long), "{long:?}");
        assert!(!is_dns_label("Local-1-0") && !is_dns_label("a-") && !is_dns_label(""));
    }

    proptest! {
        #[test]
        fn every_valid_pool_name_gives_dns_labels_one_per_request(
            pool in "[A-Za-z0-9][A-Za-z0-9._-]{0,62}",
            allocation in any::<i64>(),
            generation in 0u32..u32::MAX,
        ) {
            prop_assume!(check_name("name", &pool).is_ok());
            let name = worker_name(&pool, AllocationId(allocation), generation);
            prop_assert!(is_dns_label(&name), "{name:?}");
            prop_assert_eq!(&name, &worker_name(&pool, AllocationId(allocation), generation));
            prop_assert_ne!(name, worker_name(&pool, AllocationId(allocation), generation + 1));
        }
    }
}
