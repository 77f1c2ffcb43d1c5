"""Proof that training teaches the model: a visual question answered at chance before, >= 90% after.

Accuracy is measured through ``ChatLlava(adapter=...)``, the path users take, on held-out images.
The same adapter then checks merging (same outputs as base + adapter) and the eval command.
"""

from __future__ import annotations

import base64
import io
import json

import pytest
from langchain_core.messages import HumanMessage
from PIL import Image

from agent.core.errors import QuantizationError
from agent.llava.chat_model import ChatLlava

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.integration, pytest.mark.slow]


QUESTION = "What colour is the shape?"


def _held_out(colour_shapes) -> list[tuple[str, str]]:
    rows = json.loads(colour_shapes["test"].read_text())
    pairs = []
    for row in rows:
        with Image.open(colour_shapes["image_folder"] / row["image"]) as image:
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
        pairs.append((base64.b64encode(buffer.getvalue()).decode("ascii"), row["conversations"][1]["value"]))
    return pairs


def _accuracy(chat: ChatLlava, held_out: list[tuple[str, str]]) -> float:
    correct = 0
    for image_b64, answer in held_out:
        message = HumanMessage(
            content=[
                # A data URL: agent.core.images reads 256-4095-character bare base64 strings as a path first.
                {"type": "image", "url": f"data:image/png;base64,{image_b64}", "mime_type": "image/png"},
                {"type": "text", "text": QUESTION},
            ]
        )
        reply = chat.invoke([message])
        correct += str(reply.content).strip() == answer
    return correct / len(held_out)


@pytest.fixture(scope="module")
def trained(tiny_llava_qwen2, colour_shapes, tmp_path_factory):
    from finetune import train

    output_dir = tmp_path_factory.mktemp("learning") / "colours-adapter"
    result = train(
        model=str(tiny_llava_qwen2),
        data=str(colour_shapes["train"]),
        image_folder=str(colour_shapes["image_folder"]),
        output_dir=str(output_dir),
        max_steps=250,
        batch_size=8,
        learning_rate=2e-3,
        warmup_ratio=0.0,
        lora_dropout=0.0,
        train_projector=True,
        save_steps=1000,
        logging_steps=25,
        seed=0,
    )
    return result


def test_adapter_lifts_held_out_accuracy_from_chance_to_90_percent(trained, tiny_llava_qwen2, colour_shapes):
    held_out = _held_out(colour_shapes)
    common = {"model": str(tiny_llava_qwen2), "quantization": "none", "temperature": 0.0, "max_new_tokens": 8, "device": "cpu"}
    before = _accuracy(ChatLlava(**common), held_out)
    after = _accuracy(ChatLlava(**common, adapter=str(trained.adapter_dir)), held_out)
    assert before <= 0.5, f"the random base model should be near chance, got {before:.0%}"
    assert after >= 0.9, f"held-out exact match after training is {after:.0%}"
    assert trained.global_step == 250


def test_adapter_folder_holds_everything(trained):
    folder = trained.adapter_dir
    names = {p.name for p in folder.iterdir()}
    assert {
        "adapter_model.safetensors",
        "adapter_config.json",
        "training_config.json",
        "data_summary.json",
        "loss_curve.png",
    } <= names
    summary = json.loads((folder / "data_summary.json").read_text())
    assert summary["samples_valid"] == 256 and summary["images"] == 256 and summary["global_step"] == 250
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    assert any("multi_modal_projector" in name for name in adapter_config["modules_to_save"])
    assert "language_model" in adapter_config["target_modules"]
    history = json.loads((folder / "log_history.json").read_text())
    losses = [entry["loss"] for entry in history if "loss" in entry]
    assert losses[-1] < losses[0] / 10
    with Image.open(folder / "loss_curve.png") as image:
        assert image.format == "PNG"
    assert not list(folder.parent.glob(f".{folder.name}.tmp-*"))  # no staging folder left


def test_only_language_model_linears_are_adapted(trained, tiny_llava_qwen2):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from agent.core.runtime import quiet_library_notices

    with quiet_library_notices():
        model = PeftModel.from_pretrained(
            AutoModelForImageTextToText.from_pretrained(tiny_llava_qwen2), str(trained.adapter_dir)
        )
    adapted = {name.rsplit(".lora_A", 1)[0] for name, _ in model.named_parameters() if ".lora_A" in name}
    assert adapted, "no LoRA layers"
    assert all(".language_model." in name for name in adapted)
    assert not any("vision_tower" in name or "lm_head" in name for name in adapted)
    leaves = {name.rsplit(".", 1)[-1] for name in adapted}
    assert leaves == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_merged_model_gives_the_same_outputs_as_base_plus_adapter(trained, tiny_llava_qwen2, colour_shapes, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    from finetune import merge
    from finetune.collator import ConversationEncoder, TrainingCollator
    from finetune.validate import validate

    merged_dir = merge(trained.adapter_dir, tmp_path / "merged")
    assert (merged_dir / "model.safetensors").is_file() and (merged_dir / "processor_config.json").is_file()

    processor = AutoProcessor.from_pretrained(tiny_llava_qwen2)
    encoder = ConversationEncoder(processor, model_config=AutoConfig.from_pretrained(tiny_llava_qwen2))
    samples = validate(colour_shapes["test"], image_folder=colour_shapes["image_folder"]).samples[:8]
    encoder.image_folder = colour_shapes["image_folder"]
    batch = TrainingCollator(encoder)(samples)
    from agent.core.runtime import quiet_library_notices

    with torch.no_grad(), quiet_library_notices():
        adapted = PeftModel.from_pretrained(
            AutoModelForImageTextToText.from_pretrained(tiny_llava_qwen2), str(trained.adapter_dir)
        ).eval()
        expected = adapted(**batch).logits
        merged = AutoModelForImageTextToText.from_pretrained(merged_dir).eval()
        actual = merged(**batch).logits
    assert actual.shape == expected.shape
    torch.testing.assert_close(actual, expected, atol=1e-4, rtol=1e-4)

    held_out = _held_out(colour_shapes)[:20]
    chat = ChatLlava(model=str(merged_dir), quantization="none", temperature=0.0, max_new_tokens=8, device="cpu")
    assert _accuracy(chat, held_out) >= 0.9


def test_merging_into_a_4bit_checkpoint_is_refused_with_the_way_out(trained, tiny_llava_qwen2, tmp_path):
    import shutil

    from finetune import merge

    quantized = tmp_path / "quantized-base"
    shutil.copytree(tiny_llava_qwen2, quantized)
    config = json.loads((quantized / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    (quantized / "config.json").write_text(json.dumps(config))
    with pytest.raises(QuantizationError, match="Pass --base with the full-precision checkpoint"):
        merge(trained.adapter_dir, tmp_path / "merged", base=str(quantized))
    assert not (tmp_path / "merged").exists()


def test_eval_command_reports_loss_and_exact_match(trained, tiny_llava_qwen2, colour_shapes, capsys):
    from finetune.cli import main

    code = main(
        [
            "eval",
            str(colour_shapes["test"]),
            "--model",
            str(tiny_llava_qwen2),
            "--adapter",
            str(trained.adapter_dir),
            "--image-folder",
            str(colour_shapes["image_folder"]),
            "--max-new-tokens",
            "8",
            "--device",
            "cpu",
            "--json",
        ]
    )
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert result["samples"] == 40 and result["accuracy"] >= 0.9
    assert 0.0 <= result["loss"] < 0.5
    assert len(result["predictions"]) == 40 and set(result["predictions"][0]) == {"location", "reference", "answer", "match"}
