"""render_prompt: the one rendering path, its image policy and its guarantees."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
from PIL import Image

from agent.core.errors import InputError
from agent.llava.prompting import (
    IMAGE_CAPACITY,
    MULTI_IMAGE_DEFAULT,
    RenderedPrompt,
    image_capacity,
    register_image_capacity,
    render_prompt,
    template_supports_system,
)


@pytest.fixture(scope="module")
def processors(tiny_llava_paths):
    from transformers import AutoConfig, AutoProcessor

    return {
        family: (AutoProcessor.from_pretrained(path), AutoConfig.from_pretrained(path))
        for family, path in tiny_llava_paths.items()
    }


def image_tokens_per_image(processor) -> int:
    """What a LLaVA processor expands one <image> into: one token per patch, plus the CLS token unless dropped."""
    crop = processor.image_processor.crop_size
    patches = (crop["height"] // processor.patch_size) * (crop["width"] // processor.patch_size)
    dropped = 1 if processor.vision_feature_select_strategy == "default" else 0
    return patches + processor.num_additional_image_tokens - dropped


def test_image_token_count_matches_the_checkpoints(processors):
    for processor, config in processors.values():
        assert image_tokens_per_image(processor) == config.image_seq_length == 16


def _image(index: int) -> dict:
    return {
        "type": "image",
        "image": Image.new("RGB", (40, 30), (index * 40 % 256, 0, 0)),
        "name": f"img{index}.png",
    }


def _conversation(n_images: int) -> list[dict]:
    """n images spread over user turns, two per turn, with assistant replies between."""
    turns: list[dict] = [{"role": "system", "content": "You see pictures."}]
    index = 0
    while index < n_images:
        blocks = [_image(i) for i in range(index, min(index + 2, n_images))]
        index += len(blocks)
        turns.append(
            {"role": "user", "content": [*blocks, {"type": "text", "text": f"what about these {index}?"}]}
        )
        turns.append({"role": "assistant", "content": "They are red."})
    turns.append({"role": "user", "content": "And overall?"})
    return turns


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"model_type": "llava", "text_config": {"model_type": "llama"}}, 1),
        ({"model_type": "llava", "text_config": {"model_type": "qwen2"}}, MULTI_IMAGE_DEFAULT),
        ({"model_type": "llava_onevision", "text_config": {"model_type": "qwen2"}}, MULTI_IMAGE_DEFAULT),
        ({"model_type": "llava_next", "text_config": {"model_type": "mistral"}}, 1),
        ({"model_type": "something_new"}, 1),
        (
            SimpleNamespace(model_type="llava", text_config=SimpleNamespace(model_type="qwen2")),
            MULTI_IMAGE_DEFAULT,
        ),
    ],
)
def test_image_capacity_reads_the_config(config, expected):
    assert image_capacity(config) == expected


def test_register_image_capacity():
    saved = dict(IMAGE_CAPACITY)
    try:
        register_image_capacity("llava", "gemma", 3)
        assert image_capacity({"model_type": "llava", "text_config": {"model_type": "gemma"}}) == 3
        with pytest.raises(InputError):
            register_image_capacity("llava", "gemma", -1)
    finally:
        IMAGE_CAPACITY.clear()
        IMAGE_CAPACITY.update(saved)


def test_policy_follows_the_real_configs(processors):
    assert image_capacity(processors["llama"][1]) == 1
    assert image_capacity(processors["qwen2"][1]) == MULTI_IMAGE_DEFAULT


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("n_images", [0, 1, 2, 5])
def test_image_tokens_always_match_images(processors, family, n_images):
    processor, config = processors[family]
    rendered = render_prompt(processor, _conversation(n_images), config=config)
    assert isinstance(rendered, RenderedPrompt)
    capacity = image_capacity(config)
    assert len(rendered.images) == min(n_images, capacity)
    assert rendered.dropped_images == n_images - len(rendered.images)
    assert rendered.text.count(processor.image_token) == len(rendered.images)
    # the most recent images are the ones kept as pixels
    kept = [f"img{i}.png" for i in range(n_images - len(rendered.images), n_images)]
    for number in range(1, rendered.dropped_images + 1):
        assert f"[earlier image: img{number - 1}.png]" in rendered.text
    for name in kept:
        assert f"{name}]" not in rendered.text
    encoded = rendered.encode(processor)
    assert encoded["input_ids"].shape[0] == 1
    if rendered.images:
        assert encoded["pixel_values"].shape[0] == len(rendered.images)
        n_image_ids = int((encoded["input_ids"] == config.image_token_index).sum())
        assert n_image_ids == len(rendered.images) * image_tokens_per_image(processor)
    else:
        assert "pixel_values" not in encoded or encoded["pixel_values"] is None


@pytest.mark.parametrize("max_images", [0, 1, 3])
def test_max_images_overrides_the_policy(processors, max_images):
    processor, config = processors["qwen2"]
    rendered = render_prompt(processor, _conversation(5), config=config, max_images=max_images)
    assert len(rendered.images) == max_images
    assert rendered.text.count(processor.image_token) == max_images
    assert rendered.max_images == max_images


def test_literal_image_token_in_text_cannot_add_an_image_slot(processors):
    processor, config = processors["qwen2"]
    turns = [{"role": "user", "content": [_image(0), {"type": "text", "text": "what is <image> <image>?"}]}]
    rendered = render_prompt(processor, turns, config=config)
    assert rendered.text.count("<image>") == 1
    assert len(rendered.images) == 1
    assert "[image]" in rendered.text


def test_image_in_system_turn_is_caught_before_the_model(processors):
    processor, config = processors["qwen2"]
    bad = copy.copy(processor)
    # A template that renders only text: images would silently vanish without the check.
    bad.chat_template = (
        "{% for m in messages %}{{ m['role'] }}: {% for c in m['content'] %}{% if c['type'] == 'text' %}"
        "{{ c['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
    )
    turns = [{"role": "user", "content": [_image(0), {"type": "text", "text": "hi"}]}]
    with pytest.raises(InputError, match="0 image token.*1 image"):
        render_prompt(bad, turns, config=config)


def test_generation_prompt_and_family_templates(processors):
    turns = [{"role": "user", "content": "hello"}]
    llama = render_prompt(processors["llama"][0], turns).text
    qwen = render_prompt(processors["qwen2"][0], turns).text
    assert llama.startswith("USER:") and llama.endswith("ASSISTANT:")
    assert qwen.startswith("<|im_start|>user") and qwen.endswith("<|im_start|>assistant\n")
    no_prompt = render_prompt(processors["qwen2"][0], turns, add_generation_prompt=False).text
    assert not no_prompt.endswith("<|im_start|>assistant\n")


def test_system_turn_folded_when_template_has_no_system_role(processors):
    processor = copy.copy(processors["qwen2"][0])
    processor.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
        "{% endif %}<|im_start|>{{ m['role'] }}\n{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
        "{% else %}{{ c['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endfor %}<|im_start|>assistant\n"
    )
    assert template_supports_system(processor) is False
    assert template_supports_system(processors["qwen2"][0]) is True
    turns = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": [_image(0), "Hi"]}]
    rendered = render_prompt(processor, turns, max_images=1)
    assert "<|im_start|>system" not in rendered.text
    assert "<|im_start|>user\n<image>\nBe brief.\n\nHi" in rendered.text


def test_tools_and_tool_turns_render_as_protocol_text(processors):
    from agent.decoding.tool_protocol import TOOL_CALL_OPEN

    processor, config = processors["llama"]
    schema = {
        "type": "function",
        "function": {
            "name": "caption_image",
            "description": "Caption an image.",
            "parameters": {
                "type": "object",
                "properties": {"image": {"type": "string"}},
                "required": ["image"],
            },
        },
    }
    turns = [
        {"role": "user", "content": "caption cat.png"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {"type": "function", "function": {"name": "caption_image", "arguments": {"image": "cat.png"}}}
            ],
        },
        {"role": "tool", "content": "A cat.", "name": "caption_image"},
    ]
    rendered = render_prompt(processor, turns, tools=[schema], config=config)
    assert '"name": "caption_image"' in rendered.text
    assert "<tools>" in rendered.text
    assert (
        f'{TOOL_CALL_OPEN}\n{{"name": "caption_image", "arguments": {{"image": "cat.png"}}}}' in rendered.text
    )
    assert "<tool_response>\nA cat.\n</tool_response>" in rendered.text
    assert rendered.text.endswith("ASSISTANT:")


@pytest.mark.parametrize(
    ("turns", "message"),
    [
        ([], "empty"),
        ("hello", "list of chat turns"),
        ([{"role": "wizard", "content": "x"}], "role 'wizard'"),
        ([{"role": "user"}], "no content"),
        ([{"role": "user", "content": 5}], "string or a list"),
        ([{"role": "user", "content": [{"type": "audio"}]}], "block type 'audio'"),
        ([{"role": "user", "content": [{"type": "image"}]}], "no 'image'"),
        (["not a turn"], "must be a dict"),
    ],
)
def test_bad_turns_raise_input_errors(processors, turns, message):
    with pytest.raises(InputError, match=message):
        render_prompt(processors["qwen2"][0], turns)


def test_template_failures_become_input_errors(processors):
    processor = copy.copy(processors["qwen2"][0])
    processor.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(InputError, match="roles must alternate"):
        render_prompt(processor, [{"role": "user", "content": "hi"}])


def test_input_turns_are_not_modified(processors):
    turns = _conversation(3)
    before = copy.deepcopy([{k: v for k, v in t.items()} for t in turns])
    render_prompt(processors["llama"][0], turns, config=processors["llama"][1])
    assert [t["role"] for t in turns] == [t["role"] for t in before]
    assert [len(t["content"]) if isinstance(t["content"], list) else t["content"] for t in turns] == [
        len(t["content"]) if isinstance(t["content"], list) else t["content"] for t in before
    ]
