-- Confined steps: what each attempt really used (measured by its agent), how
-- each agent confines its steps, which token registered it (revoking the
-- token ends it), and the hash of a spawned agent's one-time credential
-- (good for retrying its registration until the worker first polls).
ALTER TABLE attempts ADD COLUMN cpu_micros BIGINT;
ALTER TABLE attempts ADD COLUMN memory_peak_bytes BIGINT;
ALTER TABLE attempts ADD COLUMN throttled_micros BIGINT;

ALTER TABLE workers ADD COLUMN confinement TEXT;
ALTER TABLE workers ADD COLUMN token_name TEXT;
ALTER TABLE workers ADD COLUMN spawn_hash TEXT;

-- One row per ended attempt that was measured, with what it asked for and
-- where it ran, written in the transaction that ends it: what usage reports
-- set against the allocations (efficiency) and what recommendations read.
CREATE TABLE measured_usage (
    attempt BIGINT PRIMARY KEY,
    run_id BIGINT NOT NULL,
    tenant TEXT NOT NULL,
    pool TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    step TEXT NOT NULL,
    succeeded BIGINT NOT NULL,
    day BIGINT NOT NULL,
    ended_at BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    cpu_millis BIGINT NOT NULL,
    memory_mib BIGINT NOT NULL,
    cpu_micros BIGINT NOT NULL,
    memory_peak_bytes BIGINT NOT NULL,
    throttled_micros BIGINT NOT NULL
);
CREATE INDEX measured_usage_by_time ON measured_usage (ended_at);
CREATE INDEX measured_usage_by_pipeline ON measured_usage (tenant, pipeline, ended_at);
