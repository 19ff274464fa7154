-- PostgreSQL twin of db/migrations/0002: the owner index carries expires_at.
DROP INDEX images_by_owner;
CREATE INDEX images_by_owner ON images (owner_id, id, expires_at);
