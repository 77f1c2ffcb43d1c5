"""Sentence embeddings through ONNX Runtime: the vectors sentence-transformers gives, in about half the time.

Semantic routing embeds every request before the turn's first model call, and long-term memory
embeds every message it stores or recalls with; both wait on a small model (MiniLM: 6 layers,
a few dozen tokens) whose cost on a CPU is mostly the per-operation overhead of eager PyTorch.
On a 2-core AMD EPYC without AVX-512, one request and its opening words (the router's batch of
two) took a median 19.1 ms through sentence-transformers with one thread and 15.2 ms with two;
the same model exported to ONNX and run by ONNX Runtime (fp32, its graph optimisations) took
10.2 ms and 5.9 ms, with cosine 1.0 to the sentence-transformers vectors.

:func:`onnx_encoder` exports the model's transformer once (``torch.onnx.export``, which needs the
``onnx`` package) to ``$XDG_CACHE_HOME/llava-agent/onnx/`` under a fingerprint of its weights
and the exporter, atomically, and opens it with ONNX Runtime (a dependency of Chroma). Only the
pipelines it can reproduce exactly are taken -- transformer, mean pooling, optional
normalisation, as the default all-MiniLM-L6-v2 is; anything else stays with
sentence-transformers. :class:`OnnxSentenceEncoder` tokenizes with the model's own tokenizer
(padding, truncation at its ``max_seq_length``), runs the graph and pools as sentence-transformers does.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent.core.runtime import cache_folder

if TYPE_CHECKING:  # pragma: no cover
    import numpy as np

logger = logging.getLogger(__name__)

ONNX_OPSET = 17
EXPORT_FORMAT = 1
"""Bumped when the exported graph changes (its inputs, outputs or opset): old files are not reused."""


def unsupported_reason(model: Any) -> str | None:
    """Why this sentence-transformers model cannot run through ONNX Runtime here, or None when it can."""
    names = [type(module).__name__ for module in model]
    if names not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        return f"its pipeline is {' -> '.join(names)}, not transformer -> mean pooling (-> normalize)"
    config = model[1].get_config_dict()
    mode = config.get("pooling_mode")
    if mode is None:  # sentence-transformers before 6: one flag per mode
        flags = [key for key, value in config.items() if key.startswith("pooling_mode_") and value]
        mode = "mean" if flags == ["pooling_mode_mean_tokens"] else ",".join(flags)
    if mode != "mean":
        return f"it pools with {mode!r}, not the mean"
    if getattr(model[0], "auto_model", None) is None or getattr(model, "tokenizer", None) is None:
        return "its transformer has no Hugging Face model and tokenizer"
    return None


def _fingerprint(transformer: Any) -> str:
    import torch

    digest = hashlib.sha256(f"{EXPORT_FORMAT}/{ONNX_OPSET}/{torch.__version__}".encode())
    digest.update(transformer.config.to_json_string().encode())
    for name, tensor in sorted(transformer.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


def _export(transformer: Any, input_names: list[str], target: Path) -> None:
    """Write the transformer's graph (inputs -> last hidden state) to ``target``, atomically."""
    import torch

    class _Hidden(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *inputs: Any) -> Any:
            return self.inner(**dict(zip(input_names, inputs, strict=True))).last_hidden_state

    sample = tuple(torch.ones((2, 8), dtype=torch.long) for _ in input_names)
    axes = {name: {0: "batch", 1: "tokens"} for name in [*input_names, "hidden"]}
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, scratch = tempfile.mkstemp(dir=target.parent, prefix=f".{target.stem}-", suffix=".onnx")
    os.close(handle)
    try:
        with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
            warnings.simplefilter("ignore")  # the tracer's notes on shapes it treats as constants
            torch.onnx.export(
                _Hidden(transformer.eval()), sample, scratch, input_names=input_names, output_names=["hidden"],
                dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False,
            )
        os.replace(scratch, target)
    finally:
        if os.path.exists(scratch):
            os.unlink(scratch)


class OnnxSentenceEncoder:
    """A sentence-transformers model's embeddings (mean pooled, optionally normalised) from ONNX Runtime."""

    def __init__(self, session: Any, tokenizer: Any, max_seq_length: int | None, normalize: bool,
                 path: Path) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.max_seq_length = max_seq_length
        self.normalize = normalize
        self.path = path
        self.input_names = [node.name for node in session.get_inputs()]
        self.weight_bytes = path.stat().st_size
        """What the model manager counts for it: the exported file (its weights, fp32)."""

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embeddings of ``texts`` (float32 rows), in batches of ``batch_size``, longest first as sentence-transformers does."""
        import numpy as np

        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        vectors = np.zeros((len(texts), 0), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            encoded = self.tokenizer(
                [texts[i] for i in rows], padding=True, truncation=True, max_length=self.max_seq_length,
                return_tensors="np",
            )
            feed = {name: encoded[name].astype(np.int64) for name in self.input_names}
            hidden = self.session.run(None, feed)[0]
            mask = encoded["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1e-9)
            if self.normalize:
                pooled /= np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
            if vectors.shape[1] == 0:
                vectors = np.zeros((len(texts), pooled.shape[1]), dtype=np.float32)
            vectors[rows] = pooled
        return vectors


def onnx_encoder(model: Any, folder: Path | None = None) -> OnnxSentenceEncoder:
    """The ONNX Runtime twin of a sentence-transformers ``model`` (exported once, then read from ``folder``).

    Raises ``RuntimeError`` naming what is missing when the model or the environment cannot do it
    (see :func:`unsupported_reason`; ``onnxruntime`` not installed; ``onnx`` not installed and no
    exported file yet).
    """
    reason = unsupported_reason(model)
    if reason is not None:
        raise RuntimeError(reason)
    try:
        import onnxruntime
    except ImportError:
        raise RuntimeError("onnxruntime is not installed") from None
    import torch

    transformer = model[0].auto_model
    tokenizer = model.tokenizer
    input_names = [name for name in ("input_ids", "attention_mask", "token_type_ids")
                   if name in tokenizer(["a"], return_tensors="np")]
    folder = Path(folder) if folder is not None else cache_folder() / "onnx"
    path = folder / f"{type(transformer).__name__.lower()}-{_fingerprint(transformer)}.onnx"
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())  # the process's thread policy
    options.inter_op_num_threads = 1
    session = None
    if path.is_file():
        try:
            session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # a damaged file: export it again
            logger.warning("the exported text embedder %s cannot be read (%s); exporting it again", path, exc)
    if session is None:
        try:
            import onnx  # noqa: F401  (torch.onnx.export writes through it)
        except ImportError:
            raise RuntimeError("onnx is not installed (needed once, to export the model)") from None
        logger.info("Exporting the text embedder to ONNX (once): %s", path)
        _export(transformer, input_names, path)
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return OnnxSentenceEncoder(
        session, tokenizer, getattr(model, "max_seq_length", None), len(model) == 3, path
    )
