"""The fake kube-apiserver (``tests/fixtures/kube_apiserver.py``) against the Kubernetes API contract.

Raw HTTP checks pin the wire shapes (Status objects, list metadata, watch lines, chunking); the
official ``kubernetes`` client parsing our responses is the independent check that they are right.
"""

from __future__ import annotations

import base64
import http.client
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.fixtures import kube_objects
from tests.fixtures.kube_apiserver import (
    CONTINUE_EXPIRED,
    INCONSISTENT_CONTINUE,
    FakeApiServer,
    ServerTls,
)
from tests.fixtures.pki import Pki
from tests.fixtures.servers import build_tls_pki, issue_client, write_tls_files

TOKEN = "fixture-token-" + "a" * 20
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def secret(namespace: str, name: str, *, labels: dict[str, str] | None = None, type_: str = "Opaque") -> dict:
    metadata: dict[str, Any] = {"namespace": namespace, "name": name}
    if labels is not None:
        metadata["labels"] = labels
    return {"metadata": metadata, "type": type_, "data": {"k": base64.b64encode(name.encode()).decode()}}


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    with FakeApiServer(bookmark_interval=0.2) as server:
        server.allow(token=TOKEN)
        yield server


def get(api: FakeApiServer, path: str, **params: Any) -> requests.Response:
    return requests.get(api.url + path, params=params, headers=AUTH, timeout=10)


def names(document: dict) -> list[str]:
    return [f"{i['metadata']['namespace']}/{i['metadata']['name']}" for i in document["items"]]


class WatchStream:
    """A raw watch over http.client, so chunk boundaries and truncation are visible."""

    def __init__(self, api: FakeApiServer, path: str, headers: dict[str, str] | None = None, **params: Any) -> None:
        host, port = api.url.rsplit("//", 1)[1].split(":")
        self.connection = http.client.HTTPConnection(host, int(port), timeout=10)
        query = "&".join(f"{k}={v}" for k, v in {"watch": "1", **params}.items())
        self.connection.request("GET", f"{path}?{query}", headers=headers if headers is not None else AUTH)
        self.response = self.connection.getresponse()

    def next(self) -> dict:
        line = self.response.readline()
        if not line:
            raise EOFError("watch ended")
        return json.loads(line)

    def until(self, predicate: Callable[[dict], bool], limit: int = 50) -> dict:
        for _ in range(limit):
            event = self.next()
            if predicate(event):
                return event
        raise AssertionError("event not seen")

    def events(self, count: int, *, skip_bookmarks: bool = True) -> list[dict]:
        seen: list[dict] = []
        while len(seen) < count:
            event = self.next()
            if skip_bookmarks and event["type"] == "BOOKMARK":
                continue
            seen.append(event)
        return seen

    def close(self) -> None:
        self.connection.close()


def summary(events: list[dict]) -> list[tuple[str, str, str]]:
    return [(e["type"], e["object"]["metadata"]["name"], e["object"]["metadata"]["resourceVersion"]) for e in events]


# --------------------------------------------------------------------------- LIST


def test_pages_are_a_consistent_snapshot_while_the_set_changes(api: FakeApiServer) -> None:
    for index in range(7):
        api.put("secrets", secret("apps", f"s{index}"))
    api.put("secrets", secret("other", "x"))
    first = get(api, "/api/v1/namespaces/apps/secrets", limit=3).json()
    assert first["kind"] == "SecretList" and first["apiVersion"] == "v1"
    assert names(first) == ["apps/s0", "apps/s1", "apps/s2"]
    assert first["metadata"]["remainingItemCount"] == 4
    assert all("kind" not in item and "apiVersion" not in item for item in first["items"])
    snapshot = first["metadata"]["resourceVersion"]
    # Change the set under the list: none of it may show up in the remaining pages.
    api.delete("secrets", "apps", "s4")
    api.put("secrets", secret("apps", "s3", labels={"changed": "yes"}))
    api.put("secrets", secret("apps", "s35"))
    api.put("secrets", secret("apps", "s0"))
    second = get(api, "/api/v1/namespaces/apps/secrets", limit=3, **{"continue": first["metadata"]["continue"]}).json()
    assert names(second) == ["apps/s3", "apps/s4", "apps/s5"]
    assert "labels" not in second["items"][0]["metadata"]
    assert second["metadata"]["resourceVersion"] == snapshot
    assert second["metadata"]["remainingItemCount"] == 1
    third = get(api, "/api/v1/namespaces/apps/secrets", limit=3, **{"continue": second["metadata"]["continue"]}).json()
    assert names(third) == ["apps/s6"]
    assert "continue" not in third["metadata"] and "remainingItemCount" not in third["metadata"]
    # A fresh list sees the changes.
    fresh = get(api, "/api/v1/namespaces/apps/secrets").json()
    assert names(fresh) == ["apps/s0", "apps/s1", "apps/s2", "apps/s3", "apps/s35", "apps/s5", "apps/s6"]
    assert int(fresh["metadata"]["resourceVersion"]) > int(snapshot)


def test_items_sort_by_etcd_key_across_namespaces(api: FakeApiServer) -> None:
    # '-' sorts before '/', so "a-b/x" comes before "a/x" in etcd's byte order.
    for namespace, name in [("a", "x"), ("a-b", "x"), ("b", "a"), ("a", "b")]:
        api.put("configmaps", {"metadata": {"namespace": namespace, "name": name}, "data": {}})
    listed = get(api, "/api/v1/configmaps").json()
    assert listed["kind"] == "ConfigMapList"
    assert names(listed) == ["a-b/x", "a/b", "a/x", "b/a"]
    assert names(get(api, "/api/v1/namespaces/a/configmaps").json()) == ["a/b", "a/x"]


def test_expired_continue_is_410_with_an_inconsistent_continuation(api: FakeApiServer) -> None:
    for index in range(5):
        api.put("secrets", secret("ns", f"s{index}"))
    first = get(api, "/api/v1/secrets", limit=2).json()
    api.put("secrets", secret("ns", "s9"))
    api.compact()
    response = get(api, "/api/v1/secrets", limit=2, **{"continue": first["metadata"]["continue"]})
    assert response.status_code == 410
    status = response.json()
    token = status["metadata"].pop("continue")
    assert status == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": INCONSISTENT_CONTINUE,
        "reason": "Expired",
        "code": 410,
    }
    assert INCONSISTENT_CONTINUE.startswith(CONTINUE_EXPIRED[:-1])
    # The token in the 410 continues at the latest revision: s9 (created after the first page) shows.
    rest = get(api, "/api/v1/secrets", limit=10, **{"continue": token}).json()
    assert names(rest) == ["ns/s2", "ns/s3", "ns/s4", "ns/s9"]
    assert rest["metadata"]["resourceVersion"] == api.resource_version


def test_exact_and_bad_resource_versions(api: FakeApiServer) -> None:
    rv = api.put("secrets", secret("ns", "a"))
    api.put("secrets", secret("ns", "b"))
    exact = get(api, "/api/v1/secrets", resourceVersion=rv, resourceVersionMatch="Exact").json()
    assert names(exact) == ["ns/a"] and exact["metadata"]["resourceVersion"] == rv
    assert names(get(api, "/api/v1/secrets", resourceVersion="0").json()) == ["ns/a", "ns/b"]
    api.compact()
    too_old = get(api, "/api/v1/secrets", resourceVersion=rv, resourceVersionMatch="Exact")
    assert too_old.status_code == 410 and too_old.json()["reason"] == "Expired"
    bad_token = get(api, "/api/v1/secrets", limit=1, **{"continue": "not-a-token"})
    assert bad_token.status_code == 400 and bad_token.json()["reason"] == "BadRequest"
    both = get(api, "/api/v1/secrets", limit=1, resourceVersion="5", **{"continue": "x"})
    assert both.status_code == 400


def test_get_one_object_and_not_found(api: FakeApiServer) -> None:
    stored = {
        "metadata": {"namespace": "ns", "name": "broken", "labels": {"a": "b"}},
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": "%%% not base64 %%%", "tls.key": ""},
    }
    rv = api.put("secrets", stored)
    got = get(api, "/api/v1/namespaces/ns/secrets/broken").json()
    assert got["kind"] == "Secret" and got["apiVersion"] == "v1"
    assert got["data"] == stored["data"]  # served exactly as stored, never validated
    assert got["metadata"]["resourceVersion"] == rv and got["metadata"]["labels"] == {"a": "b"}
    uid, created = got["metadata"]["uid"], got["metadata"]["creationTimestamp"]
    api.put("secrets", stored)
    again = get(api, "/api/v1/namespaces/ns/secrets/broken").json()
    assert again["metadata"]["uid"] == uid and again["metadata"]["creationTimestamp"] == created
    assert again["metadata"]["resourceVersion"] != rv
    missing = get(api, "/api/v1/namespaces/ns/secrets/nope")
    assert missing.status_code == 404
    assert missing.json() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'secrets "nope" not found',
        "reason": "NotFound",
        "details": {"name": "nope", "kind": "secrets"},
        "code": 404,
    }
    unknown = get(api, "/api/v1/pods")
    assert unknown.status_code == 404 and unknown.json()["reason"] == "NotFound"


def test_discovery_version_and_health(api: FakeApiServer) -> None:
    resources = get(api, "/api/v1").json()
    assert resources["kind"] == "APIResourceList" and resources["groupVersion"] == "v1"
    by_name = {r["name"]: r for r in resources["resources"]}
    assert by_name["secrets"]["kind"] == "Secret" and "watch" in by_name["secrets"]["verbs"]
    assert by_name["configmaps"]["namespaced"] is True
    assert get(api, "/api").json()["versions"] == ["v1"]
    assert requests.get(api.url + "/version", timeout=5).json()["major"] == "1"
    assert requests.get(api.url + "/healthz", timeout=5).text == "ok"


# --------------------------------------------------------------------------- selectors


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("app=web", ["web1", "web2"]),
        ("app==web", ["web1", "web2"]),
        ("app!=web", ["db", "bare"]),
        ("app", ["web1", "web2", "db"]),
        ("!app", ["bare"]),
        ("app in (db,cache)", ["db"]),
        ("app notin (db)", ["web1", "web2", "bare"]),
        ("app=web,tier=front", ["web1"]),
        ("app in (web, db),!tier", ["web2", "db"]),
    ],
)
def test_label_selectors(api: FakeApiServer, selector: str, expected: list[str]) -> None:
    api.put("secrets", secret("ns", "web1", labels={"app": "web", "tier": "front"}))
    api.put("secrets", secret("ns", "web2", labels={"app": "web"}))
    api.put("secrets", secret("ns", "db", labels={"app": "db"}))
    api.put("secrets", secret("ns", "bare"))
    listed = get(api, "/api/v1/secrets", labelSelector=selector).json()
    assert sorted(names(listed)) == sorted(f"ns/{n}" for n in expected)


def test_field_selectors_and_paging_with_a_selector(api: FakeApiServer) -> None:
    for index in range(6):
        api.put("secrets", secret("ns", f"s{index}", type_="kubernetes.io/tls" if index % 2 else "Opaque"))
    api.put("secrets", secret("other", "s1", type_="kubernetes.io/tls"))
    assert names(get(api, "/api/v1/secrets", fieldSelector="type=kubernetes.io/tls").json()) == [
        "ns/s1",
        "ns/s3",
        "ns/s5",
        "other/s1",
    ]
    assert len(get(api, "/api/v1/secrets", fieldSelector="type!=kubernetes.io/tls").json()["items"]) == 3
    assert names(get(api, "/api/v1/secrets", fieldSelector="metadata.name==s1,metadata.namespace=other").json()) == [
        "other/s1"
    ]
    page = get(api, "/api/v1/secrets", fieldSelector="type=kubernetes.io/tls", limit=2).json()
    assert names(page) == ["ns/s1", "ns/s3"]
    assert "remainingItemCount" not in page["metadata"]  # not computed with a selector
    rest = get(
        api,
        "/api/v1/secrets",
        fieldSelector="type=kubernetes.io/tls",
        limit=2,
        **{"continue": page["metadata"]["continue"]},
    ).json()
    assert names(rest) == ["ns/s5", "other/s1"]
    bad = get(api, "/api/v1/secrets", fieldSelector="spec.foo=bar")
    assert bad.status_code == 400
    assert bad.json()["message"] == "field label not supported: spec.foo" and bad.json()["reason"] == "BadRequest"
    assert get(api, "/api/v1/configmaps", fieldSelector="type=x").status_code == 400  # no type on ConfigMaps
    assert get(api, "/api/v1/secrets", labelSelector="a in (x").status_code == 400


# --------------------------------------------------------------------------- auth


def test_unauthorized_and_forbidden_shapes(api: FakeApiServer) -> None:
    api.allow(token="team-a", user="system:serviceaccount:team-a:reader", namespaces=["team-a"])
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = requests.get(api.url + "/api/v1/secrets", headers=headers, timeout=5)
        assert response.status_code == 401
        assert response.json() == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "Unauthorized",
            "reason": "Unauthorized",
            "code": 401,
        }
    team = {"Authorization": "Bearer team-a"}
    cluster = requests.get(api.url + "/api/v1/secrets", headers=team, timeout=5)
    assert cluster.status_code == 403
    assert cluster.json() == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": 'secrets is forbidden: User "system:serviceaccount:team-a:reader" cannot list resource "secrets" '
        'in API group "" at the cluster scope',
        "reason": "Forbidden",
        "details": {"kind": "secrets"},
        "code": 403,
    }
    other = requests.get(api.url + "/api/v1/namespaces/team-b/secrets?watch=true", headers=team, timeout=5)
    assert other.status_code == 403
    assert other.json()["message"] == (
        'secrets is forbidden: User "system:serviceaccount:team-a:reader" cannot watch resource "secrets" '
        'in API group "" in the namespace "team-b"'
    )
    assert requests.get(api.url + "/api/v1/namespaces/team-a/secrets", headers=team, timeout=5).status_code == 200
    assert [r.status for r in api.requests][-5:] == [401, 401, 403, 403, 200]
    assert api.requests[-1].identity == "system:serviceaccount:team-a:reader"
    assert api.requests[-5].identity is None


def test_client_certificate_identity_over_tls(pki: Pki, tmp_path: Path) -> None:
    tls_pki = build_tls_pki(pki)
    tls = write_tls_files(tls_pki, tmp_path / "tls")
    server_tls = ServerTls(str(tls.localhost.fullchain), str(tls.localhost.key), client_ca_file=str(tls.client_ca))
    with FakeApiServer(tls=server_tls) as api:
        assert api.url.startswith("https://127.0.0.1:")
        api.allow(user="client.localhost")
        api.put("secrets", secret("ns", "a"))
        # verify= per request: REQUESTS_CA_BUNDLE in the environment would override Session.verify.
        mine = requests.get(
            api.url + "/api/v1/secrets",
            verify=str(tls.root_ca),
            cert=(str(tls.client.cert), str(tls.client.key)),
            timeout=5,
        )
        assert names(mine.json()) == ["ns/a"]
        assert api.requests[-1].identity == "client.localhost"
        # No client certificate and no token: unauthenticated.
        anonymous = requests.get(api.url + "/api/v1/secrets", verify=str(tls.root_ca), timeout=5)
        assert anonymous.status_code == 401
        # A certificate from a CA the server does not trust fails the handshake.
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(
                api.url + "/api/v1/secrets",
                verify=str(tls.root_ca),
                cert=(str(tls.wrong_ca_client.cert), str(tls.wrong_ca_client.key)),
                timeout=5,
            )
        # A verified certificate whose CN has no grant: authenticated, then forbidden.
        stranger = issue_client("stranger", tls_pki.client_ca)
        (tmp_path / "stranger.crt").write_bytes(stranger.pem)
        (tmp_path / "stranger.key").write_bytes(stranger.key_pem)
        forbidden = requests.get(
            api.url + "/api/v1/namespaces/ns/secrets",
            verify=str(tls.root_ca),
            cert=(str(tmp_path / "stranger.crt"), str(tmp_path / "stranger.key")),
            timeout=5,
        )
        assert forbidden.status_code == 403
        assert 'User "stranger" cannot list resource "secrets"' in forbidden.json()["message"]
        assert api.requests[-1].identity == "stranger"


def test_fail_next(api: FakeApiServer) -> None:
    api.fail_next(429)
    api.fail_next(503, count=2)
    throttled = get(api, "/api/v1/secrets")
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "1"
    assert throttled.json()["reason"] == "TooManyRequests" and throttled.json()["kind"] == "Status"
    assert [get(api, "/healthz").status_code for _ in range(2)] == [503, 503]
    assert get(api, "/api/v1/secrets").status_code == 200
    api.fail_next(500)
    failed = get(api, "/api/v1/namespaces/ns/secrets/x")
    assert failed.status_code == 500 and failed.json()["reason"] == "InternalError" and failed.json()["code"] == 500


# --------------------------------------------------------------------------- WATCH


def test_watch_from_a_list_delivers_changes_in_order(api: FakeApiServer) -> None:
    api.put("secrets", secret("ns", "before"))
    listed = get(api, "/api/v1/namespaces/ns/secrets").json()
    rv = listed["metadata"]["resourceVersion"]
    added = api.put("secrets", secret("ns", "a"))  # before the watch starts, after the list: must be replayed
    stream = WatchStream(api, "/api/v1/namespaces/ns/secrets", resourceVersion=rv)
    try:
        assert stream.response.status == 200
        assert stream.response.getheader("Transfer-Encoding") == "chunked"
        assert stream.response.getheader("Content-Type") == "application/json"
        modified = api.put("secrets", secret("ns", "a", labels={"v": "2"}))
        api.put("secrets", secret("elsewhere", "ignored"))
        deleted = api.delete("secrets", "ns", "before")
        events = stream.events(3)
        assert summary(events) == [("ADDED", "a", added), ("MODIFIED", "a", modified), ("DELETED", "before", deleted)]
        assert all(e["object"]["kind"] == "Secret" and e["object"]["apiVersion"] == "v1" for e in events)
        assert events[1]["object"]["metadata"]["labels"] == {"v": "2"}
        assert events[2]["object"]["data"] == secret("ns", "before")["data"]  # the final state
    finally:
        stream.close()


def test_watch_without_resource_version_starts_with_synthetic_added(api: FakeApiServer) -> None:
    first = api.put("secrets", secret("ns", "b"))
    second = api.put("secrets", secret("ns", "a"))
    stream = WatchStream(api, "/api/v1/secrets", resourceVersion="0")
    try:
        assert summary(stream.events(2)) == [("ADDED", "a", second), ("ADDED", "b", first)]
        later = api.put("secrets", secret("ns", "c"))
        assert summary(stream.events(1)) == [("ADDED", "c", later)]
    finally:
        stream.close()


def test_bookmarks_carry_only_the_resource_version(api: FakeApiServer) -> None:
    api.put("secrets", secret("ns", "a"))
    stream = WatchStream(api, "/api/v1/secrets", allowWatchBookmarks="true", resourceVersion=api.resource_version)
    try:
        started = time.monotonic()
        bookmark = stream.until(lambda e: e["type"] == "BOOKMARK")
        assert time.monotonic() - started < 2
        assert bookmark["object"] == {
            "kind": "Secret",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": api.resource_version},
        }
        # A change elsewhere (a filtered-out namespace) still advances the bookmark.
        rv = api.put("configmaps", {"metadata": {"namespace": "x", "name": "y"}})
        assert stream.until(lambda e: e["type"] == "BOOKMARK")["object"]["metadata"]["resourceVersion"] == rv
    finally:
        stream.close()
    plain = WatchStream(api, "/api/v1/secrets", resourceVersion=api.resource_version, timeoutSeconds="1")
    with pytest.raises(EOFError):
        plain.next()  # no bookmarks asked for: nothing at all until the timeout ends the stream
    plain.close()


def test_send_initial_events_ends_with_an_annotated_bookmark(api: FakeApiServer) -> None:
    api.put("secrets", secret("ns", "a"))
    stream = WatchStream(
        api,
        "/api/v1/secrets",
        sendInitialEvents="true",
        allowWatchBookmarks="true",
        resourceVersionMatch="NotOlderThan",
    )
    try:
        first, marker = stream.next(), stream.next()
        assert first["type"] == "ADDED"
        assert marker["type"] == "BOOKMARK"
        assert marker["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    finally:
        stream.close()


def test_selector_watch_turns_unmatching_into_deleted_and_matching_into_added(api: FakeApiServer) -> None:
    api.put("secrets", secret("ns", "a", labels={"watched": "yes"}))
    stream = WatchStream(api, "/api/v1/secrets", labelSelector="watched=yes", resourceVersion=api.resource_version)
    try:
        unmatched = api.put("secrets", secret("ns", "a", labels={"watched": "no"}))
        api.put("secrets", secret("ns", "a", labels={"watched": "still-no"}))  # invisible
        matched = api.put("secrets", secret("ns", "a", labels={"watched": "yes"}))
        modified = api.put("secrets", secret("ns", "a", labels={"watched": "yes", "x": "1"}))
        events = stream.events(3)
        assert summary(events) == [("DELETED", "a", unmatched), ("ADDED", "a", matched), ("MODIFIED", "a", modified)]
        # The DELETED carries the last state that matched, at the new resourceVersion.
        assert events[0]["object"]["metadata"]["labels"] == {"watched": "yes"}
    finally:
        stream.close()


@pytest.mark.parametrize("mode", ["event", "status"])
def test_too_old_resource_version(mode: str) -> None:
    with FakeApiServer(watch_expiry=mode) as api:
        api.allow(token=TOKEN)
        old = api.put("secrets", secret("ns", "a"))
        api.put("secrets", secret("ns", "b"))
        api.compact()
        stream = WatchStream(api, "/api/v1/secrets", resourceVersion=old)
        try:
            if mode == "status":
                assert stream.response.status == 410
                status = json.loads(stream.response.read())
            else:
                assert stream.response.status == 200
                event = stream.next()
                assert event["type"] == "ERROR"
                status = event["object"]
                with pytest.raises(EOFError):
                    stream.next()  # the stream ends after the error
            assert status == {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": f"too old resource version: {old} ({api.resource_version})",
                "reason": "Expired",
                "code": 410,
            }
        finally:
            stream.close()
        # The current revision is not too old.
        fresh = WatchStream(api, "/api/v1/secrets", resourceVersion=api.resource_version, timeoutSeconds="1")
        assert fresh.response.status == 200
        fresh.close()


def test_expire_watches_sends_error_then_ends_cleanly(api: FakeApiServer) -> None:
    stream = WatchStream(api, "/api/v1/secrets", resourceVersion=api.resource_version)
    try:
        wait_for(lambda: api.open_watches() == 1)
        api.expire_watches()
        event = stream.next()
        assert event["type"] == "ERROR" and event["object"]["code"] == 410 and event["object"]["reason"] == "Expired"
        with pytest.raises(EOFError):
            stream.next()
        wait_for(lambda: api.open_watches() == 0)
    finally:
        stream.close()


def test_timeout_seconds_ends_the_stream_cleanly(api: FakeApiServer) -> None:
    stream = WatchStream(api, "/api/v1/secrets", resourceVersion=api.resource_version, timeoutSeconds="1")
    started = time.monotonic()
    assert stream.response.read() == b""  # a complete chunked body (IncompleteRead otherwise)
    assert 0.9 < time.monotonic() - started < 3
    stream.close()


def test_drop_connections_cuts_the_stream_mid_chunk(api: FakeApiServer) -> None:
    stream = WatchStream(api, "/api/v1/secrets", resourceVersion=api.resource_version)
    try:
        wait_for(lambda: api.open_watches() == 1)
        api.put("secrets", secret("ns", "a"))
        assert stream.next()["type"] == "ADDED"
        api.drop_connections()
        with pytest.raises(http.client.IncompleteRead):
            stream.response.read()
        wait_for(lambda: api.open_watches() == 0)
    finally:
        stream.close()
    # The server itself is fine: the next watch resumes.
    resumed = WatchStream(api, "/api/v1/secrets", resourceVersion="1", timeoutSeconds="1")
    assert resumed.next()["object"]["metadata"]["name"] == "a"
    resumed.close()


def test_a_client_that_hangs_up_is_noticed(api: FakeApiServer) -> None:
    stream = WatchStream(api, "/api/v1/secrets", resourceVersion=api.resource_version)
    wait_for(lambda: api.open_watches() == 1)
    stream.response.close()
    stream.close()
    wait_for(lambda: api.open_watches() == 0)


def test_stop_ends_watches_and_keep_alive_connections() -> None:
    api = FakeApiServer().start()
    api.allow(token=TOKEN)
    session = requests.Session()
    assert session.get(api.url + "/api/v1/secrets", headers=AUTH, timeout=5).status_code == 200
    stream = WatchStream(api, "/api/v1/secrets")
    wait_for(lambda: api.open_watches() == 1)
    ended: list[bytes] = []
    reader = threading.Thread(target=lambda: ended.append(stream.response.read()))
    reader.start()
    started = time.monotonic()
    api.stop()
    reader.join(5)
    assert ended == [b""] and time.monotonic() - started < 5
    assert api.open_watches() == 0
    with pytest.raises(requests.exceptions.ConnectionError):
        session.get(api.url + "/api/v1/secrets", headers=AUTH, timeout=2)


def test_keep_alive_serves_many_requests_on_one_connection(api: FakeApiServer) -> None:
    host, port = api.url.rsplit("//", 1)[1].split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=5)
    connection.connect()
    sock = connection.sock
    for _ in range(3):
        connection.request("GET", "/api/v1/secrets", headers=AUTH)
        response = connection.getresponse()
        assert response.status == 200 and json.loads(response.read())["kind"] == "SecretList"
    assert connection.sock is sock  # never reconnected
    connection.close()


def wait_for(condition: Callable[[], bool], timeout: float = 5) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


# --------------------------------------------------------------------------- scale


def test_thirty_thousand_secrets_put_fast_and_pages_served_fast() -> None:
    with FakeApiServer() as api:
        api.allow(token=TOKEN)
        helm = base64.b64encode(b"h" * 700_000).decode()  # ~1 MB once base64-encoded
        started = time.monotonic()
        for index in range(30_000):
            namespace = f"ns-{index % 50:02d}"
            if index % 1000 == 0:
                api.put(
                    "secrets",
                    {
                        "metadata": {"namespace": namespace, "name": f"sh.helm.release.v1.app{index}.v1"},
                        "type": "helm.sh/release.v1",
                        "data": {"release": helm},
                    },
                )
            else:
                api.put("secrets", secret(namespace, f"tls-{index:05d}", type_="kubernetes.io/tls"))
        put_seconds = time.monotonic() - started
        assert put_seconds < 20, put_seconds
        session = requests.Session()
        params: dict[str, str] = {"limit": "500", "fieldSelector": "type=kubernetes.io/tls"}
        seen, slowest = 0, 0.0
        while True:
            started = time.monotonic()
            page = session.get(api.url + "/api/v1/secrets", params=params, headers=AUTH, timeout=10).json()
            slowest = max(slowest, time.monotonic() - started)
            seen += len(page["items"])
            if "continue" not in page["metadata"]:
                break
            params["continue"] = page["metadata"]["continue"]
        assert seen == 30_000 - 30
        # Generous bounds, so a loaded CI machine passes; what they catch is a page whose
        # cost grows with the store (a full copy or scan per request takes seconds at 30k).
        assert slowest < 0.5, slowest
        # Unfiltered, the first page holds 30 of the ~1 MB Helm Secrets: building it must still be quick.
        started = time.monotonic()
        body = api._list("secrets", None, {"limit": "500"})
        assert time.monotonic() - started < 0.5
        assert len(body) > 25_000_000
        unfiltered = session.get(api.url + "/api/v1/secrets", params={"limit": "500"}, headers=AUTH, timeout=10)
        assert unfiltered.json()["metadata"]["remainingItemCount"] == 30_000 - 500


# --------------------------------------------------------------------------- the official client


kubernetes = pytest.importorskip("kubernetes")


@pytest.fixture
def core(api: FakeApiServer) -> Any:
    configuration = kubernetes.client.Configuration()
    configuration.host = api.url
    configuration.api_key = {"authorization": TOKEN}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    client = kubernetes.client.ApiClient(configuration)
    yield kubernetes.client.CoreV1Api(client)
    client.close()


def test_official_client_pages_with_continue(api: FakeApiServer, core: Any) -> None:
    for index in range(5):
        api.put("secrets", secret("ns", f"s{index}", labels={"i": str(index)}))
    first = core.list_namespaced_secret("ns", limit=2)
    assert [s.metadata.name for s in first.items] == ["s0", "s1"]
    assert first.metadata.remaining_item_count == 3 and first.metadata._continue
    assert first.items[0].metadata.labels == {"i": "0"} and first.items[0].metadata.uid
    assert first.items[0].metadata.creation_timestamp is not None
    api.delete("secrets", "ns", "s3")
    second = core.list_namespaced_secret("ns", limit=2, _continue=first.metadata._continue)
    assert [s.metadata.name for s in second.items] == ["s2", "s3"]
    third = core.list_namespaced_secret("ns", limit=2, _continue=second.metadata._continue)
    assert [s.metadata.name for s in third.items] == ["s4"] and third.metadata._continue is None
    everything = core.list_secret_for_all_namespaces(field_selector="metadata.namespace=ns")
    assert [s.metadata.name for s in everything.items] == ["s0", "s1", "s2", "s4"]
    assert everything.items[0].data == secret("ns", "s0")["data"]


def test_official_client_errors(api: FakeApiServer, core: Any) -> None:
    api.put("secrets", secret("ns", "s0"))
    api.put("secrets", secret("ns", "s1"))
    first = core.list_secret_for_all_namespaces(limit=1)
    assert first.metadata._continue
    api.put("secrets", secret("ns", "s2"))  # compaction only hurts a snapshot older than now
    api.compact()
    with pytest.raises(kubernetes.client.ApiException) as expired:
        core.list_secret_for_all_namespaces(limit=1, _continue=first.metadata._continue)
    assert expired.value.status == 410 and json.loads(expired.value.body)["reason"] == "Expired"
    with pytest.raises(kubernetes.client.ApiException) as missing:
        core.read_namespaced_secret("nope", "ns")
    assert missing.value.status == 404


def test_official_watch_streams_events(api: FakeApiServer, core: Any) -> None:
    listed = core.list_namespaced_secret("ns")
    watch = kubernetes.watch.Watch()

    def changes() -> None:
        time.sleep(0.3)
        api.put("secrets", secret("ns", "a"))
        api.put("secrets", secret("ns", "a", labels={"v": "2"}))
        api.delete("secrets", "ns", "a")

    threading.Thread(target=changes).start()
    seen: list[tuple[str, str]] = []
    for event in watch.stream(
        core.list_namespaced_secret,
        "ns",
        resource_version=listed.metadata.resource_version,
        allow_watch_bookmarks=True,
        timeout_seconds=5,
    ):
        if event["type"] == "BOOKMARK":
            continue
        seen.append((event["type"], event["object"].metadata.name))
        if len(seen) == 3:
            watch.stop()
    assert seen == [("ADDED", "a"), ("MODIFIED", "a"), ("DELETED", "a")]
    assert watch.resource_version == api.resource_version


def test_official_watch_raises_on_expired(api: FakeApiServer, core: Any) -> None:
    old = api.put("secrets", secret("ns", "a"))
    api.put("secrets", secret("ns", "b"))
    api.compact()
    watch = kubernetes.watch.Watch()
    # With timeout_seconds the client does not retry a 410 itself: it raises.
    with pytest.raises(kubernetes.client.ApiException) as expired:
        for _ in watch.stream(core.list_secret_for_all_namespaces, resource_version=old, timeout_seconds=2):
            pass
    assert expired.value.status == 410 and "Expired: too old resource version" in expired.value.reason


def test_raw_sockets_see_http11_chunking(api: FakeApiServer) -> None:
    host, port = api.url.rsplit("//", 1)[1].split(":")
    with socket.create_connection((host, int(port)), timeout=5) as raw:
        raw.sendall(
            b"GET /api/v1/secrets?watch=1&timeoutSeconds=1 HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode()
        )
        received = b""
        while not received.endswith(b"\r\n0\r\n\r\n"):
            data = raw.recv(65536)
            if not data:
                break
            received += data
    head = received.split(b"\r\n\r\n", 1)[0].decode()
    assert head.startswith("HTTP/1.1 200")
    assert "Transfer-Encoding: chunked" in head
    assert received.endswith(b"0\r\n\r\n")


# --------------------------------------------------------------------------- cluster-scoped objects


@pytest.fixture
def client(api: FakeApiServer) -> Any:
    configuration = kubernetes.client.Configuration()
    configuration.host = api.url
    configuration.api_key = {"authorization": TOKEN}
    configuration.api_key_prefix = {"authorization": "Bearer"}
    made = kubernetes.client.ApiClient(configuration)
    yield made
    made.close()


def put_cluster_objects(api: FakeApiServer, pki: Pki) -> dict[str, Any]:
    root = kube_objects.bundle(pki.root)
    objects = {
        "validating": kube_objects.webhook_configuration(
            "Validating",
            "policy",
            [
                ("validate.policy.example.com", root, kube_objects.service_ref("policy", "policy-webhook")),
                ("audit.policy.example.com", None, None),
            ],
        ),
        "mutating": kube_objects.webhook_configuration(
            "Mutating", "injector", [("inject.example.com", root, kube_objects.service_ref("mesh", "injector", 9443))]
        ),
        "apiservice": kube_objects.api_service(
            "metrics.k8s.io", "v1beta1", root, kube_objects.service_ref("kube-system", "metrics-server")
        ),
        "crd": kube_objects.crd("widgets", "example.com", root, kube_objects.service_ref("widgets", "converter")),
        "csr": kube_objects.csr(
            "csr-abc12", "kubernetes.io/kube-apiserver-client-kubelet", "system:node:worker-1", pki.valid
        ),
    }
    resources = {
        "validating": "validatingwebhookconfigurations",
        "mutating": "mutatingwebhookconfigurations",
        "apiservice": "apiservices",
        "crd": "customresourcedefinitions",
        "csr": "certificatesigningrequests",
    }
    for key, obj in objects.items():
        api.put(resources[key], obj)
    return objects


def test_official_client_reads_the_cluster_scoped_objects(api: FakeApiServer, client: Any, pki: Pki) -> None:
    objects = put_cluster_objects(api, pki)
    root = kube_objects.bundle(pki.root)
    admission = kubernetes.client.AdmissionregistrationV1Api(client)
    validating = admission.list_validating_webhook_configuration().items
    assert [v.metadata.name for v in validating] == ["policy"]
    hooks = validating[0].webhooks
    assert [h.name for h in hooks] == ["validate.policy.example.com", "audit.policy.example.com"]
    assert hooks[0].client_config.ca_bundle == root and hooks[0].client_config.service.name == "policy-webhook"
    assert hooks[1].client_config.ca_bundle is None and hooks[1].client_config.url.startswith("https://")
    assert validating[0].metadata.uid and validating[0].metadata.resource_version
    assert validating[0].metadata.namespace is None  # cluster-scoped
    mutating = admission.read_mutating_webhook_configuration("injector")
    assert mutating.kind == "MutatingWebhookConfiguration"
    assert mutating.api_version == "admissionregistration.k8s.io/v1"
    assert mutating.webhooks[0].client_config.service.port == 9443

    apiservice = kubernetes.client.ApiregistrationV1Api(client).list_api_service().items[0]
    assert apiservice.metadata.name == "v1beta1.metrics.k8s.io" and apiservice.spec.ca_bundle == root
    assert apiservice.spec.service.namespace == "kube-system" and apiservice.status.conditions[0].type == "Available"

    crd = kubernetes.client.ApiextensionsV1Api(client).read_custom_resource_definition("widgets.example.com")
    assert crd.spec.conversion.strategy == "Webhook"
    assert crd.spec.conversion.webhook.client_config.ca_bundle == root
    assert crd.spec.conversion.webhook.conversion_review_versions == ["v1"]

    certificates = kubernetes.client.CertificatesV1Api(client)
    [issued] = certificates.list_certificate_signing_request(field_selector="spec.signerName=" + (
        "kubernetes.io/kube-apiserver-client-kubelet")).items  # fmt: skip
    assert issued.spec.username == "system:node:worker-1"
    assert base64.b64decode(issued.status.certificate) == pki.valid.pem
    assert issued.status.conditions[0].type == "Approved"
    assert objects["csr"]["spec"]["request"] == issued.spec.request
    assert certificates.list_certificate_signing_request(field_selector="spec.signerName=example.com/x").items == []

    # Discovery, as kubectl and the client see it.
    groups = {g.name: g for g in kubernetes.client.ApisApi(client).get_api_versions().groups}
    assert {
        "admissionregistration.k8s.io",
        "apiregistration.k8s.io",
        "apiextensions.k8s.io",
        "certificates.k8s.io",
    } <= (set(groups))
    assert groups["certificates.k8s.io"].preferred_version.group_version == "certificates.k8s.io/v1"
    resources = {r.name: r for r in admission.get_api_resources().resources}
    assert resources["validatingwebhookconfigurations"].namespaced is False
    assert resources["validatingwebhookconfigurations"].kind == "ValidatingWebhookConfiguration"


def test_cluster_scoped_paths_watches_and_rbac(api: FakeApiServer, client: Any, pki: Pki) -> None:
    put_cluster_objects(api, pki)
    path = "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations"
    listed = get(api, path).json()
    assert listed["kind"] == "ValidatingWebhookConfigurationList"
    assert listed["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert get(api, path + "/policy").json()["metadata"]["name"] == "policy"
    assert get(
        api, "/apis/admissionregistration.k8s.io/v1/namespaces/x/validatingwebhookconfigurations"
    ).status_code == (404)
    assert get(api, "/apis/apps/v1/deployments").status_code == 404
    assert get(api, "/apis/certificates.k8s.io/v1beta1/certificatesigningrequests").status_code == 404

    # A namespaced grant does not reach cluster-scoped objects; a grant of other resources neither.
    api.allow(token="ns-only", namespaces=["team-a"])
    api.allow(token="secrets-only", resources=["secrets"])
    for token in ("ns-only", "secrets-only"):
        denied = requests.get(api.url + path, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        assert denied.status_code == 403
        message = denied.json()["message"]
        assert 'cannot list resource "validatingwebhookconfigurations" in API group "admissionregistration.k8s.io"' in (
            message
        ) and message.endswith("at the cluster scope")

    watch = kubernetes.watch.Watch()
    admission = kubernetes.client.AdmissionregistrationV1Api(client)
    version = admission.list_validating_webhook_configuration().metadata.resource_version

    def changes() -> None:
        time.sleep(0.3)
        api.put(
            "validatingwebhookconfigurations",
            kube_objects.webhook_configuration("Validating", "late", [("late.example.com", None, None)]),
        )
        api.delete("validatingwebhookconfigurations", "", "policy")

    threading.Thread(target=changes).start()
    seen = []
    for event in watch.stream(
        admission.list_validating_webhook_configuration, resource_version=version, timeout_seconds=5
    ):
        seen.append((event["type"], event["object"].metadata.name, event["object"].kind))
        if len(seen) == 2:
            watch.stop()
    assert seen == [
        ("ADDED", "late", "ValidatingWebhookConfiguration"),
        ("DELETED", "policy", "ValidatingWebhookConfiguration"),
    ]


# --------------------------------------------------------------------------- endpoints: Services, Ingresses, Gateways


def put_endpoint_objects(api: FakeApiServer) -> None:
    api.put(
        "ingresses",
        kube_objects.ingress(
            "shop",
            "web",
            [(["shop.example.com", "www.shop.example.com"], "shop-tls"), (["*.shop.example.com"], None)],
            load_balancer="192.0.2.10",
            annotations={"certscope.io/owner": "alice"},
        ),
    )
    api.put(
        "gateways",
        kube_objects.gateway(
            "edge",
            "public",
            [
                kube_objects.listener(
                    "https", 443, hostname="api.example.com", secrets=("api-tls", ("certs", "api-ecdsa"))
                ),
                kube_objects.listener(
                    "passthrough", 8443, hostname="db.example.com", protocol="TLS", mode="Passthrough"
                ),
                kube_objects.listener("http", 80, hostname=None, protocol="HTTP"),
            ],
            address="192.0.2.20",
        ),
    )
    api.put(
        "services",
        kube_objects.service(
            "payments",
            "ledger",
            [("metrics", 9090), ("https", 8443)],
            annotations={"certscope.io/probe": "true", "certscope.io/secret": "ledger-tls"},
        ),
    )


def test_official_client_reads_services_ingresses_and_gateways(api: FakeApiServer, client: Any) -> None:
    put_endpoint_objects(api)
    networking = kubernetes.client.NetworkingV1Api(client)
    [ingress] = networking.list_ingress_for_all_namespaces().items
    assert ingress.kind is None and ingress.metadata.namespace == "shop"  # list items carry no kind
    assert ingress.spec.ingress_class_name == "nginx"
    assert [(t.hosts, t.secret_name) for t in ingress.spec.tls] == [
        (["shop.example.com", "www.shop.example.com"], "shop-tls"),
        (["*.shop.example.com"], None),
    ]
    assert ingress.spec.rules[0].http.paths[0].backend.service.port.number == 8080
    assert ingress.status.load_balancer.ingress[0].ip == "192.0.2.10"
    assert ingress.metadata.annotations == {"certscope.io/owner": "alice"}
    read = networking.read_namespaced_ingress("web", "shop")
    assert read.kind == "Ingress" and read.api_version == "networking.k8s.io/v1"
    assert networking.list_namespaced_ingress("other").items == []

    core = kubernetes.client.CoreV1Api(client)
    [svc] = core.list_service_for_all_namespaces().items
    assert svc.spec.cluster_ip == "10.96.0.10" and [(p.name, p.port) for p in svc.spec.ports] == [
        ("metrics", 9090),
        ("https", 8443),
    ]
    assert core.read_namespaced_service("ledger", "payments").kind == "Service"

    # No model for Gateways in the official client (a CRD): read as a custom object, and
    # checked against the fields the v1 CRD (gateway.networking.k8s.io_gateways.yaml) requires.
    custom = kubernetes.client.CustomObjectsApi(client)
    listed = custom.list_cluster_custom_object("gateway.networking.k8s.io", "v1", "gateways")
    assert listed["kind"] == "GatewayList" and listed["apiVersion"] == "gateway.networking.k8s.io/v1"
    [gateway] = listed["items"]
    one = custom.get_namespaced_custom_object("gateway.networking.k8s.io", "v1", "edge", "gateways", "public")
    assert one["kind"] == "Gateway" and one["spec"] == gateway["spec"]
    assert set(gateway["spec"]) <= {"gatewayClassName", "listeners", "addresses", "infrastructure", "allowedListeners"}
    assert {"gatewayClassName", "listeners"} <= set(gateway["spec"])
    for entry in gateway["spec"]["listeners"]:
        assert (
            {"name", "port", "protocol"}
            <= set(entry)
            <= {"name", "hostname", "port", "protocol", "tls", "allowedRoutes"}
        )
        assert entry["protocol"] in ("HTTP", "HTTPS", "TLS", "TCP", "UDP")
        for ref in (entry.get("tls") or {}).get("certificateRefs", []):
            assert set(ref) <= {"group", "kind", "name", "namespace"} and "name" in ref
        assert (entry.get("tls") or {}).get("mode", "Terminate") in ("Terminate", "Passthrough")
    assert gateway["status"]["addresses"] == [{"type": "IPAddress", "value": "192.0.2.20"}]
    listed_in = custom.list_namespaced_custom_object("gateway.networking.k8s.io", "v1", "edge", "gateways")
    assert [g["metadata"]["name"] for g in listed_in["items"]] == ["public"]

    groups = {g.name for g in kubernetes.client.ApisApi(client).get_api_versions().groups}
    assert {"networking.k8s.io", "gateway.networking.k8s.io"} <= groups
    resources = {r.name: r for r in networking.get_api_resources().resources}
    assert resources["ingresses"].namespaced is True and resources["ingresses"].kind == "Ingress"


def test_endpoint_objects_watch_by_namespace_and_rbac(api: FakeApiServer, client: Any) -> None:
    put_endpoint_objects(api)
    path = "/apis/networking.k8s.io/v1/namespaces/shop/ingresses"
    assert names(get(api, path).json()) == ["shop/web"]
    assert get(api, "/apis/gateway.networking.k8s.io/v1/namespaces/edge/gateways/public").status_code == 200
    api.allow(token="shop-only", namespaces=["shop"], resources=["ingresses"])
    headers = {"Authorization": "Bearer shop-only"}
    assert requests.get(api.url + path, headers=headers, timeout=10).status_code == 200
    denied = requests.get(api.url + "/apis/networking.k8s.io/v1/ingresses", headers=headers, timeout=10)
    assert denied.status_code == 403
    assert (
        'cannot list resource "ingresses" in API group "networking.k8s.io" at the cluster scope'
        in (denied.json()["message"])
    )

    networking = kubernetes.client.NetworkingV1Api(client)
    version = networking.list_namespaced_ingress("shop").metadata.resource_version

    def changes() -> None:
        time.sleep(0.3)
        api.put("ingresses", kube_objects.ingress("other", "elsewhere", [(["x.example.com"], "x")]))
        api.put("ingresses", kube_objects.ingress("shop", "late", [(["late.example.com"], "late-tls")]))
        api.delete("ingresses", "shop", "web")

    threading.Thread(target=changes).start()
    seen = []
    watch = kubernetes.watch.Watch()
    for event in watch.stream(networking.list_namespaced_ingress, "shop", resource_version=version, timeout_seconds=5):
        seen.append((event["type"], event["object"].metadata.name, event["object"].kind))
        if len(seen) == 2:
            watch.stop()
    assert seen == [("ADDED", "late", "Ingress"), ("DELETED", "web", "Ingress")]
