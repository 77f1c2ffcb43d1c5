"""The text embedder through ONNX Runtime and through sentence-transformers: the same vectors, real MiniLM."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from agent.core.errors import InputError, ModelLoadError
from agent.core.model_manager import ModelManager
from memory.embedders import DEFAULT_TEXT_EMBEDDER, TextEmbedder, resolve_text_embedder

pytestmark = [pytest.mark.integration]

TEXTS = [
    "What is the name of my pet?",
    "draw a lighthouse at dusk",
    "read this aloud: dinner is ready",
    "Ünïcödé and emoji 🎉 still embed",
    "word " * 400,  # past the model's 256 tokens: truncated the same way
    "a",
    "find my photos of red squares from last summer at the beach, the ones with the dog",
]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """XDG_CACHE_HOME holding one export of the default embedder (made by the first ONNX load)."""
    cache = tmp_path_factory.mktemp("xdg")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(cache))
        embedder = TextEmbedder(DEFAULT_TEXT_EMBEDDER, device="cpu", manager=ModelManager(), runtime="onnx")
        embedder.embed(["warm"])
    return cache


def _embedder(cache: Path, monkeypatch, runtime: str = "auto", model: str = DEFAULT_TEXT_EMBEDDER) -> TextEmbedder:
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return TextEmbedder(model, device="cpu", manager=ModelManager(), runtime=runtime)


def test_onnx_runtime_gives_the_vectors_sentence_transformers_gives(exported, monkeypatch):
    fast = _embedder(exported, monkeypatch)
    plain = _embedder(exported, monkeypatch, runtime="torch")
    for batch_size in (64, 3):  # one batch, and batches of mixed lengths put back in order
        vectors = fast.embed(TEXTS, batch_size=batch_size)
        expected = plain.embed(TEXTS, batch_size=batch_size)
        assert vectors.shape == expected.shape == (len(TEXTS), 384) and vectors.dtype == np.float32
        cosines = np.sum(vectors * expected, axis=1)
        assert cosines.min() > 0.9999, cosines
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert (fast.backend, plain.backend) == ("onnx", "torch")


def test_the_export_is_made_once_and_a_damaged_one_again(exported, monkeypatch, caplog, tmp_path):
    (path,) = (exported / "llava-agent" / "onnx").glob("*.onnx")
    stamp = path.stat().st_mtime_ns
    with caplog.at_level(logging.INFO, logger="memory.onnx_text"):
        _embedder(exported, monkeypatch).embed(["again"])
    assert path.stat().st_mtime_ns == stamp and "Exporting" not in caplog.text  # read, not exported
    damaged = tmp_path / "xdg"
    shutil.copytree(exported, damaged)
    (copy,) = (damaged / "llava-agent" / "onnx").glob("*.onnx")
    copy.write_bytes(b"not a graph")
    embedder = _embedder(damaged, monkeypatch)
    assert embedder.embed(["hello"]).shape == (1, 384) and embedder.backend == "onnx"
    assert copy.stat().st_size == path.stat().st_size  # exported again in its place
    assert not [p for p in copy.parent.iterdir() if p.name.startswith(".")]  # no scratch file left


def test_a_pipeline_onnx_cannot_reproduce_stays_with_sentence_transformers(exported, monkeypatch, tmp_path, caplog):
    folder = tmp_path / "cls-embedder"
    shutil.copytree(resolve_text_embedder(DEFAULT_TEXT_EMBEDDER), folder)
    pooling = folder / "1_Pooling" / "config.json"
    config = json.loads(pooling.read_text())
    if "pooling_mode" in config:
        config["pooling_mode"] = "cls"
    else:
        config.update(pooling_mode_mean_tokens=False, pooling_mode_cls_token=True)
    pooling.write_text(json.dumps(config))
    with caplog.at_level(logging.INFO, logger="memory.embedders"):
        auto = _embedder(exported, monkeypatch, model=str(folder))
        assert auto.embed(["hello"]).shape == (1, 384)
    assert auto.backend == "torch" and "'cls', not the mean" in caplog.text
    with pytest.raises(ModelLoadError, match=r"cannot run in ONNX Runtime: it pools with 'cls'.*'auto' or 'torch'"):
        _embedder(exported, monkeypatch, runtime="onnx", model=str(folder)).embed(["hello"])


def test_the_runtime_setting_is_checked(tmp_path):
    from agent.core.config import ConfigError, load_config

    with pytest.raises(InputError, match="runtime must be one of auto, onnx, torch, got 'tensorrt'"):
        TextEmbedder(DEFAULT_TEXT_EMBEDDER, device="cpu", runtime="tensorrt")
    assert load_config({"data_dir": str(tmp_path)}, environ={}).memory.text_embedder_runtime == "auto"
    with pytest.raises(ConfigError, match="text_embedder_runtime"):
        load_config({"data_dir": str(tmp_path), "memory": {"text_embedder_runtime": "tensorrt"}}, environ={})


def test_the_onnx_embedder_holds_its_weights_once_and_the_manager_counts_them(exported, monkeypatch):
    import gc
    import weakref

    import torch

    built = []
    original = torch.nn.Module.__init__

    def tracking_init(self, *args, **kwargs):  # every torch module the load builds, weakly
        original(self, *args, **kwargs)
        built.append(weakref.ref(self))

    monkeypatch.setattr(torch.nn.Module, "__init__", tracking_init)
    embedder = _embedder(exported, monkeypatch)
    embedder.embed(["hello"])
    monkeypatch.undo()
    gc.collect()
    assert embedder.backend == "onnx" and built  # the load did build the torch model, to export or fingerprint it
    assert [ref() for ref in built if ref() is not None] == []  # and kept none of it: the session embeds
    (path,) = (exported / "llava-agent" / "onnx").glob("*.onnx")
    assert embedder.manager.used_bytes("cpu") == path.stat().st_size > 80 * 2**20  # MiniLM's fp32 weights
    torch_embedder = _embedder(exported, monkeypatch, runtime="torch")
    torch_embedder.embed(["hello"])
    assert abs(torch_embedder.manager.used_bytes("cpu") - path.stat().st_size) < 2 * 2**20
