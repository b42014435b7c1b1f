-- More host names for a community: every name in community_aliases reaches the community it
-- names exactly as its own host (communities.host) does. A host name belongs to one
-- community at most, whether as its own host or as an alias (checked where they are added).
CREATE TABLE community_aliases (
    host          text PRIMARY KEY,
    community_id  integer NOT NULL REFERENCES communities (id)
);

CREATE INDEX community_aliases_by_community ON community_aliases (community_id);
