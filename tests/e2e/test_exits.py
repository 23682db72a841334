"""How ``smeg run`` ends: a malformed setting is exit 2 in one line, and every exit is logged."""

from __future__ import annotations

import json
from pathlib import Path

import pika
import pytest

from adapters.rabbitmq import QUEUE_ARGUMENTS
from smeg_actors.runtime import serve as serve_module
from tests.e2e.conftest import AMQP_URL, StubProvider, run_cli, smeg_env
from tests.logcapture import captured_logs, json_lines


@pytest.mark.parametrize(
    "url",
    [
        "amqp://guest:s3cret@127.0.0.1:notaport/%2F",
        "amqp://[::1",
        "amqp://guest:guest@127.0.0.1:5672/%2F?heartbeat=abc",
        "amqp://guest:guest@127.0.0.1:99999/%2F",
    ],
)
@pytest.mark.parametrize("command", ["run", "check"])
def test_a_malformed_amqp_url_is_an_invalid_setting_exit_2_in_one_line(url: str, command: str) -> None:
    result = run_cli(smeg_env(SMEG_AMQP_URL=url), command)

    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith("smeg: invalid setting SMEG_AMQP_URL")
    assert "s3cret" not in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_an_exit_is_logged_at_error_with_its_code_and_cause_unless_it_was_asked_for() -> None:
    with captured_logs("info", serve_module) as out:
        assert serve_module.exiting(4, "broker connection lost: StreamLostError") == 4
        assert serve_module.exiting(0, "signal") == 0
    lines = json_lines(out)
    exits = [(x["level"], x["exit_code"], x["cause"]) for x in lines if x["event"] == "process_exiting"]
    assert exits == [("error", 4, "broker connection lost: StreamLostError"), ("info", 0, "signal")]


def test_check_names_the_policy_for_a_send_queue_of_an_older_install(
    e2e_prefix: str, stub: StubProvider, tmp_path: Path
) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    connection.channel().queue_declare(f"{e2e_prefix}.send", durable=True, arguments=QUEUE_ARGUMENTS)
    connection.close()
    env = smeg_env(
        SMEG_QUEUE_PREFIX=e2e_prefix,
        SMEG_DATABASE_URL=f"sqlite:///{tmp_path}/smeg.db",
        SMEG_PROVIDER_URL=stub.url,
    )

    result = run_cli(env, "check")

    assert result.returncode == 0, result.stderr + result.stdout
    [broker] = [line for line in result.stdout.splitlines() if line.startswith("broker:")]
    assert broker.startswith(f"broker: ok (warning: {e2e_prefix}.send has no poison-message handling; run: ")
    assert f"rabbitmqctl set_policy {e2e_prefix}-send-poison" in broker


def test_version_prints_the_package_version_and_exits_0_whatever_the_settings() -> None:
    from importlib.metadata import version

    result = run_cli(smeg_env(SMEG_AMQP_URL="not a url"), "--version")

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"smeg {version('smeg')}"


def test_store_errors_name_their_cause_not_the_pools_timeout() -> None:
    port = _closed_port()
    cases = {
        f"postgresql+psycopg://postgres@127.0.0.1:{port}/test": (
            f"PostgreSQL at 127.0.0.1:{port}: Connection refused"
        ),
        "postgresql+psycopg://postgres@127.0.0.1:5432/no_such_db": 'database "no_such_db" does not exist',
    }
    for url, cause in cases.items():
        result = run_cli(smeg_env(SMEG_DATABASE_URL=url), "history", "m-1")

        assert result.returncode == 3, result.stderr
        [line] = result.stderr.splitlines()
        assert cause in line
        assert "couldn't get a connection" not in line


def test_a_broker_that_refuses_is_named_with_its_address_and_cause(tmp_path: Path) -> None:
    port = _closed_port()
    env = smeg_env(
        SMEG_AMQP_URL=f"amqp://guest:guest@127.0.0.1:{port}/%2F",
        SMEG_DATABASE_URL=f"sqlite:///{tmp_path}/smeg.db",
        SMEG_PROVIDER_URL=f"http://127.0.0.1:{port}/",
    )

    result = run_cli(env, "check")

    assert result.returncode == 3
    [broker] = [line for line in result.stdout.splitlines() if line.startswith("broker:")]
    assert f"RabbitMQ at 127.0.0.1:{port}" in broker
    assert "Connection refused" in broker


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_settings_lists_every_setting_with_its_value_and_masks_passwords(tmp_path: Path) -> None:
    from smeg_actors.runtime.config import Settings

    config = tmp_path / "smeg.toml"
    config.write_text(
        '[providers.gateway]\ntype = "http"\nurl = "https://x.example/send"\ntoken_env = "TOKEN"\n'
    )
    env = smeg_env(
        SMEG_AMQP_URL="amqp://smeg:s3cret@rabbit.internal:5672/%2F",
        SMEG_DATABASE_URL="postgresql+psycopg://smeg:pw-123@db.internal/smeg",
        SMEG_WORKERS="7",
        TOKEN="tok-SECRET",
    )

    result = run_cli(env, "--config", str(config), "settings", "--json")

    assert result.returncode == 0, result.stderr
    rows = {row["variable"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {f"SMEG_{name.upper()}" for name in Settings.model_fields}
    assert rows["SMEG_WORKERS"]["value"] == 7 and rows["SMEG_WORKERS"]["default"] == 16
    assert rows["SMEG_AMQP_URL"]["value"] == "amqp://smeg:***@rabbit.internal:5672/%2F"
    assert rows["SMEG_PROVIDERS"]["value"] == {"gateway": {"type": "http"}}
    for secret in ("s3cret", "pw-123", "tok-SECRET"):
        assert secret not in result.stdout + result.stderr
    text = run_cli(env, "--config", str(config), "settings")
    assert text.returncode == 0 and "SMEG_WORKERS" in text.stdout and "s3cret" not in text.stdout
