"""``MultimodalAgent``: a LangGraph agent over any LangChain chat model and tools, with memory.

The agent is ``langchain.agents.create_agent`` plus:

* a SQLite checkpointer (:mod:`memory.conversations`) so threads survive restarts;
* tool failures turned into error ``ToolMessage`` s the model can read and recover from;
* the context policy (:mod:`agent.app.context`): older images become text references, long
  threads are trimmed to the model's context;
* long-term memory (:mod:`memory.long_term`): ``remember``/``recall`` tools and relevant facts
  added to the system prompt automatically;
* a step limit that ends a turn with a clear message instead of looping.

``chat`` returns an :class:`AgentReply`; ``stream`` yields typed events as they happen
(:class:`TokenEvent`, :class:`ToolCallEvent`, :class:`ToolResultEvent`, :class:`ReplyEvent`);
``achat``/``astream`` are their async twins. ``stop()`` ends the current generation early.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain.agents import create_agent
from langchain.agents.middleware import AgentMiddleware, ToolErrorMiddleware
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, ToolMessage
from langgraph.errors import GraphRecursionError

from agent.app.attachments import attachments_folder, build_user_message, save_attachment
from agent.app.context import ContextPolicyMiddleware, model_max_images
from agent.app.events import (
    AgentEvent,
    AgentReply,
    ReplyEvent,
    TokenEvent,
    ToolCallEvent,
    ToolResultEvent,
    TurnCollector,
)
from agent.app.grounding import ArgumentGroundingMiddleware
from agent.app.routing import routing_middleware
from agent.app.system_prompt import build_system_prompt
from agent.app.tool_choice import tool_choice_middleware
from agent.app.tool_limits import ToolLimitsMiddleware
from agent.app.vision_chat import ChatModelVision, attach_vision_chat
from agent.core.config import AppConfig, load_config
from agent.core.errors import InputError
from agent.core.untrusted import shortened
from agent.llava.chat_model import ChatLlava
from memory.conversations import ConversationStore, title_from_message
from memory.long_term import LongTermMemory
from memory.thread_lease import lease_folder, writing_turn
from tools import build_tools

if TYPE_CHECKING:
    from langchain.agents.middleware import ToolCallRequest
    from langchain_core.language_models import BaseChatModel
    from langchain_core.messages import BaseMessage
    from langchain_core.tools import BaseTool

__all__ = [
    "AgentEvent",
    "AgentReply",
    "GenerationStopped",
    "MultimodalAgent",
    "ReplyEvent",
    "TokenEvent",
    "ToolCallEvent",
    "ToolResultEvent",
    "build_user_message",
    "save_attachment",
    "tool_error_message",
]

logger = logging.getLogger(__name__)

LIMIT_MESSAGE = (
    "I stopped after {limit} agent steps without reaching an answer (the step limit). "
    "Ask again with a narrower request, or raise agent.recursion_limit in the config."
)


class GenerationStopped(Exception):
    """Raised inside a model call to end it early when :meth:`MultimodalAgent.stop` is called."""


class _StopOnFlag(BaseCallbackHandler):
    """Raises inside the model's token loop once the turn's stop event is set.

    Streaming chat models report each token through ``on_llm_new_token`` from inside their
    generation loop; raising there unwinds that loop, and a model that generates in a worker
    (``ChatLlava``'s stopping criteria) cancels it as its generator closes.
    """

    raise_error = True
    run_inline = True

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop

    # only tokens matter: skip every other event, which keeps a turn cheap
    ignore_chain = True
    ignore_agent = True
    ignore_retriever = True
    ignore_retry = True
    ignore_custom_event = True

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        if self.stop.is_set():
            raise GenerationStopped("generation stopped by the user")


def tool_error_message(exc: BaseException, request: ToolCallRequest) -> str:
    """How a tool failure is worded for the model, so it can fix the call or choose another tool."""
    name = request.tool_call["name"]
    args = shortened(json.dumps(request.tool_call.get("args", {}), ensure_ascii=False, default=str))
    logger.warning("tool %s failed: %s", name, exc, exc_info=logger.isEnabledFor(logging.DEBUG))
    return f"Error running {name} with arguments {args}: {exc} Please try again or use another tool."


class _DropStopNoise(logging.Filter):
    """LangChain logs a callback that raises; a user's stop is not an error worth a log line."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "GenerationStopped" not in record.getMessage()


def _quiet_stop_noise() -> None:
    """Install :class:`_DropStopNoise` once (when the first agent is built, not at import)."""
    source = logging.getLogger("langchain_core.callbacks.manager")
    if not any(isinstance(f, _DropStopNoise) for f in source.filters):
        source.addFilter(_DropStopNoise())


class MultimodalAgent:
    """A chat agent over a LangChain chat model and tools, with persistent threads and memory.

    Args:
        model: any LangChain chat model that supports ``bind_tools``; default ``ChatLlava``
            built from ``config.model``.
        tools: LangChain tools; default ``tools.build_tools(config)``.
        config: an :class:`~agent.core.config.AppConfig`, a TOML path or a dict (see ``load_config``).
        conversations: the thread store; default one at ``config.conversations_db``.
        memory: long-term memory whose ``remember``/``recall`` tools are added and whose
            relevant facts go into the system prompt; ``None`` for none.
        system_prompt: replaces the built-in prompt (``agent.system_prompt`` in the config adds to it).
        middleware: extra LangChain agent middleware, run inside ours.
    """

    def __init__(
        self,
        model: BaseChatModel | None = None,
        tools: Sequence[BaseTool] | None = None,
        *,
        config: AppConfig | str | os.PathLike[str] | Mapping[str, Any] | None = None,
        conversations: ConversationStore | None = None,
        memory: LongTermMemory | None = None,
        system_prompt: str | None = None,
        middleware: Sequence[AgentMiddleware] = (),
    ) -> None:
        _quiet_stop_noise()
        self.config = config if isinstance(config, AppConfig) else load_config(config)
        if model is None:
            model = ChatLlava.from_config(self.config.model)
        if tools is None:
            tools = build_tools(self.config)
        self.model = model
        self.memory = memory
        self.tools: list[BaseTool] = list(tools) + (memory.tools() if memory is not None else [])
        # tools that show several images to a chat model (describe_video) get this agent's own
        attach_vision_chat(self.tools, ChatModelVision(model, lambda: model_max_images(model, self.config)))
        names = [t.name for t in self.tools]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise InputError(f"tool names must be unique; {', '.join(duplicates)} appear twice; rename or drop one")
        self.conversations = conversations or ConversationStore(self.config.conversations_db)
        self.recursion_limit = self.config.agent.recursion_limit
        self.system_prompt = system_prompt or build_system_prompt(self.tools, self.config.agent.system_prompt)
        reserved = getattr(model, "max_new_tokens", None)

        stack: list[AgentMiddleware] = [
            ToolErrorMiddleware(on_error=tool_error_message),
            ToolLimitsMiddleware.from_config(self.config.tools),  # calls per reply, time per call
        ]
        if memory is not None:
            stack.append(memory.middleware(self.config.memory.recall_k))
        stack.append(
            ContextPolicyMiddleware.for_model(model, self.config, reserved if isinstance(reserved, int) else 512)
        )
        forced = tool_choice_middleware(self.config.agent.tool_choice, names)
        if forced is not None:
            stack.append(forced)
        self.routing = routing_middleware(self.config, self.tools, memory.embedder if memory is not None else None)
        if self.routing is not None:  # inside a forced tool_choice, which it leaves alone
            stack.append(self.routing)
        if self.config.agent.ground_arguments:  # inside routing: repeated calls are compared once grounded
            stack.append(ArgumentGroundingMiddleware(self.tools))
        stack.extend(middleware)
        self.graph = create_agent(
            model,
            self.tools,
            system_prompt=self.system_prompt,
            middleware=stack,
            checkpointer=self.conversations.checkpointer,
        )
        self._stop_lock = threading.Lock()
        self._active_stops: set[threading.Event] = set()

    @classmethod
    def from_config(
        cls, source: AppConfig | str | os.PathLike[str] | Mapping[str, Any] | None = None, **kwargs: Any
    ) -> MultimodalAgent:
        """The agent the CLI runs: ChatLlava, the configured tools, threads and long-term memory."""
        config = source if isinstance(source, AppConfig) else load_config(source)
        if "memory" not in kwargs and config.agent.long_term_memory:
            kwargs["memory"] = LongTermMemory(config)
        return cls(config=config, **kwargs)

    @property
    def attachments_dir(self) -> Path:
        return attachments_folder(self.config.data_dir)

    def prepare(self) -> None:
        """Load now what the first turn would wait for: the chat model (its weights, head copy) and routing's embedder.

        A model that cannot load raises here (as its first turn would); routing that cannot load is
        switched off with a warning, and the model decides every turn.
        """
        if hasattr(type(self.model), "prepare"):
            self.model.prepare()
        if self.routing is not None:
            self.routing.warm_up()

    def new_thread(self, title: str = "") -> str:
        """Start a thread and return its id."""
        return self.conversations.new_thread(title).thread_id

    def history(self, thread_id: str) -> list[BaseMessage]:
        """The stored messages of a thread (raises ``InputError`` for an unknown one)."""
        return self.conversations.messages(thread_id)

    def stop(self) -> None:
        """Stop every generation in progress; their replies come back with ``stopped=True``."""
        with self._stop_lock:
            for event in self._active_stops:
                event.set()

    def chat(
        self,
        message: str,
        images: Sequence[str | os.PathLike[str]] = (),
        thread_id: str | None = None,
        *,
        callbacks: Sequence[Any] = (),
        videos: Sequence[str | os.PathLike[str]] = (),
    ) -> AgentReply:
        """Run one turn and return the final reply (a new thread when ``thread_id`` is None).

        A ``thread_id`` the store has not seen starts a thread under that id, so an application
        can key threads by its own ids (``conversations.exists(id)`` tells the two apart).
        ``videos`` are attached by path (``[attached video: PATH]``) for ``describe_video``. A turn
        that raises leaves its thread as it was before the turn.
        """
        reply: AgentReply | None = None
        # no token events wanted: the graph runs its steps inline instead of streaming concurrently
        for event in self._turn(message, images, thread_id, callbacks, None, stream_tokens=False, videos=videos):
            if isinstance(event, ReplyEvent):
                reply = event.reply
        assert reply is not None  # a turn always ends with a ReplyEvent
        return reply

    def stream(
        self,
        message: str,
        images: Sequence[str | os.PathLike[str]] = (),
        thread_id: str | None = None,
        *,
        callbacks: Sequence[Any] = (),
        stop: threading.Event | None = None,
        videos: Sequence[str | os.PathLike[str]] = (),
    ) -> Iterator[AgentEvent]:
        """Run one turn, yielding events as they happen; the last one is a :class:`ReplyEvent`.

        ``callbacks`` are LangChain callback handlers for this turn (tracing, logging, metrics).
        Setting ``stop`` (or calling :meth:`stop`) ends this turn early. A model call holds its
        model until the stream is read past it: a consumer that pauses mid-reply keeps other
        threads using the same model waiting, so read the stream steadily, and close one you leave
        (``with contextlib.closing(agent.stream(...)) as events:``) rather than dropping it.
        """
        return self._turn(message, images, thread_id, callbacks, stop, stream_tokens=True, videos=videos)

    def _turn(
        self,
        message: str,
        images: Sequence[str | os.PathLike[str]],
        thread_id: str | None,
        callbacks: Sequence[Any],
        stop: threading.Event | None,
        *,
        stream_tokens: bool,
        videos: Sequence[str | os.PathLike[str]] = (),
    ) -> Iterator[AgentEvent]:
        """One turn; on an existing thread it holds the thread's lease (one writer at a time)."""
        if thread_id is None:
            yield from self._run_turn(message, images, None, callbacks, stop, stream_tokens=stream_tokens, videos=videos)
            return
        with writing_turn(lease_folder(self.conversations.db_path), thread_id):
            yield from self._run_turn(
                message, images, thread_id, callbacks, stop, stream_tokens=stream_tokens, videos=videos
            )

    def _run_turn(
        self,
        message: str,
        images: Sequence[str | os.PathLike[str]],
        thread_id: str | None,
        callbacks: Sequence[Any],
        stop: threading.Event | None,
        *,
        stream_tokens: bool,
        videos: Sequence[str | os.PathLike[str]] = (),
    ) -> Iterator[AgentEvent]:
        if isinstance(images, (str, os.PathLike)):
            images = [images]
        if isinstance(videos, (str, os.PathLike)):
            videos = [videos]
        human = build_user_message(message, images, self.attachments_dir, videos=videos)
        title = message.strip() or (
            f"image {Path(images[0]).name}" if images else f"video {Path(videos[0]).name}" if videos else ""
        )
        created = thread_id is None or not self.conversations.exists(thread_id)
        if thread_id is None:
            thread_id = self.conversations.new_thread(title_from_message(title)).thread_id
        else:
            self.conversations.touch(thread_id, title)
        stop = stop or threading.Event()
        run_config = {
            "configurable": {"thread_id": thread_id},
            "recursion_limit": self.recursion_limit,
            "callbacks": [_StopOnFlag(stop), *callbacks],
        }
        collector = TurnCollector(thread_id)
        before = set() if created else self._message_ids(run_config)
        with self._stop_lock:
            self._active_stops.add(stop)
        # durability="exit": the turn is written once, when it ends (also when stopped or limited).
        parts = self.graph.stream(
            {"messages": [human]},
            run_config,
            stream_mode=["messages", "updates"] if stream_tokens else ["updates"],
            durability="exit",
        )
        try:
            for mode, data in parts:
                if stop.is_set():
                    collector.stopped = True
                    break
                yield from collector.consume(mode, data)
                if stop.is_set():
                    collector.stopped = True
                    break
        except GraphRecursionError:
            collector.limit_reached = True
        except GenerationStopped:
            collector.stopped = True
        except GeneratorExit:  # the consumer stopped reading mid-turn: stop the model, keep what was said
            stop.set()
            parts.close()
            try:
                self._close_turn(run_config, "".join(collector.tokens))
            except Exception as exc:  # nothing can be reported to a consumer that has left
                logger.warning("could not close the interrupted turn of thread %s: %s", thread_id, exc)
            raise
        except Exception:
            if created:  # a failed first turn leaves no thread behind
                self.conversations.delete(thread_id)
            else:  # a failed turn leaves the thread as it was: no unanswered message to grow every later prompt
                self._drop_turn(run_config, before)
            raise
        finally:
            parts.close()
            with self._stop_lock:
                self._active_stops.discard(stop)
        text = LIMIT_MESSAGE.format(limit=self.recursion_limit)
        if collector.limit_reached or collector.stopped:
            self._close_turn(run_config, text if collector.limit_reached else "".join(collector.tokens))
        yield ReplyEvent(collector.reply(text))

    def _message_ids(self, run_config: dict[str, Any]) -> set[str]:
        return {m.id for m in self.graph.get_state(run_config).values.get("messages", []) if m.id}

    def _drop_turn(self, run_config: dict[str, Any], before: set[str]) -> None:
        """Remove what a failed turn added to its thread (its user message, calls and results)."""
        from langchain_core.messages import RemoveMessage

        try:
            messages = self.graph.get_state(run_config).values.get("messages", [])
            added = [RemoveMessage(id=m.id) for m in messages if m.id and m.id not in before]
            if added:
                self.graph.update_state(run_config, {"messages": added}, as_node="model")
        except Exception as exc:  # noqa: BLE001 - the turn's own error is the one to report
            logger.warning("could not remove the failed turn from thread %s: %s", run_config["configurable"], exc)

    def _close_turn(self, run_config: dict[str, Any], text: str) -> None:
        """Leave the thread well formed after an interrupted turn: no unanswered tool calls."""

        messages = self.graph.get_state(run_config).values.get("messages", [])
        answered = {m.tool_call_id for m in messages if isinstance(m, ToolMessage)}
        pending = [
            call for m in messages if isinstance(m, AIMessage) for call in m.tool_calls if call.get("id") not in answered
        ]
        closing: list[Any] = [
            ToolMessage(content="Not run: the turn ended first.", tool_call_id=c["id"], name=c["name"], status="error")
            for c in pending
        ]
        last = messages[-1] if messages else None
        answered_already = isinstance(last, AIMessage) and not last.tool_calls
        if text.strip() and (pending or not answered_already):
            closing.append(AIMessage(content=text.strip()))
        if closing:
            self.graph.update_state(run_config, {"messages": closing}, as_node="model")

    async def achat(
        self,
        message: str,
        images: Sequence[str | os.PathLike[str]] = (),
        thread_id: str | None = None,
        *,
        callbacks: Sequence[Any] = (),
        videos: Sequence[str | os.PathLike[str]] = (),
    ) -> AgentReply:
        """Async :meth:`chat` (the turn runs in a worker thread; the event loop stays free)."""
        reply: AgentReply | None = None
        async for event in self.astream(message, images=images, thread_id=thread_id, callbacks=callbacks, videos=videos):
            if isinstance(event, ReplyEvent):
                reply = event.reply
        assert reply is not None
        return reply

    async def astream(
        self,
        message: str,
        images: Sequence[str | os.PathLike[str]] = (),
        thread_id: str | None = None,
        *,
        callbacks: Sequence[Any] = (),
        videos: Sequence[str | os.PathLike[str]] = (),
    ) -> AsyncIterator[AgentEvent]:
        """Async :meth:`stream`: events are handed over from a worker thread as they happen.

        To leave early, close the stream (``async with contextlib.aclosing(agent.astream(...))``
        then ``break``, or cancel the task): that stops this turn only.
        """
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        done = object()
        stop = threading.Event()

        def produce() -> None:
            events = self.stream(message, images, thread_id, callbacks=callbacks, stop=stop, videos=videos)
            try:
                for event in events:
                    loop.call_soon_threadsafe(queue.put_nowait, event)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                events.close()
                loop.call_soon_threadsafe(queue.put_nowait, done)

        worker = threading.Thread(target=produce, name="agent-turn", daemon=True)
        worker.start()
        try:
            while True:
                item = await queue.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            if worker.is_alive():  # the consumer left early (break, cancellation): end this turn only
                stop.set()
                await asyncio.to_thread(worker.join)

    def close(self) -> None:
        self.conversations.close()
