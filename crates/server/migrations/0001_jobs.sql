-- One row per generation request, from queued to a terminal status.
-- `seq` orders the queue (FIFO) and the history (newest first) without relying on clock precision.
CREATE TABLE jobs (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE,
    status          TEXT    NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    progress        REAL    NOT NULL DEFAULT 0,
    prompt          TEXT    NOT NULL,
    duration        REAL    NOT NULL,
    top_k           INTEGER NOT NULL,
    top_p           REAL    NOT NULL,
    temperature     REAL    NOT NULL,
    cfg_coef        REAL    NOT NULL,
    seed            INTEGER NOT NULL,
    model           TEXT    NOT NULL,
    created_at      TEXT    NOT NULL,
    started_at      TEXT,
    finished_at     TEXT,
    audio_duration  REAL,
    generation_time REAL,
    error           TEXT
);

CREATE INDEX jobs_status_seq ON jobs (status, seq);
