"""The GPU check's CPU dry run: every step runs end to end on tiny models, so the script cannot rot
between GPU loans; and its CUDA mode refuses a machine without a GPU in one line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "bench" / "gpu_check.py"
STEP_METRICS = {  # numbers each passed step must have measured (positive unless said otherwise)
    1: [f"{precision}_{name}" for precision in ("nf4", "int8", "fp16")
        for name in ("load_s", "ttft_text_s", "ttft_image_s", "decode_tok_s", "plain_decode_tok_s", "decode_ratio")],
    2: ["valid_calls", "tokens_per_call_mean", "mask_ms_per_token_median", "mask_ms_per_token_p95"],
    3: ["caption_images_per_s", "generate_s_per_image", "index_images_per_s", "search_p50_ms", "vits_rtf",
        "budget_gib", "evictions"],
    4: ["samples_per_s", "tokens_per_sample", "peak_rss_gib", "resumed_steps", "train_runtime_s"],
    6: ["weights_gib", "none_step_s", "none_default_clip_s"],
}  # fmt: skip


def _environment() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory) -> tuple[subprocess.CompletedProcess, Path]:
    output = tmp_path_factory.mktemp("gpu-check") / "report"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--size", "tiny", "--output", str(output)],
        cwd=REPO, env=_environment(), capture_output=True, text=True, timeout=280,
    )  # fmt: skip
    return done, output


def test_dry_run_passes_every_step_with_numbers(dry_run):
    done, output = dry_run
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    data = json.loads((output / "gpu_check.json").read_text())
    steps = {step["number"]: step for step in data["steps"]}
    assert sorted(steps) == [1, 2, 3, 4, 5, 6]
    for number, names in STEP_METRICS.items():
        step = steps[number]
        assert step["status"] == "passed", (number, step["error"], step["traceback"])
        assert step["checks"] and all(check["ok"] for check in step["checks"]), step["checks"]
        for name in names:
            value = step["metrics"].get(name)
            assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (number, name, value)
    assert steps[2]["metrics"]["valid_calls"] == 20
    assert steps[3]["metrics"]["evictions"] >= 1
    qlora = steps[4]["metrics"]
    assert 0 < qlora["killed_after_checkpoint"] < 30
    assert qlora["resumed_steps"] == 30 - qlora["killed_after_checkpoint"]
    if (REPO / "bench" / "bench_turns.py").exists():
        assert steps[5]["status"] in ("passed", "skipped"), steps[5]["error"]
    else:
        assert steps[5]["status"] == "not available"
    assert data["finished"] and data["dry_run"] and data["environment"]["torch"]


def test_dry_run_report_names_every_step_and_its_results(dry_run):
    done, output = dry_run
    assert done.returncode == 0, done.stderr[-2000:]
    report = (output / "gpu_check.md").read_text()
    data = json.loads((output / "gpu_check.json").read_text())
    assert "not finished" not in report
    for step in data["steps"]:
        assert f"## {step['number']}. {step['title']}" in report
        assert f"| {step['number']}. {step['title']} | {step['status']} |" in report
    assert "ChatLlava against plain `generate`" in report and "| NF4 4-bit |" in report
    assert "evicted" in report and "merge refuses a base saved in 4-bit" in report
    # it printed as it went, step by step
    assert [f"step {n}:" in done.stdout for n in range(1, 7)] == [True] * 6


def test_cuda_without_a_gpu_fails_with_one_clear_line(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cuda", "--output", str(tmp_path / "report")],
        cwd=REPO, env=_environment(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a CUDA GPU" in lines[0] and "--device cpu --size tiny" in lines[0], lines
    assert not (tmp_path / "report").exists()
