"""The ASGI application: OpenAI-compatible routes over ``ChatLlava`` and the agent.

Routes:

* ``POST /v1/chat/completions``: the chat model (``model`` = its served name) or the agent
  (``model`` = ``serve.agent_model``, ``llava-agent`` by default); ``stream: true`` answers with
  server-sent events in OpenAI's chunk format.
* ``GET /v1/models``, ``GET /v1/models/{id}``.
* ``GET /v1/files/{id}`` and ``/v1/files/{id}/content``: files the agent generated and videos the
  caller uploaded or attached, to their caller only.
* ``POST /v1/uploads``: a video for the agent to look at (:mod:`agent.serve.uploads`).
* ``GET /health``: whether the model is loaded, the queue depth, request counters (no key needed).
* ``/v1/agent/...``: the agent's threads, tools and memories (:mod:`agent.serve.agent_routes`).
* ``GET /``: the chat page (:mod:`agent.serve.web_page`), unless ``serve.ui`` is off.

Every ``/v1/`` route needs an API key (a dependency checked before the body is read). The
completion itself is :mod:`agent.serve.completion_route`; each request's id, headers, access
log line and the answer to an unexpected failure are :mod:`agent.serve.request_context`.
"""

from __future__ import annotations

import asyncio
import logging
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
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from agent.core.config import AppConfig
from agent.core.errors import PathNotAllowedError
from agent.core.files import resolve_allowed_path
from agent.serve.agent_model import AgentModel
from agent.serve.agent_routes import add_agent_routes
from agent.serve.completion_route import THREAD_HEADER, complete, model_not_found, start_jobs
from agent.serve.completions import ChatCompletions
from agent.serve.inputs import ImagePolicy
from agent.serve.ownership import FileRecord, OwnershipStore
from agent.serve.protocol import APIError
from agent.serve.queue import FairQueue
from agent.serve.request_context import RequestContext
from agent.serve.security import ApiKeys, bearer_token
from agent.serve.uploads import add_upload_routes, served_folders
from agent.serve.web_page import add_page_routes

if TYPE_CHECKING:  # pragma: no cover
    from agent.llava.chat_model import ChatLlava

logger = logging.getLogger(__name__)



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
        agent=AgentModel(config, store, build=build_agent, single_caller=not keys.required) if settings.agent_model else None,
        store=store,
        queue=FairQueue(settings.max_queue, max_batch=settings.max_batch),
        model_name=settings.model_name or served_model_name(llm.spec.model),
        policy=ImagePolicy(
            allowed_dirs=config.allowed_dirs,
            allow_remote=settings.allow_remote_images,
            max_pixels=settings.max_image_pixels,
            max_images=settings.max_images,
            # callers with keys never name files of the data folder (theirs arrive by file id): it is everyone's
            private_dirs=(config.data_dir, config.artifacts_dir) if keys.required else (),
        ),
    )
    state.queue.start = partial(start_jobs, state)
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
            allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type", "X-Request-Id", THREAD_HEADER],
            expose_headers=["X-Request-Id", THREAD_HEADER],
            allow_credentials=False,
        )
    app.add_middleware(RequestContext)

    async def caller_of(request: Request) -> str:  # async: runs on the loop, like the counters it updates
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
            raise model_not_found(model_id, model_names())
        return JSONResponse(model_card(model_id))

    def owned_file(caller: str, file_id: str) -> FileRecord:
        record = state.store.file(caller, file_id)
        missing = APIError(404, f"no file {file_id!r} for this API key", code="file_not_found", param="file_id")
        if record is None:
            raise missing
        try:  # still a regular file inside the served folders (not replaced by a link elsewhere)
            resolve_allowed_path(record.path, served_folders(config))
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
        return await complete(state, request, caller, file_url)

    add_agent_routes(app, state, caller_of, file_url)
    add_upload_routes(app, state, caller_of)
    if settings.ui:
        add_page_routes(app)

    return app


async def _load(state: ServerState) -> None:
    started = time.perf_counter()
    try:
        await asyncio.to_thread(state.llm.prepare)  # the weights and the head copy, before the first request
    except Exception as exc:
        state.status = "error"
        state.load_error = f"{type(exc).__name__}: {exc}"
        logger.error("the model could not be loaded: %s", exc)
        return
    state.status = "ready"
    logger.info("model %s ready (%.1f s)", state.model_name, time.perf_counter() - started)


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
    # any other exception is answered by RequestContext, which still knows the request's id
