-- Communities, events, their single-letter tags, and deletion tombstones.
-- Every tenant table leads every key with community_id (see tests/unit/test_sql_tenancy.py).

-- Operator-global: one row per host name the relay serves.
CREATE TABLE communities (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    host        text NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE events (
    community_id  integer NOT NULL,
    id            bytea NOT NULL,
    pubkey        bytea NOT NULL,
    kind          integer NOT NULL,
    created_at    bigint NOT NULL,
    -- Replaceable events carry '' and addressable events their d tag; NULL otherwise.
    coordinate_d  text,
    expires_at    bigint,
    raw           text NOT NULL,
    PRIMARY KEY (community_id, id),
    FOREIGN KEY (community_id) REFERENCES communities (id)
);

CREATE INDEX events_by_time ON events (community_id, created_at DESC, id);
CREATE INDEX events_by_author_kind ON events (community_id, pubkey, kind, created_at DESC);
CREATE INDEX events_by_kind ON events (community_id, kind, created_at DESC);
CREATE UNIQUE INDEX events_one_per_coordinate
    ON events (community_id, pubkey, kind, coordinate_d) WHERE coordinate_d IS NOT NULL;
CREATE INDEX events_expiring ON events (expires_at) WHERE expires_at IS NOT NULL;

-- Single-letter tags, denormalised with created_at so a tag query reads one index in order.
CREATE TABLE event_tags (
    community_id  integer NOT NULL,
    name          text NOT NULL,
    value         text NOT NULL,
    created_at    bigint NOT NULL,
    event_id      bytea NOT NULL,
    PRIMARY KEY (community_id, name, value, created_at, event_id),
    FOREIGN KEY (community_id, event_id) REFERENCES events (community_id, id) ON DELETE CASCADE
);

CREATE INDEX event_tags_by_event ON event_tags (community_id, event_id);

-- NIP-09: an event id deleted by its author cannot be stored again.
CREATE TABLE deleted_events (
    community_id  integer NOT NULL,
    event_id      bytea NOT NULL,
    pubkey        bytea NOT NULL,
    PRIMARY KEY (community_id, event_id, pubkey),
    FOREIGN KEY (community_id) REFERENCES communities (id)
);

-- NIP-09 `a` deletions: versions of the coordinate up to deleted_until cannot be stored again.
CREATE TABLE deleted_coordinates (
    community_id   integer NOT NULL,
    pubkey         bytea NOT NULL,
    kind           integer NOT NULL,
    d              text NOT NULL,
    deleted_until  bigint NOT NULL,
    PRIMARY KEY (community_id, pubkey, kind, d),
    FOREIGN KEY (community_id) REFERENCES communities (id)
);
