"""The pure git state model: canonical manifest bytes, every validation rule, repo ids,
owners, object keys and the pointer body (relay/git/model.py)."""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
import pytest

from relay.git import model
from relay.git.model import (
    DEFAULT_HEAD,
    EMPTY_MANIFEST,
    MAX_MANIFEST_PACKS,
    MAX_MANIFEST_REFS,
    MAX_REFNAME_BYTES,
    InvalidManifest,
    InvalidName,
    Manifest,
)

H1 = "1" * 64
H2 = "2" * 64
HA = "a" * 64
HF = "f" * 64
OWNER = "0123456789abcdef" * 4
OID40 = "0123456789abcdef0123456789abcdef01234567"
OID64 = "0123456789abcdef" * 4

EMPTY_BYTES = b'{"version":1,"head":"refs/heads/main","refs":{},"packs":[],"parent":null}'
EMPTY_DIGEST = "b965e85e22f02c090a6857aa243d1765be73643e8e2a0c1759c30683180bfd17"


def pack(hex_digest: str) -> str:
    return f"packs/{hex_digest}"


def manifest_json(**overrides: Any) -> dict[str, Any]:
    """A valid manifest as a JSON object, with some fields replaced or (value ...) removed."""
    obj: dict[str, Any] = {
        "version": 1,
        "head": "refs/heads/main",
        "refs": {"refs/heads/main": OID40},
        "packs": [pack(H1)],
        "parent": None,
    }
    obj.update(overrides)
    return {k: v for k, v in obj.items() if v is not ...}


def raw(**overrides: Any) -> bytes:
    return orjson.dumps(manifest_json(**overrides))


# -- canonical bytes ------------------------------------------------------------------------


def test_empty_manifest_bytes_and_digest_are_pinned() -> None:
    assert EMPTY_MANIFEST.canonical_bytes() == EMPTY_BYTES
    assert Manifest().canonical_bytes() == EMPTY_BYTES
    assert EMPTY_MANIFEST.digest == EMPTY_DIGEST
    assert hashlib.sha256(EMPTY_BYTES).hexdigest() == EMPTY_DIGEST
    assert EMPTY_MANIFEST.head == DEFAULT_HEAD == "refs/heads/main"


def test_refs_sorted_packs_sorted_and_deduplicated_in_fixed_field_order() -> None:
    m = Manifest(
        head="refs/heads/dev",
        refs={"refs/tags/v1": OID64, "refs/heads/main": OID40, "refs/heads/dev": OID40},
        packs=(pack(HF), pack(H1), pack(HF), pack(HA), pack(H1)),
        parent=H2,
    )
    expected = (
        b'{"version":1,"head":"refs/heads/dev",'
        b'"refs":{"refs/heads/dev":"' + OID40.encode() + b'",'
        b'"refs/heads/main":"' + OID40.encode() + b'",'
        b'"refs/tags/v1":"' + OID64.encode() + b'"},'
        b'"packs":["packs/' + H1.encode() + b'","packs/' + HA.encode() + b'",'
        b'"packs/' + HF.encode() + b'"],'
        b'"parent":"' + H2.encode() + b'"}'
    )
    assert m.canonical_bytes() == expected
    assert m.digest == hashlib.sha256(expected).hexdigest()


def test_canonical_bytes_do_not_depend_on_insertion_order() -> None:
    a = Manifest(refs={"refs/heads/a": OID40, "refs/heads/b": OID64}, packs=(pack(H1), pack(H2)))
    b = Manifest(refs={"refs/heads/b": OID64, "refs/heads/a": OID40}, packs=(pack(H2), pack(H1)))
    assert a.canonical_bytes() == b.canonical_bytes()
    assert a.digest == b.digest


@pytest.mark.parametrize(
    "m",
    [
        EMPTY_MANIFEST,
        Manifest(refs={"refs/heads/main": OID40}, packs=(pack(H1),), parent=H2),
        Manifest(
            head="refs/heads/x",
            refs={"refs/tags/v1": OID64, "refs/heads/x": OID40},
            packs=(pack(HF), pack(H1), pack(HF)),
            parent=EMPTY_DIGEST,
        ),
    ],
)
def test_round_trip(m: Manifest) -> None:
    data = m.canonical_bytes()
    back = Manifest.from_bytes(data)
    assert back.canonical_bytes() == data
    assert back.digest == m.digest
    assert back.head == m.head
    assert back.refs == m.refs
    assert back.packs == tuple(sorted(set(m.packs)))
    assert back.parent == m.parent
    assert back.version == m.version == model.MANIFEST_VERSION


def test_round_trip_of_canonical_manifest_is_equal() -> None:
    m = Manifest(refs={"refs/heads/main": OID40}, packs=(pack(H1), pack(H2)), parent=H2)
    assert Manifest.from_bytes(m.canonical_bytes()) == m


# -- refnames -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "refs/heads/main",
        "refs/tags/v1.0.0",
        "refs/heads/feature/x_y-z+w@2",
        "refs/heads/é",  # git's rules: any UTF-8 but the listed characters
        "refs/heads/$(x);`y`'z|%#!",
        "refs/heads/@",
        "refs/tags/v1.0-rc.1",
        "refs/x",
        "refs/" + "a" * (MAX_REFNAME_BYTES - len("refs/")),
    ],
)
def test_safe_refnames(name: str) -> None:
    assert model.is_safe_refname(name)
    assert Manifest(head=name, refs={name: OID40}).validate()


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("heads/main", id="not-refs"),
        pytest.param("HEAD", id="HEAD"),
        pytest.param("ref/heads/main", id="ref-not-refs"),
        pytest.param("Refs/heads/main", id="case"),
        pytest.param("/refs/heads/main", id="leading-slash"),
        pytest.param("refs/heads/main/", id="trailing-slash"),
        pytest.param("refs/", id="refs-slash-only"),
        pytest.param("refs/heads/../../etc", id="dotdot"),
        pytest.param("refs/heads/a..b", id="dotdot-inside"),
        pytest.param("refs//heads", id="double-slash"),
        pytest.param("refs/heads//main", id="double-slash-inside"),
        pytest.param("refs/heads/a b", id="space"),
        pytest.param("refs/heads/a~1", id="tilde"),
        pytest.param("refs/heads/a^", id="caret"),
        pytest.param("refs/heads/a:b", id="colon"),
        pytest.param("refs/heads/a@{1}", id="brace"),
        pytest.param("refs/heads/a\x00b", id="nul"),
        pytest.param("refs/heads/a\\b", id="backslash"),
        pytest.param("refs/heads/a*", id="star"),
        pytest.param("refs/heads/a?", id="question"),
        pytest.param("refs/heads/a[b", id="bracket"),
        pytest.param("refs/heads/a\x7fb", id="del"),
        pytest.param("refs/heads/.x", id="component-starts-with-dot"),
        pytest.param("refs/heads/x.lock/y", id="component-ends-with-lock"),
        pytest.param("refs/heads/x.", id="ends-with-dot"),
        pytest.param("refs/heads/a\tb", id="tab"),
        pytest.param("refs/heads/a\nb", id="newline-inside"),
        pytest.param("", id="empty"),
        pytest.param("refs/" + "a" * (MAX_REFNAME_BYTES - len("refs/") + 1), id="too-long"),
    ],
)
def test_unsafe_refnames(name: str) -> None:
    assert not model.is_safe_refname(name)
    with pytest.raises(InvalidManifest, match="unsafe refname"):
        Manifest(refs={name: OID40}).validate()
    with pytest.raises(InvalidManifest, match="unsafe HEAD"):
        Manifest(head=name).validate()
    with pytest.raises(InvalidManifest):
        Manifest.from_bytes(raw(refs={name: OID40}))


def test_refname_with_trailing_newline_is_unsafe() -> None:
    assert not model.is_safe_refname("refs/heads/main\n")


# -- object ids -----------------------------------------------------------------------------


@pytest.mark.parametrize("oid", [OID40, OID64, "0" * 40, "f" * 64])
def test_valid_oids(oid: str) -> None:
    assert model.is_oid(oid)
    assert Manifest(refs={"refs/heads/main": oid}).validate()


@pytest.mark.parametrize(
    "oid",
    [
        pytest.param("a" * 39, id="39"),
        pytest.param("a" * 41, id="41"),
        pytest.param("a" * 63, id="63"),
        pytest.param("a" * 65, id="65"),
        pytest.param("A" * 40, id="upper-40"),
        pytest.param("A" * 64, id="upper-64"),
        pytest.param("g" * 40, id="non-hex"),
        pytest.param("", id="empty"),
        pytest.param(" " + "a" * 40, id="leading-space"),
    ],
)
def test_bad_oids(oid: str) -> None:
    assert not model.is_oid(oid)
    with pytest.raises(InvalidManifest, match="bad object id"):
        Manifest(refs={"refs/heads/main": oid}).validate()
    with pytest.raises(InvalidManifest, match="bad object id"):
        Manifest.from_bytes(raw(refs={"refs/heads/main": oid}))


def test_oid_with_trailing_newline_is_rejected() -> None:
    assert not model.is_oid(OID40 + "\n")


# -- limits ---------------------------------------------------------------------------------


def test_at_most_128_distinct_packs() -> None:
    keys = [pack(f"{i:064x}") for i in range(MAX_MANIFEST_PACKS + 1)]
    assert Manifest(packs=tuple(keys[:MAX_MANIFEST_PACKS])).validate()
    # Duplicates do not count: they disappear from the canonical bytes.
    assert Manifest(packs=(*keys[:MAX_MANIFEST_PACKS], keys[0])).validate()
    with pytest.raises(InvalidManifest, match="more than 128 packs"):
        Manifest(packs=tuple(keys)).validate()
    with pytest.raises(InvalidManifest, match="more than 128 packs"):
        Manifest.from_bytes(raw(packs=keys))


def test_at_most_10000_refs() -> None:
    refs = {f"refs/heads/b{i}": OID40 for i in range(MAX_MANIFEST_REFS + 1)}
    assert MAX_MANIFEST_REFS == 10_000
    ok = dict(list(refs.items())[:MAX_MANIFEST_REFS])
    assert Manifest(refs=ok).validate()
    with pytest.raises(InvalidManifest, match="more than 10000 refs"):
        Manifest(refs=refs).validate()
    with pytest.raises(InvalidManifest, match="more than 10000 refs"):
        Manifest.from_bytes(raw(refs=refs))


def test_a_manifest_readers_would_refuse_is_not_valid_to_write() -> None:
    """1,100 refs of ~1,950-byte names a push wrote a 6 MB manifest that every later read
    refused (over MAX_MANIFEST_BYTES): the one validate() serves both sides now."""
    name = "refs/heads/" + "n" * 1940
    refs = {f"{name}{i:05d}": OID40 for i in range(2200)}
    assert all(model.is_safe_refname(r) for r in refs) and len(refs) < MAX_MANIFEST_REFS
    manifest = Manifest(refs=refs)
    assert len(manifest.canonical_bytes()) > model.MAX_MANIFEST_BYTES
    with pytest.raises(InvalidManifest, match="manifest larger than"):
        manifest.validate()
    fits = Manifest(refs=dict(list(refs.items())[:2000]))
    assert fits.validate() is fits


# -- pack keys ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    [
        pytest.param(f"manifests/{H1}", id="manifest-key"),
        pytest.param(f"idx/{H1}", id="idx-key"),
        pytest.param(H1, id="bare-hex"),
        pytest.param(f"packs/{'A' * 64}", id="uppercase"),
        pytest.param(f"packs/{'a' * 63}", id="short"),
        pytest.param(f"packs/{'a' * 65}", id="long"),
        pytest.param(f"packs/{'g' * 64}", id="non-hex"),
        pytest.param(f"/packs/{H1}", id="leading-slash"),
        pytest.param(f"packs//{H1}", id="double-slash"),
        pytest.param(f"packs/../{H1}", id="dotdot"),
        pytest.param(f"Packs/{H1}", id="prefix-case"),
        pytest.param("packs/", id="no-digest"),
    ],
)
def test_bad_pack_keys(key: str) -> None:
    with pytest.raises(InvalidManifest, match="bad pack key"):
        Manifest(packs=(key,)).validate()
    with pytest.raises(InvalidManifest, match="bad pack key"):
        Manifest.from_bytes(raw(packs=[key]))


def test_good_pack_key() -> None:
    assert Manifest(packs=(pack(H1), pack(HF))).validate()
    assert model.pack_key(H1) == pack(H1)


def test_pack_key_with_trailing_newline_is_rejected() -> None:
    with pytest.raises(InvalidManifest):
        Manifest(packs=(pack(H1) + "\n",)).validate()


# -- parent ---------------------------------------------------------------------------------


@pytest.mark.parametrize("parent", [None, H1, EMPTY_DIGEST])
def test_good_parents(parent: str | None) -> None:
    assert Manifest(parent=parent).validate()
    assert Manifest.from_bytes(raw(parent=parent)).parent == parent


@pytest.mark.parametrize(
    "parent",
    [
        pytest.param(f"manifests/{H1}", id="manifest-key"),
        pytest.param("A" * 64, id="uppercase"),
        pytest.param("a" * 63, id="short"),
        pytest.param("a" * 65, id="long"),
        pytest.param("", id="empty"),
        pytest.param(OID40, id="sha1-length"),
    ],
)
def test_bad_parents(parent: str) -> None:
    with pytest.raises(InvalidManifest, match="parent"):
        Manifest(parent=parent).validate()
    with pytest.raises(InvalidManifest, match="parent"):
        Manifest.from_bytes(raw(parent=parent))


def test_parent_with_trailing_newline_is_rejected() -> None:
    with pytest.raises(InvalidManifest):
        Manifest(parent=H1 + "\n").validate()


# -- version, fields, types -----------------------------------------------------------------


@pytest.mark.parametrize("version", [0, 2, -1, "1", None, [1]])
def test_unknown_version_rejected(version: Any) -> None:
    with pytest.raises(InvalidManifest, match="unknown manifest version"):
        Manifest.from_bytes(raw(version=version))


def test_missing_version_rejected() -> None:
    with pytest.raises(InvalidManifest, match="unknown manifest version"):
        Manifest.from_bytes(raw(version=...))


def test_validate_rejects_unknown_version() -> None:
    with pytest.raises(InvalidManifest, match="unknown manifest version 2"):
        Manifest(version=2).validate()


@pytest.mark.parametrize("version", [True, 1.0])
def test_version_must_be_the_integer_1(version: Any) -> None:
    with pytest.raises(InvalidManifest):
        Manifest.from_bytes(raw(version=version))


@pytest.mark.parametrize("missing", ["head", "refs", "packs", "parent"])
def test_missing_field_rejected(missing: str) -> None:
    with pytest.raises(InvalidManifest, match="fields must be"):
        Manifest.from_bytes(raw(**{missing: ...}))


@pytest.mark.parametrize("extra", ["extra", "Version", "signature", ""])
def test_extra_field_rejected(extra: str) -> None:
    obj = manifest_json()
    obj[extra] = None
    with pytest.raises(InvalidManifest, match="fields must be"):
        Manifest.from_bytes(orjson.dumps(obj))


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"head": 1}, id="head-int"),
        pytest.param({"head": None}, id="head-null"),
        pytest.param({"head": ["refs/heads/main"]}, id="head-list"),
        pytest.param({"refs": []}, id="refs-list"),
        pytest.param({"refs": "refs/heads/main"}, id="refs-str"),
        pytest.param({"refs": None}, id="refs-null"),
        pytest.param({"packs": {}}, id="packs-object"),
        pytest.param({"packs": pack(H1)}, id="packs-str"),
        pytest.param({"packs": None}, id="packs-null"),
    ],
)
def test_wrong_field_types_rejected(overrides: dict[str, Any]) -> None:
    with pytest.raises(InvalidManifest, match="wrong types"):
        Manifest.from_bytes(raw(**overrides))


@pytest.mark.parametrize("value", [1, None, [OID40], {"oid": OID40}, True])
def test_ref_values_must_be_strings(value: Any) -> None:
    with pytest.raises(InvalidManifest, match="refs must map strings to strings"):
        Manifest.from_bytes(raw(refs={"refs/heads/main": value}))


@pytest.mark.parametrize("value", [1, None, [pack(H1)], {"k": pack(H1)}])
def test_pack_entries_must_be_strings(value: Any) -> None:
    with pytest.raises(InvalidManifest, match="packs must be strings"):
        Manifest.from_bytes(raw(packs=[pack(H1), value]))


@pytest.mark.parametrize("parent", [1, [H1], {"d": H1}, True])
def test_parent_must_be_string_or_null(parent: Any) -> None:
    with pytest.raises(InvalidManifest, match="parent must be a string or null"):
        Manifest.from_bytes(raw(parent=parent))


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{", id="truncated"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(b"{'version': 1}", id="single-quotes"),
    ],
)
def test_not_json_rejected(data: bytes) -> None:
    with pytest.raises(InvalidManifest, match="not JSON"):
        Manifest.from_bytes(data)


@pytest.mark.parametrize("data", [b"[]", b"1", b'"x"', b"null", b"true"])
def test_not_an_object_rejected(data: bytes) -> None:
    with pytest.raises(InvalidManifest, match="must be a JSON object"):
        Manifest.from_bytes(data)


# -- repo ids -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw_id", "expected"),
    [
        ("repo", "repo"),
        ("my-repo_2.0", "my-repo_2.0"),
        ("Repo", "Repo"),
        ("repo.git", "repo"),
        ("repo.git.git", "repo.git"),
        ("a", "a"),
        ("a" * 64, "a" * 64),
        ("a" * 64 + ".git", "a" * 64),
        ("a.b", "a.b"),
        ("gitrepo", "gitrepo"),
    ],
)
def test_valid_repo_ids(raw_id: str, expected: str) -> None:
    assert model.normalize_repo_id(raw_id) == expected


@pytest.mark.parametrize(
    "raw_id",
    [
        pytest.param("..", id="dotdot"),
        pytest.param("a..b", id="dotdot-inside"),
        pytest.param("...git", id="dotdot-before-suffix"),
        pytest.param(".hidden", id="leading-dot"),
        pytest.param(".", id="dot"),
        pytest.param("/", id="slash"),
        pytest.param("a/b", id="slash-inside"),
        pytest.param("../x", id="traversal"),
        pytest.param("%2e%2e", id="percent-encoded-dotdot"),
        pytest.param("a%2fb", id="percent-encoded-slash"),
        pytest.param("a\x00b", id="nul"),
        pytest.param("a" * 65, id="65-chars"),
        pytest.param("", id="empty"),
        pytest.param(".git", id="dot-git-alone"),
        pytest.param("a b", id="space"),
        pytest.param("a\\b", id="backslash"),
        pytest.param("répo", id="non-ascii"),
    ],
)
def test_unsafe_repo_ids(raw_id: str) -> None:
    with pytest.raises(InvalidName):
        model.normalize_repo_id(raw_id)


def test_repo_id_with_trailing_newline_is_rejected() -> None:
    with pytest.raises(InvalidName):
        model.normalize_repo_id("repo\n")


# -- owners ---------------------------------------------------------------------------------


def test_valid_owner() -> None:
    assert model.validate_owner(OWNER) == OWNER


@pytest.mark.parametrize(
    "owner",
    [
        pytest.param(OWNER.upper(), id="uppercase"),
        pytest.param(OWNER[:-1], id="63"),
        pytest.param(OWNER + "0", id="65"),
        pytest.param("g" * 64, id="non-hex"),
        pytest.param("npub1" + "q" * 58, id="npub"),
        pytest.param("", id="empty"),
        pytest.param("../" + OWNER[3:], id="traversal"),
    ],
)
def test_invalid_owners(owner: str) -> None:
    with pytest.raises(InvalidName, match="owner"):
        model.validate_owner(owner)


def test_owner_with_trailing_newline_is_rejected() -> None:
    with pytest.raises(InvalidName):
        model.validate_owner(OWNER + "\n")


# -- keys -----------------------------------------------------------------------------------


def test_content_addressed_keys() -> None:
    assert model.pack_key(H1) == f"packs/{H1}"
    assert model.idx_key(H1) == f"idx/{H1}"
    assert model.manifest_key(H1) == f"manifests/{H1}"


def test_pointer_key() -> None:
    assert model.pointer_key(7, OWNER, "repo") == f"repos/7/{OWNER}/repo/pointer"
    # The repo id is normalised: the .git form names the same pointer.
    assert model.pointer_key(7, OWNER, "repo.git") == model.pointer_key(7, OWNER, "repo")


def test_pointer_key_is_scoped_by_community() -> None:
    one = model.pointer_key(1, OWNER, "repo")
    two = model.pointer_key(2, OWNER, "repo")
    assert one != two
    assert one.split("/")[1] == "1"
    assert two.split("/")[1] == "2"


def test_pointer_key_is_scoped_by_owner_and_repo() -> None:
    other_owner = "f" * 64
    keys = {
        model.pointer_key(1, OWNER, "repo"),
        model.pointer_key(1, other_owner, "repo"),
        model.pointer_key(1, OWNER, "repo2"),
    }
    assert len(keys) == 3


@pytest.mark.parametrize(
    ("owner", "repo_id"),
    [(OWNER.upper(), "repo"), ("x", "repo"), (OWNER, ".."), (OWNER, "a/b"), (OWNER, "")],
)
def test_pointer_key_refuses_bad_names(owner: str, repo_id: str) -> None:
    with pytest.raises(InvalidName):
        model.pointer_key(1, owner, repo_id)


@pytest.mark.parametrize(
    ("key", "digest"),
    [
        (f"packs/{H1}", H1),
        (f"manifests/{HA}", HA),
        (f"idx/{HF}", HF),
        (H2, H2),
        (f"a/b/c/{H1}", H1),
    ],
)
def test_digest_of_key(key: str, digest: str) -> None:
    assert model.digest_of_key(key) == digest


@pytest.mark.parametrize(
    "key",
    [
        f"packs/{'A' * 64}",
        f"packs/{'a' * 63}",
        f"packs/{H1}/",
        "packs/",
        "",
        f"repos/1/{OWNER}/repo/pointer",
    ],
)
def test_digest_of_key_rejects_non_content_addressed_keys(key: str) -> None:
    with pytest.raises(InvalidManifest, match="not a content-addressed key"):
        model.digest_of_key(key)


# -- pointer body ---------------------------------------------------------------------------


def test_pointer_body_round_trip() -> None:
    body = model.pointer_body(EMPTY_DIGEST)
    assert body == EMPTY_DIGEST.encode()
    assert model.parse_pointer(body) == EMPTY_DIGEST


@pytest.mark.parametrize(
    "body",
    [
        H1.encode() + b"\n",
        b"  " + H1.encode() + b"  ",
        b"\r\n\t" + H1.encode() + b"\r\n",
    ],
)
def test_parse_pointer_trims_whitespace(body: bytes) -> None:
    assert model.parse_pointer(body) == H1


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"   ", id="blank"),
        pytest.param(b"g" * 64, id="non-hex"),
        pytest.param(b"A" * 64, id="uppercase"),
        pytest.param(b"a" * 63, id="short"),
        pytest.param(b"a" * 65, id="long"),
        pytest.param(f"manifests/{H1}".encode(), id="manifest-key"),
        pytest.param(b"\xff" * 64, id="not-ascii"),
        pytest.param(H1.encode()[:32] + b" " + H1.encode()[32:], id="inner-space"),
        pytest.param(EMPTY_BYTES, id="manifest-json"),
    ],
)
def test_parse_pointer_rejects_malformed_bodies(body: bytes) -> None:
    with pytest.raises(InvalidManifest, match="pointer body"):
        model.parse_pointer(body)


@pytest.mark.parametrize("digest", ["", "A" * 64, "a" * 63, f"manifests/{H1}", "g" * 64])
def test_pointer_body_rejects_non_digests(digest: str) -> None:
    with pytest.raises(InvalidManifest, match="pointer must name"):
        model.pointer_body(digest)


def test_sha256_hex() -> None:
    assert model.sha256_hex(b"") == hashlib.sha256(b"").hexdigest()
    assert model.is_digest(model.sha256_hex(b"x"))
