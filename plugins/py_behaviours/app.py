"""Does what its input's "do" says, so one component (compiled once per
router) covers every behaviour the Python SDK's tests check:

- "retry": on the first attempt raises Retry(input["delay_ms"]); later returns
  {"attempt": N}.
- "reject": raises Reject(input["reason"]).
- "keyerror": reads a key the input lacks (an uncaught KeyError).
- "env": returns os.environ as a dict.
- "write": writes "written" to input["uri"] and returns it read back.
- "fetch": sends input["method"] (GET) to input["url"] with input["body_bytes"]
  bytes of body (none) through eventflow.http.fetch and returns {"status",
  "body"} or {"error": code, "detail": ...}.

With a flow's ``batch``, ``apply_batch`` sees the batch: "batch" returns
{"n": input["n"], "batch": the number of messages in the call}, and
"batch-reject" fails that message alone (an exception returned, not raised);
anything else runs as ``apply`` would.
"""

import os

from eventflow import Reject, Retry, data
from eventflow.http import HttpError, fetch


def apply(input, message):
    action = input["do"]
    if action == "retry":
        if message.attempt == 1:
            raise Retry(input["delay_ms"], "asked to retry")
        return {"attempt": message.attempt}
    if action == "reject":
        raise Reject(input["reason"])
    if action == "keyerror":
        return lookup(input)
    if action == "env":
        return dict(os.environ)
    if action == "write":
        data.put(input["uri"], "written")
        return {"read": data.get_text(input["uri"])}
    if action == "fetch":
        body = b"x" * input.get("body_bytes", 0) or None
        try:
            reply = fetch(input["url"], input.get("method", "GET"), body)
        except HttpError as e:
            return {"error": e.code, "detail": e.detail}
        return {"status": reply.status, "body": reply.text()}
    raise Reject(f"unknown action {action!r}")


def apply_batch(inputs, messages):
    results = []
    for input, message in zip(inputs, messages):
        action = input.get("do") if isinstance(input, dict) else None
        if action == "batch":
            results.append({"n": input["n"], "batch": len(inputs), "flow": input.get("flow")})
        elif action == "batch-reject":
            results.append(Reject(f"asked to reject {input['n']} in a batch"))
        else:
            try:
                results.append(apply(input, message))
            except Exception as e:
                results.append(e)
    return results


def lookup(input):
    return input["missing"]
