"""``smeg settings``: every setting, its variable, its default and the value in force.

Secrets never appear: passwords in URLs are masked, and of the providers only names and types
are shown (their tokens live in variables the TOML names, which smeg never prints).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import click

from smeg_actors.cli.support import settings_of

if TYPE_CHECKING:
    from pydantic.fields import FieldInfo

    from smeg_actors.runtime.config import Settings

URL_SETTINGS = frozenset({"database_url", "read_models_url", "amqp_url", "provider_url"})


@click.command("settings")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per setting, in a list.")
@click.pass_context
def settings_command(ctx: click.Context, as_json: bool) -> None:
    """Every setting: its SMEG_ variable, its default and the value in force (secrets masked)."""
    rows = setting_rows(settings_of(ctx))
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    width = max(len(row["variable"]) for row in rows)
    for row in rows:
        click.echo(f"{row['variable']:<{width}}  {_text(row['value'])}  (default {_text(row['default'])})")


def setting_rows(settings: Settings) -> list[dict[str, Any]]:
    """Each setting as ``{setting, variable, value, default}``, secrets masked."""
    from smeg_actors.runtime.config import ENV_PREFIX, Settings

    rows = []
    for name, info in Settings.model_fields.items():
        value, default = getattr(settings, name), _default(info)
        if name == "providers":
            value = {key: {"type": config.get("type", "?")} for key, config in value.items()}
        elif name == "alerts":  # a sink's URL may be its secret (a Slack webhook): its host only
            value = {**value, "sinks": {key: _sink(config) for key, config in value.get("sinks", {}).items()}}
        elif name in URL_SETTINGS:
            value, default = masked(value), masked(default)
        rows.append(
            {"setting": name, "variable": f"{ENV_PREFIX}{name.upper()}", "value": value, "default": default}
        )
    return rows


def _sink(config: Any) -> dict[str, Any]:
    from urllib.parse import urlsplit

    url = config.get("url") if isinstance(config, dict) else None
    try:
        host = urlsplit(url).hostname if isinstance(url, str) else None
    except ValueError:
        host = None
    if isinstance(config, dict) and config.get("type") == "smtp" and isinstance(config.get("host"), str):
        host = config["host"]  # an SMTP sink names its server; recipients and user stay out
    return {"type": config.get("type", "?") if isinstance(config, dict) else "?", "host": host}


def masked(url: Any) -> Any:
    """A URL with its password replaced by ``***`` (anything else as it is)."""
    if not isinstance(url, str) or "@" not in url:
        return url
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # not a SQLAlchemy URL (amqp://): mask by hand
        scheme, _, rest = url.partition("://")
        credentials, _, host = rest.rpartition("@")
        user = credentials.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}" if ":" in credentials else url
    return parsed.render_as_string(hide_password=True) if parsed.password else url


def _default(info: FieldInfo) -> Any:
    from pydantic_core import PydanticUndefined

    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return None if info.default is PydanticUndefined else info.default


def _text(value: Any) -> str:
    if value is None or value == "":
        return "-"
    return json.dumps(value) if isinstance(value, dict) else str(value)
