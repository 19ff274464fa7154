-- Link passwords (issue 15). password_hash: an scrypt hash with its own parameters and salt
-- ("scrypt$<log2 n>$<r>$<p>$<salt hex>$<hash hex>"), NULL when the link has none.
-- password_epoch goes up whenever the password changes, so a session made under an older
-- password can never pass again, even if its row survived. password_failures counts wrong
-- answers for the owner's access log (counts only, never who or from where).
ALTER TABLE links ADD COLUMN password_hash TEXT;
ALTER TABLE links ADD COLUMN password_epoch INTEGER NOT NULL DEFAULT 0;
ALTER TABLE links ADD COLUMN password_failures INTEGER NOT NULL DEFAULT 0;

-- A session given by a correct password: bound to one link and one password epoch. Like a
-- link token, only a selector and a SHA-256 of the verifier are kept. Goes with its link.
CREATE TABLE link_sessions (
    id             INTEGER PRIMARY KEY,
    link_id        INTEGER NOT NULL REFERENCES links (id) ON DELETE CASCADE,
    selector       TEXT    NOT NULL UNIQUE,
    verifier_hash  BLOB    NOT NULL,
    password_epoch INTEGER NOT NULL,
    created_at     REAL    NOT NULL,
    expires_at     REAL    NOT NULL
);
CREATE INDEX link_sessions_by_link ON link_sessions (link_id);
CREATE INDEX link_sessions_by_expiry ON link_sessions (expires_at);

-- One-time export downloads. The archive waits on disk encrypted under a key derived from the
-- download token, which is never stored (only its selector and a SHA-256 of its verifier), so
-- the file and the database together do not open it. state: preparing -> ready -> taken.
-- A user has at most one export row at a time; its created_at drives the cooldown.
CREATE TABLE exports (
    id            INTEGER PRIMARY KEY,
    user_id       INTEGER NOT NULL UNIQUE,
    state         TEXT    NOT NULL CHECK (state IN ('preparing', 'ready', 'taken')),
    selector      TEXT    UNIQUE,
    verifier_hash BLOB,
    file_name     TEXT    NOT NULL UNIQUE,
    byte_size     INTEGER,
    image_count   INTEGER,
    created_at    REAL    NOT NULL,
    expires_at    REAL
);
