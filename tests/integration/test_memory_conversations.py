"""Conversations survive a process restart: a second process resumes the thread the first one wrote."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]

TURN_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from agent.core.config import load_config
    from agent.app.multimodal_agent import MultimodalAgent
    from tests.scripted_chat_model import ScriptedChatModel

    data_dir, message, answer, thread = sys.argv[1:5]
    config = load_config({"data_dir": data_dir, "agent": {"long_term_memory": False}}, environ={})
    model = ScriptedChatModel(replies=[answer])
    agent = MultimodalAgent(model, [], config=config)
    reply = agent.chat(message, thread_id=thread or None)
    seen = [(m.type, m.text) for m in model.calls[0] if m.type != "system"]
    print(json.dumps({"thread_id": reply.thread_id, "seen": seen}))
    """
)


def run_turn(data_dir: Path, message: str, answer: str, thread: str = "") -> dict:
    result = subprocess.run(
        [sys.executable, "-c", TURN_SCRIPT, str(data_dir), message, answer, thread],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_thread_resumes_after_the_process_restarts(tmp_path, monkeypatch, capsys):
    data_dir = tmp_path / "data"
    first = run_turn(data_dir, "My name is Ada.", "Nice to meet you, Ada.")
    assert first["seen"] == [["human", "My name is Ada."]]
    second = run_turn(data_dir, "What is my name?", "Ada.", first["thread_id"])
    assert second["thread_id"] == first["thread_id"]
    assert second["seen"] == [
        ["human", "My name is Ada."],
        ["ai", "Nice to meet you, Ada."],
        ["human", "What is my name?"],
    ]
    monkeypatch.setenv("LLAVA_AGENT_DATA_DIR", str(data_dir))
    from agent.cli.main import main

    assert main(["threads"]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert len(listing) == 1 and listing[0].startswith(first["thread_id"]) and listing[0].endswith("My name is Ada.")
    assert main(["threads", "show", first["thread_id"][:4]]) == 0
    shown = capsys.readouterr().out
    assert shown.index("human: My name is Ada.") < shown.index("ai: Ada.")


def test_a_closed_store_says_it_is_closed_not_that_the_disk_is_full(tmp_path):
    from agent.core.errors import StoreError
    from memory.conversations import ConversationStore

    store = ConversationStore(tmp_path / "conversations.sqlite")
    store.new_thread("before")
    store.close()
    with pytest.raises(StoreError, match=r"the store was closed \(the agent's close\(\) was called\)") as info:
        store.new_thread("after")
    assert "disk space" not in str(info.value)
