-- Veil's first schema. Times are Unix seconds (REAL). Ids that Discord gives (users, guilds,
-- channels, roles, messages) are stored as INTEGER snowflakes. Ids shown to users are random
-- text (images.public_id, links.public_id), never the row number.

CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;

-- One row per person who ever stored an image or changed a setting.
-- wrapped_key: the owner's key, AES-GCM wrapped by the master key. Destroyed by forget-me.
CREATE TABLE users (
    user_id      INTEGER PRIMARY KEY,
    private_mode INTEGER NOT NULL DEFAULT 1 CHECK (private_mode IN (0, 1)),
    wrapped_key  BLOB    NOT NULL,
    created_at   REAL    NOT NULL
);

CREATE TABLE images (
    id          INTEGER PRIMARY KEY,
    public_id   TEXT    NOT NULL UNIQUE,
    owner_id    INTEGER NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    guild_id    INTEGER,
    visibility  TEXT    NOT NULL CHECK (visibility IN ('private', 'public')),
    source      TEXT    NOT NULL CHECK (source IN ('generated', 'upload')),
    created_at  REAL    NOT NULL,
    expires_at  REAL,
    byte_size   INTEGER NOT NULL,
    format      TEXT    NOT NULL,
    width       INTEGER NOT NULL,
    height      INTEGER NOT NULL,
    prompt_ct   BLOB,
    wrapped_key BLOB    NOT NULL,
    blob_name   TEXT    NOT NULL UNIQUE
);
-- rowid order is creation order, so (owner_id, id) serves "newest of this owner" directly.
CREATE INDEX images_by_owner ON images (owner_id, id);
CREATE INDEX images_by_guild ON images (guild_id, id);
CREATE INDEX images_by_expiry ON images (expires_at) WHERE expires_at IS NOT NULL;

-- A grant gives view on one image (image_id) or on all of the owner's images (image_id NULL)
-- to a user, a role or a personal group.
CREATE TABLE grants (
    id           INTEGER PRIMARY KEY,
    owner_id     INTEGER NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    image_id     INTEGER REFERENCES images (id) ON DELETE CASCADE,
    grantee_kind TEXT    NOT NULL CHECK (grantee_kind IN ('user', 'role', 'group')),
    grantee_id   INTEGER NOT NULL,
    created_at   REAL    NOT NULL,
    expires_at   REAL
);
CREATE UNIQUE INDEX grants_unique
    ON grants (owner_id, coalesce(image_id, 0), grantee_kind, grantee_id);
CREATE INDEX grants_by_grantee_image ON grants (grantee_kind, grantee_id, image_id);
CREATE INDEX grants_by_grantee_owner ON grants (grantee_kind, grantee_id, owner_id)
    WHERE image_id IS NULL;
CREATE INDEX grants_by_image ON grants (image_id);
CREATE INDEX grants_by_expiry ON grants (expires_at) WHERE expires_at IS NOT NULL;

CREATE TABLE groups (
    id         INTEGER PRIMARY KEY,
    owner_id   INTEGER NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    name       TEXT    NOT NULL COLLATE NOCASE,
    created_at REAL    NOT NULL,
    UNIQUE (owner_id, name)
);

CREATE TABLE group_members (
    group_id INTEGER NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    user_id  INTEGER NOT NULL,
    PRIMARY KEY (group_id, user_id)
) WITHOUT ROWID;
CREATE INDEX group_members_by_user ON group_members (user_id, group_id);

-- A group's grants go with the group.
CREATE TRIGGER groups_take_their_grants AFTER DELETE ON groups
BEGIN
    DELETE FROM grants WHERE grantee_kind = 'group' AND grantee_id = OLD.id;
END;

-- Links: the token is never stored; only its selector and a SHA-256 of its verifier.
CREATE TABLE links (
    id             INTEGER PRIMARY KEY,
    public_id      TEXT    NOT NULL UNIQUE,
    selector       TEXT    NOT NULL UNIQUE,
    verifier_hash  BLOB    NOT NULL,
    image_id       INTEGER NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    created_by     INTEGER NOT NULL,
    created_at     REAL    NOT NULL,
    expires_at     REAL    NOT NULL,
    max_views      INTEGER,
    views          INTEGER NOT NULL DEFAULT 0,
    allow_download INTEGER NOT NULL DEFAULT 0,
    watermark      INTEGER NOT NULL DEFAULT 0,
    revoked_at     REAL
);
CREATE INDEX links_by_image ON links (image_id);
CREATE INDEX links_by_expiry ON links (expires_at);

-- Every message Veil posted that carries an image, so that it can be retracted.
-- grant_id: the grant through which the recipient could see it (NULL: owner, public, report).
CREATE TABLE deliveries (
    id           INTEGER PRIMARY KEY,
    image_id     INTEGER NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    recipient_id INTEGER,
    guild_id     INTEGER,
    channel_id   INTEGER NOT NULL,
    message_id   INTEGER,
    kind         TEXT    NOT NULL CHECK (kind IN ('channel', 'dm', 'ephemeral')),
    grant_id     INTEGER,
    created_at   REAL    NOT NULL
);
CREATE INDEX deliveries_by_image ON deliveries (image_id);
CREATE INDEX deliveries_by_grant ON deliveries (grant_id) WHERE grant_id IS NOT NULL;

-- Messages to delete on Discord: filled in the same transaction as a deletion or revocation,
-- emptied by the bot as it succeeds, so a crash or an outage loses no retraction.
CREATE TABLE retractions (
    id              INTEGER PRIMARY KEY,
    channel_id      INTEGER NOT NULL,
    message_id      INTEGER NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL    NOT NULL,
    UNIQUE (channel_id, message_id)
);

CREATE TABLE guild_policy (
    guild_id           INTEGER PRIMARY KEY,
    force_private      INTEGER NOT NULL DEFAULT 0 CHECK (force_private IN (0, 1)),
    links_enabled      INTEGER NOT NULL DEFAULT 1 CHECK (links_enabled IN (0, 1)),
    link_max_lifetime  REAL    NOT NULL DEFAULT 604800,
    retention_days     INTEGER,
    mod_role_id        INTEGER,
    updated_at         REAL    NOT NULL
);

CREATE TABLE permitted_channels (
    guild_id   INTEGER NOT NULL,
    channel_id INTEGER NOT NULL,
    PRIMARY KEY (guild_id, channel_id)
) WITHOUT ROWID;

CREATE TABLE reports (
    id          INTEGER PRIMARY KEY,
    image_id    INTEGER NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    guild_id    INTEGER,
    reporter_id INTEGER NOT NULL,
    reason      TEXT    NOT NULL,
    created_at  REAL    NOT NULL,
    closed_at   REAL
);
CREATE INDEX reports_by_image ON reports (image_id);
CREATE INDEX reports_open_by_guild ON reports (guild_id, id) WHERE closed_at IS NULL;

-- Who saw an owner's image, when and through what. Gone with the image.
CREATE TABLE view_log (
    id        INTEGER PRIMARY KEY,
    image_id  INTEGER NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    owner_id  INTEGER NOT NULL,
    viewer_id INTEGER,
    via       TEXT    NOT NULL,
    link_id   TEXT,
    agent     TEXT,
    at        REAL    NOT NULL
);
CREATE INDEX view_log_by_owner ON view_log (owner_id, id);
CREATE INDEX view_log_by_image ON view_log (image_id, id);

-- Ids only: never a token, a key or a prompt.
CREATE TABLE audit_log (
    id          INTEGER PRIMARY KEY,
    at          REAL    NOT NULL,
    guild_id    INTEGER,
    actor_id    INTEGER,
    action      TEXT    NOT NULL,
    target_user INTEGER,
    image_ref   TEXT,
    detail      TEXT
);
CREATE INDEX audit_by_guild ON audit_log (guild_id, id);
CREATE INDEX audit_by_actor ON audit_log (actor_id, id);

-- Blobs whose rows are gone: written in the deleting transaction, cleared once the files are
-- unlinked, so start-up repair finishes an interrupted deletion without scanning the store.
CREATE TABLE blob_deletions (
    blob_name TEXT PRIMARY KEY
) WITHOUT ROWID;
