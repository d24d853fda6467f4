-- Wharf metadata schema, version 1 (SQLite).
-- Text columns use SQLite's default BINARY collation: tags and repository names sort bytewise.
-- Timestamps are unix seconds.

CREATE TABLE blobs (
    digest      TEXT    NOT NULL PRIMARY KEY,
    size        BIGINT  NOT NULL,
    created_at  BIGINT  NOT NULL
);

CREATE TABLE blob_links (
    repo        TEXT    NOT NULL,
    digest      TEXT    NOT NULL REFERENCES blobs (digest),
    created_at  BIGINT  NOT NULL,
    PRIMARY KEY (repo, digest)
);
CREATE INDEX blob_links_by_digest ON blob_links (digest);

CREATE TABLE manifests (
    repo            TEXT    NOT NULL,
    digest          TEXT    NOT NULL,
    media_type      TEXT    NOT NULL,
    size            BIGINT  NOT NULL,
    content         BLOB    NOT NULL,
    subject         TEXT,
    artifact_type   TEXT,
    annotations     TEXT,
    created_at      BIGINT  NOT NULL,
    PRIMARY KEY (repo, digest)
);
CREATE INDEX manifests_by_subject ON manifests (repo, subject) WHERE subject IS NOT NULL;

CREATE TABLE manifest_blobs (
    repo            TEXT    NOT NULL,
    manifest_digest TEXT    NOT NULL,
    blob_digest     TEXT    NOT NULL,
    size            BIGINT  NOT NULL,
    PRIMARY KEY (repo, manifest_digest, blob_digest),
    FOREIGN KEY (repo, manifest_digest) REFERENCES manifests (repo, digest) ON DELETE CASCADE
);
CREATE INDEX manifest_blobs_by_blob ON manifest_blobs (repo, blob_digest);

CREATE TABLE index_children (
    repo            TEXT    NOT NULL,
    index_digest    TEXT    NOT NULL,
    position        BIGINT  NOT NULL,
    child_digest    TEXT    NOT NULL,
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
    repo        TEXT    NOT NULL,
    tag         TEXT    NOT NULL,
    digest      TEXT    NOT NULL,
    updated_at  BIGINT  NOT NULL,
    PRIMARY KEY (repo, tag),
    FOREIGN KEY (repo, digest) REFERENCES manifests (repo, digest) ON DELETE CASCADE
);
CREATE INDEX tags_by_digest ON tags (repo, digest);

CREATE TABLE uploads (
    id          TEXT    NOT NULL PRIMARY KEY,
    repo        TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL
);
CREATE INDEX uploads_by_created ON uploads (created_at);
