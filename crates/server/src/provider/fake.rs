//! An in-memory provider for tests: it keeps the names of the workers it
//! "created", records every call, and can be told to fail its next creates or
//! to hang in them (a create that never answers).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use async_trait::async_trait;
use corral_core::error::FieldError;
use corral_core::pool::PoolSpec;
use corral_core::resources::Resources;

use super::{Existing, Problem, Provider, ProviderError, WorkerRequest};

#[derive(Default)]
struct Book {
    workers: BTreeSet<String>,
    /// The credential of each worker's last create, as its agent would get it.
    credentials: BTreeMap<String, String>,
    creates: Vec<String>,
    deletes: Vec<String>,
    /// What `list` says of a worker that is not up.
    problems: BTreeMap<String, Problem>,
    failing: u32,
    hanging: bool,
    /// What `check` finds wrong with every pool.
    refusals: Vec<FieldError>,
    watching: bool,
    /// How many times it was listed.
    lists: u64,
    /// What `capacity` finds for an auto pool.
    capacity: Option<Resources>,
}

/// A provider whose workers are names in memory.
#[derive(Default)]
pub struct FakeProvider {
    book: Mutex<Book>,
}

impl FakeProvider {
    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        self.book
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next `n` creates fail.
    pub fn fail_next(&self, n: u32) {
        self.book().failing = n;
    }

    /// Creates hang (never answer) until told otherwise.
    pub fn hang(&self, hanging: bool) {
        self.book().hanging = hanging;
    }

    /// From now on it says it watches its workers, so that the engine reads
    /// its list every second (set before the provisioning worker starts).
    pub fn watch(&self) {
        self.book().watching = true;
    }

    /// From now on `capacity` finds `capacity` for every auto pool.
    pub fn set_capacity(&self, capacity: Option<Resources>) {
        self.book().capacity = capacity;
    }

    /// A worker it holds that nobody asked for (as one left by a crash).
    pub fn insert(&self, name: &str) {
        self.book().workers.insert(name.to_string());
    }

    /// A worker that went away by itself.
    pub fn remove(&self, name: &str) {
        self.book().workers.remove(name);
    }

    /// From now on, `list` says worker `name` is not up because of `problem`
    /// (or, with `None`, says nothing of it).
    pub fn set_problem(&self, name: &str, problem: Option<Problem>) {
        let mut book = self.book();
        match problem {
            Some(p) => book.problems.insert(name.to_string(), p),
            None => book.problems.remove(name),
        };
    }

    /// From now on, `check` finds `problems` in every pool.
    pub fn refuse_pools(&self, problems: Vec<FieldError>) {
        self.book().refusals = problems;
    }

    /// How many times it was listed (the engine's rounds of reading it).
    pub fn lists(&self) -> u64 {
        self.book().lists
    }

    /// The workers it holds, by name.
    pub fn workers(&self) -> Vec<String> {
        self.book().workers.iter().cloned().collect()
    }

    /// The credential the last create of worker `name` handed its agent.
    pub fn credential(&self, name: &str) -> Option<String> {
        self.book().credentials.get(name).cloned()
    }

    /// The names it was asked to create, in order (failed and hung ones too).
    pub fn creates(&self) -> Vec<String> {
        self.book().creates.clone()
    }

    /// The references it was asked to delete, in order.
    pub fn deletes(&self) -> Vec<String> {
        self.book().deletes.clone()
    }
}

#[async_trait]
impl Provider for FakeProvider {
    fn provisions(&self) -> bool {
        true
    }

    async fn create(&self, request: &WorkerRequest) -> Result<String, ProviderError> {
        let hanging = {
            let mut book = self.book();
            book.creates.push(request.name.clone());
            book.credentials
                .insert(request.name.clone(), request.credential.clone());
            if book.failing > 0 {
                book.failing -= 1;
                return Err(ProviderError::Injected(format!(
                    "told to fail creating {}",
                    request.name
                )));
            }
            if !book.hanging {
                book.workers.insert(request.name.clone());
            }
            book.hanging
        };
        if hanging {
            std::future::pending::<()>().await;
        }
        Ok(request.name.clone())
    }

    async fn delete(&self, reference: &str) -> Result<(), ProviderError> {
        let mut book = self.book();
        book.deletes.push(reference.to_string());
        book.workers.remove(reference);
        Ok(())
    }

    async fn list(&self, _pools: &[PoolSpec]) -> Result<Vec<Existing>, ProviderError> {
        let mut book = self.book();
        book.lists += 1;
        Ok(book
            .workers
            .iter()
            .map(|name| Existing {
                name: name.clone(),
                reference: name.clone(),
                problem: book.problems.get(name).cloned(),
            })
            .collect())
    }

    async fn capacity(&self, _pool: &PoolSpec) -> Result<Option<Resources>, ProviderError> {
        Ok(self.book().capacity)
    }

    /// Its book is always current; it says so once told to.
    fn watches(&self) -> bool {
        self.book().watching
    }

    fn check(&self, _pool: &PoolSpec) -> Vec<FieldError> {
        self.book().refusals.clone()
    }
}
