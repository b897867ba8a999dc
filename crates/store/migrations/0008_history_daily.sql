-- Daily aggregates of the governance time series, rolled up from the hourly
-- ones (mean weighted by samples, max, samples), each whole day recomputed from
-- its hours; reads merged into buckets of whole days take the days they can
-- from here. Kept as long as the hourly aggregates. Like 0005, also run as it
-- is on a SQLite store's history.db: hence IF NOT EXISTS.
CREATE TABLE IF NOT EXISTS history_daily (
    series TEXT NOT NULL,
    subject TEXT NOT NULL,
    at BIGINT NOT NULL,
    mean_value DOUBLE PRECISION NOT NULL,
    max_value DOUBLE PRECISION NOT NULL,
    samples BIGINT NOT NULL,
    PRIMARY KEY (series, subject, at)
);
