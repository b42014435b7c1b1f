"""Every tenant table in the migrations leads every key with community_id.

The first test runs the lint over the real migrations; the rest prove, each on a small
inline schema, that the lint catches every kind of key that could span communities, and that
it does not simply fail everything.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.sql_lint import OPERATOR_GLOBAL_TABLES, Violation, lint_directory, lint_sql

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"

# A tenant table that satisfies every rule; the meta-tests below break it one way at a time.
GOOD_EVENTS = """
CREATE TABLE events (
    community_id  integer NOT NULL REFERENCES communities (id),
    id            bytea NOT NULL,
    pubkey        bytea NOT NULL,
    kind          integer NOT NULL,
    PRIMARY KEY (community_id, id),
    UNIQUE (community_id, pubkey, kind),
    FOREIGN KEY (community_id) REFERENCES communities (id)
);
"""


def messages(sql: str) -> list[str]:
    return [violation.message for violation in lint_sql(sql)]


# --- the real migrations ---------------------------------------------------------------------


def test_project_migrations_pass() -> None:
    assert sorted(SQL_DIR.glob("*.sql")), f"no migrations found in {SQL_DIR}"
    violations = lint_directory(SQL_DIR)
    assert violations == [], "\n".join(str(violation) for violation in violations)


def test_project_migrations_fail_once_keys_lose_community_id(tmp_path: Path) -> None:
    """The lint really reads the migrations' own style: strip community_id from keys, it fails."""
    for migration in sorted(SQL_DIR.glob("*.sql")):
        text = migration.read_text(encoding="utf-8")
        (tmp_path / migration.name).write_text(text.replace("(community_id, ", "("), "utf-8")
    found = {violation.message for violation in lint_directory(tmp_path)}
    assert "events: PRIMARY KEY (id) does not lead with community_id" in found
    assert (
        "events: UNIQUE INDEX events_one_per_coordinate (pubkey, kind, coordinate_d) "
        "does not lead with community_id"
    ) in found


def test_operator_global_tables_are_exactly_these() -> None:
    # Host names are global: a name reaches one community, whichever table holds it.
    assert frozenset({"communities", "community_aliases", "schema_migrations"}) == (
        OPERATOR_GLOBAL_TABLES
    )


# --- a correct schema passes ---------------------------------------------------------------


def test_correct_table_passes() -> None:
    assert lint_sql(GOOD_EVENTS) == []


def test_correct_schema_with_every_kind_of_key_passes() -> None:
    sql = """
    CREATE TABLE IF NOT EXISTS event_tags (
        community_id  integer NOT NULL,
        name          text NOT NULL,
        value         text NOT NULL DEFAULT '',
        event_id      bytea NOT NULL,
        note          varchar(20) CHECK (note IS NOT NULL OR value <> ''),
        CONSTRAINT event_tags_pk PRIMARY KEY (community_id, name, value, event_id),
        CONSTRAINT event_tags_one UNIQUE NULLS NOT DISTINCT (community_id, note),
        CONSTRAINT event_tags_event FOREIGN KEY (community_id, event_id)
            REFERENCES events (community_id, id) ON DELETE CASCADE,
        CHECK (value <> 'x')
    );
    CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS event_tags_by_value
        ON ONLY public.event_tags USING btree (community_id DESC, value text_pattern_ops)
        INCLUDE (name) WHERE value <> '';
    CREATE INDEX event_tags_by_event ON event_tags (event_id);
    ALTER TABLE event_tags ADD CONSTRAINT event_tags_two UNIQUE (community_id, name),
        ADD COLUMN IF NOT EXISTS extra text;
    """
    assert lint_sql(sql) == []


def test_violation_names_file_table_and_line() -> None:
    sql = "\n\nCREATE TABLE events (\n community_id int NOT NULL,\n id int,\n PRIMARY KEY (id)\n);"
    [violation] = lint_sql(sql, "0002_x.sql")
    assert violation == Violation(
        "0002_x.sql", "events", "events: PRIMARY KEY (id) does not lead with community_id"
    )
    assert violation.line == 3
    assert str(violation).startswith("0002_x.sql:3: events: PRIMARY KEY (id)")


# --- the community_id column -----------------------------------------------------------------


def test_missing_community_id_column() -> None:
    sql = "CREATE TABLE events (id bytea NOT NULL, tenant integer NOT NULL, PRIMARY KEY (id));"
    assert messages(sql) == [
        "events: PRIMARY KEY (id) does not lead with community_id",
        "events: no community_id column",
    ]


# A nullable community_id always comes with a second violation: a PRIMARY KEY that leads with
# community_id makes it NOT NULL, so the table has a bad primary key or none.
NULLABLE = ["audit: community_id is not declared NOT NULL", "audit: no PRIMARY KEY"]


def test_nullable_community_id() -> None:
    sql = "CREATE TABLE audit (community_id integer REFERENCES communities (id), line text);"
    assert messages(sql) == NULLABLE


def test_community_id_with_default_null_is_nullable() -> None:
    sql = "CREATE TABLE audit (community_id integer DEFAULT NULL CHECK (1 IS NOT NULL));"
    assert messages(sql) == NULLABLE


def test_community_id_in_table_primary_key_counts_as_not_null() -> None:
    sql = "CREATE TABLE events (community_id integer, id bytea, PRIMARY KEY (community_id, id));"
    assert messages(sql) == []


def test_community_id_not_null_dropped_later() -> None:
    sql = "CREATE TABLE audit (community_id integer NOT NULL, line text);"
    sql += "ALTER TABLE audit ALTER COLUMN community_id DROP NOT NULL;"
    assert messages(sql) == NULLABLE


def test_community_id_dropped_later() -> None:
    sql = GOOD_EVENTS + "ALTER TABLE events DROP COLUMN community_id CASCADE;"
    assert messages(sql) == ["events: no community_id column", "events: no PRIMARY KEY"]


def test_community_id_set_not_null_later() -> None:
    sql = "CREATE TABLE t (community_id int, id int NOT NULL);"
    sql += (
        "ALTER TABLE t ALTER COLUMN community_id SET NOT NULL, ADD PRIMARY KEY (community_id, id);"
    )
    assert messages(sql) == []


# --- primary keys -----------------------------------------------------------------------


def test_primary_key_not_leading_with_community_id() -> None:
    sql = GOOD_EVENTS.replace("PRIMARY KEY (community_id, id)", "PRIMARY KEY (id, community_id)")
    assert messages(sql) == [
        "events: PRIMARY KEY (id, community_id) does not lead with community_id"
    ]


def test_column_level_primary_key() -> None:
    sql = """
    CREATE TABLE events (
        community_id  integer NOT NULL,
        id            bytea PRIMARY KEY
    );
    """
    assert messages(sql) == [
        "events: column-level PRIMARY KEY on id; "
        "declare PRIMARY KEY (community_id, ...) on the table instead"
    ]


def test_column_level_primary_key_on_community_id_itself() -> None:
    """One row per community is still a key that cannot identify a tenant's rows: not allowed."""
    sql = "CREATE TABLE settings (community_id integer PRIMARY KEY, body text);"
    assert messages(sql) == [
        "settings: column-level PRIMARY KEY on community_id; "
        "declare PRIMARY KEY (community_id, ...) on the table instead"
    ]


def test_tenant_table_without_primary_key() -> None:
    sql = "CREATE TABLE audit_log (community_id integer NOT NULL, line text NOT NULL);"
    assert messages(sql) == ["audit_log: no PRIMARY KEY"]


def test_primary_key_added_by_a_later_migration(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("CREATE TABLE t (community_id int NOT NULL, id int);")
    (tmp_path / "0002_b.sql").write_text("ALTER TABLE t ADD PRIMARY KEY (community_id, id);")
    assert lint_directory(tmp_path) == []
    (tmp_path / "0002_b.sql").unlink()
    assert [v.message for v in lint_directory(tmp_path)] == ["t: no PRIMARY KEY"]


def test_lint_directory_reads_files_in_order(tmp_path: Path) -> None:
    # Reversed, the ALTER would come before the CREATE and the PRIMARY KEY would be lost.
    (tmp_path / "0010_b.sql").write_text("ALTER TABLE t ADD PRIMARY KEY (community_id, id);")
    (tmp_path / "0009_a.sql").write_text("CREATE TABLE t (community_id int NOT NULL, id int);")
    (tmp_path / "notes.txt").write_text("CREATE TABLE junk (id int PRIMARY KEY);")
    assert lint_directory(tmp_path) == []


def test_lint_directory_rejects_a_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(NotADirectoryError):
        lint_directory(tmp_path / "nope")


# --- unique constraints and indexes ---------------------------------------------------------


def test_unique_constraint_not_leading_with_community_id() -> None:
    sql = GOOD_EVENTS.replace("UNIQUE (community_id, pubkey, kind)", "UNIQUE (pubkey, kind)")
    assert messages(sql) == ["events: UNIQUE (pubkey, kind) does not lead with community_id"]


def test_unique_nulls_not_distinct_not_leading() -> None:
    sql = GOOD_EVENTS.replace(
        "UNIQUE (community_id, pubkey, kind)", "UNIQUE NULLS NOT DISTINCT (pubkey, community_id)"
    )
    assert messages(sql) == [
        "events: UNIQUE (pubkey, community_id) does not lead with community_id"
    ]


def test_column_level_unique() -> None:
    sql = GOOD_EVENTS.replace("pubkey        bytea NOT NULL", "pubkey bytea NOT NULL UNIQUE")
    assert messages(sql) == [
        "events: column-level UNIQUE on pubkey; "
        "declare UNIQUE (community_id, ...) on the table instead"
    ]


@pytest.mark.parametrize(
    ("statement", "key"),
    [
        (
            "CREATE UNIQUE INDEX events_by_pubkey ON events (pubkey, community_id);",
            "UNIQUE INDEX events_by_pubkey (pubkey, community_id)",
        ),
        (
            "CREATE UNIQUE INDEX events_live ON events (pubkey, kind) WHERE kind > 0;",
            "UNIQUE INDEX events_live (pubkey, kind)",
        ),
        (
            "CREATE UNIQUE INDEX IF NOT EXISTS events_kind ON events (kind);",
            "UNIQUE INDEX events_kind (kind)",
        ),
        (
            "CREATE UNIQUE INDEX CONCURRENTLY events_kind ON public.events USING btree (kind DESC)"
            " INCLUDE (community_id) WHERE kind IS NOT NULL;",
            "UNIQUE INDEX events_kind (kind desc)",
        ),
        ("CREATE UNIQUE INDEX ON events (id);", "UNIQUE INDEX (id)"),
        (
            "CREATE UNIQUE INDEX events_expr ON events ((community_id + 0), id);",
            "UNIQUE INDEX events_expr ((community_id + 0), id)",
        ),
        (
            "CREATE UNIQUE INDEX events_call ON events (coalesce(community_id, 0), id);",
            "UNIQUE INDEX events_call (coalesce(community_id, 0), id)",
        ),
    ],
)
def test_unique_index_not_leading_with_community_id(statement: str, key: str) -> None:
    assert messages(GOOD_EVENTS + statement) == [f"events: {key} does not lead with community_id"]


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE UNIQUE INDEX a ON events (community_id, pubkey) WHERE kind IN (0, 3);",
        "CREATE UNIQUE INDEX IF NOT EXISTS b ON events (community_id, kind);",
        'CREATE UNIQUE INDEX c ON events ("Community_Id" COLLATE "C" ASC NULLS LAST, id);',
        "CREATE INDEX d ON events (pubkey);",  # not a key: not checked
    ],
)
def test_unique_index_leading_with_community_id_passes(statement: str) -> None:
    assert messages(GOOD_EVENTS + statement) == []


# --- foreign keys -----------------------------------------------------------------------


def test_foreign_key_not_leading_with_community_id() -> None:
    sql = (
        GOOD_EVENTS
        + """
    CREATE TABLE event_tags (
        community_id  integer NOT NULL,
        event_id      bytea NOT NULL,
        name          text NOT NULL,
        PRIMARY KEY (community_id, event_id, name),
        FOREIGN KEY (event_id) REFERENCES events (id)
    );
    """
    )
    assert messages(sql) == ["event_tags: FOREIGN KEY (event_id) does not lead with community_id"]


def test_foreign_key_matching_community_id_to_another_column() -> None:
    sql = (
        GOOD_EVENTS
        + """
    CREATE TABLE event_tags (
        community_id  integer NOT NULL,
        event_id      bytea NOT NULL,
        PRIMARY KEY (community_id, event_id),
        FOREIGN KEY (community_id, event_id) REFERENCES events (id, community_id)
    );
    """
    )
    assert messages(sql) == [
        "event_tags: FOREIGN KEY (community_id, event_id) REFERENCES events (id, community_id) "
        "does not match community_id to events.community_id"
    ]


def test_column_level_references_on_another_column() -> None:
    sql = (
        GOOD_EVENTS
        + """
    CREATE TABLE event_tags (
        community_id  integer NOT NULL,
        event_id      bytea NOT NULL REFERENCES events (id) ON DELETE CASCADE,
        PRIMARY KEY (community_id, event_id)
    );
    """
    )
    assert messages(sql) == [
        "event_tags: column-level REFERENCES events on event_id; "
        "declare FOREIGN KEY (community_id, ...) on the table instead"
    ]


def test_column_level_references_from_community_id_to_a_tenant_table() -> None:
    sql = GOOD_EVENTS.replace("REFERENCES communities (id),", "REFERENCES events,")
    assert messages(sql) == [
        "events: column-level REFERENCES events on community_id; "
        "declare FOREIGN KEY (community_id, ...) on the table instead"
    ]


def test_column_level_references_from_community_id_to_communities_is_allowed() -> None:
    sql = """
    CREATE TABLE quotas (
        community_id  integer NOT NULL REFERENCES public.communities ON DELETE CASCADE,
        name          text NOT NULL,
        PRIMARY KEY (community_id, name)
    );
    """
    assert messages(sql) == []


# --- named constraints -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("constraint", "message"),
    [
        (
            "CONSTRAINT events_pk PRIMARY KEY (id)",
            "events: CONSTRAINT events_pk PRIMARY KEY (id) does not lead with community_id",
        ),
        (
            "CONSTRAINT events_one UNIQUE (pubkey, kind)",
            "events: CONSTRAINT events_one UNIQUE (pubkey, kind) does not lead with community_id",
        ),
        (
            "CONSTRAINT events_author FOREIGN KEY (pubkey) REFERENCES authors (pubkey)",
            "events: CONSTRAINT events_author FOREIGN KEY (pubkey) does not lead with community_id",
        ),
        (
            "CONSTRAINT events_no_overlap EXCLUDE USING gist (span WITH &&)",
            "events: CONSTRAINT events_no_overlap EXCLUDE (span with & &) "
            "does not lead with community_id",
        ),
    ],
)
def test_named_table_constraints_not_leading(constraint: str, message: str) -> None:
    sql = f"""
    CREATE TABLE events (
        community_id  integer NOT NULL,
        id            bytea NOT NULL,
        pubkey        bytea NOT NULL,
        kind          integer NOT NULL,
        span          int4range,
        PRIMARY KEY (community_id, id),
        {constraint}
    );
    """
    if "PRIMARY KEY (id)" in constraint:
        sql = sql.replace("PRIMARY KEY (community_id, id),", "")
    assert messages(sql) == [message]


def test_named_column_constraints() -> None:
    sql = """
    CREATE TABLE events (
        community_id  integer NOT NULL,
        id            bytea CONSTRAINT events_pk PRIMARY KEY,
        pubkey        bytea CONSTRAINT events_pubkey_nn NOT NULL CONSTRAINT events_one UNIQUE
    );
    """
    assert messages(sql) == [
        "events: column-level CONSTRAINT events_pk PRIMARY KEY on id; "
        "declare PRIMARY KEY (community_id, ...) on the table instead",
        "events: column-level CONSTRAINT events_one UNIQUE on pubkey; "
        "declare UNIQUE (community_id, ...) on the table instead",
    ]


# --- ALTER TABLE ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "message"),
    [
        (
            "ALTER TABLE events ADD CONSTRAINT events_one UNIQUE (pubkey);",
            "events: CONSTRAINT events_one UNIQUE (pubkey) does not lead with community_id",
        ),
        (
            "ALTER TABLE ONLY public.events ADD CONSTRAINT events_pk2 PRIMARY KEY (id);",
            "events: CONSTRAINT events_pk2 PRIMARY KEY (id) does not lead with community_id",
        ),
        (
            "ALTER TABLE IF EXISTS events ADD CONSTRAINT events_author "
            "FOREIGN KEY (pubkey, community_id) REFERENCES authors (pubkey, community_id) "
            "NOT VALID;",
            "events: CONSTRAINT events_author FOREIGN KEY (pubkey, community_id) "
            "does not lead with community_id",
        ),
        (
            "ALTER TABLE events ADD UNIQUE (kind, community_id);",
            "events: UNIQUE (kind, community_id) does not lead with community_id",
        ),
        (
            "ALTER TABLE events ADD COLUMN d text, ADD FOREIGN KEY (d) REFERENCES ds (d);",
            "events: FOREIGN KEY (d) does not lead with community_id",
        ),
        (
            "ALTER TABLE events ADD COLUMN IF NOT EXISTS slug text UNIQUE;",
            "events: column-level UNIQUE on slug; "
            "declare UNIQUE (community_id, ...) on the table instead",
        ),
        (
            "CREATE UNIQUE INDEX events_kind ON events (kind);"
            "ALTER TABLE events ADD CONSTRAINT events_kind UNIQUE USING INDEX events_kind;",
            "events: UNIQUE INDEX events_kind (kind) does not lead with community_id",
        ),
        (
            "ALTER TABLE events ADD CONSTRAINT events_kind UNIQUE USING INDEX elsewhere;",
            "events: CONSTRAINT events_kind UNIQUE USING INDEX elsewhere: "
            "not a unique index on events created here",
        ),
    ],
)
def test_alter_table_add_constraint_not_leading(statement: str, message: str) -> None:
    assert messages(GOOD_EVENTS + statement) == [message]


def test_alter_table_on_a_table_created_elsewhere_is_still_checked() -> None:
    assert messages("ALTER TABLE events ADD CONSTRAINT x UNIQUE (id);") == [
        "events: CONSTRAINT x UNIQUE (id) does not lead with community_id"
    ]


# --- operator-global tables --------------------------------------------------------------


def test_operator_global_tables_are_exempt() -> None:
    sql = """
    CREATE TABLE communities (
        id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        host        text NOT NULL UNIQUE,
        owner       bytea REFERENCES owners (pubkey)
    );
    CREATE TABLE IF NOT EXISTS public.schema_migrations (
        version     integer PRIMARY KEY,
        name        text NOT NULL
    );
    CREATE TABLE "Communities" (x int);
    CREATE UNIQUE INDEX communities_by_owner ON communities (owner);
    ALTER TABLE communities ADD CONSTRAINT communities_one UNIQUE (host, owner);
    ALTER TABLE schema_migrations ADD UNIQUE (name);
    """
    assert messages(sql) == []


def test_a_table_not_listed_as_global_is_a_tenant_table() -> None:
    sql = "CREATE TABLE operators (id integer PRIMARY KEY);"
    assert messages(sql) == [
        "operators: column-level PRIMARY KEY on id; "
        "declare PRIMARY KEY (community_id, ...) on the table instead",
        "operators: no community_id column",
    ]


# --- comments, strings, quoting ---------------------------------------------------------


def test_comments_with_fake_violations_are_ignored() -> None:
    sql = """
    -- CREATE TABLE bad (id int PRIMARY KEY);
    /* CREATE TABLE worse (id int UNIQUE);
       /* nested */ CREATE UNIQUE INDEX x ON events (id); */
    CREATE TABLE events (
        community_id  integer NOT NULL, -- , id int PRIMARY KEY
        id            bytea NOT NULL, /* UNIQUE (id), */
        /* ); ALTER TABLE events ADD UNIQUE (id); */
        PRIMARY KEY (community_id, id) -- ); CREATE TABLE t (x int);
    );
    """
    assert messages(sql) == []


def test_comment_markers_inside_strings_do_not_hide_violations() -> None:
    sql = """
    CREATE TABLE events (
        community_id  integer NOT NULL,
        id            bytea NOT NULL,
        note          text DEFAULT '-- not a comment', UNIQUE (note),
        other         text DEFAULT '/* nor this', PRIMARY KEY (id), tail text DEFAULT '*/'
    );
    """
    assert messages(sql) == [
        "events: UNIQUE (note) does not lead with community_id",
        "events: PRIMARY KEY (id) does not lead with community_id",
    ]


def test_semicolons_in_strings_and_dollar_quotes_do_not_split_statements() -> None:
    sql = """
    CREATE TABLE events (
        community_id  integer NOT NULL,
        id            bytea NOT NULL,
        note          text DEFAULT 'a; CREATE TABLE t (x int PRIMARY KEY)',
        escaped       text DEFAULT E'it\\'s; (',
        PRIMARY KEY (community_id, id)
    );
    CREATE FUNCTION f() RETURNS void LANGUAGE sql AS $body$
        CREATE TABLE t (x int PRIMARY KEY);
    $body$;
    DO $$ BEGIN CREATE TABLE u (x int UNIQUE); END $$;
    """
    assert messages(sql) == []


def test_quoted_and_schema_qualified_names() -> None:
    sql = """
    CREATE TABLE IF NOT EXISTS "public"."Events" (
        "Community_Id"  integer NOT NULL,
        "ID"            bytea NOT NULL,
        PRIMARY KEY ("COMMUNITY_ID", "ID")
    );
    CREATE TABLE public.event_tags (
        community_id  integer NOT NULL,
        "Event Id"    bytea NOT NULL,
        PRIMARY KEY ("Event Id", community_id)
    );
    CREATE UNIQUE INDEX "Idx" ON "public"."events" ("ID");
    """
    assert lint_sql(sql) == [
        Violation(
            "<sql>",
            "event_tags",
            "event_tags: PRIMARY KEY (event id, community_id) does not lead with community_id",
        ),
        Violation(
            "<sql>", "events", "events: UNIQUE INDEX idx (id) does not lead with community_id"
        ),
    ]


def test_unterminated_comment_is_reported() -> None:
    [violation] = lint_sql(GOOD_EVENTS + "/* CREATE TABLE t (x int PRIMARY KEY);", "0003_x.sql")
    assert violation.filename == "0003_x.sql"
    assert "unterminated /* comment" in violation.message


# --- fails closed --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE copy AS SELECT * FROM events;",
        "CREATE TABLE events_2024 PARTITION OF events FOR VALUES IN (1);",
        "CREATE TABLE copy (LIKE events INCLUDING ALL);",
        "CREATE TABLE copy (community_id int NOT NULL, PRIMARY KEY (community_id, id);",
    ],
)
def test_tenant_table_it_cannot_read_is_reported(statement: str) -> None:
    found = messages(GOOD_EVENTS + statement)
    assert found, statement
    assert found[0].startswith(statement.split()[2] + ": cannot check this statement")
