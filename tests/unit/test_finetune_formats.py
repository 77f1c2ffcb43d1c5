"""Dataset formats and validation: each format, good and bad samples, exact messages with indices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from agent.core.errors import DatasetError
from finetune.formats import Record, Sample, detect_format, parse_record, read_records, to_chat_turns
from finetune.validate import check_structure, validate


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(folder / "red.png")
    Image.new("RGB", (8, 8), (0, 0, 255)).save(folder / "blue.png")
    (folder / "broken.png").write_bytes(b"not a png at all")
    return folder


def write_json(folder: Path, rows: list, name: str = "data.json") -> Path:
    path = folder / name
    path.write_text(json.dumps(rows))
    return path


def write_jsonl(folder: Path, rows: list, name: str = "data.jsonl") -> Path:
    path = folder / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


LLAVA_GOOD = {
    "id": "a",
    "image": "red.png",
    "conversations": [
        {"from": "human", "value": "<image>\nWhat colour is it?"},
        {"from": "gpt", "value": "red"},
    ],
}
LLAVA_TEXT_ONLY = {"id": "t", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
SHAREGPT_GOOD = {
    "conversations": [
        {"from": "human", "value": "Compare <image> and <image>"},
        {"from": "gpt", "value": "red then blue"},
    ],
    "images": ["red.png", "blue.png"],
    "system": "Be brief.",
}
MESSAGES_STRING = {
    "messages": [
        {"role": "user", "content": "<image>What colour?"},
        {"role": "assistant", "content": "red"},
    ],
    "images": ["red.png"],
}
MESSAGES_BLOCKS = {
    "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What colour?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "blue"}]},
    ],
    "images": ["blue.png"],
}


# --------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("fmt", "raw", "roles", "images", "placeholders"),
    [
        ("llava", LLAVA_GOOD, ["user", "assistant"], ["red.png"], 1),
        ("llava", LLAVA_TEXT_ONLY, ["user", "assistant"], [], 0),
        ("sharegpt", SHAREGPT_GOOD, ["system", "user", "assistant"], ["red.png", "blue.png"], 2),
        ("messages", MESSAGES_STRING, ["user", "assistant"], ["red.png"], 1),
        ("messages", MESSAGES_BLOCKS, ["system", "user", "assistant"], ["blue.png"], 1),
    ],
)
def test_each_format_parses_to_a_sample(fmt, raw, roles, images, placeholders):
    sample = parse_record(Record(3, "sample 3", raw), fmt)
    assert isinstance(sample, Sample)
    assert [t["role"] for t in sample.turns] == roles
    assert sample.images == images
    assert sample.placeholder_count == placeholders
    assert sample.location == "sample 3"
    check_structure(sample)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (LLAVA_GOOD, "llava"),
        (LLAVA_TEXT_ONLY, "llava"),
        (SHAREGPT_GOOD, "sharegpt"),
        (MESSAGES_STRING, "messages"),
    ],
)
def test_format_is_detected(raw, expected):
    assert detect_format([Record(0, "sample 0", raw)]) == expected


def test_undetectable_format_says_what_to_pass():
    with pytest.raises(DatasetError, match="pass --format with one of llava, sharegpt, messages"):
        detect_format([Record(0, "sample 0", {"text": "hi"})])


def test_llava_image_list_and_inline_image_blocks():
    raw = dict(LLAVA_GOOD, image=["red.png", "blue.png"])
    raw["conversations"] = [{"from": "human", "value": "<image> <image> same?"}, {"from": "gpt", "value": "no"}]
    assert parse_record(Record(0, "sample 0", raw), "llava").images == ["red.png", "blue.png"]
    inline = {
        "messages": [
            {"role": "user", "content": [{"type": "image", "image": "red.png"}, {"type": "text", "text": "Colour?"}]},
            {"role": "assistant", "content": "red"},
        ]
    }
    sample = parse_record(Record(0, "line 1", inline), "messages")
    assert sample.images == ["red.png"]
    assert sample.placeholder_count == 1


def test_jsonl_locations_are_line_numbers(tmp_path):
    path = write_jsonl(tmp_path, [MESSAGES_STRING, "", MESSAGES_STRING])
    records, kind = read_records(path)
    assert kind == "jsonl"
    assert [r.location for r in records] == ["line 1", "line 3"]


def test_json_locations_are_indices(tmp_path):
    records, kind = read_records(write_json(tmp_path, [LLAVA_GOOD, LLAVA_TEXT_ONLY]))
    assert kind == "json"
    assert [r.location for r in records] == ["sample 0", "sample 1"]


def test_hf_datasets_folder_with_pictures_in_rows(tmp_path):
    import datasets

    rows = {
        "messages": [MESSAGES_STRING["messages"]] * 2,
        "images": [[Image.new("RGB", (8, 8), (255, 0, 0))], [Image.new("RGB", (8, 8), (0, 255, 0))]],
    }
    features = datasets.Features(
        {
            "messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
            "images": datasets.Sequence(datasets.Image()),
        }
    )
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "hf"))
    report = validate(tmp_path / "hf")
    assert report.format == "hf"
    assert len(report.samples) == 2
    assert [p.size for p in report.samples[1].images] == [(8, 8)]
    assert report.samples[1].location == "row 1"


def test_hf_pictures_are_checked_row_by_row_and_against_the_pixel_limit(tmp_path):
    import io

    import datasets

    from finetune.collator import load_pictures

    def png(size, colour="red") -> bytes:
        buffer = io.BytesIO()
        Image.new("RGB", size, colour).save(buffer, "PNG")
        return buffer.getvalue()

    good = png((8, 8), (0, 0, 255))
    stored = [{"bytes": good, "path": None}, {"bytes": b"\x89PNG not really", "path": None},
              {"bytes": good[:60], "path": None}, {"bytes": png((300, 200)), "path": "big.png"}]
    rows = {"messages": [MESSAGES_STRING["messages"]] * 4, "images": [[picture] for picture in stored]}
    features = datasets.Features({"messages": [{"role": datasets.Value("string"), "content": datasets.Value("string")}],
                                  "images": datasets.Sequence(datasets.Image())})
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "hf"))
    with pytest.raises(DatasetError) as info:  # every bad row listed: one damaged picture spoils only its row
        validate(tmp_path / "hf", max_image_pixels=50_000)
    text = str(info.value)
    assert "1 of 4 samples are valid" in text
    assert "row 1: image 'images'[0] (15 bytes, stored in the row) cannot be read (not an image" in text
    assert "row 2: image 'images'[0] (60 bytes, stored in the row) cannot be read" in text
    assert "row 3: image big.png" in text and "is 300x200 pixels, over the limit of 50000" in text
    report = validate(tmp_path / "hf", max_image_pixels=50_000, skip_invalid=True)
    assert [s.location for s in report.samples] == ["row 0"]
    (picture,) = load_pictures(report.samples[0])
    assert picture.size == (8, 8) and picture.getpixel((3, 3)) == (0, 0, 255)


def test_to_chat_turns_puts_pictures_where_the_placeholders_were():
    sample = parse_record(Record(0, "sample 0", SHAREGPT_GOOD), "sharegpt")
    red, blue = Image.new("RGB", (4, 4), "red"), Image.new("RGB", (4, 4), "blue")
    turns = to_chat_turns(sample, [red, blue])
    user = turns[1]["content"]
    assert [b["type"] for b in user] == ["text", "image", "text", "image"]
    assert user[1]["image"] is red and user[3]["image"] is blue
    assert turns[2] == {"role": "assistant", "content": "red then blue"}


# --------------------------------------------------------------------------- validation


def _conv(*pairs):
    return [{"from": who, "value": text} for who, text in pairs]


BAD_LLAVA = [
    ({"id": 1}, "has no 'conversations' list (or it is empty)"),
    ({"conversations": []}, "has no 'conversations' list (or it is empty)"),
    (
        {"conversations": _conv(("bot", "hi"), ("gpt", "x"))},
        "turn 0 has unknown role 'bot'; use one of human, gpt, system",
    ),
    ({"conversations": [{"from": "human"}, {"from": "gpt", "value": "x"}]}, "turn 0 has no 'value' text"),
    ({"conversations": _conv(("human", "   "), ("gpt", "x"))}, "turn 0 (user) is empty"),
    (
        {"conversations": _conv(("human", "a"), ("human", "b"), ("gpt", "x"))},
        "turns do not alternate: turn 1 is 'user' where 'assistant' was expected",
    ),
    (
        {"conversations": _conv(("gpt", "a"), ("human", "b"))},
        "turns do not alternate: turn 0 is 'assistant' where 'user' was expected",
    ),
    ({"conversations": _conv(("human", "a"), ("gpt", "b"), ("human", "c"))}, "ends with a user turn that has no assistant reply"),
    (
        {"image": "red.png", "conversations": _conv(("human", "no placeholder"), ("gpt", "x"))},
        "has 0 <image> placeholder(s) but 1 image(s); put one <image> in the user text per image",
    ),
    (
        {"conversations": _conv(("human", "<image> twice <image>"), ("gpt", "x")), "image": "red.png"},
        "has 2 <image> placeholder(s) but 1 image(s); put one <image> in the user text per image",
    ),
    (
        {"conversations": _conv(("human", "<image>"), ("gpt", "x <image>")), "image": ["red.png", "blue.png"]},
        "turn 1 (assistant) holds <image>; images go in user turns",
    ),
    (
        {"conversations": _conv(("human", "a"), ("gpt", "b"), ("system", "c"), ("gpt", "d"))},
        "turn 2 is a system turn; only the first turn may be a system turn",
    ),
    ({"image": 5, "conversations": _conv(("human", "<image>"), ("gpt", "x"))}, "'image' entry 0 is 5; expected an image path"),
    ("just text", "is a JSON str, expected an object"),
]


@pytest.mark.parametrize(("row", "reason"), BAD_LLAVA)
def test_bad_llava_samples_are_reported_with_index_and_reason(tmp_path, image_folder, row, reason):
    path = write_json(tmp_path, [LLAVA_GOOD, LLAVA_TEXT_ONLY, row])
    with pytest.raises(DatasetError) as caught:
        validate(path, image_folder=image_folder, format="llava")
    message = str(caught.value)
    assert f"\n  sample 2: {reason}\n" in message
    assert "2 of 3 samples are valid, 1 invalid" in message
    assert message.endswith("Fix these samples, or pass --skip-invalid to leave them out")


@pytest.mark.parametrize(
    ("image", "reason"),
    [
        ("missing.png", "image 'missing.png' not found (looked at {folder}/missing.png)"),
        ("broken.png", "image 'broken.png' cannot be read (UnidentifiedImageError: cannot identify image file"),
    ],
)
def test_missing_and_unreadable_images(tmp_path, image_folder, image, reason):
    row = dict(LLAVA_GOOD, image=image)
    path = write_json(tmp_path, [row])
    with pytest.raises(DatasetError) as caught:
        validate(path, image_folder=image_folder)
    assert f"sample 0: {reason.format(folder=image_folder)}" in str(caught.value)


BAD_MESSAGES = [
    ('{"messages": [', "is not valid JSON (Expecting value at column 15)"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "message 0 has unknown role 'robot'; use one of system, user, assistant"),
    ({"messages": [{"role": "user"}]}, "message 0 has no 'content' (a string or a list of blocks)"),
    ({"messages": [{"role": "user", "content": 5}]},
     "message 0 has a 'content' that is a JSON int (5); give a string or a list of blocks"),
    (
        {"messages": [{"role": "user", "content": [{"type": "audio"}]}]},
        "message 0 block 0 is {'type': 'audio'}; expected {'type': 'text', 'text': ...} or {'type': 'image'}",
    ),
    ({"images": ["red.png"]}, "has no 'messages' list (or it is empty)"),
    (
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]},
        "turn 1 (assistant) is empty",
    ),
]


@pytest.mark.parametrize(("row", "reason"), BAD_MESSAGES)
def test_bad_jsonl_lines_are_reported_with_line_numbers(tmp_path, image_folder, row, reason):
    path = write_jsonl(tmp_path, [MESSAGES_STRING, MESSAGES_BLOCKS, row])
    with pytest.raises(DatasetError) as caught:
        validate(path, image_folder=image_folder, format="messages" if isinstance(row, str) else None)
    assert f"  line 3: {reason}" in str(caught.value)


def test_every_bad_sample_is_listed_and_skip_invalid_keeps_the_good_ones(tmp_path, image_folder, caplog):
    rows = [LLAVA_GOOD, {"id": 1}, LLAVA_TEXT_ONLY, dict(LLAVA_GOOD, image="missing.png"), LLAVA_GOOD]
    path = write_json(tmp_path, rows)
    with pytest.raises(DatasetError) as caught:
        validate(path, image_folder=image_folder)
    lines = str(caught.value).splitlines()
    assert lines[0] == f"{path} (llava): 3 of 5 samples are valid, 2 invalid:"
    assert lines[1] == "  sample 1: has no 'conversations' list (or it is empty)"
    assert lines[2].startswith("  sample 3: image 'missing.png' not found")
    report = validate(path, image_folder=image_folder, skip_invalid=True)
    assert [s.index for s in report.samples] == [0, 2, 4]
    assert [p.location for p in report.problems] == ["sample 1", "sample 3"]
    assert "Skipping 2 invalid sample(s)" in caplog.text
    summary = report.summary()
    assert summary["samples_valid"] == 3 and summary["samples_skipped"] == 2 and summary["images"] == 2


def test_no_valid_sample_left_is_an_error_even_when_skipping(tmp_path):
    path = write_json(tmp_path, [{"id": 1, "conversations": []}])
    with pytest.raises(DatasetError, match="no valid samples left to train on"):
        validate(path, skip_invalid=True)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("[1, 2", "is not valid JSON"),
        ('"text"', "holds a JSON str; it must hold a list of samples"),
        ("[]", "holds no samples"),
    ],
)
def test_unreadable_files(tmp_path, content, message):
    path = tmp_path / "data.json"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        validate(path)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        validate(tmp_path / "nope.json")
    path = write_json(tmp_path, [LLAVA_GOOD])
    with pytest.raises(DatasetError, match="format 'alpaca' is not supported"):
        validate(path, format="alpaca")


def test_sharegpt_and_llava_agree_on_the_same_conversation(tmp_path, image_folder):
    as_sharegpt = {"conversations": LLAVA_GOOD["conversations"], "images": ["red.png"]}
    one = validate(write_json(tmp_path, [LLAVA_GOOD], "a.json"), image_folder=image_folder).samples[0]
    two = validate(write_json(tmp_path, [as_sharegpt], "b.json"), image_folder=image_folder).samples[0]
    assert one.turns == two.turns and one.images == two.images
