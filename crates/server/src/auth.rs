//! Credentials: API tokens, workers' secrets and the one-time credentials of
//! agents created by a provider. Secrets are 256 random bits; only their SHA-256 is
//! kept (a fast hash is right for random secrets: nothing to brute-force), and
//! every verified credential is one hash and one map lookup.
//!
//! The index here mirrors the store: the engine updates it once a change is
//! committed, so a revocation takes effect with the answer that reports it.

use std::collections::HashMap;
use std::sync::RwLock;

use corral_core::access::Role;
use corral_core::clock::Timestamp;
use corral_core::ids::WorkerId;
use corral_store::TokenRecord;
use sha2::{Digest, Sha256};

/// How a token's secret starts; tells a corral token from anything else.
const TOKEN_PREFIX: &str = "corral_";
/// A worker's secret, handed to it at registration.
const WORKER_PREFIX: &str = "corralw_";
/// A spawned local agent's one-time registration credential.
const SPAWN_PREFIX: &str = "corrals_";

/// `last_used_at` is written to the store at most this often per token.
const TOUCH_EVERY_MS: i64 = 60 * 1000;

/// A caller authenticated by an API token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name: what the audit log records.
    pub name: String,
    pub role: Role,
}

impl Principal {
    /// Whether this caller may see and act on what belongs to `tenant`.
    pub fn may_touch_tenant(&self, tenant: &str) -> bool {
        match &self.role {
            Role::Admin | Role::Viewer => true,
            Role::Tenant { tenant: own } => own == tenant,
            Role::Agent { .. } => false,
        }
    }

    /// The server itself, for what it does on its own (its first start).
    pub fn server() -> Principal {
        Principal {
            name: "corral".into(),
            role: Role::Admin,
        }
    }
}

/// What an agent created by a provider for this server may register as: its
/// worker request's pool and name, until the request's deadline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnGrant {
    pub pool: String,
    pub name: String,
    pub expires_at: Timestamp,
}

/// Who sent a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    Token(Principal),
    /// A registered worker, by its secret.
    Worker(WorkerId),
    /// A local agent spawned by this server, before it registers.
    Spawned {
        hash: String,
        grant: SpawnGrant,
    },
    /// A spawned agent's used credential, which only retries the
    /// registration of its worker, until that worker first polls.
    Registering(WorkerId),
}

/// Why a credential is not accepted: each is a 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error(
        "this call needs a token: send `Authorization: Bearer <token>` (`corral token create`, or the admin token in <data-dir>/admin.token)"
    )]
    Missing,
    #[error("the Authorization header is not `Bearer <token>` with a corral token")]
    Malformed,
    #[error("the token is not known to this server")]
    Unknown,
    #[error("token {0} has expired")]
    Expired(String),
    #[error("token {0} has been revoked")]
    Revoked(String),
}

/// A new secret with its prefix; 32 random bytes from the operating system.
fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system provides random bytes");
    format!("{prefix}{}", hex::encode(bytes))
}

pub fn new_token_secret() -> String {
    new_secret(TOKEN_PREFIX)
}

pub fn new_worker_secret() -> String {
    new_secret(WORKER_PREFIX)
}

pub fn new_spawn_secret() -> String {
    new_secret(SPAWN_PREFIX)
}

/// The SHA-256 of a secret, hex: what the store keeps.
pub fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// The secret of an `Authorization: Bearer` header value.
pub fn bearer(header: Option<&str>) -> Result<&str, AuthError> {
    let value = header.ok_or(AuthError::Missing)?;
    let secret = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or(AuthError::Malformed)?
        .trim();
    let well_formed = [TOKEN_PREFIX, WORKER_PREFIX, SPAWN_PREFIX]
        .iter()
        .filter_map(|p| secret.strip_prefix(p))
        .any(|rest| rest.len() == 64 && rest.bytes().all(|b| b.is_ascii_hexdigit()));
    if well_formed {
        Ok(secret)
    } else {
        Err(AuthError::Malformed)
    }
}

/// The holder of the token of hash `digest`, unless it is revoked or expired.
fn token_principal(index: &Index, digest: &str, now: Timestamp) -> Result<Principal, AuthError> {
    let token = index.tokens.get(digest).ok_or(AuthError::Unknown)?;
    if token.revoked_at.is_some() {
        return Err(AuthError::Revoked(token.name.clone()));
    }
    if token.expires_at.is_some_and(|at| at <= now) {
        return Err(AuthError::Expired(token.name.clone()));
    }
    Ok(Principal {
        name: token.name.clone(),
        role: token.role.clone(),
    })
}

/// What the agent of worker request `r` may register as.
pub fn grant_of(r: &corral_store::WorkerRequestRecord) -> SpawnGrant {
    SpawnGrant {
        pool: r.pool.clone(),
        name: r.name.clone(),
        expires_at: r.deadline,
    }
}

#[derive(Default)]
struct Index {
    /// Every token by the hash of its secret.
    tokens: HashMap<String, TokenRecord>,
    /// Live workers by the hash of their secret.
    workers: HashMap<String, WorkerId>,
    /// Created agents' credentials, by hash, until used, expired or revoked:
    /// the hashes of the worker requests' credentials, which the store keeps,
    /// so that an agent created before a restart still registers after it.
    spawns: HashMap<String, SpawnGrant>,
    /// Used spawn credentials by hash, each good for retrying its worker's
    /// registration until the worker first polls.
    registering: HashMap<String, WorkerId>,
    /// When each token was last used (in memory; the store hears of it less often).
    used: HashMap<String, Timestamp>,
    /// When the store last heard of each token's use.
    persisted: HashMap<String, Timestamp>,
}

/// The credentials the server accepts.
#[derive(Default)]
pub struct Credentials {
    index: RwLock<Index>,
}

impl Credentials {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces what is known with what the store holds: every token, the
    /// secrets of the workers that are ready, and the credentials of the
    /// worker requests. The workers' spawn credentials retry their
    /// registration again until they poll (after a restart, the server
    /// cannot tell whether they had).
    pub fn load_live(&self, live: &corral_store::Live) {
        self.load(
            live.tokens.iter().cloned(),
            live.workers
                .iter()
                .filter_map(|w| Some((w.id, w.secret_hash.clone()?))),
        );
        self.write().registering = live
            .workers
            .iter()
            .filter_map(|w| Some((w.spawn_hash.clone()?, w.id)))
            .collect();
        self.write().spawns = live
            .worker_requests
            .iter()
            .map(|r| (r.spawn_hash.clone(), grant_of(r)))
            .collect();
    }

    /// Replaces what is known with these tokens and workers' secret hashes.
    pub fn load(
        &self,
        tokens: impl IntoIterator<Item = TokenRecord>,
        workers: impl IntoIterator<Item = (WorkerId, String)>,
    ) {
        let mut index = self.write();
        index.tokens = tokens.into_iter().map(|t| (t.hash.clone(), t)).collect();
        index.workers = workers.into_iter().map(|(id, h)| (h, id)).collect();
    }

    /// Who holds `secret`, at `now`.
    pub fn resolve(&self, secret: &str, now: Timestamp) -> Result<Caller, AuthError> {
        let digest = hash(secret);
        let index = self.read();
        if secret.starts_with(WORKER_PREFIX) {
            return index
                .workers
                .get(&digest)
                .map(|id| Caller::Worker(*id))
                .ok_or(AuthError::Unknown);
        }
        if secret.starts_with(SPAWN_PREFIX) {
            // Once used, a spawn credential only retries its registration.
            return match (index.spawns.get(&digest), index.registering.get(&digest)) {
                (Some(grant), _) if grant.expires_at > now => Ok(Caller::Spawned {
                    hash: digest,
                    grant: grant.clone(),
                }),
                (_, Some(id)) => Ok(Caller::Registering(*id)),
                _ => Err(AuthError::Unknown),
            };
        }
        token_principal(&index, &digest, now).map(Caller::Token)
    }

    /// Who holds the token whose secret has hash `digest`, at `now`: what a
    /// console session opened with that token acts as.
    pub fn resolve_token_hash(&self, digest: &str, now: Timestamp) -> Result<Principal, AuthError> {
        token_principal(&self.read(), digest, now)
    }

    /// Whether `worker` holds `secret`.
    pub fn worker_holds(&self, worker: WorkerId, secret: &str) -> bool {
        let digest = hash(secret);
        self.read().workers.get(&digest) == Some(&worker)
    }

    /// Notes a use of token `name`; true when the store should hear of it.
    pub fn touch(&self, name: &str, now: Timestamp) -> bool {
        let mut index = self.write();
        let persisted = index.persisted.get(name).copied();
        match index.used.get_mut(name) {
            Some(t) => *t = now,
            None => {
                index.used.insert(name.to_string(), now);
            }
        }
        let due = persisted.is_none_or(|t| now.millis_since(t) >= TOUCH_EVERY_MS);
        if due {
            index.persisted.insert(name.to_string(), now);
        }
        due
    }

    /// When token `name` was last used, as far as this server knows.
    pub fn last_used(&self, name: &str) -> Option<Timestamp> {
        self.read().used.get(name).copied()
    }

    pub fn tokens(&self) -> Vec<TokenRecord> {
        let mut tokens: Vec<TokenRecord> = self.read().tokens.values().cloned().collect();
        tokens.sort_by(|a, b| a.name.cmp(&b.name));
        tokens
    }

    pub fn token(&self, name: &str) -> Option<TokenRecord> {
        self.read()
            .tokens
            .values()
            .find(|t| t.name == name)
            .cloned()
    }

    /// The names of the admin tokens that are neither revoked nor expired.
    pub fn live_admins(&self, now: Timestamp) -> Vec<String> {
        self.read()
            .tokens
            .values()
            .filter(|t| {
                t.role == Role::Admin
                    && t.revoked_at.is_none()
                    && t.expires_at.is_none_or(|at| at > now)
            })
            .map(|t| t.name.clone())
            .collect()
    }

    pub fn has_live_admin(&self, now: Timestamp) -> bool {
        !self.live_admins(now).is_empty()
    }

    /// A token being committed: replaces the one of the same name. A new
    /// secret under an old name starts with no use.
    pub fn put_token(&self, token: TokenRecord) {
        let mut index = self.write();
        let replaced = index
            .tokens
            .values()
            .any(|t| t.name == token.name && t.hash != token.hash);
        if replaced {
            index.used.remove(&token.name);
            index.persisted.remove(&token.name);
        }
        index.tokens.retain(|_, t| t.name != token.name);
        index.tokens.insert(token.hash.clone(), token);
    }

    pub fn put_worker(&self, worker: WorkerId, secret_hash: String) {
        self.write().workers.insert(secret_hash, worker);
    }

    pub fn forget_worker(&self, worker: WorkerId) {
        self.write().workers.retain(|_, id| *id != worker);
    }

    /// `worker` registered with the spawn credential of hash `spawn_hash`,
    /// which retries that registration until [`Credentials::end_registering`].
    pub fn put_registering(&self, spawn_hash: String, worker: WorkerId) {
        self.write().registering.insert(spawn_hash, worker);
    }

    /// `worker` polled (or is gone): its spawn credential is no use any more.
    pub fn end_registering(&self, worker: WorkerId) {
        if self.read().registering.values().any(|id| *id == worker) {
            self.write().registering.retain(|_, id| *id != worker);
        }
    }

    /// Registers a spawn credential; expired ones are dropped.
    pub fn grant_spawn(&self, secret_hash: String, grant: SpawnGrant, now: Timestamp) {
        let mut index = self.write();
        index.spawns.retain(|_, g| g.expires_at > now);
        index.spawns.insert(secret_hash, grant);
    }

    /// A spawn credential is no good any more (its request was replaced).
    pub fn revoke_spawn(&self, secret_hash: &str) {
        self.write().spawns.remove(secret_hash);
    }

    /// Uses up a spawn credential; false if it was used already.
    pub fn consume_spawn(&self, secret_hash: &str) -> bool {
        self.write().spawns.remove(secret_hash).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(name: &str, secret: &str, role: Role) -> TokenRecord {
        TokenRecord {
            name: name.into(),
            hash: hash(secret),
            role,
            created_at: Timestamp(0),
            expires_at: Some(Timestamp(1000)),
            revoked_at: None,
            last_used_at: None,
        }
    }

    #[test]
    fn secrets_are_random_256_bits_and_only_their_hash_resolves() {
        let a = new_token_secret();
        let b = new_token_secret();
        assert_ne!(a, b);
        assert_eq!(a.len(), TOKEN_PREFIX.len() + 64);
        let credentials = Credentials::default();
        credentials.load([token("ci", &a, Role::Viewer)], []);
        assert_eq!(
            credentials.resolve(&a, Timestamp(10)),
            Ok(Caller::Token(Principal {
                name: "ci".into(),
                role: Role::Viewer
            }))
        );
        assert_eq!(
            credentials.resolve(&b, Timestamp(10)),
            Err(AuthError::Unknown)
        );
        assert_eq!(
            credentials.resolve(&a, Timestamp(1000)),
            Err(AuthError::Expired("ci".into()))
        );
        let mut revoked = token("ci", &a, Role::Viewer);
        revoked.revoked_at = Some(Timestamp(5));
        credentials.put_token(revoked);
        assert_eq!(
            credentials.resolve(&a, Timestamp(10)),
            Err(AuthError::Revoked("ci".into()))
        );
    }

    #[test]
    fn uses_are_noted_at_once_and_persisted_once_a_minute() {
        let credentials = Credentials::default();
        assert!(credentials.touch("ci", Timestamp(0)));
        assert!(!credentials.touch("ci", Timestamp(59_999)));
        assert_eq!(credentials.last_used("ci"), Some(Timestamp(59_999)));
        assert!(credentials.touch("ci", Timestamp(60_000)));
        assert!(credentials.touch("other", Timestamp(60_001)));
    }

    #[test]
    fn bearer_headers_are_checked_for_shape() {
        let secret = new_worker_secret();
        let header = format!("Bearer {secret}");
        assert_eq!(bearer(Some(&header)), Ok(secret.as_str()));
        assert_eq!(bearer(None), Err(AuthError::Missing));
        assert_eq!(bearer(Some("Basic abc")), Err(AuthError::Malformed));
        assert_eq!(bearer(Some("Bearer corral_xyz")), Err(AuthError::Malformed));
    }

    #[test]
    fn workers_and_spawned_agents_are_told_apart_and_spawn_credentials_are_used_once() {
        let credentials = Credentials::default();
        let worker = new_worker_secret();
        credentials.put_worker(WorkerId(7), hash(&worker));
        assert_eq!(
            credentials.resolve(&worker, Timestamp(0)),
            Ok(Caller::Worker(WorkerId(7)))
        );
        assert!(credentials.worker_holds(WorkerId(7), &worker));
        assert!(!credentials.worker_holds(WorkerId(8), &worker));
        let spawn = new_spawn_secret();
        let grant = SpawnGrant {
            pool: "local".into(),
            name: "local-1".into(),
            expires_at: Timestamp(100),
        };
        credentials.grant_spawn(hash(&spawn), grant.clone(), Timestamp(0));
        assert_eq!(
            credentials.resolve(&spawn, Timestamp(1)),
            Ok(Caller::Spawned {
                hash: hash(&spawn),
                grant
            })
        );
        assert!(credentials.consume_spawn(&hash(&spawn)));
        assert!(!credentials.consume_spawn(&hash(&spawn)));
        assert_eq!(
            credentials.resolve(&spawn, Timestamp(1)),
            Err(AuthError::Unknown)
        );
    }
}
