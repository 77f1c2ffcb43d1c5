"""Single-token decode steps replayed as CUDA graphs, over a static key/value cache (CUDA only).

At batch 1 a 4-bit 7B model spends most of a step launching kernels: ~32 layers x (7 NF4 GEMVs,
norms, rotary, attention) from Python, each waiting for the CPU. ``transformers`` marks
bitsandbytes models as not compileable, but bitsandbytes' 4-bit GEMV launches on the current
stream and allocates nothing the graph pool cannot hold, so one decode step can be captured as a
CUDA graph and replayed with one launch.

:class:`GraphDecoder` keeps, per loaded model, static key/value buffers with room for
``capacity`` positions and one graph per *bucket* (multiples of :data:`BUCKET` positions):
the graph for bucket ``b`` attends to the first ``b`` positions of the buffers through an
additive mask built inside the graph from the position tensor, so a step at position 300 reads
512 positions, not the whole buffer. Inputs (token id, position) are static tensors written
before each replay; the output is the final hidden state, and the head is applied outside the
graph (full or few rows, see :mod:`agent.llava.output_head`). Prefill and multi-token steps
(jump-forward) run eagerly into the same buffers.

A capture that fails (an op that is not capturable in some library version), or static buffers
that cannot be allocated, is logged once and the loop continues eagerly; nothing in a reply
depends on graphs. The model is called with its cache under the keyword its ``transformers``
version takes (:func:`agent.llava.kv_cache.cache_arguments`).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from agent.llava.kv_cache import KVBuffers, _round_up, cache_arguments

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from agent.llava.decode_setup import ModelParts
    from agent.llava.loading import LoadedModel

logger = logging.getLogger(__name__)

BUCKET = 256
MIN_CAPACITY = 2048
WARMUP_STEPS = 2


def graphs_available(device: Any) -> bool:
    import torch

    return torch.device(device).type == "cuda" and torch.cuda.is_available()


class GraphDecoder:
    """Static key/value buffers of one model on one CUDA device, and a captured step per bucket."""

    def __init__(
        self,
        parts: ModelParts,
        capacity: int,
        device: torch.device,
        dtype: torch.dtype,
        *,
        capture: bool = True,
    ) -> None:
        import torch

        self.parts = parts
        self.capture = capture
        """False: run the step's computation eagerly, uncaptured (to check it where CUDA is absent)."""
        self.capacity = _round_up(max(capacity, MIN_CAPACITY), BUCKET)
        self.device = device
        self.dtype = dtype
        config = parts.text_config
        heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        self.kv = KVBuffers(config.num_hidden_layers, self.capacity)
        with torch.inference_mode():
            for layer in self.kv.layers:
                example = torch.empty((1, heads, 0, head_dim), dtype=dtype, device=device)
                layer.lazy_initialization(example, example)
                # zeros, not garbage: masked positions are still multiplied (by a weight of exactly 0)
                layer.key_buffer.zero_()
                layer.value_buffer.zero_()
            self.input_ids = torch.zeros((1, 1), dtype=torch.long, device=device)
            self.position = torch.zeros((1, 1), dtype=torch.long, device=device)
            self.hidden = torch.zeros((1, config.hidden_size), dtype=dtype, device=device)
        self.graphs: dict[int, Any] = {}
        self.captured_at: int | None = None
        """Address of the first key buffer the graphs write to (captured graphs keep raw addresses)."""
        self.pool = torch.cuda.graph_pool_handle() if capture else None
        self.failed: str | None = None

    # -- the working cache of one reply ----------------------------------------------------------
    def adopt(self, prefix: KVBuffers | None, length: int) -> KVBuffers:
        """The static buffers, holding the first ``length`` positions of ``prefix`` (the rest is written next)."""
        import torch

        with torch.inference_mode():
            return self._adopt(prefix, length)

    def _adopt(self, prefix: KVBuffers | None, length: int) -> KVBuffers:
        self.kv.truncate(0)
        self.kv.set_dynamic(False)
        if prefix is not None and length > 0:
            for source, target in zip(prefix.layers, self.kv.layers, strict=True):
                target.key_buffer[:, :, :length].copy_(source.key_buffer[:, :, :length])
                target.value_buffer[:, :, :length].copy_(source.value_buffer[:, :, :length])
                target.set_length(length)
        return self.kv

    def fits(self, positions: int) -> bool:
        return positions <= self.capacity

    # -- one step ----------------------------------------------------------------------------------
    def step(self, kv: KVBuffers, token: torch.Tensor) -> torch.Tensor:
        """The hidden state after feeding ``token`` (shape (1, 1)) at the next position of ``kv``."""
        position = kv.length
        if kv is not self.kv or self.failed is not None or position + 1 > self.capacity:
            return self._eager(kv, token)
        bucket = _round_up(position + 1, BUCKET)
        if not self.capture:
            self.input_ids.copy_(token)
            self.position.fill_(position)
            self._forward(bucket)
            for layer in kv.layers:
                layer.set_length(position + 1)
            return self.hidden
        if self.graphs and kv.layers[0].key_buffer.data_ptr() != self.captured_at:
            self.graphs.clear()  # the buffers were reallocated: the graphs would write to freed memory
        graph = self.graphs.get(bucket)
        if graph is None:
            graph = self._capture(bucket, token, position)
            if graph is None:
                return self._eager(kv, token)
        self.input_ids.copy_(token)
        self.position.fill_(position)
        graph.replay()
        for layer in kv.layers:
            layer.set_length(position + 1)
        return self.hidden

    def _eager(self, kv: KVBuffers, token: torch.Tensor) -> torch.Tensor:
        model = self.parts.language_model
        output = model(input_ids=token, **cache_arguments(model, kv.cache), use_cache=True)
        return output.last_hidden_state[:, -1]

    def _forward(self, bucket: int) -> None:
        """The captured computation: write this position's keys/values, attend to the bucket, keep the state."""
        import torch

        mask = torch.where(
            torch.arange(bucket, device=self.device)[None, None, None, :] <= self.position[:, :, None, None],
            torch.zeros((), dtype=self.dtype, device=self.device),
            torch.full((), torch.finfo(self.dtype).min, dtype=self.dtype, device=self.device),
        )
        model = self.parts.language_model
        output = model(
            input_ids=self.input_ids,
            position_ids=self.position,
            attention_mask=mask,
            **cache_arguments(model, self._step_cache(bucket)),
            use_cache=True,
        )
        self.hidden.copy_(output.last_hidden_state[:, -1])

    def _step_cache(self, bucket: int) -> Any:
        from transformers.cache_utils import DynamicCache

        cache = DynamicCache()
        cache.layers = [_graph_layer_class()(layer, self.position, bucket) for layer in self.kv.layers]
        cache.layer_class_to_replicate = None
        return cache

    def _capture(self, bucket: int, token: torch.Tensor, position: int) -> Any:
        import torch

        try:
            self.input_ids.copy_(token)
            self.position.fill_(position)
            stream = torch.cuda.Stream(device=self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream):  # warm-up: lazy initialisations happen outside the capture
                for _ in range(WARMUP_STEPS):
                    self._forward(bucket)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            # thread_local: CUDA calls of other threads (a tool on the same GPU) neither break
            # this capture nor fail because of it
            with torch.cuda.graph(graph, pool=self.pool, capture_error_mode="thread_local"):
                self._forward(bucket)
            torch.cuda.synchronize(self.device)
        except Exception as exc:  # noqa: BLE001 - any failure: decode eagerly instead
            self.failed = f"{type(exc).__name__}: {exc}"
            logger.warning("CUDA graph capture failed (%s); decoding without graphs", self.failed)
            return None
        self.graphs[bucket] = graph
        self.captured_at = self.kv.layers[0].key_buffer.data_ptr()
        logger.debug("captured the decode step for %d positions", bucket)
        return graph


def _graph_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class GraphStepLayer(DynamicLayer):
        """Writes one position given as a device tensor and returns the first ``bucket`` positions."""

        def __init__(self, layer: Any, position: torch.Tensor, bucket: int) -> None:
            super().__init__()
            self.layer = layer
            self.position_index = position.reshape(-1)
            self.bucket = bucket
            self.is_initialized = True

        def update(
            self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
        ) -> tuple[torch.Tensor, torch.Tensor]:
            self.layer.key_buffer.index_copy_(2, self.position_index, key_states)
            self.layer.value_buffer.index_copy_(2, self.position_index, value_states)
            return self.layer.key_buffer[:, :, : self.bucket], self.layer.value_buffer[:, :, : self.bucket]

        def get_seq_length(self) -> int:
            return self.layer.length

    return GraphStepLayer


def graph_decoder(loaded: LoadedModel, parts: ModelParts, positions: int) -> GraphDecoder | None:
    """The model's graph decoder with room for ``positions`` (built or rebuilt bigger when needed)."""
    device = loaded.input_device
    if not graphs_available(device):
        return None
    decoder = loaded.accelerators.get("graphs")
    if decoder is not None and decoder.fits(positions) and decoder.failed is None:
        return decoder
    if decoder is not None and decoder.failed is not None:
        return None
    capacity = positions if decoder is None else max(positions, 2 * decoder.capacity)
    dtype = parts.head.weight.dtype
    try:
        decoder = GraphDecoder(parts, capacity, device, dtype)
    except Exception as exc:  # noqa: BLE001 - e.g. out of memory for the buffers: decode eagerly instead
        logger.warning(
            "could not set up CUDA graph decoding (%s: %s); decoding without graphs", type(exc).__name__, exc
        )
        return None
    loaded.accelerators["graphs"] = decoder
    loaded.set_extra_bytes("graphs", decoder.kv.nbytes())
    return decoder
