"""ChatLlava on tiny real checkpoints: generation, streaming, images, loading, errors."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import sys
import threading

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, SystemMessage
from PIL import Image

from agent import ChatLlava
from agent.core.defaults import CHAT_MODEL_CPU, CHAT_MODEL_GPU
from agent.core.errors import (
    ContextLengthError,
    ImageError,
    InputError,
    ModelLoadError,
    ModelNotFoundError,
    QuantizationError,
)
from agent.core.model_manager import get_model_manager
from agent.core.runtime import cpu_supports_bf16, resolve_precision
from agent.llava.loading import resolve_spec
from agent.llava.prompting import image_capacity

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]



MAX_TOKENS = 12


def _png_b64(color=(200, 30, 30), size=(24, 24)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _truncated_png_b64() -> str:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).convert("RGB").save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()[: len(buffer.getvalue()) // 2]).decode()


def _image_block(index: int) -> dict:
    return {"type": "image", "base64": _png_b64((index * 50 % 256, 80, 120)), "mime_type": "image/png"}


@pytest.fixture(scope="module")
def llm(tiny_llava_qwen2) -> ChatLlava:
    return ChatLlava(model=str(tiny_llava_qwen2), max_tokens=MAX_TOKENS, temperature=0.0, device="cpu")


@pytest.fixture(scope="module")
def llm_llama(tiny_llava_llama) -> ChatLlava:
    return ChatLlava(model=str(tiny_llava_llama), max_tokens=MAX_TOKENS, temperature=0.0, device="cpu")


# ----- generation -------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_invoke_returns_message_with_usage(family, llm, llm_llama):
    model = llm if family == "qwen2" else llm_llama
    reply = model.invoke([SystemMessage("Be brief."), HumanMessage("Hello, how are you today?")])
    assert isinstance(reply, AIMessage)
    assert isinstance(reply.content, str)
    usage = reply.usage_metadata
    assert usage["input_tokens"] > 5
    assert 1 <= usage["output_tokens"] <= MAX_TOKENS
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    assert reply.response_metadata["finish_reason"] in ("stop", "length")
    assert reply.tool_calls == []


def test_stream_yields_pieces_that_add_up_to_invoke(llm):
    chunks = list(llm.stream("The quick brown fox"))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert chunks[-1].chunk_position == "last"
    text_chunks = [c for c in chunks if c.content]
    assert len(text_chunks) >= 2, "text must stream in pieces, not arrive in one block"
    total = sum(chunks[1:], chunks[0])
    assert total.content == llm.invoke("The quick brown fox").content
    assert (
        total.usage_metadata["output_tokens"]
        == llm.invoke("The quick brown fox").usage_metadata["output_tokens"]
    )
    # token by token: about one piece per generated token
    assert len(text_chunks) >= total.usage_metadata["output_tokens"] // 3


def test_abandoned_stream_stops_generation_and_frees_the_model(tiny_llava_qwen2):
    model = ChatLlava(model=str(tiny_llava_qwen2), max_tokens=400, temperature=0.0, device="cpu")
    stream = model.stream("Tell me a long story")
    first = next(stream)
    assert isinstance(first, AIMessageChunk)
    stream.close()  # the consumer walks away: generation is cancelled and the lock released
    assert not model.loaded.lock.locked()
    assert not any(t.name == "llava-generate" and t.is_alive() for t in threading.enumerate())
    after = model.invoke("Hello", max_tokens=2)  # the model is usable again, with this call's own budget
    assert after.usage_metadata["output_tokens"] == 2 and after.response_metadata["finish_reason"] == "length"


async def test_async_invoke_and_stream(llm):
    reply = await llm.ainvoke("Hello")
    assert isinstance(reply, AIMessage)
    pieces = [chunk async for chunk in llm.astream("Hello")]
    assert sum(pieces[1:], pieces[0]).content == reply.content
    batch = await llm.abatch(["Hello", "Hi there"])
    assert [m.content for m in batch][0] == reply.content


def test_stop_sequence_trims_and_stops(llm):
    full = llm.invoke("red green blue").content
    assert len(full) >= 4
    stop = full[2:4]
    expected = full[: full.index(stop)]
    reply = llm.invoke("red green blue", stop=[stop])
    assert reply.content == expected
    assert reply.response_metadata["finish_reason"] == "stop"
    streamed = "".join(c.content for c in llm.stream("red green blue", stop=[stop]))
    assert streamed == expected
    bound = llm.bind(stop=[stop])
    assert bound.invoke("red green blue").content == expected


def test_field_stop_is_used_when_call_gives_none(tiny_llava_qwen2, llm):
    full = llm.invoke("circle square").content
    stop = full[1:3]
    model = ChatLlava(
        model=str(tiny_llava_qwen2), max_tokens=MAX_TOKENS, temperature=0.0, device="cpu", stop=[stop]
    )
    assert model.invoke("circle square").content == full[: full.index(stop)]


def test_timeout_truncates_with_finish_reason(tiny_llava_qwen2):
    model = ChatLlava(
        model=str(tiny_llava_qwen2), max_tokens=200, temperature=0.0, device="cpu", timeout=1e-4
    )
    reply = model.invoke("Tell me a long story")
    assert reply.response_metadata["finish_reason"] == "timeout"
    assert reply.usage_metadata["output_tokens"] < 200


def test_seed_makes_sampling_reproducible(tiny_llava_qwen2):
    def sample(seed):
        model = ChatLlava(model=str(tiny_llava_qwen2), max_tokens=10, temperature=1.5, top_p=1.0, seed=seed)
        return model.invoke("Pick some colours").content

    first = sample(7)
    assert sample(7) == first
    assert any(sample(seed) != first for seed in (8, 9, 10))


def test_per_call_generation_options(llm):
    reply = llm.invoke("Hello", max_tokens=3)
    assert reply.usage_metadata["output_tokens"] <= 3
    with pytest.raises(InputError, match="max_new_tokens"):
        llm.invoke("Hello", max_tokens=0)


# ----- images -----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("n_images", [1, 2, 5])
def test_multi_image_conversations(family, n_images, llm, llm_llama):
    model = llm if family == "qwen2" else llm_llama
    messages, index = [], 0
    while index < n_images:  # images spread over turns, up to two per turn
        blocks = [_image_block(i) for i in range(index, min(index + 2, n_images))]
        index += len(blocks)
        messages += [
            HumanMessage(content=[*blocks, {"type": "text", "text": "What is this?"}]),
            AIMessage("A shape."),
        ]
    messages.append(HumanMessage("Compare them."))
    reply = model.invoke(messages, max_tokens=4)
    assert isinstance(reply, AIMessage)
    kept = min(n_images, image_capacity(model.loaded.config))
    assert kept == (1 if family == "llama" else n_images)
    # each kept image costs the model's image tokens; dropped ones only a short text reference
    text_only = model.invoke([HumanMessage("What is this?")], max_tokens=1).usage_metadata["input_tokens"]
    assert reply.usage_metadata["input_tokens"] > text_only + 16 * kept - 1


def test_image_forms_through_invoke(llm, tmp_path):
    path = tmp_path / "cat.png"
    path.write_bytes(base64.b64decode(_png_b64()))
    forms = [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{_png_b64()}"}},
        {"type": "image_url", "image_url": {"url": str(path)}},
        {"type": "image", "url": path.as_uri()},
        {"type": "image", "image": Image.new("RGB", (30, 20), "blue")},
    ]

    def prompt_tokens(blocks: list[dict]) -> int:
        message = HumanMessage(content=[{"type": "text", "text": "Describe."}, *blocks])
        return llm.invoke([message], max_tokens=1).usage_metadata["input_tokens"]

    none, one = prompt_tokens([]), prompt_tokens(forms[:1])
    assert one - none >= 16  # an image is its 16 image tokens (and the template's separator)
    for form in forms[1:]:
        assert prompt_tokens([form]) == one, form
    assert prompt_tokens(forms) == none + 4 * (one - none)  # every form reaches the model as an image


@pytest.mark.parametrize(
    ("block", "match"),
    [
        (
            {"type": "image", "base64": base64.b64encode(b"").decode() or "", "mime_type": "image/png"},
            "has none of",
        ),
        (
            {
                "type": "image",
                "base64": base64.b64encode(b"not an image" * 4).decode(),
                "mime_type": "image/png",
            },
            "not an image",
        ),
        (
            {"type": "image_url", "image_url": {"url": "data:image/png;base64," + _truncated_png_b64()}},
            "corrupt|truncated",
        ),
        ({"type": "image", "base64": _png_b64(), "mime_type": "video/mp4"}, "not an image type"),
        ({"type": "image", "url": "https://example.com/cat.png"}, "allow_remote_images"),
    ],
    ids=["empty", "not-image", "corrupt", "unsupported", "remote"],
)
def test_bad_images_name_message_and_block(llm, block, match):
    messages = [HumanMessage("hi"), AIMessage("hello"), HumanMessage(content=["look:", block])]
    with pytest.raises(ImageError, match=f"message 2, block 1: .*({match})"):
        llm.invoke(messages)


def test_oversized_image_is_refused(llm):
    buffer = io.BytesIO()
    Image.new("1", (8000, 7000)).save(buffer, "PNG")
    bomb = base64.b64encode(buffer.getvalue()).decode()
    with pytest.raises(ImageError, match="message 0, block 0: .*decompression bomb"):
        llm.invoke([HumanMessage(content=[{"type": "image", "base64": bomb, "mime_type": "image/png"}])])


# ----- errors -----------------------------------------------------------------------------------


def test_prompt_longer_than_context(llm):
    with pytest.raises(
        ContextLengthError, match=r"prompt is \d+ tokens and max_new_tokens is 2040.*context of 2048"
    ):
        llm.invoke("Hello there, how are you doing today my friend?", max_tokens=2040)
    long_text = "red green blue yellow " * 800
    with pytest.raises(ContextLengthError, match="context of 2048"):
        llm.invoke(long_text)


def test_unknown_tool_choice_lists_bound_tools(llm):
    def caption_image(image: str) -> str:
        """Caption an image file."""
        return image

    with pytest.raises(InputError, match=r"tool_choice 'draw'.*bound tools \(caption_image\)"):
        llm.bind_tools([caption_image], tool_choice="draw")
    with pytest.raises(InputError, match="bound tools"):
        llm.bind_tools([caption_image], tool_choice={"type": "function", "function": {"name": "nope"}})


def test_missing_model_while_offline(monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = ChatLlava(model="llava-hf/no-such-tiny-model", device="cpu")
    with pytest.raises(ModelNotFoundError) as info:
        model.invoke("hi")
    message = str(info.value)
    assert "llava-hf/no-such-tiny-model" in message
    assert str(tmp_path / "hub") in message
    assert "local folder" in message and "ChatLlava(model=" in message


def test_missing_local_folder(tmp_path):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        ChatLlava(model=str(tmp_path / "nowhere"), device="cpu").invoke("hi")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="no config.json"):
        ChatLlava(model=str(tmp_path / "empty"), device="cpu").invoke("hi")


def test_bitsandbytes_missing(monkeypatch, tiny_llava_qwen2):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import now fails, as when not installed
    # float16 compute: a cache key no other test loads, so the load path really runs
    model = ChatLlava(model=str(tiny_llava_qwen2), quantization="4bit", dtype="float16", device="cpu")
    with pytest.raises(QuantizationError, match=r"pip install -U bitsandbytes.*quantization='none'"):
        model.invoke("hi")


def test_auto_on_cpu_without_bitsandbytes_is_never_four_bit(monkeypatch):
    from agent.core import runtime

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as when it is not installed
    monkeypatch.setattr(runtime, "cpu_decode_timings", lambda: {"4bit": 1.0, "int8-weights": 3.0, "none": 2.0})
    assert resolve_precision("auto", "auto", "cpu")[0] == "none"  # NF4 measured fastest, but not installed now
    monkeypatch.setattr(runtime, "cpu_decode_timings", lambda: {"4bit": 1.0, "int8-weights": 2.0, "none": 3.0})
    assert resolve_precision("auto", "auto", "cpu")[0] == "int8-weights"


def test_unsupported_device():
    with pytest.raises(InputError, match="device 'tpu'"):
        resolve_spec("x", device="tpu")


# ----- loading, precision, sharing ------------------------------------------------------------


def test_auto_precision_choices():
    assert resolve_precision("auto", "auto", "cuda")[0] == "4bit"
    native = "bfloat16" if cpu_supports_bf16() else "float32"
    assert resolve_precision("auto", "auto", "cpu") == ("4bit", native)  # bitsandbytes is installed here
    assert resolve_precision("none", "auto", "cpu") == ("none", native)
    assert resolve_precision("auto", "auto", "mps") == ("none", "float16")
    assert resolve_precision("none", "float32", "cpu") == ("none", "float32")
    assert resolve_precision("4bit", "auto", "cpu") == ("4bit", native)
    with pytest.raises(InputError, match="quantization '3bit'"):
        resolve_precision("3bit", "auto", "cpu")


def test_auto_on_cpu_is_the_fastest_measured_decode_that_fits(monkeypatch):
    from agent.core import runtime

    native = "bfloat16" if cpu_supports_bf16() else "float32"
    timings = {"4bit": 98.0, "int8-weights": 4.1, "none": 9.1}  # measured on a 2-core AMD EPYC
    monkeypatch.setattr(runtime, "cpu_decode_timings", lambda: timings)
    assert resolve_precision("auto", "auto", "cpu", weights_bytes=10 << 20) == ("int8-weights", native)
    assert resolve_precision("auto", "auto", "cpu", weights_bytes=1 << 50)[0] == "4bit"  # would not fit
    assert resolve_precision("auto", "auto", "cpu")[0] == "4bit"  # size unknown: the memory-safe choice
    assert resolve_precision("4bit", "auto", "cpu", weights_bytes=10 << 20)[0] == "4bit"  # asked for
    timings.update({"int8-weights": 20.0})
    assert resolve_precision("auto", "auto", "cpu", weights_bytes=10 << 20)[0] == "none"
    timings.update({"4bit": 3.0})
    assert resolve_precision("auto", "auto", "cpu", weights_bytes=10 << 20)[0] == "4bit"
    with pytest.raises(InputError, match="'int8-weights' runs on CPU only"):
        resolve_precision("int8-weights", "auto", "cuda")
    with pytest.raises(InputError, match="not for fine-tuning"):
        runtime.resolve_training_precision("cpu", "auto", "int8-weights")


def test_this_cpus_decode_speeds_are_measured_once_and_kept(tiny_llava_qwen2, tmp_path, monkeypatch):
    import json
    import time

    from agent.core import runtime
    from agent.core.runtime import CPU_DECODE_CHOICES, cpu_decode_timings, cpu_fastest_decode
    from agent.llava.loading import checkpoint_bytes

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    record = tmp_path / "llava-agent" / "cpu-decode.json"
    cpu_decode_timings.cache_clear()
    started = time.perf_counter()
    timings = cpu_decode_timings()
    assert time.perf_counter() - started < 30 and set(timings) == set(CPU_DECODE_CHOICES)
    assert all(value > 0 for value in timings.values())  # bitsandbytes and the int8 kernel are installed here
    assert cpu_fastest_decode() == min(timings, key=timings.get)
    assert cpu_decode_timings.cache_info().misses == 1 and cpu_decode_timings() is timings
    kept = json.loads(record.read_text())
    assert kept["milliseconds"] == timings

    def measure_again():
        raise AssertionError("measured again")

    monkeypatch.setattr(runtime, "measure_cpu_decode", measure_again)  # a new process reads the record
    cpu_decode_timings.cache_clear()
    assert cpu_decode_timings() == timings
    record.write_text(json.dumps({**kept, "identity": "another machine"}))  # another CPU or version: measured
    monkeypatch.setattr(runtime, "measure_cpu_decode", lambda: {"4bit": 1.0, "int8-weights": 3.0, "none": 2.0})
    cpu_decode_timings.cache_clear()
    assert cpu_fastest_decode() == "4bit" and json.loads(record.read_text())["identity"] == kept["identity"]
    record.write_text(json.dumps({**kept, "milliseconds": {**timings, "none": "fast"}}))  # not a number: measured
    cpu_decode_timings.cache_clear()
    assert cpu_fastest_decode() == "4bit"
    record.write_text("{not json")  # unreadable: measured again, not an error
    monkeypatch.setattr(runtime, "measure_cpu_decode",
                        lambda: {"4bit": float("inf"), "int8-weights": 3.0, "none": 2.0})
    cpu_decode_timings.cache_clear()
    assert cpu_fastest_decode() == "none" and json.loads(record.read_text())["milliseconds"]["4bit"] is None
    cpu_decode_timings.cache_clear()  # the rest of the session reads this machine's own record

    size = checkpoint_bytes(str(tiny_llava_qwen2))
    assert size == sum(f.stat().st_size for f in tiny_llava_qwen2.glob("*.safetensors")) > 0
    assert checkpoint_bytes("no-such-org/no-such-model") is None


def test_auto_on_this_cpu_follows_its_measurement(tiny_llava_qwen2):
    from agent.core.runtime import cpu_decode_timings, cpu_fastest_decode

    spec = resolve_spec(str(tiny_llava_qwen2), device="cpu")
    timings = cpu_decode_timings()
    assert spec.quantization == cpu_fastest_decode() == min(timings, key=timings.get)  # a tiny checkpoint fits


def test_this_cpus_head_speeds_are_measured_once_and_kept(tmp_path, monkeypatch):
    from agent.llava.output_head import cpu_head_timings

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    record = tmp_path / "llava-agent" / "cpu-head.json"
    cpu_head_timings.cache_clear()
    try:
        _head_measurement_checks(tmp_path, record, monkeypatch)
    finally:
        cpu_head_timings.cache_clear()  # the rest of the session reads this machine's own record


def _head_measurement_checks(tmp_path, record, monkeypatch):
    import json

    from agent.llava import output_head
    from agent.llava.output_head import (
        CPU_HEAD_CHOICES,
        cpu_fastest_head,
        cpu_head_timings,
        resolve_head_mode,
    )

    timings = cpu_head_timings()
    assert set(timings) == set(CPU_HEAD_CHOICES) and all(value > 0 for value in timings.values())
    assert cpu_fastest_head() == min(timings, key=timings.get) == resolve_head_mode("auto", "cpu")
    assert resolve_head_mode("auto", "cuda") == "model" and resolve_head_mode("int4", "cuda") == "model"
    assert resolve_head_mode("int4", "cpu") == "int4"  # asked for: taken where the kernel is
    assert json.loads(record.read_text())["milliseconds"] == timings

    monkeypatch.setattr(output_head, "measure_cpu_head", lambda: pytest.fail("measured again"))
    cpu_head_timings.cache_clear()
    assert cpu_head_timings() == timings  # a new process reads the record
    kept = json.loads(record.read_text())
    assert kept["method"] == "fastest-of-5"
    monkeypatch.setattr(output_head, "measure_cpu_head", lambda: {"int4": 0.003, "int8": 0.001, "model": 0.002})
    record.write_text(json.dumps({k: v for k, v in kept.items() if k != "method"}))  # an earlier method's
    cpu_head_timings.cache_clear()
    assert cpu_fastest_head() == "int8" and json.loads(record.read_text())["milliseconds"]["int8"] == 1.0
    monkeypatch.setattr(output_head, "measure_cpu_head", lambda: {"int4": 0.001, "int8": 0.003, "model": 0.002})
    record.write_text("{not json")  # unreadable: measured again, not an error
    cpu_head_timings.cache_clear()
    assert cpu_fastest_head() == "int4"
    monkeypatch.setattr(output_head, "int4_kernel_available", lambda device="cpu": False)
    assert cpu_fastest_head() == "model"  # measured fastest, but its kernel is not here now


def test_default_models():
    assert resolve_spec(None, device="cpu").model == CHAT_MODEL_CPU
    assert CHAT_MODEL_GPU == "llava-hf/llava-1.5-7b-hf"


def test_one_copy_of_weights_shared(llm, tiny_llava_qwen2):
    other = ChatLlava(model_name=str(tiny_llava_qwen2), temperature=0.7, max_tokens=3, device="cpu")
    assert other.loaded is llm.loaded
    bound = llm.bind_tools([{"type": "function", "function": {"name": "noop", "parameters": {}}}])
    assert bound.bound is llm
    assert get_model_manager().loaded_keys().count(("chat", llm.spec)) == 1


def test_the_chat_model_counts_in_the_model_manager_and_is_held_while_it_generates(llm):
    """One budget for every model: the chat model's weights are in it, and it is never evicted mid-reply."""
    manager = get_model_manager()
    llm.loaded  # noqa: B018 - loaded through the manager
    key = ("chat", llm.spec)
    assert key in manager.loaded_keys()
    assert manager.used_bytes("cpu") >= sum(p.numel() * p.element_size() for p in llm.loaded.model.parameters())
    stream = llm.stream("Hello there")
    next(stream)  # generation has started
    assert manager.evict(key) is False  # held by the running generation
    list(stream)
    assert manager.evict(key) is True  # idle now: evictable like any tool model
    assert key not in manager.loaded_keys()
    assert llm.invoke("Hello").content is not None  # and loaded again on the next use
    assert key in manager.loaded_keys()


def test_threads_share_one_model_safely(llm):
    prompts = ["Hello", "What colour is the shape?", "A dog in the park", "Hello"]
    expected = [llm.invoke(p).content for p in prompts]
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            results[index] = llm.invoke(prompts[index]).content
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert [results[i] for i in range(len(prompts))] == expected


def test_four_bit_on_cpu(tiny_llava_qwen2):
    import bitsandbytes as bnb
    import torch

    from agent.core.runtime import native_dtype, torch_dtype

    model = ChatLlava(
        model=str(tiny_llava_qwen2), quantization="4bit", device="cpu", max_tokens=4, temperature=0
    )
    reply = model.invoke([HumanMessage(content=[_image_block(0), {"type": "text", "text": "What is it?"}])])
    assert isinstance(reply, AIMessage) and reply.usage_metadata["output_tokens"] >= 1
    network = model.loaded.model
    language_linears = [
        m for n, m in network.named_modules() if "language_model" in n and isinstance(m, torch.nn.Linear)
    ]
    assert language_linears and all(isinstance(m, bnb.nn.Linear4bit) for m in language_linears)
    kept_full = [
        m for n, m in network.named_modules() if ("vision_tower" in n or "multi_modal_projector" in n)
    ]
    assert any(type(m) is torch.nn.Linear for m in kept_full)
    assert not any(isinstance(m, (bnb.nn.Linear4bit, bnb.nn.Linear8bitLt)) for m in kept_full)
    assert network.lm_head.__class__ is torch.nn.Linear
    assert network.lm_head.weight.dtype == torch_dtype(native_dtype("cpu"))  # bf16 where the CPU has it
    quant_config = network.config.quantization_config
    assert quant_config.bnb_4bit_quant_type == "nf4" and quant_config.bnb_4bit_use_double_quant


def test_eight_bit_on_cpu(tiny_llava_llama):
    import bitsandbytes as bnb

    model = ChatLlava(
        model=str(tiny_llava_llama), quantization="8bit", device="cpu", max_tokens=3, temperature=0
    )
    reply = model.invoke("hi")
    assert 1 <= reply.usage_metadata["output_tokens"] <= 3
    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in model.loaded.model.modules())


def test_from_config(tiny_llava_qwen2):
    from agent.core.config import ModelSection

    section = ModelSection(model=str(tiny_llava_qwen2), max_new_tokens=5, temperature=0.0, device="cpu")
    model = ChatLlava.from_config(section)
    assert model.max_new_tokens == 5 and model.model == str(tiny_llava_qwen2)
    reply = model.invoke("hi")
    assert reply.usage_metadata["output_tokens"] <= 5
    same = ChatLlava(model=str(tiny_llava_qwen2), max_new_tokens=5, temperature=0.0, device="cpu").invoke("hi")
    assert reply.content == same.content  # the section's settings, nothing else, decide the reply


# ----- adapters ---------------------------------------------------------------------------------


def test_adapter_applied_at_load(tiny_llava_qwen2, lora_adapter, llm):
    import warnings

    import torch
    from peft import PeftModel

    model = ChatLlava(
        model=str(tiny_llava_qwen2), adapter=str(lora_adapter), device="cpu", max_tokens=MAX_TOKENS
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = model.loaded
    # the load prints nothing to the user: peft's read of a deprecated transformers property is silenced
    assert not [str(w.message) for w in caught if issubclass(w.category, FutureWarning)]
    assert isinstance(loaded.model, PeftModel)
    assert model.loaded is not llm.loaded
    assert isinstance(model.invoke("The quick brown fox"), AIMessage)
    # the (non-zero) LoRA weights change what the model computes
    inputs = llm.loaded.processor(text=["The quick brown fox"], return_tensors="pt")
    with torch.inference_mode():
        adapted = model.loaded.model(**inputs).logits
        base = llm.loaded.model(**inputs).logits
    assert adapted.shape == base.shape
    assert not torch.allclose(adapted.float(), base.float())


def test_adapter_errors(tiny_llava_qwen2, lora_adapter, tmp_path):
    empty = tmp_path / "not-an-adapter"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="not a LoRA adapter folder"):
        ChatLlava(model=str(tiny_llava_qwen2), adapter=str(empty), device="cpu").invoke("hi")
    mismatched = tmp_path / "mismatched"
    mismatched.mkdir()
    config = json.loads((lora_adapter / "adapter_config.json").read_text())
    config["target_modules"] = ["no_such_projection"]
    (mismatched / "adapter_config.json").write_text(json.dumps(config))
    (mismatched / "adapter_model.safetensors").write_bytes(
        (lora_adapter / "adapter_model.safetensors").read_bytes()
    )
    with pytest.raises(ModelLoadError, match="does not match the model"):
        ChatLlava(model=str(tiny_llava_qwen2), adapter=str(mismatched), device="cpu").invoke("hi")


def test_import_agent_does_not_import_torch():
    import subprocess

    code = (
        "import sys, agent, agent.llava.chat_model, agent.llava.prompting, agent.llava.messages, agent.llava.loading; "
        "print(sorted(m for m in ('torch', 'transformers', 'bitsandbytes', 'peft') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"


def test_asyncio_concurrent_calls(llm):
    async def main():
        return await asyncio.gather(*(llm.ainvoke("Hello") for _ in range(3)))

    replies = asyncio.run(main())
    assert len({r.content for r in replies}) == 1
