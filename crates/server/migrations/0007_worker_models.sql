-- Issue 14: workers register the models they run with their description (`musicgen::ModelInfo` as
-- JSON), as PostgreSQL's `workers` table does, so both stores answer `served_models` alike. SQLite
-- has one process: the rows are rewritten by its workers at each start.
ALTER TABLE served_models ADD COLUMN info TEXT;
