"""A clean run raises no alert: ``smeg run`` with steady traffic, a provider that fails 2 % of its
calls for a moment (as real ones do), a canary, and every alert rule set far more sensitive than
its default; afterwards, ``smeg alerts --all --json`` must list nothing.

It is the quiet half of the 99/1 figure: the rules do not cry wolf on a healthy system (the loud
half, faults that must alert, is ``tests/e2e/test_alert_matrix.py``).

Run it from the project root (RabbitMQ on 127.0.0.1:5672; scripts/start_services.sh starts it)::

    .venv/bin/python scripts/quiet_run.py                    # 10 minutes at 20 requests/s
    .venv/bin/python scripts/quiet_run.py --minutes 2 --rate 50

Prints one line of figures. Exit 0: everything delivered and no alert; 1: an alert was recorded
or a request was not delivered; 2: the run itself could not be made.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pika

ROOT = Path(__file__).resolve().parent.parent
AMQP_URL = os.environ.get("SMEG_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")

#: Every rule far more sensitive than its default (see docs/architecture.md#alerts).
RULES = """
[alerts.rules.provider_down]
threshold = 15
clear_for = 5
[alerts.rules.failures]
threshold = 1
window = 60
[alerts.rules.retries_overdue]
threshold = 10
for = 0
[alerts.rules.backlog_growing]
threshold = 30
for = 0
[alerts.rules.restart_storm]
threshold = 1
[alerts.rules.projection_lag]
threshold = 30
for = 0
[alerts.rules.canary]
threshold = 5
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="how long traffic flows (default 10)")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second (default 20)")
    args = parser.parse_args(argv)
    if not (0 < args.minutes <= 600 and 0 < args.rate <= 2000):
        print("quiet_run: --minutes must be 0-600 and --rate 0-2000", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="smeg-quiet-") as folder:
        return run(Path(folder), args.minutes * 60, args.rate)


def run(folder: Path, seconds: float, rate: float) -> int:
    prefix = f"quiet-{uuid.uuid4().hex[:8]}"
    config = folder / "smeg.toml"
    config.write_text(
        '[providers.sim]\ntype = "simulated"\nlatency_ms = 20\ntransient_rate = 0.02\n'
        '[canary]\nto = "+447700900999"\ninterval = 10\n' + RULES
    )
    env = dict(
        os.environ,
        SMEG_DATABASE_URL=f"sqlite:///{folder}/smeg.db",
        SMEG_QUEUE_PREFIX=prefix,
        SMEG_CONFIG=str(config),
        SMEG_HTTP_PORT=str(free_port()),
        SMEG_BACKOFF_INITIAL="1",
        SMEG_MAX_ATTEMPTS="8",
        SMEG_LOG_FORMAT="json",
    )
    smeg_cli = [sys.executable, "-m", "smeg_actors"]
    log = (folder / "smeg.log").open("w")
    smeg = subprocess.Popen([*smeg_cli, "run"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        if not started(folder / "smeg.log", smeg):
            print("quiet_run: smeg run did not start; its log:\n" + (folder / "smeg.log").read_text()[-2000:])
            return 2
        published = publish(prefix, seconds, rate)
        drained = wait_for(lambda: delivered(smeg_cli, env) >= published, 120)
        listed = subprocess.run(
            [*smeg_cli, "alerts", "--all", "--json"], env=env, cwd=ROOT, capture_output=True, text=True
        )
        alerts = json.loads(listed.stdout) if listed.returncode == 0 else None
    finally:
        smeg.send_signal(signal.SIGTERM)
        code = smeg.wait(timeout=90)
        log.close()
    if alerts is None:
        print(f"quiet_run: smeg alerts failed: {listed.stderr.strip()[:300]}")
        return 2
    print(
        f"quiet run: {published} requests over {seconds:.0f} s at {rate:g}/s, "
        f"{'all delivered' if drained else 'NOT all delivered'}; alerts recorded: {len(alerts)}"
        + "".join(f"\n  {a['rule']} {a['key']} {a['status']}: {a['summary']}" for a in alerts)
        + f"; smeg run exited {code}"
    )
    return 0 if drained and not alerts and code == 0 else 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def started(log: Path, smeg: subprocess.Popen[bytes], timeout: float = 60) -> bool:
    return wait_for(lambda: smeg.poll() is None and "runtime_started" in log.read_text(), timeout)


def wait_for(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(1)
    return False


def publish(prefix: str, seconds: float, rate: float) -> int:
    """Requests at ``rate`` per second, confirmed by the broker, for ``seconds``."""
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.confirm_delivery()
    sent, began = 0, time.monotonic()
    while (elapsed := time.monotonic() - began) < seconds:
        while sent < elapsed * rate:
            body = {"message_id": f"{prefix}-{sent}", "channel": "sms", "to": "+447700900123", "body": "hi"}
            properties = pika.BasicProperties(delivery_mode=2)
            channel.basic_publish("", f"{prefix}.send", json.dumps(body).encode(), properties)
            sent += 1
        connection.sleep(0.05)
    connection.close()
    return sent


def delivered(smeg_cli: list[str], env: dict[str, str]) -> int:
    """Messages Delivered, by ``smeg report --format json`` (canaries are not in it)."""
    shown = subprocess.run(
        [*smeg_cli, "report", "--format", "json"], env=env, cwd=ROOT, capture_output=True, text=True
    )
    try:
        return sum(int(line["delivered"]) for line in json.loads(shown.stdout)["lines"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return -1


if __name__ == "__main__":
    sys.exit(main())
