//! The provider of `static` pools: it creates nothing. A static pool's
//! agents are started by its operators on hosts of their own and join with an
//! agent token; its allocations are placed on those agents at admission.

use async_trait::async_trait;
use corral_core::pool::PoolSpec;

use super::{Existing, Provider, ProviderError, WorkerRequest};

pub struct OperatedProvider;

#[async_trait]
impl Provider for OperatedProvider {
    fn provisions(&self) -> bool {
        false
    }

    /// Nothing to create: the operators' agents are the workers.
    async fn create(&self, request: &WorkerRequest) -> Result<String, ProviderError> {
        Ok(request.name.clone())
    }

    /// Nothing to delete: an operator's agent is retired through the protocol.
    async fn delete(&self, _reference: &str) -> Result<(), ProviderError> {
        Ok(())
    }

    /// It holds nothing of its own.
    async fn list(&self, _pools: &[PoolSpec]) -> Result<Vec<Existing>, ProviderError> {
        Ok(Vec::new())
    }
}
