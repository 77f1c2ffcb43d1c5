"""Shared-prefix training: the same loss as whole samples, computed from one encoding of the common start."""

from __future__ import annotations

import json

import pytest
import torch

from agent.app.routing_eval import agent_tools
from agent.app.tool_data import synthesize_tool_data
from agent.core.config import load_config
from finetune.collator import ConversationEncoder, TrainingCollator
from finetune.formats import iter_samples, read_records
from finetune.shared_prefix import MIN_SHARED_TOKENS, shared_prefix_length, split_batch

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def speak_data(tmp_path_factory):
    config = load_config({"data_dir": str(tmp_path_factory.mktemp("d")), "tools": {"enabled": ["speak"]},
                          "agent": {"long_term_memory": False}})
    return synthesize_tool_data(agent_tools(config), tmp_path_factory.mktemp("speak-data"), count=24, seed=1)


def _batch(model_path, data, rows):
    from transformers import AutoConfig, AutoProcessor

    processor = AutoProcessor.from_pretrained(model_path)
    encoder = ConversationEncoder(processor, model_config=AutoConfig.from_pretrained(model_path),
                                  image_folder=data.image_folder)
    records, _ = read_records(data.path)
    samples = [sample for _, sample in iter_samples(records, "messages")]
    return TrainingCollator(encoder)([samples[i] for i in rows]), encoder


def test_prefix_length_stops_before_differences_labels_and_images():
    ids = torch.tensor([[1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 9, 9]])
    assert shared_prefix_length(ids, None) == 3
    labels = torch.full_like(ids, -100)
    labels[1, 2] = 3
    assert shared_prefix_length(ids, labels) == 1
    assert shared_prefix_length(ids, None, image_token_id=2) == 1
    assert shared_prefix_length(ids[:1], None) == 5  # one row: all but the last token


def test_split_batch_gives_the_same_loss(tiny_llava_qwen2, speak_data):
    from transformers import AutoModelForImageTextToText

    rows = [i for i, row in enumerate(speak_data.rows) if not row["images"]][:4]
    rows.append(next(i for i, row in enumerate(speak_data.rows) if row["images"]))  # an image in the suffix
    batch, encoder = _batch(tiny_llava_qwen2, speak_data, rows)
    model = AutoModelForImageTextToText.from_pretrained(tiny_llava_qwen2, dtype=torch.float32).eval()
    with torch.no_grad():
        whole = model(**batch).loss
        split = split_batch(model, batch, encoder.image_token_id)
        assert split is not None
        assert batch["input_ids"].shape[1] - split["input_ids"].shape[1] >= MIN_SHARED_TOKENS
        assert torch.allclose(model(**split).loss, whole, atol=1e-5)


def test_training_with_shared_prefix_learns(tiny_llava_qwen2, speak_data, tmp_path):
    import finetune

    result = finetune.train(model=str(tiny_llava_qwen2), data=str(speak_data.path),
                            image_folder=str(speak_data.image_folder), output_dir=str(tmp_path / "adapter"),
                            shared_prefix=True, max_steps=6, batch_size=24, learning_rate=2e-3, lora_r=4,
                            lora_alpha=8, logging_steps=1, device="cpu", dtype="float32", max_length=4096)
    losses = [entry["loss"] for entry in json.loads((tmp_path / "adapter" / "log_history.json").read_text())
              if "loss" in entry]
    # the whole set every step: the loss falls step after step (whole samples: 7.508 -> 7.357, measured)
    assert result.global_step == 6 and losses[-1] < losses[0] - 0.05
    assert all(later <= earlier + 1e-3 for earlier, later in zip(losses[1:], losses[2:], strict=False))
    saved = json.loads((tmp_path / "adapter" / "training_config.json").read_text())
    assert saved["shared_prefix"] is True
