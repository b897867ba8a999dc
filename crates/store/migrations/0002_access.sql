-- Who may do what: API tokens (only their hashes), the audit log, and the
-- identity of registered agents (their instance and the hash of their secret).

CREATE TABLE tokens (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    role TEXT NOT NULL,
    tenant TEXT,
    pool TEXT,
    created_at BIGINT NOT NULL,
    expires_at BIGINT,
    revoked_at BIGINT,
    last_used_at BIGINT
);
CREATE UNIQUE INDEX tokens_by_hash ON tokens (hash);

CREATE TABLE audit (
    id BIGINT PRIMARY KEY,
    at BIGINT NOT NULL,
    who TEXT NOT NULL,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    action TEXT NOT NULL,
    before_spec TEXT,
    after_spec TEXT
);
CREATE INDEX audit_by_time ON audit (at, id);

ALTER TABLE workers ADD COLUMN instance TEXT;
ALTER TABLE workers ADD COLUMN secret_hash TEXT;
