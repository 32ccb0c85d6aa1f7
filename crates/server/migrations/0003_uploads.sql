-- Issue 9: audio that jobs continue.
--
-- `uploads` has one row per stored file `uploads/<id>.wav`: audio a client sent (POST
-- /api/v1/uploads, at most 30 s, checked and decoded when it arrives), or the snapshot of a finished
-- job's track that a job extends (`source_job` names that job; the track is copied when the extending
-- job is submitted, so deleting the source job later changes nothing).
CREATE TABLE uploads (
    id          TEXT    PRIMARY KEY NOT NULL,
    -- As the client named it (a snapshot: the source track's download name); shown, never a path.
    filename    TEXT    NOT NULL,
    -- Samples per channel, at `sample_rate`, as stored.
    frames      INTEGER NOT NULL CHECK (frames > 0),
    sample_rate INTEGER NOT NULL CHECK (sample_rate > 0),
    channels    INTEGER NOT NULL CHECK (channels > 0),
    -- No foreign key: the source job may be deleted while its snapshot is still used.
    source_job  TEXT,
    created_at  TEXT    NOT NULL
);

-- The sweep of uploads no job uses, oldest first.
CREATE INDEX uploads_created_at ON uploads (created_at);

-- The upload a job continues (NULL: it starts from nothing). `params.continue_from` holds it too,
-- with the name and length the job JSON shows; this column is what queries use: the foreign key
-- keeps an upload while any job references it, and the claim batches only jobs continuing the same one.
ALTER TABLE jobs ADD COLUMN upload TEXT REFERENCES uploads (id);

-- Jobs stored before this migration carry no stride in `params`; they run with the engine's default
-- of this release, 18 s (musicgen::request::DEFAULT_EXTEND_STRIDE_SECS), written here so that every
-- row says what it runs with and the claim compares like with like.
UPDATE jobs SET params = json_set(params, '$.extend_stride', 18.0)
WHERE json_extract(params, '$.extend_stride') IS NULL;

-- A worker's claim: the oldest queued job of its model, then the queued jobs of that model with the
-- same duration and continuation (the stride is compared in the claim itself).
DROP INDEX jobs_claim;
CREATE INDEX jobs_claim ON jobs (status, model, duration, upload, seq);
CREATE INDEX jobs_upload ON jobs (upload);
