-- The git repo-name registry: one owner per repo id in each community.
-- The primary key is the race guard for announcements (see relay/git/registry.py).
CREATE TABLE git_repo_names (
    community_id  integer NOT NULL,
    repo_id       text NOT NULL,
    owner_pubkey  text NOT NULL,
    -- The announcement attempt that claimed the name: only it may release the claim.
    attempt       text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (community_id, repo_id),
    FOREIGN KEY (community_id) REFERENCES communities (id)
);

CREATE INDEX git_repo_names_by_owner ON git_repo_names (community_id, owner_pubkey);
