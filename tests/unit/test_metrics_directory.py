"""The metrics directory: a group's own, never the configured directory itself, none when off."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from smeg_actors.runtime.ops_http import MULTIPROC_VARIABLE, metrics_directory, remove_directory


def test_a_group_gets_a_directory_of_its_own_and_the_configured_one_is_left_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MULTIPROC_VARIABLE, "")  # restored after the test, whatever it sets
    monkeypatch.delenv(MULTIPROC_VARIABLE)
    (tmp_path / "smeg.db").write_text("the store")
    dead = tmp_path / "smeg-metrics-999999999"
    dead.mkdir()
    mine = metrics_directory(str(tmp_path), None, 9464)
    assert mine == tmp_path / f"smeg-metrics-{os.getpid()}" and mine.is_dir()
    assert os.environ[MULTIPROC_VARIABLE] == str(mine)
    assert (tmp_path / "smeg.db").read_text() == "the store"
    assert not dead.exists()  # a crashed run's samples are removed
    remove_directory(mine)
    assert not mine.exists() and tmp_path.exists()
    remove_directory(tmp_path)  # not a group's directory: never removed
    assert (tmp_path / "smeg.db").exists()


def test_with_the_ops_server_off_metrics_stay_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MULTIPROC_VARIABLE, str(tmp_path))
    assert metrics_directory("", None, 0) is None
    assert MULTIPROC_VARIABLE not in os.environ


def test_a_child_uses_its_parent_s(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(MULTIPROC_VARIABLE, str(tmp_path))
    assert metrics_directory("", "123", 9464) == tmp_path
    monkeypatch.delenv(MULTIPROC_VARIABLE)
    assert metrics_directory("", "123", 9464) is None
