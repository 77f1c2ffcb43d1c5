"""The agent graph with scripted chat models: tool calls, tool failures, several tools, limits, stop."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import ToolException, tool

from agent.app.multimodal_agent import (
    AgentReply,
    MultimodalAgent,
    ReplyEvent,
    TokenEvent,
    ToolCallEvent,
    ToolResultEvent,
)
from agent.core.config import load_config
from agent.core.errors import ContextLengthError, ImageError, InputError
from tests.scripted_chat_model import ScriptedChatModel, tool_call


@tool
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@tool(response_format="content_and_artifact")
def draw(prompt: str) -> tuple[str, dict]:
    """Draw a picture of the prompt."""
    return f"Saved a drawing of {prompt} to /tmp/drawing.png.", {"path": "/tmp/drawing.png", "seed": 7}


@tool
def broken(x: str) -> str:
    """A tool that always fails."""
    raise ValueError(f"cannot handle {x!r}")


@tool
def handled(x: str) -> str:
    """A tool that reports its failure as a ToolException (as the built-in tools do)."""
    raise ToolException(f"Error running handled with x={x!r}: bad input. Please fix the arguments.")


handled.handle_tool_error = True


@pytest.fixture
def config(tmp_path):
    """Settings as a dict (tests edit it); the environment is left out so data_dir is this test's."""
    return {"data_dir": str(tmp_path / "data"), "agent": {"long_term_memory": False}}


def make_agent(config, replies, tools=(add, draw, broken, handled), **kwargs):
    model = ScriptedChatModel(replies=list(replies))
    return MultimodalAgent(model, list(tools), config=load_config(config, environ={}), **kwargs), model


def test_tool_call_runs_and_answer_follows(config):
    agent, model = make_agent(config, [AIMessage("", tool_calls=[tool_call("add", {"a": 2, "b": 3})]), "It is 5."])
    events = list(agent.stream("what is 2 + 3?"))
    kinds = [type(e) for e in events]
    assert kinds[0] is ToolCallEvent and kinds[1] is ToolResultEvent and kinds[-1] is ReplyEvent
    assert TokenEvent in kinds[2:-1]
    assert events[1].content == "5" and events[1].is_error is False
    reply = events[-1].reply
    assert isinstance(reply, AgentReply)
    assert reply.text == "It is 5."
    assert reply.tool_calls == [{"name": "add", "args": {"a": 2, "b": 3}, "id": "call_add", "status": "success"}]
    second_call = model.calls[1]
    assert isinstance(second_call[0], SystemMessage)
    assert isinstance(second_call[-1], ToolMessage) and second_call[-1].content == "5"


def test_artifacts_are_returned_with_the_tool_name(config):
    agent, _ = make_agent(config, [AIMessage("", tool_calls=[tool_call("draw", {"prompt": "a cat"})]), "Done."])
    reply = agent.chat("draw a cat")
    assert reply.artifacts == [{"tool": "draw", "path": "/tmp/drawing.png", "seed": 7}]


def test_failing_tool_error_reaches_the_model_which_recovers(config):
    agent, model = make_agent(
        config,
        [
            AIMessage("", tool_calls=[tool_call("broken", {"x": "zz"})]),
            AIMessage("", tool_calls=[tool_call("add", {"a": 1, "b": 1}, "call_2")]),
            "Recovered: 2.",
        ],
    )
    events = list(agent.stream("try it"))
    failures = [e for e in events if isinstance(e, ToolResultEvent) and e.is_error]
    assert len(failures) == 1
    error_message = model.calls[1][-1]
    assert isinstance(error_message, ToolMessage) and error_message.status == "error"
    assert error_message.content == (
        "Error running broken with arguments {\"x\": \"zz\"}: cannot handle 'zz' Please try again or use another tool."
    )
    reply = events[-1].reply
    assert reply.text == "Recovered: 2."
    assert [c["status"] for c in reply.tool_calls] == ["error", "success"]


def test_tool_exception_with_handler_is_an_error_result(config):
    agent, model = make_agent(config, [AIMessage("", tool_calls=[tool_call("handled", {"x": "q"})]), "ok"])
    reply = agent.chat("go")
    assert reply.tool_calls[0]["status"] == "error"
    assert "bad input" in model.calls[1][-1].content


def test_several_tools_in_one_turn(config):
    calls = [tool_call("add", {"a": 1, "b": 2}, "c1"), tool_call("draw", {"prompt": "dog"}, "c2")]
    agent, model = make_agent(config, [AIMessage("", tool_calls=calls), "Both done."])
    events = list(agent.stream("add and draw"))
    started = [e.call_id for e in events if isinstance(e, ToolCallEvent)]
    finished = sorted(e.call_id for e in events if isinstance(e, ToolResultEvent))
    assert started == ["c1", "c2"] and finished == ["c1", "c2"]
    tool_messages = [m for m in model.calls[1] if isinstance(m, ToolMessage)]
    assert sorted(m.tool_call_id for m in tool_messages) == ["c1", "c2"]
    assert events[-1].reply.artifacts[0]["tool"] == "draw"


def test_recursion_limit_ends_the_turn_with_a_clear_message(config):
    config["agent"]["recursion_limit"] = 5
    def call_again(messages):
        return AIMessage("", tool_calls=[tool_call("add", {"a": 1, "b": 0}, f"c{len(messages)}")])

    agent, _ = make_agent(config, [call_again])
    reply = agent.chat("loop forever")
    assert reply.limit_reached is True
    assert "step limit" in reply.text and "agent.recursion_limit" in reply.text
    history = agent.history(reply.thread_id)
    answered = {m.tool_call_id for m in history if isinstance(m, ToolMessage)}
    asked = {c["id"] for m in history if isinstance(m, AIMessage) for c in m.tool_calls}
    assert asked <= answered, "no tool call is left unanswered in the stored thread"
    assert isinstance(history[-1], AIMessage) and not history[-1].tool_calls
    # the calls the limit cut off are answered as not run (an error the model reads), never as a success
    ran = {m.tool_call_id for m in history if isinstance(m, ToolMessage) and m.status == "success"}
    cut_off = [m for m in history if isinstance(m, ToolMessage) and m.tool_call_id not in ran]
    assert cut_off, "the limit struck while a call was pending"
    for message in cut_off:
        assert message.status == "error" and message.content == "Not run: the turn ended first."
    statuses = {c["id"]: c["status"] for c in reply.tool_calls}
    assert {statuses[m.tool_call_id] for m in cut_off} == {"not_run"}
    assert {statuses[i] for i in ran} == {"success"}
    assert all(m.content == "1" for m in history if isinstance(m, ToolMessage) and m.tool_call_id in ran)


def test_thread_continues_across_turns(config):
    agent, model = make_agent(config, ["first answer", "second answer"])
    first = agent.chat("hello")
    second = agent.chat("again", thread_id=first.thread_id)
    assert second.thread_id == first.thread_id
    seen = [m.text for m in model.calls[1] if isinstance(m, (HumanMessage, AIMessage))]
    assert seen == ["hello", "first answer", "again"]
    assert [info.thread_id for info in agent.conversations.list_threads()] == [first.thread_id]
    assert agent.conversations.get(first.thread_id).title == "hello"


def test_stop_interrupts_generation_and_keeps_the_thread_usable(config):
    agent, model = make_agent(config, [" ".join(["word"] * 400), "next"], tools=[add])
    model.token_delay_s = 0.005
    timer = threading.Timer(0.15, agent.stop)
    timer.start()
    tokens = 0
    for event in agent.stream("talk a lot"):
        tokens += isinstance(event, TokenEvent)
    reply = event.reply
    assert reply.stopped is True and 0 < tokens < 400
    assert reply.text.startswith("word")
    history = agent.history(reply.thread_id)
    assert [m.type for m in history] == ["human", "ai"]
    assert history[-1].text == reply.text, "the partial reply is kept in the thread"
    follow_up = agent.chat("go on", thread_id=reply.thread_id)
    assert follow_up.text == "next" and not follow_up.stopped


def test_a_model_failure_on_a_new_thread_leaves_no_thread_and_keeps_an_old_one(config):
    def fail(messages):
        raise RuntimeError("the model crashed")

    agent, _ = make_agent(config, ["first answer", fail])
    kept = agent.chat("hello").thread_id
    with pytest.raises(RuntimeError, match="the model crashed"):
        agent.chat("again", thread_id=kept)
    assert [t.thread_id for t in agent.conversations.list_threads()] == [kept]
    with pytest.raises(RuntimeError, match="the model crashed"):
        agent.chat("a new conversation")
    assert [t.thread_id for t in agent.conversations.list_threads()] == [kept], "no empty thread is left behind"


def test_a_failed_tool_contributes_no_artifact():
    from agent.app.events import TurnCollector

    collector = TurnCollector("t1")
    call = AIMessage("", tool_calls=[tool_call("draw", {"prompt": "x"}, "c1"), tool_call("draw", {"prompt": "y"}, "c2")])
    list(collector.consume("updates", {"model": {"messages": [call]}}))
    failed = ToolMessage("Error: half drawn", tool_call_id="c1", name="draw", status="error",
                         artifact={"path": "/tmp/half.png"})
    done = ToolMessage("Saved.", tool_call_id="c2", name="draw", artifact={"path": "/tmp/full.png"})
    events = list(collector.consume("updates", {"tools": {"messages": [failed, done]}}))
    assert [e.is_error for e in events] == [True, False]
    reply = collector.reply("limit")
    assert reply.artifacts == [{"tool": "draw", "path": "/tmp/full.png"}]
    assert [c["status"] for c in reply.tool_calls] == ["error", "success"]


def test_image_is_saved_and_referred_to_by_path(config, tmp_path):
    from PIL import Image

    source = tmp_path / "cat.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(source)
    agent, model = make_agent(config, ["a red square"])
    agent.chat("what is this?", images=[source])
    human = [m for m in model.calls[0] if isinstance(m, HumanMessage)][0]
    text_block, image_block = human.content
    saved = image_block["extras"]["path"]
    assert saved.endswith("-cat.png") and saved.startswith(str(agent.attachments_dir))
    assert f"[attached image: {saved}]" in text_block["text"]
    assert image_block["type"] == "image" and image_block["mime_type"] == "image/png"
    assert "[attached image: PATH]" in agent.system_prompt


def test_bad_inputs_raise_clear_errors(config, tmp_path):
    agent, _ = make_agent(config, ["x"])
    missing = tmp_path / "nope.png"
    with pytest.raises(ImageError) as excinfo:
        agent.chat("look", images=[missing])
    assert str(excinfo.value) == (
        f"image {str(missing)!r} does not exist; check the path (relative paths start at {tmp_path.cwd()})"
    )
    not_image = tmp_path / "notes.png"
    not_image.write_text("hello")
    with pytest.raises(ImageError, match="is not a readable image") as excinfo:
        agent.chat("look", images=[not_image])
    assert "BytesIO" not in str(excinfo.value) and str(not_image) in str(excinfo.value)
    with pytest.raises(InputError, match="the message is empty"):
        agent.chat("   ")
    with pytest.raises(InputError, match="unknown thread 'zzzz'"):
        agent.history("zzzz")
    assert agent.conversations.list_threads() == [], "failed turns leave no thread behind"


def test_duplicate_tool_names_are_refused(config):
    with pytest.raises(InputError, match="add appear twice"):
        make_agent(config, ["x"], tools=[add, add])


def test_tool_choice_forces_only_the_first_call_of_a_turn(config):
    config["agent"]["tool_choice"] = "add"
    agent, model = make_agent(config, [AIMessage("", tool_calls=[tool_call("add", {"a": 1, "b": 1})]), "2"])
    agent.chat("compute")
    assert [b["tool_choice"] for b in model.bound] == ["add", None]


def test_system_prompt_lists_the_tools(config):
    agent, model = make_agent(config, ["hi"])
    agent.chat("hello")
    system = model.calls[0][0]
    for name in ("add", "draw", "broken"):
        assert f"- {name}:" in system.text


async def test_async_variants_match_the_sync_ones(config):
    agent, _ = make_agent(config, [AIMessage("", tool_calls=[tool_call("add", {"a": 4, "b": 4})]), "eight"])
    events = [event async for event in agent.astream("4 + 4?")]
    assert isinstance(events[-1], ReplyEvent) and events[-1].reply.text == "eight"
    agent2, _ = make_agent(config, ["async hello"])
    reply = await agent2.achat("hi")
    assert reply.text == "async hello"
    replies = await asyncio.gather(agent2.achat("a"), agent2.achat("b"))
    assert len({r.thread_id for r in replies}) == 2


async def test_leaving_an_async_stream_early_stops_only_that_turn(config):
    agent, model = make_agent(config, [" ".join(["word"] * 300)], tools=[add])
    model.token_delay_s = 0.002
    other = threading.Event()
    background = threading.Thread(target=lambda: other.set() if agent.chat("other").text else None)
    async with contextlib.aclosing(agent.astream("talk")) as events:
        async for event in events:
            if isinstance(event, TokenEvent):
                background.start()
                break  # the consumer leaves: this turn is stopped, the other one runs to its end
    await asyncio.to_thread(background.join)
    assert other.is_set()
    threads = agent.conversations.list_threads()
    replies = [agent.history(t.thread_id)[-1].text.count("word") for t in threads]
    assert sorted(replies)[0] < 300 and sorted(replies)[1] == 300


def test_tool_choice_must_name_a_tool(config):
    config["agent"]["tool_choice"] = "paint"
    with pytest.raises(InputError) as excinfo:
        make_agent(config, ["x"], tools=[add])
    assert str(excinfo.value) == (
        "agent.tool_choice: tool_choice 'paint' is not one of the bound tools (add) nor one of auto, any, "
        "required, none"
    )


def test_long_threads_are_trimmed_to_the_context(config):
    config["memory"] = {"max_context_tokens": 1700}
    agent, model = make_agent(config, [f"answer {i} " + "y" * 200 for i in range(8)], tools=[add])
    thread = None
    for index in range(8):
        thread = agent.chat(f"question {index} " + "x" * 200, thread_id=thread).thread_id
    last_call = model.calls[-1]
    assert len(agent.history(thread)) == 16, "the stored thread keeps everything"
    assert 4 < len(last_call) < 16 and last_call[1].text.startswith("question"), "whole old turns dropped"
    note, question = last_call[-1].content[0]["text"], last_call[-1].content[-1]["text"]
    assert question.startswith("question 7")
    newest_left_out = asked_numbers(last_call)[0] - 1
    assert "Earlier turns were left out" in note and f"- question {newest_left_out}" in note
    assert "Earlier turns were left out" not in last_call[0].text, "quoted user text never enters the system prompt"


def asked_numbers(call) -> list[int]:
    """The numbers of the ``question N`` user messages a model call was given."""
    texts = [m.content if isinstance(m.content, str) else m.content[-1]["text"] for m in call if isinstance(m, HumanMessage)]
    return [int(text.split()[1]) for text in texts]


def counting_model_reply(limit: int):
    """A reply that, like ChatLlava, counts the prompt itself (here: one token a character) and refuses one over ``limit``."""

    def reply(messages) -> str:
        prompt_tokens = sum(len(m.text) for m in messages)
        if prompt_tokens > limit:
            raise ContextLengthError.counted(prompt_tokens, 0, limit)
        return f"answer to a prompt of {prompt_tokens} characters"

    return reply


def test_when_the_model_counts_more_tokens_older_turns_go_until_the_call_fits(config):
    # the policy's own estimate says everything fits (a huge max_context_tokens): only the model's count trims
    config["memory"] = {"max_context_tokens": 1_000_000}
    agent, model = make_agent(config, [counting_model_reply(2500)], tools=[add])
    thread = None
    for index in range(6):
        thread = agent.chat(f"question {index} " + "x" * 400, thread_id=thread).thread_id
    assert len(agent.history(thread)) == 12, "every turn was answered and stored"
    last_call = model.calls[-1]
    assert sum(len(m.text) for m in last_call) <= 2500
    assert last_call[-1].content[-1]["text"].startswith("question 5")
    newest_left_out = asked_numbers(last_call)[0] - 1
    assert f"- question {newest_left_out}" in last_call[-1].content[0]["text"], "the left-out turns are noted"


def test_a_latest_message_too_long_alone_fails_and_leaves_the_thread_as_it_was(config):
    config["memory"] = {"max_context_tokens": 1_000_000}
    agent, model = make_agent(config, [counting_model_reply(2500)], tools=[add])
    thread = agent.chat("hello").thread_id
    before = [(type(m), m.text) for m in agent.history(thread)]
    with pytest.raises(ContextLengthError, match="latest message does not fit even with every earlier turn left out"):
        agent.chat("z" * 5000, thread_id=thread)
    assert [(type(m), m.text) for m in agent.history(thread)] == before, "no unanswered message is kept"
    assert agent.chat("and now a short one", thread_id=thread).text.startswith("answer")
    assert len(agent.history(thread)) == 4


def test_a_failed_turn_after_a_tool_ran_leaves_the_thread_as_it_was(config):
    def fail(messages):
        raise RuntimeError("the model's device went away")

    agent, model = make_agent(config, ["hi", AIMessage("", tool_calls=[tool_call("add", {"a": 1, "b": 2})]), fail])
    thread = agent.chat("hello").thread_id
    with pytest.raises(RuntimeError, match="device went away"):
        agent.chat("what is 1 + 2?", thread_id=thread)
    assert [m.text for m in agent.history(thread)] == ["hello", "hi"]


def test_an_application_s_own_thread_id_starts_a_thread_and_a_failed_first_turn_leaves_none(config):
    def fail(messages):
        raise RuntimeError("the model's device went away")

    agent, model = make_agent(config, [fail, "hi"], tools=[add])
    with pytest.raises(RuntimeError):
        agent.chat("hello", thread_id="user-42")
    assert not agent.conversations.exists("user-42")
    assert agent.chat("hello", thread_id="user-42").thread_id == "user-42"
    assert [m.text for m in agent.history("user-42")] == ["hello", "hi"]


def test_abandoning_a_stream_stops_the_turn_and_keeps_the_thread(config):
    agent, model = make_agent(config, [" ".join(["word"] * 300), "after"], tools=[add])
    model.token_delay_s = 0.002
    events = agent.stream("talk")
    first = next(e for e in events if isinstance(e, TokenEvent))
    events.close()  # what a `break` out of a for loop does once the generator is dropped
    assert first.text == "word "
    [thread] = agent.conversations.list_threads()
    history = agent.history(thread.thread_id)
    assert history[0].text == "talk" and history[-1].text.count("word") < 300
    assert agent.chat("more", thread_id=thread.thread_id).text == "after"
