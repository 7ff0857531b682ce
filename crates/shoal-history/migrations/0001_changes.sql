-- Every change a node's watcher saw, once per (engine, container, kind,
-- event key): several nodes watching one engine record it once. The SQL is
-- the same for SQLite and PostgreSQL.
CREATE TABLE changes (
    engine_id    TEXT   NOT NULL,
    container_id TEXT   NOT NULL,
    kind         TEXT   NOT NULL,
    event_key    TEXT   NOT NULL,
    at_ms        BIGINT NOT NULL,
    node         TEXT   NOT NULL,
    name         TEXT   NOT NULL,
    project      TEXT,
    record       TEXT   NOT NULL,
    PRIMARY KEY (engine_id, container_id, kind, event_key)
);
CREATE INDEX changes_at ON changes (at_ms);
CREATE INDEX changes_container ON changes (engine_id, container_id, at_ms);
CREATE INDEX changes_name ON changes (name, at_ms);
CREATE INDEX changes_project ON changes (project, at_ms);

-- The addresses a change's record had, for "who had this IP then".
CREATE TABLE change_ips (
    engine_id    TEXT   NOT NULL,
    container_id TEXT   NOT NULL,
    kind         TEXT   NOT NULL,
    event_key    TEXT   NOT NULL,
    ip           TEXT   NOT NULL,
    at_ms        BIGINT NOT NULL,
    PRIMARY KEY (engine_id, container_id, kind, event_key, ip)
);
CREATE INDEX change_ips_ip ON change_ips (ip, at_ms);
