-- Governance time series (corral_core::history): raw samples, kept two days,
-- and their hourly aggregates (mean, max and how many samples), kept ninety.
-- `at` is a sample's time, or the start of an aggregate's hour. One point per
-- series, subject (a pool or a tenant) and time: a sample written twice is kept
-- once, and a rollup run twice replaces its aggregates.
-- A SQLite store opened from a data directory keeps these tables in their own
-- file (history.db), created from this same text: hence IF NOT EXISTS.

CREATE TABLE IF NOT EXISTS history_samples (
    series TEXT NOT NULL,
    subject TEXT NOT NULL,
    at BIGINT NOT NULL,
    value DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (series, subject, at)
);
CREATE INDEX IF NOT EXISTS history_samples_by_time ON history_samples (at);

CREATE TABLE IF NOT EXISTS history_hourly (
    series TEXT NOT NULL,
    subject TEXT NOT NULL,
    at BIGINT NOT NULL,
    mean_value DOUBLE PRECISION NOT NULL,
    max_value DOUBLE PRECISION NOT NULL,
    samples BIGINT NOT NULL,
    PRIMARY KEY (series, subject, at)
);
CREATE INDEX IF NOT EXISTS history_hourly_by_time ON history_hourly (at);
