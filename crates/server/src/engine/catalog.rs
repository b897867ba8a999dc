//! The catalog: pools, tenants and tokens, and what the server creates on its
//! first start. Every change is audited in the transaction that makes it.

use corral_core::access::Role;
use corral_core::error::FieldErrors;
use corral_core::manifest::Document;
use corral_store::{AuditRecord, SessionWrite, TokenRecord};
use serde_json::{Value, json};

use super::*;
use crate::auth::{self, Principal};
use crate::provider::kind_name as provider_name;

/// What the server created on its first start.
#[derive(Debug, Default)]
pub struct Bootstrap {
    /// Sentences for the log.
    pub created: Vec<String>,
    /// The secret of the admin token made on an empty store, shown once.
    pub admin_secret: Option<String>,
}

/// A token as the audit log and the API show it: never its hash.
pub fn token_json(t: &TokenRecord) -> Value {
    json!({
        "name": t.name,
        "role": t.role.name(),
        "tenant": t.role.tenant(),
        "pool": t.role.pool(),
        "expires_at": t.expires_at.map(|t| t.0),
        "revoked_at": t.revoked_at.map(|t| t.0),
    })
}

fn spec_json<T: serde::Serialize>(spec: &T) -> Value {
    serde_json::to_value(spec).expect("specs serialize to JSON: plain data, string keys")
}

/// One entry of the audit log.
pub(super) struct Change<'a> {
    pub kind: &'static str,
    pub name: &'a str,
    pub action: &'static str,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

impl Change<'_> {
    pub(super) fn write(self, state: &mut State, who: &Principal, at: Timestamp) -> Write {
        Write::AppendAudit(AuditRecord {
            id: state.next_audit_id(),
            at,
            who: who.name.clone(),
            kind: self.kind.into(),
            name: self.name.into(),
            action: self.action.into(),
            before: self.before,
            after: self.after,
        })
    }
}

/// A pool or a tenant: what the catalog keeps by name.
trait Entry: serde::Serialize + PartialEq + Sized {
    const KIND: &'static str;
    type Record;
    fn name(&self) -> &str;
    fn problems(&self) -> Vec<FieldError>;
    /// What the providers of this server find wrong with the entry.
    fn provider_problems(&self, _providers: &Providers) -> Vec<FieldError> {
        Vec::new()
    }
    /// A problem for each object the entry names that does not exist, nor
    /// is in `also` (what the same apply creates). A name the stored entry
    /// already had is let be, so that an entry saved unchanged is never refused.
    fn unknown_names(&self, state: &State, also: &BTreeSet<&str>) -> Vec<FieldError>;
    /// The stored spec of `name`, with its creation and update times.
    fn stored<'a>(state: &'a State, name: &str) -> Option<(&'a Self, Timestamp, Timestamp)>;
    fn into_record(self, created_at: Timestamp, updated_at: Timestamp) -> Self::Record;
    fn put(record: &Self::Record) -> Write;
    fn delete(name: &str) -> Write;
    /// Whether an allocation holds something of `name`.
    fn holds(allocation: &AllocationRecord, name: &str) -> bool;
    /// What else a delete of `name` writes.
    fn with_delete(state: &State, name: &str, now: Timestamp) -> Vec<Write>;
}

impl Entry for PoolSpec {
    const KIND: &'static str = "pool";
    type Record = PoolRecord;
    fn name(&self) -> &str {
        &self.name
    }
    fn problems(&self) -> Vec<FieldError> {
        PoolSpec::problems(self)
    }
    /// A pool whose kind this server has no provider for is refused; one it
    /// has is checked by it.
    fn provider_problems(&self, providers: &Providers) -> Vec<FieldError> {
        match providers.of(self.provider) {
            Some(provider) => provider.check(self),
            None => vec![FieldError::new(
                "provider",
                format!(
                    "this server has no {} provider{}",
                    provider_name(self.provider),
                    match self.provider {
                        Provider::Kubernetes => {
                            ": it was built without the kubernetes feature, or found no cluster (--kubeconfig, $KUBECONFIG, or in-cluster)"
                        }
                        _ => "",
                    }
                ),
            )],
        }
    }
    fn unknown_names(&self, _: &State, _: &BTreeSet<&str>) -> Vec<FieldError> {
        Vec::new()
    }
    fn stored<'a>(state: &'a State, name: &str) -> Option<(&'a Self, Timestamp, Timestamp)> {
        state
            .pools
            .get(name)
            .map(|p| (&p.spec, p.created_at, p.updated_at))
    }
    fn into_record(self, created_at: Timestamp, updated_at: Timestamp) -> PoolRecord {
        PoolRecord {
            spec: self,
            created_at,
            updated_at,
        }
    }
    fn put(record: &PoolRecord) -> Write {
        Write::PutPool(record.clone())
    }
    fn delete(name: &str) -> Write {
        Write::DeletePool(name.into())
    }
    fn holds(allocation: &AllocationRecord, name: &str) -> bool {
        allocation.pool == name
    }
    /// The pool's workers are retired with it.
    fn with_delete(state: &State, name: &str, now: Timestamp) -> Vec<Write> {
        state
            .workers
            .values()
            .filter(|w| w.record.pool == name)
            .map(|w| {
                Write::PutWorker(WorkerRecord {
                    state: WorkerState::Gone,
                    updated_at: now,
                    ..w.record.clone()
                })
            })
            .collect()
    }
}

impl Entry for TenantSpec {
    const KIND: &'static str = "tenant";
    type Record = TenantRecord;
    fn name(&self) -> &str {
        &self.name
    }
    fn problems(&self) -> Vec<FieldError> {
        TenantSpec::problems(self)
    }
    fn unknown_names(&self, state: &State, also: &BTreeSet<&str>) -> Vec<FieldError> {
        let stored = state.tenants.get(&self.name).map(|t| t.spec.named_pools());
        self.unknown_pools(|pool| {
            state.pools.contains_key(pool)
                || also.contains(pool)
                || stored.iter().flatten().any(|(_, named)| *named == pool)
        })
    }
    fn stored<'a>(state: &'a State, name: &str) -> Option<(&'a Self, Timestamp, Timestamp)> {
        state
            .tenants
            .get(name)
            .map(|t| (&t.spec, t.created_at, t.updated_at))
    }
    fn into_record(self, created_at: Timestamp, updated_at: Timestamp) -> TenantRecord {
        TenantRecord {
            spec: self,
            created_at,
            updated_at,
        }
    }
    fn put(record: &TenantRecord) -> Write {
        Write::PutTenant(record.clone())
    }
    fn delete(name: &str) -> Write {
        Write::DeleteTenant(name.into())
    }
    fn holds(allocation: &AllocationRecord, name: &str) -> bool {
        allocation.tenant == name
    }
    fn with_delete(_: &State, _: &str, _: Timestamp) -> Vec<Write> {
        Vec::new()
    }
}

fn action_verb(action: Action) -> &'static str {
    match action {
        Action::Created => "create",
        Action::Updated | Action::Unchanged => "update",
    }
}

impl Engine {
    // ---- first start ----

    /// On an empty store: a `local` pool sized to this machine, a `default`
    /// tenant and an admin token, so that a pipeline runs with no set-up at all.
    /// Whenever no admin token is live (all revoked or expired, or the first
    /// start's was never kept), a new `admin` token is made: whoever can start
    /// the server owns its data directory anyway. `keep` stores its secret
    /// before anything is committed, so a secret is never lost.
    pub async fn bootstrap(
        &self,
        machine: Resources,
        keep: impl FnOnce(&str) -> std::io::Result<()>,
    ) -> Result<Bootstrap> {
        let mut state = self.state.lock().await;
        let now = self.now();
        let who = Principal::server();
        let mut writes = Vec::new();
        let mut done = Bootstrap::default();
        if state.pools.is_empty() {
            let spec = PoolSpec {
                name: "local".into(),
                provider: Provider::Local,
                capacity: machine.into(),
                max_workers: 16,
                labels: BTreeMap::new(),
                price: Default::default(),
                state: Default::default(),
                max_agent: Default::default(),
                require_confinement: false,
                kubernetes: None,
            };
            done.created
                .push(format!("pool local ({machine}, 16 workers)"));
            writes.push(
                Change {
                    kind: "pool",
                    name: "local",
                    action: "create",
                    before: None,
                    after: Some(spec_json(&spec)),
                }
                .write(&mut state, &who, now),
            );
            writes.push(Write::PutPool(PoolRecord {
                spec,
                created_at: now,
                updated_at: now,
            }));
        }
        if state.tenants.is_empty() {
            let spec = TenantSpec::unlimited("default");
            done.created.push("tenant default (no quota)".into());
            writes.push(
                Change {
                    kind: "tenant",
                    name: "default",
                    action: "create",
                    before: None,
                    after: Some(spec_json(&spec)),
                }
                .write(&mut state, &who, now),
            );
            writes.push(Write::PutTenant(TenantRecord {
                spec,
                created_at: now,
                updated_at: now,
            }));
        }
        let mut token = None;
        if !self.credentials.has_live_admin(now) {
            let secret = auth::new_token_secret();
            keep(&secret).map_err(EngineError::KeepSecret)?;
            let before = self.credentials.token("admin");
            let record = TokenRecord {
                name: "admin".into(),
                hash: auth::hash(&secret),
                role: Role::Admin,
                created_at: now,
                expires_at: None,
                revoked_at: None,
                last_used_at: None,
            };
            writes.push(
                Change {
                    kind: "token",
                    name: "admin",
                    action: "create",
                    before: before.as_ref().map(token_json),
                    after: Some(token_json(&record)),
                }
                .write(&mut state, &who, now),
            );
            writes.push(Write::PutToken(record.clone()));
            done.created.push("token admin (role admin)".into());
            done.admin_secret = Some(secret);
            token = Some(record);
        }
        let mut fx = Effects::default();
        self.stage(&mut state, writes, &mut fx);
        if let Some(token) = token {
            self.credentials.put_token(token);
        }
        drop(state);
        self.finish(fx).await?;
        Ok(done)
    }

    // ---- pools and tenants ----

    /// Creates or replaces a pool. `create_only` refuses an existing name.
    pub async fn put_pool(
        &self,
        who: &Principal,
        spec: PoolSpec,
        create_only: bool,
    ) -> Result<(PoolRecord, Action)> {
        self.put_entry(who, spec, create_only).await
    }

    /// Deletes a pool and retires its workers; refused while it holds allocations.
    pub async fn delete_pool(&self, who: &Principal, name: &str) -> Result<()> {
        self.delete_entry::<PoolSpec>(who, name).await
    }

    /// Creates or replaces a tenant. `create_only` refuses an existing name.
    pub async fn put_tenant(
        &self,
        who: &Principal,
        spec: TenantSpec,
        create_only: bool,
    ) -> Result<(TenantRecord, Action)> {
        self.put_entry(who, spec, create_only).await
    }

    /// Deletes a tenant; refused while it holds allocations.
    pub async fn delete_tenant(&self, who: &Principal, name: &str) -> Result<()> {
        self.delete_entry::<TenantSpec>(who, name).await
    }

    /// The pools a tenant names that do not exist (nor did when it was
    /// last saved), for a form that shows them beside its other problems.
    pub async fn unknown_pools(&self, spec: &TenantSpec) -> Vec<FieldError> {
        let state = self.read().await;
        spec.unknown_names(&state, &BTreeSet::new())
    }

    /// Applies pools and tenants together: every problem of every document is
    /// found before anything is applied (a tenant may name a pool the same
    /// apply creates), then all are staged under one lock, in order.
    pub async fn apply(
        &self,
        who: &Principal,
        docs: Vec<Document>,
    ) -> Result<Vec<(&'static str, String, Action)>> {
        let mut problems: Vec<FieldError> = Vec::new();
        for doc in &docs {
            match doc {
                Document::Pool(spec) => {
                    problems.extend(spec.problems());
                    problems.extend(spec.provider_problems(&self.providers));
                }
                Document::Tenant(spec) => problems.extend(spec.problems()),
                Document::Pipeline(_) => {}
            }
        }
        let mut state = self.state.lock().await;
        let created: BTreeSet<&str> = docs
            .iter()
            .filter_map(|d| match d {
                Document::Pool(p) => Some(p.name.as_str()),
                _ => None,
            })
            .collect();
        for doc in &docs {
            if let Document::Tenant(spec) = doc {
                problems.extend(spec.unknown_names(&state, &created));
            }
        }
        if let Some(problems) = FieldErrors::new(problems) {
            return Err(problems.into());
        }
        let now = self.now();
        let mut fx = Effects {
            controller: true,
            ..Effects::default()
        };
        let mut applied = Vec::with_capacity(docs.len());
        for doc in docs {
            match doc {
                Document::Pool(spec) => {
                    let (r, a) = self.stage_entry(&mut state, who, spec, false, now, &mut fx)?;
                    applied.push(("Pool", r.spec.name, a));
                }
                Document::Tenant(spec) => {
                    let (r, a) = self.stage_entry(&mut state, who, spec, false, now, &mut fx)?;
                    applied.push(("Tenant", r.spec.name, a));
                }
                Document::Pipeline(_) => {}
            }
        }
        drop(state);
        self.finish(fx).await?;
        Ok(applied)
    }

    /// Stages a pool or tenant write with its audit entry unless nothing
    /// changed (an unchanged entry writes nothing, audit included); the
    /// controller looks again, since limits may have moved.
    async fn put_entry<E: Entry>(
        &self,
        who: &Principal,
        spec: E,
        create_only: bool,
    ) -> Result<(E::Record, Action)> {
        let mut problems = spec.problems();
        problems.extend(spec.provider_problems(&self.providers));
        let mut state = self.state.lock().await;
        problems.extend(spec.unknown_names(&state, &BTreeSet::new()));
        if let Some(problems) = FieldErrors::new(problems) {
            return Err(problems.into());
        }
        let now = self.now();
        let mut fx = Effects {
            controller: true,
            ..Effects::default()
        };
        let done = self.stage_entry(&mut state, who, spec, create_only, now, &mut fx)?;
        drop(state);
        self.finish(fx).await?;
        Ok(done)
    }

    /// Stages an entry checked already, with its audit entry, unless nothing changed.
    fn stage_entry<E: Entry>(
        &self,
        state: &mut State,
        who: &Principal,
        spec: E,
        create_only: bool,
        now: Timestamp,
        fx: &mut Effects,
    ) -> Result<(E::Record, Action)> {
        let old = E::stored(state, spec.name());
        let before = old.map(|(s, _, _)| spec_json(s));
        let (created_at, updated_at, action) =
            upsert(E::KIND, spec.name(), old, &spec, create_only, now)?;
        let name = spec.name().to_string();
        let after = spec_json(&spec);
        let record = spec.into_record(created_at, updated_at);
        if action != Action::Unchanged {
            let audit = Change {
                kind: E::KIND,
                name: &name,
                action: action_verb(action),
                before,
                after: Some(after),
            }
            .write(state, who, now);
            self.stage(state, vec![audit, E::put(&record)], fx);
        }
        Ok((record, action))
    }

    async fn delete_entry<E: Entry>(&self, who: &Principal, name: &str) -> Result<()> {
        let mut state = self.state.lock().await;
        let before = E::stored(&state, name).map(|(s, _, _)| spec_json(s));
        check_deletable(&state, E::KIND, name, before.is_some(), |a| {
            E::holds(a, name)
        })?;
        let now = self.now();
        let mut writes = vec![
            Change {
                kind: E::KIND,
                name,
                action: "delete",
                before,
                after: None,
            }
            .write(&mut state, who, now),
            E::delete(name),
        ];
        writes.extend(E::with_delete(&state, name, now));
        let mut fx = Effects::default();
        self.stage(&mut state, writes, &mut fx);
        drop(state);
        self.finish(fx).await
    }

    // ---- tokens ----

    /// Creates a token and returns it with its secret, which is not kept. A
    /// revoked token's name may be taken again.
    pub async fn create_token(
        &self,
        who: &Principal,
        name: &str,
        role: Role,
        expires_at: Option<Timestamp>,
    ) -> Result<(TokenRecord, String)> {
        corral_core::error::check_name("name", name)?;
        let mut state = self.state.lock().await;
        match &role {
            Role::Tenant { tenant } if !state.tenants.contains_key(tenant) => {
                return Err(FieldError::new("tenant", format!("unknown tenant {tenant:?}")).into());
            }
            Role::Agent { pool } => match state.pools.get(pool) {
                None => {
                    return Err(FieldError::new("pool", format!("unknown pool {pool:?}")).into());
                }
                Some(p) if p.spec.provider != Provider::Static => {
                    return Err(FieldError::new(
                        "pool",
                        format!(
                            "pool {pool} is not static: agent tokens join static pools (the server spawns the agents of its other pools itself)"
                        ),
                    )
                    .into());
                }
                Some(_) => {}
            },
            _ => {}
        }
        let before = self.credentials.token(name);
        if before.as_ref().is_some_and(|t| t.revoked_at.is_none()) {
            return Err(EngineError::Conflict(format!(
                "token {name} already exists; revoke it first to replace it"
            )));
        }
        let now = self.now();
        let secret = auth::new_token_secret();
        let record = TokenRecord {
            name: name.into(),
            hash: auth::hash(&secret),
            role,
            created_at: now,
            expires_at,
            revoked_at: None,
            last_used_at: None,
        };
        let writes = vec![
            Change {
                kind: "token",
                name,
                action: "create",
                before: before.as_ref().map(token_json),
                after: Some(token_json(&record)),
            }
            .write(&mut state, who, now),
            Write::PutToken(record.clone()),
        ];
        let mut fx = Effects::default();
        self.stage(&mut state, writes, &mut fx);
        // Known at once, under the lock, so that a concurrent create of the
        // name sees it; a failed commit reloads the credentials from the store.
        self.credentials.put_token(record.clone());
        drop(state);
        self.finish(fx).await?;
        Ok((record, secret))
    }

    /// Revokes a token: it is refused from the moment this returns. Revoking a
    /// revoked token changes nothing; the last live admin token stays.
    pub async fn revoke_token(&self, who: &Principal, name: &str) -> Result<TokenRecord> {
        let mut state = self.state.lock().await;
        let before = self
            .credentials
            .token(name)
            .ok_or_else(|| EngineError::NotFound {
                what: "token",
                name: name.into(),
            })?;
        if before.revoked_at.is_some() {
            return Ok(before);
        }
        let now = self.now();
        let others = self
            .credentials
            .live_admins(now)
            .into_iter()
            .any(|n| n != name);
        if before.role == Role::Admin && !others {
            return Err(EngineError::Conflict(format!(
                "token {name} is the last admin token; create another admin token before revoking it"
            )));
        }
        let record = TokenRecord {
            revoked_at: Some(now),
            last_used_at: self.credentials.last_used(name).or(before.last_used_at),
            ..before.clone()
        };
        let writes = vec![
            Change {
                kind: "token",
                name,
                action: "revoke",
                before: Some(token_json(&before)),
                after: Some(token_json(&record)),
            }
            .write(&mut state, who, now),
            Write::PutToken(record.clone()),
            // Its console sessions end with it.
            Write::Session(SessionWrite::EndOfToken(record.hash.clone())),
        ];
        let mut fx = Effects::default();
        self.stage(&mut state, writes, &mut fx);
        // The workers registered with it end with it (a leaked agent token is
        // cut off): their steps run again elsewhere.
        let registered: BTreeSet<WorkerId> = state
            .workers
            .values()
            .filter(|w| w.record.token_name.as_deref() == Some(name))
            .map(|w| w.record.id)
            .collect();
        self.lose_workers(&mut state, &registered, "its token was revoked", &mut fx);
        // Refused from now on, before the lock is let go: two revokes cannot
        // both count the other's token as the admin that stays; nor can the
        // workers' secrets be used.
        self.credentials.put_token(record.clone());
        self.sessions
            .apply(&SessionWrite::EndOfToken(record.hash.clone()));
        for worker in &registered {
            self.credentials.forget_worker(*worker);
        }
        drop(state);
        self.finish(fx).await?;
        Ok(record)
    }

    /// Writes when a token was last used (the caller notes uses in memory and
    /// asks for this at most once a minute per token); nobody waits for it.
    pub async fn persist_token_use(&self, name: &str) {
        let at = self
            .credentials
            .last_used(name)
            .unwrap_or_else(|| self.now());
        let mut state = self.state.lock().await;
        let mut fx = Effects::default();
        self.stage(
            &mut state,
            vec![Write::TouchToken {
                name: name.into(),
                at,
            }],
            &mut fx,
        );
    }
}
