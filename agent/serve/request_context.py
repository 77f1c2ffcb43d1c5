"""Each request's context: its id (in every log line and response), common headers, the access log, disconnects.

:class:`RequestContext` is the ASGI middleware: it keeps the client's ``X-Request-Id`` when it is
sane (else makes one), sets it in :data:`REQUEST_ID` for the request's log lines
(:class:`RequestIdFilter` adds it to every record), answers it in the ``X-Request-Id`` header with
``nosniff`` and ``no-store``, and logs one access line per request. An exception no route handled
is answered here too, while the id is still set: the error of
:func:`agent.serve.protocol.error_for` (a 500 says only the request id, and ``x-should-retry:
false`` keeps the official clients from running an agent turn, tools and all, again), with the
same headers, and one log line with the traceback. :class:`DisconnectWatcher` notices a client
that goes away while its reply is being made.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import JSONResponse

from agent.serve.protocol import error_for

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("agent.serve.access")

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("llava_serve_request_id", default="-")
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every log record (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


@contextmanager
def logging_as(context: contextvars.Context) -> Iterator[None]:
    """Log with the request id of ``context`` (work done for a request outside its own task)."""
    token = REQUEST_ID.set(context.get(REQUEST_ID, "-"))
    try:
        yield
    finally:
        REQUEST_ID.reset(token)


class RequestContext:
    """Gives each request an id (the client's ``X-Request-Id`` when sane), sets common headers, logs it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _CLIENT_REQUEST_ID.match(given) else "req_" + secrets.token_hex(8)
        token = REQUEST_ID.set(request_id)
        started = time.perf_counter()
        status = [0]

        async def send_with_headers(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = MutableHeaders(scope=message)
                headers["x-request-id"] = request_id
                headers["x-content-type-options"] = "nosniff"
                headers.setdefault("cache-control", "no-store")
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            if status[0]:  # the response has begun: the client can only see it end early
                logger.error("request failed after its response began: %s", exc, exc_info=exc)
                raise
            error = error_for(exc, request_id)
            if error.status >= 500:
                logger.error("request failed: %s", exc, exc_info=exc)
            response = JSONResponse(error.body(), status_code=error.status, headers=error.headers)
            await response(scope, receive, send_with_headers)
        finally:
            client = scope.get("client") or ("-", 0)
            # the path is the client's text: quoted (%r), so it cannot forge log lines
            access_logger.info("%s %s %r %d %.3fs", client[0], scope.get("method"), scope.get("path"), status[0],
                               time.perf_counter() - started)  # fmt: skip
            REQUEST_ID.reset(token)


class DisconnectWatcher:
    """Notices a client that goes away (after its body was read) and calls the registered callbacks."""

    def __init__(self, request: Request) -> None:
        self.disconnected = asyncio.Event()
        self._callbacks: list[Any] = []
        self._task = asyncio.ensure_future(self._watch(request))

    async def _watch(self, request: Request) -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                break
        self.disconnected.set()
        for callback in self._callbacks:
            callback()

    def on_disconnect(self, callback: Any) -> None:
        self._callbacks.append(callback)

    def stop(self) -> None:
        self._task.cancel()
