-- The delivery ledger: every copy Veil sent records why it was sent (its basis), so the event
-- that ends that basis can retract exactly the copies it produced; and the retraction outbox
-- becomes safe for several processes and tells owners what could not be retracted.

-- Share ids are never reused. A plain INTEGER PRIMARY KEY hands a deleted share's id to the next
-- share, and a copy recorded under the old share would then be attributed to the new grantee.
-- AUTOINCREMENT never reuses an id; the table is rebuilt (SQLite cannot add it in place).
DROP TRIGGER groups_take_their_grants;
CREATE TABLE grants_new (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    owner_id     INTEGER NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    image_id     INTEGER REFERENCES images (id) ON DELETE CASCADE,
    grantee_kind TEXT    NOT NULL CHECK (grantee_kind IN ('user', 'role', 'group')),
    grantee_id   INTEGER NOT NULL,
    created_at   REAL    NOT NULL,
    expires_at   REAL
);
INSERT INTO grants_new (id, owner_id, image_id, grantee_kind, grantee_id, created_at, expires_at)
    SELECT id, owner_id, image_id, grantee_kind, grantee_id, created_at, expires_at FROM grants;
DROP TABLE grants;
ALTER TABLE grants_new RENAME TO grants;
CREATE UNIQUE INDEX grants_unique
    ON grants (owner_id, coalesce(image_id, 0), grantee_kind, grantee_id);
CREATE INDEX grants_by_grantee_image ON grants (grantee_kind, grantee_id, image_id);
CREATE INDEX grants_by_grantee_owner ON grants (grantee_kind, grantee_id, owner_id)
    WHERE image_id IS NULL;
CREATE INDEX grants_by_image ON grants (image_id);
CREATE INDEX grants_by_expiry ON grants (expires_at) WHERE expires_at IS NOT NULL;
CREATE TRIGGER groups_take_their_grants AFTER DELETE ON groups
BEGIN
    DELETE FROM grants WHERE grantee_kind = 'group' AND grantee_id = OLD.id;
END;
-- Ids already handed out to deliveries (of shares deleted before this migration) stay used.
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'grants', coalesce(max(id), 0) FROM
        (SELECT max(id) AS id FROM grants UNION ALL SELECT max(grant_id) FROM deliveries)
    WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = 'grants');
UPDATE sqlite_sequence SET seq = max(seq, coalesce((SELECT max(grant_id) FROM deliveries), 0))
    WHERE name = 'grants';

-- basis: why the recipient got the copy. owner (their own image), grant (grant_id), public
-- (a channel post, or a DM of an image public in its server), report (report_id: a moderator's
-- copy of a reported image), export (the owner's export). Older rows get the strictest basis
-- their columns allow.
-- state: 'pending' is written before the message is sent, 'sent' once Discord answered, so a
-- crash in between is found at start-up and reconciled instead of lost.
-- ended_at: when the basis of a still-pending copy ended; the copy is retracted as soon as it
-- is recorded, even if the same access was given again meanwhile (it was sent without it).
-- unretractable: NULL, or why this copy can never be deleted by Veil (an ephemeral reply, a
-- channel Veil is not a member of); such copies are shown to the owner instead.
ALTER TABLE deliveries ADD COLUMN basis TEXT NOT NULL DEFAULT 'public'
    CHECK (basis IN ('owner', 'grant', 'public', 'report', 'export'));
ALTER TABLE deliveries ADD COLUMN report_id INTEGER;
ALTER TABLE deliveries ADD COLUMN state TEXT NOT NULL DEFAULT 'sent'
    CHECK (state IN ('pending', 'sent'));
ALTER TABLE deliveries ADD COLUMN ended_at REAL;
ALTER TABLE deliveries ADD COLUMN unretractable TEXT;
UPDATE deliveries SET basis = CASE
    WHEN grant_id IS NOT NULL THEN 'grant'
    WHEN recipient_id IS NOT NULL AND recipient_id = (SELECT owner_id FROM images i
                                                       WHERE i.id = deliveries.image_id)
        THEN 'owner'
    ELSE 'public' END;
UPDATE deliveries SET unretractable = 'an ephemeral reply' WHERE kind = 'ephemeral';
CREATE INDEX deliveries_by_report ON deliveries (report_id) WHERE report_id IS NOT NULL;
CREATE INDEX deliveries_by_recipient ON deliveries (recipient_id, basis);
CREATE INDEX deliveries_pending ON deliveries (created_at) WHERE state = 'pending';

-- The outbox, leased per row: a drainer claims rows with one conditional UPDATE (claimed_by,
-- claimed_until), so two processes never both take a row, and a dead process's claim expires.
-- stuck_reason: why it cannot be done (403, channel gone, attempts used up); kept, shown to
-- the owner (owner_id, image_ref survive the image's deletion) and retried only rarely.
ALTER TABLE retractions ADD COLUMN claimed_by TEXT;
ALTER TABLE retractions ADD COLUMN claimed_until REAL;
ALTER TABLE retractions ADD COLUMN owner_id INTEGER;
ALTER TABLE retractions ADD COLUMN image_ref TEXT;
ALTER TABLE retractions ADD COLUMN recipient_id INTEGER;
ALTER TABLE retractions ADD COLUMN reason TEXT;
ALTER TABLE retractions ADD COLUMN queued_at REAL;
ALTER TABLE retractions ADD COLUMN last_error TEXT;
ALTER TABLE retractions ADD COLUMN stuck_reason TEXT;
CREATE INDEX retractions_due ON retractions (next_attempt_at);
CREATE INDEX retractions_by_owner ON retractions (owner_id) WHERE owner_id IS NOT NULL;
