"""Reuse the encoded start of the previous prompt: the agent's prompts mostly repeat it.

Every model call of the agent begins with the same system prompt and tool list (about 1,400
tokens with the six built-in tools), and each call of a conversation repeats the turns before
it. Encoding that prefix again is most of the time to first token on a CPU (measured on a shared
2-core CPU with the SmolLM2-135M LLaVA: 1,477-token prompt, 4.6 s to encode it from scratch).

:class:`PromptCache` keeps the key/value cache of the last prompt a model encoded. The next
generation on that model looks for the longest common token prefix with its own prompt and hands
that much of the cache to ``generate``, which then encodes only the new tokens. The cache is
used only up to the first image token of the prompt (image features are computed with the
tokens that carry them) and only when at least :data:`MIN_REUSED_TOKENS` tokens match. One cache
per loaded model; generation on a model is already serialised by its lock.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

logger = logging.getLogger(__name__)

MIN_REUSED_TOKENS = 32
"""Shorter common prefixes are encoded again: not worth the bookkeeping."""


class PromptCache:
    """The key/value cache of one model's last prompt and the token ids it covers."""

    def __init__(self) -> None:
        self.token_ids: list[int] = []
        self.cache: Any = None
        self.reused_tokens = 0
        """Tokens the last generation took from the cache (0: none)."""

    def take(self, token_ids: list[int], image_token_id: int | None = None) -> Any:
        """The cache cropped to the longest prefix ``token_ids`` shares with the last prompt, or None.

        At least one token of the new prompt is always left to encode, and nothing from the first
        image token on is reused. The returned cache is handed over: :meth:`keep` stores it back.
        """
        limit = len(token_ids) - 1
        if image_token_id is not None and image_token_id in token_ids:
            limit = min(limit, token_ids.index(image_token_id))
        shared = 0
        for cached, new in zip(self.token_ids, token_ids[:limit], strict=False):
            if cached != new:
                break
            shared += 1
        cache, self.cache, self.token_ids = self.cache, None, []
        self.reused_tokens = 0
        if cache is None or shared < MIN_REUSED_TOKENS:
            return None
        try:
            _cut_to(cache, shared)
        except Exception as exc:  # a cache class that cannot be cut back: encode from scratch
            logger.debug("prompt cache not reusable (%s)", exc)
            return None
        self.reused_tokens = shared
        return cache

    def keep(self, token_ids: list[int], cache: Any) -> None:
        """Store the cache ``generate`` returned, cut back to the prompt (the reply is not kept)."""
        if cache is None or not hasattr(cache, "crop") or not hasattr(cache, "get_seq_length"):
            return
        try:
            if cache.get_seq_length() < len(token_ids):
                return
            _cut_to(cache, len(token_ids))
        except Exception as exc:  # pragma: no cover - depends on the cache class
            logger.debug("prompt cache not kept (%s)", exc)
            return
        self.token_ids, self.cache = list(token_ids), cache

    def clear(self) -> None:
        self.token_ids, self.cache, self.reused_tokens = [], None, 0


def _cut_to(cache: Any, length: int) -> None:
    """Drop the cached tokens after the first ``length`` (``crop(-n)`` removes n in every transformers version)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


@functools.lru_cache(maxsize=1)
def cache_argument_name() -> str:
    """What ``generate`` calls the key/value cache: ``cache`` in newer transformers, else ``past_key_values``."""
    import dataclasses

    from transformers.generation.utils import GenerateDecoderOnlyOutput

    fields = {f.name for f in dataclasses.fields(GenerateDecoderOnlyOutput)}
    return "cache" if "cache" in fields else "past_key_values"


def prompt_cache_for(loaded: Any) -> PromptCache:
    """The prompt cache of a loaded model (created on first use)."""
    cache = loaded.__dict__.get("_prompt_cache")
    if cache is None:
        cache = loaded.__dict__["_prompt_cache"] = PromptCache()
    return cache
