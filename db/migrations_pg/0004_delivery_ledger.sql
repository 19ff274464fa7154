-- PostgreSQL twin of db/migrations/0004: the delivery ledger and the leased outbox.
-- (Share ids are never reused here already: grants.id is an identity column, so the SQLite
-- table rebuild for AUTOINCREMENT has no counterpart. Its sequence must stay ahead of any
-- grant_id a delivery names.)
SELECT setval(pg_get_serial_sequence('grants', 'id'),
              greatest(coalesce((SELECT max(id) FROM grants), 0),
                       coalesce((SELECT max(grant_id) FROM deliveries), 0), 1),
              (SELECT count(*) > 0 FROM grants) OR (SELECT count(*) > 0 FROM deliveries
                                                    WHERE grant_id IS NOT NULL));

ALTER TABLE deliveries ADD COLUMN basis TEXT NOT NULL DEFAULT 'public'
    CHECK (basis IN ('owner', 'grant', 'public', 'report', 'export'));
ALTER TABLE deliveries ADD COLUMN report_id BIGINT;
ALTER TABLE deliveries ADD COLUMN state TEXT NOT NULL DEFAULT 'sent'
    CHECK (state IN ('pending', 'sent'));
ALTER TABLE deliveries ADD COLUMN ended_at DOUBLE PRECISION;
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

ALTER TABLE retractions ADD COLUMN claimed_by TEXT;
ALTER TABLE retractions ADD COLUMN claimed_until DOUBLE PRECISION;
ALTER TABLE retractions ADD COLUMN owner_id BIGINT;
ALTER TABLE retractions ADD COLUMN image_ref TEXT;
ALTER TABLE retractions ADD COLUMN recipient_id BIGINT;
ALTER TABLE retractions ADD COLUMN reason TEXT;
ALTER TABLE retractions ADD COLUMN queued_at DOUBLE PRECISION;
ALTER TABLE retractions ADD COLUMN last_error TEXT;
ALTER TABLE retractions ADD COLUMN stuck_reason TEXT;
CREATE INDEX retractions_due ON retractions (next_attempt_at);
CREATE INDEX retractions_by_owner ON retractions (owner_id) WHERE owner_id IS NOT NULL;
