-- PostgreSQL twin of db/migrations/0009_retention_and_gallery_indexes.sql (issue 12): the
-- retention sweep's index by server and age, and the gallery's covering grant index.
CREATE INDEX images_by_guild_age ON images (guild_id, created_at);

DROP INDEX grants_by_grantee_image;
CREATE INDEX grants_by_grantee_image
    ON grants (grantee_kind, grantee_id, image_id, expires_at, owner_id);
