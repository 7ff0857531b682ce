-- A stop's exit code, and what else the engine said about a change (the
-- network of a connect, the health status, the old name of a rename).
ALTER TABLE changes ADD COLUMN exit_code BIGINT;
ALTER TABLE changes ADD COLUMN detail TEXT;
