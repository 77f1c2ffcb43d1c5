"""Semantic pre-routing: pick the tool from the meaning of the request before the model speaks.

:class:`SemanticRouter` embeds the user's request with the offline text embedder long-term
memory uses (MiniLM, :class:`memory.embedders.TextEmbedder`) and compares it with each tool's
example requests (:mod:`tools.examples`, slots filled from the lexicons of
:mod:`agent.app.tool_data`, phrasing varied) and with requests that need no tool (questions,
chit-chat, lexical traps, unsupported asks, requests missing what a tool needs). The comparison
is a linear read-out of the embedding fitted on those examples -- one direction per tool and one
for "no tool", a softmax over them -- because plain nearest-example similarity is dominated by
the request's content words ("my dog at the lake") rather than by what is asked of them
(measured: on held-out phrasings it routed a quarter as many requests at the same error). The
read-out sees two embeddings side by side: the whole request and its first
:data:`OPENING_WORDS` words, where what is asked ("draw", "read this aloud", "find my") usually
sits, and beside them the request's own words and word pairs, hashed (:func:`lexical_features`;
an embedding blurs "read it aloud" into the topic of what is read, a word count does not). Each
part was chosen on the calibration requests (:func:`agent.app.routing_calibration.calibrate`, phrasings and slot values the
read-out never saw), by how many the best class labels right: the whole request alone 0.753,
with its opening words 0.809, with its words too 0.827 (weighted 1; at 2 the read-out learns the
training phrasings' words and falls to 0.778). When
the best tool's probability clears ``threshold`` and leads every other tool *and* "no tool" by
``margin``, the request is routed to it; when "no tool" itself clears ``no_tool_threshold``, the
request is answered in words. The read-out is fitted once per set of tools and
examples (about 1,200 embedded requests) and cached in ``<data_dir>/routing/``.

:class:`SemanticRoutingMiddleware` applies the decision to the first model call of each turn:
a routed request is answered with a call of that tool (``tool_choice`` = the tool: constrained
decoding makes the model fill the arguments from the request); a request the router is sure needs
no tool is answered in words (``tool_choice = "none"``); otherwise, with ``agent.routing =
"hybrid"`` the model decides, with the router's probabilities as a second expert beside its own
(``agent.routing_prior``, :mod:`agent.decoding.decision_prior`; chat models that do not take a
``tool_prior`` decide alone), and with ``"semantic"`` it answers in words. ``"model"`` (no middleware) leaves every decision to the model.

Threshold, margin and the no-tool threshold are calibrated
(:func:`agent.app.routing_calibration.calibrate`) on requests synthesised from the tools'
examples with slot values and questions the fitted router never saw -- never on the held-out
benchmark set.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain.agents.middleware import AgentMiddleware

from agent.core import defaults
from agent.core.config import ROUTING_MODES
from agent.core.errors import InputError
from agent.decoding.decision_prior import NO_CALL

if TYPE_CHECKING:
    import numpy as np
    from langchain.agents.middleware import ModelRequest, ModelResponse
    from langchain_core.tools import BaseTool

    from memory.embedders import TextEmbedder

logger = logging.getLogger(__name__)

NO_TOOL = NO_CALL
"""The label of requests that need no tool (and the prior's key for answering in words)."""
DEFAULT_THRESHOLD = defaults.ROUTING_THRESHOLD
DEFAULT_MARGIN = defaults.ROUTING_MARGIN
DEFAULT_NO_TOOL_THRESHOLD = defaults.ROUTING_NO_TOOL_THRESHOLD
TRAINING_REQUESTS = 1200
FIT_VERSION = 4
OPENING_WORDS = 5
"""The request's opening words, embedded beside the whole request."""
LEXICAL_DIMS = 1024
LEXICAL_WEIGHT = 1.0
"""The request's words and word pairs, hashed into 1,024 counts (L2-normalised, scaled by the weight)."""
_WORD = re.compile(r"[a-z0-9']+")
_ATTACHED_LINE = re.compile(r"^\[attached image: .*\]$", re.MULTILINE)


@dataclass(frozen=True)
class RoutingDecision:
    """The router's view of one request: the tool it routes to (None: no routing) and why."""

    tool: str | None
    score: float
    """Probability of the best tool."""
    margin: float
    """Its lead over the runner-up (another tool, or no tool)."""
    scores: dict[str, float] = field(default_factory=dict)
    """Probability of each tool and of ``(none)``."""
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    no_tool: bool = False
    """The router is sure no tool fits (no route, and "no tool" clears the no-tool threshold)."""


def request_text(text: str) -> str:
    """The words of a request without its ``[attached image: PATH]`` lines."""
    return " ".join(_ATTACHED_LINE.sub(" ", text).split())


def opening(text: str, words: int = OPENING_WORDS) -> str:
    """The first ``words`` words of a request."""
    return " ".join(text.split()[:words])


def lexical_features(texts: Sequence[str], dims: int = LEXICAL_DIMS, weight: float = LEXICAL_WEIGHT) -> np.ndarray:
    """Hashed counts of each request's lower-cased words and adjacent word pairs (stable across runs)."""
    import zlib

    import numpy as np

    counts = np.zeros((len(texts), dims), dtype=np.float32)
    for row, text in enumerate(texts):
        words = _WORD.findall(text.lower())
        for gram in [*words, *(f"{a} {b}" for a, b in zip(words, words[1:], strict=False))]:
            counts[row, zlib.crc32(gram.encode()) % dims] += 1.0
    norms = np.linalg.norm(counts, axis=1, keepdims=True)
    return weight * counts / np.maximum(norms, 1e-12)


def features(embedder: TextEmbedder, texts: Sequence[str]) -> np.ndarray:
    """What the read-out sees of each request: its embedding, that of its opening words, and its words."""
    import numpy as np

    texts = list(texts)
    vectors = embedder.embed(texts + [opening(t) for t in texts])  # one batch: one call's overhead per turn
    return np.hstack([vectors[: len(texts)], vectors[len(texts):], lexical_features(texts)])


def training_requests(tools: Sequence[BaseTool], lexicons: Mapping[str, Any], count: int,
                      seed: int) -> tuple[list[str], list[str], list[str | None]]:
    """Requests synthesised from the tools' examples and the no-tool lexicons: (texts, labels, groups)."""
    import random

    from agent.app.tool_data import _Synthesizer

    synth = _Synthesizer(tools, "", lexicons, random.Random(seed), ["attached.png"])
    # requests that lack an argument ("Draw something.") are left out: in meaning they are tool requests,
    # and whether one is complete is the model's call, not the router's
    no_tool = ["plain"] * 5 + ["trap"] * 3 + ["unsupported"] * 2
    kinds = ["call"] * int(count * 0.6) + [no_tool[i % len(no_tool)] for i in range(count - int(count * 0.6))]
    texts, labels, groups = [], [], []
    for kind in kinds:
        row = synth.row(kind)
        user = row["turns"][0]["content"]
        text = user if isinstance(user, str) else next(b["text"] for b in user if b["type"] == "text")
        texts.append(request_text(text) or text)
        labels.append(row["tool"] or NO_TOOL)
        groups.append(row.get("group"))
    return texts, labels, groups


def fit_softmax(inputs: np.ndarray, labels: Sequence[str], *, l2: float = 1e-3, rate: float = 5.0,
                steps: int = 800) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Multinomial logistic regression by full-batch gradient descent (deterministic, numpy only).

    Classes are weighted equally (each sample by the inverse of its class's size), so the many
    kinds of no-tool request do not make "no tool" the answer to everything.
    """
    import numpy as np

    names = sorted(set(labels))
    index = [names.index(label) for label in labels]
    # float32 throughout: the fit reads the inputs twice a step and is memory-bound (5x faster than float64)
    inputs = np.ascontiguousarray(inputs, dtype=np.float32)
    targets = np.eye(len(names), dtype=np.float32)[index]
    counts = np.bincount(index, minlength=len(names))
    sample_weights = (len(labels) / (len(names) * counts[index]))[:, None].astype(np.float32)
    weights = np.zeros((inputs.shape[1], len(names)), dtype=np.float32)
    bias = np.zeros(len(names), dtype=np.float32)
    rate, l2 = np.float32(rate), np.float32(l2)
    for _ in range(steps):
        logits = inputs @ weights + bias
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        gradient = sample_weights * (probs - targets) / len(inputs)
        weights -= rate * ((gradient.T @ inputs).T + l2 * weights)
        bias -= rate * gradient.sum(axis=0)
    return weights, bias, names


PACKAGED_READOUTS = Path(__file__).resolve().parents[1] / "data" / "routing"
"""Read-outs shipped for the built-in tools (``python bench/bench_routing.py --package`` writes them),
so a default agent routes from its first turn without fitting."""
_FITTED: dict[str, tuple[np.ndarray, np.ndarray, list[str]]] = {}


def load_readout(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    import numpy as np

    with np.load(path) as data:
        return data["weights"], data["bias"], [str(n) for n in data["labels"]]


def save_readout(readout: tuple[np.ndarray, np.ndarray, list[str]], path: Path) -> None:
    """Write a read-out atomically (temporary file, then rename)."""
    import numpy as np

    weights, bias, names = readout
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.npz")
    np.savez(tmp, weights=weights, bias=bias, labels=np.array(names))
    os.replace(tmp, path)


class SemanticRouter:
    """Routes a request to the tool whose example requests it is closest to in meaning.

    Args:
        tools: the agent's tools; those without example requests are never routed to.
        embedder: a :class:`memory.embedders.TextEmbedder` (MiniLM by default).
        threshold: least probability of the best tool for a route.
        margin: least lead of the best tool over every other tool and over no tool.
        no_tool_threshold: least probability of "no tool" for a plain answer without asking the
            model (1.0: never).
        lexicons: slot values and no-tool requests (default: the shipped lexicons).
        cache_dir: where the fitted read-out is kept (None: not kept).
    """

    def __init__(self, tools: Sequence[BaseTool], embedder: TextEmbedder, *, threshold: float = DEFAULT_THRESHOLD,
                 margin: float = DEFAULT_MARGIN, no_tool_threshold: float = DEFAULT_NO_TOOL_THRESHOLD, lexicons: Mapping[str, Any] | None = None,
                 cache_dir: str | os.PathLike[str] | None = None, requests: int | None = None,
                 seed: int = 0) -> None:
        from agent.app.tool_data import default_lexicons

        if not all(0.0 <= value <= 1.0 for value in (threshold, margin, no_tool_threshold)):
            raise InputError(f"routing threshold, margin and no-tool threshold must be in [0, 1], got {threshold}, "
                             f"{margin} and {no_tool_threshold}")
        self.tools = list(tools)
        self.embedder = embedder
        self.threshold = threshold
        self.margin = margin
        self.no_tool_threshold = no_tool_threshold
        self.lexicons = dict(lexicons or default_lexicons())
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.requests = requests or TRAINING_REQUESTS
        self.seed = seed
        self._readout: tuple[np.ndarray, np.ndarray, list[str]] | None = None

    def fingerprint(self) -> str:
        """Identifies the fitted read-out: embedder, tools, examples, lexicons, settings."""
        from tools.examples import tool_examples

        described = [
            [t.name, t.description, [[e.request, dict(e.arguments), {k: list(v) for k, v in e.slots.items()}]
                                     for e in tool_examples(t)]]
            for t in self.tools
        ]
        payload = json.dumps([FIT_VERSION, OPENING_WORDS, LEXICAL_DIMS, LEXICAL_WEIGHT, self.embedder.model_id, described,
                              self.lexicons, self.requests, self.seed],
                             sort_keys=True, default=str)
        return hashlib.sha256(payload.encode()).hexdigest()[:20]

    @property
    def readout(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(weights, bias, labels) of the fitted read-out (fitted, or read from the cache, on first use)."""
        if self._readout is None:
            self._readout = self._load_or_fit()
        return self._readout

    def _load_or_fit(self) -> tuple[np.ndarray, np.ndarray, list[str]]:
        fingerprint = self.fingerprint()
        if fingerprint in _FITTED:
            return _FITTED[fingerprint]
        name = f"router-{fingerprint}.npz"
        for path in [p for p in (self.cache_dir and self.cache_dir / name, PACKAGED_READOUTS / name) if p]:
            if path.is_file():
                try:
                    _FITTED[fingerprint] = load_readout(path)
                    return _FITTED[fingerprint]
                except (OSError, ValueError, KeyError) as exc:
                    logger.warning("routing read-out %s unreadable (%s); fitting again", path, exc)
        if not any(label != NO_TOOL for label in self._labels_preview()):
            raise InputError("no tool declares example requests, so none can be routed to semantically")
        started = time.perf_counter()
        texts, labels, _ = training_requests(self.tools, self.lexicons, self.requests, self.seed)
        readout = fit_softmax(features(self.embedder, texts), labels)
        logger.info("semantic routing: fitted on %d requests in %.1f s", len(texts), time.perf_counter() - started)
        if self.cache_dir is not None:
            save_readout(readout, self.cache_dir / name)
        _FITTED[fingerprint] = readout
        return readout

    def _labels_preview(self) -> list[str]:
        from tools.examples import tool_examples

        return [t.name for t in self.tools if tool_examples(t)]

    def probabilities_for(self, vectors: np.ndarray) -> list[dict[str, float]]:
        """Probabilities from request :func:`features`."""
        import numpy as np

        weights, bias, names = self.readout
        logits = vectors @ weights + bias
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        probs /= probs.sum(axis=1, keepdims=True)
        return [dict(zip(names, map(float, row), strict=True)) for row in probs]

    def scores(self, text: str) -> dict[str, float]:
        """Probability of each tool and of ``(none)`` for one request."""
        return self.probabilities_for(features(self.embedder, [request_text(text) or text]))[0]

    def decide(self, scores: Mapping[str, float], threshold: float | None = None, margin: float | None = None,
               allowed: Sequence[str] | None = None) -> tuple[str | None, float, float]:
        """(tool or None, its probability, its lead over the runner-up) for the given scores."""
        threshold = self.threshold if threshold is None else threshold
        margin = self.margin if margin is None else margin
        tools = {k: v for k, v in scores.items() if k != NO_TOOL and (allowed is None or k in allowed)}
        if not tools:
            return None, 0.0, 0.0
        name = max(tools, key=tools.__getitem__)
        runner_up = max([v for k, v in scores.items() if k != name], default=0.0)
        lead = tools[name] - runner_up
        return (name if tools[name] >= threshold and lead >= margin else None), tools[name], lead

    def route(self, text: str, allowed: Sequence[str] | None = None) -> RoutingDecision:
        """Decide for one request (``allowed``: the tool names bound to this call)."""
        self.readout  # noqa: B018  (fitting is not part of a turn's cost)
        started, cpu = time.perf_counter(), time.thread_time()
        scores = self.scores(text)
        tool, score, lead = self.decide(scores, allowed=allowed)
        no_tool = tool is None and scores.get(NO_TOOL, 0.0) >= self.no_tool_threshold
        return RoutingDecision(tool, score, lead, scores, time.perf_counter() - started, time.thread_time() - cpu,
                               no_tool)


def _last_user_text(messages: Sequence[Any]) -> str | None:
    from langchain_core.messages import HumanMessage

    if messages and isinstance(messages[-1], HumanMessage):
        return messages[-1].text
    return None


class SemanticRoutingMiddleware(AgentMiddleware):
    """Applies :class:`SemanticRouter` to the first model call of each turn (see the module docstring)."""

    def __init__(self, router: SemanticRouter | Callable[[], SemanticRouter], mode: str = "hybrid",
                 prior_weight: float = 0.0) -> None:
        super().__init__()
        if mode not in ("semantic", "hybrid"):
            raise InputError(f"semantic routing mode must be 'semantic' or 'hybrid', got {mode!r}")
        if prior_weight < 0:
            raise InputError(f"agent.routing_prior must be at least 0, got {prior_weight}")
        self._router = router
        self.mode = mode
        self.prior_weight = prior_weight
        """Hybrid, unsure: weight of the router's probabilities as a prior on the model's decision (0: none)."""
        self.decisions: list[RoutingDecision] = []
        """Every decision made, newest last (kept for inspection and timing; capped)."""
        self.unavailable: str | None = None
        """Why routing could not run (the embedder failed to load...); the model then decides every turn."""

    @property
    def router(self) -> SemanticRouter:
        if not isinstance(self._router, SemanticRouter):
            self._router = self._router()
        return self._router

    def _give_up(self, exc: Exception) -> None:
        self.unavailable = str(exc)
        logger.warning("semantic routing is unavailable (%s); the model decides every turn. Set "
                       "agent.routing = \"model\" to silence this", exc)

    def warm_up(self) -> None:
        """Load what the first routed turn needs now (the embedder, its ONNX export, the read-out); never raises."""
        if self.unavailable is not None:
            return
        try:
            self.router.readout  # noqa: B018
            self.router.embedder.embed(["hello"])
        except Exception as exc:  # routing is a help: without it the model decides
            self._give_up(exc)

    def prepare(self, request: ModelRequest) -> ModelRequest:
        text = _last_user_text(request.messages)
        if text is None or not request.tools or request.tool_choice not in (None, "auto"):
            return request  # not the first call of a turn, no tools, or a choice forced already
        if self.unavailable is not None:
            return request
        names = [getattr(t, "name", None) or t.get("function", {}).get("name") for t in request.tools]
        try:
            decision = self.router.route(text, allowed=[n for n in names if n])
        except Exception as exc:  # routing is a help: without it the model decides
            self._give_up(exc)
            return request
        self.decisions = [*self.decisions[-999:], decision]
        logger.debug("semantic routing: %s (score %.3f, lead %.3f) in %.1f ms", decision.tool or "no route",
                     decision.score, decision.margin, 1000 * decision.seconds)
        if decision.tool is not None:
            return request.override(tool_choice=decision.tool)
        if self.mode == "semantic" or decision.no_tool:
            return request.override(tool_choice="none")
        if self.prior_weight > 0 and getattr(request.model, "accepts_tool_prior", False):
            # the model decides, with the router's view as a second expert (agent.decoding.decision_prior)
            bound = {*names, NO_TOOL}
            prior = {"probabilities": {k: v for k, v in decision.scores.items() if k in bound},
                     "weight": self.prior_weight}
            return request.override(model_settings={**request.model_settings, "tool_prior": prior})
        return request

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]) -> Any:
        prepared = self.prepare(request)
        return _one_routed_call(handler(prepared), prepared, request)

    async def awrap_model_call(self, request: ModelRequest, handler: Any) -> Any:
        prepared = self.prepare(request)
        return _one_routed_call(await handler(prepared), prepared, request)


def _one_routed_call(response: Any, prepared: Any, original: Any) -> Any:
    """A routed request asked for a call of one tool: drop the repeats of a call already made.

    The grammar of a forced ``tool_choice`` allows several calls, and a model that was never
    trained on tool calls tends to write the same call again until its token budget runs out;
    running the tool that many times is never what the request meant. Different calls are kept.
    """
    from langchain_core.messages import AIMessage

    if prepared is original or prepared.tool_choice in (None, "auto", "none"):
        return response
    messages = getattr(response, "result", None)
    if not messages or not isinstance(messages[-1], AIMessage) or len(messages[-1].tool_calls) <= 1:
        return response
    message = messages[-1]
    kept, seen = [], set()
    for call in message.tool_calls:
        key = (call["name"], json.dumps(call.get("args"), sort_keys=True, default=str))
        if key not in seen:
            seen.add(key)
            kept.append(call)
    if len(kept) < len(message.tool_calls):
        logger.debug("routed call: kept %d of %d calls (repeats dropped)", len(kept), len(message.tool_calls))
        response.result = [*messages[:-1], message.model_copy(update={"tool_calls": kept})]
    return response


def routing_middleware(config: Any, tools: Sequence[BaseTool], embedder: TextEmbedder | None = None) -> AgentMiddleware | None:
    """The middleware ``agent.routing`` asks for (None for ``"model"``); the embedder loads on first use."""
    mode = config.agent.routing
    if mode not in ROUTING_MODES:
        raise InputError(f"agent.routing = {mode!r} is not a routing mode; use one of {', '.join(ROUTING_MODES)}")
    if mode == "model":
        return None

    def build() -> SemanticRouter:
        from memory.embedders import TextEmbedder

        return SemanticRouter(
            tools, embedder or TextEmbedder(config.memory.text_embedder, device=config.tools.device,
                                            runtime=config.memory.text_embedder_runtime),
            threshold=config.agent.routing_threshold, margin=config.agent.routing_margin,
            no_tool_threshold=config.agent.routing_no_tool_threshold,
            cache_dir=config.data_dir.expanduser() / "routing",
        )

    return SemanticRoutingMiddleware(build, mode, prior_weight=config.agent.routing_prior)


def median_ms(decisions: Sequence[RoutingDecision], cpu: bool = False) -> float:
    values = [d.cpu_seconds if cpu else d.seconds for d in decisions]
    return 1000 * statistics.median(values) if values else 0.0
