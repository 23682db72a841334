"""load_settings: defaults, SMEG_* environment variables, the TOML file, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from domain.backoff import BackoffPolicy
from smeg_actors.runtime.config import Settings, SettingsError, load_settings

# --- defaults -------------------------------------------------------------------------------


DEFAULTS = {
    "database_url": "sqlite:///smeg.db",
    "amqp_url": "amqp://guest:guest@127.0.0.1:5672/%2F",
    "queue_prefix": "smeg",
    "workers": 16,
    "backoff_initial": 60.0,
    "backoff_factor": 3.0,
    "backoff_max": 3600.0,
    "backoff_jitter": 0.0,
    "max_attempts": 5,
    "heartbeat": 30,
    "shutdown_timeout": 30.0,
    "store_grace": 30.0,
    "log_format": "auto",
    "processes": 1,
}


@pytest.mark.parametrize(("name", "expected"), sorted(DEFAULTS.items()))
def test_an_empty_environment_gives_the_documented_default(name: str, expected: object) -> None:
    settings = load_settings({})

    assert getattr(settings, name) == expected


def test_an_empty_environment_configures_no_provider_and_no_schema() -> None:
    settings = load_settings({})

    assert settings.providers == {}
    assert settings.provider_configs() == {}
    assert settings.database_schema == ""


def test_variables_without_the_smeg_prefix_or_of_unknown_settings_are_ignored() -> None:
    settings = load_settings(
        {"WORKERS": "3", "SMEG_DEBUG": "1", "SMEG_TEST_POSTGRES_URL": "x", "PATH": "/bin"}
    )

    assert settings == load_settings({})


# --- environment variables ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "raw", "name", "expected"),
    [
        (
            "SMEG_DATABASE_URL",
            "postgresql+psycopg://u@db:5432/smeg",
            "database_url",
            "postgresql+psycopg://u@db:5432/smeg",
        ),
        ("SMEG_DATABASE_SCHEMA", "tenant_a", "database_schema", "tenant_a"),
        ("SMEG_AMQP_URL", "amqps://u:p@mq:5671/prod", "amqp_url", "amqps://u:p@mq:5671/prod"),
        ("SMEG_QUEUE_PREFIX", "prod.sms", "queue_prefix", "prod.sms"),
        ("SMEG_WORKERS", "8", "workers", 8),
        ("SMEG_BACKOFF_INITIAL", "0.5", "backoff_initial", 0.5),
        ("SMEG_BACKOFF_FACTOR", "2", "backoff_factor", 2.0),
        ("SMEG_BACKOFF_MAX", "120", "backoff_max", 120.0),
        ("SMEG_BACKOFF_JITTER", "0.25", "backoff_jitter", 0.25),
        ("SMEG_MAX_ATTEMPTS", "7", "max_attempts", 7),
        ("SMEG_HEARTBEAT", "5", "heartbeat", 5),
        ("SMEG_SHUTDOWN_TIMEOUT", "12.5", "shutdown_timeout", 12.5),
        ("SMEG_STORE_GRACE", "45", "store_grace", 45.0),
        ("SMEG_STALE_AFTER", "2", "stale_after", 2.0),
        ("SMEG_LOG_FORMAT", "json", "log_format", "json"),
        ("SMEG_LOG_LEVEL", "debug", "log_level", "debug"),
        ("SMEG_PROVIDER_URL", "http://sms.example/send", "provider_url", "http://sms.example/send"),
        ("SMEG_PROCESSES", "4", "processes", 4),
        ("SMEG_PROCESSES", "auto", "processes", "auto"),
    ],
)
def test_an_environment_variable_is_parsed_to_the_setting_type(
    variable: str, raw: str, name: str, expected: object
) -> None:
    settings = load_settings({variable: raw})

    value = getattr(settings, name)
    assert value == expected
    assert type(value) is type(expected)


def test_settings_are_frozen() -> None:
    settings = load_settings({})

    with pytest.raises(Exception):  # noqa: B017 - pydantic's ValidationError for a frozen model
        settings.workers = 2  # type: ignore[misc]


# --- TOML file ------------------------------------------------------------------------------


TOML = """
database_url = "postgresql+psycopg://smeg@db/smeg"
workers = 4
backoff_initial = 10
backoff_jitter = 0.1
log_format = "console"

[providers.twilio]
type = "twilio"
account_sid = "AC123"

[providers.backup]
type = "http"
url = "http://backup.example/send"
"""


def write(tmp_path: Path, text: str, name: str = "smeg.toml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_a_toml_file_sets_values_and_provider_tables(tmp_path: Path) -> None:
    path = write(tmp_path, TOML)

    settings = load_settings({}, str(path))

    assert settings.database_url == "postgresql+psycopg://smeg@db/smeg"
    assert settings.workers == 4
    assert settings.backoff_initial == 10.0
    assert settings.backoff_jitter == 0.1
    assert settings.log_format == "console"
    assert settings.providers == {
        "twilio": {"type": "twilio", "account_sid": "AC123"},
        "backup": {"type": "http", "url": "http://backup.example/send"},
    }
    assert settings.heartbeat == 30  # untouched settings keep their defaults


def test_environment_variables_win_over_the_toml_file(tmp_path: Path) -> None:
    path = write(tmp_path, TOML)

    settings = load_settings({"SMEG_WORKERS": "32", "SMEG_LOG_FORMAT": "json"}, str(path))

    assert settings.workers == 32
    assert settings.log_format == "json"
    assert settings.database_url == "postgresql+psycopg://smeg@db/smeg"
    assert set(settings.providers) == {"twilio", "backup"}


def test_smeg_config_names_the_file_when_no_path_is_given(tmp_path: Path) -> None:
    path = write(tmp_path, "workers = 3\n")

    settings = load_settings({"SMEG_CONFIG": str(path)})

    assert settings.workers == 3


def test_an_explicit_config_path_wins_over_smeg_config(tmp_path: Path) -> None:
    chosen = write(tmp_path, "workers = 3\n", "chosen.toml")
    other = write(tmp_path, "workers = 9\n", "other.toml")

    settings = load_settings({"SMEG_CONFIG": str(other)}, str(chosen))

    assert settings.workers == 3


def test_a_providers_environment_variable_cannot_replace_the_toml_provider_tables(tmp_path: Path) -> None:
    path = write(tmp_path, TOML)

    settings = load_settings({"SMEG_PROVIDERS": "nonsense"}, str(path))

    assert set(settings.providers) == {"twilio", "backup"}


# --- invalid values -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("SMEG_WORKERS", "abc"),
        ("SMEG_WORKERS", "0"),
        ("SMEG_WORKERS", "2.5"),
        ("SMEG_BACKOFF_JITTER", "1.5"),
        ("SMEG_BACKOFF_FACTOR", "0.5"),
        ("SMEG_BACKOFF_INITIAL", "-1"),
        ("SMEG_MAX_ATTEMPTS", "0"),
        ("SMEG_HEARTBEAT", "0"),
        ("SMEG_SHUTDOWN_TIMEOUT", "0"),
        ("SMEG_LOG_FORMAT", "xml"),
        ("SMEG_LOG_LEVEL", "verbose"),
        ("SMEG_DATABASE_URL", "mysql://x"),
        ("SMEG_AMQP_URL", "http://x"),
        ("SMEG_QUEUE_PREFIX", "has space"),
        ("SMEG_PROCESSES", "0"),
        ("SMEG_PROCESSES", "65"),
        ("SMEG_PROCESSES", "two"),
        ("SMEG_PROCESSES", "1.5"),
    ],
)
def test_an_invalid_value_raises_a_one_line_settings_error_naming_the_variable(
    variable: str, raw: str
) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({variable: raw})

    message = str(caught.value)
    assert variable in message
    assert "\n" not in message


@pytest.mark.parametrize("variable", ["SMEG_BACKOFF_INITIAL", "SMEG_BACKOFF_FACTOR", "SMEG_BACKOFF_MAX"])
def test_an_infinite_backoff_parameter_is_a_settings_error_not_a_later_crash(variable: str) -> None:
    # BackoffPolicy refuses non-finite numbers, so settings that accept them break `settings.backoff`
    with pytest.raises(SettingsError, match=variable):
        load_settings({variable: "inf"}).backoff  # noqa: B018


def test_an_invalid_value_in_the_toml_file_is_named_like_its_variable(tmp_path: Path) -> None:
    path = write(tmp_path, "workers = 0\n")

    with pytest.raises(SettingsError, match="SMEG_WORKERS"):
        load_settings({}, str(path))


def test_an_unknown_key_in_the_toml_file_is_a_settings_error_naming_it(tmp_path: Path) -> None:
    path = write(tmp_path, "wrokers = 4\n")

    with pytest.raises(SettingsError, match="SMEG_WROKERS") as caught:
        load_settings({}, str(path))

    assert "\n" not in str(caught.value)


def test_a_corrupt_toml_file_is_a_one_line_settings_error_naming_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "workers = = 4\n[unclosed\n")

    with pytest.raises(SettingsError) as caught:
        load_settings({}, str(path))

    message = str(caught.value)
    assert str(path) in message
    assert "\n" not in message


def test_a_non_utf8_toml_file_is_a_one_line_settings_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'queue_prefix = "caf\xe9"\n')

    with pytest.raises(SettingsError) as caught:
        load_settings({}, str(path))

    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_config_file_is_a_one_line_settings_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.toml"

    with pytest.raises(SettingsError) as caught:
        load_settings({}, str(path))

    message = str(caught.value)
    assert str(path) in message
    assert "\n" not in message


def test_a_config_path_that_is_a_directory_is_a_one_line_settings_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({}, str(tmp_path))

    assert str(tmp_path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_file_named_by_smeg_config_is_a_settings_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.toml"

    with pytest.raises(SettingsError, match=r"nowhere\.toml"):
        load_settings({"SMEG_CONFIG": str(path)})


# --- providers and backoff ------------------------------------------------------------------


def test_smeg_provider_url_adds_an_http_provider_named_default() -> None:
    settings = load_settings({"SMEG_PROVIDER_URL": "http://127.0.0.1:9/send"})

    assert settings.provider_configs() == {"default": {"type": "http", "url": "http://127.0.0.1:9/send"}}


def test_smeg_provider_url_adds_default_next_to_the_toml_providers(tmp_path: Path) -> None:
    path = write(tmp_path, TOML)

    settings = load_settings({"SMEG_PROVIDER_URL": "http://127.0.0.1:9/send"}, str(path))

    configs = settings.provider_configs()
    assert set(configs) == {"twilio", "backup", "default"}
    assert configs["default"] == {"type": "http", "url": "http://127.0.0.1:9/send"}
    assert "default" not in settings.providers  # provider_configs does not change the settings


def test_a_toml_provider_named_default_is_kept_over_smeg_provider_url(tmp_path: Path) -> None:
    path = write(tmp_path, '[providers.default]\ntype = "http"\nurl = "http://from-toml/send"\n')

    settings = load_settings({"SMEG_PROVIDER_URL": "http://from-env/send"}, str(path))

    assert settings.provider_configs()["default"]["url"] == "http://from-toml/send"


def test_the_default_backoff_is_the_default_policy() -> None:
    assert load_settings({}).backoff == BackoffPolicy()


def test_backoff_is_the_policy_the_settings_describe() -> None:
    settings = load_settings(
        {
            "SMEG_BACKOFF_INITIAL": "2",
            "SMEG_BACKOFF_FACTOR": "4",
            "SMEG_BACKOFF_MAX": "100",
            "SMEG_BACKOFF_JITTER": "0.2",
            "SMEG_MAX_ATTEMPTS": "9",
        }
    )

    assert settings.backoff == BackoffPolicy(
        initial=2.0, factor=4.0, max_delay=100.0, max_attempts=9, jitter=0.2
    )


def test_load_settings_returns_settings() -> None:
    assert isinstance(load_settings({}), Settings)


def test_the_projector_runs_in_a_child_process_unless_told_otherwise() -> None:
    postgres = load_settings({"SMEG_DATABASE_URL": "postgresql+psycopg://u@h/db"})
    assert postgres.projector_mode == "process"
    assert load_settings({"SMEG_DATABASE_URL": "sqlite:///x.db"}).projector_mode == "process"
    chosen = load_settings({"SMEG_DATABASE_URL": "sqlite:///x.db", "SMEG_PROJECTOR": "inline"})
    assert chosen.projector_mode == "inline"
    assert load_settings({"SMEG_PROJECTOR": "external"}).projector_mode == "external"


def test_read_models_live_beside_the_store_unless_told_otherwise() -> None:
    postgres = "postgresql+psycopg://u:secret@h/db"
    assert load_settings({"SMEG_DATABASE_URL": postgres}).read_models_database_url == postgres
    sqlite = load_settings({"SMEG_DATABASE_URL": "sqlite:////var/lib/smeg/smeg.db"})
    assert sqlite.read_models_database_url == "sqlite:////var/lib/smeg/smeg.read.db"
    assert load_settings({}).read_models_database_url == "sqlite:///smeg.read.db"
    chosen = load_settings({"SMEG_DATABASE_URL": "sqlite:///x.db", "SMEG_READ_MODELS_URL": postgres})
    assert chosen.read_models_database_url == postgres
    with pytest.raises(SettingsError, match="read_models_url"):
        load_settings({"SMEG_READ_MODELS_URL": "mysql://h/db"})


# --- misspelled variables ---------------------------------------------------------------------


def test_a_misspelled_variable_is_named_with_the_closest_setting() -> None:
    from smeg_actors.runtime.config import unknown_variables

    environ = {"SMEG_WORKER": "4", "SMEG_PROVIDERURL": "x", "SMEG_ZZZ": "1", "SMEG_WORKERS": "4", "HOME": "/"}

    assert unknown_variables(environ) == [
        ("SMEG_PROVIDERURL", "SMEG_PROVIDER_URL"),
        ("SMEG_WORKER", "SMEG_WORKERS"),
        ("SMEG_ZZZ", None),
    ]


def test_smegs_own_variables_that_are_not_settings_are_not_warned_about() -> None:
    from smeg_actors.runtime.config import unknown_variables

    environ = {"SMEG_CONFIG": "a.toml", "SMEG_DEBUG": "1", "SMEG_PARENT_PID": "1", "SMEG_TEST_AMQP_URL": "x"}

    assert unknown_variables(environ) == []


def test_providers_cannot_come_from_one_variable_and_say_so_by_a_warning() -> None:
    from smeg_actors.runtime.config import unknown_variables

    assert unknown_variables({"SMEG_PROVIDERS": "x"})[0][0] == "SMEG_PROVIDERS"
