-- GRASP purgatory: events accepted (OK true, "purgatory: ...") but not served until the git
-- data they describe arrives: a maintainer's kind 30618 whose refs the repository does not
-- hold yet, a pull request (1618) or PR update (1619) whose tip is not pushed. The push that
-- brings the data releases them into events (on any pod); unreleased rows expire.
CREATE TABLE git_purgatory (
    community_id  integer NOT NULL,
    event_id      text NOT NULL,
    -- The hosted repository the event waits for: the registry's owner and repo id.
    owner_pubkey  text NOT NULL,
    repo_id       text NOT NULL,
    kind          integer NOT NULL,
    author        text NOT NULL,
    created_at    bigint NOT NULL,
    raw           text NOT NULL,
    expires_at    timestamptz NOT NULL,
    PRIMARY KEY (community_id, event_id),
    FOREIGN KEY (community_id) REFERENCES communities (id)
);

CREATE INDEX git_purgatory_by_repo ON git_purgatory (community_id, repo_id, kind);
CREATE INDEX git_purgatory_by_expiry ON git_purgatory (expires_at);

-- Pull-request refs (refs/nostr/<event id>) pushed before any PR event with that id was
-- known. Anyone may push one; one whose PR event has not arrived when the purgatory window
-- ends is removed from the repository by the sweep, so such refs are never served forever.
CREATE TABLE git_pr_refs (
    community_id  integer NOT NULL,
    repo_id       text NOT NULL,
    event_id      text NOT NULL,
    owner_pubkey  text NOT NULL,
    pushed_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (community_id, repo_id, event_id),
    FOREIGN KEY (community_id) REFERENCES communities (id)
);

CREATE INDEX git_pr_refs_by_age ON git_pr_refs (pushed_at);
