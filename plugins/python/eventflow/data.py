"""Hosted data collections, addressed as ``data://owner/collection/path``.

An algorithm may use only its own owner's collections. Every call raises a
:class:`DataError` subclass when it fails.
"""

import builtins

from wit_world.imports import data as _data
from componentize_py_types import Err

from ._core import to_bytes


class DataError(Exception):
    """A data call failed; ``uri`` names the file or directory involved."""

    def __init__(self, uri, detail):
        super().__init__(f"{uri}: {detail}")
        self.uri = uri


class InvalidUri(DataError):
    """The URI is malformed or tries to leave its collection."""


class AccessDenied(DataError):
    """The collection belongs to another owner."""


class NotFound(DataError):
    """Nothing is stored at that path."""


class QuotaExceeded(DataError):
    """The invocation's write quota is used up (an operator may raise it)."""


class DataIOError(DataError):
    """The host could not complete the call (a full disk, say)."""


def _raise(uri, error):
    e = error.value
    if isinstance(e, _data.DataError_InvalidUri):
        raise InvalidUri(uri, f"invalid URI: {e.value}") from None
    if isinstance(e, _data.DataError_AccessDenied):
        raise AccessDenied(uri, "access denied: the collection belongs to another owner") from None
    if isinstance(e, _data.DataError_NotFound):
        raise NotFound(uri, "not found") from None
    if isinstance(e, _data.DataError_QuotaExceeded):
        raise QuotaExceeded(uri, "data write quota exceeded") from None
    raise DataIOError(uri, f"i/o error: {e.value}") from None


def get(uri):
    """The whole file, as bytes."""
    try:
        return _data.get(uri)
    except Err as e:
        _raise(uri, e)


def get_text(uri, encoding="utf-8"):
    """The whole file, decoded as text."""
    return get(uri).decode(encoding)


def put(uri, contents):
    """Writes a whole file, replacing what was there; durable when it returns.

    ``contents`` is bytes, text (written as UTF-8) or anything else (written
    as JSON).
    """
    try:
        _data.put(uri, to_bytes(contents))
    except Err as e:
        _raise(uri, e)


def list(uri):
    """The entries directly under a directory; directories end with ``/``."""
    try:
        return builtins.list(_data.list(uri))
    except Err as e:
        _raise(uri, e)


def delete(uri):
    """Deletes a file; a missing file raises :class:`NotFound`."""
    try:
        _data.delete(uri)
    except Err as e:
        _raise(uri, e)
