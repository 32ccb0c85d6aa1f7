-- Issue 10: the melody a job of a melody checkpoint follows.
--
-- Like `upload`, a reference to `uploads`: a client's upload, or the snapshot of a finished job's
-- track ("in the style of this track"). `params.melody` holds it too, with the name and length the
-- job JSON shows; this column is what queries use: the foreign key keeps the upload while a job
-- references it, and the claim batches only jobs that follow the same melody.
ALTER TABLE jobs ADD COLUMN melody TEXT REFERENCES uploads (id);

DROP INDEX jobs_claim;
CREATE INDEX jobs_claim ON jobs (status, model, duration, upload, melody, seq);
CREATE INDEX jobs_melody ON jobs (melody);
