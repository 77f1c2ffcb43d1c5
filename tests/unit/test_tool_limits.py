"""Caps on what one reply can make the tools do: calls per reply and time per call."""

from __future__ import annotations

import threading
import time

import pytest
from langchain_core.messages import AIMessage, ToolMessage
from langchain_core.tools import tool

from agent.app.multimodal_agent import MultimodalAgent
from agent.core.config import load_config
from tests.scripted_chat_model import ScriptedChatModel, tool_call
from tools.cancellation import raise_if_cancelled

runs: list[int] = []
stopped = threading.Event()


@tool
def count(n: int) -> str:
    """Count a number."""
    runs.append(n)
    return f"counted {n}"


@tool
def slow(seconds: float) -> str:
    """Work for a while."""
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            raise_if_cancelled()
            time.sleep(0.01)
    except Exception:
        stopped.set()
        raise
    return "done"


def agent_with(tmp_path, replies, **tools_settings):
    config = load_config({"data_dir": str(tmp_path / "data"), "agent": {"long_term_memory": False},
                          "tools": {"enabled": [], **tools_settings}}, environ={})
    return MultimodalAgent(ScriptedChatModel(replies=replies), [count, slow], config=config)


def tool_messages(agent, thread_id):
    return [m for m in agent.history(thread_id) if isinstance(m, ToolMessage)]


def test_a_reply_runs_at_most_the_configured_number_of_calls(tmp_path):
    runs.clear()
    calls = [tool_call("count", {"n": i}, f"c{i}") for i in range(40)]
    agent = agent_with(tmp_path, [AIMessage("", tool_calls=calls), "done"], max_calls_per_reply=8)
    reply = agent.chat("count to forty")
    assert sorted(runs) == list(range(8))
    statuses = [c["status"] for c in reply.tool_calls]
    assert statuses == ["success"] * 8 + ["not_run"] * 32  # refused before running: not a failure of the tool
    refused = [m for m in tool_messages(agent, reply.thread_id) if m.status == "error"]
    assert len(refused) == 32 and refused[0].content.startswith("Not run: this reply asked for 40 tool calls and at most 8")


def test_a_call_past_its_time_limit_is_answered_at_once_and_stopped(tmp_path):
    stopped.clear()
    agent = agent_with(tmp_path, [AIMessage("", tool_calls=[tool_call("slow", {"seconds": 30}, "s1")]), "sorry"],
                       timeouts={"slow": 0.5})
    started = time.monotonic()
    reply = agent.chat("work hard")
    assert time.monotonic() - started < 10
    message = tool_messages(agent, reply.thread_id)[0]
    assert message.status == "error" and "did not finish within its time limit of 0.5 s" in message.content
    assert stopped.wait(5), "the tool saw the cancellation at its next step"
    assert reply.text == "sorry"


def test_time_limits_come_from_the_config(tmp_path):
    from agent.app.tool_limits import ToolLimitsMiddleware

    section = load_config({"tools": {"timeout_s": 42, "timeouts": {"speak": 7}}}, environ={}).tools
    limits = ToolLimitsMiddleware.from_config(section)
    assert (limits.timeout_for("speak"), limits.timeout_for("caption_image"), limits.timeout_for("generate_image")) == (
        7, 42, 600)
    with pytest.raises(Exception, match="time limit of 'speak' must be a positive number"):
        load_config({"tools": {"timeouts": {"speak": 0}}}, environ={})
