"""Fine-tuning data cannot reach outside --image-folder, decode huge images, or cost more than linear time."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from agent.core.errors import DatasetError
from finetune.collator import ConversationEncoder, SampleTooLongError, load_pictures, resolve_image_path
from finetune.formats import Sample, SampleError
from finetune.validate import validate
from tests.unit.test_paths import png_claiming_size

pytestmark = pytest.mark.integration


@pytest.fixture
def folders(tmp_path) -> dict[str, Path]:
    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    Image.new("RGB", (8, 8), (255, 0, 0)).save(images / "sub" / "red.png")
    secret = tmp_path / "private.png"
    Image.new("RGB", (8, 8), (0, 0, 0)).save(secret)
    (images / "link.png").symlink_to(secret)
    return {"images": images, "secret": secret}


@pytest.mark.parametrize("name", ["../private.png", "sub/../../private.png", "ABSOLUTE", "link.png", "/etc/passwd"])
def test_image_paths_outside_the_image_folder_are_refused(folders, name):
    image = str(folders["secret"]) if name == "ABSOLUTE" else name
    with pytest.raises(SampleError, match="outside the image folder"):
        resolve_image_path(image, folders["images"])


def test_paths_inside_the_folder_are_accepted(folders):
    inside = folders["images"] / "sub" / "red.png"
    assert resolve_image_path("sub/red.png", folders["images"]) == inside.resolve()
    assert resolve_image_path("sub/../sub/red.png", folders["images"]) == inside.resolve()
    assert resolve_image_path(str(inside), folders["images"]) == inside.resolve()


def _llava_rows(images: list[str]) -> list[dict]:
    return [{"image": image, "conversations": [{"from": "human", "value": "<image>\nColour?"},
                                               {"from": "gpt", "value": "red"}]} for image in images]


def test_validation_reports_escapes_and_oversized_images(folders, tmp_path):
    png_claiming_size(folders["images"] / "bomb.png", 40_000, 40_000)
    data = tmp_path / "data.json"
    data.write_text(json.dumps(_llava_rows(["sub/red.png", "../private.png", "link.png", "bomb.png"])))
    report = validate(data, image_folder=folders["images"], skip_invalid=True, max_image_pixels=1_000_000)
    problems = {p.location: p.reason for p in report.problems}
    assert len(report.samples) == 1
    assert "outside the image folder" in problems["sample 1"] and "outside the image folder" in problems["sample 2"]
    assert "over the limit of 1000000" in problems["sample 3"]
    bomb = Sample(0, "sample 3", [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "x"}],
                  ["bomb.png"])
    with pytest.raises(DatasetError, match="over the limit|too large"):
        load_pictures(bomb, folders["images"], max_pixels=1_000_000)


def test_an_over_long_sample_is_refused_after_one_render(tiny_llava_qwen2, monkeypatch):
    """The length check comes before the per-turn work: refusing a long sample costs linear time."""
    from transformers import AutoConfig, AutoProcessor

    import finetune.collator

    encoder = ConversationEncoder(AutoProcessor.from_pretrained(tiny_llava_qwen2),
                                  model_config=AutoConfig.from_pretrained(tiny_llava_qwen2), max_length=256)
    renders = []
    original = ConversationEncoder.render
    monkeypatch.setattr(finetune.collator.ConversationEncoder, "render",
                        lambda self, *a, **k: renders.append(1) or original(self, *a, **k))
    for turns in (64, 128, 256):
        pairs = [[{"role": "user", "content": f"question {i}"}, {"role": "assistant", "content": f"answer {i}"}]
                 for i in range(turns)]
        sample = Sample(0, "sample 0", [turn for pair in pairs for turn in pair])
        renders.clear()
        with pytest.raises(SampleTooLongError, match="longer than max_length 256"):
            encoder.encode(sample)
        assert len(renders) == 1, f"{turns} turns took {len(renders)} renders"
