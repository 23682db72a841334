"""Alerts end to end: a provider disabled past the rule's threshold fires one alert, a webhook
and an Alertmanager-compatible server hear of it, ``smeg alerts`` lists it, ``ack`` records who
saw it, and enabling the provider resolves it (told to both)."""

from __future__ import annotations

import json
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.e2e.conftest import StubProvider, run_cli
from tests.e2e.test_run_processes import sqlite_env
from tests.waiting import wait_until


class Receiver:
    """Records every JSON body POSTed to it, by path."""

    def __init__(self) -> None:
        self.bodies: list[tuple[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                receiver.bodies.append((self.path, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def on(self, path: str) -> list[Any]:
        return [body for at, body in self.bodies if at == path]


def test_a_disabled_provider_fires_one_alert_to_every_sink_and_resolves_when_enabled(
    tmp_path: Path, stub: StubProvider, e2e_prefix: str, start_smeg: Any
) -> None:
    receiver = Receiver()
    config = tmp_path / "smeg.toml"
    config.write_text(
        f'[providers.default]\ntype = "http"\nurl = "{stub.url}"\n'
        "[alerts.rules.provider_down]\nthreshold = 1\nclear_for = 1\n"
        f'[alerts.sinks.hook]\ntype = "webhook"\nurl = "{receiver.url}/hook"\n'
        f'[alerts.sinks.am]\ntype = "alertmanager"\nurl = "{receiver.url}"\n'
    )
    env = sqlite_env(tmp_path, e2e_prefix, stub, SMEG_CONFIG=str(config))
    env.pop("SMEG_PROVIDER_URL")
    smeg = start_smeg(env, "run", "--processes", "2")
    assert run_cli(env, "alerts").stdout.strip() in ("no open alerts", "")

    # When the provider is disabled, past the rule's threshold of 1 s
    assert run_cli(env, "providers", "disable", "default", "--reason", "test", "--by", "ops").returncode == 0

    # Then one alert fires, and both sinks hear of it once
    wait_until(lambda: receiver.on("/hook"), 30, message=lambda: smeg.output()[-2000:])
    [fired] = receiver.on("/hook")
    assert (fired["status"], fired["rule"], fired["key"], fired["severity"]) == (
        "firing",
        "provider_down",
        "default",
        "critical",
    )
    assert fired["text"].startswith("[FIRING] provider_down default")
    wait_until(lambda: receiver.on("/api/v2/alerts"), 10, message="alertmanager told")
    [[am]] = receiver.on("/api/v2/alerts")
    assert am["labels"]["alertname"] == "smeg_provider_down" and "endsAt" not in am

    listed = json.loads(run_cli(env, "alerts", "--json").stdout)
    assert [(a["rule"], a["key"], a["status"]) for a in listed] == [("provider_down", "default", "firing")]
    acked = run_cli(env, "alerts", "ack", listed[0]["alert_id"], "--by", "alice")
    assert acked.returncode == 0, acked.stderr
    assert json.loads(run_cli(env, "alerts", "--json").stdout)[0]["acknowledged_by"] == "alice"
    unknown = run_cli(env, "alerts", "ack", "nope-1")
    assert (unknown.returncode, unknown.stderr.strip()) == (
        1,
        "smeg: no alert nope-1 (see smeg alerts --all)",
    )

    # When it is enabled again, the alert resolves: told to both, once
    assert run_cli(env, "providers", "enable", "default", "--by", "ops").returncode == 0
    wait_until(lambda: len(receiver.on("/hook")) == 2, 30, message="resolved told")
    assert receiver.on("/hook")[1]["status"] == "resolved"
    wait_until(
        lambda: "endsAt" in receiver.on("/api/v2/alerts")[-1][0],
        10,
        message="alertmanager told of the resolve",
    )
    assert run_cli(env, "alerts").stdout.strip() == "no open alerts"
    assert json.loads(run_cli(env, "alerts", "--all", "--json").stdout)[0]["status"] == "resolved"
    assert len(receiver.on("/hook")) == 2  # exactly one fire and one resolve across both processes

    smeg.process.send_signal(signal.SIGTERM)
    assert smeg.wait(timeout=60) == 0
    receiver.server.shutdown()
