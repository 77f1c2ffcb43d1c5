"""Collation on both template families: assistant-only labels (+EOS), intact image tokens, same rendering as ChatLlava."""

from __future__ import annotations

import pytest
from PIL import Image

from agent.core.errors import DatasetError
from agent.llava.prompting import render_prompt
from finetune.collator import IGNORE_INDEX, ConversationEncoder, SampleTooLongError, TrainingCollator
from finetune.formats import Sample, to_chat_turns

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("collator-images")
    for name, colour in (("red.png", (255, 0, 0)), ("blue.png", (0, 0, 255))):
        Image.new("RGB", (40, 30), colour).save(folder / name)
    return folder


@pytest.fixture(scope="module")
def encoder_for(tiny_llava_paths, pictures):
    from transformers import AutoConfig, AutoProcessor

    cache = {}

    def build(family: str, max_length: int | None = None) -> ConversationEncoder:
        if family not in cache:
            path = tiny_llava_paths[family]
            cache[family] = (AutoProcessor.from_pretrained(path), AutoConfig.from_pretrained(path))
        processor, config = cache[family]
        return ConversationEncoder(processor, model_config=config, max_length=max_length, image_folder=pictures)

    return build


SAMPLES = {
    "one image, one reply": Sample(
        0,
        "sample 0",
        [{"role": "user", "content": "<image>\nWhat colour is the shape?"}, {"role": "assistant", "content": "red"}],
        ["red.png"],
    ),
    "multi-turn with system": Sample(
        1,
        "sample 1",
        [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "<image>\nWhat colour is the shape?"},
            {"role": "assistant", "content": "The shape is red."},
            {"role": "user", "content": "And the background?"},
            {"role": "assistant", "content": "red too"},
        ],
        ["red.png"],
    ),
    "text only": Sample(
        2, "line 3", [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hello, how are you?"}]
    ),
}


def _runs(labels: list[int]) -> list[tuple[int, int]]:
    runs, start = [], None
    for index, label in enumerate([*labels, IGNORE_INDEX]):
        if label != IGNORE_INDEX and start is None:
            start = index
        elif label == IGNORE_INDEX and start is not None:
            runs.append((start, index))
            start = None
    return runs


def _collapse_image_runs(ids: list[int], image_id: int) -> list[int]:
    return [t for i, t in enumerate(ids) if t != image_id or i == 0 or ids[i - 1] != image_id]


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("name", list(SAMPLES))
def test_labels_cover_exactly_the_assistant_replies_and_their_end(encoder_for, pictures, family, name):
    encoder = encoder_for(family)
    tokenizer = encoder.tokenizer
    sample = SAMPLES[name]
    encoded = encoder.encode(sample)
    replies = [t["content"] for t in sample.turns if t["role"] == "assistant"]

    runs = _runs(encoded.labels)
    assert len(runs) == len(replies)
    for (start, end), reply in zip(runs, replies, strict=True):
        assert encoded.labels[start:end] == encoded.input_ids[start:end]
        assert encoded.input_ids[end - 1] == tokenizer.eos_token_id  # every reply ends with EOS
        text = tokenizer.decode(encoded.input_ids[start:end], skip_special_tokens=False)
        assert text.strip() == reply + tokenizer.eos_token
    labelled = [t for t in encoded.labels if t != IGNORE_INDEX]
    assert encoder.image_token_id not in labelled
    assert encoded.assistant_tokens == sum(end - start for start, end in runs)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("name", list(SAMPLES))
def test_rendering_is_render_prompts_and_the_prompt_is_chatllavas(encoder_for, pictures, family, name):
    from finetune.collator import load_pictures

    encoder = encoder_for(family)
    tokenizer = encoder.tokenizer
    sample = SAMPLES[name]
    encoded = encoder.encode(sample)
    turns = to_chat_turns(sample, load_pictures(sample, pictures))
    rendered = render_prompt(encoder.processor, turns, add_generation_prompt=False, config=encoder.model_config)
    assert encoded.text == rendered.text

    # The ids are the template's text, tokenized, with image tokens expanded and an EOS after each
    # reply only where the template writes none.
    ids = list(encoded.input_ids)
    eos_in_text = rendered.text.count(tokenizer.eos_token)
    inserted = [end - 1 for _, end in _runs(encoded.labels)] if eos_in_text == 0 else []
    without_inserted = [t for i, t in enumerate(ids) if i not in set(inserted)]
    plain = tokenizer(rendered.text)["input_ids"]
    assert _collapse_image_runs(without_inserted, encoder.image_token_id) == plain

    # What ChatLlava feeds the model for the conversation before the last reply is an exact prefix
    # (earlier replies carry the EOS the training inserted), and the last reply's labels start right after it.
    prompt = render_prompt(encoder.processor, turns[:-1], add_generation_prompt=True, config=encoder.model_config)
    prompt_ids = prompt.encode(encoder.processor)["input_ids"][0].tolist()
    last_start = _runs(encoded.labels)[-1][0]
    before_last = [t for i, t in enumerate(ids[:last_start]) if i not in set(inserted)]
    assert before_last == prompt_ids


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_image_tokens_are_intact(encoder_for, tiny_llava_paths, family):
    from transformers import AutoConfig

    image_seq_length = AutoConfig.from_pretrained(tiny_llava_paths[family]).image_seq_length
    encoder = encoder_for(family)
    encoded = encoder.encode(SAMPLES["one image, one reply"])
    positions = [i for i, t in enumerate(encoded.input_ids) if t == encoder.image_token_id]
    assert len(positions) == encoded.image_tokens == image_seq_length
    assert positions == list(range(positions[0], positions[0] + image_seq_length))  # one unbroken run
    assert tuple(encoded.extra["pixel_values"].shape) == (1, 3, 32, 32)


def test_two_images_on_the_multi_image_family(encoder_for):
    sample = Sample(
        0,
        "sample 0",
        [{"role": "user", "content": "<image> then <image>: which first?"}, {"role": "assistant", "content": "red"}],
        ["red.png", "blue.png"],
    )
    encoded = encoder_for("qwen2").encode(sample)
    assert encoded.image_tokens == 2 * 16
    assert tuple(encoded.extra["pixel_values"].shape) == (2, 3, 32, 32)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_too_long_samples_are_refused_not_cut(encoder_for, family):
    encoder = encoder_for(family, max_length=20)
    with pytest.raises(SampleTooLongError) as caught:
        encoder.encode(SAMPLES["one image, one reply"])
    length = encoder_for(family).encode(SAMPLES["one image, one reply"]).length
    message = str(caught.value)
    counted = int(message.split(" tokens")[0].split()[-1])
    assert counted <= length  # found before the labels are built: a lower bound of the real length
    assert message == (
        f"sample 0: {'at least ' if message.startswith('sample 0: at least') else ''}{counted} tokens (16 of them "
        "image tokens) is longer than max_length 20; image tokens are never cut, so raise --max-length or shorten "
        "the conversation"
    )


def test_validation_reports_too_long_samples_with_their_index(encoder_for, pictures, tmp_path):
    import json

    from finetune.validate import validate

    rows = [
        {"image": "red.png", "conversations": [{"from": "human", "value": "<image>\nColour?"}, {"from": "gpt", "value": "red"}]},
        {"conversations": [{"from": "human", "value": "word " * 40}, {"from": "gpt", "value": "ok"}]},
    ]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(rows))
    with pytest.raises(DatasetError, match=r"\n  sample 1: (at least )?\d+ tokens \(0 of them image tokens\) is longer than max_length 40"):
        validate(path, image_folder=pictures, encoder=encoder_for("qwen2", max_length=40))
    report = validate(path, image_folder=pictures, encoder=encoder_for("qwen2", max_length=40), skip_invalid=True)
    assert len(report.samples) == 1 and report.summary()["tokens_max"] <= 40


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_batches_are_right_padded(encoder_for, family):
    encoder = encoder_for(family)
    samples = [SAMPLES["one image, one reply"], SAMPLES["text only"], SAMPLES["multi-turn with system"]]
    lengths = [encoder.encode(s).length for s in samples]
    batch = TrainingCollator(encoder)(samples)
    assert tuple(batch["input_ids"].shape) == (3, max(lengths))
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    for row, length in enumerate(lengths):
        assert batch["attention_mask"][row, :length].all()  # padding on the right
        assert (batch["labels"][row, length:] == IGNORE_INDEX).all()
    assert tuple(batch["pixel_values"].shape) == (2, 3, 32, 32)  # the text-only sample adds none
