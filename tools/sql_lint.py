"""A static check that every tenant table in the migrations leads every key with community_id.

Rows of different communities share tables, so every key of a tenant table (primary key,
unique constraint, unique index, foreign key, exclusion constraint) must lead with
`community_id`: then a key can never collide, or match, across communities. Tables outside
tenancy are named in OPERATOR_GLOBAL_TABLES and are not checked.

This is a small hand-written scanner for the DDL the migrations use, not a SQL parser. It
fails closed: a CREATE TABLE, ALTER TABLE or CREATE UNIQUE INDEX on a tenant table that it
cannot read is reported rather than skipped. Statements inside dollar-quoted bodies (DO
blocks, functions) are not looked at, and non-unique indexes are not checked.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["OPERATOR_GLOBAL_TABLES", "TENANT_COLUMN", "Violation", "lint_directory", "lint_sql"]

# Tables outside tenancy: one row set for the whole relay. Everything else is a tenant table.
OPERATOR_GLOBAL_TABLES: frozenset[str] = frozenset(
    {"communities", "community_aliases", "schema_migrations"}
)

TENANT_COLUMN = "community_id"
# The one table a column-level REFERENCES on community_id may point at.
_COMMUNITIES = "communities"


@dataclass(frozen=True)
class Violation:
    filename: str
    table: str
    message: str
    # Where the statement starts; informational only, so not part of equality.
    line: int = field(default=0, compare=False)

    def __str__(self) -> str:
        where = f"{self.filename}:{self.line}" if self.line else self.filename
        return f"{where}: {self.message}"


def lint_sql(text: str, filename: str = "<sql>") -> list[Violation]:
    """Check one migration's text on its own."""
    linter = _Linter()
    linter.feed(text, filename)
    return linter.finish()


def lint_directory(path: str | Path) -> list[Violation]:
    """Check every `*.sql` file in `path`, in name order, as one migration history.

    A later file may complete a table an earlier one created (ALTER TABLE ... ADD PRIMARY KEY),
    so the per-table checks (community_id column, primary key) run after the last file.
    """
    directory = Path(path)
    if not directory.is_dir():
        raise NotADirectoryError(f"not a directory: {directory}")
    linter = _Linter()
    for sql_file in sorted(directory.glob("*.sql")):
        linter.feed(sql_file.read_text(encoding="utf-8"), str(sql_file))
    return linter.finish()


# --- tokens -----------------------------------------------------------------------------

_WORD = "word"  # unquoted identifier or keyword
_QIDENT = "qident"  # "quoted identifier"
_STRING = "string"  # '...', E'...', $tag$...$tag$
_NUMBER = "number"
_PUNCT = "punct"  # ( ) [ ] , ; .
_OP = "op"  # anything else, one character at a time

_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\u0080-\uffff][A-Za-z0-9_\u0080-\uffff]*)?\$")


@dataclass(frozen=True, slots=True)
class _Tok:
    kind: str
    text: str  # a quoted identifier's text is unquoted
    line: int

    @property
    def norm(self) -> str:
        return self.text.lower()


class _ParseError(Exception):
    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.line = line


def _scan_quoted(text: str, start: int, quote: str, backslash: bool) -> int:
    """The index just past the literal opened at `start`; a doubled quote is an escape."""
    i, n = start + 1, len(text)
    while i < n:
        ch = text[i]
        if backslash and ch == "\\":
            i += 2
        elif ch == quote:
            if i + 1 < n and text[i + 1] == quote:
                i += 2
            else:
                return i + 1
        else:
            i += 1
    what = "quoted identifier" if quote == '"' else "string literal"
    raise _ParseError(f"unterminated {what}")


def _tokenize(text: str) -> list[_Tok]:
    """Tokens of `text`, with `--` and (nested) `/* */` comments dropped."""
    tokens: list[_Tok] = []
    i, n, line = 0, len(text), 1
    while i < n:
        ch = text[i]
        start, start_line = i, line
        try:
            if ch.isspace():
                i += 1
            elif text.startswith("--", i):
                end = text.find("\n", i)
                i = n if end < 0 else end
            elif text.startswith("/*", i):
                depth, i = 1, i + 2
                while depth:
                    if i >= n:
                        raise _ParseError("unterminated /* comment")
                    if text.startswith("/*", i):
                        depth, i = depth + 1, i + 2
                    elif text.startswith("*/", i):
                        depth, i = depth - 1, i + 2
                    else:
                        i += 1
            elif ch == "'":
                i = _scan_quoted(text, i, "'", backslash=False)
                tokens.append(_Tok(_STRING, text[start:i], start_line))
            elif ch in "eE" and text.startswith("'", i + 1):
                i = _scan_quoted(text, i + 1, "'", backslash=True)
                tokens.append(_Tok(_STRING, text[start:i], start_line))
            elif ch == '"':
                i = _scan_quoted(text, i, '"', backslash=False)
                name = text[start + 1 : i - 1].replace('""', '"')
                tokens.append(_Tok(_QIDENT, name, start_line))
            elif ch == "$" and (tag := _DOLLAR_TAG.match(text, i)) is not None:
                end = text.find(tag.group(0), tag.end())
                if end < 0:
                    raise _ParseError(f"unterminated {tag.group(0)} string")
                i = end + len(tag.group(0))
                tokens.append(_Tok(_STRING, text[start:i], start_line))
            elif ch.isalpha() or ch == "_":
                i += 1
                while i < n and (text[i].isalnum() or text[i] in "_$"):
                    i += 1
                tokens.append(_Tok(_WORD, text[start:i], start_line))
            elif ch.isdigit():
                i += 1
                while i < n and (text[i].isalnum() or text[i] in "_."):
                    i += 1
                tokens.append(_Tok(_NUMBER, text[start:i], start_line))
            elif ch in "()[],;.":
                i += 1
                tokens.append(_Tok(_PUNCT, ch, start_line))
            else:
                i += 1
                tokens.append(_Tok(_OP, ch, start_line))
        except _ParseError as exc:
            exc.line = start_line
            raise
        line += text.count("\n", start, i)
    return tokens


def _is_ident(tok: _Tok) -> bool:
    return tok.kind in (_WORD, _QIDENT)


def _is_punct(tok: _Tok, char: str) -> bool:
    return tok.kind == _PUNCT and tok.text == char


def _closing(tokens: Sequence[_Tok], open_at: int) -> int:
    """The index of the bracket closing the one at `open_at`."""
    depth = 0
    for i in range(open_at, len(tokens)):
        tok = tokens[i]
        if tok.kind != _PUNCT:
            continue
        if tok.text in "([":
            depth += 1
        elif tok.text in ")]":
            depth -= 1
            if depth == 0:
                return i
    raise _ParseError("unbalanced parentheses", tokens[open_at].line)


def _split(tokens: Sequence[_Tok], separator: str) -> list[list[_Tok]]:
    """`tokens` split on `separator` where it is outside any brackets; empty parts dropped."""
    parts: list[list[_Tok]] = [[]]
    depth = 0
    for tok in tokens:
        if tok.kind == _PUNCT:
            if tok.text in "([":
                depth += 1
            elif tok.text in ")]":
                depth -= 1
            elif tok.text == separator and depth == 0:
                parts.append([])
                continue
        parts[-1].append(tok)
    return [part for part in parts if part]


def _render(tokens: Sequence[_Tok]) -> str:
    """A compact spelling of an index element, for messages."""
    out = ""
    for tok in tokens:
        text = tok.norm if _is_ident(tok) else tok.text
        if out and not out.endswith("(") and text not in (")", ",", "(", "::"):
            out += " "
        out += text
    return out


def _column_label(element: Sequence[_Tok]) -> str:
    """The column an index or key element names, or the element spelled out."""
    if len(element) == 1 and _is_ident(element[0]):
        return element[0].norm
    if _leads_with_tenant_column(element):
        return TENANT_COLUMN
    return _render(element)


def _leads_with_tenant_column(element: Sequence[_Tok]) -> bool:
    """True when a key or index element is the bare community_id column.

    It may be followed by COLLATE, an operator class, ASC/DESC or NULLS FIRST/LAST, all words,
    but not by an operator or a call: that would make it an expression.
    """
    if not element or not _is_ident(element[0]) or element[0].norm != TENANT_COLUMN:
        return False
    return len(element) == 1 or _is_ident(element[1])


class _Reader:
    """A cursor over the tokens of one statement or one comma-separated element."""

    def __init__(self, tokens: Sequence[_Tok]) -> None:
        self.tokens = tokens
        self.pos = 0

    def done(self) -> bool:
        return self.pos >= len(self.tokens)

    def peek(self) -> _Tok | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def advance(self) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise _ParseError("unexpected end of statement", self._line())
        self.pos += 1
        return tok

    def at_kw(self, *words: str) -> bool:
        ahead = self.tokens[self.pos : self.pos + len(words)]
        return len(ahead) == len(words) and all(
            tok.kind == _WORD and tok.norm == word for tok, word in zip(ahead, words, strict=True)
        )

    def accept_kw(self, *words: str) -> bool:
        if self.at_kw(*words):
            self.pos += len(words)
            return True
        return False

    def expect_kw(self, *words: str) -> None:
        if not self.accept_kw(*words):
            raise _ParseError(f"expected {' '.join(words).upper()}", self._line())

    def at_punct(self, char: str) -> bool:
        tok = self.peek()
        return tok is not None and _is_punct(tok, char)

    def ident(self) -> str:
        tok = self.peek()
        if tok is None or not _is_ident(tok):
            raise _ParseError("expected a name", self._line())
        self.pos += 1
        return tok.norm

    def name(self) -> str:
        """A possibly schema-qualified name; its last part, which is what tables are known by."""
        name = self.ident()
        while self.at_punct("."):
            self.pos += 1
            name = self.ident()
        return name

    def group(self) -> list[list[_Tok]]:
        """The comma-separated elements of the parenthesised group at the cursor."""
        if not self.at_punct("("):
            raise _ParseError("expected (", self._line())
        close = _closing(self.tokens, self.pos)
        inner = self.tokens[self.pos + 1 : close]
        self.pos = close + 1
        return _split(inner, ",")

    def rest(self) -> Sequence[_Tok]:
        rest = self.tokens[self.pos :]
        self.pos = len(self.tokens)
        return rest

    def _line(self) -> int:
        tok = self.peek() or (self.tokens[-1] if self.tokens else None)
        return tok.line if tok is not None else 0


# --- the check -----------------------------------------------------------------------------

# Words that may come between CREATE and TABLE.
_TABLE_OPTIONS = ("global", "local", "temp", "temporary", "unlogged")
# Words that start a table constraint in CREATE TABLE (...) or ALTER TABLE ... ADD.
_CONSTRAINT_WORDS = ("constraint", "primary", "unique", "foreign", "check", "exclude")


@dataclass
class _Table:
    """What the migrations so far say about one tenant table."""

    name: str
    filename: str
    line: int
    has_tenant_column: bool = False
    tenant_column_not_null: bool = False  # declared, or SET, NOT NULL
    tenant_column_in_primary_key: bool = False  # key columns are implicitly NOT NULL
    has_primary_key: bool = False


class _Linter:
    def __init__(self) -> None:
        self.violations: list[Violation] = []
        self.tables: dict[str, _Table] = {}  # tenant tables created so far
        self.unique_indexes: dict[str, tuple[str, list[str]]] = {}  # name -> (table, columns)
        self.file_order: dict[str, int] = {}
        self.filename = "<sql>"
        self.line = 0  # where the statement being read starts
        self.current_table = ""  # the table it is about, once known

    # Entry points.

    def feed(self, text: str, filename: str) -> None:
        self.filename = filename
        self.file_order.setdefault(filename, len(self.file_order))
        try:
            tokens = _tokenize(text)
        except _ParseError as exc:
            self.violations.append(Violation(filename, "", f"{exc}", exc.line))
            return
        for statement in _split(tokens, ";"):
            self._statement(statement)

    def finish(self) -> list[Violation]:
        for table in self.tables.values():
            if not table.has_tenant_column:
                self._table_violation(table, f"no {TENANT_COLUMN} column")
            elif not (table.tenant_column_not_null or table.tenant_column_in_primary_key):
                self._table_violation(table, f"{TENANT_COLUMN} is not declared NOT NULL")
            if not table.has_primary_key:
                self._table_violation(table, "no PRIMARY KEY")
        return sorted(self.violations, key=lambda v: (self.file_order.get(v.filename, 0), v.line))

    # Reporting.

    def _report(self, table: str, detail: str) -> None:
        self.violations.append(Violation(self.filename, table, f"{table}: {detail}", self.line))

    def _table_violation(self, table: _Table, detail: str) -> None:
        self.violations.append(
            Violation(table.filename, table.name, f"{table.name}: {detail}", table.line)
        )

    def _check_leads(self, table: str, key: str, columns: Sequence[str]) -> None:
        if not columns or columns[0] != TENANT_COLUMN:
            self._report(table, f"{key} ({', '.join(columns)}) does not lead with {TENANT_COLUMN}")

    # Statements.

    def _statement(self, tokens: Sequence[_Tok]) -> None:
        self.line = tokens[0].line
        reader = _Reader(tokens)
        self.current_table = ""
        try:
            if reader.accept_kw("create"):
                if reader.accept_kw("unique"):
                    reader.expect_kw("index")
                    self._create_unique_index(reader)
                    return
                while any(reader.at_kw(word) for word in _TABLE_OPTIONS):
                    reader.advance()
                if reader.accept_kw("table"):
                    self._create_table(reader)
            elif reader.accept_kw("alter", "table"):
                self._alter_table(reader)
            elif reader.accept_kw("drop", "table"):
                self._drop_table(reader)
        except _ParseError as exc:
            table = self.current_table
            if table in OPERATOR_GLOBAL_TABLES:
                return
            self._report(table or "<unknown table>", f"cannot check this statement: {exc}")

    def _create_table(self, reader: _Reader) -> None:
        reader.accept_kw("if", "not", "exists")
        table = self.current_table = reader.name()
        if table in OPERATOR_GLOBAL_TABLES:
            return
        if not reader.at_punct("("):
            raise _ParseError("CREATE TABLE without a column list (AS, OF, PARTITION OF)")
        self.tables[table] = _Table(table, self.filename, self.line)
        for element in reader.group():
            part = _Reader(element)
            if any(part.at_kw(word) for word in _CONSTRAINT_WORDS) or part.at_kw("not", "null"):
                self._table_constraint(table, part)
            elif part.at_kw("like"):
                raise _ParseError("LIKE in a column list")
            else:
                self._column(table, part)

    def _create_unique_index(self, reader: _Reader) -> None:
        reader.accept_kw("concurrently")
        reader.accept_kw("if", "not", "exists")
        index = "" if reader.at_kw("on") else reader.name()
        reader.expect_kw("on")
        reader.accept_kw("only")
        table = self.current_table = reader.name()
        if reader.accept_kw("using"):
            reader.ident()
        elements = reader.group()  # INCLUDE, NULLS [NOT] DISTINCT, WITH, WHERE: not keys
        columns = [_column_label(element) for element in elements]
        if index:
            self.unique_indexes[index] = (table, columns)
        if table in OPERATOR_GLOBAL_TABLES:
            return
        key = f"UNIQUE INDEX {index}" if index else "UNIQUE INDEX"
        if not elements or not _leads_with_tenant_column(elements[0]):
            self._report(table, f"{key} ({', '.join(columns)}) does not lead with {TENANT_COLUMN}")

    def _alter_table(self, reader: _Reader) -> None:
        reader.accept_kw("if", "exists")
        reader.accept_kw("only")
        table = self.current_table = reader.name()
        tok = reader.peek()
        if tok is not None and tok.kind == _OP and tok.text == "*":
            reader.advance()
        if table in OPERATOR_GLOBAL_TABLES:
            return
        for action in _split(reader.rest(), ","):
            part = _Reader(action)
            if part.accept_kw("add"):
                if any(part.at_kw(word) for word in _CONSTRAINT_WORDS):
                    self._table_constraint(table, part)
                else:
                    part.accept_kw("column")
                    part.accept_kw("if", "not", "exists")
                    self._column(table, part)
            elif part.accept_kw("alter"):
                part.accept_kw("column")
                column = part.ident()
                state = self.tables.get(table)
                if column == TENANT_COLUMN and state is not None:
                    if part.at_kw("set", "not", "null"):
                        state.tenant_column_not_null = True
                    elif part.at_kw("drop", "not", "null"):
                        state.tenant_column_not_null = False
            elif part.accept_kw("drop", "column"):
                part.accept_kw("if", "exists")
                column = part.ident()
                state = self.tables.get(table)
                if column == TENANT_COLUMN and state is not None:
                    state.has_tenant_column = state.tenant_column_not_null = False
                    if state.tenant_column_in_primary_key:  # the key goes with the column
                        state.tenant_column_in_primary_key = state.has_primary_key = False
            elif part.accept_kw("rename", "to"):
                new_name = part.ident()
                state = self.tables.pop(table, None)
                if state is not None and new_name not in OPERATOR_GLOBAL_TABLES:
                    state.name = new_name
                    self.tables[new_name] = state

    def _drop_table(self, reader: _Reader) -> None:
        reader.accept_kw("if", "exists")
        for name in _split(reader.rest(), ","):
            self.tables.pop(_Reader(name).name(), None)

    # Pieces of CREATE TABLE and ALTER TABLE ... ADD, on tenant tables.

    def _table_constraint(self, table: str, part: _Reader) -> None:
        prefix = f"CONSTRAINT {part.ident()} " if part.accept_kw("constraint") else ""
        state = self.tables.get(table)
        if part.accept_kw("primary", "key"):
            columns = self._key_columns(table, f"{prefix}PRIMARY KEY", part)
            if state is not None:
                state.has_primary_key = True
                if TENANT_COLUMN in columns:
                    state.tenant_column_in_primary_key = True
        elif part.accept_kw("unique"):
            if part.accept_kw("nulls"):
                part.accept_kw("not")
                part.expect_kw("distinct")
            self._key_columns(table, f"{prefix}UNIQUE", part)
        elif part.accept_kw("foreign", "key"):
            key = f"{prefix}FOREIGN KEY"
            columns = [_column_label(element) for element in part.group()]
            part.expect_kw("references")
            target = part.name()
            targets = [_column_label(e) for e in part.group()] if part.at_punct("(") else None
            self._check_leads(table, key, columns)
            if (
                columns[:1] == [TENANT_COLUMN]
                and target not in OPERATOR_GLOBAL_TABLES
                and targets is not None
                and targets[:1] != [TENANT_COLUMN]
            ):
                self._report(
                    table,
                    f"{key} ({', '.join(columns)}) REFERENCES {target} ({', '.join(targets)}) "
                    f"does not match {TENANT_COLUMN} to {target}.{TENANT_COLUMN}",
                )
        elif part.accept_kw("exclude"):
            if part.accept_kw("using"):
                part.ident()
            elements = part.group()
            if not elements or not _leads_with_tenant_column(elements[0]):
                spelled = ", ".join(_render(element) for element in elements)
                self._report(
                    table, f"{prefix}EXCLUDE ({spelled}) does not lead with {TENANT_COLUMN}"
                )
        elif part.accept_kw("check"):
            pass
        elif part.accept_kw("not", "null"):  # PostgreSQL 18: NOT NULL column as a constraint
            if part.ident() == TENANT_COLUMN and state is not None:
                state.tenant_column_not_null = True
        else:
            raise _ParseError(f"unrecognised table constraint after {prefix or 'ADD'}".strip())

    def _key_columns(self, table: str, key: str, part: _Reader) -> list[str]:
        """The columns of a PRIMARY KEY or UNIQUE constraint, checked to lead with community_id."""
        if part.accept_kw("using", "index"):
            index = part.name()
            known = self.unique_indexes.get(index)
            if known is None or known[0] != table:
                self._report(
                    table, f"{key} USING INDEX {index}: not a unique index on {table} created here"
                )
                return []
            return known[1]  # its columns were checked when it was created
        columns = [_column_label(element) for element in part.group()]
        self._check_leads(table, key, columns)
        return columns

    def _column(self, table: str, part: _Reader) -> None:
        """A column definition: its name, a type, then column constraints in any order."""
        column = part.ident()
        not_null = False
        prefix = ""
        while not part.done():
            if part.at_punct("(") or part.at_punct("["):
                part.pos = _closing(part.tokens, part.pos) + 1  # CHECK (...), DEFAULT f(...)
            elif part.accept_kw("constraint"):
                prefix = f"CONSTRAINT {part.ident()} "
                continue
            elif part.accept_kw("not", "null"):
                not_null = True
            elif part.accept_kw("primary", "key"):
                not_null = True
                state = self.tables.get(table)
                if state is not None:
                    state.has_primary_key = True
                self._report(
                    table,
                    f"column-level {prefix}PRIMARY KEY on {column}; "
                    f"declare PRIMARY KEY ({TENANT_COLUMN}, ...) on the table instead",
                )
            elif part.accept_kw("unique"):
                if part.accept_kw("nulls"):
                    part.accept_kw("not")
                    part.expect_kw("distinct")
                self._report(
                    table,
                    f"column-level {prefix}UNIQUE on {column}; "
                    f"declare UNIQUE ({TENANT_COLUMN}, ...) on the table instead",
                )
            elif part.accept_kw("references"):
                target = part.name()
                if part.at_punct("("):
                    part.group()
                if column != TENANT_COLUMN or target != _COMMUNITIES:
                    self._report(
                        table,
                        f"column-level {prefix}REFERENCES {target} on {column}; "
                        f"declare FOREIGN KEY ({TENANT_COLUMN}, ...) on the table instead",
                    )
            else:
                part.advance()
            prefix = ""
        state = self.tables.get(table)
        if column == TENANT_COLUMN and state is not None:
            state.has_tenant_column = True
            state.tenant_column_not_null = state.tenant_column_not_null or not_null
