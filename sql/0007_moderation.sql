-- NIP-86 relay management, per community: its admins (besides RELAY_ADMIN_PUBKEYS, who
-- administer every community), banned and allowed pubkeys, banned events, blocked client
-- addresses, and the NIP-11 name and description an admin set. Each pod keeps a copy in
-- memory (relay/server/management.py); these rows are what survives a restart.
CREATE TABLE community_admins (
    community_id  integer NOT NULL,
    pubkey        text NOT NULL,
    PRIMARY KEY (community_id, pubkey),
    FOREIGN KEY (community_id) REFERENCES communities (id)
);

-- list: 'banned' (refused) or 'allowed' (when a community has any, only they may publish).
CREATE TABLE moderation_pubkeys (
    community_id  integer NOT NULL,
    list          text NOT NULL CHECK (list IN ('banned', 'allowed')),
    pubkey        text NOT NULL,
    reason        text NOT NULL DEFAULT '',
    PRIMARY KEY (community_id, list, pubkey),
    FOREIGN KEY (community_id) REFERENCES communities (id)
);

CREATE TABLE moderation_events (
    community_id  integer NOT NULL,
    event_id      text NOT NULL,
    reason        text NOT NULL DEFAULT '',
    PRIMARY KEY (community_id, event_id),
    FOREIGN KEY (community_id) REFERENCES communities (id)
);

CREATE TABLE moderation_ips (
    community_id  integer NOT NULL,
    ip            text NOT NULL,
    reason        text NOT NULL DEFAULT '',
    PRIMARY KEY (community_id, ip),
    FOREIGN KEY (community_id) REFERENCES communities (id)
);

-- field: 'name' or 'description' (NIP-11 of the community's hosts).
CREATE TABLE community_info (
    community_id  integer NOT NULL,
    field         text NOT NULL CHECK (field IN ('name', 'description')),
    value         text NOT NULL,
    PRIMARY KEY (community_id, field),
    FOREIGN KEY (community_id) REFERENCES communities (id)
);
