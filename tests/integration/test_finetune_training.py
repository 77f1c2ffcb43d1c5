"""Training runs that must survive the real world: QLoRA on CPU, kills, resumes, two processes."""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest

from agent.core.errors import ConfigError, DatasetError
from finetune.train import COMPLETE_MARKER, SAVE_DELAY_ENV, last_complete_checkpoint
from tests.conftest import write_colour_shapes

pytestmark = [pytest.mark.usefixtures("one_torch_thread"), pytest.mark.integration, pytest.mark.slow]


REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("small-colours")
    return {"train": write_colour_shapes(folder, 16, seed=3, name="train"), "image_folder": folder}


def _options(model: Path, data: dict[str, Path], output_dir: Path, **extra) -> dict:
    return {
        "model": str(model),
        "data": str(data["train"]),
        "image_folder": str(data["image_folder"]),
        "output_dir": str(output_dir),
        "batch_size": 4,
        "lora_r": 4,
        "lora_alpha": 8,
        "learning_rate": 1e-3,
        "logging_steps": 1,
        "device": "cpu",
        **extra,
    }


def _cli_args(options: dict) -> list[str]:
    args = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if value is True:
            args.append(flag)
        else:
            args.extend([flag, str(value)])
    return args


def _environment(**extra: str) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **extra)
    env.pop("WORLD_SIZE", None)
    return env


def _start(options: dict, **env: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "finetune", "train", *_cli_args(options)],
        cwd=REPO,
        env=_environment(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _wait_for(condition, process: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            raise AssertionError(f"training ended (rc {process.returncode}) first:\n{process.stdout.read()[-3000:]}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError("timed out waiting for the training process")


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_qlora_on_cpu_trains_saves_and_reloads(tiny_llava_llama, small_data, tmp_path):
    from langchain_core.messages import HumanMessage

    from agent.llava.chat_model import ChatLlava
    from finetune import train

    output_dir = tmp_path / "qlora"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(**_options(tiny_llava_llama, small_data, output_dir, quantization="4bit", max_steps=3))
    assert result.global_step == 3
    # the libraries' notices to each other (checkpointing's deprecated names) do not reach the user
    assert not [str(w.message) for w in caught if "checkpointing" in str(w.message)]
    summary = json.loads((output_dir / "data_summary.json").read_text())
    assert summary["quantization"] == "4bit" and summary["device"] == "cpu"
    saved = json.loads((output_dir / "training_config.json").read_text())
    assert saved["quantization"] == "4bit" and saved["max_steps"] == 3

    chat = ChatLlava(
        model=str(tiny_llava_llama), adapter=str(output_dir), quantization="4bit", device="cpu",
        temperature=0.0, max_new_tokens=4,
    )
    reply = chat.invoke([HumanMessage(content="What colour is the shape?")])
    assert isinstance(reply.content, str)
    from peft import PeftModel

    assert isinstance(chat.loaded.model, PeftModel)
    assert type(chat.loaded.model.get_base_model().model.language_model.layers[0].mlp.up_proj.base_layer).__name__ == "Linear4bit"


def test_activation_checkpointing_in_full_precision_trains_quietly(tiny_llava_llama, small_data, tmp_path):
    from finetune import train

    output_dir = tmp_path / "checkpointed"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = train(**_options(tiny_llava_llama, small_data, output_dir, gradient_checkpointing=True, max_steps=2))
    assert result.global_step == 2 and (output_dir / "adapter_config.json").is_file()
    assert not [str(w.message) for w in caught if "checkpointing" in str(w.message)]


def test_resume_after_a_kill_finishes_with_the_same_number_of_steps(tiny_llava_llama, tiny_llava_qwen2, small_data, tmp_path,
                                                                   caplog):
    from finetune import train

    output_dir = tmp_path / "resumed"
    checkpoints = tmp_path / "resumed-checkpoints"
    options = _options(tiny_llava_llama, small_data, output_dir, max_steps=60, save_steps=4, save_total_limit=2)
    process = _start(options)
    _wait_for(lambda: last_complete_checkpoint(checkpoints) is not None, process)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    killed_at = int(last_complete_checkpoint(checkpoints).name.split("-")[1])
    assert killed_at < 60 and not output_dir.exists()
    # A checkpoint cut short by the kill (no completion marker) must never be resumed from.
    broken = checkpoints / "checkpoint-58"
    broken.mkdir()
    (broken / "adapter_model.safetensors").write_bytes(b"half")

    with pytest.raises(ConfigError, match="pass --resume to continue that run or --overwrite"):
        train(**options)
    caplog.set_level("INFO", logger="finetune.train")
    result = train(**options, resume=True)
    assert result.global_step == 60
    assert f"Resuming from {checkpoints}/checkpoint-{killed_at}" in caplog.text
    history = json.loads((output_dir / "log_history.json").read_text())
    steps = [entry["step"] for entry in history if "loss" in entry]
    assert steps[0] == 1 and steps[-1] == 60  # the first process's losses are kept
    assert (last_complete_checkpoint(checkpoints) / COMPLETE_MARKER).is_file()

    # resumed once more, the finished run saves the same adapter again: no step past the end
    weights = (output_dir / "adapter_model.safetensors").read_bytes()
    again = train(**options, resume=True)
    assert again.global_step == 60 and last_complete_checkpoint(checkpoints).name == "checkpoint-60"
    assert (output_dir / "adapter_model.safetensors").read_bytes() == weights
    assert json.loads((output_dir / "data_summary.json").read_text())["global_step"] == 60

    # a resume with settings of another run is refused, naming them; the checkpoints are untouched
    for change, named in (({"lora_r": 8}, "lora_r: 4 there, 8 now"),
                          ({"model": str(tiny_llava_qwen2)}, f"model: '{Path(tiny_llava_llama).resolve()}' there")):
        with pytest.raises(ConfigError, match=r"belong to a run with other settings \(" + re.escape(named)):
            train(**{**options, **change}, resume=True)
    assert last_complete_checkpoint(checkpoints).name == "checkpoint-60"


def test_a_kill_during_the_final_save_leaves_the_previous_adapter_intact(tiny_llava_qwen2, small_data, tmp_path):
    from finetune import train

    output_dir = tmp_path / "adapter"
    train(**_options(tiny_llava_qwen2, small_data, output_dir, max_steps=2, save_steps=100))
    before = _digest(output_dir)

    options = _options(tiny_llava_qwen2, small_data, output_dir, max_steps=3, save_steps=100, overwrite=True, seed=7)
    process = _start(options, **{SAVE_DELAY_ENV: "120"})
    staged = lambda: any((p / "loss_curve.png").is_file() for p in tmp_path.glob(".adapter.tmp-*"))  # noqa: E731
    _wait_for(staged, process)
    time.sleep(0.5)
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)

    assert _digest(output_dir) == before  # the old adapter, untouched and complete
    assert list(tmp_path.glob(".adapter.tmp-*"))  # the new one never got past its staging folder
    from peft import PeftConfig

    assert PeftConfig.from_pretrained(str(output_dir)).r == 4

    result = train(**{**options, "max_steps": 2})
    assert result.global_step == 2
    assert _digest(output_dir) != before
    assert not list(tmp_path.glob(".adapter.*"))  # stale staging folders are cleaned up


def test_two_process_ddp_on_cpu_trains_and_saves_once(tiny_llava_qwen2, small_data, tmp_path):
    output_dir = tmp_path / "ddp"
    options = _options(tiny_llava_qwen2, small_data, output_dir, epochs=1, batch_size=2, save_steps=100)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port()),
        "-m", "finetune", "train", *_cli_args(options),
    ]
    done = subprocess.run(command, cwd=REPO, env=_environment(), capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-4000:]
    assert output.count("Writing adapter to") == 1
    assert output.count("adapter saved to") == 1
    summary = json.loads((output_dir / "data_summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["global_step"] == 16 // (2 * 2)  # each step takes a batch from both processes
    assert (output_dir / "adapter_model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddp", "ddp-checkpoints"]


def test_training_stops_on_invalid_data_before_loading_the_model(tiny_llava_qwen2, small_data, tmp_path):
    from finetune import train

    rows = json.loads(small_data["train"].read_text())
    rows[2]["image"] = "images/missing.png"
    rows[5]["conversations"] = rows[5]["conversations"][:1]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(rows))
    options = _options(tiny_llava_qwen2, {**small_data, "train": bad}, tmp_path / "out", max_steps=1)
    with pytest.raises(DatasetError) as caught:
        train(**options)
    message = str(caught.value)
    assert "14 of 16 samples are valid, 2 invalid" in message
    assert "\n  sample 2: image 'images/missing.png' not found" in message
    assert "\n  sample 5: ends with a user turn that has no assistant reply" in message
    assert not (tmp_path / "out").exists() and not (tmp_path / "out-checkpoints").exists()  # nothing left behind
    result = train(**options, skip_invalid=True)
    assert result.data_summary["samples_skipped"] == 2 and result.samples == 14
    # bad data with --overwrite: the earlier run's checkpoints are not deleted for a run that cannot start
    kept = sorted(p.name for p in (tmp_path / "out-checkpoints").iterdir())
    with pytest.raises(DatasetError):
        train(**options, overwrite=True)
    assert sorted(p.name for p in (tmp_path / "out-checkpoints").iterdir()) == kept and "checkpoint-1" in kept


def test_eval_split_reports_evaluation_loss_and_draws_it(tiny_llava_qwen2, small_data, tmp_path):
    from finetune import train

    output_dir = tmp_path / "with-eval"
    result = train(
        **_options(tiny_llava_qwen2, small_data, output_dir, eval_split=0.25, max_steps=4, save_steps=2, train_projector=True)
    )
    assert result.samples == 12 and result.data_summary["eval_samples"] == 4
    assert result.eval_loss is not None and result.eval_loss > 0
    history = json.loads((output_dir / "log_history.json").read_text())
    assert [entry["step"] for entry in history if "eval_loss" in entry][:2] == [2, 4]
    saved = json.loads((output_dir / "training_config.json").read_text())
    assert saved["eval_split"] == 0.25 and saved["train_projector"] is True


def test_rotation_always_leaves_a_complete_checkpoint(tiny_llava_qwen2, small_data, tmp_path, monkeypatch):
    """With save_total_limit=1, at every deletion some complete checkpoint remains (a kill there resumes)."""
    import shutil

    from finetune import train

    checkpoints = tmp_path / "rotated-checkpoints"
    rmtree = shutil.rmtree
    uncovered: list[str] = []

    def watched_rmtree(path, *args, **kwargs):
        rmtree(path, *args, **kwargs)
        if Path(path).parent == checkpoints and last_complete_checkpoint(checkpoints) is None:
            uncovered.append(Path(path).name)

    monkeypatch.setattr(shutil, "rmtree", watched_rmtree)
    result = train(**_options(tiny_llava_qwen2, small_data, tmp_path / "rotated", max_steps=4, save_steps=1,
                              save_total_limit=1))
    assert result.global_step == 4
    assert uncovered == [], f"deleting {uncovered} left no complete checkpoint to resume from"
    assert sorted(p.name for p in checkpoints.iterdir() if p.is_dir()) == ["checkpoint-4"]
    assert (checkpoints / "checkpoint-4" / COMPLETE_MARKER).is_file()


def test_a_full_disk_while_saving_the_adapter_is_one_clear_error(tiny_llava_qwen2, small_data, tmp_path, monkeypatch):
    import errno
    import importlib

    from agent.core.errors import StoreError
    from finetune import train

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(importlib.import_module("finetune.train"), "save_adapter", full_disk)
    with pytest.raises(StoreError, match=r"cannot write the adapter to .* \(No space left on device\); free some disk "
                                         r"space and run again with --resume"):
        train(**_options(tiny_llava_qwen2, small_data, tmp_path / "full", max_steps=1, save_steps=1))
    assert not (tmp_path / "full").exists()
