"""The admin API: every route behind a token (401 without, 403 for a role that may not), lists
with the CLI's keys and cursors, retry and archive recorded with the token's name, dry runs that
change nothing, addresses masked without pii; then through ``smeg run``'s ops port."""

from __future__ import annotations

import json
import signal
import socket
import urllib.error
import urllib.request
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from adapters.alert_store import AlertStore
from domain.alert import AlertRule, Observation
from domain.message import Message
from smeg_actors.admin.api import create_app
from smeg_actors.admin.auth import Token, authenticate, digest, tokens_from
from smeg_actors.runtime.config import Settings
from tests.e2e.conftest import run_cli, smeg_env
from tests.e2e.test_cli import at, opened
from tests.e2e.test_fleet_cli import catch_up, fleet  # noqa: F401 - the fixture
from tests.e2e.test_run_processes import logged
from tests.waiting import wait_until

SECRETS = {
    "ann": "viewer-secret-0123456789",
    "bob": "operator-secret-0123456789",
    "cyd": "pii-secret-0123456789ab",
}
TOKENS = f"ann:viewer:{SECRETS['ann']},bob:operator:{SECRETS['bob']},cyd:operator+pii:{SECRETS['cyd']}"


@pytest.fixture
def api(fleet: tuple[str, dict[str, str]]) -> tuple[Any, str]:  # noqa: F811
    url, _ = fleet
    app = create_app(Settings(database_url=url), tokens_from({"SMEG_ADMIN_TOKENS": TOKENS}, {}))
    return app.test_client(), url


def call(client: Any, method: str, path: str, who: str | None, body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {SECRETS[who]}"} if who else {}
    return client.open(path, method=method, headers=headers, json=body)


def test_every_route_needs_a_token_and_a_role_that_may(api: tuple[Any, str]) -> None:
    client, _ = api
    for path in ("/api/messages", "/api/failures", "/api/openapi.json", "/api/providers", "/api/alerts"):
        assert call(client, "GET", path, None).status_code == 401
        wrong = client.get(path, headers={"Authorization": "Bearer not-a-secret-of-anyone"})
        assert wrong.status_code == 401 and wrong.get_json() == {"error": "unauthorized"}
        assert call(client, "GET", path, "ann").status_code == 200
    refused = call(client, "POST", "/api/messages/perm-0/retry", "ann", {"reason": "x"})
    assert refused.status_code == 403 and refused.get_json() == {"error": "forbidden"}


def test_lists_carry_the_cli_keys_and_page_with_a_cursor(api: tuple[Any, str]) -> None:
    client, _ = api
    seen: list[str] = []
    path = "/api/messages?limit=7"
    while path:
        page = call(client, "GET", path, "ann").get_json()
        seen += [m["message_id"] for m in page["items"]]
        path = f"/api/messages?limit=7&cursor={page['next']}" if page["next"] else ""
    assert len(seen) == len(set(seen)) == 18
    failed = call(client, "GET", "/api/messages?status=failed&provider=prov-a", "ann").get_json()["items"]
    assert {m["message_id"] for m in failed} == {"exhausted-0", "exhausted-1", "exhausted-2", "perm-0"}
    assert "7700900" not in failed[0]["to"]
    groups = call(client, "GET", "/api/failures", "ann").get_json()
    assert groups["next"] is None and groups["items"][0]["count"] == 12
    assert call(client, "GET", "/api/messages?limit=0", "ann").status_code == 400
    assert call(client, "GET", "/api/messages?cursor=nonsense", "ann").status_code == 400
    bogus = call(client, "GET", "/api/messages?status=bogus", "ann")  # not an empty list: a mistake
    assert bogus.status_code == 400 and "failed" in bogus.get_json()["error"]
    assert call(client, "GET", "/api/messages?channel=fax", "ann").status_code == 400


def test_a_message_with_its_timeline_masked_unless_pii(api: tuple[Any, str]) -> None:
    client, _ = api
    masked = call(client, "GET", "/api/messages/perm-0", "bob").get_json()
    assert masked["status"] == "failed" and [e["type"] for e in masked["events"]] == [
        "Received",
        "Attempted",
        "Failed",
    ]
    assert masked["body"] is None and "body" not in masked["events"][0] and "7700900" not in masked["to"]
    full = call(client, "GET", "/api/messages/perm-0", "cyd").get_json()
    assert full["to"].startswith("+44") and full["body"] and full["events"][0]["body"] == full["body"]
    assert call(client, "GET", "/api/messages/nope", "ann").status_code == 404


def test_retry_and_archive_record_the_token_name_and_dry_runs_change_nothing(api: tuple[Any, str]) -> None:
    client, url = api
    group = call(client, "GET", "/api/failures", "ann").get_json()["items"][0]
    dry = call(
        client, "POST", f"/api/failures/{group['group_id']}/retry", "bob", {"reason": "x", "dry_run": True}
    )
    assert dry.get_json() == {"count": 12}
    with opened(url) as store:
        assert store.get(Message.create_id("blocked-0")).status == "failed"
    done = call(
        client, "POST", f"/api/failures/{group['group_id']}/retry", "bob", {"reason": "unblocked"}
    ).get_json()
    assert done["count"] == 12 and done["bulk_id"] and done["refused"] == []
    # "What failed since …" still finds them once retried, whatever became of them
    catch_up(url)
    since = at(0).isoformat().replace("+00:00", "Z")
    found = call(client, "GET", f"/api/messages?failed_since={since}&limit=100", "ann").get_json()["items"]
    assert {m["message_id"] for m in found if m["message_id"].startswith("blocked-")} == {
        f"blocked-{n}" for n in range(12)
    }
    assert {m["status"] for m in found if m["message_id"].startswith("blocked-")} == {"received"}
    later = at(3600).isoformat().replace("+00:00", "Z")
    assert call(client, "GET", f"/api/messages?failed_since={later}", "ann").get_json()["items"] == []
    archived = call(client, "POST", "/api/messages/perm-0/archive", "cyd", {"reason": "test number"})
    assert archived.status_code == 200 and archived.get_json()["count"] == 1
    with opened(url) as store:
        retried = store.history(Message.create_id("blocked-3"))[-1]
        assert (retried.requested_by, retried.reason, retried.bulk_id) == (
            "bob",
            "unblocked",
            done["bulk_id"],
        )
        assert store.history(Message.create_id("perm-0"))[-1].by == "cyd"
    again = call(client, "POST", "/api/messages/perm-0/archive", "bob", {"reason": "again"})
    assert again.status_code == 409 and "not failed" in again.get_json()["error"]
    # A dry run of one message answers as the real request would: no promise it cannot keep
    delivered = call(client, "POST", "/api/messages/ok-0/retry", "bob", {"reason": "x", "dry_run": True})
    assert delivered.status_code == 409 and "already delivered" in delivered.get_json()["error"]
    unknown = call(client, "POST", "/api/messages/nope/archive", "bob", {"reason": "x", "dry_run": True})
    assert unknown.status_code == 404
    ok = call(client, "POST", "/api/messages/exhausted-1/retry", "bob", {"reason": "x", "dry_run": True})
    assert ok.get_json() == {"count": 1}
    for bad in (
        None,
        {"dry_run": True},
        {"reason": ""},
        {"reason": "a\nb"},
        {"reason": "colour \x1b[31m"},
        {"reason": "x", "dry_run": "yes"},
    ):
        assert call(client, "POST", "/api/messages/exhausted-0/retry", "bob", bad).status_code == 400


def test_tokens_are_checked_at_start_and_compared_by_hash() -> None:
    tokens = tokens_from(
        {"SMEG_ADMIN_TOKENS": "ops:operator+pii:" + "s" * 20},
        {"ci": {"role": "viewer", "sha256": digest("t" * 20).hex()}},
    )
    assert [(t.name, sorted(t.roles)) for t in tokens] == [("ops", ["operator", "pii"]), ("ci", ["viewer"])]
    found = authenticate(tokens, "Bearer " + "t" * 20)
    assert (
        isinstance(found, Token) and found.name == "ci" and found.may("viewer") and not found.may("operator")
    )
    assert authenticate(tokens, "Basic " + "t" * 20) is None and authenticate(tokens, None) is None
    for environ, tables, error in (
        ({"SMEG_ADMIN_TOKENS": "x:admin:" + "s" * 20}, {}, "role must be"),
        ({"SMEG_ADMIN_TOKENS": "x:viewer:short"}, {}, "at least 16"),
        ({"SMEG_ADMIN_TOKENS": "x y:viewer:" + "s" * 20}, {}, "name must be"),
        ({}, {"x": {"role": "viewer", "secret": "s"}}, "unknown key"),
        ({}, {"x": {"role": "viewer", "sha256": "abc"}}, "64 hex"),
        (
            {"SMEG_ADMIN_TOKENS": "x:viewer:" + "s" * 20},
            {"x": {"role": "viewer", "sha256": "0" * 64}},
            "twice",
        ),
    ):
        with pytest.raises(ValueError, match=error):
            tokens_from(environ, tables)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_smeg_run_serves_the_api_on_its_ops_port_only_with_tokens(
    tmp_path: Path, e2e_prefix: str, start_smeg: Any
) -> None:
    port, config = free_port(), tmp_path / "smeg.toml"
    config.write_text('[providers.sim]\ntype = "simulated"\n')
    env = smeg_env(
        SMEG_CONFIG=str(config),
        SMEG_DATABASE_URL=f"sqlite:///{tmp_path}/smeg.db",
        SMEG_QUEUE_PREFIX=e2e_prefix,
        SMEG_HTTP_PORT=str(port),
    )
    bad = run_cli(env | {"SMEG_ADMIN_TOKENS": "x:root:" + "s" * 20}, "run")
    assert bad.returncode == 2 and "role must be" in bad.stderr and "s" * 20 not in bad.stderr
    smeg = start_smeg(env | {"SMEG_ADMIN_TOKENS": TOKENS}, "run")
    wait_until(lambda: logged(smeg, "runtime_started") or smeg.assert_running(), 60, message="started")

    def get(path: str, secret: str | None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        try:
            with urllib.request.urlopen(
                urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
            ) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    assert get("/api/failures", None) == (401, {"error": "unauthorized"})
    assert get("/api/failures", SECRETS["ann"]) == (200, {"items": [], "next": None})
    status, spec = get("/api/openapi.json", SECRETS["ann"])
    assert status == 200 and "/api/failures/{group_id}/retry" in spec["paths"]
    assert SECRETS["bob"] not in smeg.output()  # secrets are never logged
    [listening] = logged(smeg, "ops_http_listening")
    assert listening["endpoints"] == ["/healthz", "/readyz", "/metrics", "/api", "/console/"]
    smeg.process.send_signal(signal.SIGTERM)
    assert smeg.wait(timeout=60) == 0
    off = start_smeg(env, "run")
    wait_until(lambda: logged(off, "runtime_started") or off.assert_running(), 60, message="started")
    assert get("/api/failures", SECRETS["ann"])[0] == 404  # no token configured: the API is off


def test_flags_are_listed_and_set_by_an_operator_with_the_token_name(api: tuple[Any, str]) -> None:
    client, _ = api
    listed = call(client, "GET", "/api/flags", "ann").get_json()
    assert {f["name"] for f in listed["items"]} >= {"delivery.paused", "redrive.auto"} and listed[
        "next"
    ] is None
    body = {"value": True, "reason": "incident 42", "for_seconds": 600}
    assert call(client, "POST", "/api/flags/delivery.paused", "ann", body).status_code == 403
    done = call(client, "POST", "/api/flags/delivery.paused", "bob", body)
    assert done.status_code == 200 and done.get_json()["by"] == "bob" and done.get_json()["expires_at"]
    paused = {f["name"]: f for f in call(client, "GET", "/api/flags", "ann").get_json()["items"]}[
        "delivery.paused"
    ]
    assert (paused["value"], paused["by"], paused["reason"]) == (True, "bob", "incident 42")
    for bad in (
        {"value": "yes", "reason": "x"},
        {"value": True},
        {"value": True, "reason": "x", "for_seconds": 0},
    ):
        assert call(client, "POST", "/api/flags/delivery.paused", "bob", bad).status_code == 400
    assert call(client, "POST", "/api/flags/no.such", "bob", body).status_code == 404


def test_a_filter_retries_or_archives_only_the_failed_messages_it_selects(api: tuple[Any, str]) -> None:
    client, url = api
    # Given the fleet: 12 refused through prov-b ("number … is blocked"), 4 failed through prov-a
    chosen = {"provider": "prov-b", "reason_contains": "blocked"}
    # When an operator asks first for a dry run, then for the retry
    dry = call(
        client, "POST", "/api/messages/retry", "bob", {"reason": "x", "dry_run": True, "filter": chosen}
    )
    assert dry.get_json() == {"count": 12}
    done = call(client, "POST", "/api/messages/retry", "bob", {"reason": "unblocked", "filter": chosen})
    # Then each selected message records the retry with who, why and one bulk id; no other changes
    answer = done.get_json()
    assert done.status_code == 200 and answer["count"] == 12 and answer["refused"] == []
    with opened(url) as store:
        retried = store.history(Message.create_id("blocked-11"))[-1]
        assert (retried.requested_by, retried.reason, retried.bulk_id) == (
            "bob",
            "unblocked",
            answer["bulk_id"],
        )
        assert store.get(Message.create_id("exhausted-0")).status == "failed"
    # And a filter archives the same way (prov-a's four), recorded with the token's name
    catch_up(url)
    archived = call(
        client, "POST", "/api/messages/archive", "cyd", {"reason": "test", "filter": {"provider": "prov-a"}}
    )
    assert archived.get_json()["count"] == 4
    with opened(url) as store:
        assert store.history(Message.create_id("perm-0"))[-1].by == "cyd"
    # A viewer may not; a missing, empty or unknown filter is refused, never "all failed"
    viewer = call(client, "POST", "/api/messages/retry", "ann", {"reason": "x", "filter": chosen})
    assert viewer.status_code == 403
    for bad in (
        {"reason": "x"},
        {"reason": "x", "filter": {}},
        {"reason": "x", "filter": {"status": "failed"}},
        {"reason": "x", "filter": {"provider": 3}},
        {"reason": "x", "filter": {"since": "yesterday"}},
    ):
        refused = call(client, "POST", "/api/messages/retry", "bob", bad)
        assert refused.status_code == 400, bad
        assert "filter" in refused.get_json()["error"] or "since" in refused.get_json()["error"]
    paths = call(client, "GET", "/api/openapi.json", "ann").get_json()["paths"]
    assert {"/api/messages/retry", "/api/messages/archive", "/api/flags", "/api/flags/{name}"} <= set(paths)


def test_an_operator_acknowledges_an_alert_recorded_with_the_token_name(api: tuple[Any, str]) -> None:
    client, url = api
    # Given a firing alert
    rule = AlertRule("provider_down", threshold=1, for_=0)
    seen = Observation("provider_down", "prov-b", 90.0, True, "prov-b down 90 s", {"provider": "prov-b"})
    with opened(url) as store:
        now = datetime.now(timezone.utc)
        AlertStore(store).change(
            "provider_down", "prov-b", lambda a: a.observe(seen, rule, now=now, clear_since=None), now=now
        )
    [alert] = call(client, "GET", "/api/alerts", "ann").get_json()["items"]
    assert alert["status"] == "firing" and alert["acknowledged_by"] is None
    path = f"/api/alerts/{alert['alert_id']}/ack"
    # When a viewer tries, then an operator acknowledges it
    assert call(client, "POST", path, "ann").status_code == 403
    acked = call(client, "POST", path, "bob")
    # Then it is recorded with the token's name, and the lists say so; an unknown id is 404
    assert acked.get_json() == {
        "alert_id": alert["alert_id"],
        "rule": "provider_down",
        "key": "prov-b",
        "acknowledged_by": "bob",
    }
    assert call(client, "GET", "/api/alerts", "ann").get_json()["items"][0]["acknowledged_by"] == "bob"
    assert call(client, "POST", "/api/alerts/nope-1/ack", "bob").status_code == 404
