"""The key/value cache one generation writes into: preallocated buffers, written in place.

``transformers``' ``DynamicCache`` grows by ``torch.cat`` at every step, copying the whole cache
of every layer once per generated token (at 2,000 tokens of context on a 0.5B model that is
~18 MB of copies per token). :class:`KVBuffers` keeps one buffer per layer with room for the
prompt plus the reply and writes each step's keys and values into it; attention reads a view
of the filled part, so no step copies the past.

The same buffers are what :mod:`agent.llava.prefix_cache` keeps between calls: a stored prefix
is a :class:`KVBuffers` and its length, and a later call starts from a copy of its first ``n``
positions (or takes the buffers over when it extends the whole prefix).
"""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

GROWTH_STEP = 256
"""Buffers grow in multiples of this many positions (and at least double), so growth is rare."""


def _round_up(value: int, step: int = GROWTH_STEP) -> int:
    return -(-value // step) * step


@lru_cache(maxsize=1)
def _layer_class() -> type:
    import torch
    from transformers.cache_utils import DynamicLayer

    class PreallocatedLayer(DynamicLayer):
        """A ``DynamicLayer`` whose keys and values live in a buffer with spare room, written in place."""

        def __init__(self, capacity: int) -> None:
            super().__init__()
            self.capacity = capacity
            self.length = 0
            self.dynamic = False  # grow by concatenation at every step, like DynamicLayer (for comparison)
            self.key_buffer: torch.Tensor | None = None
            self.value_buffer: torch.Tensor | None = None

        def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
            self.device = key_states.device
            batch, heads, _, dim = key_states.shape
            self.key_buffer = key_states.new_empty((batch, heads, self.capacity, dim))
            self.value_buffer = value_states.new_empty((batch, heads, self.capacity, value_states.shape[-1]))
            self.is_initialized = True

        def _grow(self, needed: int) -> None:
            capacity = max(_round_up(needed), 2 * self.capacity)
            for name in ("key_buffer", "value_buffer"):
                old = getattr(self, name)
                new = old.new_empty((*old.shape[:2], capacity, old.shape[-1]))
                new[:, :, : self.length].copy_(old[:, :, : self.length])
                setattr(self, name, new)
            self.capacity = capacity

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
            end = self.length + key_states.shape[-2]
            if self.dynamic:
                self.key_buffer = torch.cat([self.key_buffer[:, :, : self.length], key_states], dim=-2)
                self.value_buffer = torch.cat([self.value_buffer[:, :, : self.length], value_states], dim=-2)
                self.capacity = self.length = end
                self.keys, self.values = self.key_buffer, self.value_buffer
                return self.keys, self.values
            if end > self.capacity:
                self._grow(end)
            self.key_buffer[:, :, self.length : end].copy_(key_states)
            self.value_buffer[:, :, self.length : end].copy_(value_states)
            self.length = end
            self.keys = self.key_buffer[:, :, :end]
            self.values = self.value_buffer[:, :, :end]
            return self.keys, self.values

        def get_seq_length(self) -> int:
            return self.length

        def crop(self, tokens_to_remove: int) -> None:
            if tokens_to_remove > 0:
                raise ValueError("crop takes a negative number of positions to remove")
            self.truncate(self.length + tokens_to_remove)

        def truncate(self, length: int) -> None:
            """Keep the first ``length`` positions (the rest of the buffer is reused by later writes)."""
            self.length = max(0, min(length, self.length))
            if self.is_initialized:
                self.keys = self.key_buffer[:, :, : self.length]
                self.values = self.value_buffer[:, :, : self.length]

        def set_length(self, length: int) -> None:
            """Declare the first ``length`` positions filled (written by someone else, e.g. a CUDA graph)."""
            if not 0 <= length <= self.capacity:
                raise ValueError(f"length {length} is outside the buffer's 0..{self.capacity}")
            self.length = length
            if self.is_initialized:
                self.keys = self.key_buffer[:, :, :length]
                self.values = self.value_buffer[:, :, :length]

        def reset(self) -> None:
            self.truncate(0)

        def nbytes(self) -> int:
            if not self.is_initialized:
                return 0
            return sum(t.numel() * t.element_size() for t in (self.key_buffer, self.value_buffer))

    return PreallocatedLayer


def layer_class() -> type:
    """The ``PreallocatedLayer`` class (built on first use: it subclasses a ``transformers`` class)."""
    return _layer_class()


class KVBuffers:
    """Per-layer preallocated key/value buffers, as a ``transformers`` cache (``.cache``) for the model's forward."""

    def __init__(self, num_layers: int, capacity: int) -> None:
        from transformers.cache_utils import DynamicCache

        self.cache = DynamicCache()
        self.cache.layers = [layer_class()(_round_up(max(capacity, 1))) for _ in range(num_layers)]
        self.cache.layer_class_to_replicate = None

    @property
    def layers(self) -> list[Any]:
        return self.cache.layers

    @property
    def length(self) -> int:
        """Positions filled (the same in every layer)."""
        return self.layers[0].length if self.layers else 0

    def truncate(self, length: int) -> None:
        for layer in self.layers:
            layer.truncate(length)

    def set_dynamic(self, dynamic: bool) -> None:
        """Concatenate at every step instead of writing in place (what ``DynamicCache`` does)."""
        for layer in self.layers:
            layer.dynamic = dynamic

    def nbytes(self) -> int:
        return sum(layer.nbytes() for layer in self.layers)

    def copy_prefix(self, length: int, capacity: int) -> KVBuffers:
        """A new cache holding a copy of the first ``length`` positions, with room for ``capacity``."""
        copy = KVBuffers(len(self.layers), max(capacity, length))
        for source, target in zip(self.layers, copy.layers, strict=True):
            if not source.is_initialized or length == 0:
                continue
            keys = source.key_buffer[:, :, :length]
            values = source.value_buffer[:, :, :length]
            target.lazy_initialization(keys, values)
            target.update(keys, values)
        return copy

    def reserve(self, capacity: int) -> None:
        """Make room for ``capacity`` positions in every layer (growing the buffers once, now)."""
        for layer in self.layers:
            if layer.is_initialized and capacity > layer.capacity:
                layer._grow(capacity)
            elif not layer.is_initialized:
                layer.capacity = max(layer.capacity, _round_up(capacity))


CACHE_KEYWORDS = ("cache", "past_key_values")
"""The names a ``transformers`` model's forward takes its key/value cache under, newest first.

Newer ``transformers`` renamed ``past_key_values`` to ``cache`` (5.24 has ``cache`` and still
accepts the old name with a deprecation); older 5.x only knows ``past_key_values`` and swallows
an unknown ``cache=`` into its ``**kwargs``: the model then builds a fresh cache of its own and
silently ignores ours. So the name is read from the forward's signature, never assumed.
"""


def cache_keyword(module: Any) -> str | None:
    """The keyword ``module``'s forward takes its key/value cache under (None: it takes none)."""
    return _cache_keyword(type(module))


@lru_cache(maxsize=64)
def _cache_keyword(module_class: type) -> str | None:
    import inspect

    try:
        parameters = inspect.signature(module_class.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - a forward without a readable signature
        return None
    return next((name for name in CACHE_KEYWORDS if name in parameters), None)


def cache_arguments(module: Any, cache: Any) -> dict[str, Any]:
    """``{keyword: cache}`` for a call of ``module`` (see :data:`CACHE_KEYWORDS`)."""
    keyword = cache_keyword(module)
    if keyword is None:
        raise TypeError(
            f"{type(module).__name__}.forward takes no key/value cache argument "
            f"(none of {', '.join(CACHE_KEYWORDS)}); this transformers version is not supported by the decode loop"
        )
    return {keyword: cache}


def per_token_bytes(text_config: Any, dtype: torch.dtype) -> int:
    """Bytes of keys plus values per position, from the language model's config."""
    import torch

    heads = getattr(text_config, "num_key_value_heads", None) or text_config.num_attention_heads
    head_dim = (
        getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
    )
    element = torch.empty((), dtype=dtype).element_size()
    return 2 * text_config.num_hidden_layers * heads * head_dim * element
