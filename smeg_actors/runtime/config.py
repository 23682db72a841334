"""Typed settings, from an optional TOML file and ``SMEG_*`` environment variables (env wins).

Pure: ``load_settings`` takes the environment as a mapping, so it is tested with a dict.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from domain.backoff import BackoffPolicy
from domain.message import DEFAULT_REDRIVE_MAX_CYCLES
from domain.routing import DEFAULT_FAILOVER_AFTER

ENV_PREFIX = "SMEG_"
#: Settings only the TOML file sets (tables, not one value).
TABLES = frozenset({"providers", "routes", "alerts", "canary", "admin"})


class SettingsError(Exception):
    """A setting is missing or invalid; the message names it."""


class CanarySettings(BaseModel):
    """``[canary]``: a synthetic request sent through smeg every ``interval`` seconds (its SLO is
    the ``canary`` alert rule's threshold)."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    enabled: bool = True
    interval: float = Field(default=60.0, ge=1, le=86400)
    channel: Literal["sms", "im"] = "sms"
    to: str = Field(min_length=1, max_length=256)
    provider: str | None = None
    body: str = Field(default="smeg canary", min_length=1, max_length=160)


class Settings(BaseModel):
    """Every knob of smeg; see docs/architecture.md for the table."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    database_url: str = "sqlite:///smeg.db"
    database_schema: str = ""
    read_models_url: str = ""
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    queue_prefix: str = Field(default="smeg", pattern=r"^[A-Za-z0-9._-]{1,64}$")
    workers: int = Field(default=16, ge=1, le=1024)
    backoff_initial: float = Field(default=60.0, ge=0)
    backoff_factor: float = Field(default=3.0, ge=1)
    backoff_max: float = Field(default=3600.0, ge=0)
    backoff_jitter: float = Field(default=0.0, ge=0, lt=1)
    max_attempts: int = Field(default=5, ge=1, le=100)
    heartbeat: int = Field(default=30, ge=1, le=600)
    shutdown_timeout: float = Field(default=30.0, gt=0)
    store_grace: float = Field(default=30.0, gt=0)
    stale_after: float | None = Field(default=None, gt=0)
    database_timeout: float = Field(default=15.0, gt=0)
    provider_url: str | None = None
    default_provider: str | None = None
    prefetch: int = Field(default=500, ge=1, le=65535)
    batch_size: int = Field(default=200, ge=1, le=5000)
    intake_actors: int = Field(default=2, ge=1, le=64)
    max_in_flight: int = Field(default=2000, ge=1)
    provider_concurrency: int = Field(default=256, ge=1, le=4096)
    redrive_rate: float = Field(default=20.0, gt=0)
    redrive_max_cycles: int = Field(default=DEFAULT_REDRIVE_MAX_CYCLES, ge=0, le=1000)
    restart_max: int = Field(default=5, ge=0, le=1000)
    restart_period: float = Field(default=10.0, gt=0)
    projector: Literal["auto", "inline", "process", "external"] = "auto"
    processes: int | Literal["auto"] = 1
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    failover_after: int = Field(default=DEFAULT_FAILOVER_AFTER, ge=1, le=100)
    http_host: str = Field(default="127.0.0.1", min_length=1, max_length=253)
    http_port: int = Field(default=9464, ge=0, le=65535)
    metrics_dir: str = ""
    providers: dict[str, dict[str, Any]] = Field(default_factory=dict)
    routes: dict[Literal["sms", "im"], dict[str, Any]] = Field(default_factory=dict)
    alerts: dict[Literal["rules", "sinks"], dict[str, dict[str, Any]]] = Field(default_factory=dict)
    canary: CanarySettings | None = None
    #: ``[admin.tokens.NAME]`` (role, sha256); secrets only in ``SMEG_ADMIN_TOKENS``.
    admin: dict[Literal["tokens"], dict[str, dict[str, Any]]] = Field(default_factory=dict)

    @property
    def projector_mode(self) -> str:
        """``auto`` resolved: a child process (the read models get a core of their own)."""
        return "process" if self.projector == "auto" else self.projector

    @property
    def read_models_database_url(self) -> str:
        """Where the read models and their tracking rows live: ``read_models_url`` if set, else
        the store's PostgreSQL database, or a SQLite file beside the store's (``smeg.read.db``)."""
        if self.read_models_url:
            return self.read_models_url
        from adapters.sql import read_models_beside  # here: SQLAlchemy is a tenth of a second to import

        return read_models_beside(self.database_url)

    @field_validator("database_url", "read_models_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if value and not value.startswith(("sqlite:", "postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql+psycopg:// URL")
        return value

    @field_validator("processes", mode="before")
    @classmethod
    def _processes(cls, value: Any) -> int | str:
        return processes_value(value)

    @field_validator("amqp_url")
    @classmethod
    def _amqp(cls, value: str) -> str:
        if not value.startswith(("amqp://", "amqps://")):
            raise ValueError("must be an amqp:// or amqps:// URL")
        import pika  # here, not at the top: every command reads settings, few need pika

        try:
            pika.URLParameters(value)
        except Exception as exc:  # pika raises ValueError and others; the value may hold a password
            reason = re.sub(r"'[^']*'", "'…'", (str(exc).splitlines() or [""])[0])
            raise ValueError(f"is not a valid AMQP URL ({reason[:120]})") from None
        return value

    @property
    def backoff(self) -> BackoffPolicy:
        """The backoff policy these settings describe."""
        return BackoffPolicy(
            initial=self.backoff_initial,
            factor=self.backoff_factor,
            max_delay=self.backoff_max,
            max_attempts=self.max_attempts,
            jitter=self.backoff_jitter,
        )

    def provider_configs(self) -> dict[str, dict[str, Any]]:
        """Configured providers; ``SMEG_PROVIDER_URL`` adds one ``http`` provider named ``default``."""
        configs = dict(self.providers)
        if self.provider_url:
            configs.setdefault("default", {"type": "http", "url": self.provider_url})
        return configs


def processes_value(value: Any) -> int | str:
    """``auto`` or a count of delivery processes, 1 to 64 (ValueError says what is wrong)."""
    if value == "auto":
        return "auto"
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError("must be a whole number of processes, or auto") from None
    if not 1 <= number <= 64:
        raise ValueError("must be between 1 and 64, or auto")
    return number


def load_settings(environ: Mapping[str, str], config_path: str | None = None) -> Settings:
    """Read the TOML file (``config_path`` or ``SMEG_CONFIG``), then overlay ``SMEG_*`` variables.

    Raises:
        SettingsError: one line naming the setting that is wrong.
    """
    path = config_path or environ.get(f"{ENV_PREFIX}CONFIG")
    data: dict[str, Any] = _read_toml(Path(path)) if path else {}
    fields = Settings.model_fields
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or key == f"{ENV_PREFIX}CONFIG":
            continue
        name = key[len(ENV_PREFIX) :].lower()
        if name in fields and name not in TABLES:
            data[name] = value
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None


#: ``SMEG_`` variables that are not settings: read by smeg itself, or by its own tooling.
OTHER_VARIABLES = frozenset(
    {
        "CONFIG",
        "DEBUG",
        "PARENT_PID",
        "GROUP_INDEX",
        "READY_FD",
        "GO_FD",
        "STORE_TIMEOUT",
        "ADMIN_TOKENS",
        "ADMIN_SESSION_KEY",
        "ADMIN_SECURE_COOKIE",
    }
)
TOOLING_PREFIXES = ("TEST_", "FUZZ_", "BENCH_")


def unknown_variables(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """Each ``SMEG_`` variable that is no setting (a typo is otherwise silently ignored), with the
    closest setting's variable, if any is close."""
    names = sorted(name for name in Settings.model_fields if name not in TABLES)
    unknown: list[tuple[str, str | None]] = []
    for key in sorted(environ):
        rest = key[len(ENV_PREFIX) :]
        if not key.startswith(ENV_PREFIX) or rest.lower() in names or rest in OTHER_VARIABLES:
            continue
        if rest.startswith(TOOLING_PREFIXES):
            continue
        close = difflib.get_close_matches(rest.lower(), names, n=1, cutoff=0.6)
        unknown.append((key, f"{ENV_PREFIX}{close[0].upper()}" if close else None))
    return unknown


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise SettingsError(f"config file {path} not found") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SettingsError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise SettingsError(f"config file {path} cannot be read: {exc.strerror}") from None


def _describe(exc: ValidationError) -> str:
    error = exc.errors()[0]
    name = str(error["loc"][0]) if error["loc"] else "?"
    if name == "canary" and len(error["loc"]) > 1:  # a key of the [canary] table
        return f"invalid setting [canary] {error['loc'][1]}: {error['msg']}"
    return f"invalid setting {ENV_PREFIX}{name.upper()} ({name}): {error['msg']}"
