"""Int8 weight-only linear layers: both paths compute the same values, and only the language model is quantized."""

from __future__ import annotations

import pytest
import torch

from agent.core.int8_weights import KERNEL_ROWS, int8_linear_class, quantize_linear_layers

pytestmark = pytest.mark.skipif(not hasattr(torch, "_weight_int8pack_mm"), reason="no int8 weight kernel")


def _linear(inputs: int = 128, outputs: int = 96, bias: bool = True, dtype=torch.float32) -> torch.nn.Linear:
    torch.manual_seed(0)
    return torch.nn.Linear(inputs, outputs, bias=bias).to(dtype).eval()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [True, False])
def test_kernel_and_dequantized_paths_compute_the_same_values(dtype, bias):
    linear = _linear(bias=bias, dtype=dtype)
    layer = int8_linear_class()(linear)
    x = torch.randn(2, 40, 128).to(dtype)
    with torch.inference_mode():
        reference = torch.nn.functional.linear(x.bfloat16().double(), layer.dequantized(torch.float64),
                                               None if linear.bias is None else linear.bias.double())
        whole = layer(x)  # 80 positions: the dequantized matmul
        rowwise = torch.cat([layer(x[:, i : i + 4]) for i in range(0, 40, 4)], dim=1)  # 4 at a time: the kernel
        full_precision = linear(x)
    assert whole.shape == rowwise.shape == (2, 40, 96) and whole.dtype == rowwise.dtype == dtype
    assert 2 * 40 > KERNEL_ROWS >= 2 * 4
    scale = reference.abs().max()
    # both round the inputs and outputs to bf16 once: they differ by the order of the sums only,
    # so nearly every value is the same bf16 number and the rest one bf16 step apart (rounding
    # the dequantized path's output twice, or not at all, makes most values differ)
    assert float((whole == rowwise).float().mean()) > 0.95
    assert float((whole.double() - rowwise.double()).abs().max()) <= float(scale) * 2**-7
    assert float((whole.double() - reference).abs().max() / scale) < 1e-2
    # and the int8 weights stay close to the full-precision layer
    assert float((whole.double() - full_precision.double()).norm() / full_precision.double().norm()) < 2e-2


def test_the_weight_takes_a_quarter_of_fp32s_bytes():
    layer = int8_linear_class()(_linear(bias=False))
    assert layer.qweight.dtype == torch.int8 and layer.qweight.shape == (96, 128)
    assert layer.qweight.numel() + 2 * layer.scales.numel() < 0.3 * 4 * 96 * 128
    error = (layer.dequantized(torch.float32) - _linear(bias=False).weight).abs().amax(dim=1)
    assert bool((error <= layer.scales.float() * 0.5001).all())  # round to nearest: half a step at most, per row


def test_fp16_inputs_do_not_overflow_on_either_path():
    linear = _linear(bias=True)
    with torch.no_grad():
        linear.weight.mul_(40.0)  # outputs in the hundreds: past fp16's range before the scales apply
    layer = int8_linear_class()(linear)
    x = torch.randn(1, 40, 128)
    with torch.inference_mode():
        reference = linear(x)
        for rows in (40, 4):
            out = torch.cat([layer(x[:, i : i + rows].half()) for i in range(0, 40, rows)], dim=1)
            assert out.dtype == torch.float16 and bool(torch.isfinite(out).all()), rows
            assert float((out.float() - reference).norm() / reference.norm()) < 2e-2, rows


class _Toy(torch.nn.Module):
    """The module names of a LLaVA in transformers v5, with a LoRA-wrapped projection."""

    def __init__(self) -> None:
        super().__init__()
        self.model = torch.nn.Module()
        self.model.vision_tower = torch.nn.Sequential(torch.nn.Linear(64, 64))
        self.model.multi_modal_projector = torch.nn.Sequential(torch.nn.Linear(64, 64))
        self.model.language_model = torch.nn.Module()
        self.model.language_model.q_proj = torch.nn.Linear(64, 64)
        wrapped = torch.nn.Module()
        wrapped.base_layer = torch.nn.Linear(64, 128)
        wrapped.lora_A = torch.nn.ModuleDict({"default": torch.nn.Linear(64, 8, bias=False)})
        wrapped.lora_B = torch.nn.ModuleDict({"default": torch.nn.Linear(8, 128, bias=False)})
        self.model.language_model.up_proj = wrapped
        self.lm_head = torch.nn.Linear(64, 500, bias=False)


def test_only_the_language_models_layers_and_lora_base_layers_are_quantized():
    toy = _Toy()
    replaced, saved = quantize_linear_layers(toy)
    int8_linear = int8_linear_class()
    quantized = sorted(name for name, module in toy.named_modules() if isinstance(module, int8_linear))
    assert quantized == ["model.language_model.q_proj", "model.language_model.up_proj.base_layer"]
    assert replaced == 2 and saved > 0.7 * 4 * (64 * 64 + 64 * 128)
    for name in ("model.vision_tower.0", "model.multi_modal_projector.0", "lm_head",
                 "model.language_model.up_proj.lora_A.default", "model.language_model.up_proj.lora_B.default"):
        assert type(toy.get_submodule(name)) is torch.nn.Linear, name
