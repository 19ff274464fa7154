-- A report lets moderators view its image only while the reporter's own access still holds:
-- the reporter owns it, or the image is still public, or the owner still shares it with the
-- same user, role or group the reporter saw it through. basis records which; the grantee
-- columns name the share. Reports from before this migration count as 'public' (the strict
-- reading).
ALTER TABLE reports ADD COLUMN basis TEXT NOT NULL DEFAULT 'public'
    CHECK (basis IN ('owner', 'public', 'grant'));
ALTER TABLE reports ADD COLUMN basis_kind TEXT;
ALTER TABLE reports ADD COLUMN basis_target INTEGER;
