-- Metered usage (corral_core::metering::ledger): when an allocation closes, its
-- canonical pieces (its parts within each slot: one price of its pool within
-- one UTC day) are priced once and kept, and added to the sums per slot, in
-- the transaction that closes it. `metered` marks the allocations done, so
-- that metering twice counts nothing twice. Reports price live only what is
-- open or not metered yet (closed before this table existed, until the server
-- meters it): `usage_open` lists those allocations. It is a table of its own,
-- small and often vacuumed, rather than a partial index of `allocations`,
-- where PostgreSQL would keep an entry for every allocation closed since the
-- big table's last vacuum.
ALTER TABLE allocations ADD COLUMN metered BIGINT NOT NULL DEFAULT 0;

CREATE TABLE usage_open (
    allocation BIGINT PRIMARY KEY
);
INSERT INTO usage_open (allocation) SELECT id FROM allocations;

CREATE TABLE usage_pieces (
    allocation BIGINT NOT NULL,
    slot BIGINT NOT NULL,
    day BIGINT NOT NULL,
    tenant TEXT NOT NULL,
    pool TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    ended_at BIGINT NOT NULL,
    cpu_millis BIGINT NOT NULL,
    memory_mib BIGINT NOT NULL,
    gpu BIGINT NOT NULL,
    cpu_milli_ms BIGINT NOT NULL,
    memory_mib_ms BIGINT NOT NULL,
    gpu_ms BIGINT NOT NULL,
    cost BIGINT NOT NULL,
    PRIMARY KEY (allocation, slot)
);
CREATE INDEX usage_pieces_by_day ON usage_pieces (day, started_at);

CREATE TABLE usage_slots (
    slot BIGINT NOT NULL,
    tenant TEXT NOT NULL,
    pool TEXT NOT NULL,
    pipeline TEXT NOT NULL,
    cpu_milli_ms BIGINT NOT NULL,
    memory_mib_ms BIGINT NOT NULL,
    gpu_ms BIGINT NOT NULL,
    cost BIGINT NOT NULL,
    PRIMARY KEY (slot, tenant, pool, pipeline)
);
