"""Pure pieces of the decode loop: grouped attention, the quantized head copies, sampling, preallocated KV buffers."""

from __future__ import annotations

import pytest
import torch

from agent.core.errors import InputError
from agent.core.int8_weights import quantize_groups_int4
from agent.llava.decode_attention import enabled, grouped_attention
from agent.llava.decode_setup import DecodeSettings
from agent.llava.kv_cache import KVBuffers, cache_arguments, cache_keyword
from agent.llava.output_head import RESCORED, OutputHead, quantize_rows_int8
from agent.llava.sampling import Sampler


def _reference_attention(query, key, value, mask):
    groups = query.shape[1] // key.shape[1]
    return torch.nn.functional.scaled_dot_product_attention(
        query.double(),
        key.double().repeat_interleave(groups, 1),
        value.double().repeat_interleave(groups, 1),
        attn_mask=mask,
    ).transpose(1, 2)


@pytest.mark.parametrize("queries", [1, 4])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_grouped_attention_is_sdpa(queries, dtype):
    generator = torch.Generator().manual_seed(queries)
    query = torch.randn(1, 6, queries, 16, generator=generator).to(dtype)
    key = torch.randn(1, 2, 40, 16, generator=generator).to(dtype)
    value = torch.randn(1, 2, 40, 16, generator=generator).to(dtype)
    mask = torch.ones(1, 1, queries, 40, dtype=torch.bool)
    mask[..., 37:] = False
    mask[0, 0, 0, 5] = False
    reference = _reference_attention(query, key, value, mask)
    ours = grouped_attention(query, key, value, mask, 16**-0.5)
    assert ours.shape == reference.shape and ours.dtype == dtype
    tolerance = 1e-6 if dtype == torch.float32 else 1e-2
    assert float((ours.double() - reference).norm() / reference.norm()) < tolerance
    additive = torch.zeros(mask.shape).masked_fill(~mask, -float("inf"))
    assert torch.allclose(grouped_attention(query, key, value, additive, 16**-0.5), ours)


def test_decode_attention_is_per_thread_and_scoped():
    import threading

    from agent.llava import decode_attention

    seen = []
    with enabled():
        assert decode_attention._ENABLED.get()
        thread = threading.Thread(target=lambda: seen.append(decode_attention._ENABLED.get()))
        thread.start()
        thread.join()
    assert seen == [False] and not decode_attention._ENABLED.get()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_int8_head_rows_and_full_agree(dtype):
    torch.manual_seed(0)
    linear = torch.nn.Linear(32, 500, bias=False).to(dtype)
    quantized, scales = quantize_rows_int8(linear.weight.detach())
    error = (quantized.float() * scales[:, None] - linear.weight.float()).abs().max()
    assert error <= scales.max() / 2 + 1e-6  # round to nearest: half a step at most
    hidden = torch.randn(1, 32, dtype=dtype)
    for precision in ("model", "int8"):
        head = OutputHead(linear, precision)
        full = head.full(hidden)
        assert full.shape == (1, 500) and full.dtype == torch.float32
        ids = torch.tensor([3, 17, 499])
        assert torch.allclose(head.rows(hidden, ids), full[:, ids], rtol=1e-2, atol=1e-2)
    assert OutputHead(linear, "int8").extra_bytes == 500 * 32 + 500 * 2  # bf16 scales: the kernel runs in bf16
    with pytest.raises(ValueError, match="precision"):
        OutputHead(linear, "fp4")
    assert OutputHead(linear, "int4").rows(hidden, torch.tensor([3])).shape == (1, 1)


def test_int4_groups_round_to_nearest_within_their_range():
    torch.manual_seed(0)
    weight = torch.randn(100, 64) * 0.05
    packed, scales_and_zeros = quantize_groups_int4(weight, group=32)
    assert scales_and_zeros.shape == (2, 128, 2)  # groups x rows padded to 64 x (scale, zero)
    # one-hot inputs read the dequantized weight back through the kernel, column by column
    dequantized = torch.ops.aten._weight_int4pack_mm_for_cpu(
        torch.eye(64, dtype=torch.bfloat16), packed, 32, scales_and_zeros
    ).float().T[:100]
    step = scales_and_zeros[..., 0].float().T[:100].repeat_interleave(32, dim=1)
    assert ((dequantized - weight).abs() <= step / 2 + weight.abs() / 128 + 1e-6).all()
    assert (dequantized - weight).abs().max() > 0  # it is 4-bit: not exact
    with pytest.raises(ValueError, match="divisible by 32"):
        quantize_groups_int4(torch.randn(64, 48))


@pytest.mark.parametrize("precision", ["int8", "int4"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_quantized_heads_rescore_their_candidates_with_the_model_rows(precision, dtype):
    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 500, bias=True).to(dtype)
    model, copy = OutputHead(linear, "model"), OutputHead(linear, precision)
    if precision == "int4":  # rows padded to 64; a bf16 scale and zero per group of 32
        assert copy.extra_bytes == 512 * 64 // 2 + 2 * 512 * 2 * 2
    raw_disagreements = 0
    for _ in range(200):
        hidden = torch.randn(1, 64, dtype=dtype)
        with torch.no_grad():
            exact, screened = model.full(hidden), copy.full(hidden)
            if precision == "int8":
                raw = torch._weight_int8pack_mm(hidden.bfloat16(), *copy._int8)
            else:
                raw = torch.ops.aten._weight_int4pack_mm_for_cpu(hidden.bfloat16(), copy._int4[0], 32, copy._int4[1])
            raw = raw[:, :500].float() + linear.bias.float()
            ids = torch.tensor([0, 63, 64, 499])
            assert torch.equal(copy.rows(hidden, ids), model.rows(hidden, ids))
            candidates = raw.topk(RESCORED).indices[0]
            assert torch.equal(screened[0, candidates], model.rows(hidden, candidates)[0])  # the model's rows
        assert screened.shape == (1, 500) and screened.dtype == torch.float32
        assert screened.argmax() == exact.argmax()
        others = torch.ones(500, dtype=torch.bool)
        others[candidates] = False
        assert torch.equal(screened[0, others], raw[0, others])  # the rest: the copy's approximation
        assert (screened - exact).abs().max() <= 0.15 * exact.abs().max()
        raw_disagreements += int(raw.argmax() != exact.argmax())
    if precision == "int4":
        assert raw_disagreements > 0  # without the rescoring int4 alone picks another token now and then


class _AllowOnly:
    """A constraint in free text that leaves ``allowed`` finite (the full-vocabulary path)."""

    def __init__(self, allowed: torch.Tensor) -> None:
        self.banned = torch.ones(500, dtype=torch.bool)
        self.banned[allowed] = False

    def allowed_ids(self, remaining, vocab_size):
        return None

    def apply(self, scores, remaining):
        scores[0, self.banned] = -float("inf")
        return scores


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_a_copys_candidates_are_the_best_tokens_the_mask_leaves(precision):
    """Rescoring after the constraint: the pick is the model head's among the allowed tokens."""
    from agent.llava.decode_setup import DecodeStats
    from agent.llava.sampling import _scores

    torch.manual_seed(0)
    linear = torch.nn.Linear(64, 500, bias=False)
    model, copy = OutputHead(linear, "model"), OutputHead(linear, precision)
    for _ in range(100):
        hidden = torch.randn(1, 64)
        with torch.no_grad():
            exact = model.full(hidden)
            # allow 300 tokens, none of them among the copy's (or the model's) 40 best
            ranked = exact.argsort(descending=True)[0]
            allowed = ranked[40:][torch.randperm(460)[:300]]
            _, logits = _scores(hidden, copy, _AllowOnly(allowed), 8, DecodeStats(), False)
        best_allowed = allowed[exact[0, allowed].argmax()]
        assert int(logits.argmax()) == int(best_allowed)
        assert torch.isinf(logits[0, ranked[:40]]).all()
        # the model's own logit, not the copy's (which is off by up to 15%): recomputed for a few rows,
        # so equal up to the order a matmul sums in, which depends on its shape and thread count
        torch.testing.assert_close(logits[0, best_allowed], exact[0, best_allowed], rtol=1e-5, atol=1e-6)


def test_sampler_greedy_top_k_and_top_p():
    logits = torch.tensor([[0.0, 3.0, 1.0, -float("inf")]])
    assert Sampler(0.0, 1.0, None).pick(logits) == 1
    torch.manual_seed(0)
    assert {Sampler(1.0, 1.0, 1).pick(logits) for _ in range(20)} == {1}  # top-k 1 is greedy
    assert {Sampler(1.0, 0.5, None).pick(logits) for _ in range(20)} == {1}  # 1 holds most of the mass
    drawn = {Sampler(5.0, 1.0, None).pick(logits) for _ in range(200)}
    assert drawn == {0, 1, 2}  # masked tokens are never drawn


def test_kv_buffers_write_in_place_grow_and_copy():
    kv = KVBuffers(num_layers=2, capacity=4)
    layer = kv.layers[0]
    first = layer.update(torch.ones(1, 2, 3, 8), torch.ones(1, 2, 3, 8))[0]
    buffer = layer.key_buffer
    layer.update(torch.full((1, 2, 1, 8), 2.0), torch.zeros(1, 2, 1, 8))
    assert layer.key_buffer is buffer  # written in place, not concatenated
    assert first.shape[2] == 3 and layer.keys.shape[2] == 4
    layer.update(torch.full((1, 2, 300, 8), 3.0), torch.zeros(1, 2, 300, 8))
    assert layer.capacity >= 304 and layer.keys[0, 0, :, 0].tolist()[:5] == [1, 1, 1, 2, 3]
    copy = kv.copy_prefix(4, 10)
    assert copy.layers[0].keys[0, 0, :, 0].tolist() == [1, 1, 1, 2] and copy.layers[1].length == 0
    layer.crop(-300)
    assert layer.length == 4
    kv.set_dynamic(True)
    layer.update(torch.full((1, 2, 1, 8), 5.0), torch.zeros(1, 2, 1, 8))
    assert layer.capacity == layer.length == 5


def test_decode_settings_are_checked():
    with pytest.raises(InputError, match="kv_cache"):
        DecodeSettings(kv_cache="paged")
    with pytest.raises(InputError, match="lm_head"):
        DecodeSettings(lm_head="fp8")
    with pytest.raises(InputError, match="prefix_cache_entries"):
        DecodeSettings(prefix_cache_entries=-1)


class _NewerDecoder(torch.nn.Module):
    def forward(self, input_ids=None, cache=None, use_cache=None, **kwargs):
        return cache


class _OlderDecoder(torch.nn.Module):
    def forward(self, input_ids=None, past_key_values=None, use_cache=None, **kwargs):
        return past_key_values  # a cache=... keyword would vanish into **kwargs


class _NoCacheDecoder(torch.nn.Module):
    def forward(self, input_ids=None, **kwargs):
        return None


@pytest.mark.parametrize(
    ("module", "keyword"),
    [(_NewerDecoder(), "cache"), (_OlderDecoder(), "past_key_values"), (_NoCacheDecoder(), None)],
)
def test_the_cache_goes_under_the_keyword_the_forward_takes(module, keyword):
    assert cache_keyword(module) == keyword
    marker = object()
    if keyword is None:
        with pytest.raises(TypeError, match="_NoCacheDecoder.forward takes no key/value cache argument"):
            cache_arguments(module, marker)
    else:
        assert cache_arguments(module, marker) == {keyword: marker}
        assert module(**cache_arguments(module, marker)) is marker
