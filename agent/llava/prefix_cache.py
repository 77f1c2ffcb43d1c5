"""Reuse the keys and values of a prompt's beginning across calls: what Ollama's and llama.cpp's
prompt caches and SGLang's RadixAttention do, for a ``transformers`` model.

An agent turn calls the model with the system prompt, every tool schema and the whole thread;
after a tool runs it calls it again with all of that plus the call and the result; the next turn
does it all again. Only the end of each prompt is new. :class:`PrefixCache` keeps the key/value
cache of recent calls (their prompt and the tokens they generated) and hands the next call the
longest common prefix, so only the rest is prefilled.

**Exact.** A prefix is reused only when every token id matches *and* every image in it is the
same image: image placeholder tokens are all the same id, so each image's run of placeholders is
keyed by a digest of its pixel values (:func:`image_spans`). A run only partly inside the common
prefix is recomputed whole. Bitwise exact, not only close: attention kernels round differently
for the same row when the number of keys differs, so prompts are always prefilled in aligned
chunks (:func:`chunk_boundaries`) and only complete chunks of an earlier *prompt* are reused --
never its generated reply, which single-token steps computed. A reused position then holds the
very keys and values a cold prefill computes, and at temperature 0 the reply is the same tokens.
Entries are also keyed by a *context* (the model's active adapter), and every cache belongs to
one loaded model: another adapter, dtype or quantization is another model with its own cache.

**Bounded.** At most ``max_entries`` prefixes and ``max_bytes`` of keys and values, least
recently used dropped first; an entry that a newer one extends is dropped at once (a thread
keeps one entry, not one per call). The bytes count in the model manager's budget for the
model's device: the cache lives on the loaded model (evicted with it) and reports its size, and
it never grows past the room the budget leaves (:class:`CacheAccountant`).

**Safe under concurrency.** Calls on one model are serialised by the model's lock; the cache has
its own lock as well, and a stored entry is never written to: a call extending a whole entry
takes it out of the cache (it will store the longer one), any other call works on a copy.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from agent.core.defaults import PREFIX_CACHE_ENTRIES, PREFIX_CACHE_MIB
from agent.core.errors import InputError
from agent.llava.kv_cache import KVBuffers

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

logger = logging.getLogger(__name__)

DEFAULT_MAX_ENTRIES = PREFIX_CACHE_ENTRIES
DEFAULT_MAX_MIB = PREFIX_CACHE_MIB

PER_IMAGE_INPUTS = ("pixel_values", "image_sizes")
"""Processor outputs with one row per image, in the order the images appear in the prompt."""


@dataclass(frozen=True)
class ImageSpan:
    """The placeholder tokens of one image (or of several, when they cannot be told apart)."""

    start: int
    end: int
    digest: str
    images: tuple[int, ...]
    """Indices (rows of the per-image inputs) of the images whose placeholders these are."""


@dataclass
class PrefixEntry:
    tokens: np.ndarray
    images: tuple[ImageSpan, ...]
    context: Hashable
    kv: KVBuffers
    reusable: int
    """How many leading positions a later call may take (the complete prefill chunks of the prompt;
    ``tokens`` also holds the rest of the prompt and the reply, whose buffers are reused in place)."""

    @property
    def length(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def nbytes(self) -> int:
        return self.kv.nbytes()


@dataclass
class PrefixMatch:
    """The longest usable prefix: ``length`` positions of ``entry``."""

    length: int
    entry: PrefixEntry


@dataclass
class CacheAccountant:
    """How the cache asks the model manager for room and tells it its size.

    ``room()`` returns the bytes the cache may hold in all (None: no budget), ``report(n)``
    records that it holds ``n`` bytes now.
    """

    room: Callable[[], int | None]
    report: Callable[[int], None]


@dataclass
class PrefixCacheStats:
    lookups: int = 0
    hits: int = 0
    reused_tokens: int = 0
    stored: int = 0
    evicted: int = 0


def _digest(*tensors: Any) -> str:
    import torch

    digest = hashlib.blake2b(digest_size=16)
    for tensor in tensors:
        data = tensor.detach().to("cpu").contiguous()
        digest.update(f"{tuple(data.shape)}{data.dtype}".encode())
        digest.update(data.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def image_spans(
    input_ids: Any, image_token_id: int | None, inputs: Mapping[str, Any]
) -> tuple[ImageSpan, ...]:
    """The image placeholder runs of a batch-1 prompt, each keyed by a digest of its image's inputs.

    When the runs cannot be matched one to one with the images (adjacent placeholders merge, or
    the processor returned other image inputs), one span covers all placeholders and is keyed by
    all the image inputs together, so it is reused only whole.
    """
    import torch

    if image_token_id is None:
        return ()
    ids = input_ids.reshape(-1)
    positions = torch.nonzero(ids == image_token_id).reshape(-1).tolist()
    if not positions:
        return ()
    runs: list[list[int]] = []
    for position in positions:
        if runs and position == runs[-1][1]:
            runs[-1][1] = position + 1
        else:
            runs.append([position, position + 1])
    image_keys = [k for k, v in inputs.items() if k not in ("input_ids", "attention_mask") and v is not None]
    per_image = [k for k in image_keys if k in PER_IMAGE_INPUTS]
    pixel_values = inputs.get("pixel_values")
    images = int(pixel_values.shape[0]) if pixel_values is not None else 0
    if images and len(runs) == images and set(image_keys) == set(per_image):
        return tuple(
            ImageSpan(start, end, _digest(*(inputs[k][index] for k in per_image)), (index,))
            for index, (start, end) in enumerate(runs)
        )
    everything = [inputs[k] for k in sorted(image_keys) if isinstance(inputs[k], torch.Tensor)]
    return (ImageSpan(runs[0][0], runs[-1][1], _digest(*everything), tuple(range(images))),)


PREFILL_CHUNK = 128
"""Prompts are prefilled in chunks that start at multiples of this many positions (see :func:`chunk_boundaries`)."""


def chunk_boundaries(length: int, images: tuple[ImageSpan, ...], chunk: int = PREFILL_CHUNK) -> list[int]:
    """Where prefill chunks of a prompt of ``length`` tokens start and end: ``[0, b1, b2, ..., length]``.

    A boundary is the next multiple of ``chunk``, moved to the end of an image whose placeholders
    it would cut. It depends only on the positions and images before it, so two prompts sharing a
    prefix have the same boundaries in it, and a position in a complete chunk is computed by the
    same kernels on the same inputs whether its prefix was reused or not: reuse is bitwise exact.
    (Kernels are not shape-invariant: attention over 623 or 731 keys rounds differently for the
    same row, which is why a prompt is never prefilled in one pass and reused in pieces.)
    """
    bounds = [0]
    spans = sorted(images, key=lambda span: span.start)
    while bounds[-1] < length:
        nxt = (bounds[-1] // chunk + 1) * chunk
        for span in spans:
            if span.start < nxt < span.end:
                nxt = span.end
        bounds.append(min(nxt, length))
    return bounds


def reusable_length(prompt_length: int, images: tuple[ImageSpan, ...], chunk: int = PREFILL_CHUNK) -> int:
    """Positions of a prompt that later prompts may reuse exactly: its complete chunks."""
    bounds = chunk_boundaries(prompt_length, images, chunk)
    complete = [b for b in bounds if b < prompt_length or b % chunk == 0]
    return complete[-1] if complete else 0


def common_prefix(
    tokens: np.ndarray,
    images: tuple[ImageSpan, ...],
    other_tokens: np.ndarray,
    other_images: tuple[ImageSpan, ...],
) -> int:
    """How many leading positions two prompts share: equal token ids, and the same images there."""
    import numpy as np

    size = min(tokens.shape[0], other_tokens.shape[0])
    different = np.flatnonzero(tokens[:size] != other_tokens[:size])
    length = int(different[0]) if different.size else size
    others = {span.start: span for span in other_images}
    for span in images:
        if span.start >= length:
            break
        other = others.get(span.start)
        if other is None or other.end != span.end or other.digest != span.digest or span.end > length:
            return span.start
    return length


class PrefixCache:
    """A bounded LRU of key/value prefixes of one loaded model."""

    def __init__(
        self,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_MIB << 20,
        accountant: CacheAccountant | None = None,
    ) -> None:
        self._lock = threading.Lock()
        self._entries: OrderedDict[int, PrefixEntry] = OrderedDict()  # least recently used first
        self._next_id = 0
        self.accountant = accountant
        self.stats = PrefixCacheStats()
        self.max_entries = DEFAULT_MAX_ENTRIES
        self.max_bytes = DEFAULT_MAX_MIB << 20
        self.configure(max_entries, max_bytes)

    # -- settings --------------------------------------------------------------------------------
    def configure(self, max_entries: int, max_bytes: int) -> None:
        """Set the bounds (dropping the oldest entries that no longer fit)."""
        if not isinstance(max_entries, int) or max_entries < 0:
            raise InputError(f"prefix_cache_entries must be an integer >= 0, got {max_entries!r}")
        if not isinstance(max_bytes, int) or max_bytes < 0:
            raise InputError(f"the prefix cache size must be >= 0 bytes, got {max_bytes!r}")
        with self._lock:
            changed = (max_entries, max_bytes) != (self.max_entries, self.max_bytes)
            self.max_entries, self.max_bytes = max_entries, max_bytes
            if changed:
                self._trim_locked(0)
        if changed:
            self._report()

    # -- inspection ------------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def nbytes(self) -> int:
        with self._lock:
            return sum(entry.nbytes for entry in self._entries.values())

    def lengths(self) -> list[int]:
        """Token lengths of the entries, least recently used first."""
        with self._lock:
            return [entry.length for entry in self._entries.values()]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
        self._report()

    # -- use -------------------------------------------------------------------------------------
    def match(
        self, tokens: np.ndarray, images: tuple[ImageSpan, ...], context: Hashable
    ) -> PrefixMatch | None:
        """The entry sharing the longest prefix with ``tokens`` (None when none shares any)."""
        best: PrefixMatch | None = None
        with self._lock:
            self.stats.lookups += 1
            for entry in self._entries.values():
                if entry.context != context:
                    continue
                length = min(common_prefix(tokens, images, entry.tokens, entry.images), entry.reusable)
                if length > 0 and (best is None or length > best.length):
                    best = PrefixMatch(length, entry)
            if best is not None:
                self.stats.hits += 1
                self.stats.reused_tokens += best.length
        return best

    def take(self, match: PrefixMatch, capacity: int) -> KVBuffers:
        """Working buffers that start with the matched prefix and have room for ``capacity`` positions.

        A match covering all of the entry's reusable part takes the entry's buffers out of the
        cache: the caller's own entry will hold that part too (:meth:`store`). A shorter match
        copies, so the entry stays intact for others.
        """
        entry = match.entry
        with self._lock:
            key = next((k for k, e in self._entries.items() if e is entry), None)
            whole = key is not None and match.length >= entry.reusable
            if whole:
                del self._entries[key]
            elif key is not None:
                self._entries.move_to_end(key)
        if whole:
            self._report()
            entry.kv.truncate(match.length)
            entry.kv.reserve(capacity)
            return entry.kv
        return entry.kv.copy_prefix(match.length, capacity)

    def store(
        self,
        tokens: np.ndarray,
        images: tuple[ImageSpan, ...],
        context: Hashable,
        kv: KVBuffers,
        reusable: int | None = None,
    ) -> bool:
        """Keep ``kv`` (holding ``tokens``' keys and values) for later calls; False when it is not kept.

        ``reusable``: how many leading positions later calls may take (default: all). An entry
        whose reusable part the new one also holds is dropped (a thread keeps one entry, not one
        per call); a new entry whose reusable part a kept one holds is not stored.
        """
        length = int(tokens.shape[0])
        reusable = length if reusable is None else min(reusable, length)
        if self.max_entries == 0 or kv.length != length or reusable == 0:
            return False
        entry = PrefixEntry(tokens, images, context, kv, reusable)
        size = entry.nbytes
        with self._lock:
            for key, other in list(self._entries.items()):
                if other.context != context:
                    continue
                shared = common_prefix(tokens, images, other.tokens, other.images)
                if min(shared, reusable) >= other.reusable:  # superseded by the new entry
                    del self._entries[key]
                elif min(shared, other.reusable) >= reusable:  # the new one adds nothing
                    self._entries.move_to_end(key)
                    stored = False
                    break
            else:
                stored = self._trim_locked(size)
                if stored:
                    self._entries[self._next_id] = entry
                    self._next_id += 1
                    self.stats.stored += 1
        self._report()
        if not stored:
            logger.debug("prefix of %d tokens (%.1f MiB) not kept", entry.length, size / 2**20)
        return stored

    # -- internals -------------------------------------------------------------------------------
    def _limit_locked(self) -> int:
        limit = self.max_bytes
        if self.accountant is not None:
            room = self.accountant.room()
            if room is not None:
                limit = min(limit, max(0, room))
        return limit

    def _trim_locked(self, incoming: int) -> bool:
        """Drop least recently used entries until one more of ``incoming`` bytes fits; False if it never can."""
        limit = self._limit_locked()
        used = sum(entry.nbytes for entry in self._entries.values())
        while self._entries and (
            len(self._entries) + (1 if incoming else 0) > self.max_entries or used + incoming > limit
        ):
            _, dropped = self._entries.popitem(last=False)
            used -= dropped.nbytes
            self.stats.evicted += 1
        return incoming <= limit and (incoming == 0 or len(self._entries) < self.max_entries)

    def _report(self) -> None:
        if self.accountant is not None:
            self.accountant.report(self.nbytes())
