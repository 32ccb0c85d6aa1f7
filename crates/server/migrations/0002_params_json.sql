-- The generation parameters move into one JSON column, `params`: the serde form of the engine's
-- `GenerationItem` ({"prompt", "sampling": {"top_k", "top_p", "temperature", "cfg_coef"}, "seed"}).
-- Only what queries filter on stays a column: `status`, `model` and `duration` (a batch shares one).
-- Adding a parameter then changes the item type, not this table.
--
-- Every row is copied with its `seq`, id, status, timestamps and results. `model` becomes the
-- canonical id that workers claim by (`ModelInfo::id`): version 0.1 stored the `--model` value as
-- typed, so the short names are mapped to their hub ids here; hub ids and directory paths are kept
-- (an absolute path without symlinks is already canonical; other spellings leave their queued jobs
-- waiting, with `waiting_reason` saying for which model, until they are cancelled).
CREATE TABLE jobs_v2 (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    id              TEXT    NOT NULL UNIQUE,
    status          TEXT    NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    model           TEXT    NOT NULL,
    duration        REAL    NOT NULL,
    params          TEXT    NOT NULL CHECK (json_valid(params)),
    progress        REAL    NOT NULL DEFAULT 0,
    created_at      TEXT    NOT NULL,
    started_at      TEXT,
    finished_at     TEXT,
    audio_duration  REAL,
    generation_time REAL,
    error           TEXT
);

INSERT INTO jobs_v2 (seq, id, status, model, duration, params, progress, created_at, started_at, finished_at,
                     audio_duration, generation_time, error)
SELECT seq, id, status,
       CASE
           -- musicgen::hub::KNOWN_MODELS, with and without the `musicgen-` prefix.
           WHEN model IN ('small', 'medium', 'large', 'stereo-small', 'stereo-medium', 'stereo-large')
               THEN 'facebook/musicgen-' || model
           WHEN model IN ('musicgen-small', 'musicgen-medium', 'musicgen-large',
                          'musicgen-stereo-small', 'musicgen-stereo-medium', 'musicgen-stereo-large')
               THEN 'facebook/' || model
           ELSE model
       END,
       duration,
       json_object('prompt', prompt,
                   'sampling', json_object('top_k', top_k, 'top_p', CAST(top_p AS REAL),
                                           'temperature', CAST(temperature AS REAL),
                                           'cfg_coef', CAST(cfg_coef AS REAL)),
                   'seed', seed),
       progress, created_at, started_at, finished_at, audio_duration, generation_time, error
FROM jobs;

-- AUTOINCREMENT never reuses a `seq`, even one of a deleted job: carry the counter over.
DELETE FROM sqlite_sequence WHERE name = 'jobs_v2';
INSERT INTO sqlite_sequence (name, seq) SELECT 'jobs_v2', seq FROM sqlite_sequence WHERE name = 'jobs';

DROP TABLE jobs;
ALTER TABLE jobs_v2 RENAME TO jobs;

-- The queue (FIFO) and the history; a worker's claim: the oldest queued job of its model, then
-- the queued jobs of that model and duration.
CREATE INDEX jobs_status_seq ON jobs (status, seq);
CREATE INDEX jobs_status_model_seq ON jobs (status, model, seq);
CREATE INDEX jobs_claim ON jobs (status, model, duration, seq);
