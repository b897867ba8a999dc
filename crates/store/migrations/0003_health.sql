-- One row the server writes to learn whether the store can write (readiness),
-- and the incarnation of each registered agent (one per start of its process),
-- which tells a retried registration from a restarted agent.
CREATE TABLE store_probe (
    id BIGINT PRIMARY KEY,
    checked_at BIGINT NOT NULL
);

ALTER TABLE workers ADD COLUMN incarnation TEXT;
