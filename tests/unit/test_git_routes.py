"""The git URL forms, parsed without a socket: each route, and each refusal's status."""

from __future__ import annotations

import pytest

from relay.git.routes import (
    RECEIVE_PACK,
    UNKNOWN_SERVICE,
    UPLOAD_PACK,
    is_git_path,
    parse_route,
    service_label,
)
from relay.http import HttpError
from relay.protocol.bech32 import hex_to_npub

OWNER = "a" * 64
NPUB = hex_to_npub(OWNER)


def status_of(method: str, path: str, query: str = "") -> int:
    with pytest.raises(HttpError) as refused:
        parse_route(method, path, query)
    return refused.value.status


@pytest.mark.parametrize(
    "root", [f"/git/{OWNER}/demo", f"/git/{OWNER}/demo.git", f"/{NPUB}/demo.git"]
)
def test_both_url_forms_name_the_same_repository(root: str) -> None:
    route = parse_route("GET", f"{root}/info/refs", f"service={UPLOAD_PACK}")
    assert (route.owner, route.repo_id, route.service) == (OWNER, "demo", UPLOAD_PACK)
    assert route.advertise and not route.is_push
    assert route.repo_root == root  # what a NIP-98 token signs, as sent


def test_the_post_routes_are_the_services() -> None:
    push = parse_route("POST", f"/git/{OWNER}/demo/{RECEIVE_PACK}", "")
    assert push.is_push and not push.advertise
    fetch = parse_route("POST", f"/{NPUB}/demo.git/{UPLOAD_PACK}", "")
    assert fetch.service == UPLOAD_PACK and not fetch.is_push


def test_the_service_query_is_url_decoded_and_other_parameters_ignored() -> None:
    route = parse_route("GET", f"/git/{OWNER}/demo/info/refs", "x=1&service=git-receive%2Dpack")
    assert route.service == RECEIVE_PACK


@pytest.mark.parametrize(
    ("method", "path", "query", "status"),
    [
        ("GET", f"/git/{OWNER}/demo/info/refs", "", 400),  # dumb HTTP: no service
        ("GET", f"/git/{OWNER}/demo/info/refs", "service=git-archive", 400),
        ("POST", f"/git/{OWNER}/demo/info/refs", f"service={UPLOAD_PACK}", 405),
        ("GET", f"/git/{OWNER}/demo/{UPLOAD_PACK}", "", 405),
        ("GET", f"/git/{OWNER}/demo/HEAD", "", 404),
        ("GET", f"/git/{OWNER}/demo", "", 404),
        ("GET", f"/{NPUB}/demo/info/refs", "", 404),  # the npub form needs .git
        ("GET", "/npub1notanpub/demo.git/info/refs", "", 400),
        ("GET", "/git/ABC/demo/info/refs", f"service={UPLOAD_PACK}", 400),
        ("GET", f"/git/{OWNER}/..%2Fx/info/refs", f"service={UPLOAD_PACK}", 400),
        ("GET", f"/git/{OWNER}/de%00mo/info/refs", f"service={UPLOAD_PACK}", 400),
    ],
)
def test_unusable_requests_get_a_status(method: str, path: str, query: str, status: int) -> None:
    assert status_of(method, path, query) == status


def test_metrics_labels_are_a_closed_set() -> None:
    """An attacker choosing paths cannot mint label values."""
    assert service_label("POST", f"/git/{OWNER}/demo/{RECEIVE_PACK}", "") == RECEIVE_PACK
    assert service_label("GET", f"/git/{OWNER}/demo/info/refs", "service=x" * 50) == UNKNOWN_SERVICE
    assert service_label("GET", f"/git/{OWNER}/demo/{'z' * 80}", "") == UNKNOWN_SERVICE


def test_git_paths_are_told_from_others() -> None:
    assert is_git_path(f"/git/{OWNER}/demo/info/refs")
    assert is_git_path(f"/{NPUB}/demo.git/info/refs")
    assert not is_git_path("/")
    assert not is_git_path(f"/{NPUB}")
    assert not is_git_path("/healthz")
