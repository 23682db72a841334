"""How long whole ``smeg`` processes take to start and answer, against the start-up targets.

Run it from the repository (it needs a small SQLite store, made with ``smeg demo``, about 10 s)::

    .venv/bin/python scripts/time_cli.py                # median and min of 5 runs per command
    .venv/bin/python scripts/time_cli.py --runs 11 --check   # exit 1 when a median misses its target

Each figure is the wall-clock time of one whole process (``subprocess.run`` of ``.venv/bin/smeg``,
interpreter start-up included), in a temporary directory, with no ``SMEG_*`` variable but the
store's URL. Every command runs once untimed first (file cache, read-model tables). The figures of
``docs/benchmarks.md`` ("CLI start-up") come from this script.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MESSAGE_ID = "demo-00000"  # the first message ``smeg demo`` publishes


@dataclass(frozen=True)
class Case:
    """One command line to time, and its target (ms, median), if it has one."""

    args: tuple[str, ...]
    target_ms: float | None = None

    @property
    def label(self) -> str:
        return " ".join(("smeg", *self.args))


CASES = (
    Case(("--help",), 150),
    Case(("--version",), 150),
    Case(("history", MESSAGE_ID), 300),
    Case(("history", MESSAGE_ID, "--json"), 300),
    Case(("report",)),
    Case(("settings",)),
)


@dataclass(frozen=True)
class Timing:
    case: Case
    median_ms: float
    min_ms: float

    @property
    def missed(self) -> bool:
        return self.case.target_ms is not None and self.median_ms > self.case.target_ms


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per command (default 5)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a median misses its target")
    parser.add_argument(
        "--smeg",
        type=Path,
        default=Path(sys.executable).with_name("smeg"),
        help="the smeg executable (default: the one beside this Python)",
    )
    options = parser.parse_args(argv)
    if options.runs < 1:
        parser.error("--runs must be at least 1")
    if not options.smeg.exists():
        parser.error(f"{options.smeg} not found (pip install -e . first)")
    with tempfile.TemporaryDirectory(prefix="smeg-time-cli-") as folder:
        workdir = Path(folder)
        env = _environment(workdir / "smeg.db")
        _seed(options.smeg, workdir, env)
        timings = [_time(options.smeg, case, options.runs, workdir, env) for case in CASES]
    print(_table(timings, options.runs))
    missed = [t.case.label for t in timings if t.missed]
    if missed:
        print(f"missed: {', '.join(missed)}", file=sys.stderr)
    return 1 if options.check and missed else 0


def _environment(store: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("SMEG_")}
    env["SMEG_DATABASE_URL"] = f"sqlite:///{store}"
    return env


def _seed(smeg: Path, workdir: Path, env: dict[str, str]) -> None:
    """A small store (a few messages, read models beside it) made by ``smeg demo``."""
    database = workdir / "smeg.db"
    done = subprocess.run(
        [str(smeg), "demo", "--messages", "5", "--database", str(database)],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0 or not database.exists():
        sys.exit(f"smeg demo failed (exit {done.returncode}):\n{done.stderr[-2000:]}")


def _time(smeg: Path, case: Case, runs: int, workdir: Path, env: dict[str, str]) -> Timing:
    command = [str(smeg), *case.args]
    seconds = []
    for run in range(runs + 1):  # the first run warms up and is not counted
        started = time.perf_counter()
        done = subprocess.run(command, cwd=workdir, env=env, capture_output=True, check=False)
        elapsed = time.perf_counter() - started
        if done.returncode != 0:
            error = done.stderr.decode(errors="replace").strip()[-500:]
            sys.exit(f"{case.label} exited {done.returncode}: {error}")
        if run:
            seconds.append(elapsed)
    return Timing(case, statistics.median(seconds) * 1000, min(seconds) * 1000)


def _table(timings: list[Timing], runs: int) -> str:
    width = max(len(t.case.label) for t in timings)
    lines = [f"{'command':<{width}}  {'median ms':>9}  {'min ms':>7}  {'target ms':>9}  (runs: {runs})"]
    for timing in timings:
        target = "-" if timing.case.target_ms is None else f"{timing.case.target_ms:.0f}"
        verdict = "" if timing.case.target_ms is None else ("MISSED" if timing.missed else "ok")
        lines.append(
            f"{timing.case.label:<{width}}  {timing.median_ms:>9.0f}  {timing.min_ms:>7.0f}"
            f"  {target:>9}  {verdict}".rstrip()
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
