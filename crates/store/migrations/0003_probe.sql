-- One row the server writes to learn whether the store can write (readiness).
CREATE TABLE store_probe (
    id BIGINT PRIMARY KEY,
    checked_at BIGINT NOT NULL
);
