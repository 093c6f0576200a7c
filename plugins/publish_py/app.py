"""Forwards each message, payload and headers, to a topic on another broker
connection: how an algorithm sends to a Service Bus queue or an Event Hub.

The target is `connection:topic` as configured in the router; the secret
FORWARD_TOPIC overrides the default. The flow needs a publish grant there
(`publishers = ["ezra/publish_py"]` on that topic).
"""

import os

from eventflow import publish

DEFAULT_TOPIC = "outbound:forwarded"


def apply(input, message):
    topic = os.environ.get("FORWARD_TOPIC", DEFAULT_TOPIC)
    headers = message.headers + [("forwarded-from", message.topic)]
    publish(topic, message.payload, headers)
