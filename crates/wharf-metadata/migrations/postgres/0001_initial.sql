-- Wharf metadata schema, version 1 (PostgreSQL).
-- Text columns that are compared or sorted use COLLATE "C", so that they sort bytewise as on SQLite.
-- Timestamps are unix seconds.

CREATE TABLE blobs (
    digest      TEXT COLLATE "C"  NOT NULL PRIMARY KEY,
    size        BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL
);

CREATE TABLE blob_links (
    repo        TEXT COLLATE "C"  NOT NULL,
    digest      TEXT COLLATE "C"  NOT NULL REFERENCES blobs (digest),
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (repo, digest)
);
CREATE INDEX blob_links_by_digest ON blob_links (digest);

CREATE TABLE manifests (
    repo            TEXT COLLATE "C"  NOT NULL,
    digest          TEXT COLLATE "C"  NOT NULL,
    media_type      TEXT    NOT NULL,
    size            BIGINT  NOT NULL,
    content         BYTEA   NOT NULL,
    subject         TEXT COLLATE "C",
    artifact_type   TEXT,
    annotations     TEXT,
    created_at      BIGINT  NOT NULL,
    PRIMARY KEY (repo, digest)
);
CREATE INDEX manifests_by_subject ON manifests (repo, subject) WHERE subject IS NOT NULL;

CREATE TABLE manifest_blobs (
    repo            TEXT COLLATE "C"  NOT NULL,
    manifest_digest TEXT COLLATE "C"  NOT NULL,
    blob_digest     TEXT COLLATE "C"  NOT NULL,
    size            BIGINT  NOT NULL,
    PRIMARY KEY (repo, manifest_digest, blob_digest),
    FOREIGN KEY (repo, manifest_digest) REFERENCES manifests (repo, digest) ON DELETE CASCADE
);
CREATE INDEX manifest_blobs_by_blob ON manifest_blobs (repo, blob_digest);

CREATE TABLE index_children (
    repo            TEXT COLLATE "C"  NOT NULL,
    index_digest    TEXT COLLATE "C"  NOT NULL,
    position        BIGINT  NOT NULL,
    child_digest    TEXT COLLATE "C"  NOT NULL,
    media_type      TEXT    NOT NULL,
    size            BIGINT  NOT NULL,
    platform        TEXT,
    platform_json   TEXT,
    artifact_type   TEXT,
    annotations     TEXT,
    PRIMARY KEY (repo, index_digest, position),
    FOREIGN KEY (repo, index_digest) REFERENCES manifests (repo, digest) ON DELETE CASCADE
);
CREATE INDEX index_children_by_child ON index_children (repo, child_digest);

CREATE TABLE tags (
    repo        TEXT COLLATE "C"  NOT NULL,
    tag         TEXT COLLATE "C"  NOT NULL,
    digest      TEXT COLLATE "C"  NOT NULL,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (repo, tag),
    FOREIGN KEY (repo, digest) REFERENCES manifests (repo, digest) ON DELETE CASCADE
);
CREATE INDEX tags_by_digest ON tags (repo, digest);

CREATE TABLE uploads (
    id          TEXT COLLATE "C"  NOT NULL PRIMARY KEY,
    repo        TEXT COLLATE "C"  NOT NULL,
    created_at  BIGINT  NOT NULL
);
CREATE INDEX uploads_by_created ON uploads (created_at);
