"""The agent as a model: one request runs one full agent turn, tools executed on the server.

The request's last message (the user's) is the turn's input; the conversation itself is kept by
the server in a thread. A caller names its thread with the ``X-Thread-Id`` header or the
request's ``user`` field (a key of the caller's choosing, mapped per caller by
:class:`agent.serve.ownership.OwnershipStore`); without one, each request starts a new thread
whose key comes back in the ``X-Thread-Id`` response header and in ``llava_agent.thread``.
A new key is bound to a fresh thread id before the request queues, but the thread itself is
started by the agent with the turn's first message: a first turn that fails, or never runs
(a full queue, a client that leaves while waiting), leaves neither a thread nor a binding.

Yields the pieces of :mod:`agent.serve.completions`: the model's tokens as :class:`TextPiece` s,
each tool call and tool result as an :class:`EventPiece` (``llava_agent`` events; a tool's error
as :func:`agent.serve.tool_text.shown_tool_text` shows it to the caller), and a
:class:`Final` whose ``llava_agent`` field lists the calls and the generated files. Generated
files (images, speech) are registered to the caller and offered at ``/v1/files/{id}/content``.

Long-term memory is used only by a server without API keys (loopback only, one caller: the
person at this machine, as in the terminal chat): its facts are shared by everyone who uses the
data folder, and the callers of a server with keys must not read each other's.
"""

from __future__ import annotations

import logging
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.serve.artifact_files import served_files
from agent.serve.completions import EventPiece, Final, Piece, TextPiece
from agent.serve.inputs import AgentInput
from agent.serve.ownership import FileRecord, OwnershipStore
from agent.serve.security import LOCAL_CALLER
from agent.serve.tool_text import shown_tool_text

if TYPE_CHECKING:  # pragma: no cover
    from agent.app.multimodal_agent import MultimodalAgent
    from agent.core.config import AppConfig

logger = logging.getLogger(__name__)


def _usage_totals(handler: Any) -> tuple[int, int]:
    totals = [0, 0]
    for usage in handler.usage_metadata.values():
        totals[0] += int(usage.get("input_tokens", 0))
        totals[1] += int(usage.get("output_tokens", 0))
    return totals[0], totals[1]


class AgentModel:
    """Runs agent turns for callers; the agent is built on first use and shared."""

    def __init__(
        self,
        config: AppConfig,
        store: OwnershipStore,
        *,
        build: Callable[[], MultimodalAgent] | None = None,
        single_caller: bool = False,
    ) -> None:
        """``single_caller``: the server has no API keys, so the agent may use long-term memory."""
        self.config = config
        self.store = store
        self.single_caller = single_caller
        self._build = build
        self._agent: MultimodalAgent | None = None
        self._lock = threading.Lock()

    def agent(self) -> MultimodalAgent:
        with self._lock:
            if self._agent is None:
                if self._build is not None:
                    self._agent = self._build()
                else:
                    from agent.app.multimodal_agent import MultimodalAgent

                    if self.single_caller:  # long-term memory as the config says
                        self._agent = MultimodalAgent.from_config(self.config)
                    else:
                        self._agent = MultimodalAgent.from_config(self.config, memory=None)
            return self._agent

    def thread_for(self, caller: str, key: str | None) -> tuple[str, str]:
        """(thread id, the caller's key for it): the caller's thread, or a fresh id bound to the key.

        A fresh id names no thread yet: the agent starts the thread under it with its first turn
        and deletes it again if that turn fails; :meth:`settle_thread` forgets the binding then."""
        agent = self.agent()
        if key:
            thread_id = self.store.thread_for(caller, key)
            if thread_id is not None:
                return thread_id, key
            if caller == LOCAL_CALLER and agent.conversations.exists(key):
                # the one caller of a keyless server resumes a thread by its id (one of the terminal chat's)
                self.store.bind_thread(caller, key, key)
                return key, key
        thread_id = self._unused_thread_id()
        key = key or thread_id
        self.store.bind_thread(caller, key, thread_id)
        return thread_id, key

    def _unused_thread_id(self) -> str:
        """An id no thread has and no caller's key is bound to (the conversation store's short form)."""
        conversations = self.agent().conversations
        while True:
            thread_id = secrets.token_hex(4)
            if not conversations.exists(thread_id) and not self.store.is_bound(thread_id):
                return thread_id

    def settle_thread(self, caller: str, key: str, thread_id: str) -> None:
        """After a request on ``key``: forget the binding of a thread that was never started (its first
        turn failed or never ran), keep (or bind again) the one of a thread that exists."""
        try:
            if not self.agent().conversations.exists(thread_id):
                self.store.unbind_thread(thread_id)
            elif self.store.thread_for(caller, key) is None:  # forgotten by a request on the same key that failed
                self.store.bind_thread(caller, key, thread_id)
        except Exception as exc:  # noqa: BLE001 - the request's own outcome is what the caller must get
            logger.warning("could not settle thread %s after its request: %s", thread_id, exc)

    def _register_files(self, caller: str, artifact: Any, file_url: Callable[[FileRecord], str]) -> list[dict]:
        """Files a tool wrote into the artifacts folder, registered to ``caller``; anything else is not served."""
        return served_files(caller, artifact, self.config, self.store, file_url)

    def produce(
        self,
        caller: str,
        thread_key: str | None,
        turn: AgentInput,
        *,
        cancel: threading.Event,
        file_url: Callable[[FileRecord], str],
    ) -> Iterator[Piece]:
        """Run one turn (blocking; run it in a worker thread). Setting ``cancel`` ends it early."""
        from langchain_core.callbacks import UsageMetadataCallbackHandler

        from agent.app.events import ReplyEvent, TokenEvent, ToolCallEvent, ToolResultEvent

        agent = self.agent()
        thread_id, key = self.thread_for(caller, thread_key)
        logger.info("agent turn on thread %s (%d image(s), %d video(s))", thread_id, len(turn.images), len(turn.videos))
        uploads = Path(tempfile.mkdtemp(prefix="llava-serve-"))
        try:
            paths: list[str] = []
            for number, image in enumerate(turn.images, start=1):
                if image.path is not None:
                    paths.append(str(image.path))
                else:  # a data URL: saved as a file, so the agent keeps it as an attachment tools can read
                    target = uploads / f"image-{number}.png"
                    image.image.save(target, format="PNG")
                    paths.append(str(target))
            usage = UsageMetadataCallbackHandler()
            all_files: list[dict] = []
            started: dict[str, float] = {}
            events = agent.stream(turn.text, images=paths, thread_id=thread_id, callbacks=[usage], stop=cancel,
                                  videos=turn.videos)  # fmt: skip
            try:
                for event in events:
                    if isinstance(event, TokenEvent):
                        yield TextPiece(event.text)
                    elif isinstance(event, ToolCallEvent):
                        started[event.call_id] = time.monotonic()
                        yield EventPiece({"type": "tool_call", "id": event.call_id, "name": event.name,
                                          "arguments": event.args})  # fmt: skip
                    elif isinstance(event, ToolResultEvent):
                        files = [] if event.is_error else self._register_files(caller, event.artifact, file_url)
                        all_files.extend(files)
                        began = started.pop(event.call_id, None)
                        seconds = round(time.monotonic() - began, 3) if began is not None else None
                        content = shown_tool_text(event.content, is_error=event.is_error, caller=caller,
                                                  config=self.config)  # fmt: skip
                        yield EventPiece({"type": "tool_result", "id": event.call_id, "name": event.name,
                                          "is_error": event.is_error, "content": content, "files": files,
                                          "duration_s": seconds})  # fmt: skip
                    elif isinstance(event, ReplyEvent):
                        reply = event.reply
                        prompt_tokens, completion_tokens = _usage_totals(usage)
                        cut = reply.stopped or reply.limit_reached
                        yield Final(
                            finish_reason="length" if cut else "stop",
                            prompt_tokens=prompt_tokens,
                            completion_tokens=completion_tokens,
                            text=reply.text,
                            extra={"llava_agent": {
                                "thread": key,
                                "tool_calls": [{"id": c["id"], "name": c["name"], "arguments": c["args"],
                                                "status": c["status"]} for c in reply.tool_calls],
                                "files": all_files,
                                "stopped": reply.stopped,
                                "limit_reached": reply.limit_reached,
                            }},
                        )  # fmt: skip
            finally:
                events.close()
        finally:
            shutil.rmtree(uploads, ignore_errors=True)
            self.settle_thread(caller, key, thread_id)
