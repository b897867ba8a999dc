-- Admission waits (corral_core::history::waits): per hour and tenant, how many
-- runs were first admitted after a wait in each bucket of the histogram. A
-- run's count is written in the transaction that admits it, so it counts once;
-- rows older than the hourly history's retention are deleted with it.
CREATE TABLE admission_waits (
    hour BIGINT NOT NULL,
    tenant TEXT NOT NULL,
    bucket BIGINT NOT NULL,
    runs BIGINT NOT NULL,
    PRIMARY KEY (hour, tenant, bucket)
);
