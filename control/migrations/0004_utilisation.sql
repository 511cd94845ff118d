-- cloudphone schema v4: fleet utilisation sampled by the scheduler (the operator page's chart
-- and capacity planning). One row per sample; the scheduler prunes rows past the retention.
CREATE TABLE utilisation (
    at_ms BIGINT PRIMARY KEY,
    hosts_online BIGINT NOT NULL,
    -- phone slots (max_phones) on online hosts
    capacity BIGINT NOT NULL,
    -- phones that exist and are not stopped, failed or lost
    phones BIGINT NOT NULL,
    assigned BIGINT NOT NULL,
    queued BIGINT NOT NULL
);
