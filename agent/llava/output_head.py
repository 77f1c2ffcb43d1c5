"""The language-model head of the decode loop: logits for the whole vocabulary or for a few rows.

On a 0.5B model with a 151k vocabulary the head (``lm_head``, kept unquantized by the 4-bit
recipe) is ~272 MB of bf16 read per generated token -- more than all 24 NF4 layers together. Two
ways to read less:

* **rows**: inside a tool call the constraint often allows a few tokens only (a digit, a
  closing brace, one of four tool names); then only those rows of the head are multiplied
  (:meth:`OutputHead.rows`), and the logits of every other token, which the mask would set to
  ``-inf`` anyway, are never computed.
* **int8** (``precision="int8"``): a copy of the head quantized per row (symmetric, one scale
  per vocabulary entry, the recipe of :mod:`agent.core.int8_weights`) and multiplied with
  ``torch._weight_int8pack_mm`` in bf16, half the bytes of a bf16 head. It changes the logits
  slightly; its top-1 agreement with the bf16 head is measured by
  ``bench/bench_turns.py --head-agreement``. CPU only (the op has no CUDA kernel).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from agent.core.int8_weights import quantize_rows_int8

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

HEAD_PRECISIONS = ("auto", "model", "int8")


class OutputHead:
    """Logits from the last hidden state, through the model's own head or an int8 copy of it."""

    def __init__(self, linear: Any, precision: str = "model") -> None:
        if precision not in ("model", "int8"):
            raise ValueError(f"head precision must be 'model' or 'int8', got {precision!r}")
        self.linear = linear
        self.precision = precision
        self.weight = linear.weight
        self.bias = getattr(linear, "bias", None)
        self.vocab_size = int(self.weight.shape[0])
        self._int8: tuple[torch.Tensor, torch.Tensor] | None = None
        if precision == "int8":
            import torch

            quantized, scales = quantize_rows_int8(self.weight.detach())
            # bf16 in and out whatever the model's dtype: the kernel's fp32 variant is not
            # vectorised (on a 2-core AMD EPYC it made a 0.5B fp32 model's decode 1.25x slower)
            self._int8 = (quantized, scales.to(torch.bfloat16))

    @property
    def extra_bytes(self) -> int:
        """Bytes this head holds beside the model's own weights."""
        if self._int8 is None:
            return 0
        return sum(t.numel() * t.element_size() for t in self._int8)

    def full(self, hidden: torch.Tensor) -> torch.Tensor:
        """(1, vocabulary) float32 logits of a (1, hidden) state."""
        import torch

        if self._int8 is not None:
            logits = torch._weight_int8pack_mm(hidden.to(torch.bfloat16), *self._int8).float()
            if self.bias is not None:
                logits = logits + self.bias.float()
        else:
            logits = torch.nn.functional.linear(hidden, self.weight, self.bias)
        return logits.float()

    def rows(self, hidden: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """(1, len(ids)) float32 logits of the tokens ``ids`` only."""
        import torch

        bias = self.bias.index_select(0, ids) if self.bias is not None else None
        if self._int8 is not None:
            quantized, scales = self._int8
            logits = torch._weight_int8pack_mm(
                hidden.to(torch.bfloat16), quantized.index_select(0, ids), scales.index_select(0, ids)
            ).float()
            if bias is not None:
                logits = logits + bias.float()
        else:
            logits = torch.nn.functional.linear(hidden, self.weight.index_select(0, ids), bias)
        return logits.float()
