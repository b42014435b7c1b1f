"""Hostile input to the git routes: raw HTTP over loopback, and stock git where useful.

Bad paths are refused with 4xx and never 5xx; bad refnames never reach a manifest; limits
hold; a truncated or stalled upload does not hurt the relay; a store that lost a pack makes
reads fail loudly, never look like an empty repo. Every wait and loop is bounded.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import time
from pathlib import Path

import trio
from coincurve import PrivateKey

from relay.events import kinds
from relay.events.model import Event, sign_event
from relay.git import model, pktline, policy
from relay.git.maintainers import direct_maintainers
from relay.git.nip98 import make_token
from relay.keys import pubkey_hex
from relay.protocol.bech32 import hex_to_npub
from tests.git.gitclient import Git, announce
from tests.git.hosting import (
    HOST,
    Hosted,
    fresh_dir,
    hosted_relay,
    raw_request,
    rev,
    settled_states,
    stderr_of,
    stored_states,
)
from tests.helpers import new_key

ZERO = "0" * 40
UPLOAD_INFO = "/info/refs?service=git-upload-pack"
RECEIVE_INFO = "/info/refs?service=git-receive-pack"


async def pushed_repo(
    h: Hosted, git: Git, tmp_path: Path, repo: str = "demo"
) -> tuple[PrivateKey, str, str, Path, str]:
    """Announce `repo`, push one commit; (key, owner, url, work tree, commit)."""
    key = new_key()
    owner = (await announce(h.port, key, repo)).pubkey
    url = h.url(owner, repo)
    work = fresh_dir(tmp_path, "work")
    await git.run("init", "-q", str(work))
    commit = await git.commit(work, "README", "hello\n", "first")
    await git.run("remote", "add", "origin", url, cwd=work)
    await git.run("push", "-q", "origin", "main", cwd=work, key=key, url=url)
    return key, owner, url, work, commit


async def wait_until_ok(h: Hosted, path: str, seconds: float = 10.0) -> None:
    """Bounded: the relay answers 200 on `path` again."""
    with trio.fail_after(seconds):
        while True:
            response = await raw_request(h.port, "GET", path)
            if response.status == 200:
                return
            await trio.sleep(0.1)


def scratch_entries(scratch: Path) -> list[str]:
    return sorted(os.listdir(scratch)) if scratch.exists() else []


async def wait_scratch_empty(scratch: Path, seconds: float = 10.0) -> None:
    with trio.move_on_after(seconds):
        while scratch_entries(scratch):
            await trio.sleep(0.1)
    assert scratch_entries(scratch) == [], "a request left its scratch directory behind"


# -- paths -----------------------------------------------------------------------------------


async def test_hostile_paths_are_refused_never_5xx(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    async with hosted_relay("filesystem", nursery, db_url, tmp_path / "data") as h:
        git = Git(tmp_path / "home")
        _, owner, _, _, _ = await pushed_repo(h, git, tmp_path)
        await announce(h.port, new_key(), "else")
        other_owner = pubkey_hex(new_key())
        g = f"/git/{owner}"
        cases: list[tuple[str, str, set[int], str | None]] = [
            # (method, target, accepted statuses, Host header)
            ("GET", f"{g}/../info/refs?service=git-upload-pack", {400}, None),
            ("GET", f"{g}/%2e%2e{UPLOAD_INFO}", {400}, None),
            ("GET", f"{g}/%2E%2E{UPLOAD_INFO}", {400}, None),
            ("GET", f"{g}/%2e%2e.git{UPLOAD_INFO}", {400}, None),
            ("GET", f"{g}/demo%2f..%2f..%2fetc{UPLOAD_INFO}", {400}, None),
            ("GET", f"{g}/..%2fdemo{UPLOAD_INFO}", {400}, None),
            ("GET", f"{g}/a..b{UPLOAD_INFO}", {400}, None),
            ("GET", f"{g}/demo%00{UPLOAD_INFO}", {400}, None),
            ("GET", f"{g}/demo.git%00.git{UPLOAD_INFO}", {400}, None),
            ("GET", f"{g}/demo.git{UPLOAD_INFO}%00", {400}, None),
            ("GET", f"{g}/{'a' * 65}{UPLOAD_INFO}", {400}, None),
            ("GET", f"{g}/{'a' * 65}.git{UPLOAD_INFO}", {400}, None),
            ("GET", f"{g}/{'a' * 8000}{UPLOAD_INFO}", {400, 414, 431}, None),
            ("GET", f"{g}/{'a' * 64}{UPLOAD_INFO}", {404}, None),  # valid, unannounced
            ("GET", f"{g}/.hidden{UPLOAD_INFO}", {400}, None),
            ("GET", f"{g}/.git{UPLOAD_INFO}", {400}, None),
            ("GET", f"{g}/{UPLOAD_INFO}", {400}, None),
            ("GET", f"{g}/d%C3%A9mo{UPLOAD_INFO}", {400}, None),
            ("GET", f"{g}/demo%5c..{UPLOAD_INFO}", {400}, None),
            ("GET", f"{g}/demo%zz{UPLOAD_INFO}", {400}, None),
            ("GET", f"{g}/%252e%252e{UPLOAD_INFO}", {400}, None),
            ("GET", f"{g}/demo%20{UPLOAD_INFO}", {400}, None),
            # owners
            ("GET", f"/git/{owner.upper()}/demo.git{UPLOAD_INFO}", {400}, None),
            ("GET", f"/git/{owner[:63]}/demo.git{UPLOAD_INFO}", {400}, None),
            ("GET", f"/git/{owner}0/demo.git{UPLOAD_INFO}", {400}, None),
            ("GET", f"/git/{'g' * 64}/demo.git{UPLOAD_INFO}", {400}, None),
            ("GET", f"/git/%2e%2e/demo.git{UPLOAD_INFO}", {400}, None),
            ("GET", f"/git//demo.git{UPLOAD_INFO}", {400}, None),
            ("GET", f"/git/{hex_to_npub(owner)}/demo.git{UPLOAD_INFO}", {400}, None),
            ("GET", f"/npub1qqqqqqqq/demo.git{UPLOAD_INFO}", {400}, None),
            ("GET", f"/{hex_to_npub(owner)}/..%2f.git{UPLOAD_INFO}", {400}, None),
            ("GET", f"/{hex_to_npub(owner)}/%2e%2e.git{UPLOAD_INFO}", {400}, None),
            # actions and services
            ("GET", f"{g}/demo.git/info/refs?service=git-upload-archive", {400}, None),
            ("GET", f"{g}/demo.git/info/refs?service=", {400}, None),
            ("GET", f"{g}/demo.git/info/refs", {400}, None),  # dumb HTTP
            ("GET", f"{g}/demo.git/info/refs?service=git-upload-pack%00", {400}, None),
            ("GET", f"{g}/demo.git/info/refs/extra{UPLOAD_INFO[10:]}", {404}, None),
            ("GET", f"{g}/demo.git/objects/info/packs", {404}, None),
            ("GET", f"{g}/demo.git/HEAD", {404}, None),
            ("GET", f"{g}/demo.git/config", {404}, None),
            ("GET", f"{g}/demo.git/git-upload-archive", {404}, None),
            ("GET", f"{g}/demo.git/info/%2e%2e/refs{UPLOAD_INFO[10:]}", {404}, None),
            ("GET", "/git/", {404}, None),
            ("GET", g, {404}, None),
            ("POST", f"{g}/demo.git{UPLOAD_INFO}", {405}, None),
            ("PUT", f"{g}/demo.git{UPLOAD_INFO}", {405}, None),
            ("GET", f"{g}/demo.git/git-upload-pack", {405}, None),
            ("GET", f"{g}/demo.git/git-receive-pack", {401, 405}, None),
            ("DELETE", f"{g}/demo.git/git-upload-pack", {405}, None),
            # hosts, owners and repos that do not match
            ("GET", f"{g}/demo.git{UPLOAD_INFO}", {404}, "unknown.test"),
            ("GET", f"{g}/demo.git{UPLOAD_INFO}", {404}, "bad host name"),
            ("GET", f"{g}/demo.git{UPLOAD_INFO}", {404}, "alpha.test"),  # another community
            ("GET", f"{g}/nothere.git{UPLOAD_INFO}", {404}, None),
            ("GET", f"{g}/else.git{UPLOAD_INFO}", {404}, None),  # someone else's repo
            ("GET", f"/git/{other_owner}/demo.git{UPLOAD_INFO}", {404}, None),
        ]
        wrong: list[str] = []
        for method, target, allowed, host in cases:
            response = await raw_request(h.port, method, target, host=host)
            if response.status not in allowed or response.status >= 500:
                wrong.append(f"{method} {target[:120]} (Host {host}): {response.status}")
        assert not wrong, "\n".join(wrong)
        # Positive control: the same relay serves the real repo.
        assert (await raw_request(h.port, "GET", f"{g}/demo.git{UPLOAD_INFO}")).status == 200
        assert (await raw_request(h.port, "GET", f"{g}/demo{UPLOAD_INFO}")).status == 200


async def test_bad_bodies_are_refused(nursery: trio.Nursery, db_url: str, tmp_path: Path) -> None:
    async with hosted_relay("filesystem", nursery, db_url, tmp_path / "data") as h:
        git = Git(tmp_path / "home")
        _, owner, _, _, _ = await pushed_repo(h, git, tmp_path)
        path = h.path(owner, "demo")
        response = await raw_request(
            h.port, "POST", f"{path}/git-upload-pack",
            headers=[("Content-Encoding", "gzip")], body=b"this is not gzip",
        )  # fmt: skip
        assert response.status == 400, response
        # A body of garbage gets an answer from git (not a hang, not a 5xx).
        response = await raw_request(h.port, "POST", f"{path}/git-upload-pack", body=b"zzzz" * 10)
        assert response.status < 500, response
        await wait_until_ok(h, f"{path}{UPLOAD_INFO}")


async def test_garbage_receive_pack_body_gets_an_answer(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    async with hosted_relay("filesystem", nursery, db_url, tmp_path / "data") as h:
        git = Git(tmp_path / "home")
        key, owner, url, _, _ = await pushed_repo(h, git, tmp_path)
        before = await h.pointer(owner, "demo")
        try:
            response = await raw_request(
                h.port, "POST", f"{h.path(owner, 'demo')}/git-receive-pack",
                headers=[("Authorization", make_token(key, url))], body=b"zzzz" * 10,
            )  # fmt: skip
        finally:
            assert await h.pointer(owner, "demo") == before
            await wait_until_ok(h, f"{h.path(owner, 'demo')}{UPLOAD_INFO}")
        assert 400 <= response.status < 500, response


async def test_a_negative_pkt_line_length_is_refused_and_the_relay_serves_on(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """`0008abcd-008` after the commands: int() reads "-008" as -8, and the parser walked
    backwards for ever on the event loop (100 % CPU, /healthz silent)."""
    async with hosted_relay("filesystem", nursery, db_url, tmp_path / "data") as h:
        git = Git(tmp_path / "home")
        key, owner, url, _, commit = await pushed_repo(h, git, tmp_path)
        before = await h.pointer(owner, "demo")
        first = pktline.encode(f"{commit} {ZERO} refs/heads/main\0report-status\n".encode())
        with trio.fail_after(30):
            response = await raw_request(
                h.port, "POST", f"{h.path(owner, 'demo')}/git-receive-pack",
                headers=[("Authorization", make_token(key, url))],
                body=first + b"0008abcd-008",
            )  # fmt: skip
            assert response.status == 400, response
            health = await raw_request(h.port, "GET", "/healthz")
            assert health.status == 200
        assert await h.pointer(owner, "demo") == before


async def test_a_gzip_bomb_is_refused_on_both_services(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """40 KB of gzip that inflates to 40 MiB, over both limits: the body is decompressed as
    a stream and refused (413) once the decompressed bytes pass the limit, not inflated
    whole into memory and scratch first."""
    bomb = gzip.compress(b"\0" * (40 << 20), compresslevel=9)
    assert len(bomb) < 100_000
    scratch = tmp_path / "scratch"
    async with hosted_relay(
        "filesystem", nursery, db_url, tmp_path / "data",
        git_max_pack_bytes=1 << 20, git_scratch_dir=str(scratch),
    ) as h:  # fmt: skip
        git = Git(tmp_path / "home")
        key, owner, url, _, _ = await pushed_repo(h, git, tmp_path)
        before = await h.pointer(owner, "demo")
        for service in ("git-upload-pack", "git-receive-pack"):
            response = await raw_request(
                h.port, "POST", f"{h.path(owner, 'demo')}/{service}",
                headers=[("Authorization", make_token(key, url)),
                         ("Content-Encoding", "gzip"),
                         ("Content-Type", f"application/x-{service}-request")],
                body=bomb,
            )  # fmt: skip
            assert response.status == 413, (service, response)
            assert b"decompressed body is larger than" in response.body
        assert await h.pointer(owner, "demo") == before
        await wait_scratch_empty(scratch)
        await wait_until_ok(h, f"{h.path(owner, 'demo')}{UPLOAD_INFO}")


# -- refnames --------------------------------------------------------------------------------


def _announcement(owner_key: PrivateKey, tags: list[list[str]] | None = None) -> Event:
    return sign_event(
        owner_key,
        kind=kinds.REPO_ANNOUNCEMENT,
        tags=[["d", "demo"], *(tags or [])],
        created_at=int(time.time()),
    )


UNSAFE_REFNAMES = [
    "HEAD",
    "weird",
    "main",
    "refs",
    "refs/",
    "refs/../x",
    "refs/heads/../../x",
    "refs/heads/a..b",
    "refs/heads/x.lock",
    "refs/heads/x.lock/y",
    "refs/heads/.hidden",
    "refs/heads/x/",
    "refs/heads/x.",
    "refs//heads/x",
    "refs/heads/a b",
    "refs/heads/a\\b",
    "refs/heads/a~1",
    "refs/heads/a^",
    "refs/heads/a:b",
    "refs/heads/a?",
    "refs/heads/a*",
    "refs/heads/a[b",
    "refs/heads/a@{1}",
    "refs/heads/a\x00b",
    "refs/heads/a\nb",
    "/refs/heads/x",
    "refs/heads/" + "x" * 5000,
]
# git's own rules (check-ref-format), not a narrower allowlist: shell metacharacters and
# non-ASCII letters are names like any other (no shell ever sees a refname).
SAFE_REFNAMES = [
    "refs/heads/ok", "refs/heads/feature/x", "refs/tags/v1.0", "refs/notes/a-b_c",
    "refs/heads/caf\u00e9", "refs/heads/$(touch${IFS}pwned)", "refs/heads/a`id`", "refs/heads/a;b",
    "refs/heads/a'b|c%d#e", "refs/heads/@",
]  # fmt: skip


def nip98(pusher: str, announcement: Event) -> policy.PushRules:
    """The rules of a NIP-98 push by `pusher` to the repository of `announcement`."""
    return policy.PushRules(pusher, announcement, direct_maintainers(announcement))


def test_policy_refuses_unsafe_refnames() -> None:
    owner = new_key()
    pusher = pubkey_hex(owner)
    announcement = _announcement(owner)
    for ref in UNSAFE_REFNAMES:
        for old, new in ((ZERO, "a" * 40), ("a" * 40, "b" * 40), ("a" * 40, ZERO)):
            update = policy.RefUpdate(old, new, ref, None if ZERO in (old, new) else True)
            denials = policy.evaluate(nip98(pusher, announcement), [update])
            assert denials == [policy.Denial(ref, "unsafe refname")], ref
        # One unsafe ref among safe ones denies the push.
        mixed = [policy.RefUpdate(ZERO, "a" * 40, "refs/heads/ok"),
                 policy.RefUpdate(ZERO, "a" * 40, ref)]  # fmt: skip
        assert policy.evaluate(nip98(pusher, announcement), mixed)
    for ref in SAFE_REFNAMES:
        update = policy.RefUpdate(ZERO, "a" * 40, ref)
        assert policy.evaluate(nip98(pusher, announcement), [update]) == [], ref
    # A stranger is refused whatever the refs, even none.
    stranger = pubkey_hex(new_key())
    assert policy.evaluate(nip98(stranger, announcement), [])
    denials = policy.evaluate(
        nip98(stranger, announcement), [policy.RefUpdate(ZERO, "a" * 40, "refs/heads/ok")]
    )
    assert [d.reason for d in denials] == ["not a maintainer of this repository"]


def test_policy_protect_patterns() -> None:
    owner = new_key()
    pusher = pubkey_hex(owner)
    maintainer = pubkey_hex(new_key())
    announcement = _announcement(
        owner,
        [
            ["protect", "refs/heads/*", "no-delete"],
            ["protect", "refs/tags/**", "no-force-push", "no-delete"],
            ["protect", "refs/heads/main", "no-force-push", "unknown-rule"],
            ["protect", "refs/heads/x"],  # no rule: protects nothing
            ["maintainers", "NOT-HEX", maintainer, "ab" * 31],
        ],
    )

    def denied(ref: str, old: str, new: str, ancestor: bool | None) -> bool:
        update = policy.RefUpdate(old, new, ref, ancestor)
        return bool(policy.evaluate(nip98(pusher, announcement), [update]))

    a, b = "a" * 40, "b" * 40
    assert denied("refs/heads/main", a, b, False)  # force
    assert not denied("refs/heads/main", a, b, True)  # fast-forward
    assert not denied("refs/heads/main", ZERO, b, None)  # create
    assert denied("refs/heads/main", a, ZERO, None)  # delete
    assert denied("refs/heads/feature", a, ZERO, None)
    assert not denied("refs/heads/feature", a, b, False)
    assert not denied("refs/heads/a/b", a, ZERO, None)  # * is one segment
    assert denied("refs/tags/v1", a, ZERO, None)
    assert denied("refs/tags/r/v1", a, b, False)  # ** is one or more
    assert not denied("refs/heads/x", a, b, False)
    assert denied("refs/heads/x", a, ZERO, None)  # covered by refs/heads/*
    # The ancestor flag missing on an update is treated as a force push.
    assert denied("refs/heads/main", a, b, None)
    assert direct_maintainers(announcement) == frozenset({pusher, maintainer})


def _empty_pack() -> bytes:
    header = b"PACK" + (2).to_bytes(4, "big") + (0).to_bytes(4, "big")
    return header + hashlib.sha1(header).digest()


async def raw_push(
    h: Hosted, key: PrivateKey, owner: str, repo: str, commands: list[tuple[str, str, str]]
) -> tuple[int, pktline.Report]:
    """A receive-pack request crafted by hand: the commands, then an empty pack."""
    lines = b""
    for i, (old, new, ref) in enumerate(commands):
        payload = f"{old} {new} {ref}".encode()
        if i == 0:
            payload += b"\0report-status"
        lines += pktline.encode(payload + b"\n")
    body = lines + pktline.FLUSH
    if any(new != ZERO for _, new, _ in commands):
        body += _empty_pack()
    url = h.url(owner, repo)
    response = await raw_request(
        h.port, "POST", f"{h.path(owner, repo)}/git-receive-pack",
        headers=[("Authorization", make_token(key, url)),
                 ("Content-Type", "application/x-git-receive-pack-request")],
        body=body,
    )  # fmt: skip
    report = pktline.parse_report(response.body, False) if response.status == 200 else None
    return response.status, report or pktline.Report(False, (), ())


async def test_a_body_over_the_limit_is_refused_on_every_ref_git_names(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """A push body past RELAY_GIT_MAX_PACK_BYTES + 16 MiB is refused while it arrives; the
    rest is read and dropped, and the answer is the report-status git prints (per ref, with
    the setting), not an HTTP 413 git would hide. Garbage without commands still gets 413."""
    async with hosted_relay(
        "filesystem", nursery, db_url, tmp_path / "data", git_max_pack_bytes=1024
    ) as h:
        git = Git(tmp_path / "home")
        key, owner, url, _, commit = await pushed_repo(h, git, tmp_path)
        before = await h.pointer(owner, "demo")
        command = f"{commit} {'1' * 40} refs/heads/main\0report-status\n"
        body = pktline.encode(command.encode()) + pktline.FLUSH + os.urandom(17 << 20)
        headers = [("Authorization", make_token(key, url))]
        target = f"{h.path(owner, 'demo')}/git-receive-pack"
        answer = await raw_request(h.port, "POST", target, headers=headers, body=body)
        assert answer.status == 200, answer
        report = pktline.parse_report(answer.body, False)
        assert report.rejected == (
            "refs/heads/main pack is larger than RELAY_GIT_MAX_PACK_BYTES (1024 bytes)",
        )
        garbage = await raw_request(
            h.port, "POST", target, headers=headers, body=os.urandom(17 << 20)
        )
        assert garbage.status == 413, garbage
        assert await h.pointer(owner, "demo") == before


async def test_refnames_outside_refs_never_reach_the_manifest(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    async with hosted_relay("filesystem", nursery, db_url, tmp_path / "data") as h:
        git = Git(tmp_path / "home")
        key, owner, url, work, commit = await pushed_repo(h, git, tmp_path)

        # git itself: an ordinary name under refs/heads works.
        await git.run("push", "-q", "origin", "HEAD:refs/heads/ok", cwd=work, key=key, url=url)
        manifest = await h.manifest(owner, "demo")
        assert manifest.refs == {"refs/heads/main": commit, "refs/heads/ok": commit}
        before = await h.pointer(owner, "demo")
        [state_before] = await settled_states(h, owner, "demo")

        # Crafted requests for names git's client would not send.
        for ref in ("weird", "HEAD", "refs/../x", "refs/heads/../../x", "refs/heads/x.lock",
                    "refs//x", "refs/heads/x/", "refs/heads/a b", "refs/heads/a~1"):  # fmt: skip
            status, report = await raw_push(h, key, owner, "demo", [(ZERO, commit, ref)])
            assert status == 200, (ref, status)
            assert report.rejected and not report.accepted, (ref, report)
            assert await h.pointer(owner, "demo") == before, ref
        # A good ref next to a bad one: the whole push is refused.
        status, report = await raw_push(
            h, key, owner, "demo",
            [(ZERO, commit, "refs/heads/fine"), (ZERO, commit, "refs/heads/a..b")],
        )  # fmt: skip
        assert status == 200 and report.rejected, report
        assert await h.pointer(owner, "demo") == before
        [state_after] = await stored_states(h, "demo")
        assert state_after["id"] == state_before["id"]

        # Positive control: the crafted request does work for a good name.
        status, report = await raw_push(h, key, owner, "demo", [(ZERO, commit, "refs/heads/raw")])
        assert status == 200 and report.unpack_ok and not report.rejected, report
        manifest = await h.manifest(owner, "demo")
        assert set(manifest.refs) == {"refs/heads/main", "refs/heads/ok", "refs/heads/raw"}
        assert all(model.is_safe_refname(r) for r in manifest.refs)

        # Names git accepts are the relay's too, and come back from a clone as pushed.
        odd = ["refs/heads/caf\u00e9", "refs/heads/$(reboot)", "refs/heads/a;b",
               "refs/heads/a`id`", "refs/heads/a'b|c%d"]  # fmt: skip
        for ref in odd:
            await git.run("push", "-q", "origin", f"HEAD:{ref}", cwd=work, key=key, url=url)
        listed = await git.run("ls-remote", url, cwd=work)
        remote = {line.split("\t", 1)[1] for line in listed.stdout.decode().splitlines()}
        assert set(odd) <= remote, remote


# -- limits ----------------------------------------------------------------------------------


async def test_pack_over_the_limit_is_refused(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    async with hosted_relay(
        "filesystem", nursery, db_url, tmp_path / "data", git_max_pack_bytes=20000
    ) as h:
        git = Git(tmp_path / "home")
        key, owner, url, work, commit = await pushed_repo(h, git, tmp_path)
        before = await h.pointer(owner, "demo")
        [state_before] = await settled_states(h, owner, "demo")
        (work / "blob.bin").write_bytes(os.urandom(100 * 1024))
        await git.run("add", "blob.bin", cwd=work)
        await git.run("commit", "-q", "-m", "big", cwd=work)
        refused = await git.run("push", "origin", "main", cwd=work, key=key, url=url, check=False)
        assert refused.returncode != 0
        err = stderr_of(refused)
        # git prints why, on the ref: "! [remote rejected] main -> main (pack is ...)".
        assert "pack is larger than RELAY_GIT_MAX_PACK_BYTES" in err, err
        assert "[remote rejected]" in err, err
        assert await h.pointer(owner, "demo") == before
        [state_after] = await stored_states(h, "demo")
        assert state_after["id"] == state_before["id"]
        # Small pushes still work afterwards.
        await git.run("reset", "-q", "--hard", commit, cwd=work)
        small = await git.commit(work, "README", "small\n", "small")
        await git.run("push", "-q", "origin", "main", cwd=work, key=key, url=url)
        assert (await h.manifest(owner, "demo")).refs == {"refs/heads/main": small}


async def _send_partial(port: int, head_lines: list[str], partial: bytes) -> trio.SocketStream:
    stream = await trio.open_tcp_stream(HOST, port)
    await stream.send_all(("\r\n".join(head_lines) + "\r\n\r\n").encode() + partial)
    return stream


async def test_truncated_uploads_leave_the_relay_working(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    scratch = tmp_path / "scratch"
    async with hosted_relay(
        "filesystem", nursery, db_url, tmp_path / "data", git_scratch_dir=str(scratch)
    ) as h:
        git = Git(tmp_path / "home")
        key, owner, url, _, commit = await pushed_repo(h, git, tmp_path)
        before = await h.pointer(owner, "demo")
        path = h.path(owner, "demo")
        start = pktline.encode(f"{ZERO} {commit} refs/heads/half\0report-status\n".encode())
        variants = [
            ("git-receive-pack", [f"Content-Length: {100_000}"], start + pktline.FLUSH + b"PACK"),
            ("git-receive-pack", ["Transfer-Encoding: chunked"], b"1000\r\n" + start),
            ("git-upload-pack", [f"Content-Length: {100_000}"], b"0032want "),
            ("git-upload-pack", ["Transfer-Encoding: chunked"], b"ff\r\n0032want "),
        ]
        for service, framing, partial in variants:
            head = [
                f"POST {path}/{service} HTTP/1.1",
                f"Host: {HOST}:{h.port}",
                f"Authorization: {make_token(key, url)}",
                f"Content-Type: application/x-{service}-request",
                *framing,
            ]
            stream = await _send_partial(h.port, head, partial)
            await trio.sleep(0.2)
            await stream.aclose()
            await wait_until_ok(h, f"{path}{UPLOAD_INFO}")
            assert await h.pointer(owner, "demo") == before
        await wait_scratch_empty(scratch)
        # git still works end to end.
        cloned = fresh_dir(tmp_path, "clone")
        await git.run("clone", "-q", url, str(cloned))
        assert await rev(git, cloned) == commit
        assert (await h.manifest(owner, "demo")).refs == {"refs/heads/main": commit}


class SlotHold:
    """A git slot taken straight from the relay's limiter, as a long operation would: no
    real request can hold one for a chosen time on demand (bodies are read before a slot is
    taken, and operations end by themselves)."""

    def __init__(self, h: Hosted) -> None:
        assert h.relay.app is not None and h.relay.app.git is not None
        self.limiter = h.relay.app.git.processes
        self.limiter.acquire_on_behalf_of_nowait(self)

    async def aclose(self) -> None:
        self.limiter.release_on_behalf_of(self)


async def hold_slot(h: Hosted, path: str) -> SlotHold:
    return SlotHold(h)


async def test_git_slots_are_limited_and_released(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    async with hosted_relay(
        "filesystem", nursery, db_url, tmp_path / "data", git_max_processes=2
    ) as h:
        owner = (await announce(h.port, new_key(), "demo")).pubkey
        path = h.path(owner, "demo")
        info = f"{path}{UPLOAD_INFO}"
        first = await hold_slot(h, path)
        try:
            second = await hold_slot(h, path)
            try:
                for _ in range(3):
                    busy = await raw_request(h.port, "GET", info)
                    assert busy.status == 503, busy
                    assert busy.headers.get("retry-after", "").isdigit(), busy.headers
                # Answers that need no slot are still given as usual.
                assert (
                    await raw_request(h.port, "GET", f"/git/{owner}/..{UPLOAD_INFO}")
                ).status == 400
                assert (await raw_request(h.port, "GET", f"{path}/HEAD")).status == 404
                assert (await raw_request(h.port, "GET", "/healthz")).status == 200
            finally:
                await second.aclose()
            # One slot free again: one request at a time gets through.
            await wait_until_ok(h, info)
        finally:
            await first.aclose()
        await wait_until_ok(h, info)


async def _get_by_length(port: int, target: str) -> int:
    """A GET that, like git's HTTP client, takes the response as complete once
    Content-Length bytes are in, without waiting for the relay to close the connection."""
    stream = await trio.open_tcp_stream(HOST, port)
    async with stream:
        await stream.send_all(f"GET {target} HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
        data = b""
        with trio.fail_after(10):
            while True:
                chunk = await stream.receive_some(65536)
                assert chunk, data
                data += chunk
                head, sep, body = data.partition(b"\r\n\r\n")
                if not sep:
                    continue
                lengths = [
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ]
                if lengths and len(body) >= lengths[0]:
                    return int(data.split()[1])


async def push_retrying_503(
    git: Git, work: Path, key: PrivateKey, url: str, attempts: int = 20
) -> None:
    for _ in range(attempts):
        result = await git.run("push", "-q", "origin", "main", cwd=work, key=key, url=url,
                               check=False)  # fmt: skip
        if result.returncode == 0:
            return
        assert "503" in stderr_of(result), stderr_of(result)
        await trio.sleep(0.1)
    raise AssertionError(f"push refused with 503 {attempts} times")


async def test_a_sequential_client_never_sees_503(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    async with hosted_relay(
        "filesystem", nursery, db_url, tmp_path / "data", git_max_processes=1
    ) as h:
        git = Git(tmp_path / "home")
        key = new_key()
        owner = (await announce(h.port, key, "demo")).pubkey
        url = h.url(owner, "demo")
        work = fresh_dir(tmp_path, "work")
        await git.run("init", "-q", str(work))
        await git.commit(work, "README", "hello\n", "first")
        await git.run("remote", "add", "origin", url, cwd=work)
        await push_retrying_503(git, work, key, url)
        statuses = [await _get_by_length(h.port, f"{h.path(owner, 'demo')}{UPLOAD_INFO}")
                    for _ in range(100)]  # fmt: skip
        assert statuses.count(503) == 0, f"{statuses.count(503)} of 100 sequential GETs got 503"


async def test_a_stalled_upload_does_not_hold_a_slot(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    """The body is read before a slot is taken, within the git timeout: a client that sends
    part of a body and stalls blocks nobody, and gets 408 when the time is up."""
    async with hosted_relay(
        "filesystem", nursery, db_url, tmp_path / "data",
        git_max_processes=1, git_timeout_seconds=2,
    ) as h:  # fmt: skip
        owner = (await announce(h.port, new_key(), "demo")).pubkey
        path = h.path(owner, "demo")
        head = [
            f"POST {path}/git-upload-pack HTTP/1.1",
            f"Host: {HOST}:{h.port}",
            "Content-Length: 1000",
        ]
        stalled = await _send_partial(h.port, head, b"0032want ")
        async with stalled:
            assert (await raw_request(h.port, "GET", f"{path}{UPLOAD_INFO}")).status == 200
            with trio.fail_after(10):
                answer = await stalled.receive_some(1024)
            assert answer.startswith(b"HTTP/1.1 408"), answer


# -- a store that lost objects ---------------------------------------------------------------


async def test_missing_or_corrupt_objects_fail_loudly(
    nursery: trio.Nursery, db_url: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    async with hosted_relay("filesystem", nursery, db_url, data) as h:
        git = Git(tmp_path / "home")
        key, owner, url, work, commit = await pushed_repo(h, git, tmp_path)
        manifest = await h.manifest(owner, "demo")
        [pack_key] = manifest.packs
        digest = model.digest_of_key(pack_key)
        objects = data / "objects"
        pack_file = objects / "packs" / digest
        idx_file = objects / "idx" / digest
        assert pack_file.exists() and idx_file.exists()
        before = await h.pointer(owner, "demo")
        info = f"{h.path(owner, 'demo')}{UPLOAD_INFO}"

        async def clone_fails(label: str) -> None:
            response = await raw_request(h.port, "GET", info)
            assert 500 <= response.status < 600, (label, response)
            dest = fresh_dir(tmp_path, "broken")
            result = await git.run("clone", url, str(dest), check=False)
            assert result.returncode != 0, f"{label}: the clone looked like it worked"
            assert "50" in stderr_of(result), stderr_of(result)
            assert not (dest / ".git").exists(), f"{label}: git left an (empty) clone behind"
            # A push fails as well, and changes nothing.
            await git.commit(work, "README", f"{label}\n", label)
            pushed = await git.run(
                "push", "origin", "main", cwd=work, key=key, url=url, check=False
            )
            assert pushed.returncode != 0, label
            await git.run("reset", "-q", "--hard", commit, cwd=work)
            assert await h.pointer(owner, "demo") == before

        # A lost idx is rebuilt: the repo still clones.
        idx_file.unlink()
        cloned = fresh_dir(tmp_path, "noidx")
        await git.run("clone", "-q", url, str(cloned))
        assert await rev(git, cloned) == commit

        # A pack whose bytes do not match its digest.
        good = pack_file.read_bytes()
        pack_file.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
        await clone_fails("corrupt pack")
        # A missing pack.
        pack_file.unlink()
        await clone_fails("missing pack")
        pack_file.write_bytes(good)
        await wait_until_ok(h, info)
        # A missing manifest.
        assert before is not None
        manifest_file = objects / "manifests" / before[1]
        saved = manifest_file.read_bytes()
        manifest_file.unlink()
        await clone_fails("missing manifest")
        manifest_file.write_bytes(saved)
        # Restored, everything works again.
        cloned = fresh_dir(tmp_path, "restored")
        await git.run("clone", "-q", url, str(cloned))
        assert await rev(git, cloned) == commit
