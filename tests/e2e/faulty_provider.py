"""A local HTTP provider whose faults a test switches at will: down (503), flaky (20 % 503),
slow (half the calls take a second), sluggish (every call takes 3 s), throttling (429 with
Retry-After), refusing (400) or fine."""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

OK, DOWN, FLAKY, SLOW, THROTTLING, REFUSING = "ok", "down", "flaky", "slow", "throttling", "refusing"
SLUGGISH = "sluggish"  # every call takes 3 s, and succeeds


@dataclass(frozen=True)
class Call:
    at: float
    key: str
    status: int


class FaultyProvider:
    """Answers by ``mode``; every call is recorded with when it came and what it got."""

    def __init__(self, seed: int = 7) -> None:
        self.mode = OK
        self.calls: list[Call] = []
        self.lock = threading.Lock()
        self.rng = random.Random(seed)
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                sent = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                status, headers = provider.answer(self.headers["Idempotency-Key"])
                answer: dict[str, Any] = {"id": f"faulty-{time.monotonic_ns()}"}
                if status == 400:  # says why, quoting the number as real gateways do
                    answer = {"error": {"message": f"Number {sent['to']} is not a mobile number"}}
                body = json.dumps(answer).encode()
                self.send_response(status)
                for name, value in {**headers, "Content-Type": "application/json"}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 1024

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/send"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, key: str) -> tuple[int, dict[str, str]]:
        with self.lock:
            mode, roll = self.mode, self.rng.random()
        status, headers = 200, {}
        if mode == DOWN or (mode == FLAKY and roll < 0.2):
            status = 503
        elif mode == THROTTLING:
            status, headers = 429, {"Retry-After": "1"}
        elif mode == REFUSING:
            status = 400  # a permanent refusal: the message fails at once
        elif mode == SLOW and roll < 0.5:
            time.sleep(1.0)
        elif mode == SLUGGISH:
            time.sleep(3.0)
        with self.lock:
            self.calls.append(Call(time.monotonic(), key, status))
        return status, headers

    def calls_between(self, start: float, end: float) -> list[Call]:
        with self.lock:
            return [c for c in self.calls if start <= c.at < end]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
