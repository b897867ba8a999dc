-- Admission waits (corral_core::history::waits): per hour and tenant, how many
-- runs were first admitted after a wait in each bucket of the histogram. A
-- run's count is written in the transaction that admits it, so it counts once.
-- The rollup adds up each whole day's hours into admission_waits_daily (a day
-- recomputed whole, so never counted twice), which long reads take their whole
-- days from; both are kept as long as the hourly history.
CREATE TABLE admission_waits (
    hour BIGINT NOT NULL,
    tenant TEXT NOT NULL,
    bucket BIGINT NOT NULL,
    runs BIGINT NOT NULL,
    PRIMARY KEY (hour, tenant, bucket)
);

CREATE TABLE admission_waits_daily (
    day BIGINT NOT NULL,
    tenant TEXT NOT NULL,
    bucket BIGINT NOT NULL,
    runs BIGINT NOT NULL,
    PRIMARY KEY (day, tenant, bucket)
);
