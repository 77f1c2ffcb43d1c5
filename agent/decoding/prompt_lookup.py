"""Prompt-lookup drafts: the text a reply is copying, guessed from where it already appears.

Tool-call arguments mostly copy the request: ``{"text": "dinner is ready"}`` after "read this
aloud: dinner is ready", a path the user typed, the words of a query. Once a reply has written
the first few bytes of such a span, the rest of it can be read off the prompt. The decode loop
appends these guessed tokens (the *draft*) after the token it picked, gets the logits of every
position in that one forward pass, and keeps the longest run of the draft that the model would
have produced itself (speculative decoding, with the prompt as the draft model: "prompt lookup
decoding"). What the reply says does not change; only the number of passes does.

The match is on bytes, not token ids: inside a JSON string the model spells ``dinner`` without
the leading space it has in the request (`` dinner``), so token n-grams of the reply and the
prompt often differ where their bytes agree. :class:`PromptLookup` keeps the bytes of the
prompt and of the reply so far, finds the longest suffix of the reply (at least
:data:`MIN_MATCH_BYTES`, at most :data:`MAX_MATCH_BYTES`) that occurs earlier, takes the bytes
after its latest earlier occurrence and spells them with the tokenizer. The last token of the
spelling is dropped unless the source ends there (it may be a word cut in half).

No torch here: bytes and token ids only.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

MIN_MATCH_BYTES = 3
"""A reply suffix shorter than this is not looked up (too many accidental matches)."""
MAX_MATCH_BYTES = 64
"""The longest reply suffix looked up."""
MAX_DRAFT_BYTES = 96
"""Bytes read after a match, before spelling."""
MAX_DRAFT_TOKENS = 8
"""Tokens drafted at most (each one more position in the verifying pass)."""

Spell = Callable[[bytes], "list[int] | None"]


class PromptLookup:
    """Draft the continuation of a reply from earlier occurrences of its last bytes.

    ``token_bytes[i]`` is the bytes of token ``i`` (special and image tokens: ``b""``). The
    prompt's bytes are read once; :meth:`extend` follows the reply.
    """

    def __init__(
        self,
        token_bytes: Sequence[bytes],
        prompt_ids: Sequence[int],
        spell: Spell,
        *,
        min_match: int = MIN_MATCH_BYTES,
        max_tokens: int = MAX_DRAFT_TOKENS,
    ) -> None:
        if min_match < 1 or max_tokens < 1:
            raise ValueError(f"min_match and max_tokens must be >= 1, got {min_match} and {max_tokens}")
        self._token_bytes = token_bytes
        self._size = len(token_bytes)
        self._spell = spell
        self.min_match = min_match
        self.max_tokens = max_tokens
        self.source = bytearray(self._bytes_of(prompt_ids))
        self.reply_start = len(self.source)

    def _bytes_of(self, ids: Sequence[int]) -> bytes:
        size, table = self._size, self._token_bytes
        return b"".join(table[int(i)] for i in ids if 0 <= int(i) < size)

    def extend(self, ids: Sequence[int]) -> None:
        """Follow tokens appended to the reply."""
        self.source += self._bytes_of(ids)

    def match(self) -> tuple[int, int] | None:
        """``(start, length)`` of the latest earlier occurrence of the reply's longest matching suffix."""
        source = self.source
        end = len(source)
        longest = min(MAX_MATCH_BYTES, end - self.reply_start)
        if longest < self.min_match:
            return None

        def find(length: int) -> int:
            # an occurrence that ends before the suffix itself does (so something follows it)
            return source.rfind(source[end - length :], 0, end - 1)

        # if a suffix occurs earlier, every shorter one does too: binary search for the longest
        if find(self.min_match) < 0:
            return None
        low, high = self.min_match, longest
        while low < high:
            middle = (low + high + 1) // 2
            if find(middle) >= 0:
                low = middle
            else:
                high = middle - 1
        return find(low), low

    def draft(self, limit: int | None = None) -> list[int]:
        """Up to ``min(limit, max_tokens)`` tokens that would continue the reply as the source did."""
        limit = self.max_tokens if limit is None else min(limit, self.max_tokens)
        if limit <= 0:
            return []
        found = self.match()
        if found is None:
            return []
        start, length = found
        begin = start + length
        follow = bytes(self.source[begin : begin + MAX_DRAFT_BYTES])
        complete = begin + MAX_DRAFT_BYTES >= len(self.source)  # the source ends inside what was read
        follow = _whole_characters(follow)
        if not follow:
            return []
        ids = self._spell(follow)
        if not ids:
            return []
        if not complete and len(ids) > 1:
            ids = ids[:-1]  # the read may end inside a word: its last token may not be the model's
        return ids[:limit]


def _whole_characters(data: bytes) -> bytes:
    """``data`` without a UTF-8 character cut at its start or its end."""
    start = 0
    while start < len(data) and start < 3 and data[start] & 0xC0 == 0x80:
        start += 1
    data = data[start:]
    for cut in range(4):
        try:
            (data[: len(data) - cut] if cut else data).decode("utf-8")
        except UnicodeDecodeError:
            continue
        return data[: len(data) - cut] if cut else data
    return b""
