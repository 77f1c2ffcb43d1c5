"""The routing benchmark: does the agent call the right tool, with the right arguments, or none?

:func:`evaluate_routing` drives **the agent's own first model call** of a turn -- the same
``MultimodalAgent`` (system prompt, bound tools, middleware, routing mode) a user talks to --
over a labelled set of requests, and scores the decision:

* **routing accuracy**: the right tool was called, or no tool when none fits;
* **per-tool precision and recall**, and a confusion table (rows: expected, columns: called);
* **false-call rate**: the share of no-tool requests that got a tool call;
* **argument accuracy** (BFCL-style): of the calls made to the right tool, the share whose
  checked arguments are right after normalisation (a path as written in the request, the words
  to speak, the subject words of a picture); **call accuracy** counts both at once over every
  request that needs a tool;
* **latency**: the median time from sending a request to the decision (the complete call, or
  the first token of a plain answer).

Tools run as instant stand-ins with the real tools' names, descriptions and argument schemas,
and the turn ends after the first model call, so the benchmark measures decisions, not tool
models. A plain answer is stopped at its first token unless ``answers=True``.

The labelled set and the scores are :mod:`agent.app.routing_scores`'s.
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.app.routing_scores import (
    ATTACHED,
    HELD_OUT_SET,
    NO_TOOL,
    SHIPPED_SETS,
    CaseResult,
    RoutingCase,
    RoutingReport,
    argument_matches,
    arguments_match,
    held_out_set_path,
    load_routing_set,
    normalise_path,
    normalise_text,
    score_case,
)
from agent.core.errors import InputError

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel
    from langchain_core.tools import BaseTool

    from agent.core.config import AppConfig

logger = logging.getLogger(__name__)

__all__ = [
    "ATTACHED",
    "HELD_OUT_SET",
    "NO_TOOL",
    "SHIPPED_SETS",
    "CaseResult",
    "RoutingCase",
    "RoutingReport",
    "agent_tools",
    "argument_matches",
    "arguments_match",
    "evaluate_routing",
    "held_out_set_path",
    "load_routing_set",
    "normalise_path",
    "normalise_text",
    "score_case",
    "stand_in_tools",
]

# ----- running the agent -----------------------------------------------------------------------


def stand_in_tools(tools: Sequence[BaseTool]) -> list[BaseTool]:
    """Tools with the same names, descriptions, argument schemas and examples that return at once."""
    from langchain_core.tools import StructuredTool

    def instant(name: str) -> Callable[..., str]:
        return lambda **kwargs: f"{name} finished."

    return [
        StructuredTool(
            name=tool.name, description=tool.description, args_schema=tool.args_schema,
            func=instant(tool.name), metadata=dict(tool.metadata or {}),
        )
        for tool in tools
    ]


def agent_tools(config: AppConfig) -> list[BaseTool]:
    """The tools the configured agent binds: the enabled tools, then remember/recall when memory is on."""
    from tools import build_tools

    tools = list(build_tools(config))
    if config.agent.long_term_memory:
        from memory.long_term import LongTermMemory

        tools += LongTermMemory(config).tools()
    return tools


def _first_decision_middleware() -> Any:
    from langchain.agents.middleware import AgentMiddleware, hook_config

    class EndAfterFirstModelCall(AgentMiddleware):
        """Ends the turn once the model has decided: the benchmark scores decisions, not tool runs."""

        @hook_config(can_jump_to=["end"])
        def after_model(self, state: Any, runtime: Any) -> dict[str, Any]:
            return {"jump_to": "end"}

    return EndAfterFirstModelCall()


def _write_picture(folder: Path, name: str) -> Path:
    """A small distinct PNG for an attached-image name (its colour comes from the name)."""
    import hashlib

    from PIL import Image

    digest = hashlib.sha256(name.encode()).digest()
    path = folder / (Path(name).stem + ".png")
    if not path.exists():
        Image.new("RGB", (48, 40), tuple(digest[:3])).save(path)
    return path


def evaluate_routing(
    model: str | BaseChatModel | None = None,
    *,
    adapter: str | None = None,
    routing: str | None = None,
    cases: str | Path | Sequence[RoutingCase] | None = None,
    config: AppConfig | str | Path | Mapping[str, Any] | None = None,
    temperature: float = 0.0,
    max_new_tokens: int = 256,
    limit: int | None = None,
    answers: bool = False,
    progress: Callable[[int, int, CaseResult], None] | None = None,
) -> RoutingReport:
    """Run the routing benchmark and return its report.

    Args:
        model: a checkpoint (hub id or folder) for ``ChatLlava``, a LangChain chat model, or None
            for the configured one.
        adapter: a LoRA adapter folder applied to ``model`` (a checkpoint only).
        routing: ``"model"``, ``"semantic"`` or ``"hybrid"``; None keeps ``agent.routing``.
        cases: a JSONL path or the cases themselves; None is the shipped held-out set.
        config: the application config (tools enabled, memory on or off, system prompt...).
        temperature, max_new_tokens: decoding of the model call (greedy by default).
        limit: score only the first ``limit`` requests.
        answers: let plain answers finish (their text is kept in the results) instead of
            stopping at the first token.
        progress: called after each request with (done, total, result).
    """
    import threading

    from agent.app.attachments import save_attachment
    from agent.app.multimodal_agent import MultimodalAgent, ReplyEvent, TokenEvent, ToolCallEvent
    from agent.core.config import load_config
    from memory.conversations import ConversationStore

    loaded_cases = list(cases) if isinstance(cases, Sequence) and not isinstance(cases, str) else load_routing_set(cases)
    if limit is not None:
        if limit < 1:
            raise InputError(f"limit must be at least 1, got {limit}")
        loaded_cases = loaded_cases[:limit]
    base_config = load_config(config)
    with tempfile.TemporaryDirectory(prefix="llava-agent-routing-") as scratch:
        root = Path(scratch)
        overrides: dict[str, Any] = {"data_dir": str(root / "data")}
        agent_overrides: dict[str, Any] = {}
        if routing is not None:
            agent_overrides["routing"] = routing
        if agent_overrides:
            overrides["agent"] = agent_overrides
        run_config = load_config(base_config, overrides=overrides)
        # the fitted semantic router is kept with the user's data, not refitted for every run
        shared_routing = base_config.data_dir.expanduser() / "routing"
        shared_routing.mkdir(parents=True, exist_ok=True)
        run_config.data_dir.mkdir(parents=True, exist_ok=True)
        (run_config.data_dir / "routing").symlink_to(shared_routing, target_is_directory=True)
        chat_model = _chat_model(model, adapter, run_config, temperature, max_new_tokens)
        tools = stand_in_tools(agent_tools(run_config))
        names = [t.name for t in tools]
        unknown = sorted({c.tool for c in loaded_cases if c.tool is not None and c.tool not in names})
        if unknown:
            raise InputError(
                f"the routing set expects tools that are not enabled: {', '.join(unknown)}; the agent has "
                f"{', '.join(names)} (enable them in tools.enabled, or set agent.long_term_memory for remember/recall)"
            )
        with ConversationStore(root / "threads.sqlite") as store:
            agent = MultimodalAgent(
                chat_model, tools, config=run_config, conversations=store, middleware=[_first_decision_middleware()]
            )
            pictures = root / "pictures"
            pictures.mkdir()
            results: list[CaseResult] = []
            for number, case in enumerate(loaded_cases, start=1):
                files = [_write_picture(pictures, name) for name in case.images]
                attached = [str(save_attachment(f, agent.attachments_dir)[0]) for f in files]
                logger.debug("routing request %s: %r", case.id, case.request)
                stop = threading.Event()
                called: str | None = None
                args: dict[str, Any] = {}
                text: list[str] = []
                decided_at: float | None = None
                started = time.perf_counter()
                for event in agent.stream(case.request, images=files, stop=stop):
                    if isinstance(event, ToolCallEvent) and called is None:
                        called, args = event.name, dict(event.args)
                        decided_at = decided_at or time.perf_counter()
                    elif isinstance(event, TokenEvent):
                        decided_at = decided_at or time.perf_counter()
                        text.append(event.text)
                        if not answers:
                            stop.set()
                    elif isinstance(event, ReplyEvent) and not text:
                        text.append(event.reply.text)
                latency = (decided_at or time.perf_counter()) - started
                result = score_case(case, called, args, attached, latency, "".join(text).strip())
                results.append(result)
                if progress is not None:
                    progress(number, len(loaded_cases), result)
            decisions = list(getattr(agent.routing, "decisions", []))
            agent.close()
    settings: dict[str, Any] = {
        "model": _model_label(model, run_config),
        "adapter": adapter or run_config.model.adapter,
        "routing": run_config.agent.routing,
        **({"routing_prior": run_config.agent.routing_prior} if run_config.agent.routing == "hybrid" else {}),
        "temperature": temperature,
    }
    spec = getattr(chat_model, "spec", None)  # ChatLlava: the precision "auto" resolved to on this machine
    if spec is not None:
        settings["precision"] = f"{spec.quantization}/{spec.dtype}"
    if decisions:
        from agent.app.routing import median_ms

        settings["routing_ms_median"] = round(median_ms(decisions), 2)
        settings["routing_cpu_ms_median"] = round(median_ms(decisions, cpu=True), 2)
    return RoutingReport(results, names, settings)


def _model_label(model: Any, config: AppConfig) -> str | None:
    if model is None:
        return config.model.model
    return model if isinstance(model, str) else type(model).__name__


def _chat_model(model: Any, adapter: str | None, config: AppConfig, temperature: float, max_new_tokens: int) -> Any:
    if model is not None and not isinstance(model, str):
        if adapter:
            raise InputError("adapter applies to a checkpoint name or folder; pass model as a string with it")
        return model
    from agent.llava.chat_model import ChatLlava

    return ChatLlava.from_config(
        config.model,
        model=model or config.model.model,
        adapter=adapter or config.model.adapter,
        temperature=temperature,
        max_new_tokens=max_new_tokens,
    )
