"""``POST /v1/chat/completions``: from the request body to the reply, streamed or whole.

Order of work, so that cheap refusals come first: (the key, checked by the route's dependency)
body size (413), JSON and fields (400), model name (404), messages and images decoded (400), a
:class:`~agent.serve.jobs.Job` in the fair queue (429 when full, 503 past the deadline), then the
reply, made in a worker thread alone or as part of a batch. A streaming response starts once the
first piece of the reply exists, so errors found while starting (a prompt over the context, a
tool call that cannot fit) still get their status code; later errors arrive as an
``{"error": ...}`` event. A client that disconnects, at any point, cancels its job; the queue
turn passes on once the job's whole group has really stopped. An agent request that never gets
its turn (429, 503, a client gone while waiting) forgets the thread id it bound for a new key.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import TYPE_CHECKING, Any

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from agent.serve.completions import EventPiece, Final, Piece, TextPiece
from agent.serve.inputs import agent_input, to_langchain_messages
from agent.serve.jobs import Job, job_pieces, start_group
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
from agent.serve.queue import Group, QueueFull, QueueTimeout
from agent.serve.request_context import REQUEST_ID, DisconnectWatcher, logging_as
from agent.serve.uploads import attach_videos

if TYPE_CHECKING:  # pragma: no cover
    from agent.serve.app import ServerState

logger = logging.getLogger(__name__)

_THREAD_KEY = re.compile(r"^[\x21-\x7e]{1,128}$")
THREAD_HEADER = "X-Thread-Id"


def model_not_found(name: str, available: list[str]) -> APIError:
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


async def complete(state: ServerState, request: Request, caller: str, file_url: Any) -> Any:
    settings = state.settings
    deadline = time.monotonic() + settings.request_timeout_s
    body = parse_request(await _read_body(request, settings.max_request_bytes))
    is_agent = state.agent is not None and body.model == settings.agent_model
    if not is_agent and body.model != state.model_name:
        names = [state.model_name] + ([settings.agent_model] if state.agent is not None else [])
        raise model_not_found(body.model, names)
    headers: dict[str, str] = {}
    loop = asyncio.get_running_loop()
    batch_key = None
    settle: Any = None
    if is_agent:
        if body.tools or (body.response_format or {}).get("type", "text") != "text":
            raise APIError(400, f"the {settings.agent_model} model runs its own tools and answers in text; send tools "
                           f"and response_format to the model {state.model_name!r} instead", param="tools")  # fmt: skip
        thread_key = _thread_key(request, body)
        turn = await asyncio.to_thread(agent_input, body.messages, state.policy)
        base = settings.public_url or str(request.base_url)
        agent = state.agent
        assert agent is not None
        if turn.file_ids:  # the caller's uploaded videos, checked and attached before the turn queues
            turn.videos = await asyncio.to_thread(attach_videos, state, agent.agent(), caller, turn.file_ids)
        thread_id, thread_key = await asyncio.to_thread(agent.thread_for, caller, thread_key)
        settle = partial(agent.settle_thread, caller, thread_key, thread_id)  # when the turn never runs
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
    job.watcher = watcher
    try:
        joined = await _wait_for_turn(state, f"{caller}:{body.user or ''}", job, batch_key, watcher)
    except BaseException as exc:
        job.cancel.set()  # granted at the last moment: the started work ends at once
        watcher.stop()
        if settle is not None and isinstance(exc, Exception):  # refused (429, 503); not when shutting down
            await asyncio.to_thread(settle)
        raise
    if not joined:  # the client left while waiting
        watcher.stop()
        state.counters["cancelled"] += 1
        if settle is not None:
            await asyncio.to_thread(settle)
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


def start_jobs(state: ServerState, group: Group) -> None:
    """The queue granted these jobs: run them (alone, or as one batch); account for each when all end."""
    jobs: list[Job] = group.payloads

    def run_batch(members: list[Job]) -> Any:
        logger.info("running %d requests as one batch", len(members))
        return state.chat.produce_batch([member.batch for member in members])

    def done() -> None:
        group.ticket.release()
        for job in jobs:
            gone = job.watcher is not None and job.watcher.disconnected.is_set()
            if job.watcher is not None:
                job.watcher.stop()
            outcome = "cancelled" if gone else "failed" if job.failures else "completed"
            state.counters[outcome] += 1
            state.counters["completion_tokens"] += job.completion_tokens
            if gone:
                with logging_as(job.context):
                    logger.info("stopped: the client disconnected (%d tokens generated)", job.completion_tokens)

    start_group(jobs, run_batch, done)


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


