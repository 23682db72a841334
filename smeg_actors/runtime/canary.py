"""The canary's wiring (``[canary]``): its request, checked at start-up by the same edge rules as
a client's; which process of a group sends it; its place in the actor tree."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from adapters.canary_sender import CanarySender
from adapters.rabbitmq import Topology
from domain.canary import CANARY_TAG, CanaryLog
from domain.errors import InvalidRequestError
from domain.message import DELIVERED, Message
from domain.ports import MessageNotFoundError, MessageRepository
from domain.request import SendRequest, parse_send_request
from smeg_actors.actors.canary import CanaryActor
from smeg_actors.actors.supervisor import ChildSpec
from smeg_actors.runtime.clock import Clock
from smeg_actors.runtime.config import Settings, SettingsError

#: Which child of a ``smeg run --processes N`` group this is (set by the group; absent alone).
GROUP_INDEX_VARIABLE = "SMEG_GROUP_INDEX"


@dataclass
class Canary:
    """What the canary actor needs; ``canaries`` is shared with the ``canary`` alert's sensor."""

    settings: Settings
    canaries: CanaryLog
    sender: CanarySender
    store: MessageRepository
    node: str

    def request(self, message_id: str) -> SendRequest:
        return canary_request(self.settings, message_id, self.node)

    def delivered_at(self, message_id: str) -> datetime | None:
        """When the canary was delivered, from its own history (None: not yet, or not received)."""
        try:
            message = self.store.get(Message.create_id(message_id))
        except MessageNotFoundError:
            return None
        return message.modified_on if message.status == DELIVERED else None


def canary_request(settings: Settings, message_id: str, node: str) -> SendRequest:
    """The synthetic request, through the edge rules a client's passes (InvalidRequestError)."""
    config = settings.canary
    assert config is not None
    data = {
        "message_id": message_id,
        "channel": config.channel,
        "to": config.to,
        "body": config.body,
        "correlation_id": message_id,
        "metadata": {CANARY_TAG: node[:256]},
    }
    if config.provider:
        data["provider"] = config.provider
    return parse_send_request(json.dumps(data).encode())


def check_canary(settings: Settings, providers: Iterable[str]) -> None:
    """The SettingsError of a ``[canary]`` table no request could pass, before any start."""
    config = settings.canary
    if config is None or not config.enabled:
        return
    if config.provider and config.provider not in set(providers):
        raise SettingsError(f"canary: provider {config.provider!r} is not configured")
    try:
        canary_request(settings, "smeg-canary.check.0.0", "check")
    except InvalidRequestError as exc:
        raise SettingsError(f"canary: {exc}") from None


def sends_canary(settings: Settings, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether this process sends the canary: configured, and alone or its group's first child."""
    config = settings.canary
    return config is not None and config.enabled and environ.get(GROUP_INDEX_VARIABLE, "0") == "0"


def build_canary(settings: Settings, store: MessageRepository, slo: float) -> Canary:
    node = f"{socket.gethostname()}/{os.getpid()}"
    sender = CanarySender(settings.amqp_url, Topology(settings.queue_prefix))
    return Canary(settings, CanaryLog(slo=slo), sender, store, node)


def canary_specs(
    canary: Canary | None, clock: Clock, enabled: Callable[[], bool] = lambda: True
) -> list[ChildSpec]:
    if canary is None or canary.settings.canary is None:
        return []
    interval = canary.settings.canary.interval
    return [
        ChildSpec(
            "canary",
            lambda sup: CanaryActor.start(
                "canary",
                sup,
                canaries=canary.canaries,
                request=canary.request,
                send=canary.sender.send,
                find=canary.delivered_at,
                node=canary.node,
                interval=interval,
                clock=clock,
                enabled=enabled,
            ),
        )
    ]
