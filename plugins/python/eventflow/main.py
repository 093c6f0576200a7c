"""The component's entry point: the ``apply`` export of wit/algorithm.wit,
which calls ``app.apply`` and turns what it returns or raises into the
result the router expects. componentize-py is given this module as the app.
"""

import inspect
import json
import traceback

from componentize_py_types import Err
try:
    from wit_world.imports import types
except ImportError:
    # The algorithm-http world also imports wasi:http's `types`, so
    # componentize-py names the algorithm's after its package.
    from wit_world.imports import eventflow_algorithm_types as types

from ._core import Message, Reject, Retry, to_bytes

import app

#: The most of a traceback that goes into a failure's reason, in characters.
#: The end of a traceback says most, so the start is what is cut; the
#: router keeps 4 KiB of a reason, so this leaves room for the first line.
MAX_TRACEBACK_CHARS = 3000

_WANTS_MESSAGE = len(inspect.signature(app.apply).parameters) >= 2


def _decode(payload):
    try:
        return json.loads(payload)
    except ValueError as e:
        if _WANTS_MESSAGE:
            return None
        raise Reject(f"payload is not JSON: {e}") from None


def _uncaught(error):
    lines = traceback.format_exception(error)
    text = "".join(lines).rstrip()
    if len(text) > MAX_TRACEBACK_CHARS:
        text = "...\n" + text[-MAX_TRACEBACK_CHARS:]
    head = "".join(traceback.format_exception_only(error)).strip()[:500]
    return f"uncaught {head}\n{text}"


class WitWorld:
    def apply(self, msg):
        message = Message(msg.id, msg.topic, bytes(msg.payload), list(msg.headers), msg.attempt)
        try:
            input = _decode(message.payload)
            out = app.apply(input, message) if _WANTS_MESSAGE else app.apply(input)
            return None if out is None else to_bytes(out)
        except Retry as e:
            raise Err(types.Failure_Retry(types.RetryRequest(e.delay_ms, e.reason)))
        except Reject as e:
            raise Err(types.Failure_Reject(e.reason))
        except Exception as e:
            raise Err(types.Failure_Reject(_uncaught(e)))
