"""The ASGI application: OpenAI-compatible routes over ``ChatLlava`` and the agent.

Routes:

* ``POST /v1/chat/completions``: the chat model (``model`` = its served name) or the agent
  (``model`` = ``serve.agent_model``, ``llava-agent`` by default); ``stream: true`` answers with
  server-sent events in OpenAI's chunk format.
* ``GET /v1/models``, ``GET /v1/models/{id}``.
* ``GET /v1/files/{id}`` and ``/v1/files/{id}/content``: files the agent generated, to their caller only.
* ``GET /health``: whether the model is loaded, the queue depth, request counters (no key needed).

Order of work for a completion, so that cheap refusals come first: key (401), body size (413),
JSON and fields (400), model name (404), messages and images decoded (400), a turn in the fair
queue (429 when full, 503 past the deadline), then generation in a worker thread. A streaming
response starts once the first piece of the reply exists, so errors found while starting
(a prompt over the context, a tool call that cannot fit) still get their status code; later
errors arrive as an ``{"error": ...}`` event. A client that disconnects, at any point, cancels its
generation; its turn passes to the next request once the generation has really stopped.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import re
import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent.core.config import AppConfig
from agent.core.errors import PathNotAllowedError
from agent.core.files import resolve_allowed_path
from agent.serve.agent_model import AgentModel
from agent.serve.completions import ChatCompletions, EventPiece, Final, Piece, TextPiece
from agent.serve.inputs import ImagePolicy, agent_input, to_langchain_messages
from agent.serve.jobs import Job, job_pieces, start_group
from agent.serve.ownership import FileRecord, OwnershipStore
from agent.serve.protocol import (
    SSE_DONE,
    APIError,
    ChatCompletionRequest,
    CompletionWriter,
    assistant_message,
    error_for,
    openai_tool_calls,
    parse_request,
    sse,
    usage,
)
from agent.serve.queue import FairQueue, Group, QueueFull, QueueTimeout
from agent.serve.security import ApiKeys, bearer_token

if TYPE_CHECKING:  # pragma: no cover
    from agent.llava.chat_model import ChatLlava

logger = logging.getLogger(__name__)
access_logger = logging.getLogger("agent.serve.access")

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("llava_serve_request_id", default="-")
_CLIENT_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_THREAD_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")
THREAD_HEADER = "X-Thread-Id"


class RequestIdFilter(logging.Filter):
    """Adds ``request_id`` to every log record (``-`` outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


def served_model_name(model: str) -> str:
    """The name clients use for the chat model: a hub id as is, a local folder by its name (its path stays private)."""
    path = Path(model)
    return path.name if path.is_absolute() or path.exists() else model


@dataclass
class ServerState:
    config: AppConfig
    keys: ApiKeys
    llm: ChatLlava
    chat: ChatCompletions
    agent: AgentModel | None
    store: OwnershipStore
    queue: FairQueue
    model_name: str
    policy: ImagePolicy
    started: float = field(default_factory=time.time)
    status: str = "loading"
    load_error: str | None = None
    counters: Counter = field(default_factory=Counter)

    @property
    def settings(self) -> Any:
        return self.config.serve


# ----- middleware ---------------------------------------------------------------------------------


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


# ----- the application ----------------------------------------------------------------------------


def create_app(
    config: AppConfig,
    *,
    keys: ApiKeys | None = None,
    llm: ChatLlava | None = None,
    build_agent: Any = None,
    load_on_start: bool = True,
) -> FastAPI:
    """The server's ASGI app. ``llm`` defaults to ``ChatLlava.from_config(config.model)`` with the server's image rules."""
    from agent.llava.chat_model import ChatLlava

    settings = config.serve
    keys = keys if keys is not None else ApiKeys.gather([], settings.api_keys, settings.api_keys_file)
    if llm is None:
        llm = ChatLlava.from_config(config.model, allow_remote_images=settings.allow_remote_images,
                                    max_image_pixels=settings.max_image_pixels)  # fmt: skip
    store = OwnershipStore(config.data_dir.expanduser() / "serve.sqlite")
    state = ServerState(
        config=config,
        keys=keys,
        llm=llm,
        chat=ChatCompletions(llm),
        agent=AgentModel(config, store, build=build_agent) if settings.agent_model else None,
        store=store,
        queue=FairQueue(settings.max_queue, max_batch=settings.max_batch),
        model_name=settings.model_name or served_model_name(llm.spec.model),
        policy=ImagePolicy(
            allowed_dirs=config.allowed_dirs,
            allow_remote=settings.allow_remote_images,
            max_pixels=settings.max_image_pixels,
            max_images=settings.max_images,
        ),
    )
    state.queue.start = partial(_start_group, state)
    if state.agent is not None and settings.agent_model == state.model_name:
        from agent.core.errors import ConfigError

        raise ConfigError(f"serve.agent_model and the chat model are both named {state.model_name!r}; rename one")

    if not load_on_start:  # the model loads with the first request
        state.status = "ready"

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loader = asyncio.ensure_future(_load(state)) if load_on_start else None
        yield
        if loader is not None and not loader.done():
            loader.cancel()
        store.close()

    app = FastAPI(title="llava-agent", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = state
    _install_error_handlers(app)
    if settings.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Id", THREAD_HEADER],
            expose_headers=["X-Request-Id", THREAD_HEADER],
            allow_credentials=False,
        )
    app.add_middleware(RequestContext)

    def caller_of(request: Request) -> str:
        token = bearer_token(request.headers.get("authorization"))
        caller = state.keys.caller(token)
        if caller is None:
            client = request.client.host if request.client else "-"
            logger.warning("refused a request from %s: %s API key", client, "a wrong" if token else "no")
            state.counters["unauthorized"] += 1
            message = ("the API key is not valid" if token else
                       "no API key: send the header Authorization: Bearer YOUR_KEY")  # fmt: skip
            raise APIError(401, message, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        return caller

    @app.get("/health")
    async def health() -> JSONResponse:
        from agent.core.model_manager import get_model_manager

        loaded = ("chat", state.llm.spec) in get_model_manager()
        body = {
            "status": state.status,
            "model": state.model_name,
            "model_loaded": loaded,
            "agent_model": settings.agent_model,
            "queue": {"waiting": state.queue.waiting, "active": state.queue.active, "limit": state.queue.max_waiting,
                      "max_batch": state.queue.max_batch, "batched_requests": state.queue.batched_requests},
            "requests": {k: state.counters[k] for k in ("completed", "cancelled", "failed", "rejected", "unauthorized")},
            "completion_tokens": state.counters["completion_tokens"],
            "uptime_s": round(time.time() - state.started, 1),
        }
        if state.load_error:
            body["error"] = state.load_error
        return JSONResponse(body, status_code=200 if state.status == "ready" else 503)

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": int(state.started), "owned_by": "llava-agent"}

    def model_names() -> list[str]:
        return [state.model_name] + ([settings.agent_model] if state.agent is not None else [])

    @app.get("/v1/models")
    async def list_models(caller: str = Depends(caller_of)) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [model_card(n) for n in model_names()]})

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str, caller: str = Depends(caller_of)) -> JSONResponse:
        if model_id not in model_names():
            raise _model_not_found(model_id, model_names())
        return JSONResponse(model_card(model_id))

    def owned_file(caller: str, file_id: str) -> FileRecord:
        record = state.store.file(caller, file_id)
        missing = APIError(404, f"no file {file_id!r} for this API key", code="file_not_found", param="file_id")
        if record is None:
            raise missing
        try:  # still a regular file inside the artifacts folder (not replaced by a link elsewhere)
            resolve_allowed_path(record.path, [config.artifacts_dir])
        except PathNotAllowedError:
            raise missing from None
        if not record.path.is_file():
            raise missing
        return record

    @app.get("/v1/files/{file_id}")
    async def file_info(file_id: str, caller: str = Depends(caller_of)) -> JSONResponse:
        record = owned_file(caller, file_id)
        return JSONResponse({"id": record.file_id, "object": "file", "bytes": record.bytes,
                             "created_at": int(record.created), "filename": record.path.name,
                             "purpose": "assistants_output", "mime_type": record.mime_type})  # fmt: skip

    @app.get("/v1/files/{file_id}/content")
    async def file_content(file_id: str, caller: str = Depends(caller_of)) -> FileResponse:
        record = owned_file(caller, file_id)
        return FileResponse(record.path, media_type=record.mime_type, filename=record.path.name,
                            content_disposition_type="inline",
                            headers={"content-security-policy": "default-src 'none'; sandbox"})  # fmt: skip

    def file_url(base: str, record: FileRecord) -> str:
        return f"{base.rstrip('/')}/v1/files/{record.file_id}/content"

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request, caller: str = Depends(caller_of)) -> Any:
        return await _complete(state, request, caller, file_url)

    return app


async def _load(state: ServerState) -> None:
    started = time.perf_counter()
    try:
        await asyncio.to_thread(lambda: state.llm.loaded)
    except Exception as exc:
        state.status = "error"
        state.load_error = f"{type(exc).__name__}: {exc}"
        logger.error("the model could not be loaded: %s", exc)
        return
    state.status = "ready"
    logger.info("model %s ready (%.1f s)", state.model_name, time.perf_counter() - started)


def _model_not_found(name: str, available: list[str]) -> APIError:
    return APIError(404, f"the model {name!r} does not exist here; use one of {', '.join(available)}",
                    code="model_not_found", param="model")  # fmt: skip


async def _read_body(request: Request, limit: int) -> bytes:
    too_big = APIError(413, f"the request body is over the limit of {limit:,} bytes; send smaller images (or fewer)",
                       code="request_too_large")  # fmt: skip
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_big
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    return b"".join(chunks)


def _thread_key(request: Request, body: ChatCompletionRequest) -> str | None:
    key = request.headers.get(THREAD_HEADER) or body.user
    if key is not None and not _THREAD_KEY.match(key):
        raise APIError(400, f"the thread key {key[:40]!r} must be 1-128 printable characters without spaces",
                       param="user")  # fmt: skip
    return key


async def _complete(state: ServerState, request: Request, caller: str, file_url: Any) -> Any:
    settings = state.settings
    deadline = time.monotonic() + settings.request_timeout_s
    body = parse_request(await _read_body(request, settings.max_request_bytes))
    is_agent = state.agent is not None and body.model == settings.agent_model
    if not is_agent and body.model != state.model_name:
        names = [state.model_name] + ([settings.agent_model] if state.agent is not None else [])
        raise _model_not_found(body.model, names)
    headers: dict[str, str] = {}
    loop = asyncio.get_running_loop()
    batch_key = None
    if is_agent:
        if body.tools or (body.response_format or {}).get("type", "text") != "text":
            raise APIError(400, f"the {settings.agent_model} model runs its own tools and answers in text; send tools "
                           f"and response_format to the model {state.model_name!r} instead", param="tools")  # fmt: skip
        thread_key = _thread_key(request, body)
        turn = await asyncio.to_thread(agent_input, body.messages, state.policy)
        base = settings.public_url or str(request.base_url)
        agent = state.agent
        assert agent is not None
        _, thread_key = await asyncio.to_thread(agent.thread_for, caller, thread_key, turn.text or "image")
        headers[THREAD_HEADER] = thread_key
        job = Job(loop, deadline, produce=lambda time_left: agent.produce(
            caller, thread_key, turn, cancel=job.cancel, file_url=partial(file_url, base)), stop_at_deadline=True)
    else:
        state.chat.check(body)
        messages = await asyncio.to_thread(to_langchain_messages, body.messages, state.policy)
        job = Job(loop, deadline, produce=lambda time_left: state.chat.produce(
            messages, body, cancel=job.cancel, time_left=time_left))
        if state.queue.max_batch > 1 and (batch_key := state.chat.batch_key(body, messages)) is not None:
            job.batch = (messages, body, job.cancel, deadline)
    logger.info("chat completion model=%r stream=%s messages=%d", body.model, body.stream, len(body.messages))

    watcher = DisconnectWatcher(request)
    watcher.on_disconnect(job.cancel.set)
    job.watcher = watcher  # type: ignore[attr-defined]
    try:
        joined = await _wait_for_turn(state, f"{caller}:{body.user or ''}", job, batch_key, watcher)
    except BaseException:
        job.cancel.set()  # granted at the last moment: the started work ends at once
        watcher.stop()
        raise
    if not joined:  # the client left while waiting
        watcher.stop()
        state.counters["cancelled"] += 1
        return JSONResponse({"error": {"message": "client disconnected", "type": "cancelled"}}, status_code=499)
    pieces = job_pieces(job)
    writer = CompletionWriter(body.model)
    try:
        first = await pieces.__anext__()
    except StopAsyncIteration:
        raise RuntimeError("the reply ended before it began") from None
    except BaseException:
        await pieces.aclose()
        raise
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        stream = _sse_events(writer, first, pieces, include_usage)
        return StreamingResponse(stream, media_type="text/event-stream",
                                 headers={**headers, "cache-control": "no-cache", "x-accel-buffering": "no"})  # fmt: skip
    return JSONResponse(await _collect(writer, first, pieces), headers=headers)


def _start_group(state: ServerState, group: Group) -> None:
    """The queue granted these jobs: run them (alone, or as one batch); account for each when all end."""
    jobs: list[Job] = group.payloads

    def run_batch(members: list[Job]) -> Any:
        logger.info("running %d requests as one batch", len(members))
        return state.chat.produce_batch([member.batch for member in members])

    def done() -> None:
        group.ticket.release()
        for job in jobs:
            watcher = getattr(job, "watcher", None)
            gone = watcher is not None and watcher.disconnected.is_set()
            if watcher is not None:
                watcher.stop()
            outcome = "cancelled" if gone else "failed" if job.failures else "completed"
            state.counters[outcome] += 1
            state.counters["completion_tokens"] += job.completion_tokens
            if gone:
                with contextvars_run(job):
                    logger.info("stopped: the client disconnected (%d tokens generated)", job.completion_tokens)

    start_group(jobs, run_batch, done)


class contextvars_run:  # noqa: N801 - used as a statement: ``with contextvars_run(job):``
    """Log with a job's request id from the loop (where the id of another request may be current)."""

    def __init__(self, job: Job) -> None:
        self.request_id = job.context.get(REQUEST_ID, "-")

    def __enter__(self) -> None:
        self.token = REQUEST_ID.set(self.request_id)

    def __exit__(self, *exc: Any) -> None:
        REQUEST_ID.reset(self.token)


async def _wait_for_turn(
    state: ServerState, caller: str, job: Job, batch_key: Any, watcher: DisconnectWatcher
) -> bool:
    """Queue the job until its group starts; False when the client left first. Full queue: 429; deadline: 503."""
    timeout = max(job.deadline - time.monotonic(), 0.0)
    acquire = asyncio.ensure_future(state.queue.acquire(caller, timeout, batch_key=batch_key, payload=job))
    gone = asyncio.ensure_future(watcher.disconnected.wait())
    try:
        await asyncio.wait({acquire, gone}, return_when=asyncio.FIRST_COMPLETED)
    except BaseException:  # this request itself is cancelled (shutdown)
        acquire.cancel()
        raise
    finally:
        gone.cancel()
    if not acquire.done():
        acquire.cancel()
        try:
            await acquire
            return True  # started just as the client left: its cancel event ends it
        except (asyncio.CancelledError, QueueTimeout, QueueFull):
            return False
    try:
        acquire.result()
        return True
    except QueueFull as exc:
        state.counters["rejected"] += 1
        raise APIError(429, f"the server is busy: {exc}; retry in a few seconds", type="rate_limit_error",
                       code="queue_full", headers={"Retry-After": "2"}) from None  # fmt: skip
    except QueueTimeout as exc:
        state.counters["rejected"] += 1
        raise APIError(503, f"the server is busy: {exc} (serve.request_timeout_s); retry later", type="server_error",
                       code="queue_timeout", headers={"Retry-After": "5"}) from None  # fmt: skip


async def _sse_events(
    writer: CompletionWriter, first: Piece, pieces: AsyncIterator[Piece], include_usage: bool
) -> AsyncIterator[bytes]:
    try:
        yield sse(writer.chunk({"role": "assistant", "content": ""}))
        async for piece in _prepend(first, pieces):
            if isinstance(piece, TextPiece):
                yield sse(writer.chunk({"content": piece.text}))
            elif isinstance(piece, EventPiece):
                yield sse(writer.chunk({}, extra={"llava_agent": {"event": piece.data}}))
            elif isinstance(piece, Final):
                if piece.tool_calls:
                    yield sse(writer.chunk({"tool_calls": openai_tool_calls(piece.tool_calls)}))
                counts = usage(piece.prompt_tokens, piece.completion_tokens)
                yield sse(writer.chunk({}, finish_reason=piece.finish_reason,
                                       usage=None if include_usage else counts, extra=piece.extra))  # fmt: skip
                if include_usage:
                    yield sse(writer.chunk(None, usage=counts))
        yield SSE_DONE
    except Exception as exc:  # after the headers: the error travels as an event
        error = error_for(exc, REQUEST_ID.get())
        if error.status >= 500:
            logger.error("generation failed mid-stream: %s", exc, exc_info=True)
        yield sse(error.body())
    finally:
        await pieces.aclose()


async def _prepend(first: Piece, rest: AsyncIterator[Piece]) -> AsyncIterator[Piece]:
    yield first
    async for piece in rest:
        yield piece


async def _collect(writer: CompletionWriter, first: Piece, pieces: AsyncIterator[Piece]) -> dict[str, Any]:
    final: Final | None = None
    try:
        async for piece in _prepend(first, pieces):
            if isinstance(piece, Final):
                final = piece
    finally:
        await pieces.aclose()
    if final is None:
        raise RuntimeError("the reply ended without its final piece")
    calls = openai_tool_calls(final.tool_calls) if final.tool_calls else None
    return writer.completion(
        assistant_message(final.text, calls),
        finish_reason=final.finish_reason,
        usage=usage(final.prompt_tokens, final.completion_tokens),
        extra=final.extra,
    )


def _install_error_handlers(app: FastAPI) -> None:
    def respond(error: APIError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        if exc.status >= 500:
            logger.error("%s", exc.message)
        return respond(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = f"{request.method} {request.url.path}: {exc.detail}"
        return respond(APIError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return respond(APIError(400, f"invalid request: {exc.errors()[0].get('msg', exc)}"))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        error = error_for(exc, REQUEST_ID.get())
        if error.status >= 500:
            logger.error("request failed: %s", exc, exc_info=exc)
        return respond(error)
