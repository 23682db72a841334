"""Small promises of the ``smeg`` command line, as subprocesses: a ``--chart`` folder that does
not exist is a usage error, progress lines are drawn on a terminal only, shell completion works."""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

from tests.e2e.conftest import ROOT, run_cli, smeg_env
from tests.e2e.test_cli import opened, seed_delivered_after_one_backoff, seed_failed

SMEG = Path(sys.executable).with_name("smeg")  # the console script: completion is keyed on its name


def seeded(tmp_path: Path) -> dict[str, str]:
    url = f"sqlite:///{tmp_path}/smeg.db"
    with opened(url) as store:
        seed_delivered_after_one_backoff(store, "ok-1")
        seed_failed(store, "bad-1", permanent=True)
    return smeg_env(SMEG_DATABASE_URL=url)


# --- report --chart -------------------------------------------------------------------------


def test_a_chart_in_a_folder_that_does_not_exist_is_a_one_line_usage_error_and_writes_nothing(
    tmp_path: Path,
) -> None:
    env = seeded(tmp_path)
    missing = tmp_path / "no" / "such"
    result = run_cli(env, "report", "--chart", str(missing / "report.png"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"smeg: --chart: folder {missing} does not exist"]
    assert result.stdout == ""  # refused before the report is printed
    assert not (tmp_path / "no").exists()


def test_a_chart_whose_folder_is_a_file_is_a_usage_error(tmp_path: Path) -> None:
    env = seeded(tmp_path)
    (tmp_path / "plain").write_text("")
    result = run_cli(env, "report", "--chart", str(tmp_path / "plain" / "report.png"))
    assert result.returncode == 2, result.stderr
    assert "is not a folder" in result.stderr and "internal error" not in result.stderr


# --- progress lines -------------------------------------------------------------------------


def run_with_terminal_stderr(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    """Run ``smeg`` with stderr on a pseudo-terminal; return its exit code, stdout and stderr."""
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "smeg_actors", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=terminal,
        text=True,
    )
    os.close(terminal)
    chunks = []
    deadline = time.monotonic() + 60
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            process.kill()
            raise AssertionError(f"smeg {' '.join(args)} still writing to its terminal after 60 s")
        if not select.select([controller], [], [], left)[0]:
            continue
        try:
            chunk = os.read(controller, 4096)
        except OSError:  # EIO: the process closed its end
            break
        if not chunk:
            break
        chunks.append(chunk)
    stdout, _ = process.communicate(timeout=60)
    os.close(controller)
    return process.returncode, stdout, b"".join(chunks).decode(errors="replace")


def test_rebuild_progress_is_drawn_on_a_terminal_and_left_out_of_a_pipe(tmp_path: Path) -> None:
    env = seeded(tmp_path)
    code, _, stderr = run_with_terminal_stderr(env, "projections", "rebuild", "--workers", "1")
    assert code == 0, stderr
    assert "\r" in stderr and "events/s" in stderr  # the live line, on a terminal
    piped = run_cli(env, "projections", "rebuild", "--workers", "1")
    assert piped.returncode == 0, piped.stderr
    assert "rebuilt message_status: 8 events" in piped.stdout  # the results still are printed
    assert "\r" not in piped.stderr and "events/s" not in piped.stderr
    assert piped.stderr.strip() == ""


def test_the_readme_demo_of_400_messages_ends_every_one_and_exits_0(tmp_path: Path) -> None:
    # the README's first command (scripts/demo.sh runs exactly this), outage and redrive included
    result = run_cli(smeg_env(), "demo", "--database", str(tmp_path / "demo.db"), timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "smeg demo finished" in result.stdout
    counts = {
        label.strip(): int(number)
        for label, number in re.findall(r"^  ([a-z ,()]+?)\s+(\d+)$", result.stdout, flags=re.M)
    }
    final = counts["delivered"] + counts["failed, permanent"] + counts["failed, retries exhausted"]
    assert final == 400 and counts["redriven after the outage"] >= 0
    assert (tmp_path / "demo-report.png").stat().st_size > 10_000


def test_demo_prints_no_progress_line_when_stderr_is_not_a_terminal(tmp_path: Path) -> None:
    env = smeg_env()
    result = run_cli(env, "demo", "--messages", "3", "--database", str(tmp_path / "demo.db"), timeout=120)
    assert result.returncode == 0, result.stderr
    assert "smeg demo finished" in result.stdout
    assert "\r" not in result.stderr and " of 3" not in result.stderr


# --- shell completion -----------------------------------------------------------------------


def completion(**variables: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMEG_", "_SMEG_", "COMP_"))}
    return subprocess.run(
        [str(SMEG)], env={**env, **variables}, capture_output=True, text=True, timeout=60, check=False
    )


def test_each_documented_shell_gets_a_completion_script() -> None:
    assert SMEG.exists(), f"{SMEG} missing: pip install -e ."
    readme = (ROOT / "README.md").read_text()
    for shell, marker in (("bash", "complete -o nosort -F"), ("zsh", "#compdef smeg"), ("fish", "complete")):
        assert f"_SMEG_COMPLETE={shell}_source smeg" in readme
        result = completion(_SMEG_COMPLETE=f"{shell}_source")
        assert result.returncode == 0, result.stderr
        assert "_smeg_completion" in result.stdout and marker in result.stdout, result.stdout


def test_the_bash_script_registers_a_completion_that_completes_commands() -> None:
    script = subprocess.run(
        ["bash", "-c", f'eval "$(_SMEG_COMPLETE=bash_source {SMEG})" && complete -p smeg'],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert script.returncode == 0, script.stderr
    assert "_smeg_completion" in script.stdout
    words = completion(_SMEG_COMPLETE="bash_complete", COMP_WORDS="smeg proj", COMP_CWORD="1")
    assert words.stdout.split() == ["plain,projections"]
    sub = completion(_SMEG_COMPLETE="bash_complete", COMP_WORDS="smeg projections re", COMP_CWORD="2")
    assert sub.stdout.split() == ["plain,rebuild"]
