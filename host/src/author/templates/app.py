"""{{owner}}/{{name}}: stores {"filename", "data"} in
data://{{owner}}/{{name}}/<filename> and returns where it went."""

from eventflow import Reject, Retry, data, log


def apply(input):
    filename, contents = input.get("filename"), input.get("data")
    if not isinstance(filename, str) or not isinstance(contents, str):
        raise Reject('payload needs string fields "filename" and "data"')
    uri = f"data://{{owner}}/{{name}}/{filename}"
    try:
        data.put(uri, contents)
    except (data.DataIOError, data.QuotaExceeded) as e:
        raise Retry(5_000, f"cannot write {e}")  # may succeed later
    except data.DataError as e:
        raise Reject(f"cannot write {e}")  # never will
    log(f"stored {len(contents)} bytes in {uri}")
    return {"stored": uri}
