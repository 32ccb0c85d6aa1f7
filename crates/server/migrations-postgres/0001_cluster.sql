-- DGX Music on PostgreSQL: the job queue, history, uploads and API keys that API nodes and workers on
-- many machines share (issue 14). The same data as the SQLite store (crates/server/migrations), in
-- PostgreSQL's own types, plus what several processes need: every claim is a lease held by a named
-- worker, workers register their models, and every change to a job is announced (LISTEN/NOTIFY).

-- A key is a random token shown once (`dgx-music keys create`); only its SHA-256 is kept.
CREATE TABLE api_keys (
    id         UUID        PRIMARY KEY,
    name       TEXT        NOT NULL,
    prefix     TEXT        NOT NULL,
    hash       TEXT        NOT NULL UNIQUE,
    admin      BOOLEAN     NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    revoked_at TIMESTAMPTZ
);

-- Audio jobs continue or follow; the file is in the uploads audio store under the same id.
CREATE TABLE uploads (
    id          UUID        PRIMARY KEY,
    filename    TEXT        NOT NULL,
    frames      BIGINT      NOT NULL CHECK (frames > 0),
    sample_rate INTEGER     NOT NULL CHECK (sample_rate > 0),
    channels    INTEGER     NOT NULL CHECK (channels > 0),
    -- No foreign key: the source job may be deleted while its snapshot is still used.
    source_job  UUID,
    created_at  TIMESTAMPTZ NOT NULL,
    owner       UUID        REFERENCES api_keys (id)
);
CREATE INDEX uploads_created_at ON uploads (created_at);

CREATE TABLE jobs (
    -- Orders the queue (FIFO) and the history without relying on clocks of several machines.
    seq             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    id              UUID             NOT NULL UNIQUE,
    status          TEXT             NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    model           TEXT             NOT NULL,
    duration        DOUBLE PRECISION NOT NULL,
    -- The serde form of `JobParams` (prompt, sampling, seed, stride, what it continues or follows).
    params          JSONB            NOT NULL,
    progress        DOUBLE PRECISION NOT NULL DEFAULT 0,
    owner           UUID             REFERENCES api_keys (id),
    upload          UUID             REFERENCES uploads (id),
    melody          UUID             REFERENCES uploads (id),
    created_at      TIMESTAMPTZ      NOT NULL,
    started_at      TIMESTAMPTZ,
    finished_at     TIMESTAMPTZ,
    audio_duration  DOUBLE PRECISION,
    generation_time DOUBLE PRECISION,
    error           TEXT,
    -- The worker whose claim this is, and until when (the database's clock) unless renewed.
    worker          TEXT,
    lease_expires   TIMESTAMPTZ,
    -- Claims so far; a job whose worker was lost `max_attempts` times fails instead of returning.
    attempts        INTEGER          NOT NULL DEFAULT 0,
    CHECK ((status = 'running') = (worker IS NOT NULL AND lease_expires IS NOT NULL))
);
CREATE INDEX jobs_status_seq ON jobs (status, seq);
CREATE INDEX jobs_claim ON jobs (model, duration, seq) WHERE status = 'queued';
CREATE INDEX jobs_leases ON jobs (lease_expires) WHERE status = 'running';
CREATE INDEX jobs_owner ON jobs (owner, seq);
CREATE INDEX jobs_upload ON jobs (upload);
CREATE INDEX jobs_melody ON jobs (melody);

-- Every worker thread (one per device) registers its models, as `musicgen::ModelInfo` JSON, and
-- renews `expires_at` with its leases: API nodes offer the models of the rows not expired.
CREATE TABLE workers (
    id         TEXT        PRIMARY KEY,
    models     JSONB       NOT NULL,
    seen_at    TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);

CREATE VIEW served_models AS
    SELECT DISTINCT model ->> 'id' AS model FROM workers, jsonb_array_elements(models) AS model
    WHERE expires_at > now();

-- "<job id> <status>" on the channel `dgx_music_jobs` after every committed change of a job, whoever
-- made it: API nodes forward it to their event streams, workers see cancellations within a step.
CREATE FUNCTION dgx_music_job_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('dgx_music_jobs', OLD.id::text || ' deleted');
    ELSE
        PERFORM pg_notify('dgx_music_jobs', NEW.id::text || ' ' || NEW.status);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_changed AFTER INSERT OR UPDATE OR DELETE ON jobs
    FOR EACH ROW EXECUTE FUNCTION dgx_music_job_changed();
