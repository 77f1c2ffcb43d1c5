"""The language-model head of the decode loop: logits for the whole vocabulary or for a few rows.

On a 0.5B model with a 151k vocabulary the head (``lm_head``, kept unquantized by the 4-bit
recipe) is ~272 MB of bf16 read per generated token -- more than all 24 NF4 layers together. Two
ways to read less:

* **rows**: inside a tool call the constraint often allows a few tokens only (a digit, a
  closing brace, one of four tool names); then only those rows of the head are multiplied
  (:meth:`OutputHead.rows`), and the logits of every other token, which the mask would set to
  ``-inf`` anyway, are never computed.
* **a quantized copy** screens the whole vocabulary, and its :data:`RESCORED` best tokens are
  scored again with the model's own rows: the top token is the model head's whenever the copy
  ranks it among them (the other logits stay the copy's, which sampling sees). ``"int8"``: per
  row (symmetric, one scale per vocabulary entry, the recipe of :mod:`agent.core.int8_weights`),
  multiplied with ``torch._weight_int8pack_mm`` in bf16, half the bytes of a bf16 head.
  ``"int4"``: in groups of :data:`~agent.core.int8_weights.INT4_GROUP` inputs per row
  (asymmetric, a bf16 scale and offset per group, torchao's layout), multiplied with
  ``torch._weight_int4pack_mm_for_cpu``, a quarter of the bytes plus the groups' scales. Top-1
  agreement with the model's head on real text is measured by ``bench/bench_turns.py
  --head-agreement``; on CPU, ``auto`` takes whichever of the three :func:`measure_cpu_head`
  timed fastest here. CPU only (neither op has a CUDA kernel).
"""

from __future__ import annotations

import functools
import logging
import time
from typing import TYPE_CHECKING, Any

from agent.core.int8_weights import (
    INT4_GROUP,
    int4_kernel_available,
    int8_kernel_available,
    quantize_groups_int4,
    quantize_rows_int8,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from agent.llava.loading import LoadedModel

logger = logging.getLogger(__name__)

CPU_HEAD_CHOICES = ("int4", "int8", "model")
"""What :func:`measure_cpu_head` times, in the order a tie is broken (fewest bytes first)."""
CPU_HEAD_MEASUREMENT_FILE = "cpu-head.json"
RESCORED = 16
"""Best candidates of a quantized copy scored again with the model's own head rows."""


class OutputHead:
    """Logits from the last hidden state, through the model's own head or a quantized copy of it."""

    def __init__(self, linear: Any, precision: str = "model") -> None:
        if precision not in ("model", "int8", "int4"):
            raise ValueError(f"head precision must be 'model', 'int8' or 'int4', got {precision!r}")
        self.linear = linear
        self.precision = precision
        self.weight = linear.weight
        self.bias = getattr(linear, "bias", None)
        self.vocab_size = int(self.weight.shape[0])
        self._int8: tuple[torch.Tensor, torch.Tensor] | None = None
        self._int4: tuple[torch.Tensor, torch.Tensor] | None = None
        if precision == "int8":
            import torch

            quantized, scales = quantize_rows_int8(self.weight.detach())
            # bf16 in and out whatever the model's dtype: the kernel's fp32 variant is not
            # vectorised (on a 2-core AMD EPYC it made a 0.5B fp32 model's decode 1.25x slower)
            self._int8 = (quantized, scales.to(torch.bfloat16))
        elif precision == "int4":
            self._int4 = quantize_groups_int4(self.weight.detach())

    @property
    def extra_bytes(self) -> int:
        """Bytes this head holds beside the model's own weights."""
        copy = self._int8 or self._int4 or ()
        return sum(t.numel() * t.element_size() for t in copy)

    @property
    def quantized(self) -> bool:
        """Whether the whole-vocabulary logits come from a quantized copy (see :meth:`rescore`)."""
        return self._int8 is not None or self._int4 is not None

    def full(self, hidden: torch.Tensor) -> torch.Tensor:
        """(1, vocabulary) float32 logits of a (1, hidden) state (a copy's rescored at its best tokens)."""
        logits = self.screen(hidden)
        if self.quantized:
            self.rescore(hidden, logits, logits.topk(min(RESCORED, self.vocab_size), dim=-1).indices[0])
        return logits

    def screen(self, hidden: torch.Tensor) -> torch.Tensor:
        """(1, vocabulary) float32 logits from the copy (the model's own head when there is none)."""
        import torch

        if self._int8 is not None:
            logits = torch._weight_int8pack_mm(hidden.to(torch.bfloat16), *self._int8).float()
        elif self._int4 is not None:
            packed, scales_and_zeros = self._int4
            logits = torch.ops.aten._weight_int4pack_mm_for_cpu(
                hidden.to(torch.bfloat16), packed, INT4_GROUP, scales_and_zeros
            )[:, : self.vocab_size].float()
        else:
            return torch.nn.functional.linear(hidden, self.weight, self.bias).float()
        if self.bias is not None:
            logits = logits + self.bias.float()
        return logits

    def rescore(self, hidden: torch.Tensor, logits: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Put the model's own logits of ``candidates`` into ``logits`` (in place) and return it.

        The decode loop picks the candidates after its logits processors and constraint mask, so
        they are the best tokens that may come next, not the best of the whole vocabulary.
        """
        logits[0, candidates] = self.rows(hidden, candidates)[0]
        return logits

    def rows(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(1, len(ids)) float32 logits of the tokens ``ids`` only, from the model's own rows."""
        import torch

        bias = self.bias.index_select(0, ids) if self.bias is not None else None
        return torch.nn.functional.linear(hidden, self.weight.index_select(0, ids), bias).float()


def resolve_head_mode(mode: str, device: Any) -> str:
    """``auto``: on CPU the head measured fastest here (:func:`cpu_fastest_head`), elsewhere the model's own."""
    if mode == "auto":
        import torch

        return cpu_fastest_head() if torch.device(device).type == "cpu" else "model"
    if (mode == "int8" and not int8_kernel_available(device)) or (mode == "int4" and not int4_kernel_available(device)):
        logger.info("no %s head kernel on %s; using the model's own head", mode, device)
        return "model"
    return mode


def loaded_head(loaded: LoadedModel, linear: Any, mode: str) -> OutputHead:
    """The head of ``loaded`` (its plain ``linear`` layer) for ``mode`` ("model", "int8" or "int4"), built once.

    Kept in ``loaded.accelerators`` and its extra bytes counted in the model's memory budget. An
    int4 copy needs a hidden size divisible by its group size; another head gets the int8 copy.
    """
    key = f"head:{mode}"
    head = loaded.accelerators.get(key)
    if head is None and mode == "int4" and linear.in_features % INT4_GROUP:
        logger.info("a hidden size of %d takes no int4 head (groups of %d); using int8", linear.in_features, INT4_GROUP)
        head = loaded.accelerators[key] = loaded_head(loaded, linear, "int8")  # counted once, as int8
    if head is None:
        with loaded.accelerators_lock:
            head = loaded.accelerators.get(key)
            if head is None:
                started = time.perf_counter()
                head = OutputHead(linear, mode)
                loaded.accelerators[key] = head
                if head.extra_bytes:
                    loaded.set_extra_bytes(key, head.extra_bytes)
                    logger.info("%s copy of the head built in %.1fs (%.0f MiB)", mode,
                                time.perf_counter() - started, head.extra_bytes / 2**20)
    return head


def cpu_fastest_head() -> str:
    """The head :func:`cpu_head_timings` measured fastest on this CPU among those whose kernel is here."""
    timings = cpu_head_timings()
    usable = {"int4": int4_kernel_available("cpu"), "int8": int8_kernel_available("cpu"), "model": True}
    candidates = [name for name in CPU_HEAD_CHOICES if usable[name] and timings.get(name) is not None]
    return min(candidates, key=lambda name: timings[name]) if candidates else "model"


@functools.lru_cache(maxsize=1)
def cpu_head_timings() -> dict[str, float | None]:
    """Milliseconds of one token through a 49152x1024 head per choice of :data:`CPU_HEAD_CHOICES`.

    Measured once per machine and kept beside the decode measurement
    (``$XDG_CACHE_HOME/llava-agent/cpu-head.json``; :func:`agent.core.runtime.kept_cpu_measurement`).
    """
    from agent.core.runtime import kept_cpu_measurement

    return kept_cpu_measurement(CPU_HEAD_MEASUREMENT_FILE, CPU_HEAD_CHOICES, lambda: measure_cpu_head())


def measure_cpu_head(rows: int = 49152, hidden: int = 1024) -> dict[str, float]:
    """Seconds of one token through a ``rows`` x ``hidden`` head (the model's own in the CPU's
    native dtype, the int8 and int4 copies with their rescoring), the fastest of five interleaved
    rounds; ``inf`` where the kernel is missing. About 2 s on two cores (mostly quantizing the
    copies). The three heads (96 MiB in bf16, 192 MiB in fp32; 48 and 30 MiB as copies) are read
    in turn, so on a CPU whose cache is smaller than their sum none is still cached when its turn
    comes, as a real vocabulary's head is not after the layers of a decode step. The model's own
    head is timed in the CPU's native dtype, not the dtype a model may be loaded in.
    """
    import time

    import torch

    from agent.core.runtime import native_dtype, torch_dtype

    dtype = torch_dtype(native_dtype("cpu"))
    generator = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(hidden, rows, bias=False, dtype=dtype)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(rows, hidden, generator=generator).to(dtype))
    heads = {"model": OutputHead(linear, "model")}
    if int8_kernel_available("cpu"):
        heads["int8"] = OutputHead(linear, "int8")
    if int4_kernel_available("cpu"):
        heads["int4"] = OutputHead(linear, "int4")
    state = torch.randn(1, hidden, generator=generator).to(dtype)
    rounds: dict[str, list[float]] = {name: [] for name in heads}
    with torch.inference_mode():
        for head in heads.values():
            head.full(state)  # warm-up
        for _ in range(5):
            for name, head in heads.items():
                started = time.perf_counter()
                head.full(state)
                rounds[name].append(time.perf_counter() - started)
    timings = {name: min(rounds[name]) if name in rounds else float("inf") for name in CPU_HEAD_CHOICES}
    logger.info("one token through a %dx%d head on this CPU: %s", rows, hidden,
                ", ".join(f"{name} {value * 1e3:.1f} ms" for name, value in timings.items()))
    return timings
