"""CLIP fine-tuning for the image search, proven through search_images: random-init tiny CLIP retrieves the
coloured shapes at chance; `llava-agent finetune clip` then `llava-agent index --reindex` reach recall@1 >= 0.9."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.core.config import load_config
from finetune.ownership import marked_kind
from memory.image_index import ImageIndex
from tests.shape_pairs import write_shape_pairs
from tests.tool_models import build_clip
from tools.search import SearchImagesTool

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("clip-shapes")
    train = write_shape_pairs(root, 144, seed=0, name="train")  # CSV
    test = write_shape_pairs(root, 24, seed=1, name="test", fmt="jsonl")  # 2 held-out images per caption
    captions = {str((root / row["image"]).resolve()): row["caption"]
                for row in map(json.loads, test.read_text().splitlines())}
    return {"root": root, "train": train, "test": test, "captions": captions,
            "clip": build_clip(root / "clip-random", initializer_range=0.2)}


def write_config(path, data_dir, clip_model, root):
    path.write_text(
        f'data_dir = "{data_dir}"\n[tools]\nclip_model = "{clip_model}"\nallowed_dirs = ["{root}", "{data_dir}"]\n'
        'enabled = ["search_images"]\n[agent]\nlong_term_memory = false\n'
    )
    return path


def recall_at_1(tool, captions) -> float:
    hits = 0
    for caption in captions.values():
        message = tool.invoke({"type": "tool_call", "id": "1", "name": "search_images", "args": {"query": caption, "k": 1}})
        assert message.status == "success", message.content
        top = message.artifact["results"][0]["path"]
        hits += captions[str(Path(top).resolve())] == caption
    return hits / len(captions)


def test_finetuned_clip_retrieves_held_out_pairs_through_search_images(shapes, tmp_path, capsys, monkeypatch):
    root, data_dir = shapes["root"], tmp_path / "data"
    base_config = write_config(tmp_path / "base.toml", data_dir, shapes["clip"], root)
    assert main(["--config", str(base_config), "index", str(root / "test")]) == 0
    before = recall_at_1(SearchImagesTool.from_config(load_config(base_config)), shapes["captions"])
    assert before <= 0.4  # chance is 1/12

    output = tmp_path / "clip-shapes"
    assert main(["--config", str(base_config), "finetune", "clip", "--pairs", str(shapes["train"]),
                 "--eval-pairs", str(shapes["test"]), "--model", str(shapes["clip"]), "--output", str(output),
                 "--max-steps", "300", "--batch-size", "32", "--learning-rate", "0.003", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert f"CLIP saved to {output} (lora, 300 steps); held-out recall@1 " in printed and "--reindex" in printed
    for name in ("config.json", "model.safetensors", "finetune_config.json",
                 "finetune_metrics.json", "loss_curve.png", "log_history.json"):
        assert (output / name).is_file(), name
    assert marked_kind(output) == "fine_tuned_model"  # so --overwrite may replace it, and nothing else
    metrics = json.loads((output / "finetune_metrics.json").read_text())
    assert metrics["before"]["recall@1"] <= 0.4 and metrics["after"]["recall@1"] >= 0.9
    assert not list(tmp_path.glob(".clip-shapes.tmp-*"))  # the staging folder was moved into place

    tuned_config = write_config(tmp_path / "tuned.toml", data_dir, output, root)
    tuned = SearchImagesTool.from_config(load_config(tuned_config))
    refused = tuned.invoke({"type": "tool_call", "id": "1", "name": "search_images", "args": {"query": "a red circle"}})
    assert refused.status == "error" and "llava-agent index --reindex" in refused.content

    # an interrupted rebuild resumes from what it wrote
    calls = []

    def interrupted_swap(self, *args):
        calls.append(args)
        raise KeyboardInterrupt

    monkeypatch.setattr(ImageIndex, "_swap", interrupted_swap)
    assert main(["--config", str(tuned_config), "index", "--reindex"]) == 130
    monkeypatch.undo()
    resumed = ImageIndex.from_config(load_config(tuned_config)).reindex(progress=False)
    assert (resumed.added, resumed.unchanged) == (0, 24)

    after = recall_at_1(SearchImagesTool.from_config(load_config(tuned_config)), shapes["captions"])
    assert after >= 0.9
    # and the index, rebuilt, refuses the old model now
    old = SearchImagesTool.from_config(load_config(base_config))
    message = old.invoke({"type": "tool_call", "id": "1", "name": "search_images", "args": {"query": "a red circle"}})
    assert message.status == "error" and "was built with CLIP model" in message.content


def test_bad_pairs_are_listed_before_any_training(shapes, tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption"])
        writer.writerow([str(shapes["root"] / "train" / "0000.png"), "a red circle"])
        writer.writerow([str(tmp_path / "missing.png"), "a blue square"])
        writer.writerow([str(shapes["root"] / "train" / "0001.png"), ""])
    assert main(["finetune", "clip", "--pairs", str(bad), "--model", str(shapes["clip"]),
                 "--output", str(tmp_path / "out")]) == 1
    error = capsys.readouterr().err
    assert "2 bad row(s)" in error and "line 3: image" in error and "does not exist" in error
    assert "line 4: image '0001.png' has no caption" in error and "--caption-missing" in error
    assert not (tmp_path / "out").exists()
