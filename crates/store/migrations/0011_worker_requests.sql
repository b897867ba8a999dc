-- Workers asked of a pool's provider, one row per request until its worker
-- registers (or its allocation closes): written in the batch of the decision
-- that needs the worker, so that a restarted server reconciles what its
-- provider holds instead of forgetting it. `name` is the worker's name (a
-- DNS-1123 label), the same for every create of one request; `reference` is
-- what the provider calls it; `spawn_hash` the SHA-256 of the one-time
-- credential its agent registers with.
CREATE TABLE worker_requests (
    name TEXT PRIMARY KEY,
    allocation_id BIGINT NOT NULL,
    run_id BIGINT NOT NULL,
    grp BIGINT NOT NULL,
    pool TEXT NOT NULL,
    reference TEXT,
    state TEXT NOT NULL,
    deadline BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    generation BIGINT NOT NULL,
    spawn_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX worker_requests_by_allocation ON worker_requests (allocation_id);
