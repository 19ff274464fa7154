-- Several processes on one data store: online key rotation, staging intents, leases, erasures.

-- Every wrapped owner key names the master key that wrapped it, so a rotation can run while
-- other processes read and write: each process unwraps with the key the row names, and wraps
-- new keys under the current one (meta.master_key_id, read inside the writing transaction).
-- A key is dropped from the keyring only when no row names it any more.
ALTER TABLE users ADD COLUMN master_key_id TEXT NOT NULL DEFAULT '';
UPDATE users SET master_key_id = coalesce((SELECT value FROM meta WHERE key = 'master_key_id'), '');
CREATE INDEX users_by_master_key ON users (master_key_id);

-- A blob being stored: recorded (and committed) before its bytes are written, removed in the
-- transaction that inserts the image. Repair resolves only intents older than a bound, and
-- removes the intent before the files, so a writer whose intent is gone refuses to commit:
-- a repair in another process never destroys a live upload.
CREATE TABLE staged_blobs (
    blob_name TEXT PRIMARY KEY,
    staged_at REAL NOT NULL
) WITHOUT ROWID;

-- A lease on a background job (retention, expiry sweeps, key rotation): whoever holds an
-- unexpired lease runs the job; a dead holder's lease expires. holder is a random id per
-- process. (On PostgreSQL the same row is taken with INSERT .. ON CONFLICT .. WHERE expired.)
CREATE TABLE leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;

-- An erasure (forget-me, or a moderator's purge of a member's images in one server) written
-- before any deletion and removed in the transaction that finishes it, so a crash part-way
-- is resumed at the next start. While it exists, create refuses new images for that person
-- (in that server, for a purge): the loop cannot chase an image made meanwhile.
CREATE TABLE erasures (
    id           INTEGER PRIMARY KEY,
    kind         TEXT    NOT NULL CHECK (kind IN ('forget', 'purge')),
    user_id      INTEGER NOT NULL,
    guild_id     INTEGER,
    actor_id     INTEGER,
    requested_at REAL    NOT NULL
);
CREATE UNIQUE INDEX erasures_unique ON erasures (kind, user_id, coalesce(guild_id, 0));

-- users -> images cascades in the first schema (ON DELETE CASCADE), which would remove an
-- owner's images outside the one deletion path (no retraction, no blob deletion, no audit).
-- SQLite cannot change a foreign key in place without rebuilding the table, so refuse instead:
-- a user row goes only once it owns no image.
CREATE TRIGGER users_keep_images_on_the_deletion_path BEFORE DELETE ON users
WHEN EXISTS (SELECT 1 FROM images WHERE owner_id = OLD.user_id)
BEGIN
    SELECT RAISE(ABORT, 'a user who still owns images cannot be deleted; remove the images first');
END;

-- Limits shared by every process on this store (VEIL_SHARED_LIMITS=on): the link servers'
-- budget of failed lookups per client address (a token bucket: units left as of at), and
-- the generations each user has waiting or running (a slot per request, with an expiry so a
-- dead process's slots free themselves).
CREATE TABLE throttle (
    key   TEXT PRIMARY KEY,
    units REAL NOT NULL,
    at    REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX throttle_by_time ON throttle (at);

CREATE TABLE generation_slots (
    id         INTEGER PRIMARY KEY,
    user_id    INTEGER NOT NULL,
    expires_at REAL    NOT NULL
);
CREATE INDEX generation_slots_by_user ON generation_slots (user_id, expires_at);
