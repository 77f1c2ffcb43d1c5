"""A scripted tool call for benchmarks: a random-weight model writes the call a trained model would.

:class:`ScriptedText` is a logits processor (given through ``ChatLlava``'s ``logits_processor``
call option) that keeps only the tokens continuing a given text, so every configuration of a
benchmark writes the same call, token for token where the grammar leaves a choice.
:func:`prompt_length` says where the reply starts in the processor's ``input_ids``.
"""

from __future__ import annotations


class TokenPieces:
    """Every token's exact bytes (the constraint's own table), for :class:`ScriptedText`."""

    def __init__(self, tokenizer) -> None:
        from agent.decoding.token_index import token_vocabulary

        self.vocabulary = token_vocabulary(tokenizer)
        self.by_bytes = self.vocabulary.byte_groups()  # bytes -> ids, special tokens left out
        self.longest = max(map(len, self.by_bytes))

    def written(self, ids: list[int]) -> bytes:
        table = self.vocabulary.token_bytes
        return b"".join(table[i] for i in ids if i < len(table))

    def continuations(self, rest: bytes) -> list[tuple[int, int]]:
        """``(token id, length)`` of every token whose bytes start ``rest``."""
        return [
            (token_id, size)
            for size in range(1, min(len(rest), self.longest) + 1)
            for token_id in self.by_bytes.get(rest[:size], ())
        ]


class ScriptedText:
    """A logits processor that has the model write ``text`` after its prompt, then end (``end_ids``).

    At each step only tokens whose bytes continue ``text`` keep a score: the token the tokenizer
    itself would write there first (as a trained model writes it), then the longer ones. A random
    model then writes the same tool call in every configuration, short arguments as a trained
    model writes them, instead of filling each string up to the token budget; a stretch the
    grammar forces (jump-forward) is the same text however it is spelled. Off the script (which
    a valid call never is) it leaves the scores alone.
    """

    def __init__(self, pieces: TokenPieces, prompt_tokens: int, text: str, end_ids: list[int], tokenizer) -> None:
        self.pieces, self.prompt_tokens, self.end_ids = pieces, prompt_tokens, end_ids
        self.script = text.encode()
        self.canonical: dict[int, int] = {}  # byte offset -> the token the tokenizer writes there
        offset = 0
        for token_id in tokenizer.encode(text, add_special_tokens=False):
            data = pieces.written([token_id])
            if not data or not self.script.startswith(data, offset):
                break  # a leading-space marker, or a merge the script does not hold: longest tokens from here
            self.canonical[offset] = token_id
            offset += len(data)

    def __call__(self, input_ids, scores):
        import torch

        written = self.pieces.written(input_ids[0, self.prompt_tokens :].tolist())
        if not self.script.startswith(written):
            return scores
        rest = self.script[len(written) :]
        wanted = torch.full_like(scores, float("-inf"))
        if not rest:  # the script is written: the reply ends
            wanted[0, self.end_ids] = 0.0
            return torch.where(scores == float("-inf"), scores, wanted)
        candidates = self.pieces.continuations(rest)
        if not candidates:
            return scores
        for token_id, size in candidates:
            wanted[0, token_id] = float(size)
        if (token_id := self.canonical.get(len(written))) is not None:
            wanted[0, token_id] = 1000.0
        return torch.where(scores == float("-inf"), scores, wanted)


def prompt_length(llm, messages, schemas) -> int:
    """The prompt's tokens as ``ChatLlava`` renders ``messages`` with ``schemas`` bound."""
    from agent.llava.messages import messages_to_turns
    from agent.llava.prompting import render_prompt

    loaded = llm.loaded
    rendered = render_prompt(loaded.processor, messages_to_turns(messages), tools=schemas, config=loaded.config)
    return int(rendered.encode(loaded.processor)["input_ids"].shape[1])
