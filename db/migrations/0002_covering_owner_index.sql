-- The gallery's all-images branch reads (owner_id, id, expires_at) for every image of every
-- owner who shared everything with the viewer: carry expires_at in the index so that branch is
-- answered from the index alone.
DROP INDEX images_by_owner;
CREATE INDEX images_by_owner ON images (owner_id, id, expires_at);
