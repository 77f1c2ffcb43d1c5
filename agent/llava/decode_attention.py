"""Attention for decode steps on CPU: grouped float32 matmuls instead of bf16 SDPA.

PyTorch's CPU ``scaled_dot_product_attention`` in bf16 is very slow for a handful of queries
against a long cache: measured here (torch 2.13, one thread, 14 query heads over 2 KV heads,
2,750 cached positions, head size 64, the shapes of Qwen2-0.5B in an agent prompt) it takes
~12 ms per layer, while the same attention written as two grouped matmuls in float32 takes
~0.2 ms. At 24 layers that is most of a decode step. Prefill (many queries) is fast in SDPA and
keeps it.

:func:`install` registers ``"llava_agent_decode"`` with ``transformers``' attention (and mask)
interfaces and switches a model's *language model* to it when it uses ``"sdpa"`` (the vision
tower is untouched). The function falls through to SDPA unless :func:`enabled` is on in the
calling thread (the decode loop turns it on for its decode steps, never for a prefill, so a
prompt's keys and values do not depend on how much of it came from the prompt cache;
``model.generate`` never does), the tensors are on the CPU and there are at most
:data:`MAX_QUERIES` queries (jump-forward appends several tokens in one step). The math is SDPA's: softmax of
scaled scores plus the mask, in float32, times the values.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

NAME = "llava_agent_decode"
MAX_QUERIES = 16
_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("llava_agent_decode_attention", default=False)


@contextmanager
def enabled(on: bool = True) -> Iterator[None]:
    """Use grouped float32 attention for small queries on CPU inside the block (this thread only)."""
    token = _ENABLED.set(on)
    try:
        yield
    finally:
        _ENABLED.reset(token)


def grouped_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
) -> torch.Tensor:
    """(batch, query heads, queries, dim) attention over (batch, kv heads, keys, dim), returned as (batch, queries, heads, dim)."""
    import torch

    batch, heads, queries, dim = query.shape
    kv_heads, keys = key.shape[1], key.shape[2]
    groups = heads // kv_heads
    # query heads i*groups .. i*groups+groups-1 read kv head i (repeat_kv's order)
    grouped = query.reshape(batch, kv_heads, groups * queries, dim).float()
    scores = torch.matmul(grouped, key.float().transpose(-1, -2)) * scaling
    if attention_mask is not None:
        mask = attention_mask[..., :keys]
        if mask.dtype == torch.bool:
            mask = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_fill_(
                ~mask, -float("inf")
            )
        else:
            mask = mask.float()
        # (batch, 1 or heads, queries, keys) -> rows ordered (group, query) like ``grouped``
        if mask.shape[1] == 1:
            mask = mask.repeat(1, 1, groups, 1)
        else:
            mask = mask.reshape(batch, kv_heads, groups * queries, keys)
        scores = scores + mask
    probabilities = torch.softmax(scores, dim=-1)
    output = torch.matmul(probabilities, value.float()).to(query.dtype)
    return output.reshape(batch, heads, queries, dim).transpose(1, 2).contiguous()


@lru_cache(maxsize=1)
def _attention_function() -> Any:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def llava_agent_decode_attention(
        module: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        attention_mask: torch.Tensor | None,
        dropout: float = 0.0,
        scaling: float | None = None,
        is_causal: bool | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, None]:
        if (
            _ENABLED.get()
            and query.device.type == "cpu"
            and query.shape[2] <= MAX_QUERIES
            and dropout == 0.0
            and kwargs.get("softcap") is None
            and kwargs.get("position_bias") is None
            and query.shape[1] % key.shape[1] == 0
            and (attention_mask is not None or query.shape[2] == 1)  # several queries need their causal mask
        ):
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            return grouped_attention(query, key, value, attention_mask, scale), None
        return sdpa_attention_forward(
            module,
            query,
            key,
            value,
            attention_mask,
            dropout=dropout,
            scaling=scaling,
            is_causal=is_causal,
            **kwargs,
        )

    return llava_agent_decode_attention


def install(model: Any) -> bool:
    """Route the language model's attention through :data:`NAME` (when it uses SDPA); True if it does now."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(NAME, _attention_function())
    AttentionMaskInterface.register(NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    config = getattr(model.config, "text_config", model.config)
    current = getattr(config, "_attn_implementation", None)
    if current == NAME:
        return True
    if current != "sdpa":
        logger.debug("attention is %r, not sdpa: decode attention left as it is", current)
        return False
    config._attn_implementation = NAME
    return True
