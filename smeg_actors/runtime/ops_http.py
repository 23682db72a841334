"""The ops HTTP server of ``smeg run`` (``SMEG_HTTP_HOST``:``SMEG_HTTP_PORT``, 0 = off): one port
for a process group, served by its parent.

- ``GET /healthz``: 200 while the process's loops are alive (no I/O).
- ``GET /readyz``: 200 while consuming with the store answering, else 503 with
  ``{"ready": false, "reasons": [...]}`` (a cached answer; see ``readiness``).
- ``GET /metrics``: Prometheus text exposition, every process of the group added up.

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


def use_directory(directory: Path, *, clean: bool) -> None:
    """Write this process's (and its children's) samples to ``directory``; ``clean``: the parent
    of the group starts it empty, so no sample of an earlier run is added in. Must run before
    prometheus_client is imported."""
    if clean and directory.exists():
        shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True)
    os.environ[MULTIPROC_VARIABLE] = str(directory)


def metrics_directory(configured: str, parent: str | None) -> Path:
    """Where this process group's samples go: ``SMEG_METRICS_DIR``, else a directory of its own
    under the system's temporary directory. The group's parent (or a lone ``smeg run``) empties
    it; a child uses its parent's. ``smeg run`` calls this before anything imports the metrics."""
    if parent is not None and os.environ.get(MULTIPROC_VARIABLE):
        return Path(os.environ[MULTIPROC_VARIABLE])
    directory = (
        Path(configured) if configured else Path(tempfile.gettempdir()) / f"smeg-metrics-{os.getpid()}"
    )
    use_directory(directory, clean=parent is None)
    return directory


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class OpsServer:
    """Serves the three endpoints in daemon threads; ``start`` raises OSError if the port is taken."""

    def __init__(self, host: str, port: int, *, alive: Callable[[], bool], ready: Probe) -> None:
        self.host, self.port, self.alive, self.ready = host, port, alive, ready
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
