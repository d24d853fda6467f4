-- Pull-through by tag: when this tag was last compared with its upstream (unix seconds), shared
-- by every replica so that each does not ask the upstream again within the tag's TTL.
-- NULL: never checked (pushed here, or from before this column).
ALTER TABLE tags ADD COLUMN upstream_checked_at BIGINT;
