-- corral's schema. Portable SQL: the same statements run on SQLite and PostgreSQL.
-- Times are milliseconds since the Unix epoch; specs and requests are JSON text.

CREATE TABLE pools (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE tenants (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE runs (
    id BIGINT PRIMARY KEY,
    pipeline TEXT NOT NULL,
    tenant TEXT NOT NULL,
    priority BIGINT NOT NULL,
    state TEXT NOT NULL,
    reason_code TEXT,
    reason TEXT,
    spec TEXT NOT NULL,
    request TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE INDEX runs_by_state ON runs (state, id);
CREATE INDEX runs_by_tenant ON runs (tenant, id);

CREATE TABLE steps (
    run_id BIGINT NOT NULL,
    idx BIGINT NOT NULL,
    name TEXT NOT NULL,
    grp BIGINT NOT NULL,
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL,
    PRIMARY KEY (run_id, idx)
);

CREATE TABLE attempts (
    id BIGINT PRIMARY KEY,
    run_id BIGINT NOT NULL,
    step_idx BIGINT NOT NULL,
    number BIGINT NOT NULL,
    worker_id BIGINT NOT NULL,
    state TEXT NOT NULL,
    exit_code BIGINT,
    error TEXT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    finished_at BIGINT
);
CREATE INDEX attempts_by_run ON attempts (run_id, step_idx);
CREATE UNIQUE INDEX attempts_one_per_number ON attempts (run_id, step_idx, number);

CREATE TABLE allocations (
    id BIGINT PRIMARY KEY,
    run_id BIGINT NOT NULL,
    grp BIGINT NOT NULL,
    tenant TEXT NOT NULL,
    pool TEXT NOT NULL,
    cpu_millis BIGINT NOT NULL,
    memory_mib BIGINT NOT NULL,
    gpu BIGINT NOT NULL,
    worker_id BIGINT,
    opened_at BIGINT NOT NULL,
    closed_at BIGINT
);
CREATE INDEX allocations_by_run ON allocations (run_id);
CREATE INDEX allocations_by_tenant ON allocations (tenant, id);
CREATE INDEX allocations_by_pool ON allocations (pool, id);
-- An admitted run holds exactly one open allocation per group.
CREATE UNIQUE INDEX allocations_one_open_per_group ON allocations (run_id, grp) WHERE closed_at IS NULL;

CREATE TABLE workers (
    id BIGINT PRIMARY KEY,
    pool TEXT NOT NULL,
    name TEXT NOT NULL,
    cpu_millis BIGINT NOT NULL,
    memory_mib BIGINT NOT NULL,
    gpu BIGINT NOT NULL,
    labels TEXT NOT NULL,
    state TEXT NOT NULL,
    registered_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX workers_by_state ON workers (state);

CREATE TABLE log_chunks (
    attempt_id BIGINT NOT NULL,
    byte_offset BIGINT NOT NULL,
    run_id BIGINT NOT NULL,
    step_idx BIGINT NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (attempt_id, byte_offset)
);
CREATE INDEX log_chunks_by_run ON log_chunks (run_id, step_idx, attempt_id, byte_offset);
