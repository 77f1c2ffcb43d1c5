"""Tool calling and structured output through ChatLlava on a random-weight model.

The constraint makes every call valid for its schema whatever the weights, so these tests can
assert validity on sampled output; they never assert on which words the model picked.
"""

from __future__ import annotations

import json
from typing import Literal

import jsonschema
import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from pydantic import BaseModel, Field

from agent import ChatLlava
from agent.core.errors import InputError
from agent.llava.messages import tool_schemas

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]



def caption_image(image: str, detail: Literal["short", "long"] = "short") -> str:
    """Caption an image file."""
    return f"a picture ({detail}) of {image}"


def speak(text: str, speed: float) -> str:
    """Read text aloud at a speed."""
    return text


TOOLS = [caption_image, speak]
PARAMETERS = {s["function"]["name"]: s["function"]["parameters"] for s in tool_schemas(TOOLS)}


class Person(BaseModel):
    """A person mentioned in the text."""

    name: str = Field(description="Their name.")
    age: int = Field(description="Their age in years.")


@pytest.fixture(scope="module")
def llm(tiny_llava_qwen2) -> ChatLlava:
    return ChatLlava(model=str(tiny_llava_qwen2), max_tokens=48, temperature=1.0, top_p=1.0, device="cpu")


def _assert_valid_calls(message: AIMessage) -> None:
    assert message.tool_calls, f"expected tool calls, got {message!r}"
    assert not message.invalid_tool_calls
    for call in message.tool_calls:
        assert call["name"] in PARAMETERS
        jsonschema.validate(call["args"], PARAMETERS[call["name"]])
        assert call["id"].startswith("call_")
    assert message.response_metadata["finish_reason"] == "tool_calls"


def test_any_every_sampled_reply_is_valid_calls(llm):
    """50 sampled generations with tool_choice="any": every one is valid calls."""
    prompts = [f"Please help with request number {i}." for i in range(50)]
    models = [llm.model_copy(update={"seed": i}).bind_tools(TOOLS, tool_choice="any") for i in range(50)]
    for model, prompt in zip(models, prompts, strict=True):
        reply = model.invoke(prompt)
        _assert_valid_calls(reply)
        assert reply.content == ""


def test_auto_replies_are_text_or_valid_calls(llm):
    """With tool_choice="auto" each reply is text, or valid calls, and never an exception.

    A random model almost never opens a call unforced (tests/integration/test_constrained_decoding.py
    steers replies into calls); here each reply must be one or the other, cleanly.
    """
    texts = []
    for seed in range(20):
        reply = llm.model_copy(update={"seed": seed}).bind_tools(TOOLS).invoke(f"Do thing {seed}")
        assert isinstance(reply, AIMessage)
        assert not reply.invalid_tool_calls
        assert "<tool_call>" not in reply.content, "a reply that opens a call is finished as a call"
        if reply.tool_calls:
            _assert_valid_calls(reply)
        else:
            assert reply.response_metadata["finish_reason"] in ("stop", "length")
            assert reply.usage_metadata["output_tokens"] <= 48
            texts.append(reply.content)
    assert len(texts) >= 10 and len(set(texts)) == len(texts), "replies are sampled afresh for each seed"


def test_named_tool_choice_calls_only_that_tool(llm):
    for choice in ("speak", {"type": "function", "function": {"name": "speak"}}):
        for seed in range(3):
            reply = llm.model_copy(update={"seed": seed}).bind_tools(TOOLS, tool_choice=choice).invoke("hi")
            _assert_valid_calls(reply)
            assert {c["name"] for c in reply.tool_calls} == {"speak"}


def test_tool_choice_none_never_calls_and_hides_tools(llm):
    with_tools = llm.bind_tools(TOOLS).invoke("hello", max_tokens=1)
    reply = llm.bind_tools(TOOLS, tool_choice="none").invoke("hello")
    assert reply.tool_calls == []
    assert reply.usage_metadata["input_tokens"] < with_tools.usage_metadata["input_tokens"]


def test_streamed_tool_calls_arrive_as_chunks(llm):
    model = llm.model_copy(update={"seed": 3}).bind_tools(TOOLS, tool_choice="any")
    chunks = list(model.stream("caption cat.png"))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert all(c.content == "" for c in chunks), "no call text may leak into the streamed content"
    assert chunks[-1].tool_call_chunks and chunks[-1].chunk_position == "last"
    total = sum(chunks[1:], chunks[0])
    _assert_valid_calls(
        AIMessage(
            content=total.content, tool_calls=total.tool_calls, response_metadata=total.response_metadata
        )
    )


def test_streamed_and_invoked_calls_match(llm):
    model = llm.model_copy(update={"seed": 11}).bind_tools(TOOLS, tool_choice="any")
    streamed = sum(list(model.stream("go"))[1:], next(iter(model.stream("go"))))
    invoked = model.invoke("go")
    assert [(c["name"], c["args"]) for c in streamed.tool_calls] == [
        (c["name"], c["args"]) for c in invoked.tool_calls
    ]


def test_text_streams_in_pieces_with_tools_bound(llm):
    for seed in range(10):
        chunks = list(
            llm.model_copy(update={"seed": seed}).bind_tools(TOOLS).stream("Tell me about red circles")
        )
        if not chunks[-1].tool_call_chunks:
            break
    else:
        pytest.fail("ten sampled auto replies were all tool calls")
    assert len([c for c in chunks if c.content]) >= 2, "free text must stream in pieces while tools are bound"


def test_conversation_with_tool_results(llm):
    messages = [
        HumanMessage("Caption cat.png"),
        AIMessage("", tool_calls=[{"name": "caption_image", "args": {"image": "cat.png"}, "id": "call_1"}]),
        ToolMessage("A cat on a mat.", tool_call_id="call_1", name="caption_image"),
    ]
    reply = llm.bind_tools(TOOLS).invoke(messages)
    assert isinstance(reply, AIMessage)
    reply = llm.bind_tools(TOOLS, tool_choice="any").invoke(messages)
    _assert_valid_calls(reply)


def test_budget_too_small_for_any_call(llm):
    with pytest.raises(InputError, match="needs at least .* new tokens .* raise max_new_tokens"):
        llm.bind_tools(TOOLS, tool_choice="any").invoke("hi", max_tokens=2)


def test_structured_output_pydantic_dict_and_raw(llm):
    person = llm.model_copy(update={"seed": 1}).with_structured_output(Person).invoke("Alice is 30.")
    assert isinstance(person, Person)
    as_dict = (
        llm.model_copy(update={"seed": 2}).with_structured_output(Person.model_json_schema()).invoke("Bob")
    )
    jsonschema.validate(as_dict, Person.model_json_schema())
    raw = (
        llm.model_copy(update={"seed": 3})
        .with_structured_output(Person, include_raw=True)
        .invoke("Carol, 41")
    )
    assert set(raw) == {"raw", "parsed", "parsing_error"}
    assert isinstance(raw["raw"], AIMessage) and raw["raw"].tool_calls
    assert isinstance(raw["parsed"], Person) and raw["parsing_error"] is None


def test_json_schema_method_writes_the_json_itself(llm):
    """method="json_schema": every sampled reply is exactly json.dumps of a valid value, no tool-call wrapper."""
    schema = Person.model_json_schema()
    for seed in range(10):
        model = llm.model_copy(update={"seed": seed, "max_new_tokens": 64})
        raw = model.with_structured_output(Person, method="json_schema", include_raw=True).invoke(f"Person {seed}")
        message = raw["raw"]
        assert not message.tool_calls and "<tool_call>" not in message.content
        value = json.loads(message.content)
        jsonschema.validate(value, schema)
        assert json.dumps(value, ensure_ascii=False) == message.content
        assert raw["parsed"] == Person(**value) and raw["parsing_error"] is None
    as_dict = llm.model_copy(update={"seed": 11}).with_structured_output(schema, method="json_schema").invoke("Dan")
    jsonschema.validate(as_dict, schema)


def test_json_schema_method_checks_its_arguments(llm):
    with pytest.raises(InputError, match="method 'xml' is not supported"):
        llm.with_structured_output(Person, method="xml")
    with pytest.raises(InputError, match="cannot be combined"):
        llm.bind_tools(TOOLS).invoke("hi", response_format=Person.model_json_schema())


def test_cancel_event_ends_a_call_being_written(tiny_llava_qwen2):
    """Inside a constrained call nothing streams, so only the cancel event can end it early."""
    import threading

    class Long(BaseModel):
        text: str = Field(min_length=300, max_length=400)

    llm = ChatLlava(model=str(tiny_llava_qwen2), max_tokens=500, temperature=1.0, seed=1, device="cpu")
    full = llm.bind_tools([Long], tool_choice="Long").invoke("Write it")  # uncancelled: the whole call
    assert full.tool_calls and len(full.tool_calls[0]["args"]["text"]) >= 300
    cancel = threading.Event()
    threading.Timer(0.1, cancel.set).start()
    reply = llm.bind_tools([Long], tool_choice="Long").invoke("Write it", cancel_event=cancel)
    assert reply.response_metadata["finish_reason"] == "cancelled"
    assert reply.tool_calls == [] and reply.content == ""  # half a call is not a call
    # the same seed writes the same call: stopped early, it has only a part of its tokens
    assert 0 < reply.usage_metadata["output_tokens"] < full.usage_metadata["output_tokens"] / 2


def test_a_checkpoint_without_an_eos_in_its_generation_config_still_ends_calls(tiny_llava_qwen2, tmp_path):
    """The tokenizer's EOS stands in, so a forced call ends when it is complete, not at the budget."""
    import shutil

    folder = tmp_path / "no-eos"
    shutil.copytree(tiny_llava_qwen2, folder)
    config_file = folder / "generation_config.json"
    config = json.loads(config_file.read_text()) if config_file.exists() else {}
    config.pop("eos_token_id", None)
    config_file.write_text(json.dumps(config))
    chat = ChatLlava(model=str(folder), max_tokens=400, temperature=0.0, device="cpu")
    loaded = chat.loaded
    assert loaded.model.generation_config.eos_token_id == loaded.processor.tokenizer.eos_token_id
    # a call the grammar nearly spells out (no free text a random model could run on with): the
    # tokens after it are the EOS's to end, or the reply runs to the budget
    def set_detail(detail: Literal["short", "long"]) -> str:
        """Set the caption detail."""
        return detail

    message = chat.bind_tools([set_detail], tool_choice="set_detail").invoke([HumanMessage("Say hi.")])
    assert [call["name"] for call in message.tool_calls] == ["set_detail"]
    assert message.tool_calls[0]["args"]["detail"] in ("short", "long")
    assert message.usage_metadata["output_tokens"] < 100
    # an explicit null is a choice (tests/tiny_models.py's endless_copy): kept
    endless_folder = shutil.copytree(folder, tmp_path / "endless")
    (endless_folder / "generation_config.json").write_text(json.dumps({**config, "eos_token_id": None}))
    endless = ChatLlava(model=str(endless_folder), max_tokens=40, temperature=0.0, device="cpu")
    assert endless.loaded.model.generation_config.eos_token_id is None
