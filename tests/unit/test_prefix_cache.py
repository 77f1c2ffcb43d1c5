"""The prompt cache's bookkeeping on small tensors: matching, images, ownership, bounds, budget."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agent.core.errors import InputError
from agent.llava.kv_cache import KVBuffers
from agent.llava.prefix_cache import CacheAccountant, ImageSpan, PrefixCache, common_prefix, image_spans

LAYERS, HEADS, DIM = 2, 2, 4


def kv_for(tokens: list[int], capacity: int | None = None) -> KVBuffers:
    """Buffers whose keys/values at a position encode (token, position), so copies can be checked."""
    kv = KVBuffers(LAYERS, capacity or len(tokens))
    for layer in kv.layers:
        values = torch.tensor(tokens, dtype=torch.float32)[None, None, :, None].expand(
            1, HEADS, len(tokens), DIM
        )
        layer.update(values.clone(), -values.clone())
    return kv


def store(cache: PrefixCache, tokens: list[int], context=None, images=(), reusable=None) -> bool:
    return cache.store(np.array(tokens), tuple(images), context, kv_for(tokens), reusable)


def test_common_prefix_of_tokens_and_images():
    a, b = np.array([1, 2, 3, 9, 9]), np.array([1, 2, 3, 4])
    assert common_prefix(a, (), b, ()) == 3
    assert common_prefix(a[:2], (), b, ()) == 2
    same = (ImageSpan(1, 3, "red", (0,)),)
    other = (ImageSpan(1, 3, "blue", (0,)),)
    tokens = np.array([5, 7, 7, 6, 8])
    assert common_prefix(tokens, same, tokens, same) == 5
    assert common_prefix(tokens, same, tokens, other) == 1  # another image: only the text before it
    assert common_prefix(tokens, same, tokens[:2], same) == 1  # an image cut in half is recomputed whole


def test_image_spans_key_each_image_by_its_pixels():
    image_id = 7
    ids = torch.tensor([[1, 7, 7, 2, 7, 7, 3]])
    pixels = torch.stack([torch.zeros(3, 2, 2), torch.ones(3, 2, 2)])
    spans = image_spans(ids, image_id, {"pixel_values": pixels})
    assert [(s.start, s.end, s.images) for s in spans] == [(1, 3, (0,)), (4, 6, (1,))]
    assert spans[0].digest != spans[1].digest
    again = image_spans(ids, image_id, {"pixel_values": pixels.clone()})
    assert [s.digest for s in again] == [s.digest for s in spans]
    merged = image_spans(torch.tensor([[1, 7, 7, 7, 7, 3]]), image_id, {"pixel_values": pixels})
    assert [(s.start, s.end, s.images) for s in merged] == [(1, 5, (0, 1))]  # adjacent runs: one span, whole
    assert image_spans(ids, None, {"pixel_values": pixels}) == ()


def test_match_take_whole_and_partial():
    cache = PrefixCache(max_entries=4, max_bytes=1 << 20)
    store(cache, [1, 2, 3, 4, 5])
    match = cache.match(np.array([1, 2, 3, 8]), (), None)
    assert match.length == 3
    kv = cache.take(match, capacity=10)  # partial: a copy, the entry stays
    assert kv.length == 3 and len(cache) == 1
    assert kv.layers[0].keys[0, 0, :, 0].tolist() == [1, 2, 3]
    kv.layers[0].update(torch.full((1, HEADS, 1, DIM), 42.0), torch.zeros(1, HEADS, 1, DIM))
    entry_keys = cache.match(np.array([1, 2, 3, 4, 5, 6]), (), None).entry.kv.layers[0].keys
    assert entry_keys[0, 0, :, 0].tolist() == [1, 2, 3, 4, 5]  # the stored entry was not written to
    whole = cache.match(np.array([1, 2, 3, 4, 5, 6]), (), None)
    taken = cache.take(whole, capacity=600)  # the whole entry: its buffers are handed over
    assert len(cache) == 0 and taken.length == 5 and taken.layers[0].capacity >= 600
    assert cache.match(np.array([1, 2]), (), None) is None
    assert cache.stats.hits == 3 and cache.stats.lookups == 4


def test_entries_are_separated_by_context():
    cache = PrefixCache()
    store(cache, [1, 2, 3], context=("adapter", "a"))
    assert cache.match(np.array([1, 2, 3, 4]), (), ("adapter", "b")) is None
    assert cache.match(np.array([1, 2, 3, 4]), (), ("adapter", "a")).length == 3


def test_a_newer_prompt_supersedes_the_entries_it_contains():
    cache = PrefixCache(max_entries=8, max_bytes=1 << 20)
    store(cache, [1, 2, 3, 10, 11], reusable=3)  # prompt 1 2 3 (reusable), reply 10 11
    store(cache, [1, 2, 9], reusable=3)  # another thread sharing "1 2": both kept
    assert len(cache) == 2
    store(cache, [1, 2, 3, 10, 12, 13, 20], reusable=6)  # the thread moved on (reply re-rendered)
    assert sorted(cache.lengths()) == [3, 7]
    assert cache.match(np.array([1, 2, 3, 10, 12, 13, 20, 21]), (), None).length == 6  # never past reusable
    assert not store(cache, [1, 2, 3, 10, 12], reusable=4)  # adds nothing the kept entry lacks
    assert not store(cache, [5, 6], reusable=0)  # nothing reusable: not kept


def test_chunk_boundaries_never_cut_an_image():
    from agent.llava.prefix_cache import chunk_boundaries, reusable_length

    assert chunk_boundaries(300, (), 128) == [0, 128, 256, 300]
    image = (ImageSpan(120, 140, "x", (0,)),)
    assert chunk_boundaries(300, image, 128) == [0, 140, 256, 300]
    assert chunk_boundaries(256, (), 128) == [0, 128, 256]
    assert reusable_length(300, (), 128) == 256 and reusable_length(256, (), 128) == 256
    assert reusable_length(100, (), 128) == 0
    # a longer prompt with the same start has the same boundaries there
    assert chunk_boundaries(900, image, 128)[:3] == chunk_boundaries(300, image, 128)[:3]


def test_bounds_entries_bytes_and_configure():
    cache = PrefixCache(max_entries=2, max_bytes=1 << 20)
    for first in range(4):
        store(cache, [100 + first, 1, 2, 3])
    assert len(cache) == 2 and cache.stats.evicted == 2
    assert cache.match(np.array([103, 1]), (), None) is not None  # the newest are kept
    assert cache.match(np.array([100, 1]), (), None) is None
    one_entry = kv_for([1, 2, 3, 4]).nbytes()
    cache.configure(2, one_entry + one_entry // 2)  # room for one entry only
    assert len(cache) == 1
    assert not store(cache, list(range(50, 600)))  # larger than the whole cache: not kept
    cache.configure(0, 1 << 20)
    assert len(cache) == 0 and not store(cache, [1, 2])
    with pytest.raises(InputError, match="prefix_cache_entries"):
        cache.configure(-1, 10)


def test_the_accountant_limits_growth_and_hears_the_size():
    reported: list[int] = []
    room = {"bytes": kv_for([1]).nbytes()}
    cache = PrefixCache(
        max_entries=8, max_bytes=1 << 30, accountant=CacheAccountant(lambda: room["bytes"], reported.append)
    )
    assert store(cache, list(range(8)))
    assert reported[-1] == cache.nbytes() > 0
    assert not store(cache, list(range(100, 400)))  # over the room the model manager leaves
    room["bytes"] = 0
    assert not store(cache, [7, 7])
    assert len(cache) == 0 and reported[-1] == 0  # trimmed to fit the budget
