"""The component's entry point: the ``apply`` and ``apply-batch`` exports
of the ``batch-algorithm`` world of wit/algorithm.wit (0.2.0), which call
``app.apply`` (or ``app.apply_batch``) and turn what they return or raise
into the results the router expects. componentize-py is given this module as
the app.
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
from wit_world.imports import batch

from ._core import Message, Reject, Retry, to_bytes

import app

#: The most of a traceback that goes into a failure's reason, in characters.
#: The end of a traceback says most, so the start is what is cut; the
#: router keeps 4 KiB of a reason, so this leaves room for the first line.
MAX_TRACEBACK_CHARS = 3000

_APPLY = getattr(app, "apply", None)
_WANTS_MESSAGE = _APPLY is not None and len(inspect.signature(_APPLY).parameters) >= 2
_APPLY_BATCH = getattr(app, "apply_batch", None)
_BATCH_WANTS_MESSAGES = (
    _APPLY_BATCH is not None and len(inspect.signature(_APPLY_BATCH).parameters) >= 2
)


def _decode(payload, lenient=_WANTS_MESSAGE):
    try:
        return json.loads(payload)
    except ValueError as e:
        if lenient:
            return None
        raise Reject(f"payload is not JSON: {e}") from None


def _uncaught(error):
    lines = traceback.format_exception(error)
    text = "".join(lines).rstrip()
    if len(text) > MAX_TRACEBACK_CHARS:
        text = "...\n" + text[-MAX_TRACEBACK_CHARS:]
    head = "".join(traceback.format_exception_only(error)).strip()[:500]
    return f"uncaught {head}\n{text}"


def _message(msg):
    return Message(msg.id, msg.topic, bytes(msg.payload), list(msg.headers), msg.attempt)


def _failure(error):
    """The WIT failure for an exception raised (or returned) for a message."""
    if isinstance(error, Retry):
        return types.Failure_Retry(types.RetryRequest(error.delay_ms, error.reason))
    if isinstance(error, Reject):
        return types.Failure_Reject(error.reason)
    return types.Failure_Reject(_uncaught(error))


def _apply_one(message):
    input = _decode(message.payload)
    out = app.apply(input, message) if _WANTS_MESSAGE else app.apply(input)
    return None if out is None else to_bytes(out)


def _outcome(make):
    try:
        return batch.Outcome_Output(make())
    except Exception as e:
        return batch.Outcome_Failed(_failure(e))


def _batch_outcomes(messages):
    """``app.apply_batch`` on the batch: one result per message, each an
    output (as ``apply`` returns it) or an exception instance, the failure
    of that message alone. An exception it raises, or a list of the wrong
    length, traps the call."""
    inputs = []
    outcomes = [None] * len(messages)
    for i, m in enumerate(messages):
        try:
            inputs.append(_decode(m.payload, _BATCH_WANTS_MESSAGES))
        except Reject as e:
            # Not JSON (and apply_batch takes no messages): this message
            # fails; the others are called.
            outcomes[i] = batch.Outcome_Failed(_failure(e))
            inputs.append(None)
    called = [i for i, o in enumerate(outcomes) if o is None]
    args = [inputs[i] for i in called]
    # What apply_batch raises escapes the export: the call traps, every
    # message of the batch fails as one attempt, and each is retried alone.
    if _BATCH_WANTS_MESSAGES:
        results = list(_APPLY_BATCH(args, [messages[i] for i in called]))
    else:
        results = list(_APPLY_BATCH(args))
    if len(results) != len(called):
        raise RuntimeError(
            f"apply_batch returned {len(results)} results for {len(called)} messages"
        )
    for i, result in zip(called, results):
        if isinstance(result, BaseException):
            outcomes[i] = batch.Outcome_Failed(_failure(result))
        else:
            outcomes[i] = _outcome(lambda r=result: None if r is None else to_bytes(r))
    return outcomes


class WitWorld:
    def apply(self, msg):
        if _APPLY is None:
            # Only apply_batch is defined: a batch of one.
            outcome = _batch_outcomes([_message(msg)])[0]
            if isinstance(outcome, batch.Outcome_Failed):
                raise Err(outcome.value)
            return outcome.value
        try:
            return _apply_one(_message(msg))
        except Exception as e:
            raise Err(_failure(e))

    def apply_batch(self, msgs):
        messages = [_message(m) for m in msgs]
        if _APPLY_BATCH is None:
            return [_outcome(lambda m=m: _apply_one(m)) for m in messages]
        return _batch_outcomes(messages)
