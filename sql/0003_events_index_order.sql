-- The author and kind indexes end with id, as the queries order (created_at DESC, id):
-- a filter with one author and one kind (or one kind) then reads its newest `limit` rows
-- straight off the index and stops, with no sort, whatever the planner's statistics say.
-- Without id the plan depends on them: before the first ANALYZE of a busy table the
-- planner read every row of the author and sorted them.
CREATE INDEX events_by_author_kind_order ON events (community_id, pubkey, kind, created_at DESC, id);
DROP INDEX events_by_author_kind;
ALTER INDEX events_by_author_kind_order RENAME TO events_by_author_kind;
CREATE INDEX events_by_kind_order ON events (community_id, kind, created_at DESC, id);
DROP INDEX events_by_kind;
ALTER INDEX events_by_kind_order RENAME TO events_by_kind;
