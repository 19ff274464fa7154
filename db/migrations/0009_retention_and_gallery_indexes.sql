-- Issue 12: indexes for the retention sweep and the gallery.
--
-- The retention sweep starts from the servers that set a retention period and asks, for each,
-- for its images made before the cut-off; images_by_guild_age answers that with exactly those
-- entries. Without it the sweep read every image row (the planner drove from images and probed
-- guild_policy for each): 67 to 100 ms at a million images, and the reader's page cache filled
-- with rows nobody asked for.
CREATE INDEX images_by_guild_age ON images (guild_id, created_at);

-- The gallery chooses its page from a viewer's grants alone: with the grant's expiry and owner
-- in the index it reads no grant row (about 160 per-image and 100 all-images grants for a
-- viewer with five granting roles, each at a random place in the table).
DROP INDEX grants_by_grantee_image;
CREATE INDEX grants_by_grantee_image
    ON grants (grantee_kind, grantee_id, image_id, expires_at, owner_id);
