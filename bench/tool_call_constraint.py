"""Cost of the tool-call constraint at real vocabulary sizes: index build time and per-token mask time.

No real tokenizer can be downloaded here, so a byte-level BPE tokenizer of the requested size is
synthesised: the 256 byte symbols, then word-like tokens (with and without the "Ġ" space marker,
letters drawn with English frequencies, digits, punctuation runs, multi-byte characters) each
made by merging an existing token with one more symbol, exactly the shape of a trained
GPT-2/Qwen vocabulary. The four product tool schemas are indexed against it.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/tool_call_constraint.py --vocab-sizes 32000 151643

Timings are per process; on a shared machine use one torch thread (the default here): with two
threads on busy cores every 151k-element op waits for the other thread to be scheduled.
"""

from __future__ import annotations

import argparse
import random
import resource
import time

LETTERS = "etaoinshrdlcumwfgypbvkjxqz"
WEIGHTS = [12.7, 9.1, 8.2, 7.5, 7.0, 6.7, 6.3, 6.1, 6.0, 4.3, 4.0, 2.8, 2.8, 2.4, 2.4, 2.2, 2.0, 2.0, 1.9, 1.5,
           1.0, 0.8, 0.2, 0.2, 0.1, 0.1]  # fmt: skip


def synthetic_tokenizer(vocab_size: int, seed: int = 0):
    """A byte-level BPE ``PreTrainedTokenizerFast`` with ``vocab_size`` tokens (Qwen-like specials)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(seed)
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)}
    merges: list[tuple[str, str]] = []
    encode = {b: c for c, b in _byte_table().items()}

    def as_symbols(text: str) -> str:
        return "".join(encode[b] for b in text.encode())

    def add_word(word: str) -> None:
        symbols = as_symbols(word)
        for end in range(2, len(symbols) + 1):
            token = symbols[:end]
            if token not in vocab:
                vocab[token] = len(vocab)
                merges.append((symbols[: end - 1], symbols[end - 1]))
                if len(vocab) >= vocab_size:
                    return

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    while len(vocab) < vocab_size - len(special):
        kind = rng.random()
        if kind < 0.75:
            word = "".join(rng.choices(LETTERS, WEIGHTS, k=rng.randint(2, 11)))
            word = (" " if rng.random() < 0.6 else "") + (word.capitalize() if rng.random() < 0.2 else word)
        elif kind < 0.85:
            word = "".join(rng.choices("0123456789", k=rng.randint(2, 4)))
        elif kind < 0.93:
            word = "".join(rng.choices(" \n.,:;\"'{}[]()<>/_-=!?*#", k=rng.randint(2, 4)))
        else:
            word = "".join(chr(rng.randint(0x4E00, 0x9FFF)) for _ in range(rng.randint(1, 3)))
        add_word(word)
    model = models.BPE(vocab=vocab, merges=merges)
    raw = Tokenizer(model)
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    return tokenizer


def _byte_table() -> dict[str, int]:
    from agent.decoding.token_index import _gpt2_unicode_to_byte

    return _gpt2_unicode_to_byte()


def product_tools() -> list:
    """The four product tools (constructing them loads no model)."""
    from tools.caption import CaptionImageTool
    from tools.generate import GenerateImageTool
    from tools.search import SearchImagesTool
    from tools.speak import SpeakTool

    return [CaptionImageTool(), GenerateImageTool(), SearchImagesTool(), SpeakTool()]


def main() -> None:
    import torch

    from agent.decoding.constraint import ToolCallConstraint
    from agent.decoding.token_index import token_vocabulary
    from agent.llava.messages import tool_schemas

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-sizes", type=int, nargs="+", default=[32000, 151643])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the mask timing")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    schemas = tool_schemas(product_tools())
    rows = []
    for size in args.vocab_sizes:
        started = time.perf_counter()
        tokenizer = synthetic_tokenizer(size)
        made = time.perf_counter() - started
        started = time.perf_counter()
        token_vocabulary(tokenizer)
        vocab_s = time.perf_counter() - started
        started = time.perf_counter()
        constraint = ToolCallConstraint.build(tokenizer, schemas, "any")
        build_s = time.perf_counter() - started
        started = time.perf_counter()
        ToolCallConstraint.build(tokenizer, schemas, "auto")
        auto_s = time.perf_counter() - started
        started = time.perf_counter()
        ToolCallConstraint.build(tokenizer, schemas, "speak")
        named_s = time.perf_counter() - started
        # per-step cost: random logits, sampled tokens, a budget that ends tight
        generator = torch.Generator().manual_seed(0)
        processor = constraint.logits_processor(args.steps)
        ids = torch.zeros((1, 1), dtype=torch.long)
        times = []
        for _ in range(args.steps):
            scores = torch.randn((1, len(tokenizer)), generator=generator)
            tick = time.perf_counter()
            scores = processor(ids, scores)
            times.append(time.perf_counter() - tick)
            token = int(torch.multinomial(torch.softmax(scores, -1), 1, generator=generator))
            if token in constraint.vocabulary.eos_token_ids:
                break
            ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
        times.sort()
        rows.append(
            (len(tokenizer), made, vocab_s, build_s, auto_s, named_s, len(constraint.automaton.dist),
             constraint.min_call_tokens, 1000 * times[len(times) // 2], 1000 * times[-1], len(times))
        )  # fmt: skip
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("| vocab | make tokenizer s | vocabulary s | index build s (any) | +auto s | +one named tool s | "
          "DFA states | min call tokens | mask ms median | mask ms max | steps |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            "| {} | {:.1f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {} | {} | {:.3f} | {:.2f} | {} |".format(
                *row
            )
        )
    print(f"peak RSS {peak:.0f} MiB")


if __name__ == "__main__":
    main()
