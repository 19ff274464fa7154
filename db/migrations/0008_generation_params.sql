-- How a generated image was drawn (seed, size, generator, batch size, variation), so its owner
-- can read it back (the Details button) and draw more like it (Re-roll, Variations). Sealed like
-- prompt_ct: AES-GCM under the image's own data key, so it is read only on the owner's request
-- and is destroyed with the image's key. NULL for uploads and for images made before this.
ALTER TABLE images ADD COLUMN generation_ct BLOB;
