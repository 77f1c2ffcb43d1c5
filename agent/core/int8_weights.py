"""Int8 weight-only linear layers for CPU decoding (``quantization="int8-weights"``), and the
int8 and int4 recipes of the decode loop's head copies (:mod:`agent.llava.output_head`).

Decoding one token reads every weight of the language model once, so on a CPU its speed is set
by the bytes of the weights. bitsandbytes' NF4 reads an eighth of fp32's, but its CPU kernel is
slow where it is not vectorised (a 2-core AMD EPYC without AVX-512: one 2048x4096 layer 24.5 ms
in NF4, 2.3 ms in fp32, 1.0 ms as int8 weights). Int8 weights are the middle way there: each
linear layer of the language model keeps its weight as int8, one scale per output row
(symmetric, round to nearest: the same recipe as the decode loop's int8 head copy), and

* a decode step (at most :data:`KERNEL_ROWS` positions: one token, a jump-forward run, a
  prompt-lookup draft) multiplies with ``torch._weight_int8pack_mm``, which reads the int8 weight
  and converts it in registers: a quarter of fp32's bytes;
* a prefill (more positions) converts the int8 weight to fp32, uses the ordinary matrix
  multiply (faster than the int8 kernel at many rows) and scales its output rows.

Both paths round their inputs and outputs to bf16 once (the int8 kernel's types; its fp32
variant is not vectorised), so a position computes the same values whichever path it takes, up
to the order of the sums: reusing a cached prompt prefix gives the same tokens as prefilling it.

Quantized: the language model's linear layers (attention and MLP projections), a LoRA adapter's
base layers included (its small A/B matrices stay as they are). Not quantized: the vision tower,
the projector, the embeddings and ``lm_head`` (the decode loop keeps its own int4 or int8 copy
of the head, :mod:`agent.llava.output_head`).

Quality: per-row int8 weights keep nearly all of a model's choices: on real text through the
pretrained SmolLM2-135M-Instruct, the top token agreed with fp32's at 96.4% of positions (bf16:
97.3%, NF4: 70.8%; ``bench/bench_weights_agreement.py``).
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

logger = logging.getLogger(__name__)

KERNEL_ROWS = 16
"""Positions up to which a forward pass uses the int8 kernel; more dequantize and multiply."""

QUANTIZE_CHUNK_ROWS = 16384
SKIPPED_PARTS = ("vision_tower", "multi_modal_projector", "lm_head", "lora_")
"""Module-name parts never quantized: image side, the head, and LoRA's own A/B matrices."""


INT4_GROUP = 32
"""Inputs per int4 group (one scale and offset each); the hidden size must be a multiple of it."""
INT4_BLOCK_ROWS = 64
"""An int4 weight is padded to a multiple of this many rows (torch's CPU kernel packs rows in
blocks of 64 with AVX-512, 32 without: both divide it)."""


def int8_kernel_available(device: Any = "cpu") -> bool:
    """Whether torch has the int8 weight-only matmul for ``device`` (CPU only)."""
    import torch

    return torch.device(device).type == "cpu" and hasattr(torch, "_weight_int8pack_mm")


def quantize_rows_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-row symmetric int8: ``weight ~= q * scale[:, None]``, in chunks to bound the memory used.

    The scales (returned in fp32) are exact bf16 values, so the bf16 copy the kernel takes is the
    scale ``q`` was rounded against.
    """
    import torch

    rows = weight.shape[0]
    quantized = torch.empty(weight.shape, dtype=torch.int8, device=weight.device)
    scales = torch.empty(rows, dtype=torch.float32, device=weight.device)
    for start in range(0, rows, QUANTIZE_CHUNK_ROWS):
        block = weight[start : start + QUANTIZE_CHUNK_ROWS].float()
        # the scale as the kernel will hold it (bf16), rounded up so no weight needs more than 127
        exact = block.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        rounded = exact.bfloat16()
        up = torch.nextafter(rounded, torch.full_like(rounded, float("inf")))
        scale = torch.where(rounded.float() < exact, up, rounded).float()
        quantized[start : start + QUANTIZE_CHUNK_ROWS] = torch.round(block / scale[:, None]).clamp(-127, 127)
        scales[start : start + QUANTIZE_CHUNK_ROWS] = scale
    return quantized, scales


def int4_kernel_available(device: Any = "cpu") -> bool:
    """Whether torch has the int4 weight-only matmul for ``device`` (CPU only)."""
    import torch

    return torch.device(device).type == "cpu" and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


def quantize_groups_int4(weight: torch.Tensor, group: int = INT4_GROUP) -> tuple[torch.Tensor, torch.Tensor]:
    """``(packed, scales_and_zeros)`` for ``torch._weight_int4pack_mm_for_cpu`` (torchao's int4 layout).

    Each row is cut in groups of ``group`` inputs, each group mapped to 0..15 between its minimum
    and maximum (``w ~= (q - 8) * scale + zero``; scale and zero exact bf16 values). Rows are
    padded with zeros to a multiple of :data:`INT4_BLOCK_ROWS`; packed in chunks (the kernel's
    layout keeps each block of 64 rows to itself) to bound the memory used.
    """
    import torch

    rows, columns = weight.shape
    if columns % group:
        raise ValueError(f"an int4 weight needs an input size divisible by {group}, got {columns}")
    padded = -(-rows // INT4_BLOCK_ROWS) * INT4_BLOCK_ROWS
    packed = torch.empty(padded, columns // 2, dtype=torch.uint8)
    scales_and_zeros = torch.zeros(padded, columns // group, 2, dtype=torch.float32)
    for start in range(0, padded, QUANTIZE_CHUNK_ROWS):  # a multiple of the kernel's 64-row blocks
        end = min(start + QUANTIZE_CHUNK_ROWS, padded)
        block = torch.zeros(end - start, columns)
        block[: max(0, min(end, rows) - start)] = weight[start:end].float()
        block = block.reshape(end - start, columns // group, group)
        low, high = block.amin(-1), block.amax(-1)
        scale = ((high - low) / 15).clamp(min=1e-12).bfloat16().float()
        zero = (low + 8 * scale).bfloat16().float()
        codes = torch.round((block - zero[..., None]) / scale[..., None] + 8).clamp(0, 15)
        packed[start:end] = torch.ops.aten._convert_weight_to_int4pack_for_cpu(
            codes.reshape(end - start, columns).to(torch.int32), 1
        )
        scales_and_zeros[start:end, :, 0], scales_and_zeros[start:end, :, 1] = scale, zero
    return packed, scales_and_zeros.transpose(0, 1).contiguous().to(torch.bfloat16)


@lru_cache(maxsize=1)
def int8_linear_class() -> type:
    """The :class:`Int8Linear` module class (built on first use: it needs torch)."""
    import torch

    class Int8Linear(torch.nn.Module):
        """A ``Linear`` whose weight is int8 with one bf16 scale per output row."""

        def __init__(self, linear: torch.nn.Linear) -> None:
            super().__init__()
            self.in_features = int(linear.in_features)
            self.out_features = int(linear.out_features)
            quantized, scales = quantize_rows_int8(linear.weight.detach())
            self.register_buffer("qweight", quantized)
            self.register_buffer("scales", scales.to(torch.bfloat16))
            self.bias = linear.bias
            self.compute_dtype = linear.weight.dtype  # what peft's LoRA wrapper reads for its input dtype

        def extra_repr(self) -> str:
            return f"in_features={self.in_features}, out_features={self.out_features}, int8 weight, bias={self.bias is not None}"

        def dequantized(self, dtype: torch.dtype) -> torch.Tensor:
            """The weight in ``dtype`` (``q * scale``, the values the int8 kernel multiplies with)."""
            return self.qweight.to(dtype) * self.scales.to(dtype)[:, None]

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            shape = x.shape
            flat = x.reshape(-1, self.in_features).to(torch.bfloat16)
            if flat.shape[0] <= KERNEL_ROWS:
                out = torch._weight_int8pack_mm(flat.contiguous(), self.qweight, self.scales).to(x.dtype)
            else:
                # in fp32 whatever the model's dtype (fp16 would overflow before the scales apply),
                # the scales on the output rows (one conversion pass over the weight instead of
                # three), rounded once to bf16 as the kernel's output is
                out = (flat.float() @ self.qweight.float().T) * self.scales.float()
                out = out.to(torch.bfloat16).to(x.dtype)
            if self.bias is not None:
                out = out + self.bias.to(out.dtype)
            return out.reshape(*shape[:-1], self.out_features)

    return Int8Linear


def quantize_linear_layers(model: Any) -> tuple[int, int]:
    """Replace the language model's ``Linear`` layers of ``model`` by :class:`Int8Linear`, in place.

    Returns ``(layers replaced, bytes saved)``. LoRA-wrapped layers have their base layer replaced;
    the image side, the head and LoRA's own matrices are left as they are (:data:`SKIPPED_PARTS`).
    """
    import torch

    int8_linear = int8_linear_class()
    targets = []
    for name, module in model.named_modules():
        if type(module) is not torch.nn.Linear or any(part in name for part in SKIPPED_PARTS):
            continue
        if module.weight.device.type != "cpu":
            raise ValueError(f"int8 weights run on CPU only; {name} is on {module.weight.device}")
        targets.append(name)
    saved = 0
    with torch.no_grad():
        for name in targets:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            linear = getattr(parent, child)
            replacement = int8_linear(linear)
            saved += linear.weight.numel() * linear.weight.element_size() - (
                replacement.qweight.numel() + replacement.scales.numel() * 2
            )
            setattr(parent, child, replacement)
    logger.info("int8 weights: %d linear layers quantized, %.0f MiB saved", len(targets), saved / 2**20)
    return len(targets), saved
