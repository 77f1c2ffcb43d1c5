"""Tiny, randomly initialised LLaVA checkpoints for tests and offline tries.

Two template families are built, like the real checkpoints they stand in for:

* ``llama``: a Llama language model with the llava-1.5 template (``USER: ... ASSISTANT:``),
  a single-image model;
* ``qwen2``: a Qwen2 language model with the llava-interleave ChatML template
  (``<|im_start|>user ...``), a multi-image model.

The tokenizer is a byte-level BPE trained on the spot with ``tokenizers``. Everything is saved
with ``save_pretrained`` so that tests load it through the same ``from_pretrained`` path users
take. Sizes respect bitsandbytes' CPU limits (in_features % 64 == 0, out_features % 32 == 0) so
the 4-bit path runs too.

Run as a script to write both checkpoints to a folder (with a 16k-token context there, room for
the agent's system prompt and tool schemas; the tests' own copies keep 2,048 positions)::

    python tests/tiny_models.py ./tiny-models
    llava-agent chat --model ./tiny-models/llava-tiny-qwen2
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

LLAVA_15_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] != 'system' %}{{ message['role'].upper() + ': '}}{% endif %}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] + ' '}}"
    "{% endfor %}{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] + ' '}}{% endgeneration %}{% endfor %}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

LLAVA_INTERLEAVE_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'}}"
    "{# Render all images first #}{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}{# Render all video then #}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'video') %}{{ '<video>\n' }}{% endfor %}"
    "{# Render all text next #}{% if message['role'] != 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}{{ content['text'] }}{% endfor %}"
    "{% else %}{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{% generation %}{{ content['text'] }}{% endgeneration %}{% endfor %}{% endif %}{{'<|im_end|>\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

FAMILIES = ("llama", "qwen2")

# Text the tokenizer is trained on: chat words, JSON punctuation, tool-call markup, colours.
_CORPUS = [
    "USER: ASSISTANT: system user assistant tool",
    '<tool_call>\n{"name": "caption_image", "arguments": {"image": "cat.png", "detail": "short"}}\n</tool_call>',
    "<tool_response>\n{\"result\": 42}\n</tool_response> <tools> </tools>",
    "What colour is the shape? The shape is red. The shape is green. The shape is blue. The shape is yellow.",
    "red green blue yellow orange purple black white circle square triangle",
    "Describe the image. A photo of a cat sitting on a mat. A dog in the park.",
    "The quick brown fox jumps over the lazy dog. Hello, how are you today? I am fine, thank you.",
    "0 1 2 3 4 5 6 7 8 9 10 100 3.14 -1 true false null [] {} : , \" ' ( ) ? ! . ; - _ / \\",
    "search images speak generate caption query text prompt width height steps seed voice speed",
    "You are a helpful assistant. You may call one or more functions to assist with the user query.",
]


def _train_tokenizer(special_tokens: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(_CORPUS * 20, trainer=trainer)
    return tokenizer


LLAVA_15_7B_HEADS = {
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "rope_theta": 10000.0,
    "attn_implementation": "sdpa",
}
"""``text_overrides``: llava-1.5-7b's attention layout (32 heads, no grouped keys and values, its
rope, SDPA) at a tiny width (head size 8 instead of 128)."""


def tiny_llava_config(text_config: Any, image_token_id: int, initializer_range: float = 0.02, **extra: Any) -> Any:
    """A LLaVA config around ``text_config`` with a small random CLIP vision tower (16 image tokens)."""
    from transformers import CLIPVisionConfig, LlavaConfig

    vision_config = CLIPVisionConfig(
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, image_size=32,
        patch_size=8, projection_dim=64, initializer_range=initializer_range,
    )
    return LlavaConfig(
        vision_config=vision_config, text_config=text_config, image_token_index=image_token_id, image_seq_length=16,
        vision_feature_select_strategy="default", vision_feature_layer=-2, **extra,
    )


def tiny_llava_processor(tokenizer: Any, chat_template: str) -> Any:
    """The processor that matches :func:`tiny_llava_config`'s vision tower (32-pixel images, 8-pixel patches)."""
    from transformers import CLIPImageProcessor, LlavaProcessor

    return LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, do_center_crop=True
        ),
        tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=chat_template,
    )


def build_tiny_llava(
    output_dir: str | Path,
    family: str = "qwen2",
    *,
    initializer_range: float = 0.2,
    seed: int = 0,
    text_overrides: dict | None = None,
    context: int = 2048,
) -> Path:
    """Build, save and return the folder of a tiny random LLaVA checkpoint of one template family.

    ``text_overrides``: text-config settings replacing the tiny defaults (e.g. another head layout).
    ``context``: positions the model and its tokenizer take.
    """
    import torch
    from transformers import (
        LlamaConfig,
        LlavaForConditionalGeneration,
        PreTrainedTokenizerFast,
        Qwen2Config,
    )

    if family not in FAMILIES:
        raise ValueError(f"family {family!r} is not one of {FAMILIES}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)

    if family == "llama":
        specials = ["<unk>", "<s>", "</s>", "<pad>", "<image>"]
        template = LLAVA_15_TEMPLATE
        bos, eos, pad, unk = "<s>", "</s>", "<pad>", "<unk>"
    else:
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]
        template = LLAVA_INTERLEAVE_TEMPLATE
        bos, eos, pad, unk = None, "<|im_end|>", "<|endoftext|>", None

    vocab_size = 512  # multiple of 32 for bitsandbytes
    raw = _train_tokenizer(specials, vocab_size)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        unk_token=unk,
        extra_special_tokens={"image_token": "<image>"},
        model_max_length=context,
    )
    tokenizer.chat_template = template
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")

    text_kwargs = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=context,
        initializer_range=initializer_range,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        tie_word_embeddings=False,
    )
    text_kwargs.update(text_overrides or {})
    text_config = LlamaConfig(**text_kwargs) if family == "llama" else Qwen2Config(**text_kwargs)
    config = tiny_llava_config(text_config, image_token_id, initializer_range)
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(output_dir, safe_serialization=True)

    processor = tiny_llava_processor(tokenizer, template)
    processor.save_pretrained(output_dir)
    (output_dir / "tiny_model_info.json").write_text(json.dumps({"family": family, "seed": seed}))
    return output_dir


def endless_copy(model: str | Path, output_dir: str | Path) -> Path:
    """A copy of a tiny checkpoint that never ends a reply by itself (no end-of-sequence token).

    For tests that need a reply to run its whole token budget: which prompts a random model ends
    early depends on the CPU's kernels and dtype, so a hold built on "this prompt runs long" is not.
    """
    import shutil

    output_dir = Path(output_dir)
    shutil.copytree(model, output_dir)
    (output_dir / "generation_config.json").write_text('{"eos_token_id": null}\n')
    return output_dir


def build_all(output_dir: str | Path, context: int = 2048) -> dict[str, Path]:
    output_dir = Path(output_dir)
    return {family: build_tiny_llava(output_dir / f"llava-tiny-{family}", family, context=context) for family in FAMILIES}


def main() -> None:
    parser = argparse.ArgumentParser(description="Write tiny random LLaVA checkpoints for offline tries.")
    parser.add_argument("output_dir", type=Path)
    parser.add_argument("--context", type=int, default=16384,
                        help="positions the models take (default 16384: the agent's prompt fits)")
    args = parser.parse_args()
    for family, path in build_all(args.output_dir, context=args.context).items():
        print(f"{family}: {path}")


if __name__ == "__main__":
    main()
