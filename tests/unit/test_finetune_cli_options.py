"""The ``finetune`` command's shared options and outputs: ``--config`` and ``--verbose`` everywhere, the
configured base models of ``clip`` and ``caption``, ``finetune tools`` data, and ``finetune validate``'s report."""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from agent.cli.main import build_parser, main
from agent.core.errors import ConfigError

REQUIRED = {
    "validate": ["data.jsonl"],
    "train": ["--model", "m", "--data", "d.jsonl", "--output-dir", "out"],
    "merge": ["--adapter", "a", "--output-dir", "out"],
    "eval": ["data.jsonl", "--model", "m"],
    "clip": ["--pairs", "p.csv", "--output", "out"],
    "caption": ["--pairs", "p.csv", "--output", "out"],
    "tools": ["--model", "m", "--output", "out"],
}


def write_config(path: Path, **tools: str) -> Path:
    lines = [f'data_dir = "{path.parent / "data"}"', "[tools]"] + [f'{k} = "{v}"' for k, v in tools.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("command", sorted(REQUIRED))
def test_every_finetune_command_takes_config_and_verbose_before_or_after_its_name(command):
    parser = build_parser()
    for argv in (["--config", "c.toml", "--verbose", "finetune", command, *REQUIRED[command]],
                 ["finetune", command, *REQUIRED[command], "--config", "c.toml", "--verbose"],
                 ["finetune", "--config", "c.toml", "-v", command, *REQUIRED[command]]):
        args = parser.parse_args(argv)
        assert (args.config, args.verbose) == ("c.toml", True), argv
    args = parser.parse_args(["finetune", command, *REQUIRED[command]])
    assert (args.config, args.verbose) == (None, False)


def test_python_m_finetune_takes_config_and_verbose_too(tmp_path, capsys):
    from finetune.cli import main as finetune_main

    assert finetune_main(["validate", str(tmp_path / "missing.json"), "--config", str(tmp_path / "c.toml")]) == 2
    assert capsys.readouterr().err.startswith("error: dataset ")


# ----- clip and caption start from the configured models ----------------------------------------


@pytest.fixture
def seen_models(monkeypatch) -> list[str]:
    """The base model each pair fine-tuning settles on; the run stops right after choosing it."""
    seen: list[str] = []

    def stop(config):
        seen.append(config.model)
        raise ConfigError("stopped once the base model is chosen")

    monkeypatch.setattr("finetune.clip.check_output", stop)
    monkeypatch.setattr("finetune.caption.check_output", stop)
    return seen


@pytest.mark.parametrize("task, setting", [("clip", "clip_model"), ("caption", "caption_model")])
def test_pair_finetuning_starts_from_the_configured_model(task, setting, tmp_path, monkeypatch, seen_models):
    monkeypatch.delenv(f"LLAVA_AGENT_TOOLS__{setting.upper()}", raising=False)
    configured = str(tmp_path / f"my-{task}")
    config = write_config(tmp_path / "c.toml", **{setting: configured})
    pairs = ["--pairs", str(tmp_path / "p.csv"), "--output", str(tmp_path / "out")]
    assert main(["--config", str(config), "finetune", task, *pairs]) == 1
    assert main(["finetune", task, *pairs, "--config", str(config)]) == 1
    assert main(["finetune", task, *pairs, "--config", str(config), "--model", "flag/model"]) == 1  # the flag wins
    assert seen_models == [configured, configured, "flag/model"]


@pytest.mark.parametrize("task, setting", [("clip", "clip_model"), ("caption", "caption_model")])
def test_pair_finetuning_reads_the_user_config_file_and_environment(task, setting, tmp_path, monkeypatch, seen_models):
    monkeypatch.setenv("LLAVA_AGENT_CONFIG", str(write_config(tmp_path / "user.toml", **{setting: "from/file"})))
    monkeypatch.delenv(f"LLAVA_AGENT_TOOLS__{setting.upper()}", raising=False)
    pairs = ["--pairs", str(tmp_path / "p.csv"), "--output", str(tmp_path / "out")]
    assert main(["finetune", task, *pairs]) == 1
    monkeypatch.setenv(f"LLAVA_AGENT_TOOLS__{setting.upper()}", "from/environment")
    assert main(["finetune", task, *pairs]) == 1
    assert seen_models == ["from/file", "from/environment"]


# ----- finetune tools ----------------------------------------------------------------------------


def test_finetune_tools_reads_the_config_given_before_or_after_the_command(tmp_path, monkeypatch):
    configs: list[object] = []

    def recipe(model, output_dir, *, config=None, **options):
        configs.append(config)
        return SimpleNamespace(data=SimpleNamespace(path=Path(output_dir) / "train.jsonl"), adapter_dir=None,
                               before=None, after=None)

    monkeypatch.setattr("agent.app.tool_adapter.train_tool_adapter", recipe)
    config = str(write_config(tmp_path / "c.toml"))
    tools = ["finetune", "tools", "--model", "m", "--output", str(tmp_path / "out"), "--data-only"]
    assert main(["--config", config, *tools]) == 0
    assert main([*tools, "--config", config]) == 0
    assert configs == [config, config]


@pytest.fixture
def no_model_loads(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("no model may load while only the training data is written")

    monkeypatch.setattr("agent.app.routing_eval.evaluate_routing", refuse)
    monkeypatch.setattr(importlib.import_module("finetune.train"), "train", refuse)  # the module, not the function


def test_data_only_writes_the_data_and_loads_no_model(tmp_path, capsys, no_model_loads):
    config = str(write_config(tmp_path / "c.toml"))
    output = tmp_path / "adapter"
    assert main(["--config", config, "finetune", "tools", "--model", "not/loaded", "--output", str(output),
                 "--data-only", "--count", "12"]) == 0
    data = tmp_path / "adapter-data" / "train.jsonl"
    assert f"training data: {data}" in capsys.readouterr().out
    assert len(data.read_text().splitlines()) == 12
    assert not output.exists()


def test_finetune_tools_refuses_to_replace_training_data_without_overwrite(tmp_path, capsys, no_model_loads):
    config = str(write_config(tmp_path / "c.toml"))
    tools = ["--config", config, "finetune", "tools", "--model", "m", "--output", str(tmp_path / "adapter"),
             "--data-only", "--count", "12"]
    data = tmp_path / "adapter-data" / "train.jsonl"
    data.parent.mkdir()
    data.write_text('{"edited": "by hand"}\n')
    assert main(tools) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and str(data) in error and "--overwrite" in error and "--output" in error
    assert data.read_text() == '{"edited": "by hand"}\n'  # untouched
    assert not (data.parent / "images").exists()  # nothing written before the refusal
    assert main([*tools, "--seed", "1"]) == 1  # whatever the other options
    assert main([*tools, "--overwrite"]) == 0
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    assert len(rows) == 12 and all("messages" in row for row in rows)


# ----- finetune validate -------------------------------------------------------------------------


def test_validate_prints_one_problem_a_line(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text(
        '{"conversations": [{"from": "human", "value": "hi"}]}\n'
        '{"conversations": []}\n'
        '{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}\n'
    )
    assert main(["finetune", "validate", str(data)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == f"{data} (llava): 1 of 3 samples are valid, 2 invalid:"  # the summary line
    assert lines[1] == "  line 1: ends with a user turn that has no assistant reply"
    assert lines[2].startswith("  line 2: ")
    assert lines[-1].startswith(f"error: dataset {data} has invalid samples") and "--skip-invalid" in lines[-1]

    data.write_text('{"conversations": []}\n{"conversations": [{"from": "human", "value": "hi"}]}\n')
    assert main(["finetune", "validate", str(data), "--skip-invalid"]) == 1
    err = capsys.readouterr().err
    assert "\n  line 1: " in err and "\n  line 2: " in err
    assert err.splitlines()[-1].startswith(f"error: dataset {data} has no valid sample")


@pytest.mark.parametrize("model, named", [
    ("nothere", "hf download nothere"),
    ("./nothere-folder", "does not exist"),
    ("EMPTY", "holds no model config"),
])
def test_validate_with_a_model_that_is_not_there_is_one_clear_line(model, named, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if model == "EMPTY":
        model = str(tmp_path / "empty-model")
        Path(model).mkdir()
    data = tmp_path / "data.jsonl"
    data.write_text('{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}\n')
    assert main(["finetune", "validate", str(data), "--model", model]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and repr(model) in err and named in err
    for raw in ("huggingface.co", "Traceback", "unexpected", "model_type` key"):
        assert raw not in err
