-- Metering: each pool's price and capacity from a time on, so that usage and
-- idle capacity are priced over their history, not at today's price; and each
-- run's estimated cost (micro-units of the operator's currency), set at submit.
CREATE TABLE pool_prices (
    pool TEXT NOT NULL,
    at BIGINT NOT NULL,
    price TEXT NOT NULL,
    PRIMARY KEY (pool, at)
);

CREATE TABLE pool_capacity (
    pool TEXT NOT NULL,
    at BIGINT NOT NULL,
    cpu_millis BIGINT NOT NULL,
    memory_mib BIGINT NOT NULL,
    gpu BIGINT NOT NULL,
    PRIMARY KEY (pool, at)
);

ALTER TABLE runs ADD COLUMN estimate BIGINT NOT NULL DEFAULT 0;

CREATE INDEX allocations_by_open ON allocations (opened_at);
CREATE INDEX runs_by_pipeline ON runs (tenant, pipeline, id);

-- A budget threshold a tenant's spend crossed, once per month, and whether the
-- alert webhook has it yet.
CREATE TABLE budget_alerts (
    tenant TEXT NOT NULL,
    month TEXT NOT NULL,
    threshold_milli BIGINT NOT NULL,
    at BIGINT NOT NULL,
    spent BIGINT NOT NULL,
    monthly BIGINT NOT NULL,
    attempts BIGINT NOT NULL,
    delivered_at BIGINT,
    last_error TEXT,
    PRIMARY KEY (tenant, month, threshold_milli)
);
CREATE INDEX budget_alerts_by_time ON budget_alerts (at);
