"""The CLI around the pair fine-tunings and the index rebuild: options, one-line errors, --caption-missing wiring."""

from __future__ import annotations

import pytest

from agent.cli.main import build_parser, main


def test_index_needs_a_folder_or_reindex(capsys, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{tmp_path}"\n')
    assert main(["--config", str(config), "index"]) == 1
    assert "give a folder of images to index, or --reindex" in capsys.readouterr().err


def test_finetune_clip_and_caption_options():
    parser = build_parser()
    clip = parser.parse_args(["finetune", "clip", "--pairs", "p.csv", "--output", "out", "--method", "last-layers",
                              "--recall-k", "1", "10", "--no-progress"])
    assert (clip.method, clip.recall_k, clip.progress, clip.pair_task) == ("last-layers", [1, 10], False, "clip")
    assert clip.captioner_factory is not None  # the llava-agent CLI wires the captioning model
    caption = parser.parse_args(["finetune", "caption", "--pairs", "p.csv", "--output", "out", "--no-merge"])
    assert (caption.merge, caption.pair_task) == (False, "caption")
    assert not hasattr(caption, "method")
    with pytest.raises(SystemExit):
        parser.parse_args(["finetune", "clip", "--pairs", "p.csv"])  # --output is required


def test_bad_pair_options_are_one_line_errors(capsys, tmp_path):
    assert main(["finetune", "clip", "--pairs", str(tmp_path / "p.csv"), "--output", str(tmp_path / "o"),
                 "--batch-size", "1"]) == 1
    assert "`batch_size` should be at least 2" in capsys.readouterr().err
    assert main(["finetune", "caption", "--pairs", str(tmp_path / "none.csv"), "--output", str(tmp_path / "o")]) == 1
    assert "does not exist" in capsys.readouterr().err
