"""The ops HTTP server of ``smeg run`` (``SMEG_HTTP_HOST``:``SMEG_HTTP_PORT``, 0 = off): one port
for a process group, served by its parent.

- ``GET /healthz``: 200 while the process's loops are alive (no I/O).
- ``GET /readyz``: 200 while consuming with the store answering, else 503 with
  ``{"ready": false, "reasons": [...]}`` (a cached answer; see ``readiness``).
- ``GET /metrics``: Prometheus text exposition, every process of the group added up.
- ``/api/…`` and ``/console/…``: the admin API and console (``smeg_actors.admin``), when a token
  is configured.

prometheus_client is imported only here and in ``metrics``, after ``use_directory``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"

Probe = Callable[[], tuple[bool, list[str]]]


#: The name of a group's own directory under ``SMEG_METRICS_DIR`` (or the temporary directory).
GROUP_PREFIX = "smeg-metrics-"


def metrics_directory(configured: str, parent: str | None, port: int) -> Path | None:
    """Where this process group's samples go: a directory of its own, ``smeg-metrics-PID`` under
    ``SMEG_METRICS_DIR`` (else the system's temporary directory), made by the group's parent (or
    a lone ``smeg run``); a child uses its parent's. None when the ops server is off (port 0):
    metrics stay in memory. ``smeg run`` calls this before anything imports the metrics.

    Only directories of this name whose process is gone are removed (a crashed run's), never
    the configured directory itself nor anything else in it."""
    if parent is not None:
        inherited = os.environ.get(MULTIPROC_VARIABLE)
        return Path(inherited) if inherited else None
    if port == 0:
        os.environ.pop(MULTIPROC_VARIABLE, None)
        return None
    base = Path(configured) if configured else Path(tempfile.gettempdir())
    _remove_dead_groups(base)
    directory = base / f"{GROUP_PREFIX}{os.getpid()}"
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_VARIABLE] = str(directory)
    return directory


def remove_directory(directory: Path | None) -> None:
    """At the group's exit: its samples are of no use to anyone after it."""
    if directory is not None and directory.name.startswith(GROUP_PREFIX):
        shutil.rmtree(directory, ignore_errors=True)


def _remove_dead_groups(base: Path) -> None:
    for old in base.glob(f"{GROUP_PREFIX}*"):
        pid = old.name.removeprefix(GROUP_PREFIX)
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(old, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class OpsServer:
    """Serves the three endpoints in daemon threads; ``start`` raises OSError if the port is taken."""

    def __init__(
        self, host: str, port: int, *, alive: Callable[[], bool], ready: Probe, admin: Any = None
    ) -> None:
        self.host, self.port, self.alive, self.ready = host, port, alive, ready
        #: The admin API's WSGI app (``/api``), or None: no token configured, the API is off.
        self.admin = admin
        self.server: WSGIServer | None = None

    def start(self) -> None:
        from prometheus_client.exposition import ThreadingWSGIServer

        self.server = make_server(
            self.host, self.port, self.app, server_class=ThreadingWSGIServer, handler_class=_Quiet
        )
        self.port = self.server.server_port
        threading.Thread(target=self.server.serve_forever, name="smeg-ops-http", daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
        if path in ("/api", "/console") or path.startswith(("/api/", "/console/")):
            if self.admin is None:
                return _answer(
                    start_response, "404 Not Found", {"error": "the admin API is off (no token set)"}
                )
            answered: Iterable[bytes] = self.admin(environ, start_response)
            return answered
        if method not in ("GET", "HEAD"):
            return _answer(start_response, "405 Method Not Allowed", {"error": "GET only"})
        if path == "/healthz":
            alive = self.alive()
            return _answer(start_response, "200 OK" if alive else "503 Service Unavailable", {"alive": alive})
        if path == "/readyz":
            ready, reasons = self.ready()
            status = "200 OK" if ready else "503 Service Unavailable"
            return _answer(start_response, status, {"ready": ready, "reasons": reasons})
        if path == "/metrics":
            answer: Iterable[bytes] = _metrics_app()(environ, start_response)
            return answer
        return _answer(start_response, "404 Not Found", {"error": "not found", "endpoints": ENDPOINTS})


ENDPOINTS = ["/healthz", "/readyz", "/metrics"]


def _answer(start_response: Callable[..., Any], status: str, body: dict[str, Any]) -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
    return [data]


def _metrics_app() -> Callable[..., Any]:
    """Every process's samples when a directory is in use, else this process's registry."""
    from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app, multiprocess

    if os.environ.get(MULTIPROC_VARIABLE):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return make_wsgi_app(registry)
    return make_wsgi_app(REGISTRY)
