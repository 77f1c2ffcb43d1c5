"""PromptCache: which part of the last prompt's key/value cache the next prompt may reuse."""

from __future__ import annotations

from agent.prompt_cache import MIN_REUSED_TOKENS, PromptCache


class FakeCache:
    def __init__(self, length: int) -> None:
        self.length = length

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, remove: int) -> None:  # transformers' semantics: a negative count of tokens to drop
        assert remove < 0 and -remove <= self.length
        self.length += remove


def _stored(ids: list[int], extra: int = 5) -> PromptCache:
    cache = PromptCache()
    cache.keep(ids, FakeCache(len(ids) + extra))  # generate returns prompt + reply
    return cache


def test_the_shared_prefix_is_reused_and_the_reply_is_not_kept():
    first = list(range(100))
    cache = _stored(first)
    assert cache.cache.get_seq_length() == 100
    taken = cache.take(first[:80] + [999, 1000])
    assert taken is not None and taken.get_seq_length() == 80 and cache.reused_tokens == 80
    assert cache.cache is None  # handed over until generate gives it back


def test_one_token_is_always_left_to_encode():
    ids = list(range(100))
    taken = _stored(ids).take(ids)
    assert taken.get_seq_length() == 99


def test_nothing_from_the_first_image_token_on_is_reused():
    ids = list(range(100))
    new = ids[:60] + [7777] + ids[61:]
    taken = _stored(ids).take(ids[:50] + [7777] * 3 + ids[53:], image_token_id=7777)
    assert taken.get_seq_length() == 50
    assert _stored(new).take(new, image_token_id=7777).get_seq_length() == 60


def test_short_common_prefixes_are_encoded_again():
    ids = list(range(100))
    cache = _stored(ids)
    assert cache.take(ids[: MIN_REUSED_TOKENS - 1] + [5000] * 50) is None
    assert cache.reused_tokens == 0


def test_an_empty_cache_reuses_nothing():
    assert PromptCache().take(list(range(50))) is None
