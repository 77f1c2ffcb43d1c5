"""The decode-floor benchmark's arithmetic: the bytes it says a decode step reads are the model's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration]

REPO = Path(__file__).resolve().parents[2]


def test_bytes_per_token_are_the_weights_and_the_keys_values_a_step_reads(tiny_llava_qwen2, tmp_path):
    from transformers import AutoConfig

    out = tmp_path / "floor.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_decode_floor.py"), "--model-dir", str(tiny_llava_qwen2),
         "--quantization", "int8-weights", "--context", "1000", "--repeats", "3", "--output", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=240,
        env={**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    text = AutoConfig.from_pretrained(tiny_llava_qwen2).text_config
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    kv_heads = text.num_key_value_heads
    # int8 weights: one byte per weight of every projection, a bf16 scale per output row, biases and norms in fp32
    rows = text.hidden_size + 2 * kv_heads * head_dim + text.hidden_size + 2 * text.intermediate_size + text.hidden_size
    weights = text.hidden_size * (text.hidden_size + 2 * kv_heads * head_dim + text.hidden_size) + 3 * text.hidden_size * text.intermediate_size
    biases = (text.hidden_size + 2 * kv_heads * head_dim) * 4
    norms = 2 * text.hidden_size * 4
    body = text.num_hidden_layers * (weights + 2 * rows + biases + norms) + text.hidden_size * 4  # + the final norm
    assert report["quantization"] == "int8-weights"
    assert report["body_bytes"] == body
    assert report["kv_bytes"] == text.num_hidden_layers * 2 * kv_heads * head_dim * 1000 * 4
    assert report["ceiling_tok_s"] > report["kernels_only_tok_s"] > 0
    assert "bandwidth ceiling" in done.stdout and "kernels alone" in done.stdout
