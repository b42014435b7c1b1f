-- Members-only communities (NIP-43): each community's access mode, its members, and the
-- invite codes that let a pubkey join. Each pod keeps a copy of the modes and members in
-- memory with the moderation state (relay/server/management.py); these rows are the truth.

-- access: 'public' (anyone reads and writes) or 'members' (NIP-42 AUTH as a member first).
-- A community without a row is public.
CREATE TABLE community_access (
    community_id  integer NOT NULL,
    access        text NOT NULL CHECK (access IN ('public', 'members')),
    PRIMARY KEY (community_id),
    FOREIGN KEY (community_id) REFERENCES communities (id)
);

-- via: how the member came in: 'admin' (relay member add, NIP-86 allowpubkey) or 'invite'.
CREATE TABLE community_members (
    community_id  integer NOT NULL,
    pubkey        text NOT NULL,
    via           text NOT NULL CHECK (via IN ('admin', 'invite')),
    added_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (community_id, pubkey),
    FOREIGN KEY (community_id) REFERENCES communities (id)
);

-- uses_left NULL: unlimited; expires_at (unix seconds) NULL: never. created_by: the member
-- who asked for it (kind 28935), or '' for the operator (relay member invite).
CREATE TABLE community_invites (
    community_id  integer NOT NULL,
    code          text NOT NULL,
    uses_left     integer CHECK (uses_left IS NULL OR uses_left >= 0),
    expires_at    bigint,
    created_by    text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (community_id, code),
    FOREIGN KEY (community_id) REFERENCES communities (id)
);

CREATE INDEX community_invites_by_creator ON community_invites (community_id, created_by);
