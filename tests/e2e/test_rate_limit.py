"""A provider's rate_limit holds across the processes of ``smeg run --processes 2``: each live
process (known by its heartbeats in the store) takes its share."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from tests.e2e.conftest import StubProvider, publish_requests, smeg_env
from tests.e2e.test_run_processes import logged, started_group
from tests.waiting import wait_until

LIMIT = 20.0


def test_the_rate_limit_holds_across_two_processes(
    tmp_path: Path, stub: StubProvider, e2e_prefix: str, start_smeg: Any
) -> None:
    # Given a provider limited to 20 messages/s and a group of two delivery processes
    config = tmp_path / "smeg.toml"
    config.write_text(f'[providers.limited]\ntype = "http"\nurl = "{stub.url}"\nrate_limit = {LIMIT:g}\n')
    env = smeg_env(
        SMEG_DATABASE_URL=f"sqlite:///{tmp_path}/smeg.db",
        SMEG_QUEUE_PREFIX=e2e_prefix,
        SMEG_CONFIG=str(config),
    )
    smeg = start_smeg(env, "run", "--processes", "2")
    pids = started_group(smeg)
    wait_until(
        lambda: (
            {r["pid"] for r in logged(smeg, "delivery_processes_seen") if r.get("live") == 2} == set(pids)
        ),
        20,
        message="the processes know each other",
    )

    # When many more requests arrive than the limit lets through at once
    ids = [f"rl-{i}" for i in range(300)]
    publish_requests(e2e_prefix, ids)

    # Then they are sent at the limit, not above it, whichever process sends them
    wait_until(lambda: len(stub.calls) == len(ids), 60, message="every message sent")
    times = sorted(stub.times)
    busy = times[: int(len(times) * 0.8)]  # while both processes still have a backlog
    measured = (len(busy) - 1) / (busy[-1] - busy[0])
    print(f"rate limit {LIMIT:g}/s across 2 processes: measured {measured:.1f}/s over {len(busy)} calls")
    assert abs(measured - LIMIT) <= 0.1 * LIMIT, f"{measured:.1f}/s"
    assert all(count == 1 for count in stub.calls.values())
    smeg.process.send_signal(signal.SIGTERM)
    assert smeg.wait(timeout=60) == 0
