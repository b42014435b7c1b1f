-- relay: no-transaction
-- NIP-50 search: a full-text index of each event's content and its title, subject and
-- description tag values, per community. It is an expression index (no new column), built
-- with CREATE INDEX CONCURRENTLY, so a large existing events table keeps taking writes while
-- it is built; hence this migration runs outside a transaction, one statement at a time, and
-- is safe to run again from the start (the index a failed run left is dropped first).
--
-- The text search configuration is `simple` (lowercased words, no stemming, no stop words:
-- Nostr content is in every language). Queries must use the very same expression, config
-- included, for the planner to use this index (relay/store/events.py, SEARCH_CONFIG), so
-- RELAY_SEARCH_CONFIG accepts `simple` only; another configuration needs its own index.
--
-- The GIN index leads with the community, as every tenant index does, as a one-element
-- array (GIN indexes arrays as built in; a plain integer would need the btree_gin extension,
-- which the embedded PostgreSQL lacks): queries say ARRAY[community_id] @> ARRAY[$1] too,
-- and the index intersects the community with the words.
-- The indexed document: content, then the values of the title, subject and description tags.
-- jsonb refuses two escapes valid events may carry, \u0000 and lone UTF-16 surrogates: each
-- such six-character escape (surrogate pairs too) is read as \u0020, a space, first. The
-- JSON stays valid whatever precedes it, and an insert never fails on this index.
CREATE OR REPLACE FUNCTION event_search_text(raw text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    AS $$ SELECT coalesce(j ->> 'content', '') || ' ' || coalesce((SELECT string_agg(t ->> 1, ' ') FROM jsonb_array_elements(j -> 'tags') AS t WHERE jsonb_typeof(t) = 'array' AND t ->> 0 IN ('title', 'subject', 'description')), '') FROM (SELECT regexp_replace(raw, '\\u(0000|[dD][89a-fA-F][0-9a-fA-F]{2})', '\\u0020', 'g')::jsonb AS j) AS r $$;

DROP INDEX CONCURRENTLY IF EXISTS events_search;

CREATE INDEX CONCURRENTLY events_search ON events
    USING gin ((ARRAY[community_id]), to_tsvector('simple'::regconfig, event_search_text(raw)));
