"""The quickstart algorithm in Python: takes {"filename": "...", "data": "..."}
and writes data to data://ezra/TestingEventFlow/<filename>.

A failed write that may succeed later (a full disk, a used-up write quota) is
retried; one that never will (a bad file name) goes to the dead-letter topic.
"""

from eventflow import Reject, Retry, data, log

COLLECTION = "data://ezra/TestingEventFlow"


def apply(input):
    filename, contents = input.get("filename"), input.get("data")
    if not isinstance(filename, str) or not isinstance(contents, str):
        raise Reject('payload needs string fields "filename" and "data"')
    uri = f"{COLLECTION}/{filename}"
    try:
        data.put(uri, contents)
    except (data.DataIOError, data.QuotaExceeded) as e:
        raise Retry(5_000, f"cannot write {e}")
    except data.DataError as e:
        raise Reject(f"cannot write {e}")
    log(f"stored {len(contents)} bytes in {uri}")
