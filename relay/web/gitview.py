"""What a repository page shows of the git data, read from a hydrated repository with
stock git, each read bounded: the newest MAX_REFS branches and tags, the last
MAX_COMMITS commits of HEAD, and the README of HEAD's top directory up to
MAX_README_BYTES."""

from __future__ import annotations

from dataclasses import dataclass

from markupsafe import Markup

from relay.git.workspace import Workspace, run_git
from relay.web.markdown import MARKDOWN_SUFFIXES, MAX_README_BYTES, render_readme

MAX_COMMITS = 20
# Branches, and tags, listed on a page (newest first); the page says how many more.
MAX_REFS = 50
# git for-each-ref fields, NUL-separated: a tag's `*` fields are its commit's.
_REF_FORMAT = (
    "%(refname)%00%(objectname)%00%(*objectname)%00%(creatordate:unix)%00%(subject)%00%(*subject)"
)
_LOG_FORMAT = "%H%x00%an%x00%at%x00%s"


@dataclass(frozen=True, slots=True)
class Commit:
    oid: str
    author: str
    when: int  # unix seconds
    subject: str


@dataclass(frozen=True, slots=True)
class Ref:
    name: str  # without refs/heads/ or refs/tags/
    commit: Commit  # a tag's: the commit it points at (author left empty)


@dataclass(frozen=True, slots=True)
class Readme:
    name: str
    size: int
    html: Markup | None  # None when larger than MAX_README_BYTES


@dataclass(frozen=True, slots=True)
class GitView:
    default_branch: str  # HEAD's branch, without refs/heads/
    empty: bool  # HEAD names no commit
    branches: list[Ref]
    tags: list[Ref]
    more_branches: int  # not listed
    more_tags: int
    commits: list[Commit]
    readme: Readme | None


async def read_view(ws: Workspace, timeout: float) -> GitView:
    manifest = ws.manifest
    heads = sum(1 for name in manifest.refs if name.startswith("refs/heads/"))
    tags = sum(1 for name in manifest.refs if name.startswith("refs/tags/"))
    empty = manifest.head not in manifest.refs
    branch_list = await _refs(ws, "refs/heads/", timeout)
    tag_list = await _refs(ws, "refs/tags/", timeout)
    commits = [] if empty else await _log(ws, timeout)
    readme = None if empty else await _readme(ws, timeout)
    return GitView(
        default_branch=manifest.head.removeprefix("refs/heads/"),
        empty=empty,
        branches=branch_list,
        tags=tag_list,
        more_branches=max(0, heads - len(branch_list)),
        more_tags=max(0, tags - len(tag_list)),
        commits=commits,
        readme=readme,
    )


async def _git(ws: Workspace, args: list[str], timeout: float) -> str:
    result = await run_git(["--git-dir", str(ws.path), *args], home=ws.path, timeout=timeout)
    return result.stdout.decode("utf-8", "replace")


async def _refs(ws: Workspace, prefix: str, timeout: float) -> list[Ref]:
    out = await _git(
        ws,
        ["for-each-ref", "--sort=-creatordate", f"--count={MAX_REFS}", f"--format={_REF_FORMAT}",
         prefix],
        timeout,
    )  # fmt: skip
    refs = []
    for line in out.splitlines():
        fields = line.split("\0")
        if len(fields) != 6:
            continue
        name, oid, peeled, when, subject, peeled_subject = fields
        commit = Commit(peeled or oid, "", int(when or 0), peeled_subject or subject)
        refs.append(Ref(name.removeprefix(prefix), commit))
    return refs


async def _log(ws: Workspace, timeout: float) -> list[Commit]:
    out = await _git(
        ws, ["log", f"--max-count={MAX_COMMITS}", f"--format={_LOG_FORMAT}", "HEAD", "--"], timeout
    )
    commits = []
    for line in out.splitlines():
        fields = line.split("\0")
        if len(fields) == 4:
            commits.append(Commit(fields[0], fields[1], int(fields[2] or 0), fields[3]))
    return commits


def pick_readme(entries: list[tuple[str, str, int]]) -> tuple[str, str, int] | None:
    """The README among (name, blob id, size) entries of the top directory: a Markdown one
    first, then any other named README (any case), by name."""
    named = sorted(e for e in entries if e[0].lower().split(".", 1)[0] == "readme")
    markdown = [e for e in named if e[0].lower().endswith(MARKDOWN_SUFFIXES)]
    chosen = markdown or named
    return chosen[0] if chosen else None


async def _readme(ws: Workspace, timeout: float) -> Readme | None:
    listing = await _git(ws, ["ls-tree", "-z", "--long", "HEAD"], timeout)
    entries = []
    for record in listing.split("\0"):
        info, _, name = record.partition("\t")
        parts = info.split()
        if len(parts) == 4 and parts[1] == "blob" and parts[3].isdigit():
            entries.append((name, parts[2], int(parts[3])))
    chosen = pick_readme(entries)
    if chosen is None:
        return None
    name, blob, size = chosen
    if size > MAX_README_BYTES:
        return Readme(name, size, None)
    result = await run_git(
        ["--git-dir", str(ws.path), "cat-file", "blob", blob], home=ws.path, timeout=timeout
    )
    return Readme(name, size, render_readme(name, result.stdout))
