"""The ops endpoints' answers, and readiness: its reasons, a slow store, a group's files."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from smeg_actors.runtime import metrics  # noqa: F401  (registers the metrics)
from smeg_actors.runtime import readiness as readiness_module
from smeg_actors.runtime.ops_http import OpsServer
from smeg_actors.runtime.readiness import Readiness, group_readiness


def call(server: OpsServer, path: str, method: str = "GET") -> tuple[str, Any]:
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        answer["status"], answer["headers"] = status, dict(headers)

    body = b"".join(server.app({"PATH_INFO": path, "REQUEST_METHOD": method}, start_response))
    if answer["headers"].get("Content-Type") == "application/json":
        return answer["status"], json.loads(body)
    return answer["status"], body.decode()


def server(alive: bool = True, ready: tuple[bool, list[str]] = (True, [])) -> OpsServer:
    return OpsServer("127.0.0.1", 0, alive=lambda: alive, ready=lambda: ready)


def test_healthz_and_readyz_answer_by_their_probes() -> None:
    assert call(server(), "/healthz") == ("200 OK", {"alive": True})
    assert call(server(alive=False), "/healthz") == ("503 Service Unavailable", {"alive": False})
    assert call(server(), "/readyz") == ("200 OK", {"ready": True, "reasons": []})
    unready = server(ready=(False, ["store unavailable: x"]))
    assert call(unready, "/readyz") == (
        "503 Service Unavailable",
        {"ready": False, "reasons": ["store unavailable: x"]},
    )


def test_unknown_paths_and_methods_are_refused() -> None:
    assert call(server(), "/nope")[0] == "404 Not Found"
    assert call(server(), "/readyz", "POST")[0] == "405 Method Not Allowed"


def test_metrics_are_the_prometheus_text_exposition() -> None:
    status, text = call(server(), "/metrics")
    assert status == "200 OK" and "# TYPE smeg_attempts_total counter" in text


def probe(**kw: Any) -> Readiness:
    args = {"ping_store": lambda: None, "consuming": lambda: True, "stopping": lambda: None} | kw
    return Readiness(**args)


def test_readiness_names_every_reason() -> None:
    ready = probe()
    ready.store_error = None
    assert ready.state() == (True, [])
    broken = probe(consuming=lambda: False, stopping=lambda: "signal")
    broken.store_error = "store unavailable: OperationalError: gone"
    assert broken.state() == (
        False,
        ["stopping: signal", "not consuming from the broker", "store unavailable: OperationalError: gone"],
    )


def test_a_store_call_that_hangs_makes_it_unready_before_it_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    ready = probe()
    ready.store_error = None
    ready.pinging_since = time.monotonic() - readiness_module.SLOW_STORE - 1
    ok, reasons = ready.state()
    assert not ok and reasons[0].startswith("store not answering for")


def test_a_group_is_ready_while_every_child_s_fresh_file_says_so(tmp_path: Path) -> None:
    (tmp_path / "ready-1.json").write_text(json.dumps({"ready": True, "reasons": []}))
    (tmp_path / "ready-2.json").write_text(
        json.dumps({"ready": False, "reasons": ["not consuming from the broker"]})
    )
    assert group_readiness(tmp_path, [1]) == (True, [])
    assert group_readiness(tmp_path, [1, 2]) == (False, ["process 2: not consuming from the broker"])
    assert group_readiness(tmp_path, [1, 3]) == (False, ["process 3: not checked yet"])
    old = time.time() - 60
    os.utime(tmp_path / "ready-1.json", (old, old))
    ok, reasons = group_readiness(tmp_path, [1])
    assert not ok and reasons[0].startswith("process 1: no check for")


def test_a_child_writes_its_answer_where_the_parent_reads_it(tmp_path: Path) -> None:
    child = probe(write_to=tmp_path)
    child.start()
    try:
        deadline = time.monotonic() + 5
        while not group_readiness(tmp_path, [os.getpid()])[0] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert group_readiness(tmp_path, [os.getpid()]) == (True, [])
    finally:
        child.stop()


def test_a_sink_failure_names_the_host_never_the_url(monkeypatch: pytest.MonkeyPatch) -> None:
    import httpx

    from adapters.alert_sinks import HttpSink, SinkError
    from domain.alert import Alert

    sink = HttpSink("hook", "webhook", "https://user:pw@hooks.example.com/T000/SECRET")

    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, request=request)

    sink.client = httpx.Client(transport=httpx.MockTransport(refuse))
    alert = Alert.open(
        "provider_down", "a", now=__import__("datetime").datetime.now(__import__("datetime").UTC)
    )
    with pytest.raises(SinkError) as raised:
        sink.notify(alert)
    assert str(raised.value) == "HTTP 403 from hooks.example.com"
    assert "SECRET" not in str(raised.value) and "pw" not in str(raised.value)


def test_settings_show_a_sink_s_host_only() -> None:
    from smeg_actors.cli.settings import setting_rows
    from smeg_actors.runtime.config import Settings

    mail = {"type": "smtp", "host": "mail.example.com", "to": ["ops@example.com"], "username": "u"}
    settings = Settings(
        alerts={
            "sinks": {"hook": {"type": "webhook", "url": "https://hooks.example.com/T0/SECRET"}, "mail": mail}
        }
    )
    [row] = [r for r in setting_rows(settings) if r["setting"] == "alerts"]
    assert row["value"] == {
        "sinks": {
            "hook": {"type": "webhook", "host": "hooks.example.com"},
            "mail": {"type": "smtp", "host": "mail.example.com"},
        }
    }
