"""Image-caption pairs (CSV, JSONL, folders, model-written captions), held-out scores, the contrastive loss,
the pair options, and model fingerprints."""

from __future__ import annotations

import json
import shutil

import pytest

from agent.core.errors import ConfigError, DatasetError
from agent.core.model_manager import model_fingerprint
from finetune.metrics import bleu, chance_recall_at_1, exact_match, recall_at_k
from finetune.pair_config import PairTrainConfig
from finetune.pairs import read_pairs, split_pairs


@pytest.fixture
def photos(tmp_path):
    from PIL import Image

    folder = tmp_path / "photos"
    folder.mkdir()
    for name, colour in (("a.png", "red"), ("b.png", "blue"), ("c.jpg", "green")):
        Image.new("RGB", (16, 16), colour).save(folder / name)
    return folder


def test_csv_with_any_known_column_names(photos):
    (photos / "pairs.csv").write_text("File,Text\na.png,a red square\nb.png,  a blue   square \n")
    report = read_pairs(photos / "pairs.csv")
    assert [(p.image.name, p.caption, p.location) for p in report.pairs] == [
        ("a.png", "a red square", "line 2"), ("b.png", "a blue square", "line 3")]


def test_jsonl_and_json_lists(photos, tmp_path):
    rows = [{"image": "photos/a.png", "caption": "red"}, {"path": "photos/c.jpg", "description": "green"}]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "pairs.json").write_text(json.dumps(rows))
    for name in ("pairs.jsonl", "pairs.json"):
        assert [p.caption for p in read_pairs(tmp_path / name).pairs] == ["red", "green"]


def test_a_folder_uses_its_captions_file_or_asks_the_captioner(photos):
    with pytest.raises(DatasetError, match="has no caption.*--caption-missing"):
        read_pairs(photos)
    seen = []

    def captioner(images):
        seen.append(len(images))
        return [f"picture {n}" for n in range(len(images))]

    report = read_pairs(photos, captioner=captioner)
    assert len(report.pairs) == 3 and report.captioned == 3 and seen == [3]
    (photos / "captions.jsonl").write_text(json.dumps({"image": "b.png", "caption": "blue"}) + "\n")
    assert [p.caption for p in read_pairs(photos).pairs] == ["blue"]


def test_every_bad_row_is_reported_with_its_line(photos):
    (photos / "bad.csv").write_text(
        "image,caption\na.png,ok\nmissing.png,x\nb.png,\n,no image\n" + f"c.jpg,{'w' * 1200}\n"
    )
    with pytest.raises(DatasetError) as error:
        read_pairs(photos / "bad.csv")
    message = str(error.value)
    assert message.startswith("4 bad row(s)")
    for expected in ("line 3: image 'missing.png' does not exist", "line 4: image 'b.png' has no caption",
                     "line 5: has no image path", "line 6: the caption has 1200 characters"):
        assert expected in message
    assert len(read_pairs(photos / "bad.csv", skip_invalid=True).pairs) == 1


def test_an_unclosed_quote_in_a_csv_is_a_bad_row_not_a_caption_that_swallows_the_rest(photos):
    (photos / "quotes.csv").write_text(
        'image,caption\na.png,"a red, round square"\nb.png,"unclosed\nc.jpg,a green square\n'
    )
    with pytest.raises(DatasetError) as error:
        read_pairs(photos / "quotes.csv")
    assert "line 3: has a quoted field that runs from line 3 to line 4 (an unclosed quote?)" in str(error.value)
    kept = read_pairs(photos / "quotes.csv", skip_invalid=True)
    assert [(p.caption, p.location) for p in kept.pairs] == [("a red, round square", "line 2")]


@pytest.mark.parametrize(
    ("content", "message"),
    [("picture,words\na.png,x\n", "needs an image column"), ("[1, 2", "not valid JSON")],
)
def test_unreadable_files(photos, content, message):
    path = photos / ("p.csv" if "," in content.split("\n")[0] and "[" not in content else "p.json")
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        read_pairs(path)


def test_split_is_seeded_and_keeps_both_sides(photos):
    (photos / "p.csv").write_text("image,caption\n" + "".join(f"a.png,c{n}\n" for n in range(10)))
    pairs = read_pairs(photos / "p.csv").pairs
    train, held = split_pairs(pairs, 0.2, seed=3)
    assert len(held) == 2 and len(train) == 8 and split_pairs(pairs, 0.2, seed=3)[1] == held
    with pytest.raises(DatasetError, match="too few"):
        split_pairs(pairs[:1], 0.5, seed=0)


def test_recall_counts_any_image_with_the_query_caption():
    captions = ["red", "red", "blue", "green"]
    similarity = [[0.9, 0.1, 0.0, 0.0],   # red -> image 0 (red): hit
                  [0.1, 0.2, 0.9, 0.0],   # red -> image 2 (blue) first, a red second
                  [0.0, 0.0, 0.1, 0.9],   # blue -> green first, blue second
                  [0.0, 0.0, 0.0, 0.9]]   # green -> green
    assert recall_at_k(similarity, captions, captions, ks=(1, 2)) == {"recall@1": 0.5, "recall@2": 1.0}
    assert chance_recall_at_1(captions) == pytest.approx((2 + 2 + 1 + 1) / 16)


def test_caption_scores():
    assert exact_match(["A red circle.", "a blue square"], ["a red circle", "a green square"]) == 0.5
    assert bleu(["a red circle"], ["a red circle"]) == pytest.approx(1.0)
    assert 0 < bleu(["a red square"], ["a red circle"]) < 1 and bleu([""], ["a red circle"]) == 0.0
    assert bleu(["a red"], ["a red circle"]) < bleu(["a red circle"], ["a red circle"])  # brevity penalty


def test_info_nce_treats_equal_captions_as_matches():
    import torch

    from finetune.clip import symmetric_info_nce

    images = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    swapped = images[[1, 0, 2]]  # the two "red" texts exchanged
    scale, captions = torch.tensor(2.0), ["red", "red", "blue"]
    aware = symmetric_info_nce(images, images.clone(), scale, captions)
    assert symmetric_info_nce(images, swapped, scale, captions) == pytest.approx(float(aware), rel=1e-5)
    assert symmetric_info_nce(images, swapped, scale) > symmetric_info_nce(images, images.clone(), scale)


@pytest.mark.parametrize(
    ("options", "message"),
    [({"method": "full"}, "method"), ({"batch_size": 1}, "at least 2"), ({"eval_split": 1.0}, "eval_split"),
     ({"recall_k": [0]}, "recall_k"), ({"pairs": ""}, "`pairs` is required")],
)
def test_pair_options_are_checked(options, message):
    with pytest.raises(ConfigError, match=message):
        PairTrainConfig(**{"pairs": "p.csv", "output": "out", **options})


def test_fingerprint_follows_the_weights_not_the_folder(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\x00" * 1000)
    first = model_fingerprint(str(folder))
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    assert model_fingerprint(str(copy)) == first
    (folder / "model.safetensors").write_bytes(b"\x01" + b"\x00" * 999)
    assert model_fingerprint(str(folder)) != first
    assert model_fingerprint("org/some-model") == "org/some-model"
