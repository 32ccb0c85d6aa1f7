-- Issue 11: API keys, and jobs and uploads that belong to the key that made them.
--
-- A key is a random token shown once (`dgx-music keys create`); only its SHA-256 is kept, with the
-- token's first characters (`prefix`) so that people can tell keys apart in `keys list`. A revoked
-- key stays (its jobs keep their owner) and is refused from then on.
CREATE TABLE api_keys (
    id         TEXT    PRIMARY KEY NOT NULL,
    name       TEXT    NOT NULL,
    prefix     TEXT    NOT NULL,
    hash       TEXT    NOT NULL UNIQUE,
    admin      INTEGER NOT NULL CHECK (admin IN (0, 1)),
    created_at TEXT    NOT NULL,
    revoked_at TEXT
);

-- NULL: made with no key (a server without keys, or a release before keys); only admin keys see them.
ALTER TABLE jobs ADD COLUMN owner TEXT REFERENCES api_keys (id);
ALTER TABLE uploads ADD COLUMN owner TEXT REFERENCES api_keys (id);

CREATE INDEX jobs_owner ON jobs (owner, status, seq);
