-- Console sessions: the SHA-256 of each session's random id (the browser's
-- cookie holds the id, the store never does), the hash of the token it was
-- opened with (revoking the token ends its sessions), when it was opened and
-- when it was last used (written about once a minute, not on every request).
CREATE TABLE console_sessions (
    id_hash TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL
);
CREATE INDEX console_sessions_by_token ON console_sessions (token_hash);
