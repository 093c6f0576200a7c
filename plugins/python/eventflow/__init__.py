"""Write Eventflow algorithms in Python.

An algorithm is a module named ``app`` with a function ``apply``::

    import eventflow

    def apply(input):
        eventflow.data.put(f"data://ezra/files/{input['filename']}", input["data"])

``apply`` receives the message's payload decoded from JSON. Declare a second
parameter to receive the raw :class:`Message` too (then a payload that is not
JSON arrives as ``input = None`` instead of being rejected). What it returns
goes to the flow's output topic: ``None`` publishes nothing, ``bytes`` and
``str`` are sent as they are, anything else as JSON.

Raise :class:`Retry` to have the message redelivered after a delay and
:class:`Reject` to send it to the dead-letter topic at once. Any other
exception that escapes ``apply`` rejects the message with the traceback as the
reason. Secrets arrive in ``os.environ``; nothing else does.

A flow with ``batch`` hands an algorithm many messages in one call, on one
instance (one interpreter start instead of one per message). By default each
is passed to ``apply``. Define ``apply_batch(inputs)`` (or
``apply_batch(inputs, messages)``) to see them at once: it returns a list
with one result per input, in order, each what ``apply`` would return, or an
exception instance (``Retry``, ``Reject``, any other) that fails that message
alone. An exception it raises traps the call: every message of the batch
fails as one attempt and is then retried alone. What an algorithm publishes
during a batch belongs to the batch: it is sent if any message of the batch
succeeds, even one whose own ``apply`` raised after publishing.

An algorithm granted outgoing HTTP calls services with
:func:`eventflow.http.fetch`; it is built for the world that imports
``wasi:http`` (``outbound_http = true`` in its ``algorithm.toml``), so that
module is imported on its own, not from here.

Build with ``componentize-py -d wit -w batch-algorithm componentize eventflow.main
-p plugins/python -p DIR -o app.wasm`` where DIR holds ``app.py`` (``cargo
xtask plugins`` does this for the examples).
"""

from . import data
from ._core import Message, PublishError, Reject, Retry, log, publish
from .data import DataError

__all__ = [
    "DataError",
    "Message",
    "PublishError",
    "Reject",
    "Retry",
    "data",
    "log",
    "publish",
]
