"""The benchmarks' Python algorithm, the counterpart of the Rust examples
echo and redact in one component:

- a payload that is not JSON comes back as it is (B1's identity);
- a JSON document has the values of "password", "ssn" and "card" replaced
  with "***" at any depth and comes back as JSON (B3's redact);
- {"spin_ms": N} computes for N ms and returns nothing, which keeps an
  instance in flight while the benchmark reads the resident memory.
"""

import time

SECRET_FIELDS = ("password", "ssn", "card")


def redact(value):
    if isinstance(value, dict):
        for key in value:
            if key in SECRET_FIELDS:
                value[key] = "***"
            else:
                redact(value[key])
    elif isinstance(value, list):
        for item in value:
            redact(item)


def apply(input, message):
    if input is None:
        return message.payload
    if isinstance(input, dict) and "spin_ms" in input:
        end = time.monotonic() + input["spin_ms"] / 1000
        while time.monotonic() < end:
            pass
        return None
    redact(input)
    return input
