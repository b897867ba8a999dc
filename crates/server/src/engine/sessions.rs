//! Console sessions through the engine: opened once the store has them,
//! ended at once (logout) or with their token (its revocation's batch, in
//! `catalog.rs`), their use written about once a minute.

use corral_store::{SessionRecord, SessionWrite};

use super::*;
use crate::sessions::{self, Sessions};

impl Engine {
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// The person logged in with session `id_hash` now: none once the session
    /// is over (ended, idle, past its lifetime) or its token is revoked or
    /// expired, or is an agent's.
    pub fn session_principal(&self, id_hash: &str) -> Option<Principal> {
        let now = self.now();
        let token = self.sessions.token_of(id_hash, now)?;
        self.credentials
            .resolve_token_hash(&token, now)
            .ok()
            .filter(|p| !matches!(p.role, corral_core::access::Role::Agent { .. }))
    }

    /// Opens a console session for the token of hash `token_hash` and returns
    /// its id, once the store has it. The batch also ends the token's least
    /// recently used session past the cap, and every stale one.
    pub async fn open_session(&self, token_hash: &str) -> Result<String> {
        let id = sessions::new_id();
        let now = self.now();
        let record = SessionRecord {
            id_hash: auth::hash(&id),
            token_hash: token_hash.to_string(),
            created_at: now,
            last_used_at: now,
        };
        // Worked out before the state's lock: it looks at every session.
        let changes = self.sessions.open_writes(&record, now);
        let writes = changes.iter().cloned().map(Write::Session).collect();
        let mut state = self.state.lock().await;
        let mut fx = Effects::default();
        self.stage(&mut state, writes, &mut fx);
        drop(state);
        self.finish(fx).await?;
        for change in &changes {
            self.sessions.apply(change);
        }
        Ok(id)
    }

    /// Ends session `id_hash` (a logout): refused from now on, and deleted
    /// from the store.
    pub async fn end_session(&self, id_hash: &str) -> Result<()> {
        let end = SessionWrite::End(id_hash.to_string());
        self.sessions.apply(&end);
        let mut state = self.state.lock().await;
        let mut fx = Effects::default();
        self.stage(&mut state, vec![Write::Session(end)], &mut fx);
        drop(state);
        self.finish(fx).await
    }

    /// Writes when session `id_hash` was last used (the caller notes uses in
    /// memory and asks for this at most once a minute per session); nobody
    /// waits for it.
    pub async fn persist_session_use(&self, id_hash: &str) {
        let Some(at) = self.sessions.last_used(id_hash) else {
            return;
        };
        let mut state = self.state.lock().await;
        let mut fx = Effects::default();
        self.stage(
            &mut state,
            vec![Write::Session(SessionWrite::Touch {
                id_hash: id_hash.to_string(),
                at,
            })],
            &mut fx,
        );
    }
}
