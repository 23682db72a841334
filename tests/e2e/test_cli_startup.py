"""``smeg`` starts fast because each command imports only what it uses.

What a fresh interpreter has loaded after a command is checked, not how long it took: timings on a
shared machine are noise (``scripts/time_cli.py`` measures them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.conftest import ROOT
from tests.e2e.test_cli import opened, seed_delivered_after_one_backoff

#: Top-level packages no command may load before it runs (nor ``smeg --help``).
HEAVY = (
    "sqlalchemy",
    "eventsourcing",
    "psycopg",
    "orjson",
    "pika",
    "pykka",
    "pydantic",
    "structlog",
    "httpx",
)
#: What ``smeg history`` does not use: the broker, the actors, logging, providers, the read models.
NOT_FOR_HISTORY = ("pika", "pykka", "structlog", "httpx", "matplotlib")
NOT_FOR_HISTORY_MODULES = (
    "adapters.projections",
    "adapters.rabbitmq",
    "adapters.providers",
    "smeg_actors.runtime.bootstrap",
    "smeg_actors.cli.report",
    "smeg_actors.actors",
)

PROBE = """
import json, sys
{before}
print(json.dumps(sorted(sys.modules)))
"""


def loaded_after(before: str, env: dict[str, str] | None = None) -> set[str]:
    """The modules a fresh interpreter holds after running ``before``."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(before=before)],
        cwd=ROOT,
        env=env if env is not None else clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


def clean_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SMEG_")}
    env.update(PYTHONPATH=str(ROOT), **settings)
    return env


def packages(modules: set[str], names: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in names or m in names)


def test_importing_the_command_line_loads_no_database_broker_settings_or_logging_library() -> None:
    modules = loaded_after("import smeg_actors.cli.main")
    assert packages(modules, HEAVY) == []
    assert sorted(m for m in modules if m.startswith("adapters")) == []


@pytest.mark.parametrize("argv", [["--help"], ["--version"]])
def test_help_and_version_load_no_heavy_library(argv: list[str]) -> None:
    modules = loaded_after(
        "from smeg_actors.cli.main import main\nimport contextlib, io\n"
        f"with contextlib.redirect_stdout(io.StringIO()): rc = main({argv!r})\nassert rc == 0, rc"
    )
    assert packages(modules, HEAVY) == []


def test_help_lists_every_command_with_its_one_line_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "smeg_actors", "--help"],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split("Commands:")[1]
    names = [line.split()[0] for line in listed.strip().splitlines()]
    assert names == sorted(
        [
            "alerts",
            "archive",
            "audit",
            "check",
            "demo",
            "failures",
            "flags",
            "history",
            "messages",
            "projections",
            "providers",
            "redrive",
            "report",
            "retry",
            "run",
            "schedule",
            "settings",
        ]
    )
    assert "Print the timeline of one message." in listed


def test_history_loads_the_store_and_nothing_it_does_not_use(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/smeg.db"
    with opened(url) as store:
        seed_delivered_after_one_backoff(store, "ok-1")
    # Without SMEG_AMQP_URL: a URL given is checked with pika, by every command (exit 2 if malformed).
    env = clean_env(SMEG_DATABASE_URL=url)
    for argv in (["history", "ok-1"], ["history", "ok-1", "--json"]):
        modules = loaded_after(
            "from smeg_actors.cli.main import main\nimport contextlib, io\n"
            f"with contextlib.redirect_stdout(io.StringIO()): rc = main({argv!r})\nassert rc == 0, rc",
            env,
        )
        assert "adapters.event_store" in modules  # the probe did read the store
        assert packages(modules, NOT_FOR_HISTORY) == []
        assert sorted(m for m in modules if m.startswith(NOT_FOR_HISTORY_MODULES)) == []
