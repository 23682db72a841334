"""Provider adapters (generic HTTP, Twilio, simulated) and the factory that builds them from config.

Config is validated here, at the edge, so a typo fails at start-up with one line naming the
provider and the key, not at the first send. Secrets never live in the config: it names the
environment variables that hold them, and only ``environ`` is read for their values.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NoReturn
from urllib.parse import urlsplit

from adapters.providers.http import HttpProvider
from adapters.providers.simulated import SimulatedProvider
from adapters.providers.twilio import DEFAULT_BASE_URL, TwilioProvider
from domain.ports import Provider

__all__ = ["HttpProvider", "SimulatedProvider", "TwilioProvider", "build_provider"]

_KEYS = {
    "http": {"type", "url", "timeout", "health_url", "token_env"},
    "twilio": {
        "type",
        "account_sid",
        "auth_token_env",
        "from",
        "base_url",
        "timeout",
        "messaging_service_sid",
    },
    "simulated": {"type", "latency_ms", "transient_rate", "permanent_rate", "outages", "seed"},
}


def build_provider(name: str, config: Mapping[str, Any], environ: Mapping[str, str]) -> Provider:
    """Build the provider ``config["type"]`` describes.

    Args:
        name: the provider's configured name, used in every error message.
        config: the provider's table; unknown keys are rejected so typos do not pass silently.
        environ: where secrets are read, by the variable names the config gives.

    Raises:
        ValueError: one line, ``provider NAME: …``, naming the bad type, key or variable.
    """
    keys = _Keys(name, config, environ)
    kind = config.get("type")
    if kind is None:
        keys.fail("missing key 'type'")
    if not isinstance(kind, str) or kind not in _BUILDERS:
        keys.fail(f"unknown type {_show(kind)}")
    unknown = sorted(str(key) for key in config if key not in _KEYS[kind])
    if unknown:
        allowed = ", ".join(sorted(_KEYS[kind]))
        keys.fail(f"unknown key {_show(unknown[0])} for type {kind} (allowed: {allowed})")
    return _BUILDERS[kind](keys)


def _build_http(keys: _Keys) -> Provider:
    token_env = keys.text("token_env")
    return HttpProvider(
        keys.name,
        keys.url("url", required=True) or "",
        timeout=keys.number("timeout", 5.0, positive=True),
        health_url=keys.url("health_url"),
        token=keys.secret("token_env") if token_env else None,
    )


def _build_twilio(keys: _Keys) -> Provider:
    return TwilioProvider(
        keys.name,
        keys.text("account_sid", required=True) or "",
        keys.secret("auth_token_env"),
        sender=keys.text("from"),
        base_url=keys.url("base_url") or DEFAULT_BASE_URL,
        timeout=keys.number("timeout", 5.0, positive=True),
        messaging_service_sid=keys.text("messaging_service_sid"),
    )


def _build_simulated(keys: _Keys) -> Provider:
    transient = keys.number("transient_rate", 0.0, high=1.0)
    permanent = keys.number("permanent_rate", 0.0, high=1.0)
    if transient + permanent > 1.0:
        keys.fail("transient_rate + permanent_rate must not exceed 1")
    seed = keys.config.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        keys.fail("key 'seed' must be an integer")
    return SimulatedProvider(
        keys.name,
        latency_ms=keys.number("latency_ms", 0.0),
        transient_rate=transient,
        permanent_rate=permanent,
        outages=keys.outages("outages"),
        seed=seed,
    )


_BUILDERS: dict[str, Callable[[_Keys], Provider]] = {
    "http": _build_http,
    "twilio": _build_twilio,
    "simulated": _build_simulated,
}


class _Keys:
    """Typed, validated reads of one provider's config; every failure names the key."""

    def __init__(self, name: str, config: Mapping[str, Any], environ: Mapping[str, str]) -> None:
        self.name, self.config, self.environ = name, config, environ

    def fail(self, problem: str) -> NoReturn:
        raise ValueError(f"provider {_show(self.name, quote=False)}: {problem}")

    def text(self, key: str, *, required: bool = False) -> str | None:
        value = self.config.get(key)
        if value is None:
            if required:
                self.fail(f"missing key {key!r}")
            return None
        if not isinstance(value, str) or not value.strip():
            self.fail(f"key {key!r} must be a non-empty string")
        return value.strip()

    def url(self, key: str, *, required: bool = False) -> str | None:
        value = self.text(key, required=required)
        if value is None:
            return None
        try:
            parts = urlsplit(value)
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            port_ok = False
        if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
            self.fail(f"key {key!r} must be an http:// or https:// URL with a host")
        return value

    def number(self, key: str, default: float, *, positive: bool = False, high: float | None = None) -> float:
        value = self.config.get(key, default)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and math.isfinite(value) and (value > 0 if positive else value >= 0)
        if not ok or (high is not None and value > high):
            bounds = "> 0" if positive else f"between 0 and {high:g}" if high is not None else ">= 0"
            self.fail(f"key {key!r} must be a number {bounds}")
        return float(value)

    def secret(self, key: str) -> str:
        variable = self.text(key, required=True) or ""
        value = self.environ.get(variable, "")
        if not value.strip():
            self.fail(f"environment variable {_show(variable, quote=False)} ({key}) is not set")
        return value.strip()

    def outages(self, key: str) -> list[tuple[float, float]]:
        value = self.config.get(key, [])
        problem = f"key {key!r} must be a list of [start_s, end_s] pairs with 0 <= start < end"
        if not isinstance(value, list | tuple):
            self.fail(problem)
        windows = []
        for pair in value:
            if not isinstance(pair, list | tuple) or len(pair) != 2:
                self.fail(problem)
            start, end = pair
            numbers = all(
                isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
                for x in (start, end)
            )
            if not numbers or not 0 <= start < end:
                self.fail(problem)
            windows.append((float(start), float(end)))
        return windows


def _show(value: object, *, quote: bool = True) -> str:
    """A config value fit for a one-line message: newlines escaped, length capped."""
    text = repr(value) if quote else repr(str(value))[1:-1]
    return text if len(text) <= 60 else text[:57] + "..."
