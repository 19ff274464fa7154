-- PostgreSQL twin of db/migrations/0003: why a report lets moderators view its image.
ALTER TABLE reports ADD COLUMN basis TEXT NOT NULL DEFAULT 'public'
    CHECK (basis IN ('owner', 'public', 'grant'));
ALTER TABLE reports ADD COLUMN basis_kind TEXT;
ALTER TABLE reports ADD COLUMN basis_target BIGINT;
