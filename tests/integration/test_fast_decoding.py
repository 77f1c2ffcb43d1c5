"""The decode loop on the tiny checkpoints of both template families: reuse, jump-forward, cheaper steps.

Exactness is checked the strict way: at temperature 0 a conversation gives the same replies
(content, tool calls, token counts) with every switch on as with it off, with images, tools, an
adapter, threads interleaving and a cancelled stream in between. Jump-forward changes how
forced stretches are *spelled*, so it is checked by properties instead: every call sampled at
temperature 1 is valid and byte for byte what the tool protocol renders, and fewer passes run.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from pathlib import Path
from typing import Literal

import jsonschema
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from PIL import Image

from agent import ChatLlava
from agent.core.model_manager import get_model_manager
from agent.decoding.tool_protocol import format_tool_calls
from agent.llava.messages import tool_schemas
from agent.llava.prefix_cache import PREFILL_CHUNK

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]

ALL_OFF = {
    "prefix_cache": False,
    "jump_forward": False,
    "few_row_logits": False,
    "lm_head": "model",
    "kv_cache": "dynamic",
    "fast_attention": False,
    "prompt_lookup": "off",
}


def _product_tools() -> list:
    from tools.caption import CaptionImageTool
    from tools.generate import GenerateImageTool
    from tools.search import SearchImagesTool
    from tools.speak import SpeakTool

    return [CaptionImageTool(), GenerateImageTool(), SearchImagesTool(), SpeakTool()]


SCHEMAS = tool_schemas(_product_tools())
PARAMETERS = {s["function"]["name"]: s["function"]["parameters"] for s in SCHEMAS}


def caption_image(image: str, detail: Literal["short", "long"] = "short") -> str:
    """Caption an image file."""
    return f"a picture ({detail}) of {image}"


def speak(text: str, speed: float) -> str:
    """Read text aloud at a speed."""
    return text


SMALL_TOOLS = tool_schemas([caption_image, speak])  # short schemas keep the tiny models' prompts short


def _image(colour: tuple[int, int, int]) -> dict:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 24), colour).save(buffer, "PNG")
    return {"type": "image", "base64": base64.b64encode(buffer.getvalue()).decode(), "mime_type": "image/png"}


def _model(path, **fields) -> ChatLlava:
    return ChatLlava(**{"model": str(path), "device": "cpu", "temperature": 0.0, "max_tokens": 40, **fields})


def _summary(reply: AIMessage) -> tuple:
    return (
        reply.content,
        [(c["name"], c["args"]) for c in reply.tool_calls],
        reply.usage_metadata["output_tokens"],
        reply.response_metadata["finish_reason"],
    )


def _conversation(llm: ChatLlava, settings: dict, turns: int = 3) -> tuple[list[tuple], list[dict]]:
    """A thread where tool turns (forced) alternate with answers, a new image every other turn."""
    calls_model = llm.bind_tools(SMALL_TOOLS, tool_choice="any")
    answer_model = llm.bind_tools(SMALL_TOOLS)
    messages: list = [SystemMessage("You are a helpful assistant with tools.")]
    replies, stats = [], []
    for turn in range(turns):
        messages.append(
            HumanMessage(
                content=[_image((40 * turn, 90, 200)), {"type": "text", "text": f"Look at picture {turn}."}]
            )
        )
        call = calls_model.invoke(messages, **settings)
        replies.append(_summary(call))
        stats.append(call.response_metadata.get("decode"))
        messages += [call, ToolMessage(f"a shape number {turn}", tool_call_id=call.tool_calls[0]["id"])]
        answer = answer_model.invoke(messages, **settings)
        replies.append(_summary(answer))
        stats.append(answer.response_metadata.get("decode"))
        messages.append(AIMessage(answer.content))
    return replies, stats


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_prefix_cache_gives_the_same_tokens_with_the_defaults(tiny_llava_paths, family):
    """Tools, a new image every other turn, tool results: the same replies as cold prefills, most of each prompt reused."""
    llm = _model(tiny_llava_paths[family])
    llm.loaded.prefix_cache.clear()
    reference, _ = _conversation(llm, {"prefix_cache": False})
    replies, stats = _conversation(llm, {})
    assert replies == reference
    assert all(r[1] for r in replies[::2])  # the tool turns did call tools
    cached = [s["cached_tokens"] for s in stats]
    assert cached[0] == 0
    assert all(c > 0.5 * s["prompt_tokens"] for c, s in zip(cached[1:], stats[1:], strict=True))
    # a thread keeps one entry (each call's replaces the last), unless the image policy rewrote an
    # early turn: llava-1.5 keeps one image as pixels, older ones become text references
    entries = len(llm.loaded.prefix_cache)
    assert entries == 1 if family == "qwen2" else 1 <= entries <= 3


@pytest.mark.parametrize(
    ("family", "switch"),
    [
        ("qwen2", "few_row_logits"),
        ("qwen2", "kv_cache"),
        ("qwen2", "prompt_lookup"),
        ("llama", "prompt_lookup"),
        ("llama", "everything"),
    ],
)
def test_same_tokens_with_each_exact_switch_on_and_off(tiny_llava_paths, family, switch):
    llm = _model(tiny_llava_paths[family])
    reference, _ = _conversation(llm, ALL_OFF, turns=2)
    on = {
        "few_row_logits": {"few_row_logits": True},
        "kv_cache": {"kv_cache": "static"},
        "prompt_lookup": {"prompt_lookup": "always"},  # drafts in free text and calls, kept or not
        "everything": {
            "prefix_cache": True,
            "few_row_logits": True,
            "kv_cache": "static",
            "prompt_lookup": "always",
        },
    }[switch]
    replies, stats = _conversation(llm, {**ALL_OFF, **on}, turns=2)
    assert replies == reference
    if on.get("few_row_logits"):
        assert sum(s["few_row_steps"] for s in stats) > 0
    if on.get("prompt_lookup"):  # drafts were checked, so the equality above covers them
        assert sum(s["drafted_tokens"] for s in stats) > 0


@pytest.fixture(scope="module")
def tiny_llava_7b_heads(tmp_path_factory) -> Path:
    from tests.tiny_models import LLAVA_15_7B_HEADS, build_tiny_llava

    folder = tmp_path_factory.mktemp("tiny-7b-heads") / "llava"
    return build_tiny_llava(folder, "llama", text_overrides=LLAVA_15_7B_HEADS)


def _older_cache_keyword(backbone, monkeypatch) -> None:
    """Give the backbone and its language model the forward of ``transformers`` 5.x before the cache was renamed.

    There (e.g. 5.17) the cache is ``past_key_values``, and a ``cache=`` keyword falls into
    ``**kwargs`` and is never read: the model builds a fresh cache of its own. Exactly that is
    reproduced around the installed forwards, so the decode loop meets the older API on this
    version too. The backbone hands its cache down to the language model (by the old name there).
    """
    inside_backbone: list[bool] = []

    def older(installed: type, is_backbone: bool) -> type:
        def forward(self, *args, past_key_values=None, **kwargs):
            stray = kwargs.pop("cache", None)  # not an argument of the older forward: ignored
            if inside_backbone and not is_backbone:
                past_key_values = stray  # the backbone's own call, by the old name in older versions
            inside_backbone.append(is_backbone)
            try:
                return installed.forward(self, *args, cache=past_key_values, **kwargs)
            finally:
                inside_backbone.pop()

        return type(f"Older{installed.__name__}", (installed,), {"forward": forward})

    monkeypatch.setattr(backbone.language_model, "__class__", older(type(backbone.language_model), False))
    monkeypatch.setattr(backbone, "__class__", older(type(backbone), True))


@pytest.mark.parametrize("cache_keyword", ["installed", "past_key_values"])
@pytest.mark.parametrize("checkpoint", ["llama", "qwen2", "llava-1.5-7b heads"])
def test_the_graph_step_computation_on_cpu(
    tiny_llava_paths, tiny_llava_7b_heads, checkpoint, cache_keyword, monkeypatch
):
    """What a CUDA graph captures (static buffers, a bucket of positions under a mask), run uncaptured.

    Checked on both template families and on llava-1.5-7b's head layout (NF4, bf16 where the CPU
    has it), with the cache keyword of the installed ``transformers`` and with the older one. The
    reference is the eager loop on the installed API (the loop against ``generate`` is checked in
    ``test_logits_processors_apply_in_both_decoders``; over 40 random bf16 tokens, ``generate``'s
    one-piece prefill may round differently from the loop's aligned chunks).
    """
    import agent.llava.decode_loop as decode_loop
    from agent.llava import decode_attention
    from agent.llava.cuda_graphs import BUCKET, GraphDecoder
    from agent.llava.kv_cache import cache_keyword as keyword_of

    path = tiny_llava_7b_heads if checkpoint == "llava-1.5-7b heads" else tiny_llava_paths[checkpoint]
    llm = _model(path)
    text_config = llm.loaded.config.text_config
    if checkpoint == "llava-1.5-7b heads":
        assert (text_config.num_attention_heads, text_config.num_key_value_heads) == (32, 32)
        assert text_config._attn_implementation in ("sdpa", decode_attention.NAME)  # ours falls through to SDPA
    static = {**ALL_OFF, "kv_cache": "static"}
    reference, _ = _conversation(llm, static, turns=2)
    if cache_keyword == "past_key_values":
        backbone = llm.loaded.model.model
        if keyword_of(backbone) == "past_key_values":
            pytest.skip("the installed transformers takes the cache as past_key_values: the first case is this one")
        _older_cache_keyword(backbone, monkeypatch)
        assert keyword_of(backbone) == keyword_of(backbone.language_model) == "past_key_values"

    decoders: list[GraphDecoder] = []

    def uncaptured(loaded, parts, positions):
        decoder = loaded.accelerators.get("uncaptured-graphs")
        if decoder is None or not decoder.fits(positions):
            decoder = GraphDecoder(
                parts, positions, loaded.input_device, parts.head.weight.dtype, capture=False
            )
            loaded.accelerators["uncaptured-graphs"] = decoder
            decoders.append(decoder)
        return decoder

    llm.loaded.accelerators.pop("uncaptured-graphs", None)
    if cache_keyword != "installed":
        eager, _ = _conversation(llm, static, turns=2)
        assert eager == reference
    monkeypatch.setattr(decode_loop, "graph_decoder", uncaptured)
    replies, stats = _conversation(llm, {**static, "prefix_cache": True}, turns=2)
    assert replies == reference
    assert all(s["graph_steps"] > 0 for s in stats)
    assert decoders and decoders[-1].failed is None
    assert decoders[-1].capacity % BUCKET == 0


def test_a_cache_the_model_ignores_stops_the_reply_instead_of_garbage(tiny_llava_qwen2, monkeypatch):
    """Passed under a keyword the forward does not read, the cache stays empty: a clear error, not a reply."""
    import agent.llava.decode_loop as decode_loop

    llm = _model(tiny_llava_qwen2, max_tokens=4)
    _older_cache_keyword(llm.loaded.model.model, monkeypatch)
    monkeypatch.setattr(decode_loop, "cache_arguments", lambda module, cache: {"cache": cache})
    with pytest.raises(RuntimeError, match="did not write positions 0..[0-9]+ into the decode loop's key/value cache"):
        llm.invoke("Hello there.", prefix_cache=False)


def test_prefix_cache_with_an_adapter(tiny_llava_qwen2, lora_adapter):
    plain = _model(tiny_llava_qwen2)
    with_adapter = _model(tiny_llava_qwen2, adapter=str(lora_adapter))
    plain_replies, _ = _conversation(plain, {}, turns=1)  # fills the base model's cache
    reference, _ = _conversation(with_adapter, {"prefix_cache": False}, turns=2)
    replies, stats = _conversation(with_adapter, {"prefix_cache": True}, turns=2)
    assert replies == reference
    assert replies[:2] != plain_replies  # the adapter changes the replies: its cache is its own
    assert stats[0]["cached_tokens"] == 0 and stats[1]["cached_tokens"] > 0
    assert with_adapter.loaded.prefix_cache is not plain.loaded.prefix_cache


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_the_int4_head_gives_the_model_heads_replies(tiny_llava_paths, family):
    """Int4 picks the candidates and the model's rows score them: the same greedy replies, calls included."""
    llm = _model(tiny_llava_paths[family])
    reference, _ = _conversation(llm, ALL_OFF, turns=2)
    replies, stats = _conversation(llm, {**ALL_OFF, "lm_head": "int4"}, turns=2)
    assert replies == reference and all(r[1] for r in replies[::2])
    head = llm.loaded.accelerators["head:int4"]
    assert head.precision == "int4" and head.extra_bytes > 0
    assert sum(s["generated_tokens"] for s in stats) > 40


def test_prepare_builds_the_head_copy_before_the_first_reply(tiny_llava_qwen2):
    llm = _model(tiny_llava_qwen2, lm_head="int8")
    llm.loaded.accelerators.pop("head:int8", None)
    llm.loaded.accelerators.pop("attention", None)
    assert llm.prepare() is llm.loaded
    assert llm.loaded.accelerators["head:int8"].precision == "int8"
    assert "attention" in llm.loaded.accelerators
    built = set(llm.loaded.accelerators)
    assert _model(tiny_llava_qwen2, decoder="transformers", lm_head="int4").prepare() is llm.loaded
    assert set(llm.loaded.accelerators) == built  # generate decodes there: nothing of the loop's is built


def test_a_hidden_size_the_int4_groups_do_not_divide_takes_the_int8_head(tiny_llava_qwen2, monkeypatch):
    from agent.llava import decode_setup, output_head

    llm = _model(tiny_llava_qwen2)
    linear = decode_setup.model_parts(llm.loaded.model).head
    monkeypatch.setattr(output_head, "INT4_GROUP", linear.in_features * 3 // 4)  # not a divisor of the hidden size
    monkeypatch.delitem(llm.loaded.accelerators, "head:int4", raising=False)  # built by an earlier test
    head = output_head.loaded_head(llm.loaded, linear, "int4")
    assert head.precision == "int8" and head is llm.loaded.accelerators["head:int8"]
    assert llm.invoke("hi", lm_head="int4").content is not None


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_int8_weights_reuse_the_cache_exactly(tiny_llava_paths, family, monkeypatch):
    import torch

    from agent.core.int8_weights import KERNEL_ROWS, int8_linear_class

    llm = _model(tiny_llava_paths[family], quantization="int8-weights")
    language_model = llm.loaded.model.model.language_model
    assert isinstance(language_model.layers[0].mlp.down_proj, int8_linear_class())
    assert type(llm.loaded.model.lm_head).__name__ == "Linear"  # the decode loop keeps its own head copy
    kernel = torch._weight_int8pack_mm
    layers = {m.qweight.data_ptr() for m in language_model.modules() if isinstance(m, int8_linear_class())}
    rows: list[int] = []

    def counted(x, weight, scales):  # the real kernel; calls on the layers' weights (not the head's) noted
        if weight.data_ptr() in layers:
            rows.append(int(x.shape[0]))
        return kernel(x, weight, scales)

    monkeypatch.setattr(torch, "_weight_int8pack_mm", counted)
    reference, _ = _conversation(llm, {"prefix_cache": False}, turns=2)
    replies, stats = _conversation(llm, {}, turns=2)
    assert replies == reference and stats[1]["cached_tokens"] > 0
    assert all(r[1] for r in replies[::2])  # forced calls are still valid calls
    assert rows.count(1) > 100 and max(rows) <= KERNEL_ROWS  # the layers' decode steps ran the int8 kernel


def test_int8_weights_under_an_adapter(tiny_llava_qwen2, lora_adapter):
    from agent.core.int8_weights import int8_linear_class

    plain = _model(tiny_llava_qwen2, quantization="int8-weights")
    adapted = _model(tiny_llava_qwen2, quantization="int8-weights", adapter=str(lora_adapter))
    wrapped = [m for name, m in adapted.loaded.model.named_modules() if name.endswith("q_proj") and hasattr(m, "lora_A")]
    assert wrapped and all(isinstance(m.base_layer, int8_linear_class()) for m in wrapped)
    assert all(type(m.lora_A["default"]).__name__ == "Linear" for m in wrapped)
    reference, _ = _conversation(adapted, {"prefix_cache": False}, turns=1)
    replies, _ = _conversation(adapted, {}, turns=1)
    assert replies == reference
    assert replies != _conversation(plain, {}, turns=1)[0]  # the adapter still changes the replies


def test_threads_interleaving_share_the_cache_exactly(tiny_llava_any):
    llm = _model(tiny_llava_any, prefix_cache_entries=4)
    expected = {index: _conversation(llm, {"prefix_cache": False}, turns=2)[0] for index in range(2)}
    # different system prompts per thread: two entries side by side
    llm.loaded.prefix_cache.clear()
    results: dict[int, list] = {}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            results[index] = _conversation(llm, {"prefix_cache": True}, turns=2)[0]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors
    assert results == expected
    assert llm.loaded.prefix_cache.stats.hits >= 4


def test_cancelled_stream_then_the_same_reply(tiny_llava_qwen2):
    llm = _model(tiny_llava_qwen2, max_tokens=60)
    messages = [SystemMessage("Be helpful. " * 80), HumanMessage("Tell me a long story about a red circle.")]
    reference = llm.invoke(messages, prefix_cache=False)
    llm.loaded.prefix_cache.clear()
    stream = llm.stream(messages)
    next(stream)
    next(stream)
    stream.close()  # cancelled mid-reply: what was fed is stored, consistent with its tokens
    assert not llm.loaded.lock.locked()
    assert len(llm.loaded.prefix_cache) == 1
    again = llm.invoke(messages)
    assert _summary(again) == _summary(reference)
    prompt = again.usage_metadata["input_tokens"]
    assert again.response_metadata["decode"]["cached_tokens"] == (prompt - 1) // PREFILL_CHUNK * PREFILL_CHUNK


def test_a_cancel_before_the_prompt_is_read_ends_the_reply_at_once(tiny_llava_qwen2):
    llm = _model(tiny_llava_qwen2, max_tokens=60)
    messages = [SystemMessage("Be helpful. " * 80), HumanMessage("Tell me a long story about a red circle.")]
    llm.loaded.prefix_cache.clear()
    cancel = threading.Event()
    cancel.set()
    reply = llm.invoke(messages, cancel_event=cancel)
    assert reply.response_metadata["finish_reason"] == "cancelled"
    assert reply.usage_metadata["output_tokens"] == 0 and reply.content == ""
    assert reply.response_metadata["decode"]["prefill_seconds"] < 5  # stopped before the first chunk
    assert len(llm.loaded.prefix_cache) == 0  # nothing half-computed is kept
    assert _summary(llm.invoke(messages)) == _summary(llm.invoke(messages, prefix_cache=False))


def test_a_different_image_is_never_taken_from_the_cache(tiny_llava_qwen2):
    llm = _model(tiny_llava_qwen2)
    red = [HumanMessage(content=[_image((200, 0, 0)), {"type": "text", "text": "What colour?"}])]
    blue = [HumanMessage(content=[_image((0, 0, 200)), {"type": "text", "text": "What colour?"}])]
    reference = llm.invoke(blue, prefix_cache=False)
    llm.invoke(red)
    reply = llm.invoke(blue)
    assert _summary(reply) == _summary(reference)
    stats = reply.response_metadata["decode"]
    image_start = len(llm.loaded.tokenizer.encode("<|im_start|>user\n<image>")) - 1
    assert stats["cached_tokens"] <= image_start  # the shared text before the image, not the image


def test_cache_bounds_and_the_model_budget(tiny_llava_qwen2):
    llm = _model(tiny_llava_qwen2, prefix_cache_entries=2, max_tokens=4)
    cache = llm.loaded.prefix_cache
    cache.clear()
    for index in range(4):
        llm.invoke(
            [SystemMessage(f"System prompt number {index}. " + "Be brief. " * 80), HumanMessage("Hello")]
        )
    assert len(cache) == 2 and cache.stats.evicted >= 2
    manager = get_model_manager()
    key = ("chat", llm.spec)
    extras = manager._entries[key].extra_bytes
    assert extras >= cache.nbytes() > 0  # counted in the model's budget
    llm.invoke("Hello", prefix_cache_entries=0)  # the bound is a setting: 0 keeps nothing
    assert len(cache) == 0
    llm.invoke("Hello", prefix_cache_mib=0)
    assert len(cache) == 0


# --- jump-forward ------------------------------------------------------------------------------


def _decode_raw(llm: ChatLlava, constraint, prompt: str, seed: int, **settings) -> tuple[str, dict]:
    """Run the decode loop itself on a rendered prompt; the raw reply text and its stats."""
    import torch

    from agent.llava.decode_loop import decode
    from agent.llava.decode_setup import DecodeSettings
    from agent.llava.prompting import render_prompt

    loaded = llm.loaded
    # the constraint does not read the prompt: without the schemas in it, the tiny models' short context suffices
    rendered = render_prompt(loaded.processor, [{"role": "user", "content": prompt}], config=loaded.config)
    inputs = rendered.encode(loaded.processor)
    tokens: list[int] = []
    torch.manual_seed(seed)
    stats = decode(
        loaded,
        inputs,
        options={"max_new_tokens": 64, "temperature": 1.0, "top_p": 1.0},
        settings=DecodeSettings(prefix_cache=False, **settings),
        emit=tokens.extend,
        should_stop=lambda: False,
        constraint_processor=constraint.logits_processor(64),
    )
    text = loaded.tokenizer.decode(tokens, skip_special_tokens=True, clean_up_tokenization_spaces=False)
    return text, stats.as_dict()


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_jump_forward_calls_are_valid_and_rendered_byte_for_byte(tiny_llava_paths, family):
    """Sampled at temperature 1 with jump-forward: every reply is calls that validate and re-render exactly."""
    from agent.decoding.constraint import ToolCallConstraint, json_output_constraint
    from agent.decoding.tool_protocol import parse_tool_calls

    llm = _model(tiny_llava_paths[family])
    tokenizer = llm.loaded.tokenizer
    forced = passes = generated = 0
    for seed in range(16):
        choice = ("any", "speak", "auto", "caption_image")[seed % 4]
        constraint = ToolCallConstraint.build(tokenizer, SCHEMAS, choice)
        prompt = f"Request {seed}: describe cat.png and read it aloud"
        if choice == "auto":  # a reply that opens a call after some text must finish it validly
            text, stats = _decode_raw(llm, constraint, prompt, seed)
            content, calls = parse_tool_calls(text)
            if calls:
                assert text.endswith(format_tool_calls(calls))
            continue
        text, stats = _decode_raw(llm, constraint, prompt, seed)
        content, calls = parse_tool_calls(text)
        assert calls and content == ""
        assert format_tool_calls(calls) == text  # byte for byte what the protocol renders
        for call in calls:
            assert choice == "any" or call["name"] == choice
            jsonschema.validate(call["args"], PARAMETERS[call["name"]])
        forced += stats["forced_tokens"]
        passes += stats["forward_passes"]
        generated += stats["generated_tokens"]
    assert forced > 0.3 * generated  # most of a call is forced bytes ...
    assert passes < 0.7 * generated  # ... appended without a pass of their own
    schema = {
        "type": "object",
        "properties": {
            "colour": {"enum": ["red", "green"]},
            "count": {"type": "integer", "minimum": 0, "maximum": 9},
        },
        "required": ["colour", "count"],
    }
    structured = json_output_constraint(tokenizer, schema)
    for seed in range(4):
        text, stats = _decode_raw(llm, structured, "colour and count?", seed)
        value = json.loads(text)
        jsonschema.validate(value, schema)
        assert json.dumps(value) == text and stats["forced_tokens"] > 0


def test_jump_forward_through_chat_llava(tiny_llava_qwen2):
    llm = ChatLlava(model=str(tiny_llava_qwen2), device="cpu", temperature=1.0, top_p=1.0, max_tokens=64)
    for seed in range(4):
        reply = (
            llm.model_copy(update={"seed": seed})
            .bind_tools(SMALL_TOOLS, tool_choice="any")
            .invoke(f"Request {seed}")
        )
        assert reply.tool_calls and not reply.invalid_tool_calls
        assert {call["name"] for call in reply.tool_calls} <= {"caption_image", "speak"}
        assert reply.response_metadata["decode"]["forced_tokens"] > 0


def test_forced_stretches_are_spelled_by_the_tokenizer(tiny_llava_qwen2):
    from transformers import AutoTokenizer

    from agent.decoding.constraint import ToolCallConstraint
    from agent.decoding.jump_forward import forced_bytes, forced_tokens, walk_tokens
    from agent.llava.decode_setup import token_speller

    tokenizer = AutoTokenizer.from_pretrained(tiny_llava_qwen2)
    constraint = ToolCallConstraint.build(tokenizer, SCHEMAS, "speak")
    automaton, vocabulary = constraint.automaton, constraint.vocabulary
    data, state = forced_bytes(automaton, automaton.initial, vocabulary)
    assert data == b'<tool_call>\n{"name": "speak", "arguments": {"text": "'
    tokens = forced_tokens(automaton, automaton.initial, vocabulary, 100, token_speller(tokenizer))
    spelled = tokenizer.encode(data.decode(), add_special_tokens=False)
    assert tokens == spelled[:-1]  # the tokenizer's own spelling, the seam left to the model
    assert walk_tokens(automaton, automaton.initial, tokens) is not None
    assert (
        forced_tokens(automaton, automaton.initial, vocabulary, len(tokens), token_speller(tokenizer)) == []
    )  # no budget
    any_tool = ToolCallConstraint.build(tokenizer, SCHEMAS, "any")
    data, _ = forced_bytes(any_tool.automaton, any_tool.automaton.initial, vocabulary)
    assert data == b'<tool_call>\n{"name": "'  # four tools: the name is the model's choice


def test_fast_attention_runs_the_decode_steps_only(tiny_llava_qwen2, monkeypatch):
    from agent.llava import decode_attention

    queries: list[int] = []
    original = decode_attention.grouped_attention

    def counting(query, *args):
        queries.append(query.shape[2])
        return original(query, *args)

    monkeypatch.setattr(decode_attention, "grouped_attention", counting)
    llm = _model(tiny_llava_qwen2, max_tokens=8)
    reply = llm.invoke("Hello there, how are you?", prefix_cache=False)
    layers = llm.loaded.config.text_config.num_hidden_layers
    steps = reply.response_metadata["decode"]["forward_passes"]
    assert len(queries) == steps * layers  # every decode step of every layer; the prefill kept SDPA
    assert set(queries) == {1}
    queries.clear()
    llm.invoke("Hello there, how are you?", decoder="transformers")
    llm.invoke("Hello there, how are you?", fast_attention=False)
    assert queries == []  # generate() and the switch turned off never take it


# --- logits processors ---------------------------------------------------------------------------


def _stream_tokens(
    llm: ChatLlava,
    prompt: str,
    processors: list,
    constraint=None,
    tokens: int = 24,
    options: dict | None = None,
    **settings,
) -> tuple[str, dict]:
    """One reply through stream_generate: the decode loop (``settings``) or generate (``generate=True``).

    The head and the decode attention are the model's own (bf16 rounds differently in the int8
    head and in float32 attention), so the loop's tokens can be compared with generate's.
    """
    from agent.llava.decode_setup import DecodeSettings
    from agent.llava.prompting import render_prompt
    from agent.llava.streaming import GenerationResult, stream_generate

    loaded = llm.loaded
    rendered = render_prompt(loaded.processor, [{"role": "user", "content": prompt}], config=loaded.config)
    result = None
    for event in stream_generate(
        loaded,
        rendered.encode(loaded.processor),
        options={"max_new_tokens": tokens, "temperature": 0.0, **(options or {})},
        constraint_processor=None if constraint is None else constraint.logits_processor(tokens),
        decode_settings=None
        if settings.pop("generate", False)
        else DecodeSettings(
            **{"prefix_cache": False, "lm_head": "model", "fast_attention": False, **settings}
        ),
        logits_processor=processors,
    ):
        if isinstance(event, GenerationResult):
            result = event
    assert result is not None
    return result.text, result.decode or {}


class _ForceText:
    """A logits processor that makes the model write ``ids`` after the prompt, then whatever it likes."""

    def __init__(self, prompt_tokens: int, ids: list[int]) -> None:
        self.prompt_tokens, self.ids = prompt_tokens, ids

    def __call__(self, input_ids, scores):
        step = input_ids.shape[1] - self.prompt_tokens
        if step < len(self.ids):
            forced = scores.new_full(scores.shape, float("-inf"))
            forced[:, self.ids[step]] = 0.0
            return forced
        return scores


@pytest.mark.parametrize("generate", [False, True], ids=["decode-loop", "generate"])
def test_an_echoed_tool_response_opening_is_dropped_and_a_second_one_stops(tiny_llava_llama, generate):
    """A small model may answer a tool result with "<tool_response>" and an echo of it: the words stay, the framing goes."""
    from agent.decoding.tool_protocol import TOOL_RESPONSE_CLOSE, TOOL_RESPONSE_OPEN
    from agent.llava.decode_setup import DecodeSettings
    from agent.llava.prompting import render_prompt
    from agent.llava.streaming import GenerationResult, stream_generate

    loaded = _model(tiny_llava_llama).loaded
    inputs = render_prompt(loaded.processor, [{"role": "user", "content": "Say it."}], config=loaded.config).encode(
        loaded.processor
    )
    written = f"{TOOL_RESPONSE_OPEN}\nSaved it. {TOOL_RESPONSE_CLOSE}\n{TOOL_RESPONSE_OPEN} more"
    ids = loaded.tokenizer.encode(written, add_special_tokens=False)
    assert loaded.tokenizer.decode(ids) == written

    def reply(drop_leading: tuple) -> tuple[str, GenerationResult]:
        pieces, result = [], None
        for event in stream_generate(
            loaded,
            inputs,
            options={"max_new_tokens": len(ids) + 4, "temperature": 0.0},
            stops=[TOOL_RESPONSE_OPEN, TOOL_RESPONSE_CLOSE],
            decode_settings=None if generate else DecodeSettings(prefix_cache=False),
            logits_processor=[_ForceText(int(inputs["input_ids"].shape[1]), ids)],
            drop_leading=drop_leading,
        ):
            if isinstance(event, GenerationResult):
                result = event
            else:
                pieces.append(event)
        assert result is not None
        return "".join(pieces), result

    streamed, result = reply((TOOL_RESPONSE_OPEN,))
    assert (streamed, result.text, result.finish_reason) == ("Saved it. ", "Saved it. ", "stop")
    streamed, result = reply(())  # without it, the opening is a stop: nothing is said at all
    assert (streamed, result.text) == ("", "")


@pytest.mark.parametrize("decoder", ["auto", "transformers"])
def test_chat_llava_takes_logits_processors_as_a_call_option(tiny_llava_llama, decoder):
    llm = _model(tiny_llava_llama, decoder=decoder)
    plain = llm.invoke("Say it.")
    ids = llm.loaded.tokenizer.encode("forced words here", add_special_tokens=False)
    processor = _ForceText(plain.usage_metadata["input_tokens"], ids)
    forced = llm.invoke("Say it.", logits_processor=[processor], max_tokens=len(ids))
    assert forced.content == "forced words here" != plain.content
    assert llm.invoke("Say it.").content == plain.content  # only the call that was given it


def test_logits_processors_apply_in_both_decoders(tiny_llava_qwen2):
    """A repetition penalty given as a processor: the decode loop picks what generate picks, with and without a constraint."""
    from transformers import RepetitionPenaltyLogitsProcessor

    from agent.decoding.constraint import ToolCallConstraint
    from agent.decoding.tool_protocol import parse_tool_calls

    llm = _model(tiny_llava_qwen2)
    prompt = "Say the same word again and again: cat cat cat cat cat"
    penalty = [RepetitionPenaltyLogitsProcessor(penalty=4.0)]
    plain, _ = _stream_tokens(llm, prompt, [])
    penalised, stats = _stream_tokens(llm, prompt, penalty)
    assert penalised != plain  # the processor ran at every step
    assert penalised == _stream_tokens(llm, prompt, penalty, generate=True)[0]
    assert stats["generated_tokens"] > 0
    constraint = ToolCallConstraint.build(llm.loaded.tokenizer, SCHEMAS, "speak")
    fast, stats = _stream_tokens(llm, prompt, penalty, constraint, tokens=64, jump_forward=False)
    assert fast.startswith('<tool_call>\n{"name": "speak"')
    assert stats["few_row_steps"] > 0  # the few-row path ran the processor too
    assert fast == _stream_tokens(llm, prompt, penalty, constraint, tokens=64, generate=True)[0]
    assert (
        fast
        == _stream_tokens(
            llm, prompt, penalty, constraint, tokens=64, jump_forward=False, few_row_logits=False
        )[0]
    )
    # jump-forward appends forced stretches without asking the processors: still a valid call of speak
    jumped, stats = _stream_tokens(llm, prompt, penalty, constraint, tokens=64)
    assert stats["forced_tokens"] > 0
    assert parse_tool_calls(jumped)[1][0]["name"] == "speak"


def test_the_generation_configs_repetition_penalty_runs_in_the_decode_loop(tiny_llava_qwen2):
    from agent.llava.decode_setup import unsupported_reason

    llm = _model(tiny_llava_qwen2)
    config = llm.loaded.model.generation_config
    prompt = "Say the same word again and again: cat cat cat cat cat"
    plain, _ = _stream_tokens(llm, prompt, [])
    config.repetition_penalty = 4.0
    try:
        assert unsupported_reason(llm.loaded, {}) is None
        penalised, stats = _stream_tokens(llm, prompt, [])
        assert stats["generated_tokens"] > 0 and penalised != plain
        assert penalised == _stream_tokens(llm, prompt, [], generate=True)[0]
    finally:
        config.repetition_penalty = 1.0


def test_the_reply_only_repetition_control_runs_in_the_decode_loop(tiny_llava_qwen2):
    """The options' repetition_penalty / no_repeat_ngram_size reach the decode loop as a processor
    (the same tokens as generate), over the reply only, and stand aside inside a tool call."""
    from agent.decoding.constraint import ToolCallConstraint
    from agent.decoding.tool_protocol import parse_tool_calls

    llm = _model(tiny_llava_qwen2)
    prompt = "Say the same word again and again: cat cat cat cat cat"
    plain, _ = _stream_tokens(llm, prompt, [])
    for options in ({"repetition_penalty": 4.0}, {"no_repeat_ngram_size": 1}):
        guarded, stats = _stream_tokens(llm, prompt, [], options=options)
        assert stats["generated_tokens"] > 0 and guarded != plain, options
        assert guarded == _stream_tokens(llm, prompt, [], options=options, generate=True)[0], options
    # inside a tool call the guard stands aside: the call is the one decoded without it
    constraint = ToolCallConstraint.build(llm.loaded.tokenizer, SCHEMAS, "speak")
    unguarded, _ = _stream_tokens(llm, prompt, [], constraint, tokens=64)
    call, _ = _stream_tokens(llm, prompt, [], constraint, tokens=64, options={"no_repeat_ngram_size": 1})
    assert parse_tool_calls(call)[1][0]["name"] == "speak"
    assert call == unguarded


def test_a_dora_adapter_is_refused_with_int8_weights(tiny_llava_qwen2, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    from agent.core.errors import ModelLoadError
    from agent.core.runtime import quiet_library_notices

    base = AutoModelForImageTextToText.from_pretrained(tiny_llava_qwen2, dtype=torch.float32)
    config = LoraConfig(r=4, target_modules=r".*language_model.*\.q_proj", use_dora=True, init_lora_weights=False)
    with quiet_library_notices():
        get_peft_model(base, config).save_pretrained(tmp_path / "dora")
    with pytest.raises(ModelLoadError, match=r"DoRA adapter.*quantization='none' or '4bit'"):
        _model(tiny_llava_qwen2, quantization="int8-weights", adapter=str(tmp_path / "dora")).loaded  # noqa: B018
    assert _model(tiny_llava_qwen2, quantization="none", adapter=str(tmp_path / "dora")).invoke("hi").content is not None
