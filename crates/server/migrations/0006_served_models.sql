-- Issue 11: the models the server on this data directory runs (one server per directory: it holds the lock),
-- written at each start. A queue position counts the queued jobs ahead that the same worker will run:
-- of the same model, or of any served model when the job's own model is served.
CREATE TABLE served_models (
    model TEXT PRIMARY KEY NOT NULL
);
