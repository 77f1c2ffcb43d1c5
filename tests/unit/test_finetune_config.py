"""TrainConfig validation, the CLI parser built from it, the loss-curve PNG, light imports."""

from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys

import pytest
from PIL import Image

from agent.core.errors import ConfigError
from finetune.cli import main, register
from finetune.config import TrainConfig
from finetune.loss_curve import draw_loss_curve
from finetune.train import COMPLETE_MARKER, checkpoint_dir_for, last_complete_checkpoint, loss_points

REQUIRED = {"model": "m", "data": "d.json", "output_dir": "out"}


def test_defaults_are_valid_and_every_field_has_help():
    config = TrainConfig(**REQUIRED)
    assert config.quantization == "auto" and config.lora_r == 16
    assert all(f.metadata.get("help") for f in dataclasses.fields(TrainConfig))


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"model": ""}, "`model` is required, got ''"),
        ({"lora_r": 0}, "`lora_r` should be a positive integer, got 0"),
        ({"batch_size": -2}, "`batch_size` should be a positive integer, got -2"),
        ({"max_steps": 0}, "`max_steps` should be a positive integer or None, got 0"),
        ({"lora_dropout": 1.0}, "`lora_dropout` should be in [0, 1), got 1.0"),
        ({"eval_split": 1.5}, "`eval_split` should be in [0, 1), got 1.5"),
        ({"learning_rate": 0.0}, "`learning_rate` should be positive, got 0.0"),
        ({"quantization": "3bit"}, "`quantization` should be one of auto, 4bit, none, got '3bit'"),
        ({"format": "alpaca"}, "`format` should be one of auto, llava, sharegpt, messages, hf, got 'alpaca'"),
        ({"lr_scheduler": "step"}, "`lr_scheduler` should be one of linear, cosine"),
        ({"target_modules": []}, "`target_modules` should be a non-empty list of layer names, got []"),
        ({"eval_data": "e.json", "eval_split": 0.1}, "set either `eval_data` or `eval_split`, not both"),
    ],
)
def test_bad_values_are_rejected_with_the_value(override, message):
    with pytest.raises(ConfigError) as caught:
        TrainConfig(**{**REQUIRED, **override})
    assert str(caught.value).startswith(message)


def test_config_round_trips_through_json(tmp_path):
    config = TrainConfig(**REQUIRED, target_modules=["q_proj", "v_proj"], max_steps=7)
    loaded = TrainConfig.load(config.save(tmp_path / "c.json"))
    assert loaded == config
    (tmp_path / "bad.json").write_text(json.dumps({**REQUIRED, "rank": 4}))
    with pytest.raises(ConfigError, match=r"unknown training options \['rank'\]"):
        TrainConfig.load(tmp_path / "bad.json")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    return parser


def test_train_options_map_onto_the_config():
    args = _parser().parse_args(
        "finetune train --model m --data d.json --output-dir out --lora-r 8 --target-modules q_proj v_proj "
        "--train-projector --max-steps 5 --no-gradient-checkpointing --learning-rate 1e-3".split()
    )
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**options)
    assert (config.lora_r, config.target_modules, config.train_projector) == (8, ["q_proj", "v_proj"], True)
    assert (config.max_steps, config.gradient_checkpointing, config.learning_rate) == (5, False, 1e-3)
    assert args.func.__name__ == "run_train"


@pytest.mark.parametrize("command", ["validate", "train", "merge", "eval"])
def test_every_sub_command_is_registered(command, capsys):
    with pytest.raises(SystemExit) as caught:
        _parser().parse_args(["finetune", command, "--help"])
    assert caught.value.code == 0
    assert f"finetune {command}" in capsys.readouterr().out


def test_cli_prints_one_line_for_library_errors(tmp_path, capsys):
    code = main(["validate", str(tmp_path / "missing.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: dataset ") and "does not exist" in err and "Traceback" not in err


def test_checkpoints_without_the_complete_marker_are_ignored(tmp_path):
    run = tmp_path / "run-checkpoints"
    for step, complete in ((5, True), (10, True), (15, False)):
        folder = run / f"checkpoint-{step}"
        folder.mkdir(parents=True)
        if complete:
            (folder / COMPLETE_MARKER).write_text("{}")
    (run / "checkpoint-x").mkdir()
    assert last_complete_checkpoint(run).name == "checkpoint-10"
    assert last_complete_checkpoint(tmp_path / "nothing") is None
    assert checkpoint_dir_for(tmp_path / "run") == run


def test_loss_curve_png(tmp_path):
    history = [{"step": s, "loss": 5.0 / s} for s in range(1, 30)] + [{"step": 10, "eval_loss": 0.9}]
    train_points, eval_points = loss_points(history)
    assert len(train_points) == 29 and eval_points == [(10, 0.9)]
    path = draw_loss_curve(train_points, eval_points, tmp_path / "loss.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (800, 480)
        colours = {colour for _, colour in image.convert("RGB").getcolors(maxcolors=100_000)}
    assert (31, 119, 180) in colours and (214, 39, 40) in colours  # both series drawn
    empty = draw_loss_curve([], [], tmp_path / "empty.png")
    assert empty.is_file()


def test_importing_finetune_stays_light():
    code = (
        "import sys, finetune, finetune.cli, finetune.formats, finetune.validate, finetune.collator, "
        "finetune.train, finetune.merge, finetune.evaluate, finetune.config\n"
        "heavy = [m for m in ('torch', 'transformers', 'peft', 'diffusers', 'chromadb', 'bitsandbytes') "
        "if m in sys.modules]\n"
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
