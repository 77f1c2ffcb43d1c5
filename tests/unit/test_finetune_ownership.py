"""--overwrite replaces only this project's adapter or model folders, never what the run reads; checkpoint rotation is safe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.cli.main import main
from agent.core.errors import ConfigError
from finetune.checkpoints import COMPLETE_MARKER, finish_checkpoint, rotate
from finetune.ownership import (
    MARKER_NAME,
    check_checkpoints_deletable,
    check_not_an_input,
    check_replaceable,
    write_marker,
)


@pytest.fixture
def documents(tmp_path) -> Path:
    folder = tmp_path / "Documents"
    (folder / "taxes").mkdir(parents=True)
    (folder / "thesis.odt").write_text("four years of work")
    (folder / "taxes" / "2024.pdf").write_text("receipts")
    return folder


def test_a_folder_of_someone_elses_files_is_never_replaced(documents, tmp_path):
    with pytest.raises(ConfigError, match=f"no {MARKER_NAME}.*will not replace it") as info:
        check_replaceable(documents)
    assert "thesis.odt" in str(info.value)
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty")
    check_replaceable(tmp_path / "missing")
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    write_marker(adapter, "adapter")
    (adapter / "adapter_model.safetensors").write_bytes(b"x")
    check_replaceable(adapter)
    legacy = tmp_path / "legacy"  # written before the marker existed
    legacy.mkdir()
    (legacy / "adapter_config.json").write_text("{}")
    (legacy / "training_config.json").write_text("{}")
    check_replaceable(legacy)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError, match="a file, not a folder"):
        check_replaceable(tmp_path / "a-file")


def test_finetune_train_overwrite_refuses_documents_and_touches_nothing(documents, tmp_path, capsys):
    before = sorted(p.relative_to(documents) for p in documents.rglob("*"))
    checkpoints = documents.with_name("Documents-checkpoints")
    checkpoints.mkdir()
    (checkpoints / "notes.txt").write_text("mine")
    data = tmp_path / "data.json"
    data.write_text("[]")
    code = main(["finetune", "train", "--model", "/no/model", "--data", str(data), "--output-dir", str(documents),
                 "--overwrite"])
    assert code == 1 and "will not replace it" in capsys.readouterr().err
    assert sorted(p.relative_to(documents) for p in documents.rglob("*")) == before
    (documents / "thesis.odt").unlink()
    (documents / "taxes" / "2024.pdf").unlink()
    (documents / "taxes").rmdir()
    code = main(["finetune", "train", "--model", "/no/model", "--data", str(data), "--output-dir", str(documents),
                 "--overwrite"])
    assert code == 1 and "holds files that are not training checkpoints (notes.txt)" in capsys.readouterr().err
    assert (checkpoints / "notes.txt").read_text() == "mine"


def test_finetune_merge_overwrite_refuses_a_foreign_folder(documents, tmp_path, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/no/base"}))
    assert main(["finetune", "merge", "--adapter", str(adapter), "--output-dir", str(documents), "--overwrite"]) == 1
    assert "will not replace it" in capsys.readouterr().err and (documents / "thesis.odt").exists()


def test_an_output_folder_that_is_or_holds_an_input_is_refused(tmp_path):
    base = tmp_path / "models" / "base"
    base.mkdir(parents=True)
    data = tmp_path / "data.jsonl"
    data.write_text("{}")
    inputs = {"base model": str(base), "training data": str(data), "image folder": None, "adapter": "org/hub-id"}
    with pytest.raises(ConfigError, match=r"--output-dir .*base is the base model this run reads .*would replace it"):
        check_not_an_input(base, inputs)
    with pytest.raises(ConfigError, match=r"holds the base model this run reads"):
        check_not_an_input(tmp_path / "models", inputs)
    with pytest.raises(ConfigError, match=r"is the base model"):
        check_not_an_input(tmp_path / "models" / ".." / "models" / "base", inputs)  # the same folder spelt otherwise
    check_not_an_input(tmp_path / "models" / "adapter", inputs)  # a sibling
    check_not_an_input(base / "adapter", inputs)  # inside an input: nothing of it is replaced
    check_not_an_input(tmp_path / "org" / "hub-id", inputs)  # a hub id is no local folder


def test_finetune_merge_into_its_own_adapter_folder_is_refused_and_keeps_the_adapter(tmp_path, capsys):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    write_marker(adapter, "adapter")
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": "/no/base"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"weights")
    for output in (adapter, tmp_path):
        assert main(["finetune", "merge", "--adapter", str(adapter), "--output-dir", str(output), "--overwrite"]) == 1
        assert "the adapter this run reads" in capsys.readouterr().err
    assert (adapter / "adapter_model.safetensors").read_bytes() == b"weights"


def test_finetune_train_into_its_base_model_folder_is_refused(tmp_path, capsys):
    base = tmp_path / "merged"
    base.mkdir()
    write_marker(base, "merged_model")  # a merged model this project wrote: replaceable, but not while it is read
    (base / "config.json").write_text("{}")
    data = tmp_path / "data.json"
    data.write_text("[]")
    assert main(["finetune", "train", "--model", str(base), "--data", str(data), "--output-dir", str(base),
                 "--overwrite"]) == 1
    assert "is the base model this run reads" in capsys.readouterr().err
    assert sorted(p.name for p in base.iterdir()) == sorted(["config.json", MARKER_NAME])
    assert not base.with_name("merged-checkpoints").exists()


def test_clip_and_caption_training_replace_only_their_own_model_folders(documents, tmp_path):
    from finetune.clip import check_output
    from finetune.pair_config import PairTrainConfig

    pairs = tmp_path / "photos"
    pairs.mkdir()
    (pairs / "captions.csv").write_text("image,caption\n")
    for output, match in ((documents, "will not replace it"), (pairs, "is the pairs this run reads"),
                          (tmp_path, "holds the pairs this run reads")):
        with pytest.raises(ConfigError, match=match):
            check_output(PairTrainConfig(pairs=str(pairs), output=str(output), model="org/clip", overwrite=True))
    assert (documents / "thesis.odt").read_text() == "four years of work"
    tuned = tmp_path / "clip-tuned"
    tuned.mkdir()
    (tuned / "finetune_config.json").write_text("{}")
    (tuned / "finetune_metrics.json").write_text("{}")  # written before the marker existed
    assert check_output(PairTrainConfig(pairs=str(pairs), output=str(tuned), model="org/clip", overwrite=True)) == tuned
    with pytest.raises(ConfigError, match="already exists; pass --overwrite"):
        check_output(PairTrainConfig(pairs=str(pairs), output=str(tuned), model="org/clip"))


def test_checkpoint_folders_of_other_content_are_not_deleted(tmp_path):
    folder = tmp_path / "run-checkpoints"
    (folder / "checkpoint-5").mkdir(parents=True)
    check_checkpoints_deletable(folder)
    (folder / "photo.jpg").write_bytes(b"x")
    with pytest.raises(ConfigError, match="photo.jpg"):
        check_checkpoints_deletable(folder)
    write_marker(folder, "checkpoints")
    check_checkpoints_deletable(folder)


def test_rotation_never_deletes_the_newest_complete_checkpoint(tmp_path):
    folder = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        (folder / f"checkpoint-{step}").mkdir(parents=True)
        (folder / f"checkpoint-{step}" / "adapter_model.safetensors").write_bytes(b"w")
    (folder / "checkpoint-1" / COMPLETE_MARKER).write_text("{}")
    assert rotate(folder, keep=1) == [], "checkpoint-2 and 3 are not complete: checkpoint-1 stays"
    finish_checkpoint(folder, 3, keep=1)
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint-3"]
    assert json.loads((folder / "checkpoint-3" / COMPLETE_MARKER).read_text()) == {"global_step": 3}
