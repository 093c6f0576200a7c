"""The message, the failures ``apply`` may raise, publishing and logging."""

import json
from dataclasses import dataclass

from wit_world.imports import log as _log
from wit_world.imports import publish as _publish
from componentize_py_types import Err


@dataclass
class Message:
    """One message as it was taken from the topic."""

    #: The broker's id for the message; stable across redeliveries.
    id: str
    #: The topic the message was received from.
    topic: str
    #: The body, as published.
    payload: bytes
    #: The headers, as ``(key, value)`` pairs in the order received.
    headers: list
    #: 1 on the first delivery, 2 on the first redelivery, and so on.
    attempt: int

    def header(self, key, default=None):
        """The value of the first header named ``key``, or ``default``."""
        return next((v for k, v in self.headers if k == key), default)


class Retry(Exception):
    """Redeliver the message, no sooner than ``delay_ms`` milliseconds from now.

    After the flow's last attempt the message goes to the dead-letter topic
    with ``reason``.
    """

    def __init__(self, delay_ms, reason):
        super().__init__(reason)
        self.delay_ms = int(delay_ms)
        self.reason = str(reason)


class Reject(Exception):
    """Never try the message again: send it to the dead-letter topic."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = str(reason)


class PublishError(Exception):
    """The router refused a :func:`publish`.

    ``kind`` is ``"access-denied"``, ``"unknown-topic"``, ``"too-large"`` or
    ``"limit-exceeded"``.
    """

    def __init__(self, topic, kind):
        super().__init__(f"cannot publish to {topic}: {kind}")
        self.topic = topic
        self.kind = kind


_PUBLISH_ERRORS = {
    _publish.PublishError_AccessDenied: "access-denied",
    _publish.PublishError_UnknownTopic: "unknown-topic",
    _publish.PublishError_TooLarge: "too-large",
    _publish.PublishError_LimitExceeded: "limit-exceeded",
}


def to_bytes(value):
    """``bytes`` as they are, ``str`` as UTF-8, anything else as JSON."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, str):
        return value.encode()
    return json.dumps(value).encode()


def publish(topic, payload, headers=None):
    """Queues a message for ``topic`` (``name``, or ``connection:name`` for a
    topic of another broker connection).

    ``payload`` is sent as :func:`to_bytes` makes it; ``headers`` is a dict or
    a list of ``(key, value)`` pairs. Messages are sent only if ``apply``
    succeeds (in a batch: if any of its messages does). Raises
    :class:`PublishError` when the router refuses.
    """
    if isinstance(headers, dict):
        headers = list(headers.items())
    pairs = [(str(k), str(v)) for k, v in headers or []]
    try:
        _publish.send(topic, to_bytes(payload), pairs)
    except Err as e:
        raise PublishError(topic, _PUBLISH_ERRORS.get(type(e.value), "refused")) from None


_LEVELS = {
    "trace": _log.Level.TRACE,
    "debug": _log.Level.DEBUG,
    "info": _log.Level.INFO,
    "warn": _log.Level.WARN,
    "error": _log.Level.ERROR,
}


def log(message, level="info"):
    """Writes a line to the router's log, tagged with the flow and message.

    ``level`` is ``"trace"``, ``"debug"``, ``"info"``, ``"warn"`` or ``"error"``.
    """
    _log.log(_LEVELS[level], str(message))
