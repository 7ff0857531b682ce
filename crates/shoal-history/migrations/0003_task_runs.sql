-- The scheduler's runs: one row per task and period (slot), claimed by the
-- node that runs it. A second claim of the same slot finds the row and
-- does not run: a fleet-wide task never runs twice in one period, even
-- when two nodes briefly both take themselves for its owner.
CREATE TABLE task_runs (
    name        TEXT   NOT NULL,
    slot_ms     BIGINT NOT NULL,
    node        TEXT   NOT NULL,
    started_ms  BIGINT NOT NULL,
    finished_ms BIGINT,
    outcome     TEXT   NOT NULL,
    detail      TEXT,
    PRIMARY KEY (name, slot_ms)
);

-- Lookups by ID prefix (a range on the ID) read this index.
CREATE INDEX changes_id ON changes (container_id, at_ms);
