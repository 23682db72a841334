"""Routes and fallbacks from the TOML file: what they build, and one-line errors naming them."""

from __future__ import annotations

from pathlib import Path

import pytest

from domain.routing import Route
from smeg_actors.runtime.config import SettingsError, load_settings
from smeg_actors.runtime.factory import build_providers, routing_policy

PROVIDERS = """
[providers.a]
type = "http"
url = "http://127.0.0.1:1/a"
fallback = ["b"]
rate_limit = 50
[providers.a.circuit]
window = 10
[providers.b]
type = "http"
url = "http://127.0.0.1:1/b"
"""


def settings(tmp_path: Path, text: str, **env: str):  # type: ignore[no-untyped-def]
    path = tmp_path / "smeg.toml"
    path.write_text(text)
    return load_settings({f"SMEG_{k.upper()}": v for k, v in env.items()}, str(path))


def test_fallbacks_routes_and_failover_after_come_from_the_file(tmp_path: Path) -> None:
    text = PROVIDERS + "[routes.sms]\nweights = { a = 80, b = 20 }\n"
    policy = routing_policy(settings(tmp_path, text, failover_after="3"))
    assert policy.fallbacks == {"a": ("b",), "b": ()}
    assert policy.routes == {"sms": Route((("a", 80), ("b", 20)))}
    assert (policy.default_provider, policy.failover_after) == ("a", 3)
    assert set(build_providers(settings(tmp_path, text))) == {"a", "b"}  # routing keys are not transport


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ("[routes.sms]\nweights = { a = 80, z = 20 }\n", "route sms: 'z' is not a configured provider"),
        ("[routes.sms]\nweights = { a = 0 }\n", "route sms: route weights"),
        ('[routes.sms]\nweights = { a = "80" }\n', "route sms: needs only weights"),
        ("[routes.sms]\nweight = { a = 1 }\n", "route sms: needs only weights"),
    ],
)
def test_a_bad_route_is_a_one_line_settings_error(tmp_path: Path, extra: str, error: str) -> None:
    loaded = settings(tmp_path, PROVIDERS + extra)
    with pytest.raises(SettingsError, match=error):
        routing_policy(loaded)


def test_a_route_for_an_unknown_channel_is_refused_when_loading(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="routes"):
        settings(tmp_path, PROVIDERS + "[routes.fax]\nweights = { a = 1 }\n")


@pytest.mark.parametrize(
    ("fallback", "error"), [('"b"', "must be a list"), ('["zz"]', "fallback 'zz'"), ('["a"]', "fallback 'a'")]
)
def test_a_bad_fallback_is_a_one_line_settings_error(tmp_path: Path, fallback: str, error: str) -> None:
    text = PROVIDERS.replace('fallback = ["b"]', f"fallback = {fallback}")
    with pytest.raises(SettingsError, match=error):
        routing_policy(settings(tmp_path, text))


def test_routes_cannot_come_from_the_environment(tmp_path: Path) -> None:
    loaded = settings(tmp_path, PROVIDERS, routes="{}")
    assert loaded.routes == {}
