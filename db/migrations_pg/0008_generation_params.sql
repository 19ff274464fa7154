-- PostgreSQL twin of db/migrations/0008: how a generated image was drawn, sealed.
ALTER TABLE images ADD COLUMN generation_ct BYTEA;
