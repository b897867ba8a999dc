//! Console sessions as the server keeps them: by the SHA-256 of their random
//! id (the browser's cookie holds the id; neither the store nor this index
//! does), with the hash of the token each was opened with, when it was opened
//! and when it was last used.
//!
//! The index mirrors the store: loaded at start, an opened session put in
//! once committed, an ended one taken out at once (refused before the store
//! hears of it). It sits beside the engine's lock, as the credentials do, so
//! a page checks its session without waiting for the writer.

use std::collections::HashMap;
use std::sync::RwLock;

use corral_core::clock::Timestamp;
use corral_store::{SessionRecord, SessionWrite};

/// How long sessions last, and how many a token holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    /// A session unused for this long is over.
    pub idle_ms: i64,
    /// A session is over this long after it was opened, however much it is used.
    pub lifetime_ms: i64,
    /// The most sessions one token holds: opening another ends its least
    /// recently used one.
    pub per_token: usize,
}

impl Default for SessionLimits {
    fn default() -> Self {
        SessionLimits {
            idle_ms: 60 * 60 * 1000,
            lifetime_ms: 12 * 60 * 60 * 1000,
            per_token: 32,
        }
    }
}

/// The store hears that a session was used at most this often; the idle
/// timeout is counted in memory, from its last use.
pub const TOUCH_EVERY_MS: i64 = 60 * 1000;

/// A new session id: 256 random bits from the operating system, hex.
pub fn new_id() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the operating system provides random bytes");
    hex::encode(bytes)
}

#[derive(Debug, Clone)]
struct Entry {
    token_hash: String,
    created_at: Timestamp,
    /// Its last use, as this server knows it.
    used: Timestamp,
    /// Its last use, as the store knows it.
    persisted: Timestamp,
}

impl Entry {
    fn live(&self, limits: &SessionLimits, now: Timestamp) -> bool {
        now.millis_since(self.created_at) < limits.lifetime_ms
            && now.millis_since(self.used) < limits.idle_ms
    }
}

/// The console sessions the server accepts.
#[derive(Debug, Default)]
pub struct Sessions {
    limits: SessionLimits,
    index: RwLock<HashMap<String, Entry>>,
}

impl Sessions {
    pub fn new(limits: SessionLimits) -> Sessions {
        Sessions {
            limits,
            index: RwLock::default(),
        }
    }

    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Entry>> {
        self.index
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Entry>> {
        self.index
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Replaces what is known with what the store holds.
    pub fn load(&self, records: &[SessionRecord]) {
        let mut index = self.write();
        index.clear();
        for r in records {
            index.insert(r.id_hash.clone(), entry(r));
        }
    }

    /// The hash of the token that session `id_hash` was opened with, while
    /// the session is neither idle past its timeout nor past its lifetime.
    pub fn token_of(&self, id_hash: &str, now: Timestamp) -> Option<String> {
        self.read()
            .get(id_hash)
            .filter(|e| e.live(&self.limits, now))
            .map(|e| e.token_hash.clone())
    }

    /// Notes a use of session `id_hash`; true when the store should hear of it.
    pub fn touch(&self, id_hash: &str, now: Timestamp) -> bool {
        let mut index = self.write();
        let Some(e) = index.get_mut(id_hash) else {
            return false;
        };
        e.used = e.used.max(now);
        let due = now.millis_since(e.persisted) >= TOUCH_EVERY_MS;
        if due {
            e.persisted = now;
        }
        due
    }

    /// When session `id_hash` was last used, as far as this server knows.
    pub fn last_used(&self, id_hash: &str) -> Option<Timestamp> {
        self.read().get(id_hash).map(|e| e.used)
    }

    /// What opening `session` writes: the session; the end of its token's
    /// least recently used sessions past the cap; and the end of every
    /// session past its lifetime or idle timeout (counted from what the store
    /// knows of its use, which may be a minute behind), so the table holds
    /// only what may still be used.
    pub fn open_writes(&self, session: &SessionRecord, now: Timestamp) -> Vec<SessionWrite> {
        let mut writes = vec![SessionWrite::Open(session.clone())];
        let index = self.read();
        let mut same_token: Vec<(&String, &Entry)> = index
            .iter()
            .filter(|(_, e)| e.token_hash == session.token_hash && e.live(&self.limits, now))
            .collect();
        if same_token.len() >= self.limits.per_token {
            same_token.sort_by_key(|(id, e)| (e.used, *id));
            let over = same_token.len() + 1 - self.limits.per_token;
            writes.extend(
                same_token
                    .iter()
                    .take(over)
                    .map(|(id, _)| SessionWrite::End((*id).clone())),
            );
        }
        writes.push(SessionWrite::EndStale {
            opened_before: Timestamp(now.0.saturating_sub(self.limits.lifetime_ms)),
            used_before: Timestamp(
                now.0
                    .saturating_sub(self.limits.idle_ms)
                    .saturating_sub(TOUCH_EVERY_MS),
            ),
        });
        writes
    }

    /// Applies a change, as the store does.
    pub fn apply(&self, write: &SessionWrite) {
        let mut index = self.write();
        match write {
            SessionWrite::Open(r) => {
                index.insert(r.id_hash.clone(), entry(r));
            }
            SessionWrite::Touch { id_hash, at } => {
                if let Some(e) = index.get_mut(id_hash) {
                    e.persisted = e.persisted.max(*at);
                    e.used = e.used.max(*at);
                }
            }
            SessionWrite::End(id_hash) => {
                index.remove(id_hash);
            }
            SessionWrite::EndOfToken(token_hash) => {
                index.retain(|_, e| e.token_hash != *token_hash);
            }
            SessionWrite::EndStale {
                opened_before,
                used_before,
            } => {
                index.retain(|_, e| e.created_at >= *opened_before && e.persisted >= *used_before);
            }
        }
    }
}

fn entry(r: &SessionRecord) -> Entry {
    Entry {
        token_hash: r.token_hash.clone(),
        created_at: r.created_at,
        used: r.last_used_at,
        persisted: r.last_used_at,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: SessionLimits = SessionLimits {
        idle_ms: 1_000,
        lifetime_ms: 5_000,
        per_token: 2,
    };

    fn opened(id: &str, token: &str, at: i64) -> SessionRecord {
        SessionRecord {
            id_hash: id.into(),
            token_hash: token.into(),
            created_at: Timestamp(at),
            last_used_at: Timestamp(at),
        }
    }

    #[test]
    fn ids_are_256_random_bits() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn a_session_ends_after_its_idle_timeout() {
        let sessions = Sessions::new(LIMITS);
        sessions.apply(&SessionWrite::Open(opened("s", "t", 0)));
        assert_eq!(sessions.token_of("s", Timestamp(999)).as_deref(), Some("t"));
        assert_eq!(sessions.token_of("s", Timestamp(1_000)), None);
        // Each use counts the idle time again.
        let sessions = Sessions::new(LIMITS);
        sessions.apply(&SessionWrite::Open(opened("s", "t", 0)));
        for at in [900, 1_800, 2_700] {
            sessions.touch("s", Timestamp(at));
        }
        assert_eq!(sessions.last_used("s"), Some(Timestamp(2_700)));
        assert_eq!(
            sessions.token_of("s", Timestamp(3_699)).as_deref(),
            Some("t")
        );
        assert_eq!(sessions.token_of("s", Timestamp(3_700)), None);
        assert_eq!(sessions.token_of("unknown", Timestamp(0)), None);
    }

    #[test]
    fn a_session_ends_after_its_lifetime_however_much_it_is_used() {
        let sessions = Sessions::new(LIMITS);
        sessions.apply(&SessionWrite::Open(opened("s", "t", 0)));
        for at in (500..5_000).step_by(500) {
            sessions.touch("s", Timestamp(at));
            assert!(sessions.token_of("s", Timestamp(at)).is_some(), "at {at}");
        }
        sessions.touch("s", Timestamp(4_999));
        assert_eq!(sessions.token_of("s", Timestamp(5_000)), None);
    }

    #[test]
    fn uses_are_persisted_once_a_minute() {
        let sessions = Sessions::new(SessionLimits::default());
        sessions.apply(&SessionWrite::Open(opened("s", "t", 0)));
        assert!(!sessions.touch("s", Timestamp(59_999)));
        assert!(sessions.touch("s", Timestamp(60_000)));
        assert!(!sessions.touch("s", Timestamp(60_001)));
        assert!(!sessions.touch("unknown", Timestamp(60_000)));
    }

    #[test]
    fn sessions_end_by_logout_and_with_their_token() {
        let sessions = Sessions::new(LIMITS);
        for (id, token) in [("a", "t1"), ("b", "t1"), ("c", "t2")] {
            sessions.apply(&SessionWrite::Open(opened(id, token, 0)));
        }
        sessions.apply(&SessionWrite::End("a".into()));
        assert_eq!(sessions.token_of("a", Timestamp(1)), None);
        sessions.apply(&SessionWrite::EndOfToken("t1".into()));
        assert_eq!(sessions.token_of("b", Timestamp(1)), None);
        assert_eq!(sessions.token_of("c", Timestamp(1)).as_deref(), Some("t2"));
    }

    #[test]
    fn opening_ends_the_least_recently_used_past_the_cap_and_stale_ones() {
        let sessions = Sessions::new(LIMITS);
        sessions.apply(&SessionWrite::Open(opened("old", "t", 0)));
        sessions.apply(&SessionWrite::Open(opened("new", "t", 100)));
        sessions.touch("old", Timestamp(200));
        let third = opened("third", "t", 300);
        let writes = sessions.open_writes(&third, Timestamp(300));
        assert_eq!(
            writes,
            vec![
                SessionWrite::Open(third.clone()),
                SessionWrite::End("new".into()),
                SessionWrite::EndStale {
                    opened_before: Timestamp(300 - 5_000),
                    used_before: Timestamp(300 - 1_000 - TOUCH_EVERY_MS),
                },
            ]
        );
        for w in &writes {
            sessions.apply(w);
        }
        assert!(sessions.token_of("old", Timestamp(300)).is_some());
        assert!(sessions.token_of("third", Timestamp(300)).is_some());
        // Later, the stale ones go from memory as from the store.
        let late = opened("late", "u", 70_000);
        for w in sessions.open_writes(&late, Timestamp(70_000)) {
            sessions.apply(&w);
        }
        assert_eq!(sessions.last_used("old"), None);
        assert_eq!(sessions.last_used("third"), None);
        assert!(sessions.token_of("late", Timestamp(70_000)).is_some());
    }
}
