"""Caption fine-tuning proven through caption_image: a tiny random BLIP learns a synthetic caption task
(the colour of a square) from 0% to >= 90% exact match with `llava-agent finetune caption`."""

from __future__ import annotations

import json

import pytest

from agent.cli.main import main
from agent.core.config import load_config
from finetune.metrics import normalise_caption
from tests.shape_pairs import write_shape_pairs
from tests.tool_models import build_blip
from tools.caption import CaptionImageTool

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def squares(tmp_path_factory):
    root = tmp_path_factory.mktemp("caption-squares")
    train = write_shape_pairs(root, 96, seed=0, name="train", shapes=("square",))
    test = write_shape_pairs(root, 24, seed=1, name="test", fmt="jsonl", shapes=("square",))
    held_out = [json.loads(line) for line in test.read_text().splitlines()]
    return {"root": root, "train": train, "test": test, "held_out": held_out,
            "blip": build_blip(root / "blip-random", initializer_range=0.2)}


def exact_match_through_the_tool(tool, squares) -> float:
    right = 0
    for row in squares["held_out"]:
        message = tool.invoke({"type": "tool_call", "id": "1", "name": "caption_image",
                               "args": {"image": str(squares["root"] / row["image"])}})
        assert message.status == "success", message.content
        right += normalise_caption(message.artifact["caption"]) == row["caption"]
    return right / len(squares["held_out"])


def test_finetuned_blip_captions_held_out_images_through_caption_image(squares, tmp_path, capsys):
    allowed = [squares["root"]]
    before = exact_match_through_the_tool(
        CaptionImageTool(model=str(squares["blip"]), device="cpu", allowed_dirs=allowed, short_max_new_tokens=10), squares
    )
    assert before <= 0.3

    output = tmp_path / "caption-adapter"
    assert main(["finetune", "caption", "--pairs", str(squares["train"]), "--eval-pairs", str(squares["test"]),
                 "--model", str(squares["blip"]), "--output", str(output), "--max-steps", "80", "--batch-size", "16",
                 "--learning-rate", "0.003", "--max-new-tokens", "10", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"caption adapter saved to {output} (80 steps); held-out exact_match 0.000 -> " in printed
    assert f'tools.caption_adapter = "{output}"' in printed
    for name in ("adapter_config.json", "adapter_model.safetensors", "finetune_metrics.json", "loss_curve.png",
                 "finetune_config.json", "merged/config.json", "merged/model.safetensors"):
        assert (output / name).is_file(), name
    metrics = json.loads((output / "finetune_metrics.json").read_text())
    assert metrics["after"]["exact_match"] >= 0.9 and metrics["after"]["bleu"] > metrics["before"]["bleu"]

    # the caption tool loads the adapter from the config, or the merged model as its model
    config = load_config({"data_dir": str(tmp_path / "data"), "tools": {
        "caption_model": str(squares["blip"]), "caption_adapter": str(output), "allowed_dirs": [str(squares["root"])],
        "device": "cpu"}}, environ={})
    adapted = CaptionImageTool.from_config(config)
    adapted.short_max_new_tokens = 10
    assert exact_match_through_the_tool(adapted, squares) >= 0.9
    merged = CaptionImageTool(model=str(output / "merged"), device="cpu", allowed_dirs=allowed, short_max_new_tokens=10)
    assert exact_match_through_the_tool(merged, squares) >= 0.9


def test_a_folder_that_is_not_an_adapter_is_refused(squares, tmp_path):
    tool = CaptionImageTool(model=str(squares["blip"]), adapter=str(tmp_path), device="cpu",
                            allowed_dirs=[squares["root"]])
    message = tool.invoke({"type": "tool_call", "id": "1", "name": "caption_image",
                           "args": {"image": str(squares["root"] / squares["held_out"][0]["image"])}})
    assert message.status == "error" and "is not an adapter folder (no adapter_config.json)" in message.content
