"""Outgoing HTTP requests, where the router grants them.

An algorithm that calls other services declares ``outbound_http = true`` in
its ``algorithm.toml`` (or is built with ``-w algorithm-http``, the world in
plugins/python/wit-http): its component then imports ``wasi:http``, and
:func:`fetch` sends requests through the router. The router lets a request
through only to an origin the algorithm's outbound grant lists (``eventflow
outbound allow OWNER/NAME URL``), never to a private or loopback address the
grant does not name, within the flow's request, size and time limits::

    from eventflow.http import fetch

    def apply(input):
        reply = fetch(f"https://api.example.com/customers/{input['id']}")
        return {**input, "customer": reply.json()}

A refused or failed request raises :class:`HttpError` naming the reason the
router gave (``HTTP-request-denied``, ``destination-IP-prohibited``,
``connection-timeout``, ...). An error status (4xx, 5xx) is a reply, not an
exception: check ``reply.status``.
"""

import json
from dataclasses import dataclass
from urllib.parse import urlsplit

from componentize_py_types import Err
from wit_world.imports import outgoing_handler as _handler
from wit_world.imports import streams as _streams
from wit_world.imports import wasi_http_types as _t

#: Bytes read per stream call.
_CHUNK = 64 * 1024
#: Bytes written per call: wasi:io's blocking-write-and-flush takes at most
#: 4096.
_WRITE_CHUNK = 4096

_METHODS = {
    "GET": _t.Method_Get,
    "HEAD": _t.Method_Head,
    "POST": _t.Method_Post,
    "PUT": _t.Method_Put,
    "DELETE": _t.Method_Delete,
    "CONNECT": _t.Method_Connect,
    "OPTIONS": _t.Method_Options,
    "TRACE": _t.Method_Trace,
    "PATCH": _t.Method_Patch,
}


class HttpError(Exception):
    """The request got no reply: the router refused it (not granted, a
    prohibited address, a limit) or it failed (refused connection, timeout).

    ``code`` is the ``wasi:http`` error code's name, e.g.
    ``"HTTP-request-denied"``.
    """

    def __init__(self, url, code, detail=None):
        super().__init__(f"{url}: {code}" + (f" ({detail})" if detail else ""))
        self.url = url
        self.code = code
        self.detail = detail


@dataclass
class Reply:
    """What the called service answered."""

    #: The HTTP status.
    status: int
    #: The headers, as ``(name, value)`` pairs; names in lower case.
    headers: list
    #: The whole body.
    body: bytes

    def header(self, name, default=None):
        """The first value of header ``name`` (any case), or ``default``."""
        name = name.lower()
        return next((v for k, v in self.headers if k == name), default)

    def text(self):
        """The body decoded as UTF-8."""
        return self.body.decode("utf-8")

    def json(self):
        """The body decoded as JSON."""
        return json.loads(self.body)


#: Words the WIT names of error codes write in capitals.
_ACRONYMS = {"Http": "HTTP", "Dns": "DNS", "Tls": "TLS", "Ip": "IP", "Uri": "URI"}


def _error_code(url, error):
    """An :class:`HttpError` named as WIT names the code:
    ``ErrorCode_DestinationIpProhibited`` is ``destination-IP-prohibited``."""
    name = type(error).__name__.removeprefix("ErrorCode_")
    words, word = [], ""
    for c in name:
        if c.isupper() and word:
            words.append(word)
            word = ""
        word += c
    words.append(word)
    code = "-".join(_ACRONYMS.get(w, w.lower()) for w in words)
    detail = getattr(error, "value", None)
    return HttpError(url, code, None if detail is None else str(detail))


def fetch(url, method="GET", body=None, headers=()):
    """Sends one request and returns its :class:`Reply`.

    ``body`` is ``bytes``, ``str`` (sent as UTF-8) or ``None``, sent with a
    ``content-length`` unless ``headers`` has one; ``headers`` are ``(name,
    value)`` pairs. Redirects are not followed: a 3xx is a
    reply, and its ``location`` header says where (a new :func:`fetch` is a
    new request, checked against the grant like the first).
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"not an absolute http(s) URL: {url!r}")
    if isinstance(body, str):
        body = body.encode("utf-8")
    headers = [(k, v if isinstance(v, bytes) else str(v).encode("utf-8")) for k, v in headers]
    if body and not any(k.lower() == "content-length" for k, _ in headers):
        # Sent with its length rather than chunked, as most services expect.
        headers.append(("content-length", str(len(body)).encode()))
    try:
        fields = _t.Fields.from_list(headers)
    except Err as e:
        raise ValueError(f"headers not allowed in a request: {type(e.value).__name__}") from None
    request = _t.OutgoingRequest(fields)
    method_case = _METHODS.get(method.upper())
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    try:
        request.set_method(method_case() if method_case else _t.Method_Other(method))
        request.set_scheme(_t.Scheme_Https() if parts.scheme == "https" else _t.Scheme_Http())
        request.set_authority(parts.netloc)
        request.set_path_with_query(path)
    except Err:
        raise ValueError(f"not a valid request: {method} {url!r}") from None
    outgoing = request.body()
    try:
        future = _handler.handle(request, None)
    except Err as e:
        raise _error_code(url, e.value) from None
    with future:
        sent = _send_body(url, outgoing, body or b"")
        with future.subscribe() as ready:
            ready.block()
        answer = future.get()
    # option<result<result<incoming-response, error-code>>>: present once
    # ready, the outer result an error only when asked twice.
    if isinstance(answer, Err):
        raise HttpError(url, "internal-error", "the reply was taken twice")
    if isinstance(answer.value, Err):
        raise _error_code(url, answer.value.value)
    if sent is not None:
        # The body failed to go out, yet a reply came: report the failure.
        raise sent
    with answer.value.value as response:
        status = response.status()
        with response.headers() as h:
            reply_headers = [(k.lower(), v.decode("utf-8", "replace")) for k, v in h.entries()]
        reply_body = _read_body(url, response.consume())
    return Reply(status=status, headers=reply_headers, body=reply_body)


def _stream_error(url, error):
    """An :class:`HttpError` for a failed stream operation: the HTTP error
    code the host gave, else ``internal-error`` with the host's message
    (e.g. ``body size exceeds limit: N`` past the flow's byte limits)."""
    if isinstance(error, _streams.StreamError_LastOperationFailed):
        code = _t.http_error_code(error.value)
        if code is not None:
            return _error_code(url, code)
        return HttpError(url, "internal-error", error.value.to_debug_string())
    return HttpError(url, "HTTP-protocol-error", "the stream closed early")


def _send_body(url, outgoing, body):
    """Writes ``body`` in wasi:io's 4096-byte writes and finishes it; the
    failure as an :class:`HttpError` (the reply, when one comes, may name
    it better), or ``None``."""
    failure = None
    with outgoing.write() as stream:
        for start in range(0, len(body), _WRITE_CHUNK):
            try:
                stream.blocking_write_and_flush(body[start : start + _WRITE_CHUNK])
            except Err as e:
                failure = _stream_error(url, e.value)
                break
    try:
        _t.OutgoingBody.finish(outgoing, None)
    except Err as e:
        failure = failure or _error_code(url, e.value)
    return failure


def _read_body(url, incoming):
    """Reads a whole response body and finishes it."""
    chunks = []
    try:
        with incoming.stream() as stream:
            while True:
                try:
                    chunks.append(stream.blocking_read(_CHUNK))
                except Err as e:
                    if isinstance(e.value, _streams.StreamError_Closed):
                        break
                    raise _stream_error(url, e.value) from None
    finally:
        # The stream is dropped first: the body is its parent.
        _t.IncomingBody.finish(incoming).__exit__(None, None, None)
    return b"".join(chunks)


__all__ = ["HttpError", "Reply", "fetch"]
