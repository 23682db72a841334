"""The errors ``smeg_actors.client`` raises (importable from there): each message one line,
never a password."""

from __future__ import annotations


class SmegClientError(Exception):
    """Base of every error the client raises; its message is one line and never holds a password."""


class InvalidRequest(SmegClientError):
    """A request breaks smeg's rules; nothing of the call was published.

    ``reason`` is the domain's own wording (the one smeg would put in ``x-smeg-error``);
    ``index`` is the request's position in ``send_many`` (None for ``send``).
    """

    def __init__(self, reason: str, index: int | None = None) -> None:
        super().__init__(reason if index is None else f"request {index}: {reason}")
        self.reason, self.index = reason, index


class BrokerUnavailable(SmegClientError):
    """The broker could not be reached (or refused the login); nothing of the call was published."""


class PublishFailed(SmegClientError):
    """Not every message of a call was confirmed as enqueued.

    ``confirmed``: ids the broker enqueued. ``unconfirmed``: the others, in call order; send them
    again with the same ids. ``maybe_published``: whether some of those may have been enqueued
    anyway (the connection was lost or a confirm never came), harmless since smeg ignores an id
    it already has; False when the broker said no to each of them.
    """

    def __init__(
        self, message: str, *, confirmed: list[str], unconfirmed: list[str], maybe_published: bool
    ) -> None:
        super().__init__(message)
        self.confirmed, self.unconfirmed, self.maybe_published = confirmed, unconfirmed, maybe_published


class NotRouted(PublishFailed):
    """The send queue does not exist (the broker returned the message): start smeg, or check the
    prefix. The client does not declare queues: smeg owns them and their arguments."""


class NotConfirmed(PublishFailed):
    """The broker refused a message (a nack: the send queue is full, say), or its confirm did not
    come (the connection was lost, or ``confirm_timeout`` passed: ``maybe_published`` is True)."""
